"""Whole-module loading of the Debian set: layout, symbol resolution, licences, modversions."""

from __future__ import annotations

import dataclasses
import itertools

import pytest

from secvma.fixtures import MODULE_PATHS, FixtureSet
from secvma.module.api import ModuleImage, link_module, open_module
from secvma.module.config import LINUX_6_1
from secvma.module.elf import ShFlags
from secvma.module.errors import LicenceError, UnresolvedSymbol, VersionMismatch
from secvma.module.layout import Region, layout_sections
from secvma.module.load import prepare
from secvma.module.symbols import (
    Export,
    ExportKind,
    ExportTable,
    SymversEntry,
    check_versions,
    module_exports,
    parse_symvers,
    versions,
)

pytestmark = pytest.mark.debian
KERNEL = 0xFFFF800009000000
CORE = 0xFFFF800010000000


@pytest.fixture(scope="module")
def symvers(debian: FixtureSet) -> dict[str, SymversEntry]:
    return parse_symvers(debian.symvers.read_text())


@pytest.fixture(scope="module")
def images(debian: FixtureSet) -> dict[str, ModuleImage]:
    return {n: open_module(p.read_bytes()) for n, p in debian.modules.items()}


@pytest.mark.parametrize("name", sorted(MODULE_PATHS))
def test_versions_all_match_module_symvers(images: dict[str, ModuleImage],
                                           symvers: dict[str, SymversEntry], name: str) -> None:
    """Every `__versions` CRC of every fixture equals Module.symvers (0 mismatches)."""
    elf = images[name].elf
    assert versions(elf) and set(versions(elf)) <= set(symvers)
    assert check_versions(elf, symvers) == []


@pytest.mark.parametrize(("dep", "user"), [("libcrc32c", "xfs"), ("crypto_engine", "virtio_crypto")])
def test_modules_link_in_dependency_order(images: dict[str, ModuleImage],
                                          symvers: dict[str, SymversEntry], dep: str,
                                          user: str) -> None:
    """A module resolves against the kernel plus its dependency's exports, with CRCs checked."""
    table = ExportTable.kernel_from_symvers(symvers, KERNEL)
    with pytest.raises(UnresolvedSymbol):
        link_module(images[user].elf, table, CORE, CORE + 0x4000000)
    d = link_module(images[dep].elf, table, CORE + 0x8000000, CORE + 0xC000000)
    exports = module_exports(images[dep].elf, d.addresses, dep)
    assert exports and all(e.crc == symvers[e.name].crc for e in exports)
    table.add(exports)
    u = link_module(images[user].elf, table, CORE, CORE + 0x4000000)
    used = {n for n, e in u.resolution.imports.items() if e is not None and e.owner == dep}
    assert used  # e.g. xfs -> crc32c, virtio_crypto -> crypto_engine_*
    assert u.relocated.total == sum(
        len(images[user].elf.relocations(s.index)) for s in images[user].elf.rela_sections()
        if u.view.sections[s.info].flags & ShFlags.ALLOC)


def test_changed_crc_is_a_version_mismatch(images: dict[str, ModuleImage],
                                           symvers: dict[str, SymversEntry]) -> None:
    """An exporter CRC that differs from `__versions` refuses the load (modversions)."""
    elf = images["libcrc32c"].elf
    victim = next(n for n in sorted(versions(elf)) if n != "module_layout")
    bad = dict(symvers)
    bad[victim] = dataclasses.replace(symvers[victim], crc=symvers[victim].crc ^ 1)
    table = ExportTable.kernel_from_symvers(bad, KERNEL)
    with pytest.raises(VersionMismatch, match=victim):
        link_module(images["libcrc32c"].elf, table, CORE, CORE + 0x4000000)


def test_gpl_only_export_refused_to_non_gpl_module(images: dict[str, ModuleImage],
                                                   symvers: dict[str, SymversEntry]) -> None:
    """A module whose licence is not GPL-compatible cannot use EXPORT_SYMBOL_GPL symbols."""
    elf = images["virtio_crypto"].elf
    sec = elf.section_by_name(".modinfo")
    assert sec is not None
    data = bytearray(elf.data)
    blob = elf.section_bytes(sec.index)
    at = blob.index(b"license=GPL")
    data[sec.offset + at : sec.offset + at + 11] = b"license=BSD"
    from secvma.module.elf import ElfModule

    table = ExportTable.kernel_from_symvers(symvers, KERNEL)
    table.add(Export(n, KERNEL - 0x1000, ExportKind.GPL, "crypto_engine")
              for n in ("crypto_engine_alloc_init_and_set", "crypto_engine_exit",
                        "crypto_engine_start", "crypto_engine_stop",
                        "crypto_finalize_akcipher_request",
                        "crypto_finalize_skcipher_request", "crypto_transfer_akcipher_request_to_engine",
                        "crypto_transfer_skcipher_request_to_engine"))
    with pytest.raises(LicenceError, match="GPL"):
        link_module(ElfModule(bytes(data)), table, CORE, CORE + 0x4000000)


@pytest.mark.parametrize("name", sorted(MODULE_PATHS))
def test_layout_respects_alignment_regions_and_page_rounding(images: dict[str, ModuleImage],
                                                             name: str) -> None:
    """Sections are aligned, do not overlap, init sections go to init, boundaries page-rounded."""
    view = prepare(images[name].elf, LINUX_6_1)
    lay = layout_sections(view)
    spans = {Region.CORE: [], Region.INIT: []}  # type: dict[Region, list[tuple[int, int]]]
    for idx, (region, off) in lay.placement.items():
        s = view.sections[idx]
        assert off % max(1, s.addralign) == 0
        assert (region is Region.INIT) == (s.name.startswith(".init") or idx in (
            view.elf.symtab_index, view.elf.strtab_index))
        spans[region].append((off, off + s.size))
    for region, items in spans.items():
        items.sort()
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(items)), region
    for r in (lay.core, lay.init):
        assert r.text_size <= r.ro_size <= r.ro_after_init_size <= r.size
        assert all(x % 4096 == 0 for x in (r.text_size, r.ro_size, r.size))
    text = view.section(".text")
    assert text is not None and lay.placement[text.index] == (Region.CORE, 0)
