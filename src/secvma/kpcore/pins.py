"""Per-bit pins of SCTLR_EL1 / TCR_EL1 / MAIR_EL1 for the stock kernel (`transparent`).

`transparent` pins the three registers at their values when a CPU runs on swapper_pg_dir with
its MMU on (`TransparentKPCore._lock`). On an ARMv8.0 core (cortex-a57) Debian's kernel never
writes them again. On a newer CPU (`-cpu max`: PAuth, MTE, E0PD, SSBS...) the kernel keeps
changing *feature* bits after that moment, per task or when a CPU feature is enabled late.
A pin is therefore a mask: the bits below that the kernel may change are let through (each
with the reason it cannot weaken what stage 2 enforces), every other bit is pinned. A value
that changes a pinned bit is refused (`pinned-sysreg`, value and pinned value logged).

    register   let through (bits)          why harmless to the hypervisor's guarantees
    SCTLR_EL1  EnIA 31, EnIB 30, EnDA 27,  PAuth key enables: whether PAC/AUT transform
               EnDB 13                     pointers (the kernel's own CFI, switched per task by
                                           PR_PAC_SET_ENABLED_KEYS); no effect on translation
               BT0 35, BT1 36 (set only)   BTI enforcement, enabled late by the cpufeature code:
                                           may be set (stricter), never cleared
               UCT 15                      whether EL0 reads of CTR_EL0 trap to EL1 (Linux
                                           clears it to emulate CTR_EL0); UMA, DZE, UCI, nTWI/
                                           nTWE... stay pinned (Debian never changes them)
               SPAN 23 (clear only)        cleared when FEAT_PAN is enabled: PAN set on every
                                           exception entry (stricter); never set again
               EPAN 57 (set only)          PAN for execute-only EL0 memory too
               ITFSB 37, TCF 41:40,        MTE controls of the kernel's own tag checks; RES0
               ATA0 42, ATA 43, TCSO* 58-59 without MTE (a secondary pins its written ITFSB=1)
               TCF0 39:38                  MTE tag-check mode for EL0 only (per task)
               DSSBS 44                    PSTATE.SSBS on exception entry (Spectre-v4
                                           mitigation choice, set when the feature is enabled)
    TCR_EL1    E0PD0 55, E0PD1 56          EL0 accesses to a TTBR half fault (a KPTI-like
               (set only)                  hardening for EL0 only; set when the feature is enabled)
               TBI0 37                     top-byte-ignore for TTBR0 (EL0 tagged addresses,
                                           per task)
               HA 39, HD 40 (set only)     hardware AF / dirty state (HD enabled late): a DBM
                                           descriptor becomes writable at stage 1 only; every
                                           write still needs stage 2, protected tables stay RO
    MAIR_EL1   none                        every attribute index decides a memory type

Everything else stays pinned, in particular SCTLR.M (stage 1 on), WXN, EE/E0E (descriptor
endianness of the walk), the cache enables, and TCR's T0SZ/T1SZ, granules, IPS, TBI1,
EPD0/EPD1 (how and whether the kernel's tables are walked). docs/el1-registers.md lists the same table.
"""

from __future__ import annotations

from dataclasses import dataclass

from secvma.platform import SysReg

ALL = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class LetThrough:
    """Bits of a pinned register the kernel may change, and why that is harmless."""

    name: str
    mask: int
    reason: str
    set_only: bool = False
    """True: the kernel may set these bits (enabling a protection), never clear them again."""
    clear_only: bool = False
    """True: the kernel may clear these bits (enabling a protection), never set them again."""


def _bits(*ns: int) -> int:
    out = 0
    for n in ns:
        out |= 1 << n
    return out


LET_THROUGH: dict[SysReg, tuple[LetThrough, ...]] = {
    SysReg.SCTLR_EL1: (
        LetThrough("BT0|BT1", _bits(35, 36), "BTI enforcement at EL0/EL1, enabled late by the "
                   "cpufeature code: may be set (stricter), never cleared", set_only=True),
        LetThrough("EnIA|EnIB|EnDA|EnDB", _bits(31, 30, 27, 13),
                   "PAuth key enables: the kernel's own CFI, switched per task; no "
                   "translation role"),
        LetThrough("SPAN", _bits(23), "cleared when FEAT_PAN is enabled: PAN is then set on "
                   "every exception entry (stricter): may be cleared, never set",
                   clear_only=True),
        LetThrough("EPAN", _bits(57), "PAN also for execute-only EL0 memory: may be set, "
                   "never cleared", set_only=True),
        LetThrough("UCT", _bits(15), "whether EL0 reads of CTR_EL0 trap to EL1 (Linux clears it "
                   "to emulate CTR_EL0 when a CPU feature needs it); the kernel's policy for its "
                   "own processes. The other EL0 trap controls (UMA, DZE, UCI, nTWI/nTWE...) "
                   "stay pinned: Debian never changes them (the SCTLR_WRITE attack flips UMA)"),
        LetThrough("TCF0", _bits(39, 38), "MTE tag-check fault mode at EL0 (per task)"),
        LetThrough("ITFSB|TCF|ATA0|ATA|TCSO0|TCSO", _bits(37, 40, 41, 42, 43, 58, 59),
                   "MTE controls (tag checks of the kernel's own accesses, no translation "
                   "role); RES0 without MTE, so a secondary CPU's written INIT_SCTLR_EL1_MMU_ON "
                   "(ITFSB set) differs from the value the kernel reads back and writes later"),
        LetThrough("DSSBS", _bits(44), "PSTATE.SSBS on exception entry (speculative store "
                   "bypass mitigation choice)"),
    ),
    SysReg.TCR_EL1: (
        LetThrough("E0PD0|E0PD1", _bits(55, 56), "EL0 accesses to a TTBR half fault "
                   "(hardening of EL0 only, enabled late): may be set, never cleared",
                   set_only=True),
        LetThrough("TBI0", _bits(37), "top byte ignored for TTBR0 addresses (EL0 tags)"),
        LetThrough("HA|HD", _bits(39, 40), "hardware Access flag / dirty state (HD is enabled "
                   "late by the cpufeature code): the walker may then set AF or clear AP[2] of "
                   "a DBM descriptor, but every write still needs stage 2's permission and "
                   "protected table pages stay read-only at stage 2: may be set, never cleared",
                   set_only=True),
    ),
    SysReg.MAIR_EL1: (),
}


def free_mask(reg: SysReg) -> int:
    """Bits of `reg` the kernel may change either way."""
    out = 0
    for lt in LET_THROUGH.get(reg, ()):
        if not lt.set_only:
            out |= lt.mask
    return out


def set_only_mask(reg: SysReg) -> int:
    """Bits of `reg` the kernel may set but not clear."""
    out = 0
    for lt in LET_THROUGH.get(reg, ()):
        if lt.set_only:
            out |= lt.mask
    return out


def clear_only_mask(reg: SysReg) -> int:
    """Bits of `reg` the kernel may clear but not set."""
    out = 0
    for lt in LET_THROUGH.get(reg, ()):
        if lt.clear_only:
            out |= lt.mask
    return out


def pin_mask(reg: SysReg) -> int:
    """The bits of `reg` that are pinned outright (no let-through of any kind)."""
    return ALL & ~(free_mask(reg) | set_only_mask(reg) | clear_only_mask(reg))


def changed_pinned(reg: SysReg, value: int, pinned: int) -> int:
    """The bits by which `value` breaks the pin `pinned` (0: the write is allowed): a pinned
    bit changed, a set-only bit set in `pinned` cleared, or a clear-only bit clear in `pinned`
    set."""
    return (((value ^ pinned) & pin_mask(reg)) | (pinned & ~value & set_only_mask(reg))
            | (~pinned & value & clear_only_mask(reg)))


def pinned_ok(reg: SysReg, value: int, pinned: int) -> bool:
    """Whether writing `value` keeps the pin `pinned` of `reg`."""
    return changed_pinned(reg, value, pinned) == 0


def next_pin(reg: SysReg, value: int, pinned: int) -> int:
    """The pin after an allowed write of `value`: set-only bits it set stay set, clear-only
    bits it cleared stay clear, free bits follow the value."""
    free = free_mask(reg)
    out = (pinned & ~free) | (value & free)
    out |= value & set_only_mask(reg)
    return out & ~(~value & clear_only_mask(reg)) & ALL
