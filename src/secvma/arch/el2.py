"""EL2 control-register fields a hypervisor programs (Arm ARM D19.2 HCR_EL2, VTCR_EL2)."""

from __future__ import annotations

# HCR_EL2 (D19.2.48)
HCR_VM = 1 << 0  # stage 2 translation for EL1&0
HCR_SWIO = 1 << 1
HCR_FMO = 1 << 3
HCR_IMO = 1 << 4
HCR_AMO = 1 << 5
HCR_FB = 1 << 9  # broadcast TLB/cache maintenance to the inner shareable domain
HCR_BSU_IS = 1 << 10  # barrier shareability upgrade: inner shareable
HCR_TWI = 1 << 13
HCR_TWE = 1 << 14
HCR_TSC = 1 << 19  # trap SMC (PSCI) to EL2
HCR_TVM = 1 << 26  # trap EL1 writes to the virtual-memory control registers
HCR_TRVM = 1 << 30  # trap EL1 reads of them
HCR_RW = 1 << 31  # EL1 is AArch64
HCR_API = 1 << 41
HCR_APK = 1 << 40

# VTCR_EL2 (D19.2.158) for the 4 KB granule
VTCR_RES1 = 1 << 31


def vtcr(t0sz: int, sl0: int, ps: int = 0) -> int:
    """VTCR_EL2 with inner/outer write-back caching, inner shareable, 4 KB granule."""
    if not (16 <= t0sz <= 39 and 0 <= sl0 <= 2 and 0 <= ps <= 6):
        raise ValueError(f"VTCR T0SZ={t0sz} SL0={sl0} PS={ps} out of range")
    return t0sz | (sl0 << 6) | (1 << 8) | (1 << 10) | (3 << 12) | (ps << 16) | VTCR_RES1


VTCR_4G = vtcr(32, 1)
"""A 4 GiB IPA space starting at level 1 (4 entries), 32-bit PA: the virt board with highmem=off."""
