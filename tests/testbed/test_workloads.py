"""Boot the testbed under policy none and run every workload; each checks its own results."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from secvma.cli import main
from secvma.hvabi import Hvc
from secvma.kpcore import KPCore
from secvma.testbed.build import TestbedImage
from secvma.testbed.nullabi import TestbedNullHypervisor
from secvma.testbed.policies import make_hypervisor
from secvma.testbed.run import WORKLOADS, RunReport, expand, run_workloads

pytestmark = pytest.mark.qemu


@pytest.fixture(scope="module")
def report_all(testbed: TestbedImage) -> RunReport:
    return run_workloads(TestbedNullHypervisor(), ["all"], policy="none", s2="huge",
                         image=testbed, timeout_s=60)


def test_all_runs_under_policy_none(report_all: RunReport) -> None:
    """`all` boots, runs every workload and powers off cleanly (how long it takes is a figure
    of benchmarks/bench_testbed.py, not a condition of this test)."""
    assert report_all.exit == "poweroff"
    assert list(report_all.workloads) == list(WORKLOADS)
    assert report_all.ok, {n: w.message for n, w in report_all.workloads.items()}
    assert report_all.boot_s is not None and 0 < report_all.boot_s < report_all.wall_s


@pytest.mark.parametrize("name", WORKLOADS)
def test_each_workload_passes_its_self_check(report_all: RunReport, name: str) -> None:
    """hackbench checksums, kernbench page contents and exit codes, module reports, EL0 kills."""
    w = report_all.workloads[name]
    assert w.ok, w.message
    assert w.message.startswith(name) and w.wall_s > 0


def test_user_address_spaces_switch_only_through_hvc_35(report_all: RunReport) -> None:
    """Processes get registered PGDs (HVC 33/34) and every switch is an HVC 35."""
    assert report_all.hvc[Hvc.ENABLE_S2_TRANS] == 1
    assert report_all.hvc[Hvc.ALLOC_EL0_PGD] >= 10
    assert report_all.hvc[Hvc.DO_SWITCH_MM] >= report_all.hvc[Hvc.ALLOC_EL0_PGD]
    assert report_all.traps.get("SysregTrap", 0) == 0  # policy none does not trap TVM


def test_unknown_workload_is_refused_before_booting() -> None:
    """A typo in a workload name is an error, not an empty run."""
    with pytest.raises(ValueError, match="unknown workload"):
        expand(["hackbenc"])
    assert expand(["all", "modules"]) == list(WORKLOADS)


def test_policy_none_is_the_testbed_null_hypervisor() -> None:
    """`none` gives the NullHypervisor with the SECvma ABI, `hardened` a KPCore with the
    testbed's module keys; bad names are rejected."""
    assert isinstance(make_hypervisor("none", "4k"), TestbedNullHypervisor)
    with pytest.raises(ValueError):
        make_hypervisor("paranoid", "huge")
    with pytest.raises(ValueError):
        make_hypervisor("none", "1g")
    hard = make_hypervisor("hardened", "huge")
    assert isinstance(hard, KPCore) and hard.policy.hardened and hard.module_keys is not None


def test_cli_run_json_has_the_documented_keys(testbed: TestbedImage) -> None:
    """`secvma run --policy none --workload faults --json` reports workloads/traps/refusals/violations."""
    import json

    res = CliRunner().invoke(main, ["run", "--policy", "none", "--workload", "faults", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["workloads"]["faults"]["ok"] is True
    assert {"workloads", "traps", "refusals", "invariant_violations"} <= set(data)
    assert data["traps"]["Hvc"] > 0 and data["refusals"] == 0
