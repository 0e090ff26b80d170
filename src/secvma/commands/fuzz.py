"""`secvma fuzz`: a bounded campaign of random EL1 operations against KPCore."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.table import Table

from secvma.ui import console, emit_json, err_console, fail

if TYPE_CHECKING:
    from secvma.fuzz.campaign import Result


def default_cases_dir() -> Path:
    """tests/fuzz_cases of the source checkout (where the replay test finds them)."""
    from secvma.machine.build import repo_root

    return repo_root() / "tests" / "fuzz_cases"


def campaign_modules() -> tuple[dict[str, bytes], str]:
    """The testbed's modules built for the simulated kernel ({} and why, without a toolchain)."""
    from secvma.machine.build import build_dir
    from secvma.sim.modules import ToolMissing, build_modules

    try:
        return build_modules(build_dir() / "fuzz-modules", ("mod_hello", "mod_counter",
                                                             "mod_user")), ""
    except ToolMissing as exc:
        return {}, str(exc)


@click.command()
@click.option("--steps", type=click.IntRange(1), default=2000, show_default=True,
              help="Operations to run.")
@click.option("--seed", type=int, default=None,
              help="Seed of the operation sequence (default: a random one, printed).")
@click.option("--smp", type=click.IntRange(1, 8), default=1, show_default=True,
              help="CPUs of the simulated machine; each op runs on a random one.")
@click.option("--policy", type=click.Choice(["hardened", "secvma2024"]), default="hardened",
              show_default=True)
@click.option("--s2", type=click.Choice(["huge", "4k"]), default="huge", show_default=True)
@click.option("--cases", "cases_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Where failing sequences are saved (default: tests/fuzz_cases).")
@click.option("--tier", type=click.Choice(["sim", "qemu"]), default="sim", show_default=True,
              help="sim: KPCore's trap handlers on the simulated machine (~400 steps/s); qemu: "
                   "the testbed kernel executes each op as real AArch64 code (one CPU).")
@click.option("--json", "as_json", is_flag=True)
def fuzz(steps: int, seed: int | None, smp: int, policy: str, s2: str, cases_dir: Path | None,
         tier: str, as_json: bool) -> None:
    """Random EL1 operations against KPCore on the simulated machine, invariants after each.

    Stores of every form and width to table pages (pairs, exclusives, LSE atomics, DC ZVA, SIMD,
    unaligned and page-crossing), hypercalls with random and boundary arguments, SMMU
    hypercalls (HVC 23-27), register writes, user page-table registration, module images
    mutated from the testbed's signed modules. Exits 1 if any invariant was violated or KPCore
    (or the harness) hit an internal error; each failing sequence is saved as a test case.
    """
    from secvma.fuzz.campaign import Config, run_campaign

    if seed is None:
        seed = secrets.randbelow(1 << 32)
    if tier == "qemu" and smp != 1:
        fail("the qemu tier runs the testbed on one CPU", "drop --smp or use --tier sim")
    modules, why = campaign_modules() if tier == "sim" else ({}, "")
    if why:
        err_console.print(f"[yellow]module ops disabled:[/] {why}")
    cfg = Config(policy, s2, smp)
    cases = cases_dir or default_cases_dir()

    def run(progress: Callable[[int], None] | None) -> Result:
        if tier == "qemu":
            from secvma.fuzz.qemu import run_qemu_campaign

            return run_qemu_campaign(steps, seed, cfg, progress)
        return run_campaign(steps, seed, cfg, modules, cases_dir=cases, progress=progress)

    if as_json:
        res = run(None)
    else:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        with Progress(TextColumn(f"fuzz seed {seed} ({tier}, {policy}, {s2}, smp {smp})"),
                      BarColumn(),
                      MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                      console=err_console, transient=True) as bar:
            task = bar.add_task("fuzz", total=steps)
            res = run(lambda n: bar.update(task, completed=n))
    out = res.to_json()
    if as_json:
        emit_json(out)
    else:
        _print(out)
    if not res.ok:
        raise SystemExit(1)


def _print(out: dict[str, object]) -> None:
    t = Table(title=f"secvma fuzz: seed {out['seed']}, {out['policy']} / {out['s2']}, "
                    f"smp {out['smp']}")
    t.add_column("figure")
    t.add_column("value", justify="right")
    t.add_row("steps", str(out["steps"]))
    t.add_row("steps/s", str(out["steps_per_second"]))
    refusals = out["refusals"]
    assert isinstance(refusals, dict)
    t.add_row("refusals", str(sum(refusals.values())))
    reboots = out["reboots"]
    assert isinstance(reboots, dict)
    t.add_row("reboots", str(sum(reboots.values())))
    v, e = out["invariant_violations"], out["internal_errors"]
    t.add_row("invariant violations", f"[{'red' if v else 'green'}]{v}[/]")
    t.add_row("internal errors", f"[{'red' if e else 'green'}]{e}[/]")
    console.print(t)
    r = Table(title="refusals by rule")
    r.add_column("rule")
    r.add_column("count", justify="right")
    for rule, n in refusals.items():
        r.add_row(rule, str(n))
    console.print(r)
    ops = out["ops"]
    assert isinstance(ops, dict)
    console.print("ops: " + ", ".join(f"{k} {n}" for k, n in ops.items()))
    if reboots:
        console.print("reboots: " + ", ".join(f"{k} ({n})" for k, n in reboots.items()))
    failures = out["failures"]
    assert isinstance(failures, list)
    for f in failures[:20]:
        console.print(f"[red]{f['kind']}[/] at step {f['step']}: {f['detail']}")
    cases = out["cases"]
    assert isinstance(cases, list)
    for c in cases:
        console.print(f"saved failing sequence: {c} (replayed by tests/fuzz/test_fuzz.py)")


COMMANDS = [fuzz]
