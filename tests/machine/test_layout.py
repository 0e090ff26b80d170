"""The mailbox page's regions (layout.py) do not overlap and fit in one page."""

from __future__ import annotations

import itertools

import pytest

from secvma.machine import layout as L
from secvma.machine.build import build_trampoline


def test_mailbox_regions_are_disjoint_and_fit_the_page() -> None:
    """Header words, frame, commands, fast-path table, interrupt queue, guard table: in order."""
    header = [v for k, v in vars(L).items() if k.startswith("MB_") and isinstance(v, int) and v < L.MB_X]
    assert max(header) + 8 <= L.MB_X
    regions = [
        (L.MB_X, L.MB_X + 31 * 8),
        (L.MB_CMDS, L.MB_CMDS + L.MAX_CMDS * L.CMD_SIZE),
        (L.MB_FASTTAB, L.MB_FASTTAB_END),
        (L.MB_STATE, L.MB_STATE + 64),  # a cache line of its own
        (L.MB_IRQQ, L.MB_IRQQ + L.IRQQ_MAX * 4),
        (L.MB_IRQQ_N, L.MB_IRQQ_N + 8),
        (L.MB_LR_OVF, L.MB_LR_OVF + 8),
        (L.MB_SGIS, L.MB_SGIS + 8),
        (L.MB_GICR, L.MB_GICR + 8),
        (L.MB_LAST_TICK, L.MB_LAST_TICK + 8),
        (L.MB_PPI_FIX, L.MB_PPI_FIX + 8),
        (L.MB_NLR_MASK, L.MB_NLR_MASK + 8),
        (L.MB_GUARDTAB, L.MB_GUARDTAB_END),
    ]
    for (_, end), (start, _) in itertools.pairwise(regions):
        assert end <= start
    assert regions[-1][1] <= L.MBOX_STRIDE
    assert L.MB_STATE % 64 == 0
    assert (L.FAST_MAX + 1) * L.FAST_ENTRY_SIZE <= L.MB_FASTTAB_END - L.MB_FASTTAB
    assert (L.GUARD_MAX + 1) * L.GUARD_ENTRY_SIZE <= L.MB_GUARDTAB_END - L.MB_GUARDTAB


def test_guard_constants_match_the_board() -> None:
    """The SGI1R key decodes (as an EC 0x18 ISS) to ICC_SGI1R_EL1 = S3_0_C12_C11_5; PPIs are PPIs."""
    iss = L.SGI1R_ISS_KEY
    enc = ((iss >> 20) & 3, (iss >> 14) & 7, (iss >> 10) & 0xF, (iss >> 1) & 0xF, (iss >> 17) & 7)
    assert enc == (3, 0, 12, 11, 5) and iss & 1 == 0  # a write, Rt masked
    assert 16 <= L.MAINT_PPI < L.GUARD_PPI < 32


def test_trampoline_measurement_build_is_separate_and_named() -> None:
    """The TRAP_FLOOR build (bench micro's trap floor) is its own binary, never the default;
    an unknown variant is refused rather than silently built as the default."""
    default, floor = build_trampoline(), build_trampoline("TRAP_FLOOR")
    assert default.path != floor.path
    assert default.path.read_bytes() != floor.path.read_bytes()
    with pytest.raises(ValueError, match="no trampoline variant"):
        build_trampoline("FAST")
