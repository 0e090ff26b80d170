"""Boot the board with a hypervisor (or none) and run it to the end: the machine's front door."""

from __future__ import annotations

import time
from collections.abc import Callable

from secvma.machine.console import Console
from secvma.machine.errors import GuestTimeout, QemuDied
from secvma.machine.mailbox import DEFAULT_SPIN_US, MailboxServer, RunResult
from secvma.machine.qemu import MachineConfig, QemuProcess
from secvma.platform import Hypervisor


def boot(config: MachineConfig, hypervisor: Hypervisor | None, *,
         until: Callable[[Console], bool] | None = None,
         poll_hook: Callable[[MailboxServer], None] | None = None,
         watch: tuple[bytes, ...] = (),
         spin_us: float | None = DEFAULT_SPIN_US,
         on_started: Callable[[MailboxServer], None] | None = None) -> RunResult:
    """Start QEMU, serve the hypervisor until the guest powers off (or `until`), clean up.

    `hypervisor=None` requires `config.plain` (no EL2 at all). No QEMU process, RAM file or
    temporary directory survives this call, whatever happens. `spin_us` is the mailbox loop's
    spin window before it sleeps (None: busy-poll all the time, for latency measurements).
    """
    if hypervisor is None and not config.plain:
        raise ValueError("a hypervisor is required unless config.plain is set")
    qemu = QemuProcess(config)
    server: MailboxServer | None = None
    console: Console | None = None
    try:
        qemu.start()
        console = Console(qemu.log_path, echo=config.echo_console, t0=qemu.t_start)
        console.watch(*watch)
        if config.plain:
            return _run_plain(qemu, console, config.timeout_s, until)
        assert hypervisor is not None
        server = MailboxServer(qemu, hypervisor, spin_us=spin_us)
        if on_started is not None:
            on_started(server)
        return server.serve(console, config.timeout_s, until=until, poll_hook=poll_hook)
    finally:
        if console is not None:
            console.close()
        if server is not None:
            server.release()
        qemu.cleanup()


def _run_plain(qemu: QemuProcess, console: Console, timeout_s: float,
               until: Callable[[Console], bool] | None) -> RunResult:
    deadline = qemu.t_start + timeout_s
    exit_kind, reason = "poweroff", ""
    while qemu.alive():
        time.sleep(0.002)
        console.poll()
        if until is not None and until(console):
            exit_kind, reason = "until", "stop condition met"
            break
        if time.perf_counter() > deadline:
            pcs = qemu.last_pcs()
            raise GuestTimeout(f"guest still running after {timeout_s:.0f} s; console tail:\n"
                               f"{console.tail()}", last_pc=pcs[0] if pcs else None)
    wall = time.perf_counter() - qemu.t_start
    rc = qemu.stop()
    console.poll()
    if exit_kind == "poweroff" and rc != 0:
        raise QemuDied(f"QEMU exited with status {rc}: {qemu.stderr_tail()}")
    return RunResult(exit_kind, reason, wall, console.text, rc,
                     first_seen={k.decode(errors="replace"): v for k, v in console.first_seen.items()})
