"""The fuzzer's operations: what a compromised EL1 kernel can do to KPCore, as data.

An `Op` holds only concrete values (addresses, register values, instruction forms, mutation
positions), so a recorded sequence replays exactly without the generator that drew it: a saved
failing case stays reproducible when the generator changes. `OpGenerator.draw` picks the next
op from a seeded `random.Random` and the rig's current state (which pages are tables now,
which modules are loaded), biased towards the values that matter: boundaries of RAM and of the
hypervisor, live table pages, the descriptor already in a slot with one bit flipped.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass
from typing import Any

from secvma.platform import SysReg
from secvma.sim.machine import (
    EXTRA_FORMS,
    FORMS,
    HYP_SIZE,
    IDMAP,
    MAIR,
    PT_POOL,
    PXN,
    RAM_BASE,
    RAM_END,
    RESV_END,
    RODATA,
    SCTLR,
    SWAPPER,
    TCR,
    TEXT,
    ZERO_PAGE,
    block_desc,
    page_desc,
    table_desc,
)

MASK64 = (1 << 64) - 1
WIDTHS: dict[str, tuple[int, ...]] = {
    "str": (1, 2, 4, 8), "stur": (1, 2, 4, 8), "str_reg": (1, 2, 4, 8), "str_pre": (4, 8),
    "str_post": (4, 8), "sttr": (1, 2, 4, 8), "stp": (4, 8), "stp_xzr": (8,), "stnp": (8,),
    "stxr": (4, 8), "stlr": (1, 2, 4, 8), "dc_zva": (8,), "stlxr": (4, 8), "cas": (4, 8),
    "swp": (1, 2, 4, 8), "ldadd": (4, 8), "str_q": (16,), "st1": (16,)}
STORE_FORMS = FORMS + EXTRA_FORMS
MSR_REGS = (SysReg.TTBR0_EL1, SysReg.TTBR1_EL1, SysReg.SCTLR_EL1, SysReg.TCR_EL1,
            SysReg.MAIR_EL1, SysReg.VBAR_EL1, SysReg.CONTEXTIDR_EL1)
GOOD_VALUE = {SysReg.TTBR0_EL1: IDMAP, SysReg.TTBR1_EL1: SWAPPER, SysReg.SCTLR_EL1: SCTLR,
              SysReg.TCR_EL1: TCR, SysReg.MAIR_EL1: MAIR, SysReg.CONTEXTIDR_EL1: 0}
HVC_NUMBERS = (0, 1, 2, 5, 6, 7, 22, 28, 29, 30, 31, 32, 33, 34, 35, 36, 0x8400_0000, MASK64)
DMA_NUMBERS = (23, 24, 25, 26, 27)


class OpKind(enum.Enum):
    """What one step does."""

    STORE = "store"  # one store instruction at EL1 to a linear-map address
    LOAD = "load"  # one load (fills stage 2 lazily)
    HVC = "hvc"  # a hypercall with random and boundary arguments
    DMA = "dma"  # HVC 23-27 (the SMMU hypercalls)
    MSR = "msr"  # an EL1 system-register write (TVM traps it; VBAR checked after each trap)
    USER_PGD = "user-pgd"  # HVC 33 on a page, then stores into it and a TTBR0 switch
    MODULE_LOAD = "module-load"  # HVC 30 on a real module image, mutated or not
    MODULE_UNLOAD = "module-unload"  # HVC 32 + 31 and the kernel's unmap of a loaded module
    CPU_ON = "cpu-on"  # PSCI CPU_ON again: the CPU re-runs head.S


@dataclass(frozen=True, slots=True)
class Op:
    """One step. `args` are concrete integers whose meaning depends on `kind`:

    STORE (pa, offset, value, value2, width), form = instruction form; LOAD (va,);
    HVC/DMA (x0..x5); MSR (value,), form = register name; USER_PGD (pa, idx, value);
    MODULE_LOAD (mutation, position, byte), form = module name; MODULE_UNLOAD (slot, init_free).
    """

    kind: OpKind
    cpu: int
    args: tuple[int, ...]
    form: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind.value, "cpu": self.cpu, "args": list(self.args), "form": self.form}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Op:
        return cls(OpKind(d["kind"]), int(d["cpu"]), tuple(int(a) for a in d["args"]),
                   str(d.get("form", "")))


class Mutation(enum.IntEnum):
    """How a module image is changed before HVC 30 (`MODULE_LOAD` args[0])."""

    NONE = 0  # the signed image as built: must load
    IMAGE_BYTE = 1  # one byte of the staged ELF image (header, section table, any content)
    RUN_BYTE = 2  # one byte of the laid-out text / ro run the kernel prepared
    ARCH_FIELD = 3  # one field of struct secvma_mod_arch set to a chosen value
    CHECKLIST = 4  # one checklist entry replaced
    COUNT = 5  # the checklist length changed
    HEADER_PTR = 6  # the image pointer (x1) replaced


@dataclass
class World:
    """What the generator may aim at now (refreshed by the rig)."""

    ncpus: int
    tables: list[int]  # PAs of pages whose class is a table now
    modules: list[str]  # module images available
    loaded: int  # modules loaded now
    smmu: bool
    read_u64: Any  # (pa) -> int, to flip bits of the descriptor already in a slot


class OpGenerator:
    """Draws ops from a seeded generator (the campaign's seed fixes the whole sequence)."""

    KINDS = ((OpKind.STORE, 46), (OpKind.LOAD, 4), (OpKind.HVC, 12), (OpKind.DMA, 8),
             (OpKind.MSR, 12), (OpKind.USER_PGD, 6), (OpKind.MODULE_LOAD, 5),
             (OpKind.MODULE_UNLOAD, 3), (OpKind.CPU_ON, 1))

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self._kinds = [k for k, _ in self.KINDS]
        self._weights = [w for _, w in self.KINDS]

    # --- value pools ---------------------------------------------------------------------

    def page(self, w: World) -> int:
        r = self.rng
        pool = [TEXT, TEXT + 0x1000, RODATA, ZERO_PAGE, SWAPPER, IDMAP, RAM_BASE,
                RAM_BASE + HYP_SIZE - 0x1000, PT_POOL + 0x1000 * r.randrange(64),
                RESV_END + 0x1000 * r.randrange(256), RAM_END - 0x1000]
        if w.tables and r.random() < 0.6:
            return r.choice(w.tables)
        return r.choice(pool)

    def number(self, w: World) -> int:
        """A hypercall argument: boundaries, pages of interest, small integers, noise."""
        r = self.rng
        c = r.randrange(6)
        if c == 0:
            return r.choice((0, 1, 2, 0xFFF, 0x1000, MASK64, 1 << 63, (1 << 32) - 1, 1 << 32,
                             RAM_BASE - 1, RAM_BASE, RAM_END, RAM_END - 8, RAM_BASE + HYP_SIZE))
        if c in (1, 2):
            return self.page(w) + r.choice((0, 0, 8, 0xFF8, 0xFFF, 1))
        if c == 3:
            return r.randrange(64)
        if c == 4:
            return r.randrange(1 << 32) & ~0xFFF
        return r.getrandbits(64)

    def descriptor(self, w: World, slot: int) -> int:
        r = self.rng
        target = self.page(w)
        c = r.randrange(8)
        if c == 0:
            return 0
        if c == 1:
            return page_desc(target, pxn=r.random() < 0.5)
        if c == 2:
            return table_desc(target)
        if c == 3:
            return block_desc(target & ~0x1F_FFFF, pxn=r.random() < 0.5)
        if c == 4:
            return r.getrandbits(64)
        old = w.read_u64(slot) if RAM_BASE <= slot < RAM_END - 8 else 0
        if c == 5:
            return old ^ (1 << r.randrange(64))
        if c == 6:
            return old & ~(PXN | (1 << 7) | (1 << 54))
        return (old & ~0xFFFF_FFFF_F000) | (target & 0xFFFF_FFFF_F000)

    # --- ops -----------------------------------------------------------------------------

    def draw(self, w: World) -> Op:
        r = self.rng
        kind = r.choices(self._kinds, self._weights)[0]
        if kind is OpKind.DMA and not w.smmu:
            kind = OpKind.HVC
        if kind in (OpKind.MODULE_LOAD, OpKind.MODULE_UNLOAD) and not w.modules:
            kind = OpKind.STORE
        cpu = r.randrange(w.ncpus)
        if kind is OpKind.STORE:
            form = r.choice(STORE_FORMS)
            width = r.choice(WIDTHS[form])
            pa = self.page(w)
            c = r.randrange(10)
            if c < 6:
                off = 8 * r.randrange(512) + (r.choice((0, 4, 6, 7)) if width < 8 else 0)
            elif c < 8:
                off = 0x1000 - r.choice((1, 2, 4, 8, 16))  # last bytes: page-crossing forms
            else:
                off = r.randrange(0x1000)  # unaligned anywhere
            value = self.descriptor(w, pa + (off & ~7))
            return Op(kind, cpu, (pa, off, value, self.descriptor(w, pa + (off & ~7) + 8),
                                  width), form)
        if kind is OpKind.LOAD:
            return Op(kind, cpu, (self.page(w) + 8 * r.randrange(512),))
        if kind is OpKind.HVC:
            nr = r.choice(HVC_NUMBERS) if r.random() < 0.8 else r.randrange(64)
            return Op(kind, cpu, (nr, *(self.number(w) for _ in range(5))))
        if kind is OpKind.DMA:
            nr = r.choice(DMA_NUMBERS)
            args = [self.number(w) for _ in range(5)]
            if r.random() < 0.7:  # mostly well-formed: a small stream, SMMU 0, VMID 0
                small = r.randrange(4)
                if nr == 23:
                    args[0], args[1] = small, 0
                elif nr == 24:
                    args[0], args[1], args[2] = small, 0, 0
                elif nr == 25:  # iova, pa (a page of interest), prot, cb, smmu
                    args[0], args[2], args[3], args[4] = r.randrange(16) << 12, r.randrange(4), \
                        small, 0
                else:
                    args[0], args[1], args[2] = r.randrange(16) << 12, small, 0
            return Op(kind, cpu, (nr, *args))
        if kind is OpKind.MSR:
            reg = r.choice(MSR_REGS)
            good = GOOD_VALUE.get(reg, 0)
            c = r.randrange(5)
            if c == 0:
                value = good
            elif c == 1:
                value = good ^ (1 << r.randrange(64))
            elif c == 2 and reg in (SysReg.TTBR0_EL1, SysReg.TTBR1_EL1, SysReg.VBAR_EL1):
                value = self.page(w) | (r.randrange(1 << 16) << 48 if r.random() < 0.5 else 0) \
                    | r.choice((0, 1, 0x800))
            elif c == 3:
                value = self.number(w)
            else:
                value = r.getrandbits(64)
            return Op(kind, cpu, (value,), reg.name)
        if kind is OpKind.USER_PGD:
            pa = PT_POOL + 0x1000 * r.randrange(512) if r.random() < 0.8 else self.page(w)
            return Op(kind, cpu, (pa, r.randrange(512), self.descriptor(w, pa)))
        if kind is OpKind.MODULE_LOAD:
            mut = r.choice(list(Mutation))
            return Op(kind, cpu, (int(mut), r.getrandbits(32), self.number(w)),
                      r.choice(w.modules))
        if kind is OpKind.MODULE_UNLOAD:
            return Op(kind, cpu, (r.randrange(max(w.loaded, 1)), int(r.random() < 0.8)))
        return Op(OpKind.CPU_ON, cpu, ())
