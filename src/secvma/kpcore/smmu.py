"""The hypervisor's SMMUv3 driver: stream table, command and event queues, IO page tables.

Everything lives in the SMMU pool of hypervisor memory (`Platform.smmu.pool`, COREVISOR pages
the kernel can neither map nor write); the registers are reached only through
`Platform.mmio_*`. Pool layout (offsets)::

    0x0000  stream table, linear, 256 STEs (StreamID = PCI requester ID on bus 0)
    0x4000  context descriptors, one per stream (CD of stream s at 0x4000 + 64 * s)
    0x8000  command queue, 256 x 16 bytes
    0x9000  event queue, 128 x 32 bytes
    0xA000  the command queue's producer value, read by the trampoline's doorbell
    0xB000  IO page-table pages (free list), to the end of the pool

A stream is either *off* (STE invalid: every access is refused and recorded as C_BAD_STE) or
a *context* (stage-1 STE + CD with its own 3-level table, ASID = StreamID + 1). Every change
is followed by its invalidation (CFGI_STE, TLBI_NH_VA / TLBI_NH_ASID) and a CMD_SYNC before
the vCPU that asked resumes: the doorbell (CMDQ_PROD) is rung by that vCPU at EL2 just before
its ERET (`Platform.mmio_doorbell`), and QEMU consumes the queue within that store, so when
the kernel sees HVC 27 return no device can reach the page any more. Without a vCPU, and once
every SYNC_EVERY commands, the ring goes through `mmio_write` and the consumer index and its
error field are checked.

Events are drained without touching a register on the fast path: the hypervisor zeroes each
record it consumes, so a non-zero record at the consumer index is a new event.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from secvma.arch import smmuv3 as A
from secvma.platform import PhysAddr, Platform, SmmuWindow, Vcpu

SID_BITS = 8
NSTREAMS = 1 << SID_BITS
STRTAB_OFF = 0x0000
CD_OFF = 0x4000
CMDQ_OFF = 0x8000
CMDQ_LOG2 = 8
EVTQ_OFF = 0x9000
EVTQ_LOG2 = 7
PRODWORD_OFF = 0xA000
TABLES_OFF = 0xB000
ACK_POLLS = 100
SYNC_EVERY = 192
"""Commands rung through the trampoline (no completion check) before one synchronous ring."""


class SmmuError(RuntimeError):
    """The SMMU did not do what the driver asked (a model or device bug: halts the machine)."""


@dataclass(slots=True)
class Context:
    """One stream's translation: its table root and the pages of its IO page table."""

    sid: int
    asid: int
    root: int
    tables: list[int] = field(default_factory=list)


@dataclass(slots=True)
class Fault:
    """A DMA the SMMU refused: stream, IO address, what was wrong, read or write."""

    sid: int
    iova: int
    reason: str
    write: bool


class Smmu:
    """Driver state for one SMMUv3 (see module docstring)."""

    def __init__(self, plat: Platform, window: SmmuWindow) -> None:
        if window.pool_size < TABLES_OFF + 16 * A.PAGE:
            raise ValueError(f"SMMU pool of {window.pool_size:#x} bytes is too small")
        self.plat = plat
        self.win = window
        self.pool = int(window.pool)
        self.free: list[int] = list(range(self.pool + window.pool_size - A.PAGE,
                                          self.pool + TABLES_OFF - 1, -A.PAGE))
        self.contexts: dict[int, Context] = {}
        self.cmdq_prod = 0
        self.unchecked = 0
        self.evtq_cons = 0
        self.enabled = False
        self.commands = 0
        self.syncs = 0

    def owns(self, pa: int) -> bool:
        """True for an address of the SMMU's register window."""
        return self.win.base <= pa < self.win.base + self.win.size

    # --- registers ------------------------------------------------------------------------

    def _r32(self, off: int) -> int:
        return self.plat.mmio_read(PhysAddr(self.win.base + off), 4)

    def _w32(self, off: int, value: int) -> None:
        self.plat.mmio_write(PhysAddr(self.win.base + off), 4, value)

    def _w64(self, off: int, value: int) -> None:
        self.plat.mmio_write(PhysAddr(self.win.base + off), 8, value)

    def _set_cr0(self, value: int) -> None:
        self._w32(A.CR0, value)
        for _ in range(ACK_POLLS):
            if self._r32(A.CR0ACK) == value:
                return
        raise SmmuError(f"SMMU did not acknowledge CR0 = {value:#x}")

    # --- bring-up -------------------------------------------------------------------------

    def enable(self) -> None:
        """Reset the SMMU into the hypervisor's hands: every stream off, queues on, SMMUEN."""
        p = self.plat
        self._set_cr0(0)
        self._w32(A.GBPA, A.GBPA_UPDATE | A.GBPA_ABORT)
        p.write(PhysAddr(self.pool), bytes(TABLES_OFF))
        self._w64(A.STRTAB_BASE, A.BASE_RA | ((self.pool + STRTAB_OFF) & A.ADDR_MASK_51_6))
        self._w32(A.STRTAB_BASE_CFG, SID_BITS)  # FMT linear, LOG2SIZE
        self._w64(A.CMDQ_BASE, A.q_base(self.pool + CMDQ_OFF, CMDQ_LOG2))
        self._w32(A.CMDQ_PROD, 0)
        self._w32(A.CMDQ_CONS, 0)
        self._w64(A.EVTQ_BASE, A.q_base(self.pool + EVTQ_OFF, EVTQ_LOG2))
        self._w32(A.EVTQ_PROD, 0)
        self._w32(A.EVTQ_CONS, 0)
        self.cmdq_prod = self.evtq_cons = 0
        self._w32(A.IRQ_CTRL, 0)
        self._set_cr0(A.CR0_CMDQEN | A.CR0_EVTQEN)
        self.submit([A.cmd_cfgi_all(), A.cmd_tlbi_nsnh_all()])
        self._set_cr0(A.CR0_CMDQEN | A.CR0_EVTQEN | A.CR0_SMMUEN)
        self.enabled = True

    # --- command queue --------------------------------------------------------------------

    def submit(self, cmds: list[bytes], cpu: Vcpu | None = None) -> None:
        """Queue `cmds` and a CMD_SYNC; ring from `cpu` at EL2 before it resumes, or now."""
        n = 1 << CMDQ_LOG2
        cmds = [*cmds, A.cmd_sync()]
        if len(cmds) + self.unchecked > n - 8:
            self._ring_now()
        if len(cmds) > n - 8:
            raise SmmuError(f"{len(cmds)} commands exceed the queue")
        prod = self.cmdq_prod
        for c in cmds:
            slot = self.pool + CMDQ_OFF + A.q_index(prod, CMDQ_LOG2) * A.CMD_SIZE
            self.plat.write(PhysAddr(slot), c)
            prod = A.q_inc(prod, CMDQ_LOG2)
        self.cmdq_prod = prod
        self.plat.write(PhysAddr(self.pool + PRODWORD_OFF), prod.to_bytes(4, "little"))
        self.commands += len(cmds)
        self.syncs += 1
        self.unchecked += len(cmds)
        if cpu is None or self.unchecked >= SYNC_EVERY:
            self._ring_now()
        else:
            self.plat.mmio_doorbell(cpu, PhysAddr(self.win.base + A.CMDQ_PROD),
                                    PhysAddr(self.pool + PRODWORD_OFF))

    def _ring_now(self) -> None:
        """Ring with the latest producer value and check that everything was consumed."""
        prod = self.cmdq_prod
        self._w32(A.CMDQ_PROD, prod)
        cons = 0
        for _ in range(ACK_POLLS):
            cons = self._r32(A.CMDQ_CONS)
            err = (cons >> A.CMDQ_CONS_ERR_SHIFT) & 0x7F
            if err:
                raise SmmuError(f"command queue error {err:#x} at consumer {cons:#x}")
            if cons & ((2 << CMDQ_LOG2) - 1) == prod:
                self.unchecked = 0
                return
        raise SmmuError(f"command queue stuck: prod {prod:#x}, cons {cons:#x}")

    # --- streams --------------------------------------------------------------------------

    def ste_pa(self, sid: int) -> int:
        return self.pool + STRTAB_OFF + sid * A.STE_SIZE

    def cd_pa(self, sid: int) -> int:
        return self.pool + CD_OFF + sid * A.CD_SIZE

    def tables_free(self) -> int:
        return len(self.free)

    def _alloc(self) -> int:
        assert self.free, "SMMU table pool exhausted inside a commit (check missed)"
        pa = self.free.pop()
        self.plat.write(PhysAddr(pa), bytes(A.PAGE))
        return pa

    def attach(self, sid: int, cpu: Vcpu | None = None) -> Context:
        """Stream `sid` off -> context with an empty table (every IOVA faults, recorded)."""
        assert 0 <= sid < NSTREAMS and sid not in self.contexts and self.free
        root = self._alloc()
        ctx = Context(sid, sid + 1, root, [root])
        self.plat.write(PhysAddr(self.cd_pa(sid)), A.cd_s1(root, ctx.asid))
        self.plat.write(PhysAddr(self.ste_pa(sid)), A.ste_s1(self.cd_pa(sid)))
        self.contexts[sid] = ctx
        self.submit([A.cmd_cfgi_ste(sid), A.cmd_tlbi_nh_asid(ctx.asid)], cpu)
        return ctx

    def attach_shared(self, sids: range) -> Context:
        """Every stream of `sids` -> one context (one table, one ASID; each stream has its own
        copy of the CD). Used by the transparent identity map."""
        assert self.free and not any(s in self.contexts for s in sids)
        root = self._alloc()
        ctx = Context(sids[0], 1, root, [root])
        for sid in sids:
            self.plat.write(PhysAddr(self.cd_pa(sid)), A.cd_s1(root, ctx.asid))
            self.plat.write(PhysAddr(self.ste_pa(sid)), A.ste_s1(self.cd_pa(sid)))
            self.contexts[sid] = ctx
        self.submit([A.cmd_cfgi_all(), A.cmd_tlbi_nh_asid(ctx.asid)])
        return ctx

    def table_for(self, ctx: Context, iova: int) -> int:
        """PA of the level-3 table covering `iova`, created (zeroed) if missing."""
        slot = self._slot(ctx, iova, create=True)
        assert slot is not None
        return slot & ~(A.PAGE - 1)

    def detach(self, sid: int, cpu: Vcpu | None = None) -> list[tuple[int, int]]:
        """Context -> off; returns the (iova, pa) pairs it mapped (their tables are freed)."""
        ctx = self.contexts.pop(sid)
        self.plat.write(PhysAddr(self.ste_pa(sid)), A.STE_INVALID)
        self.plat.write(PhysAddr(self.cd_pa(sid)), bytes(A.CD_SIZE))
        self.submit([A.cmd_cfgi_ste(sid), A.cmd_tlbi_nh_asid(ctx.asid)], cpu)
        mapped = list(self.mappings(ctx))
        for t in ctx.tables:
            self.plat.write(PhysAddr(t), bytes(A.PAGE))
            self.free.append(t)
        return mapped

    # --- IO page tables -------------------------------------------------------------------

    def tables_needed(self, ctx: Context, iova: int) -> int:
        """Table pages a map of `iova` would allocate (0..2)."""
        table, need = ctx.root, 0
        for level in (1, 2):
            d = self.plat.read_u64(PhysAddr(table + 8 * A.io_index(iova, level)))
            if not d & A.PTE_VALID:
                return need + (3 - level)
            table = d & A.PTE_ADDR_MASK
        return need

    def _slot(self, ctx: Context, iova: int, create: bool) -> int | None:
        table = ctx.root
        for level in (1, 2):
            slot = table + 8 * A.io_index(iova, level)
            d = self.plat.read_u64(PhysAddr(slot))
            if not d & A.PTE_VALID:
                if not create:
                    return None
                nxt = self._alloc()
                ctx.tables.append(nxt)
                self.plat.write_u64(PhysAddr(slot), A.io_table_desc(nxt))
                d = A.io_table_desc(nxt)
            table = d & A.PTE_ADDR_MASK
        return table + 8 * A.io_index(iova, 3)

    def lookup(self, ctx: Context, iova: int) -> tuple[int, bool] | None:
        """(pa, writable) that `iova` translates to, None if unmapped."""
        slot = self._slot(ctx, iova, create=False)
        if slot is None:
            return None
        d = self.plat.read_u64(PhysAddr(slot))
        if not d & A.PTE_VALID:
            return None
        return d & A.PTE_ADDR_MASK, A.io_desc_writable(d)

    def map(self, ctx: Context, iova: int, pa: int, writable: bool) -> None:
        """Write the leaf for `iova` (caller checked: IOVA free, tables available). An invalid
        entry is never cached by an SMMU TLB: no invalidation needed."""
        slot = self._slot(ctx, iova, create=True)
        assert slot is not None
        self.plat.write_u64(PhysAddr(slot), A.io_page_desc(pa, writable))

    def unmap(self, ctx: Context, iova: int, cpu: Vcpu | None = None) -> None:
        """Clear the leaf for `iova`, invalidate it (TLBI + SYNC) before `cpu` resumes."""
        slot = self._slot(ctx, iova, create=False)
        assert slot is not None
        self.plat.write_u64(PhysAddr(slot), 0)
        self.submit([A.cmd_tlbi_nh_va(ctx.asid, iova)], cpu)

    def mappings(self, ctx: Context) -> Iterator[tuple[int, int]]:
        """Every (iova, pa) leaf of the context's table (a walk of memory, for invariants)."""
        read = self.plat.read_u64
        for i1 in range(4):
            d1 = read(PhysAddr(ctx.root + 8 * i1))
            if not d1 & A.PTE_VALID:
                continue
            t2 = d1 & A.PTE_ADDR_MASK
            raw2 = self.plat.read(PhysAddr(t2), A.PAGE)
            for i2 in range(512):
                d2 = int.from_bytes(raw2[8 * i2:8 * i2 + 8], "little")
                if not d2 & A.PTE_VALID:
                    continue
                t3 = d2 & A.PTE_ADDR_MASK
                raw3 = self.plat.read(PhysAddr(t3), A.PAGE)
                if not any(raw3):
                    continue
                for i3 in range(512):
                    d3 = int.from_bytes(raw3[8 * i3:8 * i3 + 8], "little")
                    if d3 & A.PTE_VALID:
                        yield (i1 << 30) | (i2 << 21) | (i3 << 12), d3 & A.PTE_ADDR_MASK

    # --- events ---------------------------------------------------------------------------

    def drain(self) -> list[Fault]:
        """Consume every new event record; tell the SMMU where the consumer is."""
        out: list[Fault] = []
        cons = self.evtq_cons
        base = self.pool + EVTQ_OFF
        while len(out) < 1 << EVTQ_LOG2:
            slot = base + A.q_index(cons, EVTQ_LOG2) * A.EVT_SIZE
            raw = self.plat.read(PhysAddr(slot), A.EVT_SIZE)
            if not any(raw):
                break
            ev = A.decode_event(raw)
            out.append(Fault(ev.sid, ev.iova, ev.reason, ev.write))
            self.plat.write(PhysAddr(slot), bytes(A.EVT_SIZE))
            cons = A.q_inc(cons, EVTQ_LOG2)
        if out:
            self.evtq_cons = cons
            self._w32(A.EVTQ_CONS, cons)
        return out
