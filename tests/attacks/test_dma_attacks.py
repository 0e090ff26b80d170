"""The dma-* attack scenarios: a device told to write where the MMU protects."""

from __future__ import annotations

import pytest

from secvma.attacks.scenarios import ATTACKS, Verdict
from secvma.attacks.suite import POLICIES, run_attack

pytestmark = pytest.mark.qemu

DMA_ATTACKS = [a for a in ATTACKS if a.name.startswith("dma-")]


def test_there_are_dma_attacks_for_every_protected_kind() -> None:
    names = {a.name for a in DMA_ATTACKS}
    assert {"dma-kernel-text", "dma-rodata", "dma-page-table", "dma-module-text",
            "dma-hyp-memory", "dma-then-page-table", "dma-smmu-registers"} <= names


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("attack", DMA_ATTACKS, ids=lambda a: a.name)
def test_dma_attack_verdict(attack, policy: str) -> None:  # type: ignore[no-untyped-def]
    """Succeeds under none (the attack is real), blocked under secvma2024 except the gap-5
    scenario, blocked under hardened with the refusal logged; judged by the target bytes."""
    o = run_attack(attack, policy)
    assert o.matches, o
    if policy == "hardened":
        assert o.verdict is Verdict.BLOCKED and o.refusals, o
        if attack.name not in ("dma-then-page-table", "dma-smmu-registers"):
            assert any(r.startswith("smmu-map") for r in o.refusals), o
            assert any(r.startswith("dma-fault") for r in o.refusals), o
