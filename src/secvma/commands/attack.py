"""`secvma attack`: run the attack scenarios under each policy, with evidence and expectations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.table import Table

from secvma.machine.qemu import CPUS, DEFAULT_CPU
from secvma.ui import console, emit_json, err_console, fail

_STYLE = {"succeeded": "red", "blocked": "green", "blocked (machine halted)": "green", "n/a": "dim",
          "internal error": "bold red", "error": "red"}


@click.command()
@click.option("--guest", type=click.Choice(["testbed", "linux"]), default="testbed",
              show_default=True,
              help="testbed: the testbed kernel's EL1 primitives; linux: the unmodified Debian "
                   "kernel attacked by the secvma_lkdtm module.")
@click.option("--policy", "policies", multiple=True,
              type=click.Choice(["none", "secvma2024", "hardened", "transparent"]),
              help="Policies to attack (repeatable; default: all of the guest's: testbed none, "
                   "secvma2024, hardened; linux none, transparent).")
@click.option("--only", multiple=True, help="Run only these scenarios (repeatable).")
@click.option("--s2", type=click.Choice(["huge", "4k"]), default="huge", show_default=True)
@click.option("--list", "list_only", is_flag=True, help="List the scenarios and exit.")
@click.option("--report", "report", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write a Markdown report to FILE.md and the verdict matrix to FILE.png.")
@click.option("--console", "echo", is_flag=True, help="linux: echo the kernel console.")
@click.option("--trust-cert", "trust_certs", multiple=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="linux, transparent: also trust modules signed for this certificate (PEM or "
                   "DER; repeatable). Debian's module-signing certificate is always trusted.")
@click.option("--json", "as_json", is_flag=True)
@click.option("--cpu", type=click.Choice(CPUS), default=DEFAULT_CPU, show_default=True,
              help="QEMU CPU model (max: FEAT_XNX, so stage 2 itself refuses EL1 fetches from "
                   "anything but kernel and authenticated module text).")
def attack(guest: str, policies: tuple[str, ...], only: tuple[str, ...], s2: str, list_only: bool,
           report: Path | None, echo: bool, trust_certs: tuple[Path, ...], as_json: bool,
           cpu: str = DEFAULT_CPU) -> None:
    """A compromised kernel's attacks, each judged by its effect, under each policy."""
    if guest == "linux":
        _attack_linux(policies, only, list_only, echo, as_json, trust_certs, report, cpu)
        return
    if trust_certs:
        fail("--trust-cert is for the Debian kernel's modules", "use --guest linux")
    if "transparent" in policies:
        fail("policy transparent is for the Debian kernel", "use --guest linux")
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
        res = run_suite(policies or POLICIES, only, s2, cpu)
    if report is not None:
        from secvma.attacks.report import write_report

        png = write_report(res, report, s2)
        err_console.print(f"report written to {report}, verdict matrix to {png}")
    _report(res, f"secvma attack (stage 2: {s2}, cpu {cpu})", as_json)


def _attack_linux(policies: tuple[str, ...], only: tuple[str, ...], list_only: bool, echo: bool,
                  as_json: bool, trust_certs: tuple[Path, ...] = (),
                  report: Path | None = None, cpu: str = DEFAULT_CPU) -> None:
    from secvma.fixtures import FixturesUnavailable
    from secvma.linux.attacks import ATTACKS, NAMES, run_linux_suite
    from secvma.linux.session import POLICIES
    from secvma.linux.trust import TrustError
    from secvma.machine.errors import MachineError

    bad = [p for p in policies if p not in POLICIES]
    if bad:
        fail(f"policy {', '.join(bad)} is for the testbed kernel",
             f"the Debian kernel runs under {' or '.join(POLICIES)}")
    unknown = [n for n in only if n not in NAMES]
    if unknown:
        fail(f"unknown scenario(s): {', '.join(unknown)}", "see `secvma attack --guest linux --list`")
    if list_only:
        t = Table(title="attacks on the Debian kernel (module secvma_lkdtm)")
        for col in ("name", "goal", "how", "blocked under transparent by",
                    "expected (none / transparent)"):
            t.add_column(col, overflow="fold")
        for a in ATTACKS:
            t.add_row(a.name, a.goal, a.how, a.rule,
                      " / ".join(", ".join(sorted(v.value for v in a.expected(p))) for p in POLICIES)
                      + (f" (known gap: {a.gap})" if a.gap else ""))
        console.print(t)
        return
    try:
        with console.status("attacking Debian (one fresh boot per attack and policy)...",
                            spinner="dots"):
            res = run_linux_suite(policies or POLICIES, only, echo=echo and not as_json,
                                  trust_certs=trust_certs, cpu=cpu)
    except MachineError as exc:
        fail(exc.message, exc.hint or "rerun with --console to see the kernel's output")
    except FixturesUnavailable as exc:
        fail(f"Debian fixtures: {exc}", "run `secvma fixtures fetch` with the archive reachable")
    except TrustError as exc:
        fail(str(exc), "--trust-cert takes a PEM or DER X.509 certificate")
    if report is not None:
        from secvma.attacks.report import write_report

        png = write_report(res, report, "huge", {a.name: (a.goal, a.gap) for a in ATTACKS},
                           "stock Debian kernel")
        err_console.print(f"report written to {report}, verdict matrix to {png}")
    _report(res, f"secvma attack --guest linux (cpu {cpu})", as_json)


def _report(res: dict[str, Any], title: str, as_json: bool) -> None:
    if as_json:
        emit_json(res)
        if not res["ok"]:
            raise SystemExit(1)
        return
    t = Table(title=title)
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
