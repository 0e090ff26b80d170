"""Where the kernel may rewrite its own text, learned from the Image before it runs.

Linux arm64 (6.1) patches its text at three kinds of declared sites; every table is read from
the Image file, never from guest memory the kernel could already have changed:

    kind      table in the Image                        allowed words at a site
    ftrace    __mcount_loc: 8-byte pointers, each a     first NOP: NOP or MOV X9, X30
              RELATIVE relocation (.rela.dyn) to a      second NOP: NOP or BL into kernel text
              NOP pair at a function entry              (the ftrace trampolines; not pinned)
    jump      __jump_table: 16-byte entries of          NOP or B <the entry's target>
              relative code / target / key offsets
    alt       .altinstructions: 12-byte entries         the original word, or the replacement
              (orig, repl offsets, feature, lengths)    word (PC-relative branches and ADRP
                                                        re-targeted as the kernel does); a
                                                        callback entry (feature bit 15) allows
                                                        any word inside its span (limitation)

The kernel's symbol table is not in the Image (CONFIG_KALLSYMS_ALL is off in Debian, so the
embedded kallsyms name text symbols only), so each table is found by its shape: the longest run
of relocated pointers to NOP pairs (ftrace), and the longest runs of records whose offsets land
on a NOP/B (jump) or on text with sane lengths (alt). Kernel-version specific (6.1 layouts).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

KIMAGE_VADDR = 0xFFFF_8000_0800_0000
"""Link address of the Image's first byte (48-bit VA, 6.1): RELATIVE addends are above it."""
R_AARCH64_RELATIVE = 0x403
NOP = 0xD503201F
MOV_X9_X30 = 0xAA1E03E9
CB_BIT = 1 << 15
MIN_RUN = 64
"""A table candidate shorter than this many records is noise."""


@dataclass
class PatchSites:
    """Declared patch sites as Image offsets (see the module table)."""

    image_size: int = 0
    text: list[tuple[int, int]] = field(default_factory=list)  # text clusters [lo, hi)
    ftrace: set[int] = field(default_factory=set)  # offset of the first NOP
    jump: dict[int, int] = field(default_factory=dict)  # code offset -> target offset
    alt: dict[int, set[int]] = field(default_factory=dict)  # word offset -> replacement words
    alt_cb: set[int] = field(default_factory=set)  # word offsets inside callback spans
    relocs: dict[int, int] = field(default_factory=dict)  # 8-byte slot -> link-time target
    vdso: list[tuple[int, int]] = field(default_factory=list)  # vDSO images in .rodata [lo, hi)

    def in_text(self, off: int) -> bool:
        return any(lo <= off < hi for lo, hi in self.text)

    def counts(self) -> dict[str, int]:
        return {"ftrace": len(self.ftrace), "jump": len(self.jump), "alt_words": len(self.alt),
                "alt_cb_words": len(self.alt_cb)}


# --- instruction helpers ----------------------------------------------------------------------


def _sext(v: int, bits: int) -> int:
    return v - (1 << bits) if v >> (bits - 1) & 1 else v


def branch_target(insn: int, pc: int) -> int | None:
    """Target of a B/BL at `pc`, None for any other word."""
    if insn & 0x7C00_0000 == 0x1400_0000:
        return pc + 4 * _sext(insn & 0x3FF_FFFF, 26)
    return None


def encode_b(pc: int, target: int, *, link: bool = False) -> int | None:
    delta = (target - pc) >> 2
    if (target - pc) % 4 or not -(1 << 25) <= delta < 1 << 25:
        return None
    return (0x9400_0000 if link else 0x1400_0000) | (delta & 0x3FF_FFFF)


def retarget(insn: int, src: int, dst: int, block: tuple[int, int] | None = None) -> int:
    """The replacement word `insn` (at `src`) as it reads when copied to `dst`.

    Mirrors what the kernel's alternative patcher does to PC-relative words (6.1
    `get_alt_insn`): immediate branches keep their absolute target, ADRP keeps its absolute
    page; a branch whose target lies inside the replacement block `block` = [start, end]
    (end included, `branch_insn_requires_update`) is copied unchanged. Before that rule was
    modelled, the PAuth entry code's `tbz x0, #31, 1f` (alternative_if
    ARM64_HAS_ADDRESS_AUTH, patched on -cpu max) was refused as an undeclared patch.
    """
    if block is not None and _branch_imm_target(insn, src) is not None:
        tgt = _branch_imm_target(insn, src)
        assert tgt is not None
        if block[0] <= tgt <= block[1]:
            return insn
    if insn & 0x7C00_0000 == 0x1400_0000:  # B, BL
        new = encode_b(dst, src + 4 * _sext(insn & 0x3FF_FFFF, 26), link=bool(insn >> 31))
        return insn if new is None else new
    if insn & 0xFF00_0010 == 0x5400_0000 or insn & 0x7E00_0000 in (0x3400_0000, 0x3600_0000):
        if insn & 0x7E00_0000 == 0x3600_0000:  # TBZ/TBNZ imm14
            tgt = src + 4 * _sext((insn >> 5) & 0x3FFF, 14)
            d = (tgt - dst) >> 2
            return (insn & ~(0x3FFF << 5)) | ((d & 0x3FFF) << 5)
        tgt = src + 4 * _sext((insn >> 5) & 0x7FFFF, 19)  # B.cond, CBZ/CBNZ imm19
        d = (tgt - dst) >> 2
        return (insn & ~(0x7FFFF << 5)) | ((d & 0x7FFFF) << 5)
    if insn & 0x9F00_0000 == 0x9000_0000:  # ADRP
        imm = _sext(((insn >> 5) & 0x7FFFF) << 2 | (insn >> 29) & 3, 21)
        page = (src & ~0xFFF) + (imm << 12)
        d = (page - (dst & ~0xFFF)) >> 12
        return (insn & 0x9F00_001F) | ((d & 3) << 29) | (((d >> 2) & 0x7FFFF) << 5)
    return insn


def _branch_imm_target(insn: int, pc: int) -> int | None:
    """Target of an immediate branch (B/BL, B.cond, CBZ/CBNZ, TBZ/TBNZ) at `pc`, else None."""
    if insn & 0x7C00_0000 == 0x1400_0000:
        return pc + 4 * _sext(insn & 0x3FF_FFFF, 26)
    if insn & 0xFF00_0010 == 0x5400_0000 or insn & 0x7E00_0000 == 0x3400_0000:
        return pc + 4 * _sext((insn >> 5) & 0x7FFFF, 19)
    if insn & 0x7E00_0000 == 0x3600_0000:
        return pc + 4 * _sext((insn >> 5) & 0x3FFF, 14)
    return None


def _word(img: bytes, off: int) -> int | None:
    if 0 <= off <= len(img) - 4 and off % 4 == 0:
        return int.from_bytes(img[off:off + 4], "little")
    return None


# --- learning ---------------------------------------------------------------------------------


def _relative_relocs(img: bytes) -> dict[int, int]:
    """{slot offset: target offset} of the Image's RELATIVE relocations (.rela.dyn)."""
    pat = struct.pack("<Q", R_AARCH64_RELATIVE)
    best = (0, 0)
    i = img.find(pat)
    while i != -1:
        j, n = i, 0
        while img[j:j + 8] == pat:
            j, n = j + 24, n + 1
        if n > best[1]:
            best = (i - 8, n)
        i = img.find(pat, j if n else i + 8)
    start, n = best
    out: dict[int, int] = {}
    for k in range(n):
        slot, _info, addend = struct.unpack_from("<QQQ", img, start + 24 * k)
        out[slot - KIMAGE_VADDR] = addend - KIMAGE_VADDR
    return out


def _ftrace(img: bytes, rel: dict[int, int]) -> set[int]:
    """The longest run of consecutive relocated slots that all point at a NOP pair."""

    def nop_pair(t: int) -> bool:
        return _word(img, t) == NOP and _word(img, t + 4) == NOP

    runs: list[list[int]] = []
    for slot in sorted(rel):
        if not nop_pair(rel[slot]):
            continue
        if runs and runs[-1][-1] == slot - 8:
            runs[-1].append(slot)
        else:
            runs.append([slot])
    best = max(runs, key=len, default=[])
    return {rel[s] for s in best} if len(best) >= MIN_RUN else set()


def _clusters(offs: set[int], gap: int = 2 << 20) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for o in sorted(offs):
        if out and o - out[-1][1] < gap:
            out[-1] = (out[-1][0], o + 8)
        else:
            out.append((o, o + 8))
    return [(lo, hi + 0x10000) for lo, hi in out]


def _jump(img: bytes, sites: PatchSites, lo: int, hi: int) -> dict[int, int]:
    """Longest run of 16-byte jump entries (code on NOP/B, target in text) in [lo, hi)."""
    best: list[tuple[int, int]] = []
    for phase in (0, 8):  # entries are 8-aligned: two 16-byte phases
        start = (lo + 7) // 8 * 8 + phase
        end = start + (hi - start) // 16 * 16
        run: list[tuple[int, int]] = []
        p = start
        for code_rel, target_rel, _key in struct.iter_unpack("<iiq", img[start:end]):
            code, target = p + code_rel, p + 4 + target_rel
            ok = code % 4 == 0 and target % 4 == 0 and sites.in_text(code) \
                and sites.in_text(target)
            if ok:
                w = _word(img, code)
                ok = w == NOP or (w is not None and branch_target(w, code) == target)
            p += 16
            if ok:
                run.append((code, target))
                continue
            if len(run) > len(best):
                best = run
            run = []
        if len(run) > len(best):
            best = run
    return dict(best) if len(best) >= MIN_RUN else {}


def _alt(img: bytes, sites: PatchSites, lo: int, hi: int) -> tuple[dict[int, set[int]], set[int]]:
    """Longest run of 12-byte alt_instr records in [lo, hi); the allowed words per site."""
    best: list[tuple[int, int, int, int, int]] = []
    size = sites.image_size
    for phase in (0, 4, 8):
        start = (lo + 3) // 4 * 4 + phase
        end = start + (hi - start) // 12 * 12
        run: list[tuple[int, int, int, int, int]] = []
        p = start
        for o_rel, a_rel, feat, olen, alen in struct.iter_unpack("<iiHBB", img[start:end]):
            orig, repl = p + o_rel, p + 4 + a_rel
            p += 12
            ok = (0 < olen <= 128 and olen % 4 == 0 and alen % 4 == 0 and alen <= olen
                  and (feat & ~CB_BIT) < 256 and orig % 4 == 0 and 0 <= orig < size
                  and (feat & CB_BIT or 0 <= repl < size))
            if ok:
                run.append((orig, repl, feat, olen, alen))
                continue
            if len(run) > len(best):
                best = run
            run = []
        if len(run) > len(best):
            best = run
    allowed: dict[int, set[int]] = {}
    cb: set[int] = set()
    if len(best) < MIN_RUN:
        return allowed, cb
    for orig, repl, feat, olen, alen in best:
        for k in range(0, olen, 4):
            if feat & CB_BIT:
                cb.add(orig + k)
                continue
            words = allowed.setdefault(orig + k, set())
            if k < alen:
                w = _word(img, repl + k)
                if w is not None:
                    words.add(retarget(w, repl + k, orig + k, (repl, repl + alen)))
            else:
                words.add(NOP)  # a shorter replacement is padded with NOPs
    return allowed, cb


def learn_sites(img: bytes) -> PatchSites:
    """Every declared patch site of an arm64 Linux Image (see the module table)."""
    if len(img) < 64 or img[56:60] != b"ARM\x64":
        raise ValueError("not an arm64 Linux Image (no ARM\\x64 magic)")
    sites = PatchSites(image_size=int.from_bytes(img[16:24], "little"))
    sites.vdso = vdso_images(img)
    rel = _relative_relocs(img)
    sites.ftrace = _ftrace(img, rel)
    sites.relocs = rel
    if not sites.ftrace:
        return sites
    sites.text = _clusters(sites.ftrace)
    core_hi = sites.text[0][1]
    init_lo = sites.text[1][0] if len(sites.text) > 1 else len(img)
    sites.jump = _jump(img, sites, core_hi, init_lo)  # __jump_table: ro_after_init data
    sites.alt, sites.alt_cb = _alt(img, sites, init_lo, len(img))  # after init text
    return sites


ELF_MACHINES = {2: 183, 1: 40}
"""ELF class -> e_machine of a vDSO: AArch64 (vdso) and, with COMPAT_VDSO, AArch32 (vdso32)."""


def vdso_images(img: bytes) -> list[tuple[int, int]]:
    """Page ranges [lo, hi) of the vDSOs embedded in the Image (user space executes them).

    Each is a page-aligned ELF shared object (vdso.S: `.balign PAGE_SIZE` around the .so);
    its extent is where its section header table ends, rounded up to a page.
    """
    out = []
    off = img.find(b"\x7fELF")
    while off >= 0:
        if not off % 4096 and len(img) >= off + 52:
            cls = img[off + 4]
            e_type, e_machine = struct.unpack_from("<HH", img, off + 16)
            if e_type == 3 and ELF_MACHINES.get(cls) == e_machine:
                if cls == 2:
                    shoff = struct.unpack_from("<Q", img, off + 0x28)[0]
                    shentsize, shnum = struct.unpack_from("<HH", img, off + 0x3A)
                else:
                    shoff = struct.unpack_from("<I", img, off + 0x20)[0]
                    shentsize, shnum = struct.unpack_from("<HH", img, off + 0x2E)
                end = off + shoff + shentsize * shnum
                if shnum and end <= len(img):
                    out.append((off, -(-end // 4096) * 4096))
        off = img.find(b"\x7fELF", off + 1)
    return out


# --- the rule ---------------------------------------------------------------------------------


def patch_kind(sites: PatchSites, off: int, orig: int | None, new: int) -> str | None:
    """Which declared site allows word `new` at Image offset `off` (None: not allowed).

    `orig` is the Image's own word there; writing it back is always allowed at a site.
    """
    if off in sites.ftrace and new in (NOP, MOV_X9_X30):
        return "ftrace"
    if off - 4 in sites.ftrace:
        tgt = branch_target(new, off)
        if new == NOP or (new >> 31 and tgt is not None and sites.in_text(tgt)):
            return "ftrace"
    target = sites.jump.get(off)
    if target is not None and (new == NOP or branch_target(new, off) == target):
        return "jump"
    alt = sites.alt.get(off)
    if alt is not None and (new in alt or new == orig):
        return "alt"
    if off in sites.alt_cb and (new in (NOP, orig) or cb_word_ok(new)):
        return "alt-cb"
    return None


def cb_word_ok(word: int) -> bool:
    """What 6.1's alternative callbacks write: data-processing immediates other than ADR/ADRP
    (kvm_update_va_mask's AND/ROR/ADD, MOVZ/MOVK of kimage_voffset and loop counts), hints
    (NOP, CLEARBHB), SMC/HVC #0 (the firmware conduit). Never a load, store or branch."""
    dp_imm = word & 0x1C00_0000 == 0x1000_0000 and word & 0x1F00_0000 != 0x1000_0000
    return (dp_imm
            or word & 0xFFFF_F01F == 0xD503_201F  # HINT space (NOP, CLEARBHB, ...)
            or word & 0xFFFF_FC1F == 0xD61F_0000  # BR Xn (spectre-v2 / BHB vectors)
            or word in (0xD400_0002, 0xD400_0003))  # HVC #0, SMC #0


def relocated(sites: PatchSites, off: int, live8: bytes) -> bool:
    """The word at `off` belongs to a RELATIVE slot that holds its declared target moved by a
    page-aligned displacement (the kernel relocates literal pools and its GOT in text before
    it runs: by the KASLR offset, and some slots by a physical/linear displacement)."""
    slot = off if off in sites.relocs else off - 4
    target = sites.relocs.get(slot)
    if target is None or len(live8) != 8:
        return False
    value = int.from_bytes(live8, "little")
    return (value - target) & 0xFFF == 0
