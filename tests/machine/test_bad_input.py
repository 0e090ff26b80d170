"""Bad input ends with a clear error naming the cause (and the last PC); nothing is left behind."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from secvma.machine import layout
from secvma.machine.build import assemble_payload
from secvma.machine.errors import GuestTimeout, ImageError, ProtocolError, QemuDied
from secvma.machine.mailbox import MailboxServer
from secvma.machine.null import NullHypervisor
from secvma.machine.qemu import MachineConfig
from secvma.machine.runner import boot

from .payload import run

pytestmark = pytest.mark.qemu


def _our_qemus() -> list[int]:
    """PIDs of qemu-system-aarch64 children of this process still alive."""
    me = str(os.getpid())
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if "qemu-system" in stat and fields[1] == me and fields[0] != "Z":
            out.append(int(pid))
    return out


def _our_ram_files() -> list[str]:
    return [f for f in os.listdir("/dev/shm") if f.startswith(f"secvma-{os.getpid()}-")]


@pytest.fixture(autouse=True)
def nothing_left_behind():
    yield
    assert _our_qemus() == []
    assert _our_ram_files() == []


def test_missing_kernel_image_is_named(tmp_path: Path) -> None:
    """A kernel path that does not exist fails before QEMU starts, naming the file."""
    with pytest.raises(ImageError, match="does not exist"):
        boot(MachineConfig(kernel=tmp_path / "nope.bin"), NullHypervisor())


def test_empty_kernel_image_is_refused(tmp_path: Path) -> None:
    """An empty image is refused up front."""
    p = tmp_path / "empty.bin"
    p.write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        boot(MachineConfig(kernel=p), NullHypervisor())


def test_corrupt_kernel_image_ends_with_the_pc(tmp_path: Path) -> None:
    """Garbage executed at EL1 with no vector ends as a stuck-guest halt that names the PC."""
    p = tmp_path / "garbage.bin"
    p.write_bytes(bytes([0xFF, 0xFF, 0xFF, 0xFF]) * 1024)  # permanently undefined encodings
    res = boot(MachineConfig(kernel=p, timeout_s=20), NullHypervisor())
    assert res.exit == "halt"
    assert "guest stuck" in res.reason and "PC 0x" in res.reason


def test_payload_that_faults_with_no_vector_is_reported() -> None:
    """A stage-2 fault with VBAR_EL1 unset loops on the vector fetch; the machine says so."""
    b = assemble_payload(f"""
        .globl _start
    _start:
        ldr x5, ={layout.MBOX_BASE:#x}
        ldr x6, [x5]
    1:  b 1b
    """, name="novector")
    res = boot(MachineConfig(kernel=b.path, timeout_s=20), NullHypervisor())
    assert res.exit == "halt" and "no usable exception vector" in res.reason


def test_guest_that_never_stops_times_out_with_last_pc() -> None:
    """A guest spinning forever ends with GuestTimeout carrying the vCPU's PC."""
    b = assemble_payload(".globl _start\n_start:\n1: b 1b\n", name="spin")
    with pytest.raises(GuestTimeout) as ei:
        boot(MachineConfig(kernel=b.path, timeout_s=1.5), NullHypervisor())
    assert ei.value.last_pc == layout.KERNEL_BASE
    assert "still running" in str(ei.value)


def test_qemu_dying_is_reported_with_its_status() -> None:
    """QEMU killed under the hypervisor's feet ends with QemuDied, not a hang."""
    b = assemble_payload(".globl _start\n_start:\n1: b 1b\n", name="spin")

    def kill(server: MailboxServer) -> None:
        assert server.qemu.proc is not None
        server.qemu.proc.send_signal(signal.SIGKILL)

    with pytest.raises(QemuDied, match="status -9"):
        boot(MachineConfig(kernel=b.path, timeout_s=20), NullHypervisor(), poll_hook=kill)


def test_garbage_in_the_mailbox_is_a_protocol_error() -> None:
    """A request kind the trampoline never writes is reported as a ProtocolError."""
    b = assemble_payload(".globl _start\n_start:\n1: b 1b\n", name="spin")
    done = []

    def scribble(server: MailboxServer) -> None:
        if done:
            return
        done.append(1)
        base = layout.mailbox_pa(0)
        server.write(base + layout.MB_KIND, (0xDEAD).to_bytes(4, "little"))
        server.write(base + layout.MB_STATE, (1).to_bytes(4, "little"))

    with pytest.raises(ProtocolError, match="unknown request kind 57005"):
        boot(MachineConfig(kernel=b.path, timeout_s=20), NullHypervisor(), poll_hook=scribble)


def test_bad_cpu_count_and_ram_size_are_refused(tmp_path: Path) -> None:
    """Configurations the board cannot have are refused with the allowed range."""
    p = tmp_path / "k.bin"
    p.write_bytes(b"\0" * 16)
    with pytest.raises(ValueError, match="ncpus"):
        boot(MachineConfig(kernel=p, ncpus=9), NullHypervisor())
    with pytest.raises(ValueError, match="ram_mb"):
        boot(MachineConfig(kernel=p, ram_mb=8192), NullHypervisor())


def test_exception_report_payload_round_trip() -> None:
    """The test prologue's vector reports an undefined instruction (EC 0) at VBAR + 0x200."""
    _res, h = run(".inst 0xffffffff\n")
    esr, _far, _elr, vec = h.exceptions[0]
    assert esr >> 26 == 0 and vec == 0x200
