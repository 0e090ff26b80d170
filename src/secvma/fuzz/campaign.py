"""`secvma fuzz`'s fast tier: random EL1 operations against KPCore on the simulated machine.

Design: the campaign drives KPCore's trap handlers directly on `secvma.sim` (the same fake
machine as the logic tests): each op is executed by the simulated EL1 CPU, whose stores go
through the real stage-1 + stage-2 walk and reach KPCore as the data aborts, HVCs and MSR traps
the mailbox would deliver. That makes 10^5-10^6 steps a matter of minutes, where a QEMU round
trip per trap would allow a few thousand; the QEMU path itself is covered by the attack
catalogue (real instructions on the testbed) and tests/kpcore/test_stateful_qemu.py.

After every step the invariants (`kpcore.invariants`, incremental; a full re-check every
`FULL_EVERY` steps and at the end) are checked, new refusals are counted by rule, and a new
internal error or an exception in the harness is a failure. A failing sequence (the ops since
the machine booted) is shrunk and saved as JSON; `replay` runs one again (tests/fuzz_cases).

Policies: `hardened` must keep every invariant. `secvma2024` is the paper's design with its
documented gaps (docs/kpcore-spec.md §11): some invariants are broken by design (e.g. gap 1
lets a 4-byte store clear PXN), so only those its design guarantees are checked
(`checked_2024`); its panics halt the machine, which the campaign then reboots.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from secvma.arch.walk import UnsupportedConfig
from secvma.fuzz.ops import Mutation, Op, OpGenerator, OpKind, World
from secvma.hvabi import HVC_INVALID
from secvma.kpcore import KPCore, ModuleKeys
from secvma.kpcore.invariants import Violation, check
from secvma.kpcore.modkeys import keys_for
from secvma.kpcore.pages import Usage
from secvma.platform import CpuStart, GuestMemoryError, PhysAddr, SysReg
from secvma.sim.machine import (
    IDMAP,
    KERNEL_PA,
    MAIR,
    SCTLR,
    SWAPPER,
    TCR,
    TEXT,
    FakeVcpu,
    KernelFault,
    kva,
    lva,
)
from secvma.sim.modules import FakeModuleKernel, KernelModule, boot_with_exports

FULL_EVERY = 256
EPOCH = 2000  # steps before a fresh machine: random ops slowly wreck the kernel's own mappings
# the fake kernel could not do what it meant to (its own tables or pages were changed by earlier
# ops and KPCore refused its access): an outcome, not a failure
KERNEL_FAILED = (AssertionError, GuestMemoryError, KernelFault)
INVARIANTS_2024 = ("INV-EL2", "INV-KPT-RO", "INV-CODE-RO", "INV-S2-WX")
"""What secvma2024's design keeps; with 2 MiB stage-2 blocks a claimed table can stay under an
old RW block (gap 4), so INV-KPT-RO is checked there only in 4k mode (`checked_2024`)."""


def checked_2024(s2: str) -> tuple[str, ...]:
    return INVARIANTS_2024 if s2 == "4k" else tuple(i for i in INVARIANTS_2024
                                                    if i != "INV-KPT-RO")
TABLE_CLASSES = (Usage.EL1_PGD, Usage.EL1_PUD, Usage.EL1_PMD, Usage.EL1_PTE, Usage.EL0_PGD)
UNSIMULATED = "unsimulated"
MAX_CASE_OPS = 4000  # a failing sequence longer than this is cut to its last ops before shrinking
HEAD_S = ((SysReg.MAIR_EL1, MAIR), (SysReg.TCR_EL1, TCR), (SysReg.TTBR0_EL1, IDMAP),
          (SysReg.TTBR1_EL1, SWAPPER), (SysReg.SCTLR_EL1, SCTLR))


@dataclass(frozen=True)
class Config:
    """What a campaign (or a replay) runs against."""

    policy: str = "hardened"
    s2: str = "huge"
    smp: int = 1


@dataclass(frozen=True)
class Failure:
    """Something that must never happen: `kind` is invariant / internal-error / harness-error."""

    kind: str
    detail: str
    step: int

    @property
    def signature(self) -> str:
        """What two failures share when they are the same bug (kind + invariant/exception)."""
        return f"{self.kind}:{self.detail.split(':', 1)[0].split('(', 1)[0]}"


def module_keys(modules: dict[str, bytes]) -> ModuleKeys | None:
    """The signature table for the campaign's modules (a fixed key: replays are identical)."""
    if not modules:
        return None
    key = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"secvma fuzz").digest())
    return keys_for(key, modules.values())


class Rig:
    """A booted simulated testbed under one KPCore, with every CPU through head.S."""

    def __init__(self, cfg: Config, modules: dict[str, bytes], keys: ModuleKeys | None,
                 ram: bytearray | None = None) -> None:
        """`ram`: the RAM buffer of a discarded rig to reuse (zeroed)."""
        self.cfg = cfg
        self.modules = modules
        self.m, self.hv = boot_with_exports(cfg.policy, keys, s2=cfg.s2, check_invariants=False,
                                            smmu=True, ncpus=max(cfg.smp, 1), ram=ram)
        self.cpus: list[FakeVcpu] = [self.m.cpu]
        for i in range(1, cfg.smp):
            c = FakeVcpu(index=i)
            self.m.plat.vcpus.append(c)
            self.cpus.append(c)
            self._head_s(c)
        self.mk = FakeModuleKernel(self.m)
        self.loaded: list[KernelModule] = []
        self.seen_refusals = 0
        self.seen_errors = 0
        self.tables: list[int] = []
        self.steps = 0
        self.refresh()

    @property
    def hv_core(self) -> KPCore:
        return self.hv

    def _head_s(self, c: FakeVcpu) -> None:
        """PSCI CPU_ON: the CPU enters at KERNEL_PA and runs head.S (no second HVC 6)."""
        self.m.event(CpuStart(KERNEL_PA, 0), c)
        c.sysregs[SysReg.VBAR_EL1] = kva(TEXT + 0x800)
        for reg, v in HEAD_S:
            self.m.msr(reg, v, cpu=c)

    def refresh(self) -> None:
        st = self.hv.state
        self.tables = [p << 12 for cls in TABLE_CLASSES for p in st.pages.pages_of(cls)]

    def world(self) -> World:
        return World(len(self.cpus), self.tables, sorted(self.modules), len(self.loaded),
                     self.m.plat.smmu is not None, self._read_u64)

    def _read_u64(self, pa: int) -> int:
        return self.m.plat.read_u64(PhysAddr(pa))

    # --- one op ----------------------------------------------------------------------------

    def run(self, op: Op) -> str:
        """`execute`, with what the CPU model meets as the hardware would: an access to a PA
        with no memory is an external abort; a translation regime it does not model (a 16/64 KB
        granule the policy let through) ends the run (`UNSIMULATED`: the campaign reboots)."""
        try:
            return self.execute(op)
        except GuestMemoryError:
            return "external-abort"
        except UnsupportedConfig:
            return UNSIMULATED

    def execute(self, op: Op) -> str:
        """Run `op` on the machine; returns a short outcome label."""
        c = self.cpus[op.cpu % len(self.cpus)]
        m = self.m
        a = op.args
        if op.kind is OpKind.STORE:
            pa, off, value, value2, width = a
            r = m.store(lva(pa) + off, value, width, op.form, value2=value2, cpu=c)
            return "stalled" if r.stalled else "done" if r.done else "injected" if r.injected \
                else "s1-fault" if r.s1_fault else "not-done"
        if op.kind is OpKind.LOAD:
            return "done" if m.load(lva(a[0]), cpu=c) else "faulted"
        if op.kind in (OpKind.HVC, OpKind.DMA):
            r0 = m.hvc(a[0], *a[1:], cpu=c)
            return "ok" if r0 == 0 else "error"
        if op.kind is OpKind.MSR:
            return "written" if m.msr(SysReg[op.form], a[0], cpu=c) else "refused"
        if op.kind is OpKind.USER_PGD:
            pa, idx, value = a
            if m.hvc(33, pa, cpu=c) != 0:
                return "refused"
            m.store(lva(pa) + 8 * idx, value, cpu=c)
            m.msr(SysReg.TTBR0_EL1, pa, cpu=c)
            if value & 1:  # release it while it is live on this CPU
                m.hvc(34, pa, cpu=c)
            return "done"
        if op.kind is OpKind.MODULE_LOAD:
            return self._module_load(op, c)
        if op.kind is OpKind.MODULE_UNLOAD:
            if not self.loaded:
                return "none-loaded"
            km = self.loaded.pop(a[0] % len(self.loaded))
            try:
                _r32, r31 = self.mk.unload(km, init_free=bool(a[1]))
            except KERNEL_FAILED:
                return "kernel-failed"  # the kernel's own tables were damaged by earlier ops
            if r31 != 0:
                if self.hv.refusals and self.hv.refusals[-1].rule == "mfree-busy":
                    self.loaded.append(km)  # still loaded: the kernel keeps it
                return "refused"  # else unloaded behind the kernel's back by a random HVC 31
            return "done"
        assert op.kind is OpKind.CPU_ON
        self._head_s(c)
        return "done"

    def _module_load(self, op: Op, c: FakeVcpu) -> str:
        mut, pos, value = Mutation(op.args[0]), op.args[1], op.args[2]
        ko = self.modules[op.form]

        def tamper(km: KernelModule) -> None:
            if mut is Mutation.IMAGE_BYTE:
                self.m.kernel_write(km.tmp.pa + pos % len(km.image), bytes([value & 0xFF]), c)
            elif mut is Mutation.RUN_BYTE:
                run = km.text if pos & 1 else km.ro
                self.m.kernel_write(run.pa + (pos >> 1) % (run.pages * 4096),
                                    bytes([value & 0xFF]), c)
            elif mut is Mutation.ARCH_FIELD:
                f = dataclasses.fields(km.arch)[pos % len(dataclasses.fields(km.arch))]
                km.arch = dataclasses.replace(km.arch, **{f.name: value & ((1 << 64) - 1)})
            elif mut is Mutation.CHECKLIST and km.check:
                km.check[pos % len(km.check)] = value & 0xFFFF_FFFF
            elif mut is Mutation.COUNT:
                n = pos % (len(km.check) + 3)
                km.check = (km.check + [value & 0xFFFF_FFFF] * 3)[:n]
            elif mut is Mutation.HEADER_PTR:
                km.hdr_va = value

        self.m.cpu, saved = c, self.m.cpu  # the module kernel issues its HVCs on this CPU
        try:
            km = self.mk.load(ko, tamper=tamper)
        except KERNEL_FAILED:
            return "kernel-failed"
        finally:
            self.m.cpu = saved
        if km.modid in (HVC_INVALID,) or km.modid >= 1 << 63:
            try:
                for pool, run in ((1, km.tmp), (0, km.text), (1, km.ro), (2, km.data)):
                    self.mk.unmap_run(pool, run)
            except KERNEL_FAILED:
                return "refused"
            return "refused"
        with contextlib.suppress(*KERNEL_FAILED):
            self.mk.free_tmp(km)
        self.loaded.append(km)
        return "loaded"

    # --- checks ----------------------------------------------------------------------------

    def check(self, full: bool) -> list[Failure]:
        """Invariants (filtered by policy) and new internal errors since the last check."""
        out: list[Failure] = []
        for e in self.hv.internal_errors[self.seen_errors:]:
            out.append(Failure("internal-error", f"{e.error} on {e.event}", self.steps))
        self.seen_errors = len(self.hv.internal_errors)
        if self.hv.st is not None:
            found: list[Violation] = check(self.hv.state, self.m.plat, full=full)
            if self.cfg.policy != "hardened":
                found = [v for v in found if v.inv in checked_2024(self.cfg.s2)]
            out += [Failure("invariant", str(v), self.steps) for v in found]
        return out

    def new_refusals(self) -> list[str]:
        refs = self.hv.refusals
        out = [r.rule for r in refs[self.seen_refusals:]]
        self.seen_refusals = len(refs)
        return out


@dataclass
class Result:
    """What a campaign did and found (the JSON of `secvma fuzz --json`)."""

    seed: int
    cfg: Config
    requested: int = 0
    steps: int = 0
    seconds: float = 0.0
    ops: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    refusals: Counter[str] = field(default_factory=Counter)
    reboots: Counter[str] = field(default_factory=Counter)
    failures: list[Failure] = field(default_factory=list)
    cases: list[str] = field(default_factory=list)
    modules: list[str] = field(default_factory=list)
    tier: str = "sim"

    @property
    def violations(self) -> int:
        return sum(f.kind == "invariant" for f in self.failures)

    @property
    def internal_errors(self) -> int:
        return sum(f.kind != "invariant" for f in self.failures)

    @property
    def ok(self) -> bool:
        return not self.failures

    def to_json(self) -> dict[str, Any]:
        return {
            "steps": self.steps, "steps_requested": self.requested, "seed": self.seed, "smp": self.cfg.smp,
            "policy": self.cfg.policy, "s2": self.cfg.s2, "tier": self.tier,
            "seconds": round(self.seconds, 3),
            "steps_per_second": round(self.steps / self.seconds, 1) if self.seconds else None,
            "ops": dict(sorted(self.ops.items())), "outcomes": dict(sorted(self.outcomes.items())),
            "refusals": dict(self.refusals.most_common()),
            "reboots": dict(sorted(self.reboots.items())),
            "invariant_violations": self.violations, "internal_errors": self.internal_errors,
            "failures": [{"kind": f.kind, "detail": f.detail, "step": f.step}
                         for f in self.failures],
            "cases": self.cases, "modules": self.modules, "ok": self.ok,
        }


def run_campaign(steps: int, seed: int, cfg: Config, modules: dict[str, bytes],
                 *, cases_dir: Path | None = None,
                 progress: Callable[[int], None] | None = None, shrink_s: float = 60.0,
                 max_failures: int = 50) -> Result:
    """`steps` random ops from `seed`; a failing sequence is shrunk and saved under `cases_dir`
    (once per failure signature); stops early after `max_failures` failures."""
    res = Result(seed, cfg, steps, modules=sorted(modules))
    keys = module_keys(modules)
    gen = OpGenerator(seed)
    rig = Rig(cfg, modules, keys)
    trail: list[Op] = []  # ops since the current machine booted
    saved: set[str] = set()
    t0 = time.perf_counter()
    for step in range(steps):
        if step and step % 32 == 0:
            rig.refresh()
        op = gen.draw(rig.world())
        trail.append(op)
        res.ops[op.kind.value] += 1
        rig.steps = step
        try:
            outcome = rig.run(op)
            res.outcomes[f"{op.kind.value}:{outcome}"] += 1
            found = rig.check(full=step % FULL_EVERY == FULL_EVERY - 1 or step == steps - 1)
        except Exception as exc:  # the harness itself (sim, fake kernel): a bug to report
            outcome = ""
            found = [Failure("harness-error", repr(exc), step)]
        res.refusals.update(rig.new_refusals())
        for f in found:
            res.failures.append(f)
            if f.signature not in saved and cases_dir is not None:
                saved.add(f.signature)
                res.cases.append(str(save_case(cases_dir, seed, cfg, trail, f, modules,
                                               shrink_s=shrink_s)))
        reboot = _reboot_reason(rig, found, outcome if not found else "")
        if reboot:
            res.reboots[reboot] += 1
            res.refusals.update(rig.new_refusals())
            rig = Rig(cfg, modules, keys, ram=rig.m.plat.ram)
            trail = []
        elif len(trail) > 2 * MAX_CASE_OPS:
            trail = trail[-MAX_CASE_OPS:]
        if progress is not None:
            progress(step + 1)
        res.steps = step + 1
        if len(res.failures) >= max_failures:
            break
    res.seconds = time.perf_counter() - t0
    return res


def _reboot_reason(rig: Rig, found: list[Failure], outcome: str) -> str:
    """Why the machine cannot go on ('' if it can): a halt, a failure, a hung CPU."""
    if found:
        return "after a failure"
    if rig.steps % EPOCH == EPOCH - 1:
        return "epoch"
    if rig.m.plat.halted:
        return "halted: " + rig.m.plat.halted.split(":", 1)[0]
    if outcome == "stalled":
        return "cpu stalled on a refused store (secvma2024 gap 11)"
    if outcome == UNSIMULATED:
        return "a translation regime the CPU model does not simulate"
    return ""


# --- cases: save, replay, shrink -------------------------------------------------------------


def replay(ops: list[Op], cfg: Config, modules: dict[str, bytes],
           signature: str | None = None) -> Failure | None:
    """Run `ops` on a fresh machine; the first failure (of `signature`, if given), else None."""
    rig = Rig(cfg, modules, module_keys(modules))
    for i, op in enumerate(ops):
        if i and i % 32 == 0:
            rig.refresh()
        rig.steps = i
        try:
            outcome = rig.run(op)
            found = rig.check(full=i == len(ops) - 1)
        except Exception as exc:
            outcome = ""
            found = [Failure("harness-error", repr(exc), i)]
        for f in found:
            if signature is None or f.signature == signature:
                return f
        if found or rig.m.plat.halted or outcome == UNSIMULATED:
            return None
    return None


def shrink(ops: list[Op], cfg: Config, modules: dict[str, bytes], signature: str,
           budget_s: float = 60.0) -> list[Op]:
    """Drop chunks of ops (halves, quarters, ... single ops) while the failure stays."""
    deadline = time.perf_counter() + budget_s
    cur = list(ops)
    chunk = max(len(cur) // 2, 1)
    while chunk >= 1 and time.perf_counter() < deadline:
        i = 0
        changed = False
        while i < len(cur) and time.perf_counter() < deadline:
            cand = cur[:i] + cur[i + chunk:]
            if cand and replay(cand, cfg, modules, signature) is not None:
                cur, changed = cand, True
            else:
                i += chunk
        if not changed:
            chunk //= 2
    return cur


def save_case(cases_dir: Path, seed: int, cfg: Config, trail: list[Op], failure: Failure,
              modules: dict[str, bytes], *, shrink_s: float = 60.0) -> Path:
    """Shrink the failing trail and write it as `<seed>[-n].json` (never overwriting a case)."""
    ops = trail[-MAX_CASE_OPS:]
    if replay(ops, cfg, modules, failure.signature) is not None:
        ops = shrink(ops, cfg, modules, failure.signature, shrink_s)
    cases_dir.mkdir(parents=True, exist_ok=True)
    path = cases_dir / f"{seed}.json"
    n = 1
    while path.exists():
        path = cases_dir / f"{seed}-{n}.json"
        n += 1
    path.write_text(json.dumps({
        "seed": seed, "policy": cfg.policy, "s2": cfg.s2, "smp": cfg.smp,
        "failure": {"kind": failure.kind, "detail": failure.detail,
                    "signature": failure.signature},
        "modules": sorted({op.form for op in ops if op.kind is OpKind.MODULE_LOAD}),
        "ops": [op.to_json() for op in ops]}, indent=1) + "\n")
    return path


def load_case(path: Path) -> tuple[Config, list[Op], dict[str, Any]]:
    """A saved case: its machine, its ops, and the whole record."""
    d = json.loads(path.read_text())
    cfg = Config(d["policy"], d["s2"], int(d["smp"]))
    return cfg, [Op.from_json(o) for o in d["ops"]], d
