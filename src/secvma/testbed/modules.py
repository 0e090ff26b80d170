"""Host-side view of the testbed kernel's loaded modules, and the real Debian module set.

The kernel records, for each loaded module (handle 0..7), where it put the three runs and
every section (`module_info[h]`, `module_secaddr[h][k]`, hvabi `ModReport`). The runs are
physically contiguous (text pool, ro pool, page allocator), so the host reads the installed
bytes of any placed section straight from guest RAM: that is how the tests compare the
kernel-side relocation with the host library, and how they find the text to attack.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from secvma.hvabi import MOD_REPORT_SECS, ModReport
from secvma.platform import PhysAddr, Platform
from secvma.testbed.commands import Primitives
from secvma.testbed.image import KernelImage

MAX_MODULES = 8
REAL_PAIRS: tuple[tuple[str, str], ...] = (("libcrc32c", "xfs"), ("crypto_engine", "virtio_crypto"))
"""(dependency, measured module): the order docs/eval-spec.md §2's run-mod.sh loads them in."""


@dataclass(frozen=True)
class LoadedModule:
    """One `module_info` slot with the final address of each section (0: not placed)."""

    handle: int
    report: ModReport
    section_addrs: tuple[int, ...]

    def runs(self) -> list[tuple[int, int, int]]:
        """(va, pa, bytes) of the text, ro and data runs."""
        r = self.report
        return [(r.text_va, r.text_pa, r.text_pages * 4096), (r.ro_va, r.ro_pa, r.ro_pages * 4096),
                (r.data_va, r.data_pa, r.data_pages * 4096)]

    def pa_of(self, va: int) -> int:
        """PA of a VA inside one of the module's runs (ValueError outside them)."""
        for base, pa, size in self.runs():
            if base <= va < base + size:
                return pa + (va - base)
        raise ValueError(f"{va:#x} is not inside module {self.handle}'s runs")

    def read(self, platform: Platform, va: int, size: int) -> bytes:
        """Installed bytes at [va, va + size) (inside one run)."""
        if size == 0:
            return b""
        self.pa_of(va + size - 1)
        return platform.read(PhysAddr(self.pa_of(va)), size)


def loaded_module(platform: Platform, image: KernelImage, handle: int) -> LoadedModule:
    """Read slot `handle` of the kernel's module table from guest RAM."""
    if not 0 <= handle < MAX_MODULES:
        raise ValueError(f"module handle {handle} out of range 0..{MAX_MODULES - 1}")
    raw = platform.read(PhysAddr(image.pa("module_info") + handle * ModReport.SIZE),
                        ModReport.SIZE)
    rep = ModReport.from_bytes(raw)
    sec = platform.read(PhysAddr(image.pa("module_secaddr") + handle * MOD_REPORT_SECS * 8),
                        MOD_REPORT_SECS * 8)
    addrs = tuple(int.from_bytes(sec[i:i + 8], "little") for i in range(0, len(sec), 8))
    return LoadedModule(handle, rep, addrs[:min(rep.shnum, MOD_REPORT_SECS)])


def host_relocation(data: bytes, lm: LoadedModule,
                    lookup: Callable[[str], int | None]) -> dict[int, bytes]:
    """What `secvma.module` computes for module `data` at the kernel's section addresses.

    `lookup(name)` gives an import's address as the kernel resolves it (e.g. the SYMBOL
    command, which searches the kernel ksymtab and every loaded module's exports). The load
    view is SECvma's 4.18 one, the same the testbed kernel prepares; relocation semantics
    are Linux's `apply_relocate_add`. Section index -> relocated bytes.
    """
    from secvma.module.api import open_module
    from secvma.module.config import SECVMA_4_18
    from secvma.module.link import relocate_sections
    from secvma.module.load import prepare
    from secvma.module.symbols import Export, ExportKind, ExportTable, resolve_symbols

    elf = open_module(data).elf
    view = prepare(elf, SECVMA_4_18)
    addrs = {k: a for k, a in enumerate(lm.section_addrs) if a}
    raw = elf.raw_symbols()
    exports = []
    for i in range(1, len(raw)):
        name = elf.symbol_name(i)
        if raw[i][3] == 0 and name:
            value = lookup(name)
            if value is not None:
                exports.append(Export(name, value, ExportKind.PLAIN, "testbed"))
    res = resolve_symbols(elf, addrs, ExportTable(exports), percpu_index=view.percpu_index,
                          percpu_base=addrs.get(view.percpu_index, 0), check_licence=False,
                          check_crcs=False)
    rel = relocate_sections(view, addrs, res.values)
    return {k: bytes(v) for k, v in rel.contents.items()}


def differing_sections(platform: Platform, lm: LoadedModule,
                       want: Mapping[int, bytes]) -> list[int]:
    """Sections whose installed bytes differ from `want` (e.g. `host_relocation`)."""
    return [k for k, body in want.items()
            if lm.read(platform, lm.section_addrs[k], len(body)) != body]


def symbol_lookup(prims: Primitives) -> Callable[[str], int | None]:
    """`lookup` for `host_relocation`: the kernel's SYMBOL command (None when unexported)."""
    def get(name: str) -> int | None:
        r = prims.symbol(name)
        return r.value if r.ok else None
    return get
