"""`secvma attack`: run the attack scenarios under each policy, with evidence and expectations."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from secvma.ui import console, emit_json, err_console, fail

_STYLE = {"succeeded": "red", "blocked": "green", "blocked (machine halted)": "green", "n/a": "dim",
          "internal error": "bold red"}


@click.command()
@click.option("--policy", "policies", multiple=True,
              type=click.Choice(["none", "secvma2024", "hardened"]),
              help="Policies to attack (repeatable; default: all three).")
@click.option("--only", multiple=True, help="Run only these scenarios (repeatable).")
@click.option("--s2", type=click.Choice(["huge", "4k"]), default="huge", show_default=True)
@click.option("--list", "list_only", is_flag=True, help="List the scenarios and exit.")
@click.option("--report", "report", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write a Markdown report to FILE.md and the verdict matrix to FILE.png.")
@click.option("--json", "as_json", is_flag=True)
def attack(policies: tuple[str, ...], only: tuple[str, ...], s2: str, list_only: bool,
           report: Path | None, as_json: bool) -> None:
    """A compromised kernel's attacks, each judged by its effect, under none/secvma2024/hardened."""
    from secvma.attacks.scenarios import ATTACKS, Verdict
    from secvma.attacks.suite import POLICIES, run_suite

    names = [a.name for a in ATTACKS]
    unknown = [n for n in only if n not in names]
    if unknown:
        fail(f"unknown scenario(s): {', '.join(unknown)}", "see `secvma attack --list`")
    if list_only:
        t = Table(title="attack scenarios")
        for col in ("name", "goal", "§11 gap", "expected (none / secvma2024 / hardened)"):
            t.add_column(col)
        for a in ATTACKS:
            exp = " / ".join("succeeds" if Verdict.SUCCEEDED in a.expect.get(p, ()) else "blocked"
                             for p in POLICIES)
            t.add_row(a.name, a.goal, a.gap, exp)
        console.print(t)
        return
    with console.status("attacking (one fresh boot per scenario and policy)...", spinner="dots"):
        res = run_suite(policies or POLICIES, only, s2)
    if report is not None:
        from secvma.attacks.report import write_report

        png = write_report(res, report, s2)
        err_console.print(f"report written to {report}, verdict matrix to {png}")
    if as_json:
        emit_json(res)
        if not res["ok"]:
            raise SystemExit(1)
        return
    t = Table(title=f"secvma attack (stage 2: {s2})")
    for col in ("scenario", "policy", "verdict", "as expected", "evidence"):
        t.add_column(col, overflow="fold")
    for o in res["outcomes"]:
        style = _STYLE.get(o["verdict"], "")
        t.add_row(o["attack"], o["policy"], f"[{style}]{o['verdict']}[/]",
                  "[green]yes[/]" if o["matches"] else f"[red]NO[/] (expected {', '.join(o['expected'])})",
                  (o["detail"] + (f" | refusal: {o['refusals'][0]}" if o["refusals"] else ""))[:160])
    console.print(t)
    for p, c in res["summary"].items():
        console.print(f"{p:>11}: {c['blocked']} blocked, {c['succeeded']} succeeded, "
                      f"{c['internal_errors']} internal errors, {c['unexpected']} unexpected")
    if not res["ok"]:
        raise SystemExit(1)


COMMANDS: list[click.Command] = [attack]
