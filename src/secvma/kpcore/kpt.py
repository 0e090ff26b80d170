"""Emulation of trapped stores to write-protected table pages (spec §2.6, §3.2-§3.4, §4).

C: kint/HostKpt.c:host_kpt_handler, kint/HostKptOps.c:mapping_handler / unmapping_handler /
update_handler, kint/HostKptAux.c:handle_host_update, kint/HostKptCoreAux.c:fetch_wdata.

Per written slot (P = the table page, L = its level, R = old output, T = new output)::

    old    new    rule                                           counts / pages
    0      0      nothing to do (hardened); C: unmapping of R=0  -
    x      0      unmapping: R host or MMIO                      subcount(R) -1; a table page
                                                                 at 0 is released (zeroed, RW)
    x      inv    stock kernel only (invalid_ok): bit 0 clear,   as unmapping; the value is
                  the MMU ignores it; later stores see it as 0   kept (Linux reads it back)
    0      table  T must be class L+1 (first link: all zero)     subcount(T) +1
                  T NONE -> claim T (zero, RO, class L+1), the
                  store is retried (not done, PC unchanged)
    0      leaf   PXN forced unless T is KCODE/MOD_txt           subcount(T) +1 (hardened: PTE
                                                                 leaves only; C: also blocks)
    x      y      T == R, same shape (hardened), table target    -
                  still L+1; leaf: PXN forced as above

Refused: a malformed descriptor (hardened), a table target of another class, a non-host table
target, an output-address or shape change of a live entry, a store the decoder cannot place.
User PGD pages (EL0_PGD): non-zero entries get PXNTable (hardened: and must be a table
descriptor to a host NONE page). Module text/ro pages: secvma2024 emulates zero stores only;
hardened refuses any store that changes them (INV-MOD: contents stay the verified bytes).

Hardened semantics of a store: every access (STR/STUR/STP/STXR/STLR/DC ZVA, any width) is
merged into the 8-byte slots it touches and each slot's *resulting* descriptor is validated;
all slots are checked before any is written; PXN is set in the resulting descriptor. secvma2024
validates the source register as a descriptor whatever the width (gap 1), keeps only the low
half of a 64-bit STXR (gap 9), and handles STXR / STP #0 / ISV forms only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from secvma.arch.esr import DataAbort, decode_esr
from secvma.arch.insn import (
    UnsupportedInstruction,
    UnsupportedReason,
    Writeback,
    apply_rmw,
    decode_store,
)
from secvma.kpcore.descs import PXN, PXNTABLE, Shape, leaf_pages, out_pa, shape
from secvma.kpcore.fetch import fetch_insn
from secvma.kpcore.hostmem import (
    check_claim,
    commit_claim,
    commit_release_page,
    mark_unsettled,
    retire_init,
)
from secvma.kpcore.pages import (
    EL1_EXEC_CLASSES,
    KPT_BY_LEVEL,
    Owner,
    Usage,
    ref_dec_and_test,
    ref_inc,
)
from secvma.kpcore.refusal import Errno, HypPanic, HypRefusal, Outcome
from secvma.kpcore.state import KState
from secvma.platform import PhysAddr, Platform, Stage2Abort, Vcpu

MASK64 = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class Write:
    """One access inside the faulting page: `size` bytes of `value` at page offset `off`."""

    off: int
    size: int
    value: int


@dataclass(frozen=True, slots=True)
class Store:
    """A trapped store reduced to the page it hit."""

    page: int
    writes: tuple[Write, ...]
    form: str
    writeback: Writeback | None = None
    status_reg: int | None = None
    result: tuple[int, int] | None = None
    """An atomic (FEAT_LSE SWP/LD<op>/CAS): (register, old memory value) to set on success."""


@dataclass
class Plan:
    """What a validated store will do (commit phase input)."""

    slots: dict[int, int] = field(default_factory=dict)  # slot pa -> final u64
    raw: list[tuple[int, bytes]] = field(default_factory=list)  # C-style byte writes
    incs: list[int] = field(default_factory=list)
    decs: list[tuple[int, bool]] = field(default_factory=list)  # (pfn, was a table link)
    claim: tuple[int, Usage] | None = None
    flush: bool = False


def _refuse(rule: str, reason: str, code: Errno = Errno.EPERM, **v: int) -> HypRefusal:
    return HypRefusal(code, rule, reason, **v)


# --- decoding (hardened) ----------------------------------------------------------------------


def decode_hardened(st: KState, plat: Platform, cpu: Vcpu, ev: Stage2Abort,
                    insn_at_elr: Callable[[], int | None] | None = None) -> Store:
    """The store as a list of in-page writes (ISV syndrome, else full instruction decode).

    `insn_at_elr` fetches the trapping instruction when the syndrome has none (default: a
    stage-1 walk of ELR accepted only from kernel or module text, `fetch_insn`).
    """
    page = ev.ipa & ~0xFFF
    syn = decode_esr(ev.esr)
    if isinstance(syn, DataAbort) and syn.isv:
        size = 1 << syn.sas
        off = ev.far & 0xFFF
        value = cpu.x(syn.srt) & ((1 << (8 * size)) - 1)
        return Store(page, (Write(off, size, value),), "isv")
    insn = insn_at_elr() if insn_at_elr is not None else fetch_insn(st, plat, cpu)
    if insn is None:
        raise _refuse("kpt-decode", "no instruction syndrome and the instruction at ELR "
                      "is not in EL1 text", Errno.EINVAL, pc=cpu.elr)

    def read_reg(n: int) -> int:
        if n == 31:
            raise UnsupportedInstruction(insn, UnsupportedReason.UNRECOGNIZED, "SP base")
        return cpu.x(n)

    try:
        op = decode_store(insn, read_reg)
    except UnsupportedInstruction as exc:
        raise _refuse("kpt-decode", f"not an emulable store: {exc}", Errno.EINVAL,
                      insn=insn) from None
    if op.writeback is not None and op.writeback.reg == 31:
        raise _refuse("kpt-decode", "writeback to SP", Errno.EINVAL, insn=insn)
    far_page = ev.far & ~0xFFF & MASK64
    writes = []
    hit = False
    for acc in op.accesses:
        if acc.address & ~0xFFF != far_page or (acc.address & 0xFFF) + acc.size > 4096:
            raise _refuse("kpt-decode", "store reaches outside the faulting page",
                          Errno.EINVAL, va=acc.address, far=ev.far)
        hit |= acc.address <= ev.far < acc.address + acc.size
        writes.append(Write(acc.address & 0xFFF, acc.size, acc.value))
    if not hit:
        raise _refuse("kpt-decode", "decoded store does not cover the faulting address",
                      Errno.EINVAL, insn=insn, far=ev.far)
    result = None
    if op.rmw is not None:  # FEAT_LSE atomic: the value follows from memory's (CPU stopped)
        w = writes[0]
        if w.off % w.size:
            raise _refuse("kpt-store", "misaligned atomic to a table page", Errno.EINVAL,
                          off=w.off, size=w.size)
        old = int.from_bytes(plat.read(PhysAddr(page + w.off), w.size), "little")
        writes = [Write(w.off, w.size, apply_rmw(op, old))]
        result = (op.result_reg if op.result_reg is not None else 31, old)
    return Store(page, tuple(writes), op.mnemonic, op.writeback, op.status_reg, result)


def merge_slots(plat: Platform, store: Store) -> dict[int, tuple[int, int]]:
    """{slot pa: (old, new)} after applying every write in order (natural alignment required)."""
    olds: dict[int, int] = {}
    news: dict[int, bytearray] = {}
    for w in store.writes:
        if w.size > 64 or w.off % min(w.size, 8):
            raise _refuse("kpt-store", "misaligned store to a table page", Errno.EINVAL,
                          off=w.off, size=w.size)
        data = w.value.to_bytes(w.size, "little")
        for k in range(w.size):
            byte_off = w.off + k
            slot = store.page + (byte_off & ~7)
            if slot not in news:
                olds[slot] = plat.read_u64(PhysAddr(slot))
                news[slot] = bytearray(olds[slot].to_bytes(8, "little"))
            news[slot][byte_off & 7] = data[k]
    return {s: (olds[s], int.from_bytes(news[s], "little")) for s in sorted(news)}


# --- per-slot rules (hardened) ----------------------------------------------------------------


def _exec_leaf(st: KState, target: int, level: int) -> bool:
    """Every page the leaf maps is KCODE/MOD_txt (C: the first page only)."""
    n = leaf_pages(level)
    pfn = target >> 12
    i = st.pages.index(pfn)
    if i is None or st.pages.index(pfn + n - 1) is None:
        return False
    if st.policy.quirks.store_width_ignored:
        return Usage(st.pages.usage[i]) in EL1_EXEC_CLASSES
    u = st.pages.usage
    return (u.count(Usage.EL1_KCODE, i, i + n) + u.count(Usage.EL1_MOD_TXT, i, i + n)) == n


def _table_target(st: KState, level: int, target: int, plan: Plan, *, rule: str) -> bool:
    """Check a new table link from a level-`level` table; True if it can be written now."""
    want = KPT_BY_LEVEL[level + 1]
    pfn = target >> 12
    if st.pages.owner_of(pfn) is not Owner.HOST:
        raise _refuse(rule, "table descriptor points outside host RAM", target=target)
    usage = st.pages.usage_of(pfn)
    if usage is want:
        return True
    if usage is Usage.NONE:
        check_claim(st, pfn, want, rule=rule)
        plan.claim = (pfn, want)
        return False
    raise _refuse(rule, f"table descriptor points at a {usage.name} page, need {want.name}",
                  target=target, usage=usage)


def plan_kpt_slot(st: KState, plat: Platform, level: int, slot: int, old: int, new: int,
                  plan: Plan, *, invalid_ok: bool = False) -> None:
    """Validate one slot change of a kernel table at `level` (hardened rules).

    `invalid_ok` (the stock kernel): a non-zero descriptor with bit 0 clear is accepted as
    what the MMU makes of it, no mapping. Linux stores such entries (set_memory_valid(0) on the
    linear alias of freed module memory, kfence) and later sets bit 0 again: that store is
    validated like any new mapping, since an invalid old entry counts as empty.
    """
    rule = f"kpt-L{level}"
    so = shape(old, level, any_nonzero=False)
    sn = shape(new, level, any_nonzero=False)
    if so is Shape.MALFORMED:
        so = Shape.EMPTY
    if sn is Shape.MALFORMED:
        if not (invalid_ok and not new & 1):
            raise _refuse(rule, "malformed descriptor", Errno.EINVAL, value=new)
        sn = Shape.EMPTY
    if old == new:
        plan.slots[slot] = new
        return
    if sn is Shape.EMPTY:
        if new != 0 and not invalid_ok:
            raise _refuse(rule, "non-zero invalid descriptor", Errno.EINVAL, value=new)
        if so is not Shape.EMPTY:
            if so is Shape.TABLE or level == 3:
                plan.decs.append((out_pa(old, level, so) >> 12, so is Shape.TABLE))
            plan.flush = True
        plan.slots[slot] = new
        return
    target = out_pa(new, level, sn)
    if so is Shape.EMPTY:
        if sn is Shape.TABLE:
            if not _table_target(st, level, target, plan, rule=rule):
                return
            if st.pages.subcount_of(target >> 12) == 0 and target >> 12 not in plan.incs \
                    and any(plat.read(PhysAddr(target), 4096)):
                raise _refuse(rule, "first link to a table page that is not empty",
                              Errno.EBUSY, target=target)
        elif not _exec_leaf(st, target, level):
            new |= PXN
        if sn is Shape.TABLE or level == 3:
            plan.incs.append(target >> 12)
        plan.slots[slot] = new
        return
    if sn is not so:
        raise _refuse(rule, "table/leaf change of a live entry (write 0 first)",
                      old=old, value=new)
    if out_pa(old, level, so) != target:
        raise _refuse(rule, "output-address change of a live entry (write 0 first)",
                      old=old, value=new)
    if sn is Shape.TABLE:
        _table_target(st, level, target, plan, rule=rule)
    elif not _exec_leaf(st, target, level):
        new |= PXN
    plan.slots[slot] = new
    plan.flush = True


def plan_user_slot(st: KState, slot: int, old: int, new: int, plan: Plan) -> None:
    """User PGD entry: a table descriptor to a host NONE page, PXNTable forced (hardened)."""
    rule = "user-pgd"
    if new != 0:
        if new & 3 != 3:
            raise _refuse(rule, "user PGD entry is not a table descriptor", Errno.EINVAL,
                          value=new)
        target = new & 0xFFFF_FFFF_F000
        if st.pages.owner_of(target >> 12) is not Owner.HOST \
                or st.pages.usage_of(target >> 12) is not Usage.NONE:
            raise _refuse(rule, "user PGD entry must point at an ordinary host page",
                          target=target, usage=st.pages.usage_of(target >> 12))
        new |= PXNTABLE
    if old != 0 and old != new:
        plan.flush = True
    plan.slots[slot] = new


# --- commit ----------------------------------------------------------------------------------


def _release_tree(st: KState, plat: Platform, pfn: int) -> None:
    """Release a kernel table page whose last link went away, and its unlinked children."""
    usage = st.pages.usage_of(pfn)
    if not usage.is_kpt:
        return
    level = usage.kpt_level
    raw = plat.read(PhysAddr(pfn << 12), 4096)
    for i in range(512):
        e = int.from_bytes(raw[i * 8:i * 8 + 8], "little")
        sh = shape(e, level, any_nonzero=False)
        if sh is Shape.TABLE or (sh is Shape.LEAF and level == 3):
            child = out_pa(e, level, sh) >> 12
            if ref_dec_and_test(st.pages, child):
                _release_tree(st, plat, child)
    commit_release_page(st, plat, pfn)


def _c_unref(st: KState, plat: Platform, pfn: int) -> None:
    """unmapping_handler's count step: release at 1 (any class, gap 17), then -1 (may wrap)."""
    i = st.pages.index(pfn)
    if i is None:
        return
    if st.pages.subcount[i] == 1 and st.pages.owner[i] == Owner.HOST:
        commit_release_page(st, plat, pfn)
    ref_dec_and_test(st.pages, pfn, allow_wrap=True)


def commit_plan(st: KState, plat: Platform, store: Store, plan: Plan) -> None:
    """Write the slots, move the counts, release dead tables, queue TLBI."""
    for slot, value in plan.slots.items():
        plat.write_u64(PhysAddr(slot), value)
    for pa, data in plan.raw:
        plat.write(PhysAddr(pa), data)
    commit_accounting(st, plat, store.page, plan)


def commit_accounting(st: KState, plat: Platform, page: int, plan: Plan, *,
                      flush: bool = True) -> None:
    """A plan's counts, released tables, dirty table and TLBI (`flush=False`: done already,
    by the PTE fast path); the slots are written by the caller."""
    for pfn in plan.incs:
        ref_inc(st.pages, pfn)
    for pfn, _was_table in plan.decs:
        if st.policy.quirks.unmap_count_unchecked:
            _c_unref(st, plat, pfn)
        elif ref_dec_and_test(st.pages, pfn):
            _release_tree(st, plat, pfn)  # no-op unless pfn is a kernel table page
            retire_init(st, pfn)  # init text no longer mapped: ordinary memory (hardened)
    st.dirty_tables.add(page >> 12)
    if flush and plan.flush and not st.policy.quirks.no_s1_tlbi:
        st.s2.pending_flush.add(page)


def finish_insn(cpu: Vcpu, store: Store) -> None:
    """Register side effects of an emulated store, then PC += 4."""
    if store.writeback is not None:
        cpu.set_x(store.writeback.reg, store.writeback.value)
    if store.status_reg is not None:
        cpu.set_x(store.status_reg, 0)
    if store.result is not None:
        cpu.set_x(*store.result)  # XZR (31): ignored
    cpu.skip()


def emulate_hardened(st: KState, plat: Platform, cpu: Vcpu, ev: Stage2Abort,
                     usage: Usage) -> Outcome:
    """Check every slot of the store, then commit all of it (or claim and retry)."""
    store = decode_hardened(st, plat, cpu, ev)
    slots = merge_slots(plat, store)
    plan = Plan()
    for slot, (old, new) in slots.items():
        if usage.is_kpt:
            plan_kpt_slot(st, plat, usage.kpt_level, slot, old, new, plan)
        elif usage is Usage.EL0_PGD:
            plan_user_slot(st, slot, old, new, plan)
        elif new != old:  # C emulates zero stores (text patching); any change is refused
            raise _refuse("module-store", "store to verified module memory", value=new)
        else:
            plan.slots[slot] = new
        if plan.claim is not None:
            break
    if plan.claim is not None:
        pfn, want = plan.claim
        commit_claim(st, plat, pfn, want)
        mark_unsettled(st, pfn, cpu.index)
        return Outcome.RETRY
    commit_plan(st, plat, store, plan)
    finish_insn(cpu, store)
    return Outcome.EMULATED


# --- secvma2024: the C path -------------------------------------------------------------------

STXR_MASK, STXR_W, STXR_X = 0xFFE08000, 0x88000000, 0xC8000000
STP0_MASK, STP0 = 0xFFFF8000, 0xA9000000
STP_ZERO_MASK, STP_ZERO = 0xFFFFFC1F, 0xA9007C1F


@dataclass(frozen=True, slots=True)
class CStore:
    """fetch_wdata's view: the value, how handle_host_update would write it."""

    insn: int
    value: int
    form: str  # "stxr" | "stp" | "isv" | "none"
    size: int
    status_reg: int | None = None


def decode_c(st: KState, plat: Platform, cpu: Vcpu, ev: Stage2Abort, *,
             module: bool = False) -> CStore:
    """C: fetch_instruction + fetch_wdata (module branch: insn uninitialised, gap 8)."""
    insn = 0 if module and st.policy.quirks.uninit_insn_module else fetch_insn(st, plat, cpu)
    insn = insn or 0
    syn = decode_esr(ev.esr)
    if insn & STXR_MASK in (STXR_W, STXR_X):
        rt, rs = insn & 31, (insn >> 16) & 31
        x_form = insn & STXR_MASK == STXR_X
        value = cpu.x(rt) if x_form else cpu.x(rt) & 0xFFFF_FFFF
        return CStore(insn, value, "stxr", 8 if x_form else 4, rs)
    if insn & STP0_MASK == STP0:
        return CStore(insn, 0, "stp", 16)
    if isinstance(syn, DataAbort) and syn.isv:
        return CStore(insn, cpu.x(syn.srt), "isv", 1 << syn.sas)
    return CStore(insn, 0, "none", 0)


def _c_write(st: KState, cpu: Vcpu, ev: Stage2Abort, cs: CStore, value: int, *,
             pool_none: bool, rule: str) -> list[tuple[int, bytes]]:
    """handle_host_update: the bytes written, or a panic (ISV=0 outside the pool STP case)."""
    pa = ev.ipa & ~0xFFF
    off = ev.far & 0xFFF
    if cs.form == "stxr":
        if st.policy.quirks.stxr_drops_high_half:
            value &= 0xFFFF_FFFF  # stxr_write_handler_asm takes a u32 (gap 9)
        return [(pa + off, (value & ((1 << (8 * cs.size)) - 1)).to_bytes(cs.size, "little"))]
    if cs.form == "stp" and pool_none:
        if off + 16 > 4096:
            raise HypPanic(Errno.EINVAL, rule, "STP crosses the page", off=off)
        if cs.insn & STP_ZERO_MASK == STP_ZERO:
            return [(pa + off, bytes(16))]
        t, t2 = cs.insn & 31, (cs.insn >> 10) & 31
        return [(pa + off, cpu.x(t).to_bytes(8, "little") + cpu.x(t2).to_bytes(8, "little"))]
    syn = decode_esr(ev.esr)
    if not (isinstance(syn, DataAbort) and syn.isv) or off + cs.size > 4096:
        raise HypPanic(Errno.EINVAL, rule, "store without instruction syndrome",
                       insn=cs.insn)
    size = 1 << syn.sas
    return [(pa + off, (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little"))]


def _c_old(plat: Platform, ev: Stage2Abort) -> int:
    pa = ev.ipa & ~0xFFF
    off = ev.far & 0xFFF
    data = plat.read(PhysAddr(pa + off), min(8, 4096 - off))
    return int.from_bytes(data, "little")


def emulate_c(st: KState, plat: Platform, cpu: Vcpu, ev: Stage2Abort, usage: Usage) -> Outcome:
    """secvma2024: host_kpt_handler for kpt / EL0_PGD / module / pool pages."""
    page = ev.ipa & ~0xFFF
    module = usage in (Usage.EL1_MOD_TXT, Usage.EL1_MOD_RO)
    cs = decode_c(st, plat, cpu, ev, module=module)
    store = Store(page, (), cs.form, None, cs.status_reg)
    plan = Plan()
    if usage.is_kpt:
        outcome = _plan_c_kpt(st, plat, cpu, ev, cs, usage.kpt_level, plan)
        if outcome is not Outcome.EMULATED:
            return outcome
    elif usage is Usage.EL0_PGD:
        value = cs.value | PXNTABLE if cs.value else 0
        plan.raw = _c_write(st, cpu, ev, cs, value, pool_none=False, rule="user-pgd")
    elif module:
        if cs.value != 0:
            raise HypPanic(Errno.EPERM, "module-store", "non-zero store to module memory",
                           value=cs.value)
        plan.raw = _c_write(st, cpu, ev, cs, 0, pool_none=False, rule="module-store")
    else:  # a NONE page under the page-table pool's read-only block
        plan.raw = _c_write(st, cpu, ev, cs, cs.value, pool_none=True, rule="pool-store")
    commit_plan(st, plat, store, plan)
    finish_insn(cpu, store)
    return Outcome.EMULATED


def _plan_c_kpt(st: KState, plat: Platform, cpu: Vcpu, ev: Stage2Abort, cs: CStore,
                level: int, plan: Plan) -> Outcome:
    """mapping / unmapping / update handlers; fills `plan` or returns STALL / RETRY."""
    rule = f"kpt-L{level}"
    value = cs.value
    old = _c_old(plat, ev)
    new_sh = shape(value, level, any_nonzero=True)
    target = value & 0xFFFF_FFFF_F000
    if value == 0:
        r = old & 0xFFFF_FFFF_F000
        if st.pages.owner_of(r >> 12) not in (Owner.HOST, Owner.INVALID):
            raise HypPanic(Errno.EPERM, rule, "unmapping a non-host page", target=r)
        plan.raw = _c_write(st, cpu, ev, cs, 0, pool_none=False, rule=rule)
        plan.decs.append((r >> 12, True))
        return Outcome.EMULATED
    if old != 0:
        r = old & 0xFFFF_FFFF_F000
        if r != target:
            raise HypRefusal(Errno.EPERM, rule, "output-address change of a live entry",
                             old=old, value=value)
        if st.pages.owner_of(r >> 12) not in (Owner.HOST, Owner.INVALID):
            raise HypPanic(Errno.EPERM, rule, "update of a non-host mapping", target=r)
    if new_sh is Shape.TABLE:
        want = KPT_BY_LEVEL[level + 1]
        usage = st.pages.usage_of(target >> 12)
        if usage is Usage.NONE:
            if st.pages.owner_of(target >> 12) is not Owner.HOST:
                raise HypRefusal(Errno.EPERM, rule, "table target not host-owned",
                                 target=target)
            check_claim(st, target >> 12, want, rule=rule)
            commit_claim(st, plat, target >> 12, want)
            mark_unsettled(st, target >> 12, cpu.index)
            return Outcome.RETRY
        if usage is not want:
            raise HypRefusal(Errno.EPERM, rule, f"table target is {usage.name}, "
                             f"need {want.name}", target=target, usage=usage)
    elif st.pages.usage_of(target >> 12) not in EL1_EXEC_CLASSES:
        value |= PXN
    plan.raw = _c_write(st, cpu, ev, cs, value, pool_none=False, rule=rule)
    if old == 0:
        plan.incs.append(target >> 12)
    return Outcome.EMULATED


# --- module text execute permission (for the in-hypervisor module loader) ---------------------


def protected_walk(st: KState, plat: Platform, va: int) -> tuple[int, int, int, Shape] | None:
    """(slot PA, entry, level, shape) where the walk of `va` through swapper_pg_dir ends.

    The walk only follows links into protected kernel table pages; None when a link leaves
    them (the kernel could change such a table behind the hypervisor's back). Requires an
    installed boot (HVC 6).
    """
    assert st.boot is not None
    table, level = st.boot.swapper_pg_dir, 0
    while True:
        slot = table + 8 * ((va >> (39 - 9 * level)) & 511)
        e = plat.read_u64(PhysAddr(slot))
        sh = shape(e, level, any_nonzero=st.policy.quirks.mark_ex_trusts_table)
        if sh is not Shape.TABLE or level == 3:
            return slot, e, level, sh
        table, level = out_pa(e, level, sh), level + 1
        if not st.pages.usage_of(table >> 12).is_kpt:
            return None


def set_module_exec(st: KState, plat: Platform, va: int, expect_pa: int, enable: bool) -> None:
    """Clear (enable) or set PXN on the kernel entry mapping module text at `va`.

    C: kint/HostModuleAux.c:mark_ex / HostModuleCore.c:get_page_entry. secvma2024 (gap 2)
    edits whatever entry currently maps `va` (possibly a 2 MiB/1 GiB block, or a page remapped
    by another CPU after authentication). hardened only edits a level-3 leaf whose output is
    `expect_pa` and whose class is MOD_txt; anything else is refused (EPERM), nothing written.
    """
    rule = "mark-ex"
    if st.boot is None:
        raise _refuse(rule, "not installed", Errno.EINVAL)
    found = protected_walk(st, plat, va)
    if found is None:
        raise _refuse(rule, "walk left the protected tables", va=va)
    slot, e, level, sh = found
    if sh is not Shape.LEAF:
        raise _refuse(rule, "module VA is not mapped", Errno.ENOENT, va=va)
    if not st.policy.quirks.mark_ex_trusts_table:
        target = out_pa(e, level, sh)
        if level != 3 or target != expect_pa & ~0xFFF \
                or st.pages.usage_of(target >> 12) is not Usage.EL1_MOD_TXT:
            raise _refuse(rule, "entry does not map the authenticated module page", va=va,
                          level=level, target=target)
    plat.write_u64(PhysAddr(slot), e & ~PXN if enable else e | PXN)
    st.s2.pending_flush.add(slot & ~0xFFF)
    st.dirty_tables.add(slot >> 12)
