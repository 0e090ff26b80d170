"""The CPU as an oracle for `secvma.arch.walk`: random stage-1 and stage-2 tables in guest RAM,
random accesses (load, store, fetch at EL1 and EL0) by real AArch64 code, outcomes recorded.

Guest-physical layout (inside kernel RAM)::

    CODE   0x4200_0000  the payload and its EL1 vectors (identity-mapped, 2 MiB block)
    TABLES 0x4220_0000  stage-1 table pages (this block is split at stage 2: random S2AP per page)
    CTRL   0x4230_0000  control block; ACCESSES at +0x1000, RESULTS at +0x10000
    TEST   0x4240_0000  TEST_PAGES pages, each 8-byte word = (tag << 32) | `svc #0` (random S2
                        permissions per page); a load tells which page it reached, a fetch of
                        `svc #0` returns to the EL1 vector, which records success

EL0 loads/stores use LDTR/STTR (EL0 permission checks from EL1); EL0 fetches ERET to EL0.
A stage-2 fault is recorded by the test hypervisor (ESR_EL2, IPA, S1PTW) and injected into EL1
as a synchronous external abort, which marks it in the result slot.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from secvma.machine import layout
from secvma.machine.build import assemble_payload
from secvma.machine.null import NullHypervisor
from secvma.machine.qemu import Blob, MachineConfig
from secvma.machine.runner import boot
from secvma.platform import Event, Hvc, PhysAddr, Platform, Stage2Abort, Vcpu

CODE = layout.KERNEL_BASE
CTRL = CODE + 0x30_0000
ACCESSES = CTRL + 0x1000
RESULTS = CTRL + 0x1_0000
TABLES = CODE + 0x20_0000
TEST = CODE + 0x40_0000
TEST_PAGES = 32
SVC0 = 0xD4000001
STORE_OFFSET = 0xFF8  # stores only hit the last word, so loads keep reading tags
STORE_VALUE = 0x5555AAAA5555AAAA
MARK_S2 = (0x25 << 26) | (1 << 25) | 0x10  # ESR_EL1 of an injected stage-2 fault

LOAD, STORE, FETCH = 0, 1, 2

# TCR_EL1: T0SZ=16, T1SZ=16, 4 KB granules, inner/outer WB, inner shareable, IPS=32 bits
TCR = 16 | (1 << 8) | (1 << 10) | (3 << 12) | (0 << 14) | (16 << 16) | (1 << 24) | (1 << 26) \
    | (3 << 28) | (2 << 30)
MAIR = 0xFF | (0x04 << 8)  # Attr0 normal WB, Attr1 Device-nGnRE
SCTLR_BASE = 0x30D00800 | 1 | (1 << 2) | (1 << 12)  # RES1, M, C, I

PAYLOAD = f"""
    .text
    .globl _start
_start:
    adr x9, vectors
    msr vbar_el1, x9
    ldr x22, ={CTRL:#x}
    ldr x0, [x22, #8]
    msr ttbr0_el1, x0
    ldr x0, [x22, #16]
    msr ttbr1_el1, x0
    ldr x0, [x22, #24]
    msr tcr_el1, x0
    ldr x0, [x22, #32]
    msr mair_el1, x0
    isb
    tlbi vmalle1
    dsb sy
    isb
    ldr x0, [x22, #40]
    msr sctlr_el1, x0
    isb
    ldr x20, [x22]
    ldr x19, ={ACCESSES:#x}
    ldr x21, ={RESULTS:#x}
    ldr x3, ={STORE_VALUE:#x}
loop:
    cbz x20, done
    ldp x0, x1, [x19], #16
    and x2, x1, #0xff
    lsr x4, x1, #8
    cbz x4, el0                 // el == 0: unprivileged forms
    cmp x2, #{LOAD}
    b.eq ld1
    cmp x2, #{STORE}
    b.eq st1
    blr x0                      // fetch at EL1: `svc #0` comes back through the vector
ld1:
    ldr x5, [x0]
    str x5, [x21, #8]
    b ok
st1:
    str x3, [x0]
    b ok
el0:
    cmp x2, #{LOAD}
    b.eq ld0
    cmp x2, #{STORE}
    b.eq st0
    msr elr_el1, x0             // fetch at EL0
    msr spsr_el1, xzr
    eret
ld0:
    ldtr x5, [x0]
    str x5, [x21, #8]
    b ok
st0:
    sttr x3, [x0]
ok:
    mov x12, #1
    str x12, [x21]
resume:
    add x21, x21, #32
    sub x20, x20, #1
    b loop
done:
    hvc #0xDD
    ldr x0, =0x84000008
    smc #0
1:  b 1b

handler:                        // x9 = vector offset
    mrs x10, esr_el1
    lsr x11, x10, #26
    cmp x11, #0x15              // SVC: the fetch reached `svc #0`
    b.ne 1f
    mov x12, #1
    str x12, [x21]
    b 2f
1:  mov x12, #2
    str x12, [x21]
    str x9, [x21, #8]
    str x10, [x21, #16]
    mrs x12, far_el1
    str x12, [x21, #24]
2:  adr x12, resume
    msr elr_el1, x12
    mov x12, #0x3c5
    msr spsr_el1, x12
    eret
    .ltorg

    .balign 0x800
vectors:
""" + "".join(f"""
    .balign 0x80
    mov x9, #{o * 0x80:#x}
    b handler
""" for o in range(16))


@dataclass(frozen=True)
class Access:
    va: int
    kind: int  # LOAD / STORE / FETCH
    el: int  # 0 or 1


@dataclass(frozen=True)
class CpuOutcome:
    """What the CPU did: ok (with the loaded value), or a fault (stage, ESR, FAR, S1PTW)."""

    ok: bool
    value: int = 0
    stage: int = 0  # 1 or 2 for faults
    esr: int = 0
    far: int = 0
    ipa: int = 0
    s1ptw: bool = False


@dataclass
class Scenario:
    """Tables already written into `memory` (PA -> 8-byte word), the registers, the accesses."""

    words: dict[int, int]
    ttbr0: int
    ttbr1: int
    sctlr: int
    accesses: list[Access]
    s2_perms: dict[int, tuple[int, int]] = field(default_factory=dict)  # page PA -> (S2AP, XN bits)


class OracleHypervisor(NullHypervisor):
    """Identity stage 2 with chosen 4 KB pages re-permissioned; records stage-2 faults."""

    def __init__(self, scenario: Scenario):
        super().__init__()
        self.scenario = scenario
        self.s2_faults: dict[int, Stage2Abort] = {}
        self.results: bytes = b""
        self.snapshot: dict[int, bytes] = {}
        self.l3_pool = layout.S2_POOL_END

    def handle(self, platform: Platform, cpu: Vcpu, event: Event) -> None:
        if isinstance(event, Stage2Abort) and event.ipa >= layout.KERNEL_BASE:
            index = (cpu.x(21) - RESULTS) // 32
            self.s2_faults[index] = event
            cpu.inject_abort(MARK_S2, event.far)
            return
        if isinstance(event, Hvc) and event.imm == 0xDD:
            n = len(self.scenario.accesses)
            self.results = platform.read(PhysAddr(RESULTS), 32 * n)
            regions = ((layout.S2_POOL_BASE, 0x10000),
                       (self.l3_pool, layout.S2_POOL_END - self.l3_pool), (TABLES, 0x10_0000))
            for base, size in regions:
                self.snapshot[base] = platform.read(PhysAddr(base), size)
        first = self.root is None
        super().handle(platform, cpu, event)
        if first and self.root is not None:
            self._repermission(platform)
            platform.flush_tlb_all(cpu)

    def _repermission(self, platform: Platform) -> None:
        by_block: dict[int, dict[int, tuple[int, int]]] = {}
        for page, perm in self.scenario.s2_perms.items():
            by_block.setdefault(page & ~0x1F_FFFF, {})[page] = perm
        assert self.root is not None
        for base, pages in by_block.items():
            l2 = platform.read_u64(PhysAddr(self.root + (base >> 30) * 8)) & 0xFFFFFFFFF000
            slot = l2 + ((base >> 21) & 0x1FF) * 8
            attrs = platform.read_u64(PhysAddr(slot)) & 0xFFF & ~0b11 & ~(3 << 6)
            self.l3_pool -= 0x1000
            table = bytearray()
            for i in range(512):
                pa = base + i * 0x1000
                s2ap, xn = pages.get(pa, (3, 0))
                table += (pa | attrs | (s2ap << 6) | (xn << 53) | 0b11).to_bytes(8, "little")
            platform.write(PhysAddr(self.l3_pool), bytes(table))
            platform.write_u64(PhysAddr(slot), self.l3_pool | 0b11)


def _blobs(sc: Scenario) -> list[Blob]:
    ctrl = struct.pack("<6Q", len(sc.accesses), sc.ttbr0, sc.ttbr1, TCR, MAIR, sc.sctlr)
    acc = b"".join(struct.pack("<QQ", a.va, a.kind | (a.el << 8)) for a in sc.accesses)
    test = b"".join(
        struct.pack("<Q", ((page + 1) << 32) | SVC0) * 512 for page in range(TEST_PAGES))
    blobs = [Blob(CTRL, ctrl), Blob(ACCESSES, acc), Blob(TEST, test)]
    pages: dict[int, bytearray] = {}
    for pa, word in sc.words.items():
        pg = pages.setdefault(pa & ~0xFFF, bytearray(4096))
        pg[pa & 0xFFF:(pa & 0xFFF) + 8] = word.to_bytes(8, "little")
    blobs += [Blob(pa, bytes(data)) for pa, data in sorted(pages.items())]
    return blobs


def run_scenario(sc: Scenario) -> tuple[list[CpuOutcome], OracleHypervisor]:
    """Boot the oracle payload on `sc`; one outcome per access, and the hypervisor (tables)."""
    b = assemble_payload(PAYLOAD, name="walk-oracle")
    hyp = OracleHypervisor(sc)
    res = boot(MachineConfig(kernel=b.path, timeout_s=30, blobs=_blobs(sc)), hyp)
    if res.exit != "poweroff" or len(hyp.results) != 32 * len(sc.accesses):
        raise AssertionError(f"oracle payload did not finish: {res.exit} {res.reason}")
    out = []
    for i in range(len(sc.accesses)):
        status, value, esr, far = struct.unpack_from("<4Q", hyp.results, 32 * i)
        if status == 1 or (status == 2 and esr >> 26 == 0 and sc.accesses[i].kind == FETCH):
            # EC 0: the fetch translated and reached memory holding no `svc #0` (zero-filled RAM
            # outside TEST, an undefined instruction): still a successful translation
            out.append(CpuOutcome(True, value=value if status == 1 else 0))
        elif esr == MARK_S2:
            ev = hyp.s2_faults[i]
            iss = ev.esr & 0x1FFFFFF
            out.append(CpuOutcome(False, stage=2, esr=ev.esr, far=ev.far, ipa=ev.ipa,
                                  s1ptw=bool(iss >> 7 & 1)))
        elif status == 2:
            out.append(CpuOutcome(False, stage=1, esr=esr, far=far))
        else:
            raise AssertionError(f"access {i} left no result (status {status})")
    return out, hyp


def snapshot_reader(hyp: OracleHypervisor) -> Callable[[int], int]:
    """A read_u64 over the table pages the run used (zero elsewhere)."""
    regions = sorted(hyp.snapshot.items())

    def read_u64(pa: int) -> int:
        for base, data in regions:
            if base <= pa and pa + 8 <= base + len(data):
                return int.from_bytes(data[pa - base:pa - base + 8], "little")
        return 0
    return read_u64


# ---- random scenarios ----------------------------------------------------------------------
VALID_TABLE = 0b11
BLOCK = 0b01
AF = 1 << 10
SH_INNER = 3 << 8
PXN = 1 << 53
UXN = 1 << 54
LOW_REGION = 1 << 39  # TTBR0, L0 index 1
HIGH_REGION = 0xFFFF_8000_0000_0000  # TTBR1, L0 index 256
L1_IDX = (0, 1)
L2_IDX = (0x12, 0x13)  # with an L1 block at 0x4000_0000, L2 index 0x12 lands on TEST
L3_IDX = tuple(range(8))


def _leaf_attrs(rng: random.Random) -> int:
    a = SH_INNER | (rng.randrange(4) << 6)
    if rng.random() < 0.93:
        a |= AF
    if rng.random() < 0.2:
        a |= PXN
    if rng.random() < 0.2:
        a |= UXN
    if rng.random() < 0.3:
        a |= 1 << 11  # nG
    return a


def _table_attrs(rng: random.Random) -> int:
    a = 0
    if rng.random() < 0.15:
        a |= rng.randrange(1, 4) << 61  # APTable
    if rng.random() < 0.15:
        a |= 1 << 59  # PXNTable
    if rng.random() < 0.15:
        a |= 1 << 60  # UXNTable
    return a


def random_scenario(rng: random.Random, n_accesses: int = 48) -> Scenario:
    """Random 4-level tables under TTBR0 and TTBR1, random stage-2 permissions, random accesses."""
    words: dict[int, int] = {}
    next_page = [TABLES]

    def alloc() -> int:
        pa = next_page[0]
        next_page[0] += 0x1000
        return pa

    root0, root1 = alloc(), alloc()
    # identity map of the payload (EL1 read-only + executable) and of TABLES/CTRL (EL1 RW, XN)
    l1, l2 = alloc(), alloc()
    words[root0] = l1 | VALID_TABLE
    words[l1 + 1 * 8] = l2 | VALID_TABLE
    words[l2 + 0x10 * 8] = CODE | BLOCK | AF | SH_INNER | (2 << 6) | UXN
    words[l2 + 0x11 * 8] = TABLES | BLOCK | AF | SH_INNER | PXN | UXN

    def subtree(table: int, level: int, indices: tuple[int, ...]) -> None:
        for idx in indices:
            r = rng.random()
            slot = table + idx * 8
            if level == 3:
                if r < 0.15:
                    continue
                if r < 0.2:
                    words[slot] = (TEST + rng.randrange(TEST_PAGES) * 0x1000) | BLOCK | _leaf_attrs(rng)
                    continue
                words[slot] = (TEST + rng.randrange(TEST_PAGES) * 0x1000) | VALID_TABLE | _leaf_attrs(rng)
                continue
            if r < 0.12:
                continue
            if level in (1, 2) and r < 0.35:
                out = layout.RAM_BASE if level == 1 else TEST
                words[slot] = out | BLOCK | _leaf_attrs(rng)
                continue
            child = alloc()
            words[slot] = child | VALID_TABLE | _table_attrs(rng)
            subtree(child, level + 1, {0: (1,), 1: L1_IDX, 2: L2_IDX}.get(level + 1, L3_IDX))

    # the random regions: L0 index 1 of TTBR0 and L0 index 256 of TTBR1
    for root, idx in ((root0, 1), (root1, 256)):
        if rng.random() < 0.08:
            continue
        child = alloc()
        words[root + idx * 8] = child | VALID_TABLE | _table_attrs(rng)
        subtree(child, 1, L1_IDX)

    s2: dict[int, tuple[int, int]] = {}
    for page in range(TEST_PAGES):
        r = rng.random()
        s2ap = 3 if r < 0.7 else (1 if r < 0.8 else (0 if r < 0.9 else 2))
        s2[TEST + page * 0x1000] = (s2ap, 2 if rng.random() < 0.2 else 0)
    for pa in range(TABLES + 0x4000, next_page[0], 0x1000):  # leave the identity map readable
        r = rng.random()
        s2[pa] = (3, 0) if r < 0.95 else ((0, 0) if r < 0.975 else (2, 0))

    accesses = []
    for _ in range(n_accesses):
        base = LOW_REGION if rng.random() < 0.5 else HIGH_REGION
        va = base | (rng.choice(L1_IDX) << 30) | (rng.choice(L2_IDX) << 21) | (rng.choice(L3_IDX) << 12)
        kind = rng.randrange(3)
        va |= STORE_OFFSET if kind == STORE else rng.randrange(0, STORE_OFFSET, 8)
        accesses.append(Access(va, kind, rng.randrange(2)))
    sctlr = SCTLR_BASE | ((1 << 19) if rng.random() < 0.2 else 0)  # WXN sometimes
    return Scenario(words, root0, root1, sctlr, accesses, s2)
