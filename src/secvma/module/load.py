"""The kernel's load-time view of a module: section headers as the arm64 loader rewrites them.

Why: both the SECvma signature (docs/eval-spec.md §3.3) and the section layout are computed from the
headers *after* Linux modified them (`rewrite_section_headers`, `module_frob_arch_sections`,
`layout_and_allocate`), not from the file as is. This module reproduces those rewrites on
copies of the headers and keeps the (sorted) relocations next to them.

Steps, in kernel order:
1. clear SHF_ALLOC on `__versions` and `.modinfo` (they stay in the temporary image);
2. clear SHF_ALLOC on `.data..percpu` (allocated separately, per CPU);
3. set SHF_RO_AFTER_INIT on `.data..ro_after_init` and `__jump_table` (6.1);
4. arm64 `module_frob_arch_sections`: sort the RELA sections that patch executable sections,
   count PLT slots, and turn `.plt` / `.init.plt` (and, with DYNAMIC_FTRACE, the
   trampoline) into NOBITS sections of the right size;
5. KALLSYMS: symtab and strtab become SHF_ALLOC.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from secvma.module import native
from secvma.module.config import LoaderConfig
from secvma.module.elf import (
    RELA,
    SHF_ALLOC,
    SHF_EXECINSTR,
    SHF_RO_AFTER_INIT,
    SHT_NOBITS,
    ElfModule,
    Section,
)
from secvma.module.errors import ElfFormatError, LayoutError
from secvma.module.native import ops
from secvma.module.relocations import R
from secvma.module.sort import Rela, sort_relas

PERCPU_SECTION = ".data..percpu"
RO_AFTER_INIT_SECTIONS = (".data..ro_after_init", "__jump_table")


def is_init_section(name: str) -> bool:
    """`module_init_section`: the kernel places every `.init*` section in the init region."""
    return name.startswith(".init")


def is_init_layout_section(name: str, cfg: LoaderConfig) -> bool:
    """`module_init_layout_section`: without MODULE_UNLOAD, exit code is discarded too."""
    return is_init_section(name) or (not cfg.module_unload and name.startswith(".exit"))


class RelaTable(Mapping[int, list[Rela]]):
    """RELA section index -> entries in the order the loader applies them.

    Entries are either given as lists (pure-Python path) or kept as raw RELA bytes and
    decoded only when asked for (native path: the C engine reads the bytes through `span`,
    and no per-relocation Python object is made). Both give the same lists.
    """

    def __init__(self) -> None:
        self._lists: dict[int, list[Rela]] = {}
        self._spans: dict[int, tuple[bytes, int, int, bool]] = {}
        self._order: list[int] = []

    def add_list(self, index: int, relas: list[Rela]) -> None:
        self._order.append(index)
        self._lists[index] = relas

    def add_span(self, index: int, data: bytes, offset: int, count: int, plt_sort: bool) -> None:
        """`count` entries at `data[offset:]`, in file order (then `plt_order` if `plt_sort`)."""
        self._order.append(index)
        self._spans[index] = (data, offset, count, plt_sort)

    def span(self, index: int) -> tuple[bytes, int, int, bool] | None:
        """(data, offset, count, plt_sort) of a section kept as bytes, else None."""
        return self._spans.get(index)

    def count(self, index: int) -> int:
        sp = self._spans.get(index)
        return sp[2] if sp is not None else len(self._lists[index])

    def __getitem__(self, index: int) -> list[Rela]:
        got = self._lists.get(index)
        if got is None:
            data, offset, count, plt_sort = self._spans[index]
            got = list(RELA.iter_unpack(data[offset : offset + count * RELA.size]))
            if plt_sort:
                got = plt_order(got)
            self._lists[index] = got
        return got

    def __iter__(self) -> Iterator[int]:
        return iter(self._order)

    def __len__(self) -> int:
        return len(self._order)


@dataclass(frozen=True)
class LoadView:
    """Rewritten headers, sorted relocations and PLT sizing of one module."""

    elf: ElfModule
    config: LoaderConfig
    sections: tuple[Section, ...]
    relocations: RelaTable  # RELA section index -> entries (sorted if the kernel does)
    plt_index: int
    init_plt_index: int
    core_plts: int
    init_plts: int
    percpu_index: int  # 0 when the module has no per-CPU data

    def section(self, name: str) -> Section | None:
        found = None
        for s in self.sections:
            if s.name == name:
                found = s
        return found


def _ffz(x: int) -> int:
    """Index of the lowest zero bit."""
    return ((~x) & (x + 1)).bit_length() - 1


PLT_TYPES = frozenset({R.JUMP26, R.CALL26, R.ADR_PREL_PG_HI21, R.ADR_PREL_PG_HI21_NC})
_BRANCH = frozenset({R.JUMP26, R.CALL26})


def count_plts(view_syms: list[tuple[int, int, int, int, int, int]], relas: list[Rela],
               dst_index: int, dst: Section, cfg: LoaderConfig) -> tuple[int, int]:
    """arm64 `count_plts` on *sorted* relas: (PLT slots needed, new sh_addralign of dst).

    Branches to symbols in the same section never need a PLT; duplicates (equal key, zero
    addend) share one. With the 843419 workaround, ADRPs that may land on a vulnerable page
    offset either raise the section alignment or reserve a veneer slot. Only the relative
    order of branch entries matters for duplicate detection (the sort groups by type first,
    so an entry of another type is never a duplicate), which lets callers pass just those.
    """
    ret = 0
    align = dst.addralign
    if cfg.randomize_base:
        prev: tuple[int, int] | None = None
        for _off, info, add in relas:
            if info & 0xFFFFFFFF not in _BRANCH:
                prev = None
                continue
            cur = (info, add)
            dup = cur == prev
            prev = cur
            if view_syms[info >> 32][3] == dst_index:
                continue
            if add != 0 or not dup:
                ret += 1
    if cfg.erratum_843419:
        for off, info, _add in relas:
            if info & 0xFFFFFFFF in (R.ADR_PREL_PG_HI21, R.ADR_PREL_PG_HI21_NC):
                min_align = 2 << _ffz(off | 0x7)
                if min_align > 4096:
                    ret += 1
                else:
                    align = max(align, min_align)
        ret += -(-ret // (4096 // cfg.plt_entry_size))
    return ret, align


def plt_order(relas: list[Rela]) -> list[Rela]:
    """Entries in an order that relocates exactly like the kernel's sorted array.

    Only PLT-emitting types (branches, ADRP) depend on order; they are sorted by
    (type, symbol, addend) and put after the rest, and `apply_relocations` handles types in
    ascending order, so PLT slots are emitted in the kernel's order. Equal keys relocate
    identically, so no exact heapsort is needed here.
    """
    m32 = 0xFFFFFFFF
    special = [r for r in relas if r[1] & m32 in PLT_TYPES]
    if not special:
        return relas
    special.sort(key=lambda r: (((r[1] & m32) << 32) | (r[1] >> 32), r[2]))
    return [r for r in relas if r[1] & m32 not in PLT_TYPES] + special


def prepare(elf: ElfModule, cfg: LoaderConfig, *, exact_sort: bool = False) -> LoadView:
    """The kernel's load-time view of `elf` under `cfg` (module steps 1–5).

    `exact_sort` reproduces Linux 4.18's heapsort order of every RELA section patching code,
    which only the SECvma message needs; relocation results do not depend on it (see
    `plt_order`), so by default only PLT-relevant entries are sorted, with the C sort.
    """
    secs = list(elf.sections)

    def setflags(idx: int, set_: int = 0, clear: int = 0) -> None:
        s = secs[idx]
        secs[idx] = dataclasses.replace(s, flags=(s.flags | set_) & ~clear)

    for name in ("__versions", ".modinfo", PERCPU_SECTION):
        found = elf.section_by_name(name)
        if found is not None:
            setflags(found.index, clear=SHF_ALLOC)
    for name in RO_AFTER_INIT_SECTIONS:
        found = elf.section_by_name(name)
        if found is not None:
            setflags(found.index, set_=SHF_RO_AFTER_INIT)
    percpu = elf.section_by_name(PERCPU_SECTION)

    plt = init_plt = 0
    tramp = 0
    for s in secs:
        if s.name == ".plt":
            plt = s.index
        elif s.name == ".init.plt":
            init_plt = s.index
        elif s.name == ".text.ftrace_trampoline":
            tramp = s.index
    if not plt or not init_plt:
        raise LayoutError("module PLT section(s) missing (.plt and .init.plt; arm64 module.lds)")

    syms = elf.raw_symbols()
    relocs = RelaTable()
    core_plts = init_plts = 0
    fast = native.available()
    for rs in elf.rela_sections():
        dst = secs[rs.info]
        if fast:
            got = _prepare_native(elf, cfg, rs, dst, relocs, exact_sort)
            if got is None:
                _check_symbol_indices(relocs[rs.index], len(syms), rs)
                raise AssertionError("modaccel and the reference disagree on symbol indices")
            n, align = got
        else:
            raw = elf.relocations(rs.index)
            if not dst.flags & SHF_EXECINSTR:
                relocs.add_list(rs.index, raw)
                continue
            ordered = sort_relas(raw) if exact_sort else plt_order(raw)
            relocs.add_list(rs.index, ordered)
            _check_symbol_indices(ordered, len(syms), rs)
            n, align = count_plts(syms, ordered, rs.info, dst, cfg)
        if not dst.flags & SHF_EXECINSTR:
            continue
        if align != dst.addralign:
            secs[rs.info] = dataclasses.replace(dst, addralign=align)
        if is_init_section(dst.name):
            init_plts += n
        else:
            core_plts += n

    pe = cfg.plt_entry_size
    nobits_x = SHF_EXECINSTR | SHF_ALLOC
    for idx, count in ((plt, core_plts), (init_plt, init_plts)):
        secs[idx] = dataclasses.replace(secs[idx], type=SHT_NOBITS, flags=nobits_x,
                                        addralign=cfg.l1_cache_bytes, size=(count + 1) * pe)
    if tramp and cfg.ftrace_plts:
        # __alignof__(struct plt_entry): 4, not the cache line the PLTs get (seen on the
        # Debian kernel: the trampoline follows the text it is laid out after unpadded)
        secs[tramp] = dataclasses.replace(secs[tramp], type=SHT_NOBITS, flags=nobits_x,
                                          addralign=4, size=cfg.ftrace_plts * pe)
    if cfg.kallsyms:
        setflags(elf.symtab_index, set_=SHF_ALLOC)
        setflags(elf.strtab_index, set_=SHF_ALLOC)
    return LoadView(elf, cfg, tuple(secs), relocs, plt, init_plt, core_plts, init_plts,
                    percpu.index if percpu is not None else 0)


def _prepare_native(elf: ElfModule, cfg: LoaderConfig, rs: Section, dst: Section,
                    relocs: RelaTable, exact_sort: bool) -> tuple[int, int] | None:
    """The loop body of `prepare` for one RELA section, with the accelerator.

    Records the section in `relocs` as bytes; returns (PLT slots, alignment) of a code
    section ((0, alignment) otherwise), or None when a symbol index is out of range.
    """
    n = rs.size // RELA.size
    if not dst.flags & SHF_EXECINSTR:
        relocs.add_span(rs.index, elf.data, rs.offset, n, False)
        return 0, dst.addralign
    srt = ops.sort_relas(elf.data, rs.offset, n)
    if srt is None:
        raise native.NativeBuildError("modaccel: sort refused a section the parser accepted")
    if exact_sort:
        relocs.add_span(rs.index, srt, 0, n, False)
    else:
        relocs.add_span(rs.index, elf.data, rs.offset, n, True)
    got = ops.count_plts(srt, 0, n, elf, rs.info, dst.addralign, cfg)
    if got is None:
        raise native.NativeBuildError("modaccel: count_plts refused its arguments")
    return None if got is False else got


def _check_symbol_indices(relas: list[Rela], nsyms: int, rs: Section) -> None:
    if relas and max(r[1] >> 32 for r in relas) >= nsyms:
        bad = next(r for r in relas if r[1] >> 32 >= nsyms)
        raise ElfFormatError(f"{rs.name}: relocation at {bad[0]:#x} uses symbol {bad[1] >> 32}, "
                          f"but the symbol table has {nsyms} entries")
