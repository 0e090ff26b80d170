"""Hostile input: thousands of mutated modules through the whole pipeline, no uncaught exception.

Each mutated module goes through the native accelerator (when built) and the pure-Python
reference, which must agree byte for byte, errors included. Runs 3,000 examples per target
by default (about 25 s in total); set SECVMA_FUZZ_EXAMPLES for more.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secvma.fixtures import FixtureSet
from secvma.module import native
from secvma.module.api import link_module, open_module
from secvma.module.config import LINUX_6_1
from secvma.module.elf import SHDR, SHN_UNDEF, ElfModule
from secvma.module.errors import ModuleError
from secvma.module.secvma_sig import build_message
from secvma.module.symbols import Export, ExportKind, ExportTable

EXAMPLES = int(os.environ.get("SECVMA_FUZZ_EXAMPLES", "3000"))
Asm = Callable[[str], bytes]


def _regions(data: bytes) -> list[tuple[int, int]]:
    """Byte ranges worth mutating: ELF header, section headers, symtab, RELA, trailer."""
    elf = open_module(data).elf
    out = [(0, 64), (elf.e_shoff, elf.e_shoff + len(elf.sections) * SHDR.size)]
    st_ = elf.sections[elf.symtab_index]
    out.append((st_.offset, st_.offset + min(st_.size, 4096)))
    out += [(s.offset, s.offset + min(s.size, 2048)) for s in elf.rela_sections()]
    out.append((max(0, len(data) - 800), len(data)))
    out.append((0, len(data)))
    return out


def _mutations(data: bytes) -> st.SearchStrategy[bytes]:
    regions = _regions(data)
    pos = st.one_of(*[st.integers(a, b - 1) for a, b in regions if b > a])
    edits = st.lists(st.tuples(pos, st.integers(0, 255)), min_size=1, max_size=6)
    trunc = st.one_of(st.none(), st.integers(0, len(data)))

    @st.composite
    def mutate(draw: st.DrawFn) -> bytes:
        d = bytearray(data)
        for p, v in draw(edits):
            d[p] = v
        cut = draw(trunc)
        return bytes(d if cut is None else d[:cut])

    return mutate()


def _outcome(data: bytes, imports: list[str]) -> tuple[object, ...]:
    """What the pipeline produced: message, section bytes, counts, PLTs — or the error."""
    msg: bytes | None = None
    try:
        img = open_module(data)
        msg = build_message(img.elf).message
        table = ExportTable(Export(n, 0xFFFF800009000000 + 64 * k, ExportKind.PLAIN, "k")
                            for k, n in enumerate(imports))
        linked = link_module(img.elf, table, 0xFFFF800008000000, 0xFFFF800008800000,
                             LINUX_6_1, check_crcs=False)
    except ModuleError as exc:
        return msg, type(exc), str(exc)
    rel = linked.relocated
    return (msg, linked.view.sections, {i: bytes(b) for i, b in rel.contents.items()},
            list(rel.counts.items()),
            {k: (p.num_entries, bytes(p.buf), p.targets) for k, p in rel.plts.items()})


def _pipeline(data: bytes, imports: list[str]) -> None:
    """Only ModuleErrors escape, and the native and pure-Python paths agree exactly."""
    with native.use_native(True):
        fast = _outcome(data, imports)
    with native.use_native(False):
        slow = _outcome(data, imports)
    assert fast == slow


def _imports(data: bytes) -> list[str]:
    elf = ElfModule(open_module(data).elf.data)
    return sorted({s.name for s in elf.symbols() if s.shndx == SHN_UNDEF and s.name})


FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))


@pytest.mark.debian
def test_mutated_debian_module_never_escapes_module_error(debian: FixtureSet) -> None:
    """Mutated libcrc32c.ko (signed, real) only ever raises ModuleError subclasses."""
    data = debian.modules["libcrc32c"].read_bytes()
    imports = _imports(data)

    @FUZZ
    @given(_mutations(data))
    def run(mutated: bytes) -> None:
        _pipeline(mutated, imports)

    run()


def test_mutated_synthetic_module_never_escapes_module_error(assemble: Asm,
                                                             skeleton: str) -> None:
    """A small assembled module with many relocation kinds survives random corruption."""
    src = """
        .text
        bl far
        adrp x0, far
        add x0, x0, :lo12:far
        movz x1, #:abs_g0_nc:far
        b.eq 1f
    1:  ret
        .section .init.text,"ax",%progbits
        bl far
        .data
        .xword far
        .word far - .
    """
    data = assemble(src + skeleton)
    imports = _imports(data)

    @FUZZ
    @given(_mutations(data))
    def run(mutated: bytes) -> None:
        _pipeline(mutated, imports)

    run()
