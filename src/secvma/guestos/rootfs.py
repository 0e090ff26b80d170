"""A Debian arm64 userspace for the Debian guest, assembled from Debian's own arm64 packages.

What it holds: a minimal base, rt-tests (`hackbench`), apache2 (binary + our config) serving a
static tree at /gcc/ (the artifact served the GCC manual, which Debian ships only in non-free),
memcached, iperf3, sockperf (request/response), gcc + make for the kernbench build, and the
serial-console agent (`secvma-agent`, guestos/agent.py's other half). netperf is in Debian's
non-free component, which the host's sources do not list, so it is not installed (iperf3 and
sockperf stand in, as in the harness).

How: apt with a private arm64 state (fixtures' `_PrivateApt`, its own directory) resolves and
downloads the package closure; each .deb's data tarball is unpacked in Python with the /usr
merge applied (bin, sbin, lib -> usr/...), no maintainer script runs; `mke2fs -d` makes an
ext4 image. The boot needs modules the Debian kernel builds as =m (virtio_pci, virtio_blk,
virtio_net, ext4 and their dependencies, read from each module's `depends=`): a small
initramfs (busybox-static + those modules + /init) loads them, mounts /dev/vda and
switch_roots. Everything is cached under the secvma cache keyed by the package list, the
files written here and the kernel release, so a changed list rebuilds and nothing else does.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import stat
import subprocess
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from secvma import fixtures as fx
from secvma.bench.harness import kernbench_tree
from secvma.machine.initramfs import pack_cpio

FORMAT = 1
PACKAGES: tuple[str, ...] = (
    # base
    "base-files", "base-passwd", "bash", "coreutils", "dash", "debianutils", "diffutils", "findutils",
    "grep", "gzip", "hostname", "libc-bin", "login", "mawk", "ncurses-base", "sed", "tar",
    "util-linux", "mount", "procps", "kmod", "iproute2", "netbase",
    # the benchmarks' servers and workloads
    "rt-tests", "apache2-bin", "media-types", "memcached", "iperf3", "sockperf", "gcc", "make", "libc6-dev",
    # the initramfs
    "busybox-static",
)
BOOT_MODULES = ("virtio_pci", "virtio_blk", "virtio_net", "crc32c_generic", "ext4")
IMAGE_MB = 1536
KERNBENCH_FILES = 16  # the generated C tree in /opt/kernbench (scaled for TCG)
KERNBENCH_QUICK_FILES = 4  # /opt/kernbench-quick, for --quick
AGENT_PATH = "/usr/sbin/secvma-agent"
GUEST_PORTS = {"apache_port": 80, "memcached_port": 11211, "iperf3_port": 5201, "sockperf_port": 11111}

Progress = Callable[[str], None]


class RootfsError(RuntimeError):
    """The root filesystem cannot be built (archive unreachable, tool missing); says why."""


@dataclass(frozen=True)
class Rootfs:
    image: Path  # ext4, the virtio disk (use it with snapshot=on: benchmarks never change it)
    initramfs: Path
    key: str
    packages: list[str]  # name=version of every .deb unpacked
    kernel_release: str


def rootfs_root() -> Path:
    return fx.cache_root() / "rootfs"


# --------------------------------------------------------------------------- guest files

INIT = r"""#!/bin/busybox sh
# secvma initramfs: load the virtio/ext4 modules, mount the Debian root on /dev/vda, switch to it.
/bin/busybox mkdir -p /proc /sys /dev /newroot
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
/bin/busybox mount -t devtmpfs dev /dev
for m in $(/bin/busybox cat /modules/order); do
  /bin/busybox insmod /modules/$m.ko || echo "SECVMA-INITRD: insmod $m failed"
done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 200 ]; do /bin/busybox usleep 50000; i=$((i+1)); done
if ! /bin/busybox mount -t ext4 -o ro /dev/vda /newroot; then
  echo "SECVMA-INITRD: cannot mount /dev/vda"; /bin/busybox poweroff -f
fi
/bin/busybox mount --move /dev /newroot/dev
/bin/busybox umount /proc /sys
exec /bin/busybox switch_root /newroot /usr/sbin/secvma-agent
"""

# The agent runs as PID 1 on the serial console. One request per line:
#   RUN <id> <base64 script> <base64 stdin or ->
# answered by "SECVMA-BEGIN <id>", base64(stdout), base64(stderr), "SECVMA-END <id> <rc>".
AGENT = r"""#!/bin/bash
# secvma guest agent: PID 1 of the benchmark guest; runs the host's requests from the console.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t tmpfs -o mode=1777 tmp /tmp
mount -t tmpfs run /run; mkdir -p /run/lock /dev/pts /dev/shm; mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=1777 shm /dev/shm
mount -o remount,rw / 2>/dev/null
dmesg -n 1
hostname secvma-guest
ip link set lo up
dev=$(ls /sys/class/net | grep -v '^lo$' | head -n 1)
ip link set "$dev" up && ip addr add 10.0.2.15/24 dev "$dev" && ip route add default via 10.0.2.2
mkdir -p /var/run/apache2 /var/lock/apache2 /var/log/apache2
exec </dev/console >/dev/console 2>&1
stty raw -echo 2>/dev/null
echo "SECVMA-AGENT-READY $(uname -r) $(nproc) net=$dev"
while IFS= read -r line; do
  set -- $line
  [ "$1" = RUN ] || continue
  id=$2
  printf '%s' "$3" | base64 -d > /tmp/.cmd.sh 2>/dev/null
  if [ "$4" = - ]; then : > /tmp/.cmd.in; else printf '%s' "$4" | base64 -d > /tmp/.cmd.in; fi
  setsid bash /tmp/.cmd.sh < /tmp/.cmd.in > /tmp/.cmd.out 2> /tmp/.cmd.err
  rc=$?
  echo "SECVMA-BEGIN $id"
  base64 -w0 /tmp/.cmd.out; echo
  base64 -w0 /tmp/.cmd.err; echo
  echo "SECVMA-END $id $rc"
done
echo "SECVMA-AGENT: console closed, powering off"
poweroff -f
"""

APACHE_CONF = """# secvma: apache2 for the benchmark guest (mpm_event, static files only)
LoadModule mpm_event_module /usr/lib/apache2/modules/mod_mpm_event.so
LoadModule authz_core_module /usr/lib/apache2/modules/mod_authz_core.so
LoadModule mime_module /usr/lib/apache2/modules/mod_mime.so
LoadModule dir_module /usr/lib/apache2/modules/mod_dir.so
ServerRoot /etc/apache2
ServerName secvma-guest
Listen 80
PidFile /tmp/apache2.pid
Mutex posixsem
ErrorLog /var/log/apache2/error.log
User www-data
Group www-data
TypesConfig /etc/mime.types
DocumentRoot /var/www/html
DirectoryIndex index.html
ServerLimit 2
ThreadsPerChild 25
MaxRequestWorkers 50
KeepAlive Off
"""


def gcc_like_tree() -> dict[str, bytes]:
    """A static HTML tree shaped like a GCC manual (an index of sections and the section pages)."""
    sections = [f"{c}.{n}" for c in range(1, 11) for n in range(1, 13)]
    links = "\n".join(f'<li><a href="s{s}.html">{s} Option summary and usage, part {s}</a></li>'
                      for s in sections)
    files = {"index.html": (f"<html><head><title>Using the GNU Compiler Collection</title></head>"
                            f"<body><h1>Using the GNU Compiler Collection (GCC)</h1><ul>\n{links}\n"
                            f"</ul></body></html>\n").encode()}
    para = "<p>" + "This section describes the options that control the compiler. " * 40 + "</p>\n"
    for s in sections:
        files[f"s{s}.html"] = f"<html><body><h2>{s}</h2>{para * 3}</body></html>\n".encode()
    return files


# --------------------------------------------------------------------------- build


def _key(release: str) -> str:
    h = hashlib.sha256()
    # This file (package list, guest files, configuration steps) and the generated trees.
    for part in (Path(__file__).read_bytes(), release.encode(), kernbench_tree(KERNBENCH_FILES),
                 kernbench_tree(KERNBENCH_QUICK_FILES)):
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()[:16]


def cached(base: Path | None = None) -> Rootfs | None:
    """The built root filesystem for the fetched kernel, or None."""
    fs = fx.available()
    if fs is None:
        return None
    out = (base or rootfs_root()) / _key(fs.kernel_version)
    try:
        meta = json.loads((out / "rootfs.json").read_text())
    except (OSError, ValueError):
        return None
    r = Rootfs(out / "rootfs.ext4", out / "initramfs.cpio", meta["key"], meta["packages"], meta["release"])
    return r if r.image.is_file() and r.initramfs.is_file() else None


def build(progress: Progress = lambda _m: None, base: Path | None = None) -> Rootfs:
    """Build (or return the cached) root filesystem and initramfs. Raises RootfsError.

    `base` (default: the secvma cache's rootfs/) holds the builds; the downloaded .debs stay in
    the cache's private apt either way.
    """
    base = base or rootfs_root()
    try:
        fs = fx.fetch()
    except fx.FixturesUnavailable as exc:
        raise RootfsError(f"Debian fixtures unavailable: {exc}") from exc
    have = cached(base)
    if have is not None:
        return have
    for exe in ("mke2fs", "dpkg-deb", "apt-get"):
        if shutil.which(exe) is None:
            raise RootfsError(f"{exe} is not installed (Debian: e2fsprogs, dpkg, apt)")
    key = _key(fs.kernel_version)
    out = base / key
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    progress("resolving the package closure (private arm64 apt)")
    debs = _download(progress)
    stage = out / "stage"
    stage.mkdir()
    for name in ("bin", "sbin", "lib"):
        (stage / "usr" / name).mkdir(parents=True, exist_ok=True)
        os.symlink(f"usr/{name}", stage / name)
    for i, (_pkg, deb) in enumerate(debs):
        progress(f"unpacking {i + 1}/{len(debs)}: {deb.name}")
        _unpack(deb, stage)
    progress("configuring")
    _configure(stage)
    progress("making the ext4 image (mke2fs -d)")
    image = out / "rootfs.ext4"
    proc = subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-L", "secvma-root", "-d", str(stage),
                           str(image), f"{IMAGE_MB}M"], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RootfsError(f"mke2fs failed: {proc.stderr.strip()[-300:]}")
    progress("making the initramfs (busybox-static + boot modules)")
    initramfs = out / "initramfs.cpio"
    initramfs.write_bytes(_initramfs(stage, fs))
    shutil.rmtree(stage)
    pkgs = [p for p, _ in debs]
    for old in base.iterdir():  # earlier package lists' builds
        if old.is_dir() and old.name not in ("apt", key):
            shutil.rmtree(old, ignore_errors=True)
    (out / "rootfs.json").write_text(json.dumps({"key": key, "packages": pkgs, "release": fs.kernel_version,
                                                 "format": FORMAT}, indent=1) + "\n")
    return Rootfs(image, initramfs, key, pkgs, fs.kernel_version)


def _download(progress: Progress) -> list[tuple[str, Path]]:
    base = rootfs_root() / "apt"
    try:
        apt = fx._PrivateApt(base)
        apt.update()
        sim = apt.run("apt-get", "-s", "-q", "install", "--no-install-recommends",
                      "-o", "Debug::NoLocking=1", *PACKAGES)
        want = re.findall(r"^Inst (\S+) \((\S+) ", sim, re.M)
        progress(f"downloading {len(want)} packages")
        apt.run("apt-get", "-q", "-y", "install", "-d", "--no-install-recommends",
                "-o", "Debug::NoLocking=1", *PACKAGES)
    except fx.FixturesUnavailable as exc:
        raise RootfsError(str(exc)) from exc
    archives = base / "archives"
    out = []
    for name, ver in want:
        quoted = ver.replace(":", "%3a")
        found = sorted(archives.glob(f"{name}_{quoted}_*.deb"))
        if not found:
            raise RootfsError(f"apt did not download {name} {ver}")
        out.append((f"{name}={ver}", found[0]))
    return out


def _merged(name: str) -> str | None:
    """A tar member path with the /usr merge applied; None for a path that escapes the root."""
    p = PurePosixPath(name.removeprefix("./"))
    if p.is_absolute() or ".." in p.parts:
        return None
    parts = list(p.parts)
    if parts and parts[0] in ("bin", "sbin", "lib"):
        parts = ["usr", *parts]
    return "/".join(parts)


def _unpack(deb: Path, root: Path) -> None:
    """Unpack a .deb's data tarball under `root` with the /usr merge; owners and modes kept."""
    with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for m in tar:
                name = _merged(m.name)
                if not name:
                    continue
                if m.islnk():
                    target = _merged(m.linkname)
                    if target is None:
                        continue
                    m.linkname = target
                m.name = name
                dest = root / name
                if m.isdir():
                    if dest.is_symlink() or dest.is_dir():
                        continue  # keep the merged-/usr symlinks and existing directories
                elif dest.is_symlink() or dest.exists():
                    dest.unlink()
                tar.extract(m, root, set_attrs=True, numeric_owner=True, filter="fully_trusted")
        proc.wait()
        if proc.returncode != 0:
            raise RootfsError(f"dpkg-deb --fsys-tarfile {deb.name} failed")


def _write(root: Path, rel: str, data: str | bytes, mode: int = 0o644) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data.encode() if isinstance(data, str) else data)
    os.chmod(p, mode)


def _configure(root: Path) -> None:
    """What the maintainer scripts would have done, as far as the benchmarks need it."""
    master = root / "usr/share/base-passwd"
    _write(root, "etc/passwd", (master / "passwd.master").read_text())
    _write(root, "etc/group", (master / "group.master").read_text())
    _write(root, "etc/shadow", "".join(f"{ln.split(':')[0]}:*:19000:0:99999:7:::\n"
                                       for ln in (master / "passwd.master").read_text().splitlines()), 0o640)
    _write(root, "etc/hostname", "secvma-guest\n")
    _write(root, "etc/hosts", "127.0.0.1 localhost\n127.0.1.1 secvma-guest\n")
    _write(root, "etc/fstab", "")
    _write(root, "etc/apache2/secvma.conf", APACHE_CONF)
    for name, data in gcc_like_tree().items():
        _write(root, f"var/www/html/gcc/{name}", data)
    for sub, n in (("kernbench", KERNBENCH_FILES), ("kernbench-quick", KERNBENCH_QUICK_FILES)):
        with tarfile.open(fileobj=io.BytesIO(kernbench_tree(n))) as tar:
            tar.extractall(root / "opt" / sub, filter="data")
    _write(root, AGENT_PATH.lstrip("/"), AGENT, 0o755)
    for d in ("proc", "sys", "dev", "run", "tmp", "root", "var/tmp", "var/log/apache2", "var/lib/memcached"):
        (root / d).mkdir(parents=True, exist_ok=True)
    os.chmod(root / "tmp", 0o1777 | stat.S_IFDIR)
    # update-alternatives and dash's postinst would make these links.
    for link, target in (("usr/bin/cc", "gcc"), ("usr/bin/awk", "mawk"), ("usr/bin/sh", "dash"),
                         ("usr/bin/c99", "gcc")):
        if not (root / link).exists() and not (root / link).is_symlink():
            os.symlink(target, root / link)
    # ld.so cache: the dynamic loader finds libraries in the default paths without it.


def _module_deps(data: bytes) -> list[str]:
    m = re.search(rb"(?:^|\0)depends=([^\0]*)\0", data)
    return [d for d in m.group(1).decode().split(",") if d] if m else []


def _initramfs(stage: Path, fs: fx.FixtureSet) -> bytes:
    """busybox-static, the boot modules in dependency order, /init."""
    debs = sorted((fx.cache_root() / "debs").glob("linux-image-*.deb"))
    debs = [d for d in debs if fs.package_version.split(":")[-1] in d.name and fs.kernel_version in d.name]
    if not debs:
        raise RootfsError("the Debian kernel package is not in the fixtures cache (secvma fixtures fetch)")
    prefix = f"lib/modules/{fs.kernel_version}/"
    found: dict[str, bytes] = {}
    with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(debs[0])], stdout=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for m in tar:
                name = m.name.removeprefix("./")
                if name.startswith(prefix) and name.endswith(".ko") and m.isfile():
                    fh = tar.extractfile(m)
                    if fh is not None:
                        found[PurePosixPath(name).stem.replace("-", "_")] = fh.read()
    order: list[str] = []

    def visit(mod: str, path: tuple[str, ...]) -> None:
        if mod in order:
            return
        if mod not in found:
            raise RootfsError(f"module {mod} (needed by {' <- '.join(path) or 'the boot'}) is not in the "
                              "kernel package")
        for dep in _module_deps(found[mod]):
            visit(dep, (mod, *path))
        order.append(mod)

    for mod in BOOT_MODULES:
        visit(mod, ())
    busybox = (stage / "usr/bin/busybox").read_bytes()
    entries: list[tuple[str, int, bytes, tuple[int, int]]] = [
        ("dev", stat.S_IFDIR | 0o755, b"", (0, 0)),
        ("dev/console", stat.S_IFCHR | 0o600, b"", (5, 1)),
        ("bin", stat.S_IFDIR | 0o755, b"", (0, 0)),
        ("bin/busybox", stat.S_IFREG | 0o755, busybox, (0, 0)),
        ("modules", stat.S_IFDIR | 0o755, b"", (0, 0)),
        ("modules/order", stat.S_IFREG | 0o644, ("\n".join(order) + "\n").encode(), (0, 0)),
        *((f"modules/{m}.ko", stat.S_IFREG | 0o644, found[m], (0, 0)) for m in order),
        ("init", stat.S_IFREG | 0o755, INIT.encode(), (0, 0)),
    ]
    return pack_cpio(entries)


def initramfs_modules(path: Path) -> dict[str, bytes]:
    """The boot modules packed in an initramfs built by `build` (modules/<name>.ko), in load
    order: what a protected guest loads after the policy arms, for module authentication.
    Raises RootfsError on a malformed archive."""
    data = path.read_bytes()
    out: dict[str, bytes] = {}
    pos = 0
    while pos + 110 <= len(data):
        head = data[pos:pos + 110]
        if head[:6] != b"070701":
            raise RootfsError(f"{path}: not a newc archive at offset {pos}")
        try:
            fsize, nsize = int(head[54:62], 16), int(head[94:102], 16)
        except ValueError as exc:
            raise RootfsError(f"{path}: bad newc header at offset {pos}") from exc
        name_end = pos + 110 + nsize
        name = data[pos + 110:name_end - 1].decode(errors="replace")
        start = name_end + (-name_end % 4)
        end = start + fsize
        if end > len(data):
            raise RootfsError(f"{path}: {name} runs past the end of the archive")
        if name == "TRAILER!!!":
            return out
        if name.startswith("modules/") and name.endswith(".ko"):
            out[name[len("modules/"):-len(".ko")]] = data[start:end]
        pos = end + (-end % 4)
    raise RootfsError(f"{path}: no newc trailer")
