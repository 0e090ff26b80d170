"""Relocation results on real Debian modules equal GNU ld's link at the same addresses."""

from __future__ import annotations

import pytest

from secvma.fixtures import MODULE_PATHS, FixtureSet
from secvma.module.config import LINUX_6_1
from secvma.module.elf import ElfModule, ShFlags
from secvma.module.ldcheck import LOADER_OWNED, ld_link, oracle_layout
from secvma.module.link import relocate_sections
from secvma.module.linux_sig import split_appended_signature
from secvma.module.load import prepare
from secvma.module.symbols import Export, ExportKind, ExportTable, resolve_symbols

pytestmark = [pytest.mark.debian, pytest.mark.usefixtures("engine")]


def _relocate_like_ld(elf: ElfModule) -> tuple[dict[int, bytearray], int, dict[int, int]]:
    lay = oracle_layout(elf)
    view = prepare(elf, LINUX_6_1)
    exports = ExportTable(Export(n, a, ExportKind.PLAIN, "oracle") for n, a in lay.symbols.items())
    res = resolve_symbols(elf, lay.sections, exports, percpu_index=view.percpu_index,
                          percpu_base=lay.sections.get(view.percpu_index, 0), check_crcs=False)
    addrs = {i: a for i, a in lay.sections.items() if view.sections[i].flags & ShFlags.ALLOC}
    rel = relocate_sections(view, addrs, res.values)
    assert not any(p.num_entries for p in rel.plts.values()), "oracle layout must be in range"
    return rel.contents, rel.total, lay.sections


@pytest.mark.parametrize("name", sorted(MODULE_PATHS))
def test_relocated_sections_match_gnu_ld(debian: FixtureSet, binutils: dict[str, str],
                                         name: str) -> None:
    """Every allocated PROGBITS section relocated in Python equals aarch64-linux-gnu-ld's."""
    data, _sig = split_appended_signature(debian.modules[name].read_bytes())
    elf = ElfModule(data)
    contents, total, addrs = _relocate_like_ld(elf)
    ld = ld_link(elf, oracle_layout(elf), ld=binutils["ld"])
    compared = 0
    for idx, buf in contents.items():
        sec = elf.sections[idx]
        if sec.name in LOADER_OWNED or sec.name not in ld.sections:
            continue
        ld_addr, ld_bytes = ld.sections[sec.name]
        assert ld_addr == addrs[idx], f"{sec.name} placed at {ld_addr:#x}"
        if bytes(buf) != ld_bytes:
            diff = next(i for i in range(len(buf)) if buf[i] != ld_bytes[i])
            pytest.fail(f"{name}:{sec.name} differs from ld at offset {diff:#x}")
        compared += 1
    nrel = sum(len(elf.relocations(s.index)) for s in elf.rela_sections()
               if elf.sections[s.info].flags & ShFlags.ALLOC)
    assert compared >= 10
    assert total == nrel  # every relocation into an allocated section was applied
