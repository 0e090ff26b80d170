"""The machine's CLI commands, run in-process with click's runner."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from secvma.cli import main

pytestmark = pytest.mark.qemu


def test_build_reports_the_trampoline_and_initramfs() -> None:
    """`secvma build --json` builds the guest code and names the output files."""
    res = CliRunner().invoke(main, ["build", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["trampoline"].endswith(".bin") and out["initramfs"].endswith(".cpio")
    assert out["testbed"].endswith(".bin")


def test_boot_of_a_missing_kernel_says_what_to_do(tmp_path: object) -> None:
    """`secvma boot --kernel missing` exits 2 with the cause and a next step."""
    res = CliRunner().invoke(main, ["boot", "--kernel", "/nonexistent/Image", "--quiet"])
    assert res.exit_code == 2
    assert "does not exist" in res.output


def test_bench_micro_json_keys() -> None:
    """`secvma bench micro --json` prints every contracted key with a measured number."""
    res = CliRunner().invoke(main, ["bench", "micro", "--iterations", "500", "--boot-runs", "0",
                                    "--idle-ms", "0", "--syscalls", "2000", "--syscall-rounds", "2",
                                    "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    for key in ("hvc_roundtrip_us", "stage2_abort_us", "sysreg_trap_us"):
        assert isinstance(out[key], float) and out[key] > 0
        assert out[key.replace("_us", "_p99_us")] >= out[key]
        assert out[key.replace("_us", "_cpu_pct")] > 0
    assert out["spin_then_block"]["hvc_roundtrip_us"] > 0
    assert out["spin_then_block"]["hvc_roundtrip_p99_us"] > 0
    assert out["boot_s_null"] is None and out["boot_s_plain"] is None  # --boot-runs 0
    assert out["idle_hypervisor_pct"] is None and out["idle_qemu_pct"] is None  # --idle-ms 0
    # getppid under transparent: every call's TTBR writes (KPTI) answered at EL2, none in Python
    assert out["syscall_ns_null"] > 0 and out["syscall_ns_transparent"] > 0
    assert out["syscall_ratio"] > 0
    runs = out["syscall_runs"]  # alternating rounds; the headline is one measured pair
    assert len(runs["null"]) == len(runs["transparent"]) == len(runs["ratio"]) == 2
    assert out["syscall_ratio"] in runs["ratio"]
    assert out["syscall_ns_null"] in runs["null"] and out["syscall_ns_transparent"] in runs["transparent"]
    per = out["syscall_traps_per_call"]
    assert per["null"]["el2"] == 0 and per["transparent"]["fast"] >= 2
    assert per["transparent"]["python"] < 0.01
    assert out["ttbr_fast_path_us"] is not None
    # the fast path's own EL2 time is what it costs beyond the trap floor (QEMU's exception entry
    # and ERET); both traps cost far more than the untrapped MSR (the order of the two traps
    # is left to the benchmark: their difference is within a loaded host's noise)
    assert min(out["ttbr_fast_path_guest_us"], out["trap_floor_us"]) > 5 * out["ttbr_untrapped_us"] > 0
    assert out["ttbr_fast_path_el2_us"] == pytest.approx(
        out["ttbr_fast_path_guest_us"] - out["trap_floor_us"], abs=2e-3)
    assert set(out["el2_path_runs"]) == {"untrapped", "floor", "ttbr_fast", "untrapped_asid",
                                         "ttbr_fast_asid"}
    # an ASID change makes QEMU flush its TLB: far dearer than the plain write, trapped or not
    assert min(out["ttbr_asid_untrapped_us"], out["ttbr_asid_fast_path_guest_us"]) \
        > 10 * out["ttbr_untrapped_us"]
    assert out["ttbr_asid_trap_us"] == pytest.approx(
        out["ttbr_asid_fast_path_guest_us"] - out["ttbr_asid_untrapped_us"], abs=2e-3)
    assert out["syscall_ratio_floor"] is not None and out["syscall_ratio_floor"] > 0


def test_boot_exits_non_zero_when_the_guest_halts() -> None:
    """A guest the hypervisor has to halt (stuck on a fault with no usable vector) is a failed
    boot: exit status 1 with the reason, also with --json (which still prints the summary)."""
    from secvma.machine.build import assemble_payload

    from .payload import payload

    stuck = payload("""
    ldr x9, =0x100000000
    msr vbar_el1, x9
    isb
    ldr x0, [x9]
""")
    kernel = assemble_payload(stuck, name="stuck").path
    res = CliRunner().invoke(main, ["boot", "--kernel", str(kernel), "--quiet", "--timeout", "30"])
    assert res.exit_code == 1, res.output
    assert "did not power off: halt" in res.output and "stuck" in res.output
    res = CliRunner().invoke(main, ["boot", "--kernel", str(kernel), "--json", "--timeout", "30"])
    assert res.exit_code == 1
    assert json.loads(res.stdout)["exit"] == "halt"


def test_trust_cert_is_checked_and_named(tmp_path: object, debian: object) -> None:
    """`--trust-cert` is for the Debian kernel's modules under transparent; a file that is no
    certificate is refused with its cause, before any machine starts."""
    from pathlib import Path

    from secvma.linux.guestbuild import signing_key

    _key, _cert, pem = signing_key()
    junk = Path(str(tmp_path)) / "junk.pem"
    junk.write_text("not a certificate\n")
    res = CliRunner().invoke(main, ["boot", "--policy", "none", "--trust-cert", str(pem)])
    assert res.exit_code != 0 and "--policy transparent" in res.output
    res = CliRunner().invoke(main, ["attack", "--trust-cert", str(pem)])
    assert res.exit_code != 0 and "--guest linux" in res.output
    res = CliRunner().invoke(main, ["boot", "--policy", "transparent", "--trust-cert", str(junk),
                                    "--quiet"])
    assert res.exit_code != 0 and "junk.pem" in res.output
