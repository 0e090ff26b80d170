"""`secvma run --guest linux`: real workloads on the unmodified Debian kernel, each checked for
its result, under the NullHypervisor and the transparent policy, on 1 and 2 CPUs."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from secvma import fixtures as fx
from secvma.cli import main
from secvma.linux.session import PROTECTION_KEYS, WORKLOADS, run_linux_workloads

pytestmark = [pytest.mark.qemu, pytest.mark.debian, pytest.mark.slow]


@pytest.mark.parametrize(("policy", "smp"), [
    ("none", 1), ("none", 2), ("transparent", 1), ("transparent", 2)])
def test_all_workloads_ok_and_nothing_refused(debian: fx.FixtureSet, policy: str, smp: int) -> None:
    r = run_linux_workloads(policy, "huge", smp, WORKLOADS)
    assert r.exit == "poweroff", r.reason
    assert set(r.workloads) == set(WORKLOADS)
    for w in r.workloads.values():
        assert w.ok, f"{w.name}: {w.detail}; console tail:\n{r.console[-3000:]}"
        assert w.seconds is not None and w.seconds > 0
    assert r.refusals == []
    assert r.internal_errors == []
    assert r.ok
    assert set(r.protection) == set(PROTECTION_KEYS)
    if policy == "transparent":
        prot = r.protection
        tables = prot["table_pages"]
        assert isinstance(tables, dict) and all(tables[k] > 0 for k in tables)
        assert prot["kernel_code_pages"] > 3000 and prot["text_patches_accepted"] > 40000
        assert prot["text_patches_refused"] == 0
        boot = prot["text_patches_boot"]
        assert isinstance(boot, dict) and sum(boot.values()) == prot["text_patches_accepted"] \
            - sum(prot["text_patches_runtime"].values())  # type: ignore[union-attr]
        assert prot["user_roots_released"] > 0  # forkexec's exited processes
        assert prot["modules_authenticated"] >= 2 and prot["modules_refused"] == 0


def test_transparent_4k_stage2_with_invariants(debian: fx.FixtureSet) -> None:
    r = run_linux_workloads("transparent", "4k", 1, ("mmap", "forkexec"), check_invariants=True)
    assert all(w.ok for w in r.workloads.values()), r.workloads
    assert r.refusals == [] and r.invariant_violations == [] and r.ok


def test_cli_json_contract(debian: fx.FixtureSet) -> None:
    res = CliRunner().invoke(main, ["run", "--guest", "linux", "--policy", "none",
                                    "--workload", "threads", "--workload", "fileio", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert {"workloads", "refusals", "invariant_violations", "protection", "ok"} <= set(data)
    assert set(data["workloads"]) == {"threads", "fileio"}
    for w in data["workloads"].values():
        assert set(w) == {"ok", "seconds", "detail"} and w["ok"] is True
    assert data["ok"] is True and data["refusals"] == []
    assert set(data["protection"]) == set(PROTECTION_KEYS)
    assert set(data["protection"]) == set(PROTECTION_KEYS)  # all zero: nothing is protected


def test_cli_rejects_mismatched_guest_and_policy() -> None:
    r = CliRunner().invoke(main, ["run", "--guest", "linux", "--policy", "hardened"])
    assert r.exit_code != 0 and "testbed" in r.output
    r = CliRunner().invoke(main, ["run", "--policy", "transparent"])
    assert r.exit_code != 0 and "--guest linux" in r.output
    r = CliRunner().invoke(main, ["run", "--guest", "linux", "--policy", "none",
                                  "--check-invariants"])
    assert r.exit_code != 0


def test_a_failing_workload_fails_the_command(debian: fx.FixtureSet) -> None:
    """A run that cannot finish (timeout before the workloads) reports failure, exit 1."""
    res = CliRunner().invoke(main, ["run", "--guest", "linux", "--policy", "none", "--workload",
                                    "pipe", "--timeout", "0.5", "--json"])
    assert res.exit_code == 1, res.output
    data = json.loads(res.output)
    assert data["ok"] is False and data["workloads"]["pipe"]["ok"] is False
