"""KPCore: the hypervisor object the machine calls, one `handle` per trap.

`handle` dispatches the event, turns refusals into what the guest sees, ends every commit with
its TLB maintenance, checks VBAR_EL1 and (with `check_invariants`) the invariants, and never
lets an exception escape: a guest cannot crash the hypervisor. An exception that is not a
refusal is a model bug: it is recorded in `internal_errors` and the machine is halted.

What the guest sees of a refusal (Outcome)::

    event          secvma2024                          hardened
    store/fault    HypRefusal: STALL (not emulated,    data abort injected into EL1:
                   PC unchanged, spins forever, gap 11) ESR_EL1 = EC 0x25 (0x24 from EL0),
                   HypPanic: PANIC (machine halted)      IL, WnR, DFSC = permission fault at
                                                         the stage-1 level of FAR; FAR = FAR
                                                         (fetch: EC 0x21/0x20, IFSC likewise)
    MSR (TVM)      PANIC                               EC 0x00 (unknown: "undefined insn")
    HVC            x0 = -errno (PANIC for unknown      x0 = -errno
                   numbers; HVC 33/34 leave x0)        (HVC 30-32 both: x0 = HVC_INVALID)
    other trap     PANIC                               EC 0x00 injected

A stalled CPU (secvma2024) is halted after `STALL_LIMIT` identical retries, since in C it
never makes progress again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from secvma.arch.el2 import HCR_TVM
from secvma.hvabi import HVC_ENOSYS, HVC_INVALID
from secvma.kpcore import dma, guard, invariants, ptefast
from secvma.kpcore.faults import handle_abort, inject_refusal
from secvma.kpcore.hostmem import settle
from secvma.kpcore.hypercalls import HCR_HOST, handle_hvc, neg
from secvma.kpcore.modkeys import ModuleKeys
from secvma.kpcore.policy import Policy, policy_named
from secvma.kpcore.refusal import Errno, HypPanic, HypRefusal, Outcome, Refusal, log
from secvma.kpcore.stage2 import VTCR_4G
from secvma.kpcore.state import KState, Stall
from secvma.kpcore.sysregs import handle_sysreg
from secvma.platform import (
    CpuStart,
    Event,
    GuardTrip,
    Hvc,
    OtherTrap,
    Platform,
    Smc,
    Stage2Abort,
    SysReg,
    SysregTrap,
    Unexpected,
    Vcpu,
)

STALL_LIMIT = 64
FULL_CHECK_EVERY = 512
_Handler = Callable[[], Outcome]


@dataclass(frozen=True, slots=True)
class InternalError:
    """A model bug hit while handling an event (never a guest's fault)."""

    event: str
    error: str


class KPCore:
    """SECvma's EL2 policy (`secvma.platform.Hypervisor`)."""

    def __init__(self, policy: Policy, module_keys: ModuleKeys | None = None) -> None:
        self.policy = policy
        self.module_keys = module_keys
        self.st: KState | None = None
        self.invariant_violations: list[invariants.Violation] = []
        self.internal_errors: list[InternalError] = []
        self.hvc_counts: dict[int, int] = {}
        self._traps = 0
        self._vbar_pinned: set[int] = set()  # CPUs whose guard checks the pinned VBAR_EL1
        self._ptefast_possible = True  # until ptefast.maybe_arm says this machine cannot
        self._lock = threading.RLock()  # handle vs a replay asked for by another thread

    # --- public surface -----------------------------------------------------------------

    @property
    def state(self) -> KState:
        """The model, exact: PTE stores the machine did since the last trap are replayed
        first (kpcore/ptefast.py)."""
        if self.st is None:
            raise RuntimeError("KPCore has not seen its machine yet (no event handled)")
        if self.st.ptefast is not None:
            with self._lock:
                ptefast.replay(self.st, self.st.ptefast.platform)
        return self.st

    @property
    def refusals(self) -> list[Refusal]:
        return [] if self.st is None else self.st.refusals

    def snapshot(self) -> dict[str, object]:
        """JSON-able state for `secvma inspect` (see kpcore.snapshot)."""
        from secvma.kpcore.snapshot import snapshot

        out = snapshot(self.state)
        out["invariant_violations"] = [str(v) for v in self.invariant_violations]
        out["internal_errors"] = [str(e) for e in self.internal_errors]
        return out

    def attach(self, platform: Platform) -> KState:
        """Create the state for `platform` (done by the first event; tests call it early)."""
        if self.st is None:
            st = KState.create(platform, self.policy)
            st.mod.keys = self.module_keys
            dma.attach(st, platform)
            self.st = st
        return self.st

    def poll(self, platform: Platform) -> None:
        """Between traps (the machine's housekeeping): drain the SMMU's event queue."""
        if self.st is not None:
            try:
                dma.drain_faults(self.st)
            except Exception as exc:  # a model/device bug, as in handle
                log.exception("kpcore internal error while polling")
                self.internal_errors.append(InternalError("poll", repr(exc)))
                platform.halt(f"kpcore internal error: {exc!r}")

    def sync(self, platform: Platform) -> None:
        """Account for the PTE stores the machine carried out since the last trap (ptefast).

        `handle` does this before anything else, `check_invariants` and `state` too; the
        machine may go on running (the log is a ring), `handle` waits meanwhile."""
        if self.st is not None and self.st.ptefast is not None:
            with self._lock:
                ptefast.replay(self.st, platform)

    def check_invariants(self, platform: Platform, *, full: bool = True) -> list[invariants.Violation]:
        """Run the §9 invariants now; violations are also appended to `invariant_violations`."""
        self.sync(platform)
        found = invariants.check(self.attach(platform), platform, full=full)
        self.invariant_violations.extend(found)
        for v in found:
            log.error("invariant violated: %s", v)
        return found

    def handle(self, platform: Platform, cpu: Vcpu, event: Event) -> None:
        with self._lock:  # a replay from another thread (`state`) never interleaves with it
            self._handle(platform, cpu, event)

    def _handle(self, platform: Platform, cpu: Vcpu, event: Event) -> None:
        st = self.attach(platform)
        st.events[type(event).__name__] += 1
        try:
            if st.ptefast is not None:  # the model first: stores the machine did meanwhile
                ptefast.replay(st, platform)
            if st.unsettled:
                settle(st, platform, cpu.index)
                if isinstance(event, Stage2Abort) and \
                        st.unsettled.get(event.ipa >> 12, cpu.index) != cpu.index:
                    # a store into a page another CPU has just claimed: retried (PC
                    # unchanged) once that CPU's TLB invalidation has run
                    st.events["unsettled-retry"] += 1
                    return
            self._dispatch(st, platform, cpu, event)
            if st.dma is not None:
                dma.drain_faults(st)
            if not isinstance(event, GuardTrip):  # a trip was judged by kpcore.guard already
                self._check_vbar(st, cpu)
            st.s2.flush(platform, cpu)
            if st.ptefast is None and self._ptefast_possible:
                self._ptefast_possible = ptefast.maybe_arm(st, platform, cpu)
            elif isinstance(event, CpuStart):
                ptefast.enable_again(st, cpu)
        except Exception as exc:  # a model bug: record, stop the machine, never propagate
            log.exception("kpcore internal error on %r", event)
            self.internal_errors.append(InternalError(repr(event), repr(exc)))
            platform.halt(f"kpcore internal error: {exc!r}")
            return
        if self.policy.check_invariants:
            self._traps += 1
            self.check_invariants(platform, full=self._traps % FULL_CHECK_EVERY == 0)

    # --- dispatch -----------------------------------------------------------------------

    def _dispatch(self, st: KState, plat: Platform, cpu: Vcpu, ev: Event) -> None:
        if isinstance(ev, CpuStart):
            st.feat_xnx = ev.feat_xnx
            c = st.cpu(cpu.index)
            hcr = HCR_HOST
            if st.installed and self.policy.hardened:
                # PSCI CPU_ON after install: the CPU runs head.S again, trapped from its first
                # instruction (TVM) with a fresh boot window; it holds no user root any more
                c.tvm = c.enabled_once = c.boot_window = True
                c.switched = False
                c.ttbr0 = c.ttbr1 = 0
                hcr |= HCR_TVM
            cpu.set_stage2(st.s2.vttbr(), VTCR_4G, hcr)
            self._vbar_pinned.discard(cpu.index)
            if not self.policy.quirks.unguarded_el1_regs:
                guard.arm(cpu)
        elif isinstance(ev, GuardTrip):
            restore = st.vbar if ev.reg is SysReg.VBAR_EL1 and st.vbar else None
            guard.trip(st.refusals, plat, cpu, ev, policy=self.policy.name,
                       action=self.policy.guard_action, restore_to=restore)
        elif isinstance(ev, Smc):
            cpu.smc_passthrough()
        elif isinstance(ev, Hvc):
            self.hvc_counts[ev.x[0]] = self.hvc_counts.get(ev.x[0], 0) + 1
            self._guard(st, plat, cpu, ev, lambda: handle_hvc(st, plat, cpu, ev))
        elif isinstance(ev, Stage2Abort):
            self._guard(st, plat, cpu, ev, lambda: handle_abort(st, plat, cpu, ev))
        elif isinstance(ev, SysregTrap):
            self._guard(st, plat, cpu, ev, lambda: handle_sysreg(st, plat, cpu, ev))
        elif isinstance(ev, OtherTrap):
            err = HypPanic(Errno.EINVAL, "trap-class", "unexpected exception class",
                           esr=ev.esr, far=ev.far)
            self._refused(st, plat, cpu, ev, err)
        elif isinstance(ev, Unexpected):
            plat.halt(f"kpcore: unexpected EL2 exception {ev!r}")

    def _guard(self, st: KState, plat: Platform, cpu: Vcpu, ev: Event,
               fn: _Handler) -> None:
        try:
            outcome = fn()
        except HypRefusal as err:
            self._refused(st, plat, cpu, ev, err)
            return
        if outcome is not Outcome.STALL:
            st.stalls.pop(cpu.index, None)

    # --- refusals -----------------------------------------------------------------------

    def _refused(self, st: KState, plat: Platform, cpu: Vcpu, ev: Event,
                 err: HypRefusal) -> None:
        panic = isinstance(err, HypPanic) and not self.policy.hardened
        if isinstance(ev, Hvc):
            outcome = Outcome.PANIC if panic else Outcome.REFUSED
        elif panic or (not self.policy.hardened and isinstance(ev, SysregTrap)):
            outcome = Outcome.PANIC
        elif self.policy.quirks.stall_on_reject and isinstance(ev, Stage2Abort):
            outcome = Outcome.PANIC if err.code is Errno.ENOMEM else Outcome.STALL
        else:
            outcome = Outcome.REFUSED
        if outcome is Outcome.STALL and self._stalled_again(st, plat, cpu, ev):
            return
        rec = Refusal(err.rule, err.code, err.reason, outcome, cpu.index, cpu.elr,
                      dict(err.values))
        st.refusals.append(rec)
        log.info("refused: %s", rec)
        if outcome is Outcome.PANIC:
            plat.halt(f"kpcore panic ({self.policy.name}): {err}")
        elif outcome is Outcome.STALL:
            return
        elif isinstance(ev, Hvc):
            nr = ev.x[0]
            if err.rule == "hvc-vm":
                cpu.set_x(0, HVC_ENOSYS)
            elif nr in (30, 31, 32):
                cpu.set_x(0, HVC_INVALID)
            elif self.policy.hardened or nr not in (33, 34):
                cpu.set_x(0, neg(err.code))
        else:
            self._inject(st, plat, cpu, ev)

    def _stalled_again(self, st: KState, plat: Platform, cpu: Vcpu, ev: Event) -> bool:
        """Count identical stalls; True if this one was already logged."""
        ipa = ev.ipa if isinstance(ev, Stage2Abort) else 0
        prev = st.stalls.get(cpu.index)
        if prev is not None and (prev.pc, prev.ipa) == (cpu.elr, ipa):
            prev.repeats += 1
            if prev.repeats >= STALL_LIMIT:
                plat.halt(f"kpcore ({self.policy.name}): cpu{cpu.index} stalled forever on a "
                          f"refused store at pc {cpu.elr:#x} (docs/kpcore-spec.md §11 gap 11)")
            return True
        st.stalls[cpu.index] = Stall(cpu.elr, ipa, 1)
        return False

    def _inject(self, st: KState, plat: Platform, cpu: Vcpu, ev: Event) -> None:
        """Deliver the refusal to EL1 as an exception the kernel can report (see module doc)."""
        self._restore_vbar(st, cpu)
        inject_refusal(plat, cpu, ev)

    # --- VBAR_EL1 -----------------------------------------------------------------------

    def _check_vbar(self, st: KState, cpu: Vcpu) -> None:
        """Pin VBAR_EL1 once it points into kernel text; restore it if it moved (hardened)."""
        if not self.policy.hardened or not st.installed or st.boot is None:
            return
        if st.cpu(cpu.index).boot_window:
            # a CPU started by PSCI CPU_ON runs head.S again: VBAR_EL1 is set with the MMU
            # off, before its MMU-on SCTLR write closes the window; checked from then on
            return
        vbar = cpu.read_sysreg(SysReg.VBAR_EL1)
        if st.vbar == 0:
            boot = st.boot
            if boot.text_va <= vbar < boot.text_va + (boot.etext - boot.text):
                st.vbar = vbar
            else:
                return
        if not self.policy.quirks.unguarded_el1_regs and cpu.index not in self._vbar_pinned:
            cpu.pin_sysreg(SysReg.VBAR_EL1, st.vbar)  # from now on checked at every interrupt
            self._vbar_pinned.add(cpu.index)
        if vbar != st.vbar:
            st.refusals.append(Refusal("vbar", Errno.EPERM, "VBAR_EL1 moved off the pinned "
                                       "vector table; restored", Outcome.REFUSED, cpu.index,
                                       cpu.elr, {"value": vbar, "pinned": st.vbar}))
            cpu.write_sysreg(SysReg.VBAR_EL1, st.vbar)

    def _restore_vbar(self, st: KState, cpu: Vcpu) -> None:
        if st.vbar and cpu.read_sysreg(SysReg.VBAR_EL1) != st.vbar:
            cpu.write_sysreg(SysReg.VBAR_EL1, st.vbar)


def make_policy(name: str, *, s2: str = "huge", check_invariants: bool = False,
                module_keys: ModuleKeys | None = None) -> KPCore:
    """A KPCore running policy `name` ("secvma2024" or "hardened") in stage-2 mode `s2`.

    `module_keys` is the module signature table HVC 30 verifies against (`ModuleKeys`,
    e.g. `ModuleKeys.from_files(pubkey, table)`); without it every module load is refused.
    """
    return KPCore(policy_named(name, s2=s2, check_invariants=check_invariants), module_keys)
