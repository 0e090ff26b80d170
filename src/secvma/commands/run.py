"""`secvma run`: boot the testbed kernel under a policy and run its workloads."""

from __future__ import annotations

import click
from rich.table import Table

from secvma.machine.errors import MachineError
from secvma.testbed.build import build_testbed
from secvma.testbed.policies import (
    DEFAULT_POLICY,
    POLICIES,
    S2_MODES,
    PolicyUnavailable,
    make_hypervisor,
)
from secvma.testbed.run import EXTRA_WORKLOADS, WORKLOADS, RunReport, run_workloads
from secvma.ui import console, emit_json, fail


@click.command("run")
@click.option("--policy", type=click.Choice(POLICIES), default=DEFAULT_POLICY, show_default=True,
              help="Hypervisor policy: none (no protection), secvma2024, hardened.")
@click.option("--s2", type=click.Choice(S2_MODES), default="huge", show_default=True,
              help="Stage-2 mapping granularity.")
@click.option("--workload", "workloads", multiple=True, default=("all",), show_default=True,
              type=click.Choice((*WORKLOADS, *EXTRA_WORKLOADS, "all")), help="Workload to run (repeatable).")
@click.option("--timeout", type=float, default=120.0, show_default=True,
              help="Seconds before the run is declared hung.")
@click.option("--console", "echo", is_flag=True, help="Echo the kernel console while running.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--module-keys", "module_key", type=click.Path(exists=True, dir_okay=False),
              help="Ed25519 public key (PEM, raw 32 bytes or hex) for module signatures "
                   "(default: a per-run key signing the testbed's own modules).")
@click.option("--module-sigs", "module_sigs", type=click.Path(exists=True, dir_okay=False),
              help="Module signature table: JSON {name: hex} or 'name hex' lines.")
@click.option("--check-invariants", is_flag=True,
              help="Check every kpcore-spec §9 invariant after every trap (slow; not for --policy none).")
def run_cmd(policy: str, s2: str, workloads: tuple[str, ...], timeout: float, echo: bool,
            as_json: bool, module_key: str | None, module_sigs: str | None,
            check_invariants: bool) -> None:
    """Boot the testbed kernel, run workloads, print a summary.

    Per workload: ok and wall time (measured from the host); traps by class; hypervisor
    refusals; invariant violations. Exit status 1 when a workload fails.
    """
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
    try:
        hv = make_hypervisor(policy, s2, **kw)
    except PolicyUnavailable as exc:
        fail(str(exc), exc.hint)
    try:
        image = build_testbed()
        report = run_workloads(hv, workloads, policy=policy, s2=s2, image=image,
                               timeout_s=timeout, echo_console=echo)
    except MachineError as exc:
        fail(exc.message, exc.hint or "rerun with --console to see the kernel's output")
    if as_json:
        emit_json(report.to_json())
    else:
        _print(report)
    if not report.ok:
        raise SystemExit(1)


def _print(r: RunReport) -> None:
    boot = f"{r.boot_s:.3f} s" if r.boot_s is not None else "never ready"
    console.print(f"[bold]testbed[/] policy [cyan]{r.policy}[/], stage 2 [cyan]{r.s2}[/]: "
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
                  f"{len(r.invariant_violations)}")
    for line in r.refusals[:10] + r.invariant_violations[:10]:
        console.print(f"  {line}")


COMMANDS: list[click.Command] = [run_cmd]
