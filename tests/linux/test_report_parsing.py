"""Reading the helper's report lines: a missing line is a failure, an effect is a success."""

from __future__ import annotations

from secvma.attacks.scenarios import Verdict
from secvma.linux.attacks import judge
from secvma.linux.session import parse_workloads

CONSOLE = """[    1.1] Run /init as init process
SECVMA-INIT: hello from userspace
SECVMA-WL pipe 1 269700000 4 groups x 200 msgs = 80000 bytes verified; 400 ping-pongs
SECVMA-WL threads 0 1000 counters 79999 (atomic) 80000 (mutex), expected 80000
"""


def test_workload_lines_parsed_and_missing_one_fails() -> None:
    got = parse_workloads(CONSOLE, ("pipe", "threads", "fileio"), "machine halted")
    assert got["pipe"].ok and got["pipe"].seconds == 0.2697
    assert "80000 bytes" in got["pipe"].detail
    assert not got["threads"].ok and "79999" in got["threads"].detail
    assert not got["fileio"].ok and got["fileio"].seconds is None
    assert "machine halted" in got["fileio"].detail


def test_only_the_first_report_of_a_workload_counts() -> None:
    text = CONSOLE + "SECVMA-WL pipe 0 5 later garbage\n"
    assert parse_workloads(text, ("pipe",), "")["pipe"].ok


def test_a_kernel_message_ahead_on_the_line_does_not_hide_a_report() -> None:
    """-smp 2: the kernel's console output can land in front of the helper's line."""
    text = "[    2.5] random: crng init doneSECVMA-WL forkexec 1 5000 200 children\n"
    got = parse_workloads(text, ("forkexec",), "")["forkexec"]
    assert got.ok and got.detail == "200 children"
    got = parse_workloads("SECVMA-WL forkexec [ 2.5] x 1 5000\n", ("forkexec",), "ended")["forkexec"]
    assert not got.ok and "unreadable" in got.detail and "[ 2.5] x" in got.detail


def _atk(name: str, effect: int, status: str, detail: str, alive: int | None = 1) -> str:
    out = f"secvma_lkdtm: {name}\nSECVMA-ATK {name} {effect} {status} {detail}\n"
    return out + (f"SECVMA-ALIVE {alive} status 0\n" if alive is not None else "")


def test_effect_means_succeeded() -> None:
    v, d = judge(_atk("WRITE_RO", 1, "exited:0", "effect=1 x -> y"), "WRITE_RO", "poweroff", [])
    assert v is Verdict.SUCCEEDED and "x -> y" in d


def test_no_effect_and_machine_alive_means_blocked() -> None:
    v, d = judge(_atk("EXEC_DATA", 0, "signal:11", "effect=0 calling it"), "EXEC_DATA",
                 "poweroff", [])
    assert v is Verdict.BLOCKED and "killed" in d


def test_no_effect_and_machine_gone_is_halted_not_blocked() -> None:
    v, _ = judge(_atk("EXEC_DATA", 0, "signal:11", "effect=0", alive=None), "EXEC_DATA",
                 "timeout", [])
    assert v is Verdict.HALTED
    v, _ = judge("secvma_lkdtm: EXEC_DATA\n", "EXEC_DATA", "halt", [])
    assert v is Verdict.HALTED


def test_internal_error_and_setup_failure_are_errors_never_blocked() -> None:
    text = _atk("WRITE_RO", 0, "exited:0", "effect=0")
    assert judge(text, "WRITE_RO", "poweroff", ["Stage2Abort: KeyError"])[0] is Verdict.INTERNAL_ERROR
    text = _atk("WRITE_RO", 0, "setup:-2", "loading secvma_lkdtm failed")
    assert judge(text, "WRITE_RO", "poweroff", [])[0] is Verdict.ERROR
    assert judge("", "WRITE_RO", "poweroff", [])[0] is Verdict.ERROR


def test_a_report_for_another_attack_is_not_evidence() -> None:
    assert judge(_atk("WRITE_RO", 1, "exited:0", "effect=1"), "WRITE_KERN", "poweroff",
                 [])[0] is Verdict.ERROR


def test_module_setup_failure_is_an_error_never_blocked() -> None:
    """A DMA attack whose disk could not be opened reports effect=0: an error, not a block."""
    text = _atk("DMA_TEXT", 0, "exited:106", "effect=0 setup: blkdev_get_by_dev(0x0) -> -6")
    assert judge(text, "DMA_TEXT", "poweroff", [], dma_faults=1)[0] is Verdict.ERROR


def test_dma_attack_blocked_only_with_a_dma_fault() -> None:
    """No effect and the machine went on, but the SMMU recorded nothing: the device was not
    stopped by it (the request may never have been issued), so it is not counted as blocked."""
    text = _atk("DMA_TEXT", 0, "exited:0", "effect=0 virtio-blk READ ... -> -110")
    assert judge(text, "DMA_TEXT", "poweroff", [], dma_faults=0)[0] is Verdict.ERROR
    assert judge(text, "DMA_TEXT", "poweroff", [], dma_faults=1)[0] is Verdict.BLOCKED


def test_host_observed_effect_overrides_the_module() -> None:
    """DMA_HYP: the kernel cannot read hypervisor memory back; the host's reading decides."""
    text = _atk("DMA_HYP", 0, "exited:0", "effect=0 host-judged virtio-blk READ ... -> 0")
    v, d = judge(text, "DMA_HYP", "poweroff", [], host_effect=True)
    assert v is Verdict.SUCCEEDED and "found the marker" in d
    assert judge(text, "DMA_HYP", "poweroff", [], host_effect=False, dma_faults=2)[0] is Verdict.BLOCKED


def test_guarded_register_blocked_only_with_the_guards_refusal() -> None:
    """VBAR_WRITE/MDSCR_KDE: the forged value gone but no `vbar`/`mdscr-kde` restore logged
    means the attack misfired or something else undid it; not credited as blocked."""
    text = _atk("MDSCR_KDE", 0, "exited:0", "effect=0 MDSCR_EL1 held 0x0 (forged 0x2000)")
    assert judge(text, "MDSCR_KDE", "poweroff", [],
                 evidence=("mdscr-kde", ["vbar"]))[0] is Verdict.ERROR
    assert judge(text, "MDSCR_KDE", "poweroff", [],
                 evidence=("mdscr-kde", ["mdscr-kde"]))[0] is Verdict.BLOCKED
