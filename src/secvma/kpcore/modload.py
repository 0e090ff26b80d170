"""The in-hypervisor module loader: HVC 30 (MLOAD), 31 (MFREE), 32 (MOD_INIT_FREE), spec §7.

C: kint/HostModule.c:el2_load_module / el2_free_module / el2_free_mod_init,
kint/HostModuleOps.c:init_mapping, kint/HostModuleAux.c:remap_host_mod_page / mark_ex,
kint/HostModuleCoreAux.c:move_section / update_section, verify_mod, simplify_symbol,
apply_relocate_add_el2, el2_fill_symtab.

A load is one `ModuleLoad`, a staged one-shot transaction (docs/STYLE.md §5 rule 7)::

    freeze()    read the checklist and `struct secvma_mod_arch` once; the temporary image's
                pages become AUTH (stage 2 RO) before their bytes are read, then copied once
                into hypervisor memory: nothing is read from the guest twice
    verify()    parse the copy; signed message = records + bytes of the guest's checklist over
                the frozen headers (`secvma_sig.serialize_checklist`); Ed25519 against the
                signature table entry of the `.modinfo` name
    relocate()  check placement (runs, pools, owners, mark-ex entries), resolve symbols
                against the kernel's exports (read once from boot info) and the loaded
                modules' exports (hypervisor memory), relocate the verified bytes in EL2
    map_text()  commit: run pages -> MOD_txt / MOD_ro filled with the verified, relocated
                bytes; data relocations written; PXN cleared on the entries mapping verified
                text; the image back to NONE; returns the module id

Any refusal or error rolls the transaction back (undo log, reverse order): no AUTH or MOD_*
page, no PXN change, no written byte stays behind (closes spec §11 gap 19 in both policies;
this model relocates before installing, so C's half-installed state cannot arise). A refusal
answers HVC_INVALID (0xFFFFFFFF) and is logged with its rule.

Page transitions (owner stays HOST)::

    HVC 30  image pages      NONE -> AUTH (S2 RO) -> NONE (S2 RW, EL1-XN)
            text run pages   NONE -> MOD_txt (S2 RO+X), contents := verified + relocated
            ro run pages     NONE -> MOD_ro  (hardened: S2 RO; secvma2024: RW, gap 15)
            text PTEs        PXN 1 -> 0 (hardened: only L3 leaves mapping the page, gap 2)
    HVC 32  init-only text   PXN 0 -> 1; MOD_txt -> NONE (zeroed, S2 RW)
    HVC 31  text (+init)     PXN 0 -> 1; MOD_txt -> NONE (zeroed)
            ro               hardened: MOD_ro -> NONE (zeroed); secvma2024: left MOD_ro until
                             the kernel unmaps it (spec §7.5)
            exports          removed from the hypervisor's table

Rules (refusal names)::

    mload-args        n = 0, n > 100 (secvma2024: EL2 overflow -> panic, gap 7), not installed
    mload-pointer     a guest VA that does not translate / maps non-host memory (gap 3)
    mload-image       image page not host NONE / device-mapped; image too large
    mload-elf         malformed ELF in the frozen copy
    mload-name        `.modinfo` name over 99 bytes (secvma2024: panic, gap 7)
    mload-no-keys     no signature table configured
    mload-unknown-name  no table entry (hardened: exact match; secvma2024: prefix, gap 6)
    mload-checklist   checklist malformed (index, duplicates, no symtab)
    mload-signature   Ed25519 does not verify
    mload-duplicate   a module of that name is loaded (hardened)
    mload-placement   sections outside their runs / pools / mod_arch, overlapping, aliased
                      pages, unverified executable sections (hardened, gap 3/15)
    mload-mark-ex     a verified text page is not mapped by an L3 PTE of the kernel (gap 2)
    mload-symbol      unresolved strong symbol, common symbol
    mload-reloc       relocation failure, unsigned relocations of verified sections (hardened),
                      target outside the module's own runs / data (hardened, gap 3)
    mload-exports     a module export clashes with an existing one (hardened)
    mload-ksymtab     the kernel's export table in boot info is malformed
    mload-slots       all 66 module slots in use
    mfree-id          no such module id; mfree-busy: its exports are in use (hardened)

Not modelled (both policies): PLT veneers for far branches (refused: the module window is in
CALL26 reach of the kernel) and the erratum-843419 ADRP path (gap 20: off); C's contiguity
check of each run (replaced by containment in the declared runs + no overlap); gap 21 (every
page is translated); secvma2024's later re-reading of a loaded module's RW `__ksymtab`
(gap 15, third part: exports are always hypervisor memory); gap 19's half-installed failures
(nothing can fail after install here). HVC 31 frees init text too when HVC 32 never came.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import itertools
import struct
from collections.abc import Callable
from dataclasses import dataclass

from secvma.arch.walk import AccessType
from secvma.hvabi import ModArch
from secvma.kpcore.descs import PXN, Shape, out_pa
from secvma.kpcore.fetch import S1Pages, s1_translate
from secvma.kpcore.hostmem import desired_kind
from secvma.kpcore.kpt import protected_walk, set_module_exec
from secvma.kpcore.modstate import LoadedModule
from secvma.kpcore.pages import Owner, Usage
from secvma.kpcore.refusal import Errno, HypPanic, HypRefusal, Outcome, Refusal, log
from secvma.kpcore.stage2 import PermKind
from secvma.kpcore.state import KState
from secvma.module import native, secvma_sig
from secvma.module.elf import (
    RELA,
    SHF_ALLOC,
    SHF_EXECINSTR,
    SHT_NOBITS,
    SHT_RELA,
    ElfModule,
    Section,
)
from secvma.module.errors import ModuleError
from secvma.module.native import ops
from secvma.module.relocations import RelocTarget, apply_relocations
from secvma.module.symbols import Export, ExportKind, ExportTable, module_exports, module_name
from secvma.module.symbols import resolve_symbols as _resolve
from secvma.platform import (
    CODE_RANGES_MAX,
    GuestMemoryError,
    PhysAddr,
    Platform,
    Vcpu,
    code_runs,
)

PAGE = 4096
MAX_CHECKLIST = 100
MAX_IMAGE = 64 << 20
"""Largest temporary image / module run the hypervisor accepts (C has no bound)."""
MAX_KSYMS = 1 << 17
KSYM = struct.Struct("<QQ")
EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
SHDR_SIZE = 64
MASK64 = (1 << 64) - 1
ZERO_PAGE = bytes(PAGE)


class WrongStage(RuntimeError):
    """A `ModuleLoad` stage was called out of order or after the load finished."""


class Stage(enum.Enum):
    NEW = 0
    FROZEN = 1
    VERIFIED = 2
    RELOCATED = 3
    STAGED = 4
    DONE = 5
    ABORTED = 6


@dataclass(frozen=True, slots=True)
class ModArgs:
    """HVC 30's registers x1..x5."""

    hdr_va: int
    percpu_va: int
    arch_va: int
    checklist_va: int
    n: int


def _refuse(rule: str, reason: str, code: Errno = Errno.EPERM, **v: int) -> HypRefusal:
    return HypRefusal(code, rule, reason, **v)


def _pages(va: int, size: int) -> range:
    """Page-aligned VAs covering [va, va + size)."""
    if size <= 0:
        return range(0)
    return range(va & ~(PAGE - 1), (va + size + PAGE - 1) & ~(PAGE - 1), PAGE)


# --- stage 2 of a module page -------------------------------------------------------------------


def kind_for(st: KState, pfn: int, usage: Usage) -> PermKind:
    """Stage-2 permission EL2 gives a page of `usage` (remap_host_mod_page's `perm`)."""
    if usage is Usage.EL1_AUTH:
        return PermKind.RO
    if usage is Usage.EL1_MOD_TXT:
        return PermKind.KCODE
    if usage is Usage.EL1_MOD_RO:
        return PermKind.KERNEL if st.policy.quirks.mod_ro_writable else PermKind.RO
    kind = desired_kind(st, pfn)
    assert kind is not None, f"pfn {pfn:#x} has no host mapping"
    return kind


def _commit_class(st: KState, pfn: int, usage: Usage) -> None:
    """usage -> `usage` with its 4 KB stage-2 permission (subcount untouched: the kernel's own
    PTEs still reference the page). C: remap_host_mod_page / refund_host_mod_page."""
    st.pages._set_usage(pfn, usage)
    kind = kind_for(st, pfn, usage)
    pa = pfn << 12
    hit = st.s2.leaf(pa)
    if hit is None:
        st.s2.map_leaf(pa, 3, kind)
        return
    if hit[1] < 3:
        st.s2.split_to_page(pa)
    st.s2.set_leaf(pa, 3, kind)


def _tables_needed(st: KState, pfns: list[int]) -> int:
    """Stage-2 table pages `_commit_class` may allocate for `pfns` (check phase)."""
    l2: set[int] = set()
    l3: set[int] = set()
    for pfn in pfns:
        pa = pfn << 12
        hit = st.s2.leaf(pa)
        level = hit[1] if hit is not None else st.s2.walk(pa)[0]
        if level == 1:
            l2.add(pa >> 30)
        if level <= 2:
            l3.add(pa >> 21)
    return len(l2) + len(l3)


def release_page(st: KState, plat: Platform, pfn: int) -> None:
    """MOD_* -> NONE: contents zeroed, stage 2 back to RW (EL1-XN)."""
    plat.write(PhysAddr(pfn << 12), ZERO_PAGE)
    _commit_class(st, pfn, Usage.NONE)


# --- guest memory --------------------------------------------------------------------------------


def translate(st: KState, plat: Platform, cpu: Vcpu, va: int, *, rule: str,
              pages: S1Pages | None = None) -> int:
    """PA of the page holding kernel VA `va`, through the kernel's live stage-1 tables
    (`pages`: a load's translator, which walks each 2 MB region's upper levels once)."""
    page = va & ~(PAGE - 1) & MASK64
    hit = pages.translate(page) if pages is not None else s1_translate(plat, cpu, page,
                                                                       AccessType.LOAD)
    if hit is None:
        raise _refuse(rule, "guest VA is not mapped by the kernel", Errno.EINVAL, va=va)
    pa = hit[0] & ~(PAGE - 1)
    if not st.pages.in_ram(pa):
        raise _refuse(rule, "guest VA maps memory outside RAM", Errno.EINVAL, va=va, pa=pa)
    return pa


def _readable(st: KState, pa: int, *, rule: str, va: int) -> None:
    """hardened (gap 3): EL2 reads guest pointers only where the host owns the page."""
    if st.policy.quirks.mod_unchecked_pointers:
        return
    if st.pages.owner_of(pa >> 12) is not Owner.HOST:
        raise _refuse(rule, "guest pointer maps hypervisor memory", va=va, pa=pa)


def read_guest(st: KState, plat: Platform, cpu: Vcpu, va: int, size: int, *, rule: str) -> bytes:
    """`size` bytes at kernel VA `va`, page by page (one read per page)."""
    out = bytearray()
    for page in _pages(va, size):
        pa = translate(st, plat, cpu, page, rule=rule)
        _readable(st, pa, rule=rule, va=page)
        lo = max(va, page) - page
        hi = min(va + size, page + PAGE) - page
        try:
            out += plat.read(PhysAddr(pa + lo), hi - lo)
        except GuestMemoryError:
            raise _refuse(rule, "guest memory unreadable", Errno.EINVAL, va=page) from None
    return bytes(out)


def _walk_entry(st: KState, plat: Platform, va: int) -> tuple[int, int, int] | None:
    """(slot PA, entry, level) of the kernel leaf mapping `va` in swapper, None if unmapped.

    The walk only follows links into protected table pages (as kpt.set_module_exec does).
    """
    assert st.boot is not None
    if va >> 48 != 0xFFFF:
        return None
    found = protected_walk(st, plat, va)
    if found is None or found[3] is not Shape.LEAF:
        return None
    return found[0], found[1], found[2]


# --- the kernel's exports -----------------------------------------------------------------------


def kernel_exports(st: KState, plat: Platform) -> list[Export]:
    """The kernel's `__ksymtab` / `__ksymtab_gpl` (boot info ranges), read and validated once.

    Entries are `struct kernel_symbol {u64 value; u64 name;}` (4.18 absolute pointers, name a
    kernel-image VA). hardened: both ranges and every name lie in the kernel's rodata (RODATA
    pages, read-only since boot), so the table cannot change after it was read.
    C: el2_resolve_symbol reads the same ranges on every lookup.
    """
    if st.mod.kernel_exports is not None:
        return st.mod.kernel_exports
    boot = st.boot
    assert boot is not None
    rule = "mload-ksymtab"
    strict = not st.policy.quirks.mod_unchecked_pointers
    cache: dict[int, bytes] = {}

    def page(pa: int) -> bytes:
        got = cache.get(pa)
        if got is None:
            if not st.pages.in_ram(pa):
                raise _refuse(rule, "export name outside RAM", Errno.EINVAL, pa=pa)
            if strict and st.pages.usage_of(pa >> 12) not in (Usage.EL1_RODATA,
                                                              Usage.EL1_KCODE):
                raise _refuse(rule, "export name not in read-only kernel memory", pa=pa)
            got = cache[pa] = plat.read(PhysAddr(pa), PAGE)
        return got

    def name_at(va: int) -> str:
        pa = boot.pa_of(va)
        raw = b""
        while len(raw) < 128:
            chunk = page((pa + len(raw)) & ~(PAGE - 1))[(pa + len(raw)) & (PAGE - 1):]
            end = chunk.find(b"\0")
            if end >= 0:
                name = raw + chunk[:end]
                if not name.isascii():
                    raise _refuse(rule, "export name is not ASCII", Errno.EINVAL, va=va)
                return name.decode("ascii")
            raw += chunk
        raise _refuse(rule, "export name longer than 127 bytes", Errno.EINVAL, va=va)

    out: list[Export] = []
    for lo, hi, kind in ((boot.ksymtab, boot.ksymtab_end, ExportKind.PLAIN),
                         (boot.ksymtab_gpl, boot.ksymtab_gpl_end, ExportKind.GPL)):
        if lo == hi:
            continue
        if hi < lo or (hi - lo) % KSYM.size or (hi - lo) // KSYM.size > MAX_KSYMS \
                or not st.pages.in_ram(lo) or not st.pages.in_ram(hi - 1):
            raise _refuse(rule, "kernel export table range malformed", Errno.EINVAL,
                          start=lo, end=hi)
        if strict and not (boot.rodata <= lo and hi <= boot.erodata):
            raise _refuse(rule, "kernel export table outside rodata", start=lo, end=hi)
        for value, name_va in KSYM.iter_unpack(plat.read(PhysAddr(lo), hi - lo)):
            out.append(Export(name_at(name_va), value, kind, "vmlinux"))
    st.mod.kernel_exports = out
    return out


# --- the staged load --------------------------------------------------------------------------


@dataclass
class _Run:
    """The pages of one class the load installs: VA -> PA, and what goes on each page."""

    pages: dict[int, int]
    images: dict[int, bytearray]


class ModuleLoad:
    """One HVC 30: `freeze() -> verify() -> relocate() -> map_text()`, then finished.

    Each stage raises `WrongStage` unless the previous one completed; a refusal leaves the
    object unusable (call `rollback()`, which undoes everything committed so far).
    """

    def __init__(self, st: KState, plat: Platform, cpu: Vcpu, args: ModArgs) -> None:
        self.st, self.plat, self.cpu, self.args = st, plat, cpu, args
        self.s1 = S1Pages(plat, cpu)
        self.q = st.policy.quirks
        self.strict = not self.q.mod_unchecked_pointers
        self.stage = Stage.NEW
        self._undo: list[tuple[str, int, int, bytes]] = []
        self.frozen: dict[int, int] = {}  # image page VA -> PA
        self.image = b""
        self.checklist: tuple[int, ...] = ()
        self.arch: ModArch | None = None
        self.elf: ElfModule | None = None
        self.name = ""
        self.message: secvma_sig.SignedMessage | None = None
        self.text = _Run({}, {})
        self.ro = _Run({}, {})
        self.init_pages: set[int] = set()
        self.data_writes: list[tuple[int, bytes]] = []
        self.exports: list[Export] = []
        self.imports_from: set[str] = set()
        self.modid = -1

    def _advance(self, want: Stage, nxt: Stage) -> None:
        if self.stage is not want:
            raise WrongStage(f"{nxt.name.lower()} needs stage {want.name}, load is at "
                             f"{self.stage.name}")
        self.stage = nxt

    # ---- freeze ----------------------------------------------------------------------------

    def freeze(self) -> None:
        """Arguments read once; image pages AUTH; the image copied into hypervisor memory."""
        self._advance(Stage.NEW, Stage.FROZEN)
        st, a = self.st, self.args
        n = a.n
        if n == 0 or n > MAX_CHECKLIST:
            if n > MAX_CHECKLIST and self.q.mod_bounds_unchecked:
                raise HypPanic(Errno.EINVAL, "mload-args", "checklist longer than EL2's "
                               "100-entry secinfo array (stack overflow, gap 7)", n=n)
            raise _refuse("mload-args", "checklist must have 1..100 entries", Errno.EINVAL, n=n)
        raw = read_guest(st, self.plat, self.cpu, a.checklist_va, 4 * n, rule="mload-pointer")
        self.checklist = struct.unpack(f"<{n}I", raw)
        self.arch = ModArch.from_bytes(read_guest(st, self.plat, self.cpu, a.arch_va,
                                                  ModArch.SIZE, rule="mload-pointer"))
        self._freeze_range(a.hdr_va, EHDR.size)
        (ident, _t, _m, _v, _e, _p, shoff, _f, _eh, _pe, _pn, shentsize, shnum,
         _ss) = EHDR.unpack(self._read_frozen(a.hdr_va, EHDR.size))
        if ident[:4] != b"\x7fELF" or shentsize != SHDR_SIZE or shnum == 0:
            raise _refuse("mload-elf", "not an ELF64 module header", Errno.EINVAL)
        if n > shnum:
            raise _refuse("mload-args", "checklist longer than the section count",
                          Errno.EINVAL, n=n, shnum=shnum)
        table_end = shoff + shnum * SHDR_SIZE
        if table_end > MAX_IMAGE:
            raise _refuse("mload-image", "section header table beyond the image limit",
                          Errno.EINVAL, end=table_end)
        self._freeze_range(a.hdr_va, table_end)
        extent = table_end
        shdrs = self._read_frozen(a.hdr_va + shoff, shnum * SHDR_SIZE)
        for i in range(shnum):
            _nm, typ, _fl, _ad, off, size, *_ = struct.unpack_from("<IIQQQQIIQQ", shdrs,
                                                                   i * SHDR_SIZE)
            if typ != SHT_NOBITS:
                extent = max(extent, off + size)
        if extent > MAX_IMAGE:
            raise _refuse("mload-image", "module image larger than the limit", Errno.EINVAL,
                          size=extent)
        self._freeze_range(a.hdr_va, extent)
        self.image = self._read_frozen(a.hdr_va, extent)

    def _freeze_range(self, va: int, size: int) -> None:
        """Check then commit AUTH on every not-yet-frozen page of [va, va+size)."""
        st, rule = self.st, "mload-image"
        new: list[tuple[int, int]] = []
        seen = set(self.frozen.values())
        for page in _pages(va, size):
            if page in self.frozen:
                continue
            pa = translate(st, self.plat, self.cpu, page, rule="mload-pointer", pages=self.s1)
            pfn = pa >> 12
            if pa in seen:
                raise _refuse(rule, "two image pages map the same physical page", va=page,
                              pa=pa)
            if st.pages.owner_of(pfn) is not Owner.HOST:
                raise _refuse(rule, "image page not owned by the host", va=page, pa=pa)
            usage = st.pages.usage_of(pfn)
            if usage is not Usage.NONE:
                raise _refuse(rule, f"image page is {usage.name}, must be NONE", va=page,
                              pa=pa, usage=usage)
            if self.strict and st.pages.count_of(pfn):
                raise _refuse(rule, "image page is mapped by a device", Errno.EBUSY, pa=pa)
            seen.add(pa)
            new.append((page, pa))
        st.s2.check_available(_tables_needed(st, [pa >> 12 for _v, pa in new]), rule=rule)
        for page, pa in new:
            self._set_class(pa >> 12, Usage.EL1_AUTH)
            self.frozen[page] = pa

    def _read_frozen(self, va: int, size: int) -> bytes:
        out = bytearray()
        for page in _pages(va, size):
            pa = self.frozen[page]
            lo = max(va, page) - page
            hi = min(va + size, page + PAGE) - page
            out += self.plat.read(PhysAddr(pa + lo), hi - lo)
        return bytes(out)

    # ---- verify ----------------------------------------------------------------------------

    def verify(self) -> None:
        """Parse the frozen copy, build the signed message, check it (raises on any mismatch)."""
        self._advance(Stage.FROZEN, Stage.VERIFIED)
        st = self.st
        try:
            elf = self.elf = ElfModule(self.image)
        except ModuleError as exc:
            raise _refuse("mload-elf", f"malformed module: {exc}", Errno.EINVAL) from None
        name = self.name = module_name(elf)
        if len(name.encode("utf-8", "surrogateescape")) > 99:
            if self.q.mod_bounds_unchecked:
                raise HypPanic(Errno.EINVAL, "mload-name", "module name overflows EL2's "
                               "100-byte buffer (gap 7)", length=len(name))
            raise _refuse("mload-name", "module name longer than 99 bytes", Errno.EINVAL,
                          length=len(name))
        keys = st.mod.keys
        if keys is None:
            raise _refuse("mload-no-keys", "no module signature table configured")
        entry = keys.lookup(name, prefix=self.q.mod_name_prefix)
        if entry is None:
            raise _refuse("mload-unknown-name",
                          f"module {name!r} is not in the signature table")
        if st.policy.hardened and st.mod.by_name(name) is not None:
            raise _refuse("mload-duplicate", f"module {name!r} is already loaded", Errno.EBUSY)
        if self.strict and len(set(self.checklist)) != len(self.checklist):
            raise _refuse("mload-checklist", "checklist lists a section twice", Errno.EINVAL)
        image = self.image

        def read(sec: Section) -> bytes:
            return image[sec.offset:sec.offset + sec.size]

        try:
            msg = secvma_sig.serialize_checklist(elf.sections, self.checklist, read)
        except ModuleError as exc:
            raise _refuse("mload-checklist", str(exc), Errno.EINVAL) from None
        try:
            secvma_sig.verify_message(msg, entry[1], keys.public_key)
        except ModuleError as exc:
            raise _refuse("mload-signature", f"module {name!r} (table entry {entry[0]!r}): "
                          f"{exc}") from None
        self.message = msg

    # ---- relocate --------------------------------------------------------------------------

    def relocate(self) -> None:
        """Placement checks, symbol resolution and relocation, all into hypervisor buffers."""
        self._advance(Stage.VERIFIED, Stage.RELOCATED)
        st, elf, msg, arch = self.st, self.elf, self.message, self.arch
        assert elf is not None and msg is not None and arch is not None
        slot = st.mod.free_slot()
        if slot is None:
            raise _refuse("mload-slots", "all 66 module slots are in use", Errno.EBUSY)
        self.modid = slot
        secs = elf.sections
        listed = set(self.checklist)
        img_lo, img_hi = self.args.hdr_va, self.args.hdr_va + len(self.image)

        def placed(s: Section) -> bool:
            return s.addr != 0 and not img_lo <= s.addr < img_hi and s.type != SHT_RELA

        installed = [s for s in secs if s.index in listed and placed(s)]
        data = [s for s in secs if s.index not in listed and s.flags & SHF_ALLOC and placed(s)]
        self._check_placement(installed, data)
        contents: dict[int, bytearray] = {
            s.index: bytearray(s.size) if s.type == SHT_NOBITS else
            bytearray(msg.content_of(s.index)) for s in installed}
        addrs = {s.index: s.addr for s in secs if placed(s)}
        values = self._resolve(addrs)
        self._apply_relocations(installed, data, listed, contents, values)
        self._build_runs(installed, contents)
        self._module_exports(addrs)

    def _check_placement(self, installed: list[Section], data: list[Section]) -> None:
        """Where the kernel put the sections (hardened: inside its declared runs; gap 3/15)."""
        boot, arch = self.st.boot, self.arch
        assert boot is not None and arch is not None
        rule = "mload-placement"
        spans = sorted((s.addr, s.addr + s.size, s.index) for s in installed if s.size)
        for (_a, a_end, ai), (b, _b_end, bi) in itertools.pairwise(spans):
            if b < a_end:
                raise _refuse(rule, "verified sections overlap", Errno.EINVAL, a=ai, b=bi)
        if sum(s.size for s in installed) > MAX_IMAGE:
            raise _refuse(rule, "verified sections larger than the limit", Errno.EINVAL)
        for s in installed:
            if s.addr + s.size > MASK64:
                raise _refuse(rule, "section wraps the address space", Errno.EINVAL,
                              section=s.index)
        if not self.strict:
            return
        for s in self.elf.sections if self.elf else ():
            if s.flags & SHF_ALLOC and s.flags & SHF_EXECINSTR and s.addr \
                    and s.index not in set(self.checklist) and s.type != SHT_RELA:
                raise _refuse(rule, f"executable section {s.name} is not in the checklist",
                              section=s.index)
        runs = {"text": (arch.text_va, arch.text_size),
                "init": (arch.init_text_va, arch.init_text_size),
                "ro": (arch.ro_va, arch.ro_size), "data": (arch.data_va, arch.data_size)}
        mlo, mhi = boot.modules_va, boot.modules_va_end
        for s in [*installed, *data]:
            if s in data:
                which = "data"
            elif s.flags & SHF_EXECINSTR:
                which = "init" if s.name.startswith(".init") else "text"
            else:
                which = "ro"
            lo, size = runs[which]
            if not (lo <= s.addr and s.addr + s.size <= lo + size) \
                    or s.addr % max(s.addralign, 1):
                raise _refuse(rule, f"section {s.name} [{s.addr:#x}, +{s.size:#x}) outside "
                              f"the {which} run of secvma_mod_arch or misaligned",
                              section=s.index, addr=s.addr)
            if which != "data" and mlo < mhi and not (mlo <= s.addr and s.addr + s.size <= mhi):
                raise _refuse(rule, f"section {s.name} outside the module VA range",
                              section=s.index, addr=s.addr)

    def _resolve(self, addrs: dict[int, int]) -> list[int]:
        """simplify_symbol: undefined -> exports (kernel, then loaded modules); defined -> +base."""
        st, elf = self.st, self.elf
        assert elf is not None
        table = self._kernel_table().copy()
        for _i, m in sorted(st.mod.loaded.items()):  # the first source of a name wins
            table.add([e for e in m.exports if table.get(e.name) is None])
        percpu = 0
        if not self.strict:
            sec = elf.section_by_name(".data..percpu")
            percpu = sec.index if sec is not None else 0
        try:
            res = _resolve(elf, addrs, table, percpu_index=percpu,
                           percpu_base=self.args.percpu_va, check_licence=False,
                           check_crcs=False)
        except ModuleError as exc:
            raise _refuse("mload-symbol", str(exc), Errno.ENOENT) from None
        self.imports_from = {e.owner for e in res.imports.values()
                             if e is not None and e.owner != "vmlinux"}
        return res.values

    def _apply_relocations(self, installed: list[Section], data: list[Section], listed: set[int],
                           contents: dict[int, bytearray], values: list[int]) -> None:
        """apply_relocate_add_el2 for every RELA section whose target is allocated."""
        elf = self.elf
        assert elf is not None
        rule = "mload-reloc"
        inst = {s.index for s in installed}
        data_idx = {s.index: s for s in data}
        data_bufs: dict[int, bytearray] = {}
        fast = native.available()
        symarr = None
        for rs in elf.rela_sections():
            dst = elf.sections[rs.info]
            if not dst.flags & SHF_ALLOC:
                continue
            if dst.index in inst:
                if self.strict and rs.index not in listed:
                    raise _refuse(rule, f"{rs.name} patches verified section {dst.name} but "
                                  "is not signed (not in the checklist)", section=rs.index)
                buf = contents[dst.index]
            elif dst.index in data_idx:
                buf = data_bufs.get(dst.index) or self._read_data(dst)
                data_bufs[dst.index] = buf
            else:
                raise _refuse(rule, f"{rs.name}: target {dst.name} was not placed",
                              Errno.EINVAL, section=rs.index)
            target = RelocTarget(dst.name, buf, dst.addr, None)
            try:
                got = None
                if fast and rs.size % RELA.size == 0:  # the C engine, as the kernel-side linker
                    if symarr is None:
                        symarr = ops.symbol_array(values)
                    got = ops.apply_relas(target, elf.data, rs.offset, rs.size // RELA.size,
                                          values, symarr, plt_sort=False,
                                          erratum_843419=False, module_plts=False)
                if got is None:
                    apply_relocations(target, elf.relocations(rs.index), values,
                                      erratum_843419=False, module_plts=False)
            except ModuleError as exc:
                raise _refuse(rule, str(exc), Errno.EINVAL) from None
        for idx, buf in data_bufs.items():
            self._plan_data_write(data_idx[idx], bytes(buf))

    def _data_page_ok(self, pa: int, va: int) -> None:
        """A relocation target outside the verified runs (hardened: ordinary host memory)."""
        st = self.st
        owner = st.pages.owner_of(pa >> 12)
        usage = st.pages.usage_of(pa >> 12)
        if owner is not Owner.HOST:
            raise _refuse("mload-reloc", "relocation target maps hypervisor memory", va=va,
                          pa=pa)
        if self.strict and usage is not Usage.NONE:
            raise _refuse("mload-reloc", f"relocation target page is {usage.name}: EL2 only "
                          "writes module data pages (NONE)", va=va, pa=pa, usage=usage)

    def _read_data(self, sec: Section) -> bytearray:
        out = bytearray()
        for page in _pages(sec.addr, sec.size):
            pa = translate(self.st, self.plat, self.cpu, page, rule="mload-reloc", pages=self.s1)
            self._data_page_ok(pa, page)
            lo = max(sec.addr, page) - page
            hi = min(sec.addr + sec.size, page + PAGE) - page
            out += self.plat.read(PhysAddr(pa + lo), hi - lo)
        return out

    def _plan_data_write(self, sec: Section, new: bytes) -> None:
        for page in _pages(sec.addr, sec.size):
            pa = translate(self.st, self.plat, self.cpu, page, rule="mload-reloc", pages=self.s1)
            self._data_page_ok(pa, page)
            lo = max(sec.addr, page) - page
            hi = min(sec.addr + sec.size, page + PAGE) - page
            start = page + lo - sec.addr
            self.data_writes.append((pa + lo, new[start:start + hi - lo]))

    def _build_runs(self, installed: list[Section], contents: dict[int, bytearray]) -> None:
        """Page images of the text and ro runs, their PAs, and the mark-ex pre-check."""
        st, boot = self.st, self.st.boot
        assert boot is not None
        rule = "mload-placement"
        core_pages: set[int] = set()
        for s in installed:
            run = self.text if s.flags & SHF_EXECINSTR else self.ro
            body = contents[s.index]
            for page in _pages(s.addr, s.size):
                img = run.images.get(page)
                if img is None:
                    img = run.images[page] = bytearray(PAGE)
                lo = max(s.addr, page)
                hi = min(s.addr + s.size, page + PAGE)
                img[lo - page:hi - page] = body[lo - s.addr:hi - s.addr]
                if run is self.text and not s.name.startswith(".init"):
                    core_pages.add(page)
        if set(self.text.images) & set(self.ro.images):
            raise _refuse(rule, "a page holds both verified text and read-only data")
        self.init_pages = set(self.text.images) - core_pages
        used = set(self.frozen.values())
        for run, pool, usage in ((self.text, (boot.mod_text_pool, boot.mod_text_pool_end),
                                  Usage.EL1_MOD_TXT),
                                 (self.ro, (boot.mod_ro_pool, boot.mod_ro_pool_end),
                                  Usage.EL1_MOD_RO)):
            for page in sorted(run.images):
                pa = translate(st, self.plat, self.cpu, page, rule="mload-pointer",
                               pages=self.s1)
                pfn = pa >> 12
                if pa in used:
                    raise _refuse(rule, "two module pages map the same physical page",
                                  va=page, pa=pa)
                used.add(pa)
                if st.pages.owner_of(pfn) is not Owner.HOST \
                        or st.pages.usage_of(pfn) is not Usage.NONE:
                    raise _refuse(rule, f"{usage.name} page must be a host NONE page",
                                  va=page, pa=pa, usage=st.pages.usage_of(pfn))
                if self.strict and not pool[0] <= pa < pool[1]:
                    raise _refuse(rule, f"{usage.name} page outside its module pool",
                                  va=page, pa=pa)
                if self.strict and st.pages.count_of(pfn):
                    raise _refuse(rule, "module page is mapped by a device", Errno.EBUSY,
                                  pa=pa)
                run.pages[page] = pa
        if self.strict:  # map_text writes data after installing the runs: no alias of them
            for pa, _data in self.data_writes:
                if pa & ~(PAGE - 1) in used:
                    raise _refuse(rule, "a data relocation page aliases a verified module "
                                  "page", pa=pa)
        for page, pa in self.text.pages.items():
            hit = _walk_entry(st, self.plat, page)
            if hit is None:
                raise _refuse("mload-mark-ex", "verified text page is not mapped by the "
                              "kernel", Errno.ENOENT, va=page)
            if self.strict and (hit[2] != 3 or out_pa(hit[1], 3, Shape.LEAF) != pa):
                raise _refuse("mload-mark-ex", "the kernel entry for verified text is not an "
                              "L3 PTE mapping the verified page", va=page, level=hit[2])

    def _kernel_table(self) -> ExportTable:
        """The kernel's exports as a table (they never change: built once, for every load)."""
        kernel = self.st.mod.kernel_table
        if kernel is None:
            kernel = self.st.mod.kernel_table = ExportTable(kernel_exports(self.st, self.plat))
        return kernel

    def _module_exports(self, addrs: dict[int, int]) -> None:
        st, elf = self.st, self.elf
        assert elf is not None
        try:
            exports = module_exports(elf, addrs, self.name)
        except ModuleError as exc:
            raise _refuse("mload-exports", str(exc), Errno.EINVAL) from None
        if st.policy.hardened:
            kernel = self._kernel_table()
            known = {e.name for m in st.mod.loaded.values() for e in m.exports}
            clash = sorted({e.name for e in exports
                            if e.name in known or kernel.get(e.name) is not None})
            if clash:
                raise _refuse("mload-exports", f"module {self.name!r} exports {clash[0]}, "
                              "which is already exported", Errno.EBUSY)
        self.exports = exports

    # ---- stage_text, map_text (commit) ---------------------------------------------------------

    def stage_text(self) -> None:
        """First trip of the install: the text and ro runs' pages become AUTH (read-only, not
        executable) with the verified bytes in them. The trampoline's broadcast TLB
        invalidation runs only after this trap is answered, so until then another CPU may
        still store to them through a stale stage-2 entry (issue 13, race-module-text): the
        CPU re-executes HVC 30 and `map_text`, in that second trap, writes the bytes again and
        only then makes them executable."""
        self._advance(Stage.RELOCATED, Stage.STAGED)
        st = self.st
        pfns = [pa >> 12 for pa in [*self.text.pages.values(), *self.ro.pages.values()]]
        st.s2.check_available(_tables_needed(st, pfns), rule="mload-placement")
        code = code_runs(self.text.pages.values(), PAGE)
        if len(code) > CODE_RANGES_MAX:
            raise _refuse("mload-placement", f"verified text in {len(code)} physical runs; the "
                          f"machine makes at most {CODE_RANGES_MAX} fetchable per trap",
                          Errno.ENOMEM)
        for run in (self.text, self.ro):
            for page, pa in run.pages.items():
                self._write(pa, bytes(run.images[page]))
                self._set_class(pa >> 12, Usage.EL1_AUTH)
        for lo, size in code:  # what a CPU ran from these pages before is dropped now, while
            self.plat.flush_code(self.cpu, PhysAddr(lo), size)  # they cannot be executed

    def map_text(self) -> int:
        """Install the verified runs, write data relocations, enable execution; returns the id."""
        self._advance(Stage.STAGED, Stage.DONE)
        st, plat = self.st, self.plat
        digests: dict[int, bytes] = {}
        stale: list[int] = []
        for run, usage in ((self.text, Usage.EL1_MOD_TXT), (self.ro, Usage.EL1_MOD_RO)):
            for page, pa in run.pages.items():
                want = bytes(run.images[page])
                if plat.read(PhysAddr(pa), len(want)) != want:
                    stale.append(page)
                    plat.write(PhysAddr(pa), want)  # a stale-TLB store changed it: undone
                self._set_class(pa >> 12, usage)
                if usage is Usage.EL1_MOD_TXT:
                    digests[page] = hashlib.sha256(run.images[page]).digest()
        if any(p in self.text.pages for p in stale):  # written again: fetchable again (the
            for lo, size in code_runs(self.text.pages.values(), PAGE):  # runs fit: stage_text)
                plat.flush_code(self.cpu, PhysAddr(lo), size)
        for pa, data in self.data_writes:
            self._write(pa, data)
        for page, pa in self.text.pages.items():
            set_module_exec(st, plat, page, pa, True)
            self._undo.append(("pxn", page, pa, b""))
        for pa in self.frozen.values():
            _commit_class(st, pa >> 12, Usage.NONE)
        self._undo.clear()
        st.mod.loaded[self.modid] = LoadedModule(
            self.modid, self.name,
            {v: p for v, p in self.text.pages.items() if v not in self.init_pages},
            {v: p for v, p in self.text.pages.items() if v in self.init_pages},
            dict(self.ro.pages), self.exports, self.imports_from, digests)
        st.mod.loads += 1
        if stale:  # the load goes on with the verified bytes; the attempt is on record
            ref = Refusal("mload-stale-store", Errno.EPERM, f"module {self.name}: stores "
                          "through a stale TLB entry changed staged module pages; the "
                          "verified bytes were written again", Outcome.REFUSED, self.cpu.index,
                          self.cpu.elr, {"va": stale[0], "pages": len(stale)})
            if len(st.refusals) < 10_000:
                st.refusals.append(ref)
            log.info("refused: %s", ref)
        log.info("module %s loaded as id %d: %d text, %d ro pages, %d exports", self.name,
                 self.modid, len(self.text.pages), len(self.ro.pages), len(self.exports))
        return self.modid

    # ---- undo ------------------------------------------------------------------------------

    def _set_class(self, pfn: int, usage: Usage) -> None:
        self._undo.append(("class", pfn, int(self.st.pages.usage_of(pfn)), b""))
        _commit_class(self.st, pfn, usage)

    def _write(self, pa: int, data: bytes) -> None:
        self._undo.append(("write", pa, 0, self.plat.read(PhysAddr(pa), len(data))))
        self.plat.write(PhysAddr(pa), data)

    def rollback(self) -> None:
        """Undo every commit of this load, newest first; the load is finished afterwards."""
        st, plat = self.st, self.plat
        for what, a, b, old in reversed(self._undo):
            if what == "pxn":
                with contextlib.suppress(HypRefusal):
                    set_module_exec(st, plat, a, b, False)
            elif what == "write":
                plat.write(PhysAddr(a), old)
            else:
                _commit_class(st, a, Usage(b))
        self._undo.clear()
        self.stage = Stage.ABORTED


# --- hypercall handlers -----------------------------------------------------------------------


def _guarded(st: KState, fn: Callable[[], int], on_error: Callable[[], None]) -> int:
    """Run `fn`; on any exception undo via `on_error` and let it go on.

    Guest-caused errors are refused where the guest's data is parsed (each with its rule);
    any other exception is a loader bug and reaches the core's internal-error path, never a
    refusal that would blame the guest.
    """
    try:
        return fn()
    except BaseException:
        on_error()
        raise


def hvc_mload(st: KState, plat: Platform, cpu: Vcpu, x: tuple[int, ...]) -> int | None:
    """HVC 30 (hdr_va, percpu_va, mod_arch_va, checklist_va, n) -> module id, in two trips.

    C: kint/HostModule.c:el2_load_module (whole call under the host_kpt lock; C invalidates
    the TLBs inside the handler). Here the broadcast TLBI runs in the trampoline after the
    answer, so the first trip freezes, verifies, relocates and stages the text read-only,
    then rewinds ELR (None: x0 untouched); the CPU invalidates its TLBs and re-executes
    HVC 30, and the second trip (same CPU, same arguments) installs and enables execution.

        pending?     caller, args            action
        none         any CPU                 load -> staged, ELR rewound        (trip 1)
        this CPU     same args               map_text -> module id              (trip 2)
        this CPU     other args              staged load rolled back, new load  (trip 1)
        other CPU    any                     refused EBUSY, nothing changes
    """
    if not st.installed or st.boot is None:
        raise _refuse("mload-args", "HVC 6 has not run yet", Errno.EINVAL)
    args = ModArgs(x[1], x[2], x[3], x[4], x[5])
    pending = st.mod.staged
    if pending is not None:
        owner, staged = pending
        assert isinstance(staged, ModuleLoad)
        if owner != cpu.index:
            raise _refuse("mload-busy", "another CPU's module load is being installed",
                          Errno.EBUSY, cpu=owner)
        st.mod.staged = None
        if staged.args == args:
            staged.cpu = cpu

            def finish() -> int:
                return staged.map_text()

            def abort_staged() -> None:
                staged.rollback()
                st.mod.refused += 1

            try:
                return _guarded(st, finish, abort_staged)
            finally:
                st.mod.in_progress = False
        staged.rollback()  # the kernel changed the call between the trips: start over
        st.mod.refused += 1
    load = ModuleLoad(st, plat, cpu, args)

    def run() -> int:
        load.freeze()
        load.verify()
        load.relocate()
        load.stage_text()
        return 0

    def abort() -> None:
        load.rollback()
        st.mod.refused += 1

    st.mod.in_progress = True
    try:
        _guarded(st, run, abort)
    except BaseException:
        st.mod.in_progress = False
        raise
    st.mod.staged = (cpu.index, load)  # in_progress stays set: AUTH pages are expected
    cpu.set_elr(cpu.elr - 4)  # HVC's ELR is the next instruction: run it again
    return None


def _revoke_exec(st: KState, plat: Platform, pages: dict[int, int]) -> None:
    """PXN back on the kernel entries mapping `pages` (VA -> PA) before they are released.

    hardened also sets PXN on any other L3 PTE that maps one of them with PXN clear (an alias
    the kernel made, allowed while the page was MOD_txt), so no released page stays
    EL1-executable. C: mark_ex(..., 0) on the run's own entries only.
    """
    own: dict[int, int] = {pa >> 12: 0 for pa in pages.values()}
    for va, pa in pages.items():
        # the kernel may already have unmapped or remapped that VA: nothing to revoke there
        with contextlib.suppress(HypRefusal):
            set_module_exec(st, plat, va, pa, False)
            own[pa >> 12] += 1
    pfns = set(own)
    # any reference beyond the run's own PTEs may be an executable alias (also when the own
    # PTE is gone and an alias holds the only reference)
    if st.policy.hardened and any(st.pages.subcount_of(p) > n for p, n in own.items()):
        for table in st.pages.pages_of(Usage.EL1_PTE):
            raw = plat.read(PhysAddr(table << 12), PAGE)
            for k, e in enumerate(struct.unpack("<512Q", raw)):
                if e & 3 == 3 and not e & PXN and (e & 0xFFFF_FFFF_F000) >> 12 in pfns:
                    slot = (table << 12) + 8 * k
                    plat.write_u64(PhysAddr(slot), e | PXN)
                    st.s2.pending_flush.add(table << 12)
                    st.dirty_tables.add(table)


def _module(st: KState, modid: int, rule: str) -> LoadedModule:
    m = st.mod.loaded.get(modid)
    if m is None:
        raise _refuse(rule, "no loaded module with this id", Errno.EINVAL, id=modid)
    return m


def hvc_mod_init_free(st: KState, plat: Platform, cpu: Vcpu, modid: int) -> int:
    """HVC 32: init-only text pages: PXN set, MOD_txt -> NONE (zeroed). Returns 0.

    C: el2_free_mod_init -> mark_rw_nx(id, init=1).
    """
    m = _module(st, modid, "mfree-id")
    if m.init_freed:
        if st.policy.hardened:
            raise _refuse("mfree-id", "init text already freed", Errno.EINVAL, id=modid)
        return 0
    _revoke_exec(st, plat, m.init_text)
    for pa in m.init_text.values():
        release_page(st, plat, pa >> 12)
    m.init_freed = True
    return 0


def hvc_mfree(st: KState, plat: Platform, cpu: Vcpu, modid: int) -> int:
    """HVC 31: text PXN set and released, ro released (secvma2024: left, §7.5), exports gone.

    C: el2_free_module -> mark_rw_nx(id, init=0); the slot is cleared.
    """
    m = _module(st, modid, "mfree-id")
    if st.policy.hardened:
        users = sorted(o.name for o in st.mod.loaded.values() if m.name in o.imports_from)
        if users:
            raise _refuse("mfree-busy", f"module {m.name!r} is used by {users[0]!r}",
                          Errno.EBUSY, id=modid)
    pages = dict(m.text)
    if not m.init_freed:
        pages.update(m.init_text)
    _revoke_exec(st, plat, pages)
    for pa in pages.values():
        release_page(st, plat, pa >> 12)
    if st.policy.quirks.mod_ro_writable:
        st.mod.orphan_ro.update(m.ro_pfns())
    else:
        for pa in m.ro.values():
            release_page(st, plat, pa >> 12)
    del st.mod.loaded[modid]
    log.info("module %s (id %d) freed", m.name, modid)
    return 0


def handle_module_hvc(st: KState, plat: Platform, cpu: Vcpu, x: tuple[int, ...]) -> int | None:
    """Dispatch HVC 30/31/32 (x0 = number); refusals are raised (the core answers
    HVC_INVALID)."""
    nr = x[0]
    if nr == 30:
        return hvc_mload(st, plat, cpu, x)
    if not st.installed:
        raise _refuse("mfree-id", "HVC 6 has not run yet", Errno.EINVAL)
    if nr == 31:
        return _guarded(st, lambda: hvc_mfree(st, plat, cpu, x[1]), lambda: None)
    return _guarded(st, lambda: hvc_mod_init_free(st, plat, cpu, x[1]), lambda: None)
