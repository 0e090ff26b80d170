"""The module toolchain as a pipeline over bytes: parse → message → verify → layout → resolve → relocate.

Why a thin facade: the in-hypervisor loader (docs/kpcore-spec.md §7.3) works on bytes it copied
out of guest memory and must run these stages in order, stopping at the first refusal.
Every stage is a plain function of the previous stage's result; nothing reads guest memory
twice and nothing here keeps global state. All failures are `ModuleError` subclasses.

    image = open_module(raw_bytes)                       # parse (+ strip Linux signature)
    msg   = secvma_sig.build_message(image.elf)          # signed message (docs/eval-spec.md §3.3)
    secvma_sig.verify_message(msg, signature, pubkey)    # Ed25519, raises if invalid
    view  = load.prepare(image.elf, config)              # kernel's load-time headers
    lay   = layout.layout_sections(view)                 # core/init offsets
    addrs = lay.addresses(core_base, init_base)
    res   = symbols.resolve_symbols(image.elf, addrs, exports, ...)
    out   = link.relocate_sections(view, addrs, res.values)

`link_module` runs the last four steps in one call.
"""

from __future__ import annotations

from dataclasses import dataclass

from secvma.module.config import LINUX_6_1, LoaderConfig
from secvma.module.elf import ElfModule, decompress
from secvma.module.layout import Layout, layout_sections
from secvma.module.link import Relocated, relocate_sections
from secvma.module.linux_sig import AppendedSignature, split_appended_signature
from secvma.module.load import LoadView, prepare
from secvma.module.symbols import ExportTable, Resolution, module_name, resolve_symbols


@dataclass(frozen=True)
class ModuleImage:
    """A parsed module file: the ELF (without any Linux signature) and that signature."""

    elf: ElfModule
    linux_signature: AppendedSignature | None
    name: str


def open_module(data: bytes, filename: str = "") -> ModuleImage:
    """Decompress (xz/zstd by magic), split off a Linux signature, and parse the ELF."""
    raw = decompress(data, filename)
    body, sig = split_appended_signature(raw)
    elf = ElfModule(body)
    return ModuleImage(elf, sig, module_name(elf))


@dataclass(frozen=True)
class LinkedModule:
    """Everything a loader needs to map the module: view, layout, symbols, section bytes."""

    view: LoadView
    layout: Layout
    addresses: dict[int, int]
    resolution: Resolution
    relocated: Relocated


def link_module(elf: ElfModule, exports: ExportTable, core_base: int, init_base: int,
                cfg: LoaderConfig = LINUX_6_1, *, percpu_base: int = 0,
                check_licence: bool = True, check_crcs: bool = True) -> LinkedModule:
    """prepare → layout → resolve → relocate at the given region bases."""
    view = prepare(elf, cfg)
    lay = layout_sections(view)
    addrs = lay.addresses(core_base, init_base)
    res = resolve_symbols(elf, addrs, exports, percpu_index=view.percpu_index,
                          percpu_base=percpu_base, check_licence=check_licence,
                          check_crcs=check_crcs)
    rel = relocate_sections(view, addrs, res.values)
    return LinkedModule(view, lay, addrs, res, rel)
