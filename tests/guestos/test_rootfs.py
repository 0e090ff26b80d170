"""The Debian guest userspace: assembled from Debian's arm64 packages, ext4 + module initramfs."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from secvma import fixtures as fx
from secvma.guestos import rootfs


def test_usr_merge_and_escapes() -> None:
    assert rootfs._merged("./bin/bash") == "usr/bin/bash"
    assert rootfs._merged("./lib/ld-linux-aarch64.so.1") == "usr/lib/ld-linux-aarch64.so.1"
    assert rootfs._merged("./usr/sbin/apache2") == "usr/sbin/apache2"
    assert rootfs._merged("./etc/../../x") is None
    assert rootfs._merged("/etc/passwd") is None


def test_module_depends_field() -> None:
    info = b"\0license=GPL\0depends=virtio_pci_legacy_dev,virtio_pci_modern_dev\0name=virtio_pci\0"
    assert rootfs._module_deps(b"xx" + info) == ["virtio_pci_legacy_dev", "virtio_pci_modern_dev"]
    assert rootfs._module_deps(b"\0depends=\0") == []


def _cpio_names(data: bytes) -> dict[str, bytes]:
    out, off = {}, 0
    while True:
        hdr = data[off:off + 110]
        size, nlen = int(hdr[54:62], 16), int(hdr[94:102], 16)
        name = data[off + 110:off + 110 + nlen - 1].decode()
        off += 110 + nlen
        off += -off % 4
        out[name] = data[off:off + size]
        off += size + (-size % 4)
        if name == "TRAILER!!!":
            return out


@pytest.mark.debian
@pytest.mark.slow
@pytest.mark.skipif(shutil.which("mke2fs") is None or shutil.which("debugfs") is None,
                    reason="needs e2fsprogs")
def test_rootfs_builds_from_a_clean_cache(debian: fx.FixtureSet, tmp_path: Path) -> None:
    try:
        r = rootfs.build(base=tmp_path)
    except rootfs.RootfsError as exc:
        if "unavailable" in str(exc) or "update" in str(exc):
            pytest.skip(f"Debian archive unreachable: {exc}")
        raise
    assert r.kernel_release == debian.kernel_version
    names = {p.split("=")[0] for p in r.packages}
    assert {"apache2-bin", "memcached", "rt-tests", "iperf3", "sockperf", "gcc-12", "busybox-static"} <= names
    for path in ("/usr/bin/hackbench", "/usr/sbin/apache2", "/usr/bin/memcached", "/usr/bin/sockperf",
                 "/usr/bin/cc", "/usr/sbin/secvma-agent", "/var/www/html/gcc/index.html",
                 "/opt/kernbench/Makefile", "/opt/kernbench-quick/Makefile", "/etc/passwd"):
        out = subprocess.run(["debugfs", "-R", f"stat {path}", str(r.image)], capture_output=True,
                             text=True, check=False)
        assert "Inode:" in out.stdout, (path, out.stderr)
    cpio = _cpio_names(r.initramfs.read_bytes())
    order = cpio["modules/order"].decode().split()
    assert order.index("virtio_pci_modern_dev") < order.index("virtio_pci")
    assert order.index("jbd2") < order.index("ext4") and order[-1] == "ext4"
    assert all(f"modules/{m}.ko" in cpio for m in order)
    assert cpio["init"].startswith(b"#!/bin/busybox sh")
    assert rootfs.cached(tmp_path) == r  # the second call is the cache


def test_initramfs_modules_read_back_in_order(tmp_path: Path) -> None:
    """What the initramfs loads after a policy arms can be handed to module authentication."""
    import stat

    from secvma.machine.initramfs import pack_cpio

    entries = [("bin", stat.S_IFDIR | 0o755, b"", (0, 0)),
               ("modules/virtio_pci.ko", stat.S_IFREG | 0o644, b"\x7fELFaaa", (0, 0)),
               ("modules/order", stat.S_IFREG | 0o644, b"virtio_pci\next4\n", (0, 0)),
               ("modules/ext4.ko", stat.S_IFREG | 0o644, b"\x7fELF" + bytes(range(256)) * 3, (0, 0))]
    p = tmp_path / "i.cpio"
    p.write_bytes(pack_cpio(entries))
    got = rootfs.initramfs_modules(p)
    assert list(got) == ["virtio_pci", "ext4"]
    assert got["ext4"] == b"\x7fELF" + bytes(range(256)) * 3 and got["virtio_pci"] == b"\x7fELFaaa"
    p.write_bytes(pack_cpio(entries)[:300])
    with pytest.raises(rootfs.RootfsError):
        rootfs.initramfs_modules(p)
