"""Kernel modules of an unmodified kernel authenticated by their real signatures (transparent).

Issue 10 item 4. A stock 6.1 arm64 kernel loads a module into `module_alloc` memory (vmalloc,
PXN), relocates it, applies its alternatives, turns its ftrace entries into `MOV X9, X30`, makes
text and rodata read-only (`module_enable_ro`) and then executable: `module_enable_x` clears PXN
in the kernel PTE of every text page, core layout first, then init. Those PTE stores trap
(kernel tables are write-protected). KPCore lets PXN go only when the text's bytes equal what
the hypervisor computes itself:

    1. which module: the trapping PTE's VA is taken as the base of a core layout; for each
       candidate .ko (handed by the caller: the Debian fixture modules, the run's own ones,
       extra files) the hypervisor computes the 6.1 layout and reads the kernel's
       `struct module` where that layout puts `.gnu.linkonce.this_module`: its `name` must
       be the candidate's, and its `core_layout` must hold this base and the candidate's
       sizes (the init layout's base is read beside it).
    2. signature: the candidate's appended PKCS#7 signature verifies against a trusted
       certificate (Debian's module-signing certificate, `--trust-cert PEM`)  else mod-unsigned
       / mod-bad-signature
    3. relocation: secvma's own toolchain (`secvma.module`) relocates the candidate at the
       kernel's chosen core and init bases against the kernel's exports read from the Image
       (`kexports`, KASLR added) and the exports of modules authenticated before (xfs needs
       libcrc32c)                                                           else mod-link
    4. comparison: the live text equals the computed text byte for byte, except at the
       module's declared patch sites: `__jump_table` (NOP or B <target>), `.altinstructions`
       (original or re-targeted replacement; any word in a callback span), the
       `__patchable_function_entries` NOP pairs (NOP or MOV X9, X30; NOP or BL into kernel
       text or the module's ftrace trampoline), and the `.text.ftrace_trampoline` PLT slots
       (zero or a PLT to kernel text)                                        else mod-mismatch

Why the name is read from guest memory: it only *selects* a candidate. Whatever the kernel
claims, nothing runs unless the text is a trusted, signed module relocated at the addresses the
kernel chose, so a lying kernel gains nothing but a refusal. The identification is also what
makes this cheap: one candidate is relocated per load (xfs: ~40 000 relocations).

A refused module keeps PXN on every text page: the PTE store itself is carried out (with PXN
forced, as for any non-text page), so the kernel does not fault while holding `module_mutex`;
the insmod task oopses when it calls the module's init, the machine goes on. Authenticated
text pages get class EL1_MOD_TXT (read-only and executable at stage 2); each may be executable
at its authenticated VA only (any other executable alias gets PXN) and goes back to ordinary
memory when that PTE is cleared (`vfree` of the module or of its init layout). The comparison
is made after the pages were write-protected (class MOD_RO, the store retried), so another
CPU cannot change the bytes between the check and the permission change.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from cryptography import x509

from secvma.kpcore.textsites import NOP, retarget
from secvma.module import linux_sig
from secvma.module.api import ModuleImage, link_module, open_module
from secvma.module.config import LINUX_6_1
from secvma.module.errors import ModuleError
from secvma.module.layout import Layout, Region, layout_sections
from secvma.module.load import LoadView, prepare
from secvma.module.relocations import plt_entry
from secvma.module.symbols import Export, ExportTable, module_exports

PAGE = 0x1000
MASK64 = (1 << 64) - 1
MOV_X9_X30 = 0xAA1E03E9
CB_BIT = 1 << 15
NAME_OFF = 24
"""`struct module`: enum state (4) + pad (4) + struct list_head list (16), then `name`."""
MODULE_NAME_LEN = 56
MAX_TEXT_PAGES = 4096
"""A module text region larger than 16 MiB is refused before any page is read."""
PLT_SIZE = 12

ReadVa = Callable[[int, int], bytes | None]
"""Read `n` bytes at a kernel VA through the kernel's stage-1 tables (None: unmapped)."""


@dataclass(frozen=True)
class Candidate:
    """A module file the hypervisor may authenticate: parsed once, its layout precomputed."""

    label: str
    name: str
    image: ModuleImage | None
    view: LoadView | None
    layout: Layout | None
    this_module: int  # offset of .gnu.linkonce.this_module in the core layout (-1: none)
    signer: str | None  # who signed it (a trusted certificate), None if the signature fails
    problem: str  # "" or why it cannot be authenticated: ("mod-unsigned", ...)
    rule: str = ""


@dataclass
class TextRegion:
    """One authenticated (or pending) text region of a module."""

    base: int
    size: int
    pfns: list[int]


@dataclass
class ModRecord:
    """A module the hypervisor has seen being made executable."""

    name: str
    label: str
    core_base: int
    init_base: int
    state: str  # "pending", "authenticated", "refused"
    rule: str = ""
    reason: str = ""
    core: TextRegion | None = None
    init: TextRegion | None = None
    init_state: str = ""  # "", "pending", "authenticated", "refused"
    expected: dict[str, bytes] = field(default_factory=dict)  # "core"/"init" -> text bytes
    sites: ModSites | None = None
    exports: list[Export] = field(default_factory=list)
    seconds: float = 0.0
    live_pages: set[int] = field(default_factory=set)  # pfns still MOD_TXT
    closed: bool = False  # refused and every page it kept PXN on was unmapped

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "file": self.label, "state": self.state, "rule": self.rule,
                "reason": self.reason, "core_base": f"{self.core_base:#x}",
                "init_base": f"{self.init_base:#x}", "init_state": self.init_state,
                "text_pages": sum(len(r.pfns) for r in (self.core, self.init) if r is not None),
                "seconds": round(self.seconds, 4)}


@dataclass
class ModSites:
    """A module's declared patch sites at its run-time addresses (VA -> allowed words)."""

    words: dict[int, frozenset[int]] = field(default_factory=dict)  # VA -> allowed words
    any_word: set[int] = field(default_factory=set)  # callback alternatives: any word
    bl_slots: set[int] = field(default_factory=set)  # 2nd ftrace NOP: NOP or BL to text
    plt_slots: set[int] = field(default_factory=set)  # ftrace trampoline PLT entries


@dataclass(frozen=True)
class Verdict:
    ok: bool
    rule: str = ""
    reason: str = ""
    values: dict[str, int] = field(default_factory=dict)


def load_candidate(label: str, data: bytes, certs: Sequence[x509.Certificate]) -> Candidate:
    """Parse a module file, verify its signature against `certs`, precompute its layout."""
    try:
        image = open_module(data, label)
    except (ModuleError, ValueError) as exc:
        return Candidate(label, "", None, None, None, -1, None, f"not a module: {exc}",
                         "mod-format")
    signer = None
    problem, rule = "", ""
    if image.linux_signature is None:
        problem, rule = "the module carries no signature", "mod-unsigned"
    else:
        errors = []
        for cert in certs:
            try:
                linux_sig.verify_appended_signature(data, cert)
            except ModuleError as exc:
                errors.append(str(exc))
                continue
            signer = cert.subject.rfc4514_string()
            break
        if signer is None:
            problem = "signature does not verify against a trusted certificate" + \
                (f" ({errors[0]})" if errors else " (no certificate trusted)")
            rule = "mod-bad-signature"
    try:
        view = prepare(image.elf, LINUX_6_1)
        layout = layout_sections(view)
    except (ModuleError, ValueError) as exc:
        return Candidate(label, image.name, image, None, None, -1, signer,
                         f"layout: {exc}", "mod-format")
    tm = next((s for s in view.sections if s.name == ".gnu.linkonce.this_module"), None)
    off = -1
    if tm is not None and layout.region_of(tm.index) is Region.CORE:
        off = layout.placement[tm.index][1]
    if off < 0 and not problem:
        problem, rule = "no .gnu.linkonce.this_module in the core layout", "mod-format"
    return Candidate(label, image.name, image, view, layout, off, signer, problem, rule)


class ModuleAuthority:
    """The trusted certificates, the candidate modules and the kernel's exports (link-time
    addresses); `kaslr` is set once the kernel's displacement is known (arming)."""

    def __init__(self, certs: Sequence[x509.Certificate], modules: Iterable[tuple[str, bytes]],
                 kernel_exports: Mapping[str, Export],
                 kernel_text: Sequence[tuple[int, int]] = (),
                 module_struct: Mapping[str, int] | None = None) -> None:
        self.certs = list(certs)
        self.module_struct = dict(module_struct or {})  # struct module field -> byte offset
        self.candidates = [load_candidate(label, data, self.certs) for label, data in modules]
        self.kernel_exports = dict(kernel_exports)
        self.kernel_text_link = list(kernel_text)  # link-time VA ranges
        self.kaslr = 0
        self._kexports: list[Export] | None = None

    def set_kaslr(self, kaslr: int) -> None:
        if kaslr != self.kaslr:
            self.kaslr = kaslr
            self._kexports = None

    def in_kernel_text(self, va: int) -> bool:
        return any(lo + self.kaslr <= va < hi + self.kaslr for lo, hi in self.kernel_text_link)

    def export_table(self, loaded: Iterable[Export]) -> ExportTable:
        if self._kexports is None:
            self._kexports = [Export(e.name, (e.address + self.kaslr) & MASK64, e.kind, e.owner,
                                     e.crc) for e in self.kernel_exports.values()]
        table = ExportTable(self._kexports)
        table.add(loaded)
        return table

    # --- step 1: which module --------------------------------------------------------------

    def identify(self, base: int, read: ReadVa) -> tuple[Candidate, int] | Verdict:
        """The candidate whose `struct module` sits where its layout says, for a core layout
        at `base`, and the init layout's base read beside it; else a refusal."""
        if base % PAGE:
            return Verdict(False, "mod-unknown", "text made executable at an unaligned VA",
                           {"va": base})
        named: list[Candidate] = []
        for c in self.candidates:
            if c.layout is None or c.this_module < 0:
                continue
            raw = read(base + c.this_module + NAME_OFF, MODULE_NAME_LEN)
            if raw is None:
                continue
            name = raw.split(b"\0", 1)[0].decode("utf-8", "replace")
            if name != c.name:
                continue
            named.append(c)
            init_base = self._layout_base(c, base, read)
            if init_base is not None:
                return c, init_base
        if named:
            return Verdict(False, "mod-layout", f"{named[0].name}: struct module does not hold "
                           "the layout secvma computes", {"va": base})
        return Verdict(False, "mod-unknown", "no candidate module file matches this load "
                       "(unknown or unsigned module)", {"va": base})

    @staticmethod
    def _layout_base(c: Candidate, base: int, read: ReadVa) -> int | None:
        """Init base from `struct module`'s core_layout/init_layout (None: no match)."""
        assert c.layout is not None and c.view is not None
        tm = next(s for s in c.view.sections if s.name == ".gnu.linkonce.this_module")
        raw = read(base + c.this_module, tm.size)
        if raw is None:
            return None
        co, ini = c.layout.core, c.layout.init
        core_pat = struct.pack("<QIIII", base, co.size, co.text_size, co.ro_size,
                               co.ro_after_init_size)
        k = raw.find(core_pat)
        if k < 0 or k % 8:
            return None
        if ini.size == 0:
            return 0
        init_pat = struct.pack("<IIII", ini.size, ini.text_size, ini.ro_size,
                               ini.ro_after_init_size)
        j = raw.find(init_pat, k + len(core_pat))
        while j >= 0:
            if j % 8 == 0 and j >= 8:
                ib = struct.unpack_from("<Q", raw, j - 8)[0]
                if ib and ib % PAGE == 0:
                    return int(ib)
            j = raw.find(init_pat, j + 1)
        return None

    def percpu_base(self, c: Candidate, base: int, read: ReadVa) -> int | Verdict:
        """Where the kernel put the module's per-CPU data (`struct module`'s `percpu`; 0 for a
        module without `.data..percpu`), read beside the layouts `identify` matched.

        Why the kernel's word can be taken: it only moves the data addresses the module's
        code computes (ADRP/ADD/LDR immediates against the per-CPU area), data the kernel can
        write anyway; it is accepted only with the `percpu_size` the file implies, and the
        relocation itself refuses a base out of the instructions' reach."""
        assert c.view is not None
        if not c.view.percpu_index:
            return 0
        size = c.view.sections[c.view.percpu_index].size
        off, off_size = self.module_struct.get("percpu"), self.module_struct.get("percpu_size")
        if off is None or off_size != off + 8:
            return Verdict(False, "mod-layout", f"{c.name}: has per-CPU data and the kernel's "
                           "struct module layout is unknown (the Image has no BTF)", {"va": base})
        raw = read(base + c.this_module + off, 12)
        if raw is None or len(raw) != 12:
            return Verdict(False, "mod-layout", f"{c.name}: struct module's per-CPU fields are "
                           "not mapped", {"va": base})
        ptr, got = struct.unpack("<QI", raw)
        if got != size or ptr == 0 or ptr % 8:
            return Verdict(False, "mod-layout", f"{c.name}: struct module's per-CPU area "
                           f"({ptr:#x}, {got} bytes) is not one for its {size} bytes",
                           {"va": base, "percpu": ptr})
        return int(ptr)

    # --- steps 2-3: signature, relocation ----------------------------------------------------

    def link(self, c: Candidate, core_base: int, init_base: int,
             loaded: Iterable[Export], percpu: int = 0,
             ) -> tuple[dict[str, bytes], ModSites, list[Export]] | Verdict:
        """Expected text of both layouts, the patch sites and the module's own exports."""
        if c.problem:
            return Verdict(False, c.rule, f"{c.name or c.label}: {c.problem}")
        assert c.image is not None and c.layout is not None
        try:
            linked = link_module(c.image.elf, self.export_table(loaded), core_base, init_base,
                                 LINUX_6_1, percpu_base=percpu, check_licence=False,
                                 check_crcs=False)
        except (ModuleError, ValueError) as exc:
            return Verdict(False, "mod-link", f"{c.name}: {exc}")
        lay = c.layout
        texts: dict[str, bytes] = {}
        for region, size in ((Region.CORE, lay.core.text_size), (Region.INIT, lay.init.text_size)):
            buf = bytearray(size)
            for idx, (r, off) in lay.placement.items():
                if r is not region or off >= size:
                    continue
                data = linked.relocated.contents.get(idx)
                if data is None:
                    continue
                buf[off:off + len(data)] = data[:max(0, size - off)]
            texts[region.value] = bytes(buf)
        sites = self._sites(c, linked.addresses, linked.relocated.contents)
        exports = module_exports(c.image.elf, linked.addresses, c.name)
        return texts, sites, exports

    def _sites(self, c: Candidate, addrs: Mapping[int, int],
               contents: Mapping[int, bytearray]) -> ModSites:
        """The module's declared patch sites, at their run-time VAs."""
        assert c.view is not None
        sites = ModSites()
        by_name = {s.name: s.index for s in c.view.sections}

        def word_at(va: int) -> int | None:
            for idx, data in contents.items():
                a = addrs.get(idx)
                if a is not None and a <= va and va + 4 <= a + len(data):
                    return int.from_bytes(data[va - a:va - a + 4], "little")
            return None

        def allow(va: int, *words: int) -> None:
            sites.words[va] = sites.words.get(va, frozenset()) | frozenset(words)

        jt = by_name.get("__jump_table")
        if jt is not None and jt in contents:
            data, a = contents[jt], addrs[jt]
            for i in range(0, len(data) - 15, 16):
                code = (a + i + struct.unpack_from("<i", data, i)[0]) & MASK64
                target = (a + i + 4 + struct.unpack_from("<i", data, i + 4)[0]) & MASK64
                delta = target - code
                if delta % 4 == 0 and -(1 << 27) <= delta < 1 << 27:
                    allow(code, NOP, 0x1400_0000 | ((delta >> 2) & 0x3FF_FFFF))
        alt = by_name.get(".altinstructions")
        if alt is not None and alt in contents:
            data, a = contents[alt], addrs[alt]
            for i in range(0, len(data) - 11, 12):
                orig = (a + i + struct.unpack_from("<i", data, i)[0]) & MASK64
                repl = (a + i + 4 + struct.unpack_from("<i", data, i + 4)[0]) & MASK64
                feature, olen, alen = struct.unpack_from("<HBB", data, i + 8)
                for k in range(0, olen - olen % 4, 4):
                    if feature & CB_BIT:
                        sites.any_word.add(orig + k)
                        continue
                    w = word_at(repl + k) if k < alen else None
                    if w is not None:
                        allow(orig + k, retarget(w, repl + k, orig + k))
        pfe = by_name.get("__patchable_function_entries")
        if pfe is not None and pfe in contents:
            data = contents[pfe]
            for i in range(0, len(data) - 7, 8):
                va = struct.unpack_from("<Q", data, i)[0]
                allow(va, NOP, MOV_X9_X30)
                sites.bl_slots.add(va + 4)
        tr = by_name.get(".text.ftrace_trampoline")
        if tr is not None and tr in addrs:
            a, size = addrs[tr], c.view.sections[tr].size
            sites.plt_slots.update(range(a, a + size - PLT_SIZE + 1, PLT_SIZE))
        return sites

    # --- step 4: comparison ------------------------------------------------------------------

    def compare(self, base: int, expected: bytes, live: bytes, sites: ModSites,
                tramp: Sequence[int] = ()) -> list[tuple[int, int, int]]:
        """(VA, live word, expected word) of every word that differs and no site allows."""
        bad: list[tuple[int, int, int]] = []
        if live == expected:
            return bad
        plt_done: set[int] = set()
        for c in range(0, len(expected), 64):
            if live[c:c + 64] == expected[c:c + 64]:
                continue
            for k in range(c, min(c + 64, len(expected)), 4):
                lw = int.from_bytes(live[k:k + 4], "little")
                ew = int.from_bytes(expected[k:k + 4], "little")
                if lw == ew:
                    continue
                va = base + k
                if not self.word_allowed(va, lw, sites, tramp, live=live, base=base,
                                         plt_done=plt_done):
                    bad.append((va, lw, ew))
                    if len(bad) >= 16:
                        return bad
        return bad

    def word_allowed(self, va: int, word: int, sites: ModSites, tramp: Sequence[int] = (), *,
                     live: bytes | None = None, base: int = 0,
                     plt_done: set[int] | None = None) -> bool:
        """Whether `word` may stand at `va` (a declared site with an allowed word)."""
        if va in sites.any_word or word in sites.words.get(va, frozenset()):
            return True
        if va in sites.bl_slots:
            if word == NOP:
                return True
            if word & 0xFC00_0000 == 0x9400_0000:
                off = word & 0x3FF_FFFF
                target = (va + 4 * (off - (1 << 26) if off >> 25 else off)) & MASK64
                return self.in_kernel_text(target) or any(
                    t <= target < t + 2 * PLT_SIZE for t in tramp)
            return False
        slot = next((s for s in sites.plt_slots if s <= va < s + PLT_SIZE), None)
        if slot is not None and live is not None and slot - base >= 0:
            entry = live[slot - base:slot - base + PLT_SIZE]
            if plt_done is not None and slot in plt_done:
                return True
            ok = self.plt_to_text(slot, entry)
            if ok and plt_done is not None:
                plt_done.add(slot)
            return ok
        return False

    def plt_to_text(self, slot: int, entry: bytes) -> bool:
        """An ftrace trampoline slot: zero, or ADRP/ADD/BR x16 to kernel text."""
        if len(entry) != PLT_SIZE:
            return False
        if entry == bytes(PLT_SIZE):
            return True
        adrp, add, _br = struct.unpack("<III", entry)
        if adrp & 0x9F00_001F != 0x9000_0010 or add & 0xFFC0_03FF != 0x9100_0210:
            return False
        imm = ((adrp >> 5) & 0x7FFFF) << 2 | (adrp >> 29) & 3
        imm = imm - (1 << 21) if imm >> 20 else imm
        target = ((slot & ~0xFFF) + (imm << 12) + ((add >> 10) & 0xFFF)) & MASK64
        return self.in_kernel_text(target) and plt_entry(PLT_SIZE, slot, target) == entry


__all__ = ["Candidate", "ModRecord", "ModSites", "ModuleAuthority", "Verdict", "load_candidate"]
