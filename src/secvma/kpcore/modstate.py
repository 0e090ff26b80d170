"""What the hypervisor remembers about loaded modules (C: `el2_data->mod_info[EL2_MOD_INFO_SIZE]`).

Everything here is hypervisor memory: a module's exports are computed from its verified
symbol table at load time and never read back from kernel memory (spec §11 gap 15).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from secvma.kpcore.modkeys import ModuleKeys
from secvma.module.symbols import Export, ExportTable

MOD_SLOTS = 66
"""EL2_MOD_INFO_SIZE = EL2_MAX_VMID + 1 (spec §10): ids 0..65."""


@dataclass
class LoadedModule:
    """One `mod_info[id]` slot: the pages EL2 verified, how they are mapped, what it exports.

    `text` / `init_text` / `ro` map a kernel VA (page aligned) to the PA of the page the
    hypervisor installed there; `digests` holds the SHA-256 of every installed text page
    (INV-MOD compares the live contents with them).
    """

    modid: int
    name: str
    text: dict[int, int]
    init_text: dict[int, int]
    ro: dict[int, int]
    exports: list[Export]
    imports_from: set[str]
    digests: dict[int, bytes] = field(default_factory=dict)
    init_freed: bool = False

    def text_pfns(self) -> set[int]:
        pages = dict(self.text)
        if not self.init_freed:
            pages.update(self.init_text)
        return {pa >> 12 for pa in pages.values()}

    def ro_pfns(self) -> set[int]:
        return {pa >> 12 for pa in self.ro.values()}


@dataclass
class ModState:
    """The module table, the signature table and the kernel's exports (read once)."""

    keys: ModuleKeys | None = None
    loaded: dict[int, LoadedModule] = field(default_factory=dict)
    kernel_exports: list[Export] | None = None
    kernel_table: ExportTable | None = None  # kernel_exports as a table, copied per load
    in_progress: bool = False
    staged: tuple[int, object] | None = None
    """(CPU, its ModuleLoad) between HVC 30's two trips (`modload.hvc_mload`)."""
    loads: int = 0
    refused: int = 0
    orphan_ro: set[int] = field(default_factory=set)
    """secvma2024: MOD_ro pages EL2 did not refund at HVC 31 (spec §7.5), until the kernel
    unmaps them."""

    def free_slot(self) -> int | None:
        return next((i for i in range(MOD_SLOTS) if i not in self.loaded), None)

    def by_name(self, name: str) -> LoadedModule | None:
        return next((m for m in self.loaded.values() if m.name == name), None)
