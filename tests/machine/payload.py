"""Bare-metal AArch64 payloads for machine tests: a prologue with an EL1 vector table.

Every payload starts with `_start`, installs `vectors` in VBAR_EL1 and branches to `main`.
Any exception taken to EL1 reports itself with `hvc #0xEE` (x0 = ESR_EL1, x1 = FAR_EL1,
x2 = ELR_EL1, x3 = vector offset) and then powers off, so a test can assert on it.
`hvc #0xAA` is the payload's "report" call; `POWEROFF` ends the run.
"""

from __future__ import annotations

from secvma.machine.build import assemble_payload
from secvma.machine.mailbox import RunResult
from secvma.machine.null import NullHypervisor
from secvma.machine.qemu import MachineConfig
from secvma.machine.runner import boot
from secvma.platform import Event, Hvc, Platform, Vcpu

REPORT = 0xAA
EXCEPTION = 0xEE

POWEROFF = """
    ldr x0, =0x84000008
    smc #0
99: b 99b
"""

_VECTOR = """
    .balign 0x80
    mov x3, #{off}
    b report_exception
"""

PROLOGUE = (
    """
    .text
    .globl _start
_start:
    adr x9, vectors
    msr vbar_el1, x9
    isb
    ldr x9, =stack_top
    mov sp, x9
    b main

report_exception:
    mrs x0, esr_el1
    mrs x1, far_el1
    mrs x2, elr_el1
    hvc #0xEE
"""
    + POWEROFF
    + "\n    .balign 0x800\nvectors:\n"
    + "".join(_VECTOR.format(off=o * 0x80) for o in range(16))
    + """
    .ltorg
    .data
    .balign 16
stack: .skip 4096
stack_top:
    .text
"""
)


def payload(main: str) -> str:
    """Full assembly source: the prologue, then `main:` with the given body."""
    return PROLOGUE + "\nmain:\n" + main + "\n    .ltorg\n"


class Recorder(NullHypervisor):
    """NullHypervisor that records reports (hvc #0xAA) and EL1 exceptions (hvc #0xEE)."""

    def __init__(self, trap_sysregs: bool = False):
        super().__init__(trap_sysregs=trap_sysregs)
        self.reports: list[tuple[int, ...]] = []
        self.exceptions: list[tuple[int, ...]] = []

    def handle(self, platform: Platform, cpu: Vcpu, event: Event) -> None:
        if isinstance(event, Hvc) and event.imm == REPORT:
            self.reports.append(event.x)
        elif isinstance(event, Hvc) and event.imm == EXCEPTION:
            self.exceptions.append(event.x[:4])
        super().handle(platform, cpu, event)


def run(main: str, hyp: Recorder | None = None, **cfg: object) -> tuple[RunResult, Recorder]:
    """Assemble `main`, boot it under `hyp` (a Recorder by default) and return the result."""
    b = assemble_payload(payload(main), name="test")
    h = hyp if hyp is not None else Recorder()
    config = MachineConfig(kernel=b.path, timeout_s=float(cfg.pop("timeout_s", 20)), **cfg)  # type: ignore[arg-type]
    return boot(config, h), h
