"""Micro-benchmarks of the machine: trap round trips and boot time, measured side by side.

`secvma bench micro` prints these. Round trips are measured by the trampoline itself (CNTPCT
from vector entry to "ready to ERET", so they include decode, the Python handler and the
mailbox transport, but not the exception entry/exit in QEMU); the guest-side figure (CNTVCT
around the whole loop, per iteration) is reported beside it.

Busy polling: the mailbox loop spins on the state word, burning one host core while the guest
runs. `spin_us` measures the alternative, spin-then-block (sleep after that long without a
trap), which frees the core at the price of a wake-up latency on the first trap after a pause.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from secvma.machine import layout
from secvma.machine.build import assemble_payload
from secvma.machine.initramfs import INIT_BANNER, build_initramfs
from secvma.machine.mailbox import RunResult
from secvma.machine.null import S2AP_RW, NullHypervisor
from secvma.machine.qemu import MachineConfig
from secvma.machine.runner import boot
from secvma.platform import Event, Hvc, PhysAddr, Platform, Stage2Abort, Vcpu

TARGETS = {"hvc_roundtrip_us": 5.0, "stage2_abort_us": 8.0, "sysreg_trap_us": 5.0,
           "boot_ratio": 1.3}

# the page the stage-2 benchmark write-protects: well inside kernel RAM, away from the payload
WP_PAGE = layout.KERNEL_BASE + 0x40_0000


class _WriteProtectHypervisor(NullHypervisor):
    """NullHypervisor with one page read-only at stage 2 whose stores Python emulates."""

    def handle(self, platform: Platform, cpu: Vcpu, event: Event) -> None:
        if isinstance(event, Stage2Abort) and event.ipa & ~0xFFF == WP_PAGE and event.is_write:
            iss = cpu.esr & 0x1FFFFFF
            if iss >> 24 & 1:  # ISV: width and register from the syndrome
                size = 1 << ((iss >> 22) & 3)
                value = cpu.x((iss >> 16) & 0x1F) & ((1 << (8 * size)) - 1)
                platform.write(event.ipa, value.to_bytes(size, "little"))
                cpu.skip()
                self.events["emulated"] += 1
                return
        super().handle(platform, cpu, event)
        if self.root is not None and not self.events["wp_armed"]:
            _protect_page(platform, self.root, WP_PAGE)
            platform.flush_tlb_all(cpu)
            self.events["wp_armed"] = 1


def _protect_page(platform: Platform, l1: int, page: int) -> None:
    """Split the 2 MiB block holding `page` into 4 KB pages and make `page` read-only."""
    l2 = platform.read_u64(PhysAddr(l1 + (page >> 30) * 8)) & 0xFFFFFFFFF000
    slot = l2 + ((page >> 21) & 0x1FF) * 8
    block = platform.read_u64(PhysAddr(slot))
    attrs = block & 0xFFF & ~0b11
    l3 = layout.S2_POOL_END - 0x1000  # last pool page: unused by the identity map
    base = page & ~0x1F_FFFF
    table = bytearray()
    for i in range(512):
        pa = base + i * 0x1000
        desc = pa | attrs | 0b11
        if pa == page:
            desc &= ~S2AP_RW
            desc |= 1 << 6  # S2AP = read-only
        table += desc.to_bytes(8, "little")
    platform.write(PhysAddr(l3), bytes(table))
    platform.write_u64(PhysAddr(slot), l3 | 0b11)  # make-before-break: table fully built first


def _loop_payload(body: str, iterations: int) -> str:
    return f"""
    .globl _start
_start:
    ldr x20, ={iterations}
    ldr x21, ={WP_PAGE:#x}
    mrs x22, cntvct_el0
1:  {body}
    subs x20, x20, #1
    b.ne 1b
    mrs x23, cntvct_el0
    sub x1, x23, x22
    mrs x2, cntfrq_el0
    mov x0, #0
    hvc #0xBB
    ldr x0, =0x84000008
    smc #0
2:  b 2b
"""


@dataclass
class LoopFigure:
    """One trap kind's round trip: trampoline-measured median/p99 and guest-side mean (µs)."""

    median_us: float
    p99_us: float
    guest_us: float
    n: int


class _GuestClock(NullHypervisor):
    def __init__(self, trap_sysregs: bool = False):
        super().__init__(trap_sysregs)
        self.guest_ticks = 0
        self.guest_freq = 1

    def handle(self, platform: Platform, cpu: Vcpu, event: Event) -> None:
        if isinstance(event, Hvc) and event.imm == 0xBB:
            self.guest_ticks, self.guest_freq = event.x[1], event.x[2] or 1
        super().handle(platform, cpu, event)


class _WPClock(_WriteProtectHypervisor, _GuestClock):
    pass


def _figure(res: RunResult, hyp: _GuestClock, iterations: int) -> LoopFigure:
    s = sorted(res.roundtrip_us[:-1])  # the last sample is the reporting HVC
    if not s:
        raise RuntimeError("no round trips were measured")
    return LoopFigure(s[len(s) // 2], s[min(len(s) - 1, int(len(s) * 0.99))],
                      hyp.guest_ticks * 1e6 / hyp.guest_freq / iterations, len(s))


def measure_loop(kind: str, iterations: int = 20000, spin_us: float | None = None) -> LoopFigure:
    """Round trip of one trap kind: "hvc", "stage2" (write to a WP page) or "sysreg" (MSR)."""
    body = {"hvc": "hvc #0", "stage2": "str x20, [x21]", "sysreg": "msr contextidr_el1, x20"}[kind]
    hyp: _GuestClock = (_WPClock() if kind == "stage2" else _GuestClock(trap_sysregs=kind == "sysreg"))
    b = assemble_payload(_loop_payload(body, iterations), name=f"bench-{kind}")
    res = boot(MachineConfig(kernel=b.path, timeout_s=120), hyp, spin_us=spin_us)
    if kind == "stage2" and hyp.events["emulated"] < iterations:
        raise RuntimeError("the stage-2 benchmark did not trap on every store")
    return _figure(res, hyp, iterations)


def measure_boot(kernel: Path, runs: int = 3, plain: bool = False, ncpus: int = 1,
                 spin_us: float | None = None) -> list[float]:
    """Seconds from QEMU launch to the Debian kernel's first userspace line, per run."""
    initrd = build_initramfs()
    out = []
    for _ in range(runs):
        cfg = MachineConfig(kernel=kernel, initrd=initrd, ncpus=ncpus, timeout_s=120, plain=plain)
        res = boot(cfg, None if plain else NullHypervisor(), watch=(INIT_BANNER,), spin_us=spin_us)
        t = res.first_seen.get(INIT_BANNER.decode())
        if t is None:
            raise RuntimeError(f"the kernel did not reach userspace:\n{res.console[-2000:]}")
        out.append(t)
    return out


def run_micro(iterations: int = 20000, boot_runs: int = 3, kernel: Path | None = None,
              spin_us: float = 200.0) -> dict[str, Any]:
    """All figures of `secvma bench micro`, measured in this one run."""
    out: dict[str, Any] = {}
    for kind, key in (("hvc", "hvc_roundtrip_us"), ("stage2", "stage2_abort_us"),
                      ("sysreg", "sysreg_trap_us")):
        f = measure_loop(kind, iterations)
        out[key] = round(f.median_us, 2)
        out[key.replace("_us", "_p99_us")] = round(f.p99_us, 2)
        out[key.replace("_us", "_guest_us")] = round(f.guest_us, 2)
    sb = measure_loop("hvc", iterations, spin_us=spin_us)
    out["spin_then_block"] = {"spin_us": spin_us, "hvc_roundtrip_us": round(sb.median_us, 2),
                              "hvc_roundtrip_p99_us": round(sb.p99_us, 2),
                              "hvc_roundtrip_guest_us": round(sb.guest_us, 2)}
    out["boot_s_null"] = out["boot_s_plain"] = out["boot_ratio"] = None
    if kernel is not None:
        null = measure_boot(kernel, boot_runs)
        plain = measure_boot(kernel, boot_runs, plain=True)
        out["boot_s_null"] = round(statistics.median(null), 3)
        out["boot_s_plain"] = round(statistics.median(plain), 3)
        out["boot_ratio"] = round(out["boot_s_null"] / out["boot_s_plain"], 3)
        out["boot_runs"] = {"null": [round(x, 3) for x in null], "plain": [round(x, 3) for x in plain]}
        sbb = measure_boot(kernel, boot_runs, spin_us=spin_us)
        out["spin_then_block"]["boot_s_null"] = round(statistics.median(sbb), 3)
    out["busy_polling"] = ("the mailbox loop busy-polls: one host core is fully used while the "
                           "guest runs; spin_then_block shows the alternative")
    out["targets"] = TARGETS
    return out
