"""The initramfs for booting the Debian kernel: our static /init, packed as a newc cpio.

The archive is written in Python (no `cpio`, no `mknod`, no root): newc headers can describe
device nodes directly, so /dev/console exists before the kernel opens it.
"""

from __future__ import annotations

import hashlib
import stat
import subprocess
from pathlib import Path

from secvma.machine.build import build_dir, guest_dir, tool
from secvma.machine.errors import ToolchainError

INIT_BANNER = b"SECVMA-INIT: hello from userspace"


def _newc(name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0), ino: int = 0) -> bytes:
    nb = name.encode() + b"\0"
    fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(nb), 0]
    hdr = b"070701" + b"".join(f"{f:08x}".encode() for f in fields)
    out = hdr + nb
    out += b"\0" * (-len(out) % 4)
    out += data
    out += b"\0" * (-len(out) % 4)
    return out


def pack_cpio(entries: list[tuple[str, int, bytes, tuple[int, int]]]) -> bytes:
    """A newc archive of (name, mode, data, (rdev major, minor)) entries."""
    body = b"".join(_newc(n, m, d, r, i + 1) for i, (n, m, d, r) in enumerate(entries))
    body += _newc("TRAILER!!!", 0)
    return body + b"\0" * (-len(body) % 512)


def build_initramfs(modules: list[bytes] | None = None) -> Path:
    """Compile guest/linux-init/init.c and pack it with /dev/console; cached by content.

    `modules` are packed as /m/0.ko, /m/1.ko ... (init loads them, in this order, when the
    command line says SECVMA_DMA=1)."""
    src = guest_dir() / "linux-init" / "init.c"
    h = hashlib.sha256(src.read_bytes())
    for m in modules or []:
        h.update(hashlib.sha256(m).digest())
    key = h.hexdigest()[:16]
    out = build_dir() / "initramfs"
    cpio = out / f"initramfs-{key}.cpio"
    if cpio.exists():
        return cpio
    out.mkdir(parents=True, exist_ok=True)
    init = out / f"init-{key}"
    proc = subprocess.run([tool("gcc"), "-O2", "-static", "-nostdlib", "-ffreestanding",
                           "-fno-stack-protector", "-o", str(init), str(src)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise ToolchainError(f"building /init failed: {proc.stderr.strip()}")
    entries = [
        ("dev", stat.S_IFDIR | 0o755, b"", (0, 0)),
        ("dev/console", stat.S_IFCHR | 0o600, b"", (5, 1)),
        ("proc", stat.S_IFDIR | 0o755, b"", (0, 0)),
        ("init", stat.S_IFREG | 0o755, init.read_bytes(), (0, 0)),
    ]
    if modules:
        entries.append(("m", stat.S_IFDIR | 0o755, b"", (0, 0)))
        entries += [(f"m/{i}.ko", stat.S_IFREG | 0o644, m, (0, 0)) for i, m in enumerate(modules)]
    cpio.write_bytes(pack_cpio(entries))
    return cpio


VIRTIO_BLK_MODULES = ("drivers/virtio/virtio_pci_legacy_dev.ko",
                      "drivers/virtio/virtio_pci_modern_dev.ko",
                      "drivers/virtio/virtio_pci.ko", "drivers/block/virtio_blk.ko")
"""What the Debian kernel needs to drive a virtio-blk-pci disk, in load order."""


XFS_MODULES = ("crypto/crc32c_generic.ko", "lib/libcrc32c.ko", "fs/xfs/xfs.ko")
"""xfs and what it needs at load time (libcrc32c asks the crypto API for crc32c), in order."""


def debian_virtio_blk_modules() -> list[bytes]:
    """The four modules, read from the pinned Debian kernel package in the fixture cache
    (`secvma fixtures fetch`); cached under the build directory."""
    return debian_modules(VIRTIO_BLK_MODULES)


def debian_modules(paths: tuple[str, ...]) -> list[bytes]:
    """Modules by path under the package's lib/modules/<version>/kernel/, read from the
    pinned Debian kernel package in the fixture cache; cached under the build directory."""
    return [p.read_bytes() for p in debian_module_files(paths)]


def debian_module_files(paths: tuple[str, ...]) -> list[Path]:
    """`debian_modules`, as the cached files."""
    import io
    import tarfile

    from secvma import fixtures

    fx = fixtures.available()
    if fx is None:
        raise ToolchainError("the Debian fixtures are not fetched", hint="run `secvma fixtures fetch`")
    deb = next((fx.root / "debs" / p for p in fx.packages if p.startswith("linux-image")), None)
    if deb is None or not deb.is_file():
        raise ToolchainError("the Debian kernel package is not in the fixture cache",
                             hint="run `secvma fixtures fetch`")
    out = build_dir() / "initramfs" / f"modules-{fx.kernel_version}"
    files = [out / Path(m).name for m in paths]
    if not all(f.is_file() for f in files):
        proc = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True)
        if proc.returncode != 0:
            raise ToolchainError(f"dpkg-deb could not read {deb.name}: {proc.stderr.decode()[:200]}")
        out.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(proc.stdout)) as tar:
            for m, f in zip(paths, files, strict=True):
                member = tar.extractfile(f"./lib/modules/{fx.kernel_version}/kernel/{m}")
                if member is None:
                    raise ToolchainError(f"{m} missing from {deb.name}")
                f.write_bytes(member.read())
    return files
