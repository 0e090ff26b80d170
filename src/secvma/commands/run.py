"""`secvma run`: boot the testbed kernel under a policy and run its workloads."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.table import Table

from secvma.machine.errors import MachineError
from secvma.machine.qemu import CPUS, DEFAULT_CPU
from secvma.testbed.build import build_testbed
from secvma.testbed.policies import (
    DEFAULT_POLICY,
    POLICIES,
    S2_MODES,
    make_hypervisor,
)
from secvma.testbed.run import EXTRA_WORKLOADS, WORKLOADS, RunReport, run_workloads
from secvma.ui import console, emit_json, err_console, fail

if TYPE_CHECKING:
    from secvma.linux.session import LinuxRunReport


LINUX_POLICIES = ("none", "transparent")
LINUX_WORKLOADS = ("forkexec", "mmap", "pipe", "threads", "fileio", "modules")


TESTBED_MAX_CPUS = 4  # NR_CPUS of guest/testbed/include/kernel.h

@click.command("run")
@click.option("--guest", type=click.Choice(["testbed", "linux"]), default="testbed",
              show_default=True,
              help="testbed: the testbed kernel; linux: the unmodified Debian kernel.")
@click.option("--policy", type=click.Choice((*POLICIES, "transparent")), default=None,
              help=f"Hypervisor policy. testbed: none, secvma2024, hardened (default "
                   f"{DEFAULT_POLICY}); linux: none, transparent (default transparent).")
@click.option("--s2", type=click.Choice(S2_MODES), default="huge", show_default=True,
              help="Stage-2 mapping granularity.")
@click.option("--smp", type=click.IntRange(1, 8), default=1, show_default=True,
              help="CPUs (testbed: up to 4; the secondaries idle while CPU 0 runs the workloads).")
@click.option("--workload", "workloads", multiple=True, default=("all",), show_default=True,
              type=click.Choice(tuple(dict.fromkeys(
                  (*WORKLOADS, *EXTRA_WORKLOADS, *LINUX_WORKLOADS, "all")))),
              help="Workload to run (repeatable). testbed: " + ", ".join(WORKLOADS)
                   + "; linux: " + ", ".join(LINUX_WORKLOADS) + ".")
@click.option("--timeout", type=float, default=None,
              help="Seconds before the run is declared hung (default 120 testbed, 900 linux).")
@click.option("--console", "echo", is_flag=True, help="Echo the kernel console while running.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--module-keys", "module_key", type=click.Path(exists=True, dir_okay=False),
              help="Ed25519 public key (PEM, raw 32 bytes or hex) for module signatures "
                   "(default: a per-run key signing the testbed's own modules).")
@click.option("--module-sigs", "module_sigs", type=click.Path(exists=True, dir_okay=False),
              help="Module signature table: JSON {name: hex} or 'name hex' lines.")
@click.option("--trust-cert", "trust_certs", multiple=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="linux, transparent: also trust modules signed for this certificate (PEM or "
                   "DER; repeatable). Debian's module-signing certificate is always trusted.")
@click.option("--check-invariants", is_flag=True,
              help="Check every invariant of docs/kpcore-spec.md §9 after every trap "
                   "(slow; not for --policy none).")
@click.option("--cpu", type=click.Choice(CPUS), default=DEFAULT_CPU, show_default=True,
              help="QEMU CPU model. max brings FEAT_XNX (stage 2 then keeps EL1 from running "
                   "anything but kernel and authenticated module text), PAuth, BTI, LSE...; the "
                   "hypervisor reads the features from the ID registers.")
def run_cmd(guest: str, policy: str | None, s2: str, smp: int, workloads: tuple[str, ...],
            timeout: float | None, echo: bool, as_json: bool, module_key: str | None,
            module_sigs: str | None, check_invariants: bool,
            trust_certs: tuple[Path, ...], cpu: str = DEFAULT_CPU) -> None:
    """Boot a kernel under a policy, run workloads, print a summary.

    Per workload: ok and wall time (measured from the host); traps by class; hypervisor
    refusals; invariant violations (and for `--guest linux` what the policy protects). Exit
    status 1 when a workload fails or the hypervisor refused anything, hit an internal error or
    saw an invariant broken (legal workloads need none of these).
    """
    if guest == "linux":
        if module_key is not None or module_sigs is not None:
            fail("--module-keys/--module-sigs are for the testbed kernel",
                 "the Debian kernel's modules carry their own Linux signatures")
        _run_linux(policy or "transparent", s2, smp, workloads, timeout or 900.0, echo, as_json,
                   trust_certs, check_invariants, cpu)
        return
    if smp > TESTBED_MAX_CPUS:
        fail(f"the testbed kernel starts at most {TESTBED_MAX_CPUS} CPUs", "use --smp 1..4")
    policy = policy or DEFAULT_POLICY
    if policy not in POLICIES:
        fail(f"policy {policy!r} is for the Debian kernel", "use --guest linux")
    bad = [w for w in workloads if w not in (*WORKLOADS, *EXTRA_WORKLOADS, "all")]
    if bad:
        fail(f"not a testbed workload: {', '.join(bad)}", f"one of {', '.join(WORKLOADS)}")
    timeout = timeout or 120.0
    kw: dict[str, object] = {}
    if check_invariants:
        if policy == "none":
            fail("--check-invariants needs a KPCore policy", "use --policy hardened or secvma2024")
        kw["check_invariants"] = True
    if (module_key is None) != (module_sigs is None):
        fail("--module-keys and --module-sigs go together",
             "give both, or neither for the testbed's own per-run signature table")
    if module_key is not None and module_sigs is not None and policy != "none":
        from secvma.kpcore.modkeys import ModuleKeys
        from secvma.module.errors import ModuleError

        try:
            kw["module_keys"] = ModuleKeys.from_files(module_key, module_sigs)
        except ModuleError as exc:
            fail(f"module keys: {exc}", "see `secvma run --help` for the file formats")
    hv = make_hypervisor(policy, s2, **kw)
    try:
        image = build_testbed()
        report = run_workloads(hv, workloads, policy=policy, s2=s2, image=image,
                               timeout_s=timeout, echo_console=echo, ncpus=smp, cpu=cpu)
    except MachineError as exc:
        fail(exc.message, exc.hint or "rerun with --console to see the kernel's output")
    if as_json:
        emit_json(report.to_json())
    else:
        _print(report)
    if not report.ok:
        failed = [n for n, w in report.workloads.items() if not w.ok]
        err_console.print(f"[bold red]run failed:[/] workloads failed: {', '.join(failed) or 'none'}; "
                          f"refusals {len(report.refusals)}, internal errors "
                          f"{len(report.internal_errors)}, invariant violations "
                          f"{len(report.invariant_violations)}")
        raise SystemExit(1)


def _run_linux(policy: str, s2: str, smp: int, workloads: tuple[str, ...], timeout: float,
               echo: bool, as_json: bool, trust_certs: tuple[Path, ...],
               check_invariants: bool, cpu: str = DEFAULT_CPU) -> None:
    from secvma.fixtures import FixturesUnavailable
    from secvma.linux.session import run_linux_workloads
    from secvma.linux.trust import TrustError

    if policy not in LINUX_POLICIES:
        fail(f"policy {policy!r} is for the testbed kernel",
             f"the Debian kernel runs under {' or '.join(LINUX_POLICIES)}")
    bad = [w for w in workloads if w not in (*LINUX_WORKLOADS, "all")]
    if bad:
        fail(f"not a Linux workload: {', '.join(bad)}", f"one of {', '.join(LINUX_WORKLOADS)}")
    if check_invariants and policy == "none":
        fail("--check-invariants needs a KPCore policy", "use --policy transparent")
    try:
        report = run_linux_workloads(policy, s2, smp, workloads, check_invariants=check_invariants,
                                     timeout_s=timeout, echo=echo and not as_json,
                                     trust_certs=trust_certs, cpu=cpu)
    except MachineError as exc:
        fail(exc.message, exc.hint or "rerun with --console to see the kernel's output")
    except FixturesUnavailable as exc:
        fail(f"Debian fixtures: {exc}", "run `secvma fixtures fetch` with the archive reachable")
    except TrustError as exc:
        fail(str(exc), "--trust-cert takes a PEM or DER X.509 certificate")
    if as_json:
        emit_json(report.to_json())
    else:
        _print_linux(report)
    if not report.ok:
        raise SystemExit(1)


def _print_linux(r: LinuxRunReport) -> None:
    boot = f"{r.boot_s:.3f} s" if r.boot_s is not None else "never reached userspace"
    console.print(f"[bold]Debian[/] policy [cyan]{r.policy}[/], stage 2 [cyan]{r.s2}[/], "
                  f"{r.smp} CPU(s) [cyan]{r.cpu}[/] (FEAT_XNX {'used' if r.feat_xnx else 'no'}): "
                  f"userspace at {boot}, total {r.wall_s:.3f} s, exit {r.exit}"
                  + (f" ({r.reason})" if r.reason else ""))
    t = Table(title="workloads (each checked for its result)")
    for col in ("workload", "ok", "time", "result"):
        t.add_column(col, justify="right" if col == "time" else "left")
    for w in r.workloads.values():
        t.add_row(w.name, "[green]ok[/]" if w.ok else "[red]FAIL[/]",
                  "-" if w.seconds is None else f"{w.seconds * 1e3:.1f} ms", w.detail)
    console.print(t)
    p = Table(title="protection")
    p.add_column("what")
    p.add_column("value")
    for k, v in r.protection.items():
        p.add_row(k, str(v))
    console.print(p)
    console.print("traps: " + ", ".join(f"{k} {v}" for k, v in sorted(r.traps.items())))
    console.print(f"hypervisor refusals: {len(r.refusals)}   invariant violations: "
                  f"{len(r.invariant_violations)}   internal errors: {len(r.internal_errors)}")
    for ref in r.refusals[:10]:
        console.print(f"  [red]refused[/] {ref['rule']}: {ref['reason']}")
    for line in r.invariant_violations[:10] + r.internal_errors[:10]:
        console.print(f"  [red]{line}[/]")


def _print(r: RunReport) -> None:
    boot = f"{r.boot_s:.3f} s" if r.boot_s is not None else "never ready"
    console.print(f"[bold]testbed[/] policy [cyan]{r.policy}[/], stage 2 [cyan]{r.s2}[/], "
                  f"cpu [cyan]{r.cpu}[/] (FEAT_XNX {'used' if r.feat_xnx else 'no'}): "
                  f"boot {boot}, total {r.wall_s:.3f} s, exit {r.exit}"
                  + (f" ({r.reason})" if r.reason else ""))
    t = Table(title="workloads")
    t.add_column("workload")
    t.add_column("ok")
    t.add_column("wall", justify="right")
    t.add_column("result")
    for w in r.workloads.values():
        t.add_row(w.name, "[green]ok[/]" if w.ok else "[red]FAIL[/]", f"{w.wall_s * 1e3:.1f} ms",
                  w.message)
    console.print(t)
    traps = Table(title="traps by class")
    traps.add_column("class")
    traps.add_column("count", justify="right")
    for k, v in sorted(r.traps.items()):
        traps.add_row(k, str(v))
    for nr, v in sorted(r.hvc.items()):
        traps.add_row(f"  HVC {nr}", str(v))
    console.print(traps)
    console.print(f"hypervisor refusals: {len(r.refusals)}   invariant violations: "
                  f"{len(r.invariant_violations)}   internal errors: {len(r.internal_errors)}")
    for line in r.internal_errors[:10] + r.refusals[:10] + r.invariant_violations[:10]:
        console.print(f"  {line}")


COMMANDS: list[click.Command] = [run_cmd]
