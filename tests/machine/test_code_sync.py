"""Code the hypervisor writes into guest RAM is what the CPU runs only after `flush_code`.

QEMU runs its translations of guest code and notices a change only when a CPU stores to the
code; the hypervisor's own writes go straight to RAM. So a function that already ran keeps
running its old translation after Python rewrites it (the quirk this file pins down), until
`flush_code` has EL2 load and store back the range (OP_CODE_SYNC), which drops the
translations. HVC 30 installs module text this way (kpcore/modload.py), and the stock-kernel
policy restores refused boot patches so (kpcore/transparent.py).
"""

from __future__ import annotations

import pytest

from secvma.machine import layout
from secvma.machine.mailbox import MailboxCpu
from secvma.platform import CODE_RANGES_MAX, Event, Hvc, PhysAddr, Platform, Vcpu

from .payload import POWEROFF, Recorder, run

pytestmark = pytest.mark.qemu

MOVZ_X0 = 0xD2800000  # MOVZ X0, #imm16 (imm16 at bit 5)
REWRITE = 0x51

BODY = """
    adr x19, first
    adr x21, second
    mov x20, #64                // both functions run (and are translated) many times
1:  blr x19
    blr x21
    subs x20, x20, #1
    b.ne 1b
    mov x1, x19
    mov x2, x21
    hvc #0x51                   // Python rewrites them: first returns 2, second 20
    blr x19
    mov x22, x0
    blr x21
    mov x1, x0
    mov x0, x22
    hvc #0xAA
""" + POWEROFF + """
    .balign 64
first:
    mov x0, #1
    ret
    .balign 4096
second:
    mov x0, #10
    ret
"""


def _movz(imm: int) -> bytes:
    return (MOVZ_X0 | imm << 5).to_bytes(4, "little")


class _Rewriter(Recorder):
    """At HVC 0x51: writes new `mov x0` words over both functions, then `flush_code`s the
    ranges `sync` names ("none", "both": one call each, "merged": four adjacent calls of 1 byte
    over the first word, then the second)."""

    def __init__(self, sync: str) -> None:
        super().__init__()
        self.sync = sync
        self.queued: list[list[int]] = []

    def handle(self, platform: Platform, cpu: Vcpu, event: Event) -> None:
        if isinstance(event, Hvc) and event.imm == REWRITE:
            first, second = event.x[1], event.x[2]
            platform.write(PhysAddr(first), _movz(2))
            platform.write(PhysAddr(second), _movz(20))
            if self.sync == "both":
                platform.flush_code(cpu, PhysAddr(first), 4)
                platform.flush_code(cpu, PhysAddr(second), 4)
            elif self.sync == "merged":
                for k in range(4):
                    platform.flush_code(cpu, PhysAddr(first + k), 1)
                platform.flush_code(cpu, PhysAddr(second), 4)
            assert isinstance(cpu, MailboxCpu)
            self.queued = [list(r) for r in cpu.code_ranges]
            cpu.set_x(0, 0)
            return
        super().handle(platform, cpu, event)


def test_rewritten_code_runs_stale_without_flush_code_quirk() -> None:
    """The emulator property the hypervisor has to handle: RAM holds the new words, the CPU
    still runs the old ones."""
    res, h = run(BODY, _Rewriter("none"))
    assert res.exit == "poweroff", res.console
    assert h.reports[0][:2] == (1, 10)


@pytest.mark.parametrize("sync", ["both", "merged"])
def test_flush_code_makes_the_cpu_run_the_written_code(sync: str) -> None:
    res, h = run(BODY, _Rewriter(sync))
    assert res.exit == "poweroff", res.console
    assert h.reports[0][:2] == (2, 20)
    assert len(h.queued) == 2  # one range per function (the 1-byte calls merged, rounded to u64)
    assert all(size == 8 for _pa, size in h.queued)


def test_code_range_limit_is_the_seams() -> None:
    assert layout.CODE_SYNC_MAX == CODE_RANGES_MAX
    assert layout.CODE_SYNC_BASE + layout.MAX_CPUS * layout.CODE_SYNC_STRIDE <= layout.S2_POOL_BASE
