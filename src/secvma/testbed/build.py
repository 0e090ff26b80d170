"""Building the testbed kernel, its user image and test modules with Debian's cross compiler.

`make -C guest/testbed O=<build>/testbed/<digest>`: the output directory is named after a digest
of every file under guest/testbed, so a repeated call is free and any source change rebuilds.
The build goes to a temporary directory that is renamed into place, so concurrent callers
(e.g. parallel test workers) never see a half-written image.

When the Debian fixtures are present (`secvma.fixtures.available()`, no network), the kernel
also gets a Linux 6.1 export table generated from Module.symvers (`linuxsyms`), so real
modules link against it; the table's digest is part of the output directory's name. Without
the fixtures the kernel is built without it (`TestbedImage.linux_symbols == 0`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from secvma.machine.build import CROSS, build_dir, guest_dir, tool
from secvma.machine.errors import ToolchainError
from secvma.testbed import linuxsyms

TEST_MODULES = ("mod_hello", "mod_counter", "mod_user")


@dataclass(frozen=True)
class TestbedImage:
    """The built testbed: flat kernel binary (load at KERNEL_PA), its ELF, modules, user image."""

    __test__ = False  # not a pytest class

    kernel_bin: Path
    kernel_elf: Path
    user_elf: Path
    modules: dict[str, Path]
    digest: str
    linux_symbols: int = 0
    """Entries of the generated Linux 6.1 export table (0: built without the fixtures)."""


def source_dir() -> Path:
    return guest_dir() / "testbed"


def source_digest(src: Path | None = None) -> str:
    """Digest of every file under guest/testbed (path and content)."""
    src = src or source_dir()
    h = hashlib.sha256()
    for p in sorted(q for q in src.rglob("*") if q.is_file()):
        rel = p.relative_to(src).as_posix().encode()
        data = p.read_bytes()
        h.update(len(rel).to_bytes(8, "little") + rel + len(data).to_bytes(8, "little") + data)
    return h.hexdigest()[:16]


def _image(out: Path, digest: str, linux_symbols: int = 0) -> TestbedImage:
    return TestbedImage(out / "kernel.bin", out / "kernel.elf", out / "user.elf",
                        {m: out / f"{m}.ko" for m in TEST_MODULES}, digest, linux_symbols)


def linux_table(root: Path, src: Path) -> tuple[Path, int] | None:
    """(path of the generated Linux export table, entry count), or None without fixtures.

    Cached under `root` by a digest of its inputs, so only the first build after the
    fixtures change parses the modules (about a second for xfs).
    """
    from secvma import fixtures

    fx = fixtures.available()
    if fx is None or not fx.symvers.is_file() or not fx.modules:
        return None
    mods = list(fx.modules.values())
    key = linuxsyms.cache_key(fx.symvers, mods, src / "kernel")
    path = root / f"linux_syms-{key}.S"
    count = root / f"linux_syms-{key}.count"
    if not path.is_file() or not count.is_file():
        table = linuxsyms.from_files(fx.symvers, mods, src / "kernel")
        root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=root, prefix=".linux_syms-")
        with os.fdopen(fd, "w") as f:
            f.write(table.text)
        os.replace(tmp, path)
        count.write_text(str(table.total))
    return path, int(count.read_text())


def build_testbed(force: bool = False) -> TestbedImage:
    """Build (or reuse) the testbed; raises ToolchainError with the compiler's message."""
    src = source_dir()
    if not (src / "Makefile").is_file():
        raise ToolchainError(f"{src}/Makefile not found", hint="run from a secvma source checkout")
    root = build_dir() / "testbed"
    linux = linux_table(root, src)
    digest = source_digest(src)
    if linux is not None:
        h = hashlib.sha256((digest + linux[0].read_text()).encode())
        digest = digest + "-l" + h.hexdigest()[:8]
    out = root / digest
    img = _image(out, digest, linux[1] if linux else 0)
    if not force and img.kernel_bin.is_file() and all(p.is_file() for p in img.modules.values()):
        return img
    make = shutil.which("make")
    if make is None:
        raise ToolchainError("make not found", hint="apt-get install make")
    tool("gcc")  # a clear error when the cross compiler is missing
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{digest}-", dir=root))
    try:
        extra = [f"LINUX_SYMS={linux[0]}"] if linux is not None else []
        proc = subprocess.run([make, "-C", str(src), f"O={tmp}", f"CROSS_COMPILE={CROSS}",
                               f"-j{os.cpu_count() or 2}", *extra], capture_output=True,
                              text=True)
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
            raise ToolchainError(f"testbed build failed:\n{tail}")
        if force and out.exists():
            shutil.rmtree(out, ignore_errors=True)
        try:
            tmp.rename(out)
        except OSError:
            if not img.kernel_bin.is_file():  # somebody else won the race only if it is complete
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return img
