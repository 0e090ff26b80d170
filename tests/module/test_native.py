"""The native accelerator (modaccel.c) reproduces the pure-Python reference byte for byte.

Compared: signed messages and whole links of the four Debian modules (near and far
layouts, so PLT entries, erratum veneers and overflow errors are exercised), small
assembled objects, and fuzzed relocation lists and heapsort inputs — results, buffer
contents, PLT state, and error class and message. Also: the C entry points refuse
inconsistent offsets and counts, and the build is cached by source hash outside the tree.
"""

from __future__ import annotations

import dataclasses
import struct
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secvma.fixtures import MODULE_PATHS, FixtureSet
from secvma.module import native
from secvma.module.api import link_module, open_module
from secvma.module.config import LINUX_6_1, SECVMA_4_18, LoaderConfig
from secvma.module.elf import RELA, ElfModule
from secvma.module.errors import ModuleError
from secvma.module.load import count_plts, plt_order, prepare
from secvma.module.native import ops
from secvma.module.relocations import M64, RECIPES, PltSection, R, RelocTarget, apply_relocations
from secvma.module.secvma_sig import build_message
from secvma.module.sort import sort_relas
from secvma.module.symbols import Export, ExportKind, ExportTable, module_exports, parse_symvers

from .conftest import native_or_skip

KERNEL = 0xFFFF800009000000
NEAR, FAR = 0xFFFF800008000000, 0xFFFF000000000000
CONFIGS = {"6.1": LINUX_6_1, "4.18": SECVMA_4_18,
           "843419": dataclasses.replace(LINUX_6_1, erratum_843419=True)}
Asm = Callable[[str], bytes]


@pytest.fixture(autouse=True)
def _needs_native() -> None:
    native_or_skip()


def _both(fn: Callable[[], object]) -> tuple[object, object]:
    """`fn()` (or the ModuleError it raises) through the native and the Python path."""
    out = []
    for on in (True, False):
        with native.use_native(on):
            try:
                out.append(fn())
            except ModuleError as exc:
                out.append((type(exc), str(exc)))
    return out[0], out[1]


def _link_outcome(elf: ElfModule, exports: ExportTable, core: int,
                  cfg: LoaderConfig) -> tuple[object, ...]:
    linked = link_module(elf, exports, core, core + 0x800000, cfg)
    rel = linked.relocated
    return (linked.view.sections, linked.view.core_plts, linked.view.init_plts,
            {i: bytes(b) for i, b in rel.contents.items()}, list(rel.counts.items()),
            {k: (p.num_entries, bytes(p.buf), p.targets) for k, p in rel.plts.items()})


@pytest.fixture(scope="module")
def exports(debian: FixtureSet) -> ExportTable:
    """Kernel exports plus those of libcrc32c and crypto_engine (the fixtures' dependencies)."""
    table = ExportTable.kernel_from_symvers(parse_symvers(debian.symvers.read_text()), KERNEL)
    for k, dep in enumerate(("libcrc32c", "crypto_engine")):
        elf = open_module(debian.modules[dep].read_bytes()).elf
        base = NEAR + 0x4000000 * (k + 1)
        linked = link_module(elf, table, base, base + 0x1000000)
        table.add(module_exports(elf, linked.addresses, dep))
    return table


@pytest.mark.debian
@pytest.mark.parametrize("cfg", sorted(CONFIGS))
@pytest.mark.parametrize("name", sorted(MODULE_PATHS))
def test_native_message_equals_python_on_debian(debian: FixtureSet, name: str, cfg: str) -> None:
    """The signed message (exact 4.18 heapsort of every code RELA section) is identical."""
    elf = open_module(debian.modules[name].read_bytes()).elf
    fast, slow = _both(lambda: build_message(elf, CONFIGS[cfg]).message)
    assert isinstance(fast, bytes) and fast == slow


@pytest.mark.debian
@pytest.mark.parametrize("core", [NEAR, FAR], ids=["near", "far"])
@pytest.mark.parametrize("cfg", sorted(CONFIGS))
@pytest.mark.parametrize("name", sorted(MODULE_PATHS))
def test_native_link_equals_python_on_debian(debian: FixtureSet, exports: ExportTable,
                                             name: str, cfg: str, core: int) -> None:
    """Headers, section bytes, per-type counts (in order), PLTs — or the error — are identical."""
    elf = open_module(debian.modules[name].read_bytes()).elf
    fast, slow = _both(lambda: _link_outcome(elf, exports, core, CONFIGS[cfg]))
    assert fast == slow


def test_native_exact_sort_view_equals_python(debian: FixtureSet) -> None:
    """`prepare(exact_sort=True)` keeps the kernel's heapsort order on both paths."""
    elf = open_module(debian.modules["libcrc32c"].read_bytes()).elf

    def view() -> object:
        v = prepare(elf, LINUX_6_1, exact_sort=True)
        return v.sections, dict(v.relocations.items()), v.core_plts, v.init_plts

    fast, slow = _both(view)
    assert fast == slow


SYNTHETIC = """
    .section .text,"ax",%progbits
    .globl fn
fn: bl far
    bl far
    b far + 8
    bl fn
    adrp x0, far
    add x0, x0, :lo12:far
    ldr x1, [x0, :lo12:far]
    movz x1, #:abs_g1:small
    movk x1, #:abs_g0_nc:far
    movz x2, #:prel_g0:fn
    cbz x0, fn
    tbz x0, #1, fn
    .balign 4096
    .space 0xff8
    adrp x5, far
    adrp x6, fn
    ret
    .section .init.text,"ax",%progbits
    bl far
    .data
    .xword far
    .word small
    .word far - .
    .hword small
"""


@pytest.mark.parametrize("cfg", sorted(CONFIGS))
@pytest.mark.parametrize("far", [0x123456, 1 << 31, 1 << 40], ids=["near", "2G", "1T"])
def test_native_link_equals_python_on_synthetic_object(assemble: Asm, skeleton: str, cfg: str,
                                                       far: int) -> None:
    """Branches via PLT, erratum ADR/veneers, MOVW, LO12, data: same bytes or same error."""
    elf = ElfModule(assemble(SYNTHETIC + skeleton))
    table = ExportTable([Export("far", NEAR + far, ExportKind.PLAIN, "t"),
                         Export("small", 0x1234, ExportKind.PLAIN, "t")])

    def run() -> object:
        return (build_message(elf, CONFIGS[cfg]).message,
                _link_outcome(elf, table, NEAR, CONFIGS[cfg]))

    fast, slow = _both(run)
    assert fast == slow


# ------------------------------------------------------------------ fuzzed relocations

FUZZ = settings(max_examples=600, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))
TYPES = [*sorted(RECIPES), 1, 281, 300, 0xFFFFFFFF]
HOT = [R.CALL26, R.JUMP26, R.ADR_PREL_PG_HI21, R.ABS32, R.PREL32, R.MOVW_SABS_G0]
BASES = [0, NEAR, NEAR + 0xFF0, M64 - 7]
_entry = st.tuples(
    st.one_of(st.integers(0, 40).map(lambda x: x & ~1), st.sampled_from([41, 2**63, M64])),
    st.one_of(st.sampled_from(TYPES), st.sampled_from(HOT)),
    st.one_of(st.integers(0, 4), st.just(5), st.just(2**32 - 1)),
    st.one_of(st.integers(-8, 8), st.integers(-(2**63), 2**63 - 1)),
)
_symval = st.one_of(st.sampled_from([0, NEAR + 0x10, NEAR + (1 << 30), NEAR - (1 << 33), -4]),
                    st.integers(0, M64))


@FUZZ
@given(relas=st.lists(_entry, max_size=24), syms=st.lists(_symval, min_size=5, max_size=5),
       size=st.integers(0, 48), base=st.one_of(st.sampled_from(BASES), st.integers(0, M64)),
       plt_room=st.one_of(st.none(), st.integers(0, 3)), entry=st.sampled_from([12, 16]),
       plt_addr=st.sampled_from([NEAR + 0x100000, NEAR + 0xFF8, FAR]),
       erratum=st.booleans(), plts=st.booleans(), plt_sort=st.booleans(),
       seed=st.binary(min_size=64, max_size=64))
def test_native_engine_equals_reference_on_fuzzed_relocations(
        relas: list[tuple[int, int, int, int]], syms: list[int], size: int, base: int,
        plt_room: int | None, entry: int, plt_addr: int, erratum: bool, plts: bool,
        plt_sort: bool, seed: bytes) -> None:
    """Random types, places, symbols and addends: same bytes, PLT state, counts or error."""
    rows = [(off, (sym << 32) | t, add) for off, t, sym, add in relas]
    raw = b"".join(RELA.pack(*r) for r in rows)

    def run(fast: bool) -> tuple[object, ...]:
        plt = None if plt_room is None else PltSection(
            7, plt_addr, bytearray(seed[: (plt_room + 1) * entry]), plt_room, entry)
        tgt = RelocTarget("sec", bytearray(seed[:size]), base, plt)
        try:
            if fast:
                got = ops.apply_relas(tgt, raw, 0, len(rows), syms, ops.symbol_array(syms),
                                      plt_sort=plt_sort, erratum_843419=erratum,
                                      module_plts=plts)
            else:
                order = plt_order(rows) if plt_sort else rows
                got = apply_relocations(tgt, order, syms, erratum_843419=erratum,
                                        module_plts=plts)
            res: object = list((got or {}).items())
        except ModuleError as exc:
            res = (type(exc), str(exc))
        pstate = None if plt is None else (plt.num_entries, bytes(plt.buf), plt.targets)
        return res, bytes(tgt.buf), pstate

    assert run(True) == run(False)


_sort_entry = st.tuples(st.integers(0, 3), st.sampled_from([R.CALL26, R.JUMP26, R.ABS64, 0, 7]),
                        st.integers(0, 3), st.sampled_from([0, 1, -1, 2**63 - 1, -(2**63)]))


@FUZZ
@given(relas=st.lists(_sort_entry, max_size=64), junk=st.integers(0, 48))
def test_native_heapsort_equals_lib_sort_port_with_ties(relas: list[tuple[int, int, int, int]],
                                                        junk: int) -> None:
    """Many equal keys: the C heapsort leaves ties in exactly the Python port's order."""
    rows = [(off, (sym << 32) | t, add) for off, t, sym, add in relas]
    raw = b"\xee" * junk + b"".join(RELA.pack(*r) for r in rows)
    want = b"".join(RELA.pack(*r) for r in sort_relas(rows))
    assert ops.sort_relas(raw, junk, len(rows)) == want


@pytest.fixture(scope="module")
def plt_elf(assemble: Asm, skeleton: str) -> ElfModule:
    """An object with a few local and undefined symbols, for count_plts."""
    return ElfModule(assemble("""
        .text
    a:  bl x
        bl y
        bl a
        adrp x0, z
    """ + skeleton))


@FUZZ
@given(relas=st.lists(st.tuples(st.integers(0, 2**64 - 1), st.sampled_from(
           [R.CALL26, R.JUMP26, R.ADR_PREL_PG_HI21, R.ADR_PREL_PG_HI21_NC, R.ABS64]),
           st.integers(0, 12), st.sampled_from([0, 0, 4, -4])), max_size=40),
       randomize=st.booleans(), erratum=st.booleans(), entry=st.sampled_from([12, 16]),
       align=st.sampled_from([0, 4, 64, 4096]), dst=st.integers(0, 3))
def test_native_count_plts_equals_reference(plt_elf: ElfModule,
                                            relas: list[tuple[int, int, int, int]],
                                            randomize: bool, erratum: bool, entry: int,
                                            align: int, dst: int) -> None:
    """PLT slot counts, duplicate detection and 843419 alignment agree; bad symbols refused."""
    rows = sort_relas([(off, (sym << 32) | t, add) for off, t, sym, add in relas])
    raw = b"".join(RELA.pack(*r) for r in rows)
    cfg = LoaderConfig(randomize_base=randomize, erratum_843419=erratum, plt_entry_size=entry)
    syms = plt_elf.raw_symbols()
    got = ops.count_plts(raw, 0, len(rows), plt_elf, dst, align, cfg)
    if any(r[1] >> 32 >= len(syms) for r in rows):
        assert got is False
    else:
        sec = dataclasses.replace(plt_elf.sections[1], addralign=align)
        assert got == count_plts(syms, rows, dst, sec, cfg)


# ------------------------------------------------------------------ hostile arguments


def test_native_entry_points_refuse_out_of_range_spans() -> None:
    """Offsets/counts past the buffer are refused by the C code, never read or written."""
    lib = native.lib()
    assert lib is not None
    data = bytes(48)
    for off, n in [(49, 0), (25, 1), (0, 3), (2**63, 1), (0, 2**62), (24, 2**64 - 1)]:
        assert ops.sort_relas(data, off, n) is None
        assert lib.secvma_sort_relas(data, len(data), off, n, None, 0) < 0
    table, rows = ops.recipe_table()
    order = (ops.ctypes.c_uint32 * 4)()
    counts = (ops.ctypes.c_uint64 * len(rows))()
    first = (ops.ctypes.c_uint64 * len(rows))()
    assert lib.secvma_plan(table, len(rows), data, 48, 40, 1, 8, 1, 0, order, 4, counts,
                           first) < 0
    assert lib.secvma_plan(table, len(rows), data, 48, 0, 2, 8, 1, 0, order, 1, counts,
                           first) < 0
    order[0] = 5  # an index the plan never produced
    buf = ops.ctypes.create_string_buffer(8)
    assert lib.secvma_apply(table, len(rows), data, 48, 0, 2, buf, 8, 0, None, 0, 0, order, 4,
                            0) < 0
    assert lib.secvma_apply(table, len(rows), data, 48, 0, 1, buf, 8, 0, None, 0, 0, order, 4,
                            2) < 0


def test_recipe_table_has_one_row_per_recipe_in_type_order() -> None:
    """The C engine's table is generated from RECIPES: 39 rows, ascending, fields copied."""
    table, rows = ops.recipe_table()
    assert [r.rtype for r in rows] == sorted(RECIPES) and len(rows) == 39
    for row, rec in zip(table, rows, strict=True):
        assert (row.rtype, row.width, row.lsb, row.length, bool(row.check)) == (
            rec.rtype, rec.width, rec.lsb, rec.length, rec.check)
    assert {rows[i].rtype for i in range(len(rows)) if table[i].plt_sorted} == {
        R.CALL26, R.JUMP26, R.ADR_PREL_PG_HI21, R.ADR_PREL_PG_HI21_NC}


# ------------------------------------------------------------------ build


def test_build_is_cached_by_source_hash_outside_the_tree(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """`build_native` compiles once into $SECVMA_BUILD/native, named by the source hash."""
    monkeypatch.setenv("SECVMA_BUILD", str(tmp_path))
    first = native.build_native()
    assert first is not None and first.parent == tmp_path / "native"
    assert first.name.startswith("modaccel-") and first.suffix == ".so"
    mtime = first.stat().st_mtime_ns
    assert native.build_native() == first and first.stat().st_mtime_ns == mtime
    assert not list(native.SOURCE.parent.glob("*.so"))


def _planted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dir_mode: int,
             file_mode: int = 0o755) -> Path:
    """A file named like the current accelerator in $SECVMA_BUILD/native (not a library)."""
    monkeypatch.setenv("SECVMA_BUILD", str(tmp_path / "build"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    d = tmp_path / "build" / "native"
    d.mkdir(parents=True)
    d.chmod(dir_mode)
    f = d / f"modaccel-{native._source_key()}.so"
    f.write_bytes(b"planted, not a shared object")
    f.chmod(file_mode)
    return f


@pytest.mark.parametrize(("dir_mode", "file_mode"), [(0o777, 0o755), (0o1777, 0o755),
                                                     (0o775, 0o755), (0o700, 0o777),
                                                     (0o700, 0o775)])
def test_a_library_others_could_write_is_never_loaded(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      dir_mode: int, file_mode: int) -> None:
    """A cached .so in a directory (or a file) writable by others is ignored with a warning."""
    planted = _planted(tmp_path, monkeypatch, dir_mode, file_mode)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert native.library_path() is None
    assert any(str(planted) in str(w.message) for w in caught)
    assert (planted.parent.stat().st_mode & 0o7777) == dir_mode  # refused, not repaired


def test_the_cache_never_lives_in_the_shared_temporary_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No candidate directory is derived from $TMPDIR (anyone can create names there)."""
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    monkeypatch.delenv("SECVMA_BUILD", raising=False)
    assert all(not str(d).startswith(str(tmp_path / "tmp")) and "secvma-native-" not in d.name
               for d in native._candidate_dirs())


def test_a_fresh_cache_directory_is_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`build_native` creates the directory 0700 and the library writable only by its owner;
    an own 0755 directory (nobody else can write it) is narrowed to 0700."""
    monkeypatch.setenv("SECVMA_BUILD", str(tmp_path / "build"))
    built = native.build_native()
    assert built is not None
    assert built.parent.stat().st_mode & 0o777 == 0o700
    assert not built.stat().st_mode & 0o022
    built.parent.chmod(0o755)
    assert native.library_path() == built and built.parent.stat().st_mode & 0o777 == 0o700


def test_failed_compile_warns_and_leaves_python(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A broken compiler only warns; `build_native` returns None."""
    monkeypatch.setenv("SECVMA_BUILD", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    monkeypatch.setenv("CC", "false")
    monkeypatch.setattr(native, "library_path", lambda: None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert native.build_native() is None
    assert any("not built" in str(w.message) for w in caught)


def test_disabled_accelerator_uses_python(debian: FixtureSet) -> None:
    """With the accelerator off, `native.lib()` is None and the reference runs."""
    with native.use_native(False):
        assert native.lib() is None
        elf = open_module(debian.modules["libcrc32c"].read_bytes()).elf
        assert build_message(elf).message
    assert struct.calcsize("<QQq") == RELA.size
