"""The QEMU process: command line, shared RAM file, console log, HMP monitor, clean shutdown.

Nothing here knows about traps or policy; `secvma.machine.mailbox` drives a running `QemuProcess`.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from secvma.machine import layout
from secvma.machine.build import build_dir, build_trampoline
from secvma.machine.dtb import make_dtb
from secvma.machine.errors import ImageError, ToolchainError

LINUX_MAGIC_OFFSET = 0x38
LINUX_MAGIC = b"ARM\x64"
CPUS = ("cortex-a57", "cortex-a76", "max")
"""QEMU CPU models the board is tested with (`--cpu`): cortex-a57 is ARMv8.0 (the default);
cortex-a76 (v8.2) and max (QEMU 7.2: v8.5+ with FEAT_XNX, PAuth, SVE, ...) bring features
whose presence the hypervisor reads from the ID registers, never from this name."""
DEFAULT_CPU = "cortex-a57"


@dataclass
class Blob:
    """Extra bytes placed in guest RAM before the first instruction runs."""

    addr: int
    data: bytes


@dataclass
class MachineConfig:
    """How to start the board. `kernel` is a Linux arm64 Image or a flat payload binary."""

    kernel: Path
    kernel_addr: int = layout.KERNEL_BASE
    initrd: Path | None = None
    append: str = "console=ttyAMA0 panic=-1"
    ncpus: int = 1
    ram_mb: int = 1024
    cpu: str = DEFAULT_CPU
    timeout_s: float = 120.0
    echo_console: bool = False
    log_path: Path | None = None
    blobs: list[Blob] = field(default_factory=list)
    plain: bool = False
    """No hypervisor at all: the kernel is booted by QEMU directly at EL1 (for comparisons)."""
    dtb_seed: bytes | None = None
    smmu: bool = False
    """Board with `iommu=smmuv3`, owned by the hypervisor through `mmio_*` (qtest socket); the
    kernel's DTB never shows it."""
    dma_disk_mb: int = 0
    """> 0: a virtio-blk-pci disk of this size (a fresh zeroed file), modern only and behind the
    SMMU (iommu_platform=on): the DMA-capable device of the testbed's `dma` workload."""
    extra_args: list[str] = field(default_factory=list)
    """More QEMU arguments (devices, drives, netdevs), appended in both modes."""
    trampoline_variant: str | None = None
    """A measurement build of the trampoline (`build.TRAMPOLINE_VARIANTS`); None: the machine's."""
    console_socket: Path | None = None
    """Also put the serial console on this Unix socket (QEMU listens) so the host can type into
    it; the log file is written either way."""

    def validate(self) -> None:
        """Check what can be checked before QEMU starts; raise ImageError/ValueError."""
        if not 1 <= self.ncpus <= layout.MAX_CPUS:
            raise ValueError(f"ncpus must be 1..{layout.MAX_CPUS}, got {self.ncpus}")
        ram = self.ram_mb << 20
        if not (layout.HYP_SIZE + (64 << 20) <= ram <= layout.MAX_RAM):
            raise ValueError(f"ram_mb must be {(layout.HYP_SIZE >> 20) + 64}..{layout.MAX_RAM >> 20}")
        if not self.kernel.is_file():
            raise ImageError(f"kernel image {self.kernel} does not exist",
                             hint="give an existing file, or run `secvma fixtures fetch` for the "
                             "Debian kernel")
        size = self.kernel.stat().st_size
        if size == 0:
            raise ImageError(f"kernel image {self.kernel} is empty")
        if self.kernel_addr % 4 or not (
            self.kernel_addr >= layout.KERNEL_BASE
            and self.kernel_addr + size <= layout.RAM_BASE + ram
        ):
            raise ImageError(f"kernel image {self.kernel} ({size} bytes) does not fit at "
                             f"{self.kernel_addr:#x} in {self.ram_mb} MiB of RAM")
        if not 0 <= self.dma_disk_mb <= 256:
            raise ValueError(f"dma_disk_mb must be 0..256, got {self.dma_disk_mb}")
        if self.initrd is not None and not self.initrd.is_file():
            raise ImageError(f"initrd {self.initrd} does not exist")
        for b in self.blobs:
            if not (b.addr >= layout.KERNEL_BASE and b.addr + len(b.data) <= layout.RAM_BASE + ram):
                raise ValueError(f"blob at {b.addr:#x} (+{len(b.data)}) lies outside kernel RAM")


def linux_image_header_ok(path: Path) -> bool:
    """True when `path` starts with a valid arm64 Linux Image header (magic at 0x38)."""
    with path.open("rb") as f:
        head = f.read(64)
    return len(head) == 64 and head[LINUX_MAGIC_OFFSET:LINUX_MAGIC_OFFSET + 4] == LINUX_MAGIC


def _set_pdeathsig() -> None:
    """Child side: die with the parent, so no QEMU outlives a crashed Python."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class QemuProcess:
    """One qemu-system-aarch64 run with guest RAM shared as a file mapped into this process."""

    def __init__(self, config: MachineConfig):
        config.validate()
        self.config = config
        self.ram_size = config.ram_mb << 20
        self.workdir = Path(tempfile.mkdtemp(prefix="secvma-"))
        self.ram_path = Path("/dev/shm") / f"secvma-{os.getpid()}-{secrets.token_hex(4)}"
        self.log_path = config.log_path or (self.workdir / "console.log")
        self.stderr_path = self.workdir / "qemu.stderr"
        self.monitor_path = self.workdir / "monitor.sock"
        self.qtest_path = self.workdir / "qtest.sock"
        self.disk_path = self.workdir / "dma-disk.img"
        self.proc: subprocess.Popen[bytes] | None = None
        self.mm: mmap.mmap | None = None
        self.t_start = 0.0
        self._fd = -1

    # ---- start -------------------------------------------------------------------------
    def command(self) -> list[str]:
        c = self.config
        qemu = shutil.which("qemu-system-aarch64")
        if qemu is None:
            raise ToolchainError("qemu-system-aarch64 not found",
                                 hint="run `bash scripts/setup.sh` (installs qemu-system-arm)")
        mib = c.ram_mb
        serial = ["-serial", f"file:{self.log_path}"]
        if c.console_socket is not None:
            serial = ["-chardev", f"socket,id=con0,path={c.console_socket},server=on,wait=off,"
                      f"logfile={self.log_path}", "-serial", "chardev:con0"]
        cmd = [qemu, "-nodefaults", "-display", "none", "-no-reboot",
               "-cpu", c.cpu, "-smp", str(c.ncpus), "-m", f"{mib}M", *serial,
               "-monitor", f"unix:{self.monitor_path},server,nowait"]
        if c.plain:
            cmd += ["-machine", f"virt,highmem=off,{layout.GIC_BOARD}",
                    "-kernel", str(c.kernel), "-append", c.append]
            if c.initrd:
                cmd += ["-initrd", str(c.initrd)]
            return cmd + c.extra_args
        tramp = build_trampoline(c.trampoline_variant)
        dtb = make_dtb(build_dir() / "dtb", c.ncpus, self.ram_size, c.cpu, self.workdir / "board.dtb",
                       c.dtb_seed)
        board = f"virt,virtualization=on,highmem=off,{layout.GIC_BOARD},memory-backend=ram"
        cmd += ["-machine", board + (",iommu=smmuv3" if c.smmu else ""),
                "-object", f"memory-backend-file,id=ram,size={mib}M,mem-path={self.ram_path},share=on",
                "-kernel", str(tramp.path), "-dtb", str(dtb), "-append", c.append,
                "-device", f"loader,file={c.kernel},addr={c.kernel_addr:#x},force-raw=on"]
        if c.initrd:
            cmd += ["-initrd", str(c.initrd)]
        cmd += self._device_args()
        for i, b in enumerate(c.blobs):
            p = self.workdir / f"blob{i}.bin"
            p.write_bytes(b.data)
            cmd += ["-device", f"loader,file={p},addr={b.addr:#x},force-raw=on"]
        return cmd + c.extra_args

    def _device_args(self) -> list[str]:
        """SMMU access for the hypervisor (qtest socket: MMIO from Python, TCG still runs the
        guest) and the DMA disk. The DTB keeps QEMU's board without `iommu`, so the kernel
        never learns of the SMMU."""
        c = self.config
        out: list[str] = []
        if c.smmu:
            out += ["-accel", "tcg", "-qtest", f"unix:{self.qtest_path},server=on,wait=off",
                    "-qtest-log", "/dev/null"]
        if c.dma_disk_mb:
            with self.disk_path.open("wb") as f:
                f.truncate(c.dma_disk_mb << 20)
            out += ["-drive", f"if=none,id=dmadisk,format=raw,file={self.disk_path}",
                    "-device", "virtio-blk-pci,drive=dmadisk,iommu_platform=on,"
                    "disable-legacy=on"]
        return out

    def start(self) -> None:
        """Create the RAM file, map it, start QEMU (running)."""
        cmd = self.command()
        if not self.config.plain:
            self._fd = os.open(self.ram_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            os.ftruncate(self._fd, self.ram_size)
            self.mm = mmap.mmap(self._fd, self.ram_size, mmap.MAP_SHARED,
                                mmap.PROT_READ | mmap.PROT_WRITE)
        self.log_path.write_bytes(b"")
        self.t_start = time.perf_counter()
        with self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                                         preexec_fn=_set_pdeathsig)

    # ---- while running -----------------------------------------------------------------
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stderr_tail(self, n: int = 800) -> str:
        try:
            return self.stderr_path.read_bytes()[-n:].decode(errors="replace").strip()
        except OSError:
            return ""

    def hmp(self, command: str, timeout: float = 2.0) -> str:
        """Run one HMP monitor command and return its output ('' when the monitor is gone)."""
        if not self.alive():
            return ""
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(timeout)
                s.connect(str(self.monitor_path))
                buf = b""
                while b"(qemu)" not in buf:
                    buf += s.recv(4096)
                s.sendall(command.encode() + b"\n")
                buf = b""
                deadline = time.monotonic() + timeout
                while buf.count(b"(qemu)") < 1 and time.monotonic() < deadline:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    buf += chunk
                return buf.decode(errors="replace")
        except OSError:
            return ""

    def last_pcs(self) -> list[int]:
        """The program counter of every vCPU, read from the monitor (empty if unavailable)."""
        out = self.hmp("info registers -a")
        return [int(m, 16) for m in re.findall(r"PC=([0-9a-fA-F]{16})", out)]

    # ---- stop --------------------------------------------------------------------------
    def stop(self) -> int | None:
        """Stop QEMU if it still runs; unmap and delete the RAM file. Safe to call twice."""
        rc = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=3)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            rc = self.proc.returncode
        if self.mm is not None:
            with contextlib.suppress(BufferError):
                self.mm.close()
            self.mm = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        with contextlib.suppress(FileNotFoundError):
            self.ram_path.unlink()
        return rc

    def cleanup(self) -> None:
        """Remove the work directory (keeps a user-chosen console log)."""
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)
