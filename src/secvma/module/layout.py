"""Section layout as Linux's module loader computes it (`layout_sections`, `layout_symtab`).

Two regions, core and init. Each is filled in five passes over the sections in index order:
text (ALLOC|EXEC), read-only (ALLOC, not WRITE), ro-after-init (ALLOC|RO_AFTER_INIT), data
(ALLOC|WRITE) and anything else ALLOC. Each section sits at its running offset rounded up to
`sh_addralign`; with STRICT_MODULE_RWX the region size is page-rounded after each of text,
ro, ro_after_init and the whole, so permissions can differ per page. `.init*` sections (and
`.exit*` without MODULE_UNLOAD) go to init. With KALLSYMS the full symtab and strtab are
appended to init, and room for the core symbol subset to core.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum

from secvma.module.elf import (
    SHF_ALLOC,
    SHF_EXECINSTR,
    SHF_RO_AFTER_INIT,
    SHF_WRITE,
    SYM,
)
from secvma.module.errors import LayoutError
from secvma.module.load import LoadView, is_init_layout_section

MAX_REGION = 1 << 30  # no module region comes near 1 GiB; refuse before allocating
MOD_KALLSYMS_SIZE = 32  # struct mod_kallsyms (6.1): 3 pointers + an unsigned int, 8-aligned


class Region(Enum):
    CORE = "core"
    INIT = "init"


# (required flags, forbidden flags) per pass, as `masks[]` in layout_sections (ARCH_SHF_SMALL=0).
PASSES: tuple[tuple[int, int], ...] = (
    (SHF_EXECINSTR | SHF_ALLOC, 0),
    (SHF_ALLOC, SHF_WRITE),
    (SHF_RO_AFTER_INIT | SHF_ALLOC, 0),
    (SHF_WRITE | SHF_ALLOC, 0),
    (SHF_ALLOC, 0),
)


@dataclass(frozen=True)
class RegionLayout:
    """Sizes of one region: text ≤ ro ≤ ro_after_init ≤ size (cumulative, like the kernel)."""

    size: int
    text_size: int
    ro_size: int
    ro_after_init_size: int


@dataclass(frozen=True)
class Layout:
    """Where every allocated section goes: region and offset inside it."""

    core: RegionLayout
    init: RegionLayout
    placement: dict[int, tuple[Region, int]]

    def addresses(self, core_base: int, init_base: int) -> dict[int, int]:
        """Section index -> final address for the given region bases."""
        base = {Region.CORE: core_base, Region.INIT: init_base}
        return {i: base[r] + off for i, (r, off) in self.placement.items()}

    def region_of(self, index: int) -> Region | None:
        p = self.placement.get(index)
        return p[0] if p else None


def _align(x: int, a: int) -> int:
    a = a or 1
    return (x + a - 1) & -a


def layout_sections(view: LoadView) -> Layout:
    """Compute the kernel's layout for the load-time view (see module docstring)."""
    cfg = view.config
    page = cfg.page_size

    def strict(x: int) -> int:
        return _align(x, page) if cfg.strict_module_rwx else x

    placement: dict[int, tuple[Region, int]] = {}
    sizes: dict[Region, list[int]] = {}
    skip = {view.elf.symtab_index, view.elf.strtab_index} if cfg.kallsyms else set()
    for region in (Region.CORE, Region.INIT):
        size = 0
        marks = [0, 0, 0]
        for m, (need, forbid) in enumerate(PASSES):
            for s in view.sections:
                if (s.flags & need) != need or s.flags & forbid or s.index in placement:
                    continue
                if s.index in skip:
                    continue
                if is_init_layout_section(s.name, cfg) != (region is Region.INIT):
                    continue
                off = _align(size, s.addralign)
                size = off + s.size
                if size > MAX_REGION:
                    raise LayoutError(f"section {s.index} ({s.name}): {region.value} region "
                                      f"exceeds {MAX_REGION} bytes")
                placement[s.index] = (region, off)
            if m in (0, 1, 2, 4):
                size = strict(size)
            if m < 3:
                marks[m] = size
        if region is Region.INIT:
            marks[2] = marks[1]  # "RO after init: nothing to do for init"
        sizes[region] = [size, *marks]
    if cfg.kallsyms:
        _layout_symtab(view, placement, sizes, strict)
    core, init = (RegionLayout(*sizes[r]) for r in (Region.CORE, Region.INIT))
    return Layout(core, init, placement)


def _layout_symtab(view: LoadView, placement: dict[int, tuple[Region, int]],
                   sizes: dict[Region, list[int]], strict: Callable[[int], int]) -> None:
    """`layout_symtab`: full symtab+strtab at the end of init; core-symbol copy in core."""
    elf = view.elf
    sym, string = view.sections[elf.symtab_index], view.sections[elf.strtab_index]
    init = sizes[Region.INIT]
    off = _align(init[0], sym.addralign)
    placement[sym.index] = (Region.INIT, off)
    init[0] = off + sym.size
    # Core symbols: named, defined in an ALLOC|EXEC core section (not KALLSYMS_ALL).
    strtab = elf.section_bytes(elf.strtab_index)
    core_exec = {i for i, (r, _o) in placement.items() if r is Region.CORE
                 and view.sections[i].flags & SHF_EXECINSTR}
    names = [name for name, _i, _o, shndx, _v, _s in elf.raw_symbols()[1:]
             if name and shndx in core_exec]
    ndst = 1 + len(names)  # symbol 0 is always kept
    strtab_size = 1 + sum(strtab.find(b"\0", n) - n + 1 for n in names)
    core_sz = sizes[Region.CORE]
    symoffs = _align(core_sz[0], sym.addralign)
    core_sz[0] = strict(symoffs + ndst * SYM.size + strtab_size + ndst)
    off = _align(init[0], string.addralign)
    placement[string.index] = (Region.INIT, off)
    init[0] = _align(off + string.size, 8) + MOD_KALLSYMS_SIZE + len(elf.raw_symbols())
    init[0] = strict(init[0])


def default_addresses(view: LoadView, core_base: int = 0xFFFF800008000000,
                      init_base: int = 0xFFFF800008800000) -> Mapping[int, int]:
    """Addresses of every allocated section with the kernel layout at the given bases."""
    lay = layout_sections(view)
    if lay.core.size > init_base - core_base and init_base > core_base:
        raise LayoutError(f"core region ({lay.core.size} B) overlaps the init base")
    return lay.addresses(core_base, init_base)
