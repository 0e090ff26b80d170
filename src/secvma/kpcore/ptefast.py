"""The PTE fast path: harmless kernel PTE stores done by the machine, replayed here (issue 14).

A kernel loading a module maps and unmaps thousands of pages through level-3 tables the
hypervisor write-protects (the testbed's module area: ~1 860 stores per xfs load), and each
was a round trip to Python. On a platform with `PteFastPath` (the trampoline) this module marks
two bitmaps and enables the machine to carry out exactly two kinds of store itself
(platform.PteFastPath):

    map     empty slot of an EL1_PTE page := page descriptor of a host NONE page, PXN forced
    unmap   slot of an EL1_PTE page mapping a host NONE page := 0 (TLBI as Python queues it)

These are the stores `kpt.plan_kpt_slot` accepts without any other effect than the slot's new
value, subcount(target) +1 / -1 (a NONE page reaching 0 releases nothing), and PXN forced on a
leaf of a page that is neither KCODE nor MOD_txt. Everything else traps as before: the fast
path only carries out a decision this module has taken by marking pages.

The model stays exact: `replay` drains the machine's log and runs every entry through the same
`plan_kpt_slot` and reference accounting a trapped store goes through, before the hypervisor
decides anything (first thing in `KPCore.handle`). An entry those rules would not produce
(refused, claimed, another value) is an internal error: the machine did something the model
did not allow, and it is halted.

Scope: `hardened` only (its rules are the ones replayed), a single CPU (a CPU that stores
while Python changes a page's class on another CPU's trap would race with the bitmaps and the
log; with one CPU, Python runs only while that CPU is stopped in the trampoline).
"""

from __future__ import annotations

from dataclasses import dataclass

from secvma.kpcore.kpt import Plan, commit_accounting, plan_kpt_slot
from secvma.kpcore.pages import Owner, PageTable, Usage
from secvma.kpcore.refusal import HypRefusal
from secvma.kpcore.state import KState
from secvma.platform import Platform, PteFastPath, Vcpu

_PACK = 0x0102040810204080  # eight 0/1 bytes (a little-endian u64) -> one byte of bits
_M64 = (1 << 64) - 1


class FastPathMismatch(RuntimeError):
    """A logged store the hardened rules would not have carried out as the machine did."""


@dataclass
class PteFastState:
    """The armed fast path: the platform's capability and what was replayed."""

    path: PteFastPath
    platform: Platform
    replayed: int = 0
    maps: int = 0
    unmaps: int = 0


def _table(owner: int, usage: int) -> bool:
    return owner == Owner.HOST and usage == Usage.EL1_PTE


def _ordinary(owner: int, usage: int) -> bool:
    return owner == Owner.HOST and usage == Usage.NONE


def _pack(flags: bytes) -> bytes:
    """One 0/1 byte per page -> one bit per page (bit n of byte n // 8)."""
    pad = flags + bytes(-len(flags) % 8)
    out = bytearray(len(pad) // 8)
    for i, w in enumerate(memoryview(pad).cast("Q")):
        if w:
            out[i] = ((w * _PACK) & _M64) >> 56
    return bytes(out)


def bitmaps(pages: PageTable) -> tuple[bytes, bytes]:
    """(table bitmap, ordinary bitmap) of the whole page table."""
    host = bytes(pages.owner).translate(bytes(int(i == Owner.HOST) for i in range(256)))
    pte = bytes(pages.usage).translate(bytes(int(i == Usage.EL1_PTE) for i in range(256)))
    none = bytes(pages.usage).translate(bytes(int(i == Usage.NONE) for i in range(256)))
    n = len(host)
    h = int.from_bytes(host, "little")
    tables = (h & int.from_bytes(pte, "little")).to_bytes(n, "little")
    ordinary = (h & int.from_bytes(none, "little")).to_bytes(n, "little")
    return _pack(tables), _pack(ordinary)


def maybe_arm(st: KState, plat: Platform, cpu: Vcpu) -> bool:
    """Arm the fast path once the kernel has installed (hardened, one CPU, capable platform).

    False when it can never be armed on this machine (the caller stops asking)."""
    if st.ptefast is not None:
        return True
    if not st.policy.hardened or plat.ncpus != 1:
        return False
    if not st.installed:
        return True
    path = getattr(plat, "pte_fast_path", None)
    if not isinstance(path, PteFastPath):
        return False
    tables, ordinary = bitmaps(st.pages)
    path.load(tables, ordinary)

    def on_change(pfn: int, _oo: Owner, _ou: Usage, owner: Owner, usage: Usage) -> None:
        path.mark(pfn, _table(owner, usage), _ordinary(owner, usage))

    st.pages.listeners.append(on_change)
    st.ptefast = PteFastState(path, plat)
    path.enable(cpu, True)
    return True


def enable_again(st: KState, cpu: Vcpu) -> None:
    """After CpuStart: the restarted CPU's trampoline has the fast path off."""
    if st.ptefast is not None:
        st.ptefast.path.enable(cpu, True)


def replay(st: KState, plat: Platform) -> None:
    """Account for every store the machine carried out since the last call (in order)."""
    fs = st.ptefast
    if fs is None:
        return
    for cpu, slot, old, stored in fs.path.drain():
        replay_one(st, plat, slot, old, stored)
        fs.replayed += 1
        if stored:
            fs.maps += 1
        else:
            fs.unmaps += 1
        st.stale_retries.pop(cpu, None)
        st.stalls.pop(cpu, None)


def replay_one(st: KState, plat: Platform, slot: int, old: int, stored: int) -> None:
    """One logged store through the hardened rules; raises FastPathMismatch if they differ."""
    page = slot & ~0xFFF
    pfn = page >> 12
    if slot & 7 or not _table(st.pages.owner_of(pfn), st.pages.usage_of(pfn)):
        raise FastPathMismatch(f"fast PTE store at {slot:#x}: not a slot of a level-3 kernel "
                               f"table page ({st.pages.usage_of(pfn).name})")
    if (old == 0) == (stored == 0):
        raise FastPathMismatch(f"fast PTE store at {slot:#x}: neither a map nor an unmap "
                               f"({old:#x} -> {stored:#x})")
    target = (stored or old) & 0x0000_FFFF_FFFF_F000
    if not _ordinary(st.pages.owner_of(target >> 12), st.pages.usage_of(target >> 12)):
        raise FastPathMismatch(f"fast PTE store at {slot:#x}: maps {target:#x}, not an "
                               "ordinary host page")
    plan = Plan()
    try:
        plan_kpt_slot(st, plat, 3, slot, old, stored, plan)
    except HypRefusal as exc:
        raise FastPathMismatch(f"fast PTE store at {slot:#x} ({old:#x} -> {stored:#x}) is "
                               f"refused by the rules: {exc}") from None
    if plan.claim is not None or plan.raw or plan.slots != {slot: stored}:
        raise FastPathMismatch(f"fast PTE store at {slot:#x}: the rules store "
                               f"{plan.slots.get(slot, 0):#x}, the machine stored {stored:#x}")
    # the machine already did the slot store and, for an unmap, the TLB invalidation
    commit_accounting(st, plat, page, plan, flush=False)
