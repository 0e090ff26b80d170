"""`secvma fuzz --tier qemu`: the same random operations as real AArch64 code on QEMU.

Each op becomes one command of the testbed kernel (guest/testbed): its store primitives execute
the very instruction form at EL1 (STR/STUR/STP/STXR/STLXR/DC ZVA/SIMD...), its HVC and MSR
primitives issue the hypercall or register write; the trap travels through the EL2 trampoline
and the mailbox to KPCore. The invariants are checked after every command, as in the fast tier.

What the testbed cannot take is left out, so that a crash of the attacker's own kernel is not
mistaken for a finding: stores go only to pages the hypervisor protects (table pages, text,
rodata; ordinary kernel data would just corrupt the kernel), VBAR_EL1 is not written (the next
exception would jump into junk), module images are not mutated (the fast tier does that), and
the FEAT_LSE forms are skipped (cortex-a57 has no LSE: they are UNDEFINED). A kernel that stops
anyway (a refused register write it relied on, a halt of secvma2024's design) is rebooted.
About 10-50 steps/s, against ~400 in the fast tier.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from secvma.fuzz.campaign import TABLE_CLASSES, Config, Failure, Result, checked_2024
from secvma.fuzz.ops import Op, OpGenerator, OpKind, World
from secvma.hvabi import Form
from secvma.kpcore import KPCore
from secvma.kpcore.invariants import check
from secvma.kpcore.pages import Usage
from secvma.platform import GuestMemoryError, PhysAddr, SysReg
from secvma.sim.machine import RMW_FORMS
from secvma.testbed.commands import MachineStopped, TestbedSession

QEMU_KINDS = (OpKind.STORE, OpKind.LOAD, OpKind.HVC, OpKind.DMA, OpKind.MSR, OpKind.USER_PGD)
PROTECTED = (*TABLE_CLASSES, Usage.EL1_KCODE, Usage.EL1_RODATA)
MASK64 = (1 << 64) - 1


class QemuRig:
    """A testbed session under a fresh KPCore."""

    def __init__(self, cfg: Config) -> None:
        from secvma.kpcore import make_policy
        from secvma.testbed.keys import testbed_module_keys

        self.hv: KPCore = make_policy(cfg.policy, s2=cfg.s2, module_keys=testbed_module_keys())
        self.session = TestbedSession(self.hv, command_timeout_s=20)
        self.session.__enter__()
        bi = self.session.boot_info
        assert bi is not None
        self.lin = bi.linear_offset
        self.cfg = cfg
        self.seen_refusals = 0
        self.seen_errors = 0
        self.protected: list[int] = []
        self.refresh()

    def close(self) -> None:
        self.session.__exit__(None, None, None)  # powers off (or halts) and joins the machine

    def refresh(self) -> None:
        pages = self.hv.state.pages
        self.protected = [p << 12 for cls in PROTECTED for p in pages.pages_of(cls)]
        self.tables = [p << 12 for cls in TABLE_CLASSES for p in pages.pages_of(cls)]

    def world(self) -> World:
        return World(1, self.tables, [], 0, True, self._read_u64)

    def _read_u64(self, pa: int) -> int:
        try:
            return self.session.platform.read_u64(PhysAddr(pa))
        except GuestMemoryError:  # outside RAM: the generator only wants a bit pattern
            return 0

    def execute(self, op: Op) -> str:
        s = self.session
        a = op.args
        if op.kind is OpKind.STORE:
            pa, off, value, value2, width = a
            r = s.write((pa + off + self.lin) & MASK64, value, width, Form[op.form.upper()], value2)
            return "done" if r.ok else "faulted" if r.faulted else r.status.name.lower()
        if op.kind is OpKind.LOAD:
            return "done" if s.read((a[0] + self.lin) & MASK64).ok else "faulted"
        if op.kind in (OpKind.HVC, OpKind.DMA):
            return "ok" if s.hvc(a[0], *a[1:]).value == 0 else "error"
        if op.kind is OpKind.MSR:
            return "written" if s.msr(SysReg[op.form], a[0]).ok else "refused"
        assert op.kind is OpKind.USER_PGD
        pa, idx, value = a
        if s.hvc(33, pa).value != 0:
            return "refused"
        s.write((pa + 8 * idx + self.lin) & MASK64, value)
        s.msr(SysReg.TTBR0_EL1, pa)
        if value & 1:
            s.hvc(34, pa)
        return "done"

    def check(self, step: int, full: bool) -> list[Failure]:
        out = [Failure("internal-error", f"{e.error} on {e.event}", step)
               for e in self.hv.internal_errors[self.seen_errors:]]
        self.seen_errors = len(self.hv.internal_errors)
        found = check(self.hv.state, self.session.platform, full=full)
        if self.cfg.policy != "hardened":
            found = [v for v in found if v.inv in checked_2024(self.cfg.s2)]
        return out + [Failure("invariant", str(v), step) for v in found]

    def new_refusals(self) -> list[str]:
        refs = self.hv.refusals
        out = [r.rule for r in refs[self.seen_refusals:]]
        self.seen_refusals = len(refs)
        return out


def _draw(gen: OpGenerator, rig: QemuRig) -> Op:
    """The next op the testbed can take (see the module docstring)."""
    while True:
        op = gen.draw(rig.world())
        if op.kind not in QEMU_KINDS:
            continue
        if op.kind is OpKind.MSR and op.form == SysReg.VBAR_EL1.name:
            continue
        if op.kind is OpKind.STORE:
            if op.form in RMW_FORMS or not rig.protected:
                continue
            if op.args[0] not in rig.protected:
                pa = gen.rng.choice(rig.protected)
                op = Op(op.kind, 0, (pa, *op.args[1:]), op.form)
        return Op(op.kind, 0, op.args, op.form)


def run_qemu_campaign(steps: int, seed: int, cfg: Config,
                      progress: Callable[[int], None] | None = None) -> Result:
    """`steps` ops from `seed` on the testbed under QEMU (one CPU)."""
    res = Result(seed, cfg, steps, tier="qemu")
    gen = OpGenerator(seed)
    t0 = time.perf_counter()
    rig = QemuRig(cfg)
    try:
        for step in range(steps):
            if step % 16 == 0:
                rig.refresh()
            op = _draw(gen, rig)
            res.ops[op.kind.value] += 1
            stopped = ""
            try:
                outcome = rig.execute(op)
                res.outcomes[f"{op.kind.value}:{outcome}"] += 1
            except (MachineStopped, TimeoutError) as exc:
                stopped = str(exc)
            found = rig.check(step, step % 16 == 15 or step == steps - 1) if not stopped else \
                [Failure("internal-error", f"{e.error} on {e.event}", step)
                 for e in rig.hv.internal_errors[rig.seen_errors:]]
            res.refusals.update(rig.new_refusals())
            res.failures += found
            if stopped or found:
                reason = "after a failure" if found else (
                    "halted: " + stopped.split(":", 2)[1].strip() if "halt:" in stopped
                    else "kernel stopped answering")
                res.reboots[reason[:80]] += 1
                rig.close()
                rig = QemuRig(cfg)
            res.steps = step + 1
            if progress is not None:
                progress(step + 1)
    finally:
        rig.close()
    res.seconds = time.perf_counter() - t0
    return res
