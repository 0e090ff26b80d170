"""Relocating a whole module: section images at chosen addresses, with PLTs.

This is the "resolve → relocate" half of a load: given the load-time view, an address for
every allocated section and the final symbol values, produce the bytes each allocated
section holds after Linux's `apply_relocations` (plus the `.plt`/`.init.plt` entries it
emitted). Nothing here touches guest memory; the hypervisor loader copies the result.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from secvma.module import native
from secvma.module.elf import SHF_ALLOC
from secvma.module.errors import LayoutError
from secvma.module.load import LoadView, is_init_section
from secvma.module.native import ops
from secvma.module.relocations import PltSection, RelocTarget, apply_relocations


@dataclass
class Relocated:
    """Section images after relocation, keyed by section index."""

    addresses: dict[int, int]
    contents: dict[int, bytearray]
    counts: dict[int, int] = field(default_factory=dict)  # relocations applied per type
    plts: dict[str, PltSection] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def relocate_sections(view: LoadView, addresses: Mapping[int, int], symvals: Sequence[int],
                      *, erratum_843419: bool | None = None) -> Relocated:
    """Apply every RELA section whose target is allocated (as `apply_relocations` does).

    `addresses` must give an address for every allocated section of the view; sections
    not listed are not materialised and relocations into them are refused.
    """
    cfg = view.config
    erratum = cfg.erratum_843419 if erratum_843419 is None else erratum_843419
    contents: dict[int, bytearray] = {}
    for idx in addresses:
        if not 0 < idx < len(view.sections):
            raise LayoutError(f"address given for section {idx}, which does not exist")
        s = view.sections[idx]
        if not s.flags & SHF_ALLOC:
            continue
        contents[idx] = (bytearray(view.elf.section_bytes(idx)) if s.has_bytes
                         else bytearray(s.size))
    plts: dict[str, PltSection] = {}
    for key, idx, n in (("core", view.plt_index, view.core_plts),
                        ("init", view.init_plt_index, view.init_plts)):
        if idx in contents:
            plts[key] = PltSection(idx, addresses[idx], contents[idx], n, cfg.plt_entry_size)
    counts: dict[int, int] = {}
    table = view.relocations
    fast = native.available()
    symarr = None
    for rs_index in table:
        rs = view.sections[rs_index]
        dst = view.sections[rs.info]
        if not dst.flags & SHF_ALLOC or not table.count(rs_index):
            continue
        if rs.info not in contents:
            raise LayoutError(f"{rs.name}: target {dst.name} has no address")
        plt = plts.get("init" if is_init_section(dst.name) else "core")
        tgt = RelocTarget(dst.name, contents[rs.info], addresses[rs.info], plt)
        span = table.span(rs_index) if fast else None
        got = None
        if span is not None:
            if symarr is None:
                symarr = ops.symbol_array(symvals)
            data, offset, n, plt_sort = span
            got = ops.apply_relas(tgt, data, offset, n, symvals, symarr, plt_sort=plt_sort,
                                  erratum_843419=erratum, module_plts=cfg.module_plts)
        if got is None:
            got = apply_relocations(tgt, table[rs_index], symvals, erratum_843419=erratum,
                                    module_plts=cfg.module_plts)
        for t, n in got.items():
            counts[t] = counts.get(t, 0) + n
    return Relocated(dict(addresses), contents, counts, plts)
