"""The SECvma kernel <-> hypervisor ABI as pure data: hypercall numbers, the boot-info block,
and the testbed's host command mailbox.

One source of truth on the Python side; `guest/testbed/include/hvabi.h` is its C mirror and
`tests/testbed/test_hvabi.py` compiles static asserts generated from this module against that
header, so the two cannot drift.

Hypercall ABI (docs/kpcore-spec.md §8.2): ``hvc #0``, x0 = number, x1..x5 = arguments, result in x0.
Extension of this project: HVC 6 (ENABLE_S2_TRANS) takes x1 = PA of the boot-info block, which
the testbed kernel issues once, with the MMU still off, right before it installs MAIR/TCR/
TTBR0/TTBR1 and sets SCTLR_EL1.M (see `BootInfo`).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, fields
from typing import ClassVar, Self


class Hvc(enum.IntEnum):
    """Hypercall numbers the testbed kernel issues (docs/kpcore-spec.md §8.2, `asm/virt.h`)."""

    GET_VECTORS = 5
    ENABLE_S2_TRANS = 6
    SMMU_FREE_PGD = 23
    SMMU_ALLOC_PGD = 24
    SMMU_LPAE_MAP = 25
    SMMU_IOVA_TO_PHYS = 26
    SMMU_CLEAR = 27
    MLOAD = 30
    MFREE = 31
    MOD_INIT_FREE = 32
    ALLOC_EL0_PGD = 33
    FREE_EL0_PGD = 34
    DO_SWITCH_MM = 35


HVC_INVALID = 0xFFFF_FFFF
"""SECvma's "refused" answer to HVC 30/31/32 (the module failed authentication or linking)."""

HVC_ENOSYS = (1 << 64) - 38
"""(u64)-38: this hypervisor does not implement the call; the kernel falls back (our extension).

The testbed kernel answers HVC_ENOSYS to HVC 30 by linking and relocating the module itself,
unprotected, as an unmodified Linux would.
"""

BOOT_INFO_MAGIC = int.from_bytes(b"SEVBINFO", "little")
BOOT_INFO_VERSION = 1


def _u64_struct(cls: type[object], head: str) -> struct.Struct:
    """`head` for the leading non-u64 fields, then '<Q' for every remaining dataclass field."""
    n_head = len(head)
    return struct.Struct("<" + head + "Q" * (len(fields(cls)) - n_head))  # type: ignore[arg-type]


@dataclass(frozen=True)
class BootInfo:
    """`struct secvma_boot_info`: what the kernel tells EL2 about itself at HVC 6.

    Addresses are physical unless named `*_va`; ranges are [start, end). A kernel-image VA is
    PA + `kimage_voffset`; a linear-map VA is PA + `linear_offset`. SECvma's classification
    (docs/kpcore-spec.md §1.4) uses: KCODE [text, etext), RODATA [rodata, erodata) + empty_zero_page,
    INIT [inittext, einittext), DATA [data, end), EL1_PGD swapper_pg_dir.
    """

    magic: int
    version: int
    size: int
    text: int
    etext: int
    rodata: int
    erodata: int
    vdso: int
    evdso: int
    inittext: int
    einittext: int
    data: int
    edata: int
    bss: int
    ebss: int
    end: int
    swapper_pg_dir: int
    empty_zero_page: int
    kimage_voffset: int
    linear_offset: int
    text_va: int
    pgtable_pool: int
    pgtable_pool_end: int
    pgtable_early: int
    mod_text_pool: int
    mod_text_pool_end: int
    mod_ro_pool: int
    mod_ro_pool_end: int
    reserved: int
    reserved_end: int
    ksymtab: int
    ksymtab_end: int
    ksymtab_gpl: int
    ksymtab_gpl_end: int
    ram: int
    ram_end: int
    dtb: int
    modules_va: int
    modules_va_end: int
    vmalloc_va: int
    vmalloc_va_end: int
    tcr: int
    mair: int
    sctlr: int
    cmd_mailbox: int

    C_NAME: ClassVar[str] = "secvma_boot_info"
    _STRUCT: ClassVar[struct.Struct]
    SIZE: ClassVar[int]

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        """Parse the block (raises ValueError on a short buffer, bad magic or version)."""
        if len(data) < cls.SIZE:
            raise ValueError(f"boot info needs {cls.SIZE} bytes, got {len(data)}")
        info = cls(*cls._STRUCT.unpack_from(data))
        if info.magic != BOOT_INFO_MAGIC:
            raise ValueError(f"boot info magic {info.magic:#x}, expected {BOOT_INFO_MAGIC:#x}")
        if info.version != BOOT_INFO_VERSION or info.size != cls.SIZE:
            raise ValueError(f"boot info version {info.version} size {info.size}, expected "
                             f"{BOOT_INFO_VERSION} / {cls.SIZE}")
        return info

    def to_bytes(self) -> bytes:
        return self._STRUCT.pack(*(getattr(self, f.name) for f in fields(self)))

    def va_of(self, pa: int) -> int:
        """Kernel-image VA of a PA inside the image."""
        return (pa + self.kimage_voffset) & ((1 << 64) - 1)

    def pa_of(self, va: int) -> int:
        """PA of a kernel-image or linear-map VA (no page-table walk needed for either)."""
        if va >= self.text_va:
            return (va - self.kimage_voffset) & ((1 << 64) - 1)
        return (va - self.linear_offset) & ((1 << 64) - 1)


BootInfo._STRUCT = _u64_struct(BootInfo, "QII")
BootInfo.SIZE = BootInfo._STRUCT.size


@dataclass(frozen=True)
class ModArch:
    """`struct secvma_mod_arch`: the runs the kernel laid out, passed as mod_arch_va to HVC 30."""

    text_va: int
    text_size: int
    ro_va: int
    ro_size: int
    init_text_va: int
    init_text_size: int
    data_va: int
    data_size: int
    modid: int

    C_NAME: ClassVar[str] = "secvma_mod_arch"
    _STRUCT: ClassVar[struct.Struct]
    SIZE: ClassVar[int]

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        return cls(*cls._STRUCT.unpack_from(data))


ModArch._STRUCT = _u64_struct(ModArch, "")
ModArch.SIZE = ModArch._STRUCT.size


@dataclass(frozen=True)
class ModReport:
    """`struct secvma_mod_report`: where the kernel put a loaded module (`module_info[i]`).

    Section `k`'s final address is `module_secaddr[i][k]` (u64, MOD_REPORT_SECS per module).
    """

    used: int
    prot: int
    init_done: int
    shnum: int
    text_va: int
    text_pa: int
    text_pages: int
    ro_va: int
    ro_pa: int
    ro_pages: int
    data_va: int
    data_pa: int
    data_pages: int
    init_text_va: int
    modid: int
    load_ticks: int

    C_NAME: ClassVar[str] = "secvma_mod_report"
    _STRUCT: ClassVar[struct.Struct]
    SIZE: ClassVar[int]

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        return cls(*cls._STRUCT.unpack_from(data))


ModReport._STRUCT = _u64_struct(ModReport, "")
ModReport.SIZE = ModReport._STRUCT.size
MOD_REPORT_SECS = 96
MODLOAD_F_NO_INIT = 1
"""CMD_MODLOAD arg1 flag: stop before running the module's init."""

KERNEL_SYMBOL_SIZE = 16
"""`struct kernel_symbol {u64 value; u64 name;}` (Linux 4.18: absolute pointers), name-sorted."""


# ---- the testbed's host command mailbox ------------------------------------------------------

CMD_MAGIC = int.from_bytes(b"SEVMACMD", "little")
CMD_VERSION = 1
CMD_NAME_LEN = 64
CMD_MSG_LEN = 192


class Op(enum.IntEnum):
    """Commands the host posts to the kernel (hvabi.h CMD_*)."""

    NOP = 0
    WORKLOAD = 1
    WRITE = 2
    READ = 3
    EXEC = 4
    MSR = 5
    MRS = 6
    HVC = 7
    DMA = 8
    AT = 9
    ALLOC_PAGE = 10
    FREE_PAGE = 11
    MODLOAD = 12
    MODUNLOAD = 13
    SPAWN = 14
    POWEROFF = 15
    SYMBOL = 16
    VMAP = 17
    VUNMAP = 18
    RACE_SPIN = 19


DMA_DIR_FROM_DEVICE = 0
"""CMD_DMA direction: a disk read, the device writes memory at the IOVA."""
DMA_DIR_TO_DEVICE = 1
"""CMD_DMA direction: a disk write, the device reads memory at the IOVA."""
DMA_F_MAP = 1
"""CMD_DMA flag: ask the hypervisor to map IOVA = PA (HVC 25) first, whatever the answer."""
DMA_F_FILL = 2
"""CMD_DMA flag: fill [IOVA, IOVA + len) with the byte arg5 first (IOVA = PA of kernel RAM)."""
DMA_F_NO_UNMAP = 4
"""CMD_DMA flag: leave the mapping in place after the transfer."""
DMA_MAX_LEN = 0x10000


class Status(enum.IntEnum):
    """How a command ended (hvabi.h ST_*)."""

    OK = 0
    FAULT = 1
    FAILED = 2
    UNSUPPORTED = 3
    BADARG = 4
    BUSY = 5


class Form(enum.IntEnum):
    """Store instruction forms of the write primitive (each one distinct encoding)."""

    STR = 0
    STUR = 1
    STR_REG = 2
    STR_PRE = 3
    STR_POST = 4
    STP = 5
    STP_XZR = 6
    STXR = 7
    STLR = 8
    STTR = 9
    STNP = 10
    DC_ZVA = 11
    STLXR = 12
    STR_Q = 13  # SIMD: value | value2 << 64
    ST1 = 14  # SIMD structure store, value | value2 << 64
    CAS = 15  # FEAT_LSE (UNDEFINED on cortex-a57)
    SWP = 16  # FEAT_LSE
    LDADD = 17  # FEAT_LSE: memory += value


FORM_WIDTHS: dict[Form, tuple[int, ...]] = {
    Form.STR: (1, 2, 4, 8), Form.STUR: (1, 2, 4, 8), Form.STR_REG: (1, 2, 4, 8),
    Form.STR_PRE: (4, 8), Form.STR_POST: (4, 8), Form.STP: (4, 8), Form.STP_XZR: (8,),
    Form.STXR: (4, 8), Form.STLR: (1, 2, 4, 8), Form.STTR: (1, 2, 4, 8), Form.STNP: (8,),
    Form.DC_ZVA: (8,), Form.STLXR: (4, 8), Form.STR_Q: (16,), Form.ST1: (16,), Form.CAS: (8,),
    Form.SWP: (8,), Form.LDADD: (8,),
}
"""Widths the kernel has an instruction for, per form (anything else is ST_BADARG)."""


@dataclass(frozen=True)
class CmdLayout:
    """Byte offsets of `struct secvma_cmd` (one page of kernel .data, symbol `secvma_cmd`).

    Protocol: the host fills op/arg/name, then increments `seq`; the kernel runs the command
    and sets `done = seq` after writing status/ret/esr/far/msg/t_start/t_end.
    """

    magic: int = 0x00
    version: int = 0x08
    ready: int = 0x0C
    seq: int = 0x10
    done: int = 0x18
    op: int = 0x20
    status: int = 0x24
    arg: int = 0x28  # u64[6]
    ret: int = 0x58  # u64[4]
    esr: int = 0x78
    far: int = 0x80
    t_start: int = 0x88
    t_end: int = 0x90
    cntfrq: int = 0x98
    upload: int = 0xA0
    upload_pa: int = 0xA8
    upload_size: int = 0xB0
    boot_info: int = 0xB8
    booted_ticks: int = 0xC0
    name: int = 0xC8  # char[CMD_NAME_LEN]
    msg: int = 0xC8 + CMD_NAME_LEN  # char[CMD_MSG_LEN]

    C_NAME: ClassVar[str] = "secvma_cmd"
    SIZE: ClassVar[int] = 0xC8 + CMD_NAME_LEN + CMD_MSG_LEN


CMD = CmdLayout()


def field_offsets(cls: type[BootInfo] | type[ModArch] | type[ModReport]
                  ) -> list[tuple[str, int, int]]:
    """(name, offset, size) of every field of a packed little-endian ABI struct."""
    codes = cls._STRUCT.format.lstrip("<")
    out = []
    for i, f in enumerate(fields(cls)):
        out.append((f.name, struct.calcsize("<" + codes[:i]), struct.calcsize("<" + codes[i])))
    return out


def c_static_asserts() -> str:
    """C source that fails to compile unless hvabi.h matches this module exactly."""
    lines = ['#include <stddef.h>', '#include "hvabi.h"']

    def check(expr: str, value: int) -> None:
        lines.append(f'_Static_assert(({expr}) == {value:#x}ULL, "{expr} != {value:#x}");')

    for h in Hvc:
        check(f"HVC_{h.name}", h.value)
    check("HVC_INVALID", HVC_INVALID)
    for name, value in (("DMA_DIR_FROM_DEVICE", DMA_DIR_FROM_DEVICE),
                        ("DMA_DIR_TO_DEVICE", DMA_DIR_TO_DEVICE), ("DMA_F_MAP", DMA_F_MAP),
                        ("DMA_F_FILL", DMA_F_FILL), ("DMA_F_NO_UNMAP", DMA_F_NO_UNMAP),
                        ("DMA_MAX_LEN", DMA_MAX_LEN)):
        check(name, value)
    check("HVC_ENOSYS", HVC_ENOSYS)
    check("BOOT_INFO_MAGIC", BOOT_INFO_MAGIC)
    check("BOOT_INFO_VERSION", BOOT_INFO_VERSION)
    check("MOD_REPORT_SECS", MOD_REPORT_SECS)
    check("MODLOAD_F_NO_INIT", MODLOAD_F_NO_INIT)
    for cls in (BootInfo, ModArch, ModReport):
        for name, off, size in field_offsets(cls):
            check(f"offsetof(struct {cls.C_NAME}, {name})", off)
            check(f"sizeof(((struct {cls.C_NAME} *)0)->{name})", size)
        check(f"sizeof(struct {cls.C_NAME})", cls.SIZE)
    check("sizeof(struct kernel_symbol)", KERNEL_SYMBOL_SIZE)
    check("CMD_MAGIC", CMD_MAGIC)
    check("CMD_VERSION", CMD_VERSION)
    check("CMD_NAME_LEN", CMD_NAME_LEN)
    check("CMD_MSG_LEN", CMD_MSG_LEN)
    for fld in fields(CMD):
        check(f"offsetof(struct secvma_cmd, {fld.name})", getattr(CMD, fld.name))
    check("sizeof(struct secvma_cmd)", CmdLayout.SIZE)
    for op in Op:
        check(f"CMD_{op.name}", op.value)
    for st in Status:
        check(f"ST_{st.name}", st.value)
    for form in Form:
        check(f"FORM_{form.name}", form.value)
    check("NR_FORMS", len(Form))
    return "\n".join(lines) + "\n"
