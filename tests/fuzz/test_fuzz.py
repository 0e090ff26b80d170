"""`secvma fuzz`: a short fixed-seed campaign per policy finds nothing and reaches every kind of
op and refusal; every saved failing sequence (tests/fuzz_cases) replays clean now; and the
fuzzer does find a planted hypervisor bug, saving a case that reproduces it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from secvma.cli import main
from secvma.fuzz.campaign import Config, load_case, replay, run_campaign
from secvma.fuzz.ops import OpKind
from secvma.sim.modules import ToolMissing, build_modules

CASES = sorted((Path(__file__).resolve().parents[1] / "fuzz_cases").glob("*.json"))


@pytest.fixture(scope="module")
def modules(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    try:
        return build_modules(tmp_path_factory.mktemp("fuzzmods"),
                             ("mod_hello", "mod_counter", "mod_user"))
    except ToolMissing as exc:
        pytest.skip(str(exc))


def test_short_campaign_hardened_smp2(modules: dict[str, bytes], tmp_path: Path) -> None:
    res = run_campaign(700, 20261204, Config("hardened", "huge", 2), modules, cases_dir=tmp_path)
    assert res.failures == [], res.failures
    assert res.ok and not list(tmp_path.iterdir())
    assert set(res.ops) == {k.value for k in OpKind}
    rules = set(res.refusals)
    for family in ("kpt-decode", "kpt-L", "kpt-store", "mload-", "smmu-", "hvc-", "ttbr"):
        assert any(r.startswith(family) for r in rules), (family, sorted(rules))
    assert res.outcomes["module-load:loaded"] > 0  # unmutated signed images do load
    assert res.outcomes["store:done"] > 0 and res.outcomes["store:injected"] > 0


@pytest.mark.parametrize("policy,s2,steps", [("secvma2024", "huge", 60), ("hardened", "4k", 150)])
def test_short_campaign_other_modes(modules: dict[str, bytes], tmp_path: Path, policy: str,
                                    s2: str, steps: int) -> None:
    res = run_campaign(steps, 7, Config(policy, s2, 1), modules, cases_dir=tmp_path)
    assert res.failures == [], res.failures
    assert sum(res.refusals.values()) > 0
    if policy == "secvma2024":  # its panics halt the machine: the campaign reboots and goes on
        assert any(k.startswith("halted: kpcore panic") for k in res.reboots), res.reboots


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_saved_case_replays_clean(modules: dict[str, bytes], case: Path) -> None:
    cfg, ops, record = load_case(case)
    assert ops and record["failure"]["signature"]
    assert replay(ops, cfg, modules) is None


def test_fuzzer_finds_a_planted_bug(modules: dict[str, bytes], tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Break hardened's table-store rule (any new descriptor accepted): the campaign must report
    invariant violations, exit non-zero, and save a shrunk case that still reproduces."""
    from secvma.kpcore import kpt

    def accept_all(st: object, plat: object, level: int, slot: int, old: int, new: int,
                   plan: kpt.Plan) -> None:
        plan.slots[slot] = new

    monkeypatch.setattr(kpt, "plan_kpt_slot", accept_all)
    res = run_campaign(300, 3, Config("hardened", "huge", 1), modules, cases_dir=tmp_path,
                       shrink_s=2.0, max_failures=3)
    assert res.violations > 0 and not res.ok and res.steps < 300  # stopped at 3 failures
    saved = sorted(tmp_path.glob("3*.json"))
    assert saved and len(saved) == len(res.cases)
    cfg, ops, record = load_case(saved[0])
    assert len(ops) < 300
    again = replay(ops, cfg, modules, record["failure"]["signature"])
    assert again is not None and again.signature == record["failure"]["signature"]


def test_cli_json_contract(tmp_path: Path) -> None:
    r = CliRunner().invoke(main, ["fuzz", "--steps", "40", "--seed", "11", "--smp", "2", "--json",
                                  "--cases", str(tmp_path)])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["steps"] == 40 and out["seed"] == 11 and out["smp"] == 2
    assert out["invariant_violations"] == 0 and out["internal_errors"] == 0
    assert isinstance(out["refusals"], dict) and out["ok"] is True


@pytest.mark.qemu
@pytest.mark.slow
def test_qemu_tier_short_campaign() -> None:
    """The same ops as real AArch64 code on the testbed: stores of several forms reach KPCore
    through the trampoline, hardened refuses by rule, no violation, no internal error."""
    import shutil

    if shutil.which("qemu-system-aarch64") is None:
        pytest.skip("qemu-system-aarch64 not installed")
    from secvma.fuzz.qemu import run_qemu_campaign

    res = run_qemu_campaign(60, 1, Config("hardened", "huge", 1))
    assert res.failures == [], res.failures
    assert res.steps == 60 and res.tier == "qemu"
    assert res.outcomes["store:faulted"] > 0 and res.outcomes["store:done"] > 0
    assert any(r.startswith("kpt-") for r in res.refusals), res.refusals
