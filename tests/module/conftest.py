"""Shared fixtures of the module tests: the Debian fixture set, fetched once per session."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from secvma.module import native


def native_or_skip() -> None:
    """Skip when the accelerator is switched off; fail when it should work but does not."""
    if os.environ.get("SECVMA_NO_NATIVE", "") not in ("", "0"):
        pytest.skip("SECVMA_NO_NATIVE is set")
    with native.use_native(True):
        assert native.available(), "the native accelerator could not be built (see warnings)"


@pytest.fixture(params=["native", "python"])
def engine(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run the test once through the native accelerator and once in pure Python."""
    on = request.param == "native"
    if on:
        native_or_skip()
    with native.use_native(on):
        yield str(request.param)


@pytest.fixture(scope="session")
def binutils() -> dict[str, str]:
    """Paths of aarch64-linux-gnu-as/ld; skips when the cross binutils are not installed."""
    tools = {t: shutil.which(f"aarch64-linux-gnu-{t}") for t in ("as", "ld")}
    missing = [t for t, p in tools.items() if p is None]
    if missing:
        pytest.skip(f"aarch64-linux-gnu-{'/'.join(missing)} not installed "
                    "(apt-get install binutils-aarch64-linux-gnu)")
    return {t: str(p) for t, p in tools.items()}


@pytest.fixture(scope="session")
def assemble(binutils: dict[str, str], tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """Assemble AArch64 source text into a relocatable object (bytes) with GNU as."""
    import subprocess

    work = tmp_path_factory.mktemp("asm")
    counter = [0]

    def run(source: str) -> bytes:
        counter[0] += 1
        src, obj = work / f"t{counter[0]}.S", work / f"t{counter[0]}.o"
        src.write_text(source)
        subprocess.run([binutils["as"], "-o", str(obj), str(src)], check=True,
                       capture_output=True, text=True)
        return obj.read_bytes()

    return run


@pytest.fixture(scope="session")
def skeleton() -> str:
    """Assembly for the sections every arm64 module has (.plt placeholders, .modinfo)."""
    return _SKELETON


_SKELETON = """
    .section .plt,"ax",%progbits
    .byte 0
    .section .init.plt,"a",%progbits
    .byte 0
    .section .modinfo,"a",%progbits
    .asciz "license=GPL"
    .asciz "name=synthetic"
"""
