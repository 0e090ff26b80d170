"""Transparent mode: KPCore's policy for an *unmodified* kernel (Debian arm64 Linux 6.1).

A stock kernel makes no SECvma hypercalls, so the roots, table pages and kernel text are
learned from traps instead of HVC 6 (ARCHITECTURE.md "transparent mode",
qemu-platform.md §3.4, §4 issues 9-11). The same page-usage table (`pages.PageTable`),
stage-2 manager (`stage2.Stage2`) and hardened table-store rules (`kpt.plan_kpt_slot`) as
the testbed policy are used; only the discovery and the register rules differ.

    event                    rule (transparent)
    CpuStart                 identity stage 2 (hypervisor region unmapped), HCR TVM|TSC;
                             CONTEXTIDR_EL1/FAR_EL1 MSRs done by the trampoline (fast path)
    TTBR1_EL1 before swapper learn: the first base is reserved_pg_dir; swapper_pg_dir is
                             reserved + 4 KB (6.1 linker layout; else the third distinct
                             base). At swapper's first load: walk it, protect every table
                             page (EL1_PGD..PTE, stage-2 RO), text = the lowest executable
                             run of the kernel image mapping (EL1_KCODE, stage-2 RO+X),
                             reserved_pg_dir kept empty (RO), tramp_pg_dir (reserved - 4 KB,
                             KPTI) claimed as a root while still empty
             after           only a learned root (ASID and CnP bits free)   else refused
    SCTLR/TCR/MAIR_EL1       free until the CPU runs on swapper with its MMU on; then
                             pinned to that value (same value fine)          else refused
    TTBR0, AMAIR, ESR, FAR,  allowed (user roots are not discoverable without HVC 33)
    AFSR0/1, CONTEXTIDR
    store to a table page    kpt hardened rules: every touched slot validated; new tables
                             claimed before the link is written (must be empty); a leaf
                             that is EL1-executable and does not map kernel text gets PXN
    store to kernel text     emulated (instruction patching: alternatives, jump labels),
                             counted in `text_patches`; no content validation (limitation)
    other stage-2 faults     outside the map: abort injected; write to other RO: refused
    HVC                      x0 = -1 (SMCCC NOT_SUPPORTED): a stock kernel has no SECvma ABI
    other trap               undefined instruction (EC 0) injected, refusal logged

A refusal is logged (`refusals`, with its rule) and delivered to EL1 as kpcore's hardened
policy does (data abort with a permission FSC, or EC 0 for an MSR). `handle()` never raises:
a model bug is recorded in `internal_errors` and halts the machine.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from secvma.arch.descriptors import OA_MASK, PXN, PXNTABLE, DescKind, level_size
from secvma.arch.el2 import HCR_BSU_IS, HCR_FB, HCR_RW, HCR_TSC, HCR_TVM, HCR_VM
from secvma.arch.walk import AccessType, Perm, Visit, VisitCtx, WalkAction, s2_perms, walk
from secvma.kpcore import dma, dmaidentity, kpt
from secvma.kpcore.faults import inject_refusal
from secvma.kpcore.fetch import s1_translate
from secvma.kpcore.hostmem import commit_claim, set_class
from secvma.kpcore.pages import KPT_BY_LEVEL, Owner, Usage, commit_classify, pa_of, ref_inc
from secvma.kpcore.policy import policy_named
from secvma.kpcore.refusal import Errno, HypRefusal, Outcome, Refusal, log
from secvma.kpcore.stage2 import VTCR_4G, PermKind
from secvma.kpcore.state import KState
from secvma.outside import OutsideMapGuard
from secvma.platform import (
    CpuStart,
    Event,
    GuestMemoryError,
    Hvc,
    OtherTrap,
    PhysAddr,
    Platform,
    Smc,
    Stage2Abort,
    SysReg,
    SysregTrap,
    Unexpected,
    Vcpu,
)

HCR_TRANSPARENT = HCR_RW | HCR_VM | HCR_TSC | HCR_FB | HCR_BSU_IS | HCR_TVM
TTBR_BADDR = 0x0000_FFFF_FFFF_FFFE
SMCCC_NOT_SUPPORTED = (1 << 64) - 1
SCTLR_M = 1
PAGE = 0x1000
PINNED_REGS = (SysReg.SCTLR_EL1, SysReg.TCR_EL1, SysReg.MAIR_EL1)
ALLOWED_REGS = (SysReg.TTBR0_EL1, SysReg.AMAIR_EL1, SysReg.CONTEXTIDR_EL1, SysReg.ESR_EL1,
                SysReg.FAR_EL1, SysReg.AFSR0_EL1, SysReg.AFSR1_EL1)
FAST_PATH = [SysReg.CONTEXTIDR_EL1, SysReg.FAR_EL1]
MAX_WALK_LEAVES = 4 << 20
"""A learn walk that visits more leaves than this is a hostile table tree: stop learning."""
MAX_TEXT_STORE = 8
"""Largest single access emulated into kernel text (an instruction patch is 4 bytes)."""


@dataclass
class TCpu:
    """Per-vCPU register view for the pinning rule."""

    on_swapper: bool = False
    mmu_on: bool = False
    locked: bool = False
    pinned: dict[SysReg, int] = field(default_factory=dict)


@dataclass
class Learned:
    """What the TTBR1 sequence and the swapper walk taught the hypervisor."""

    bases: list[int] = field(default_factory=list)  # distinct TTBR1 bases, in order (first 8)
    reserved: int | None = None
    swapper: int | None = None
    tramp: int | None = None
    roots: set[int] = field(default_factory=set)
    empty_roots: set[int] = field(default_factory=set)  # must stay all-zero (reserved_pg_dir)
    text: tuple[int, int] | None = None  # kernel text [lo, hi) PA
    text_va: int = 0
    init_text: list[tuple[int, int]] = field(default_factory=list)  # other exec runs (PA)
    tables: dict[int, int] = field(default_factory=lambda: {0: 0, 1: 0, 2: 0, 3: 0})
    leaves_counted: int = 0


@dataclass(slots=True)
class InternalError:
    event: str
    error: str


class _Walk:
    """Visitor state of the learn walk over one root."""

    def __init__(self, st: KState, plat: Platform) -> None:
        self.st = st
        self.plat = plat
        self.tables: list[tuple[int, int]] = []  # (pa, level)
        self.links: list[int] = []  # pfns to ref_inc (table links and L3 leaf targets)
        self.exec_leaves: list[tuple[int, int, int]] = []  # (va, pa, size)
        self.nx: list[tuple[int, int]] = []  # VA ranges under a PXNTable table
        self.leaves = 0
        self.refused: list[str] = []

    def visit(self, ctx: VisitCtx) -> WalkAction:
        if ctx.kind is DescKind.TABLE:
            child = ctx.old & OA_MASK
            if not self.st.is_host_ram(child):
                self.refused.append(f"table link to non-host {child:#x} at {ctx.slot_pa:#x}")
                return WalkAction.SKIP
            self.tables.append((child, ctx.level + 1))
            self.links.append(child >> 12)
            if ctx.old & PXNTABLE:
                self.nx.append((ctx.addr, ctx.addr + level_size(ctx.level)))
            return WalkAction.CONTINUE
        self.leaves += 1
        if self.leaves > MAX_WALK_LEAVES:
            self.refused.append("walk too large")
            return WalkAction.STOP
        size = level_size(ctx.level)
        pa = ctx.old & OA_MASK & ~(size - 1)
        if ctx.level == 3:
            self.links.append(pa >> 12)
        if not ctx.old & PXN and not any(lo <= ctx.addr < hi for lo, hi in self.nx):
            self.exec_leaves.append((ctx.addr, pa, size))
        return WalkAction.CONTINUE


class TransparentKPCore:
    """KPCore's protections for an unmodified kernel (`secvma.platform.Hypervisor`)."""

    def __init__(self, *, protect_tables: bool = False) -> None:
        self.protect_tables = protect_tables
        self.policy = policy_named("hardened")
        self.st: KState | None = None
        self.learned = Learned()
        self.cpus: dict[int, TCpu] = {}
        self.stats: Counter[str] = Counter()
        self.internal_errors: list[InternalError] = []
        self.outside = OutsideMapGuard()
        self.text_log: list[tuple[int, int, int]] = []
        self.text_locked = False

    # --- public surface -----------------------------------------------------------------

    @property
    def refusals(self) -> list[Refusal]:
        return [] if self.st is None else self.st.refusals

    @property
    def state(self) -> KState:
        if self.st is None:
            raise RuntimeError("TransparentKPCore has not seen its machine yet")
        return self.st

    def attach(self, platform: Platform) -> KState:
        if self.st is None:
            st = KState.create(platform, self.policy)
            hyp_lo, hyp_hi = st.hyp_range
            st.s2.map_leaf(0, 1, PermKind.DEVICE)  # 0-1 GiB: devices (GIC, UART, ...)
            ram_lo, ram_hi = platform.ram_base, platform.ram_base + platform.ram_size
            for pa in range(ram_lo & ~(level_size(2) - 1), min(ram_hi, 1 << 32), level_size(2)):
                end = pa + level_size(2)
                if pa < ram_lo or end > ram_hi or (pa < hyp_hi and end > hyp_lo):
                    continue
                st.s2.map_leaf(pa, 2, PermKind.OPEN)
            dmaidentity.hide_window(st, platform)  # SMMU registers: the hypervisor's only
            dmaidentity.attach(st, platform)  # devices: IOVA = PA of ordinary pages only
            self.st = st
        return self.st

    def poll(self, platform: Platform) -> None:
        """Between traps: drain the SMMU's event queue into `refusals`."""
        if self.st is not None and self.st.dma is not None:
            try:
                dma.drain_faults(self.st)
            except Exception as exc:  # as in handle
                self.internal_errors.append(InternalError("poll", repr(exc)))
                platform.halt(f"transparent kpcore internal error: {exc!r}")

    def summary(self) -> dict[str, object]:
        """JSON-able counters: what was learned, protected, emulated and refused."""
        ln = self.learned
        st = self.st
        out: dict[str, object] = {
            "ttbr1_bases": [f"{b:#x}" for b in ln.bases],
            "swapper_pg_dir": None if ln.swapper is None else f"{ln.swapper:#x}",
            "reserved_pg_dir": None if ln.reserved is None else f"{ln.reserved:#x}",
            "tramp_pg_dir": None if ln.tramp is None else f"{ln.tramp:#x}",
            "text": None if ln.text is None else [f"{ln.text[0]:#x}", f"{ln.text[1]:#x}"],
            "init_text_runs": len(ln.init_text),
            "stats": dict(sorted(self.stats.items())),
            "refusals": [r.as_dict() for r in self.refusals],
            "internal_errors": [f"{e.event}: {e.error}" for e in self.internal_errors],
        }
        if st is not None:
            out["table_pages"] = {u.name: len(st.pages.pages_of(u)) for u in KPT_BY_LEVEL}
            out["kcode_pages"] = len(st.pages.pages_of(Usage.EL1_KCODE))
            out["stage2"] = st.s2.histogram()
            out["dma"] = dma.summary(st)
        return out

    def handle(self, platform: Platform, cpu: Vcpu, event: Event) -> None:
        st = self.attach(platform)
        self.stats["trap." + type(event).__name__] += 1
        try:
            self._dispatch(st, platform, cpu, event)
            st.s2.flush(platform, cpu)
            if st.dma is not None:
                dma.end_of_trap(st, cpu)
        except Exception as exc:  # a model bug: record, stop the machine, never propagate
            log.exception("transparent kpcore internal error on %r", event)
            self.internal_errors.append(InternalError(repr(event), repr(exc)))
            platform.halt(f"transparent kpcore internal error: {exc!r}")

    # --- dispatch -----------------------------------------------------------------------

    def _dispatch(self, st: KState, plat: Platform, cpu: Vcpu, ev: Event) -> None:
        if isinstance(ev, CpuStart):
            self.cpus[cpu.index] = TCpu()  # PSCI CPU_ON: a fresh boot, registers free again
            cpu.set_stage2(st.s2.vttbr(), VTCR_4G, HCR_TRANSPARENT)
            fast = getattr(cpu, "set_fast_path", None)
            if fast is not None:
                fast(FAST_PATH)
        elif isinstance(ev, Smc):
            cpu.smc_passthrough()
        elif isinstance(ev, Hvc):
            cpu.set_x(0, SMCCC_NOT_SUPPORTED)
        elif isinstance(ev, SysregTrap):
            self._guard(st, plat, cpu, ev, lambda: self._sysreg(st, plat, cpu, ev))
        elif isinstance(ev, Stage2Abort):
            self._guard(st, plat, cpu, ev, lambda: self._abort(st, plat, cpu, ev))
        elif isinstance(ev, OtherTrap):
            self._refused(st, plat, cpu, ev, HypRefusal(
                Errno.EINVAL, "trap-class", "unexpected exception class", esr=ev.esr))
        elif isinstance(ev, Unexpected):
            plat.halt(f"transparent kpcore: unexpected EL2 exception {ev!r}")

    def _guard(self, st: KState, plat: Platform, cpu: Vcpu, ev: Event,
               fn: Callable[[], None]) -> None:
        try:
            fn()
        except HypRefusal as err:
            self._refused(st, plat, cpu, ev, err)

    def _refused(self, st: KState, plat: Platform, cpu: Vcpu, ev: Event,
                 err: HypRefusal) -> None:
        rec = Refusal(err.rule, err.code, err.reason, Outcome.REFUSED, cpu.index, cpu.elr,
                      dict(err.values))
        if len(st.refusals) < 10_000:
            st.refusals.append(rec)
        self.stats["refused"] += 1
        log.info("refused: %s", rec)
        inject_refusal(plat, cpu, ev)

    # --- system registers ---------------------------------------------------------------

    def _sysreg(self, st: KState, plat: Platform, cpu: Vcpu, ev: SysregTrap) -> None:
        reg = ev.reg
        if not ev.is_write or reg is None:
            raise HypRefusal(Errno.EINVAL, "sysreg", f"unexpected trapped access {ev.encoding}")
        c = self.cpus.setdefault(cpu.index, TCpu())
        value = ev.value
        if reg is SysReg.TTBR1_EL1:
            self._ttbr1(st, plat, cpu, c, value)
        elif reg in PINNED_REGS:
            if c.locked:
                pinned = c.pinned.get(reg, value)
                if value != pinned:
                    raise HypRefusal(Errno.EPERM, "pinned-sysreg",
                                     f"{reg.name} is pinned once the CPU runs on swapper",
                                     value=value, pinned=pinned)
            elif reg is SysReg.SCTLR_EL1:
                c.mmu_on = bool(value & SCTLR_M)
        elif reg not in ALLOWED_REGS:
            raise HypRefusal(Errno.EPERM, "sysreg", f"{reg.name} writes are not emulated",
                             value=value)
        self.stats["msr." + reg.name] += 1
        cpu.write_sysreg(reg, value)
        cpu.skip()
        if not c.locked and c.on_swapper and c.mmu_on:
            self._lock(cpu, c, value if reg is SysReg.SCTLR_EL1 else None)

    def _lock(self, cpu: Vcpu, c: TCpu, sctlr: int | None) -> None:
        """The CPU runs on swapper with its MMU on: pin SCTLR/TCR/MAIR at their values."""
        c.locked = True
        for reg in PINNED_REGS:
            c.pinned[reg] = cpu.read_sysreg(reg)
        if sctlr is not None:
            c.pinned[SysReg.SCTLR_EL1] = sctlr
        self.stats["cpus_locked"] += 1

    def _ttbr1(self, st: KState, plat: Platform, cpu: Vcpu, c: TCpu, value: int) -> None:
        ln = self.learned
        base = value & TTBR_BADDR
        if ln.swapper is None:
            if base not in ln.bases and len(ln.bases) < 8:
                ln.bases.append(base)
            if ln.reserved is None:
                ln.reserved = base
            elif (base == ln.reserved + PAGE or (len(ln.bases) >= 3 and base == ln.bases[2])) \
                    and st.is_host_ram(base):
                self._learn(st, plat, cpu, base)
        elif base not in ln.roots:
            raise HypRefusal(Errno.EPERM, "ttbr1-root", "TTBR1 base is not a learned kernel root",
                             value=value, swapper=ln.swapper)
        else:
            self.stats["ttbr1_checked"] += 1
        c.on_swapper = base == ln.swapper if ln.swapper is not None else False
        if c.on_swapper and not c.mmu_on:
            c.mmu_on = bool(cpu.read_sysreg(SysReg.SCTLR_EL1) & SCTLR_M)

    # --- learning -----------------------------------------------------------------------

    def _learn(self, st: KState, plat: Platform, cpu: Vcpu, swapper: int) -> None:
        """swapper_pg_dir is being loaded: learn the roots (and protect tables and text)."""
        ln = self.learned
        ln.swapper = swapper
        ln.roots = {swapper}
        assert ln.reserved is not None
        if not self.protect_tables:
            for pa in (ln.reserved, ln.reserved - PAGE):  # reserved_pg_dir, tramp_pg_dir
                if pa != swapper and st.is_host_ram(pa) and not any(plat.read(PhysAddr(pa), PAGE)):
                    ln.roots.add(pa)
                    if pa == ln.reserved:
                        ln.empty_roots.add(pa)
                    else:
                        ln.tramp = pa
            return
        st.installed = True  # stage-2 kinds by class from now on (hostmem.desired_kind)
        tcr = cpu.read_sysreg(SysReg.TCR_EL1)
        t1sz = (tcr >> 16) & 0x3F or 16
        ia_bits = 64 - t1sz
        start_level = max(0, 4 - (ia_bits - 12 + 8) // 9)
        w = _Walk(st, plat)
        walk(self._reader(plat), PhysAddr(swapper), (1 << 64) - (1 << ia_bits), 1 << ia_bits,
             w.visit, visit=Visit.LEAF | Visit.TABLE_PRE, start_level=start_level,
             ia_bits=ia_bits)
        for msg in w.refused:
            self._log_learn_refusal(st, cpu, msg)
        self._claim_existing(st, swapper, start_level)
        for pa, level in w.tables:
            self._claim_existing(st, pa, level)
        for pfn in w.links:
            ref_inc(st.pages, pfn)
        ln.leaves_counted = w.leaves
        # kernel text: the lowest-VA run of EL1-executable leaves; later runs are init text
        runs: list[list[int]] = []  # [va_lo, va_hi, pa_lo, pa_hi]
        for va, pa, size in sorted(w.exec_leaves):
            if runs and runs[-1][1] == va and runs[-1][3] == pa:
                runs[-1][1] += size
                runs[-1][3] += size
            else:
                runs.append([va, va + size, pa, pa + size])
        if runs:
            _va_lo, _va_hi, lo, hi = runs[0]
            ln.text, ln.text_va = (lo, hi), _va_lo
            for pa in range(lo, hi, PAGE):  # class now, stage-2 read-only at the text lock
                if st.is_host_ram(pa) and st.pages.usage_of(pa >> 12) is Usage.NONE:
                    commit_classify(st.pages, pa >> 12, Usage.EL1_KCODE, overwrite=False)
            ln.init_text = [(r[2], r[3]) for r in runs[1:]]
        # reserved_pg_dir stays an empty root; tramp_pg_dir (KPTI) is the page before it
        for pa, empty in ((ln.reserved, True), (ln.reserved - PAGE, False)):
            if pa == swapper or not st.is_host_ram(pa) \
                    or st.pages.usage_of(pa >> 12) is not Usage.NONE \
                    or any(plat.read(PhysAddr(pa), PAGE)):
                continue
            set_class(st, pa >> 12, Usage.EL1_PGD)
            ln.roots.add(pa)
            if empty:
                ln.empty_roots.add(pa)
            else:
                ln.tramp = pa
        self.stats["learned_tables"] = len(w.tables) + 1
        st.s2.pending_flush.add(-1)

    def _claim_existing(self, st: KState, pa: int, level: int) -> None:
        """Mark an existing (non-empty) table page of `level` and write-protect it."""
        pfn = pa >> 12
        usage = st.pages.usage_of(pfn)
        want = KPT_BY_LEVEL[level]
        if usage is want:
            return
        if usage is not Usage.NONE or st.pages.owner_of(pfn) is not Owner.HOST:
            self.stats["learn_conflicts"] += 1
            return
        set_class(st, pfn, want)
        self.learned.tables[level] += 1

    def _log_learn_refusal(self, st: KState, cpu: Vcpu, msg: str) -> None:
        st.refusals.append(Refusal("learn-walk", Errno.EPERM, msg, Outcome.REFUSED, cpu.index,
                                   cpu.elr, {}))

    @staticmethod
    def _reader(plat: Platform) -> Callable[[PhysAddr], int]:
        def read_u64(pa: PhysAddr) -> int:
            try:
                return plat.read_u64(pa)
            except (GuestMemoryError, ValueError):
                return 0  # outside RAM: reads as an invalid descriptor

        return read_u64

    # --- stage-2 aborts -----------------------------------------------------------------

    def _abort(self, st: KState, plat: Platform, cpu: Vcpu, ev: Stage2Abort) -> None:
        ipa = ev.ipa
        hit = st.s2.leaf(ipa) if 0 <= ipa < 1 << 32 else None
        if hit is None:
            self.outside.abort(plat, cpu, ev)
            return
        perms = s2_perms(hit[2], 0 if ev.from_el0 else 1, feat_xnx=False)
        need = Perm.X if ev.is_fetch else Perm.W if ev.is_write else Perm.R
        if need in perms:  # a stale TLB entry (the leaf was relaxed since)
            st.s2.pending_flush.add(ipa & ~0xFFF)
            self.stats["s2_stale"] += 1
            return
        pfn = ipa >> 12
        usage = st.pages.usage_of(pfn)
        if ev.is_write and not ev.is_fetch and not ev.from_el0:
            if usage.is_kpt:
                self._table_store(st, plat, cpu, ev, usage)
                return
            if usage is Usage.EL1_KCODE:
                self._text_store(st, plat, cpu, ev)
                return
        access = "fetch" if ev.is_fetch else "write" if ev.is_write else "read"
        raise HypRefusal(Errno.EPERM, "s2-permission",
                         f"{access} not permitted on a {usage.name} page", ipa=ipa)

    def _fetch(self, st: KState, plat: Platform, cpu: Vcpu) -> int | None:
        """The instruction at ELR if it lies in kernel text or init text (stage-1 walk)."""
        pc = cpu.elr
        if pc % 4:
            return None
        hit = s1_translate(plat, cpu, pc, AccessType.FETCH)
        if hit is None:
            return None
        pa = hit[0]
        in_init = any(lo <= pa < hi for lo, hi in self.learned.init_text)
        if st.pages.usage_of(pa >> 12) is not Usage.EL1_KCODE and not in_init:
            return None
        if not st.is_host_ram(pa):
            return None
        return int.from_bytes(plat.read(PhysAddr(pa), 4), "little")

    def _decode(self, st: KState, plat: Platform, cpu: Vcpu, ev: Stage2Abort) -> kpt.Store:
        """The store as in-page writes: the ISV syndrome, else the decoded instruction."""
        return kpt.decode_hardened(st, plat, cpu, ev, lambda: self._fetch(st, plat, cpu))

    def _table_store(self, st: KState, plat: Platform, cpu: Vcpu, ev: Stage2Abort,
                     usage: Usage) -> None:
        """Validate every slot the store touches (kpt hardened rules), then commit or claim."""
        store = self._decode(st, plat, cpu, ev)
        slots = kpt.merge_slots(plat, store)
        plan = kpt.Plan()
        frozen = store.page in self.learned.empty_roots
        for slot, (old, new) in slots.items():
            if frozen and new != 0:
                raise HypRefusal(Errno.EPERM, "reserved-pgd", "reserved_pg_dir must stay empty",
                                 value=new)
            kpt.plan_kpt_slot(st, plat, usage.kpt_level, slot, old, new, plan)
            if plan.claim is not None:
                break
        if plan.claim is not None:
            pfn, want = plan.claim
            if any(plat.read(pa_of(pfn), PAGE)):
                raise HypRefusal(Errno.EBUSY, "table-claim", "a new table page must be empty "
                                 "when it is first linked", pfn=pfn)
            commit_claim(st, plat, pfn, want)  # RO at stage 2; retried with PC unchanged
            self.stats["tables_claimed"] += 1
            return
        kpt.commit_plan(st, plat, store, plan)
        kpt.finish_insn(cpu, store)
        self.stats["table_stores"] += 1
        if not self.text_locked and usage is Usage.EL1_PTE and self._unmaps_init_text(slots):
            self.lock_text(st)
        if any((new & PXN) and not (slots[s][1] & PXN) for s, new in plan.slots.items()):
            self.stats["pxn_fixups"] += 1

    def _unmaps_init_text(self, slots: dict[int, tuple[int, int]]) -> bool:
        """A PTE of the init-text run is being cleared: free_initmem, the end of boot."""
        for old, new in slots.values():
            if new == 0 and old & 3 == 3:
                pa = old & OA_MASK
                if any(lo <= pa < hi for lo, hi in self.learned.init_text):
                    return True
        return False

    def lock_text(self, st: KState) -> None:
        """Make every kernel text page read-only (and executable) at stage 2.

        Until then text stays writable at stage 2: boot patches tens of thousands of
        instructions (ftrace call sites, alternatives, jump labels), and code written by
        Python through the shared RAM is not seen by QEMU's translated blocks (issue 6).
        """
        self.text_locked = True
        for pfn in st.pages.pages_of(Usage.EL1_KCODE):
            set_class(st, pfn, Usage.EL1_KCODE)
        st.s2.pending_flush.add(-1)
        self.stats["text_locked"] = 1

    def _text_store(self, st: KState, plat: Platform, cpu: Vcpu, ev: Stage2Abort) -> None:
        """Kernel text patching (alternatives, jump labels): emulated, flushed to fetch."""
        store = self._decode(st, plat, cpu, ev)
        for w in store.writes:
            if w.size > MAX_TEXT_STORE or w.off % min(w.size, 4):
                raise HypRefusal(Errno.EPERM, "text-store", "only aligned instruction-sized "
                                 "stores may patch kernel text", off=w.off, size=w.size)
        for w in store.writes:
            plat.write(PhysAddr(store.page + w.off), w.value.to_bytes(w.size, "little"))
        plat.flush_code(cpu, PhysAddr(store.page), PAGE)
        kpt.finish_insn(cpu, store)
        self.stats["text_patches"] += 1
        if len(self.text_log) < 1000:  # first patches, for diagnosis
            self.text_log.append((store.page + store.writes[0].off, cpu.elr, store.writes[0].size))


__all__ = ["TransparentKPCore"]
