"""The stage-2 fault router's fault-status extraction (a fast path of `decode_esr`, issue 14)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from secvma.arch.esr import EC, DataAbort, InstructionAbort, decode_esr
from secvma.kpcore.faults import _fsc


def _reference(esr: int) -> int:
    syn = decode_esr(esr)
    if isinstance(syn, DataAbort):
        return syn.dfsc
    if isinstance(syn, InstructionAbort):
        return syn.ifsc
    return 0


@given(st.sampled_from([int(e) for e in EC] + [0x3F, 0x2A]), st.integers(0, (1 << 26) - 1))
def test_fsc_equals_the_full_decoder(ec: int, low: int) -> None:
    esr = (ec << 26) | low
    assert _fsc(esr) == _reference(esr)


def test_fsc_of_a_permission_fault_and_of_an_hvc() -> None:
    assert _fsc((int(EC.DABT_LOW) << 26) | (1 << 25) | (1 << 6) | 0x0F) == 0x0F
    assert _fsc((int(EC.HVC64) << 26) | 0x0F) == 0
