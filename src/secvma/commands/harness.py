"""`secvma harness run|norm`: the artifact's run-all.sh and norm.sh for real hosts (docs/eval-spec.md §1)."""

from __future__ import annotations

from pathlib import Path

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from secvma.ui import console, emit_json, fail


@click.group()
def harness() -> None:
    """run-all.sh / norm.sh in Python: drive a server's benchmarks from this client."""


@harness.command("run")
@click.argument("server")
@click.option("-t", "test", default="all", show_default=True,
              type=click.Choice(["all", "kernbench", "hackbench", "netperf", "apache", "memcached"]),
              help="One benchmark, or all of them in run-all.sh's order.")
@click.option("-n", "reps", type=click.IntRange(0, 10_000), default=0, show_default=True,
              help="Repetitions for netperf, apache and memcached (0: each one's default).")
@click.option("-o", "name", default=None, help="results/NAME and log/<bench>_log.NAME "
              "(default: the next results/benchmark_results.<k>).")
@click.option("--local", is_flag=True, help="The server is this machine (no ssh).")
@click.option("--user", default="root", show_default=True, help="ssh user on the server.")
@click.option("-S", "--ssh-option", "ssh_options", multiple=True, metavar="OPTION",
              help="An `ssh -o` option for reaching the server, e.g. -S Port=2222 "
                   "-S IdentityFile=~/.ssh/bench (repeatable).")
@click.option("--dir", "base", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
              show_default=True, help="Where results/ and log/ are created.")
@click.option("--quick", is_flag=True, help="Small parameters (seconds, not minutes), for tests.")
@click.option("--prep/--no-prep", default=None,
              help="Start the daemons first as prep-*.sh do (default: yes over ssh, no with --local).")
@click.option("-P", "--param", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a parameter, e.g. -P apache_port=8080 -P apache_path=/index.html.")
@click.option("--json", "as_json", is_flag=True)
def run_cmd(server: str, test: str, reps: int, name: str | None, local: bool, user: str,
            ssh_options: tuple[str, ...], base: Path, quick: bool, prep: bool | None,
            overrides: tuple[str, ...], as_json: bool) -> None:
    """Run the benchmarks against SERVER and append run-all.sh-format results."""
    from secvma.bench.harness import (
        BENCHES,
        QUICK,
        Harness,
        HarnessError,
        LocalServer,
        Params,
        SshServer,
        append_results,
        output_files,
        params_line,
    )
    from secvma.bench.resultfile import ROUNDING_NOTE

    try:
        params = (QUICK if quick else Params()).with_reps(reps).override(overrides)
        files = output_files(base, name)
    except HarnessError as e:
        fail(str(e), "see `secvma harness run --help`")
    bad = [o for o in ssh_options if "=" not in o or o.startswith("-")]
    if bad:
        fail(f"bad ssh option {bad[0]!r}: expected KEY=VALUE as for `ssh -o`", "e.g. -S Port=2222")
    srv = LocalServer() if local else SshServer(server, user, options=ssh_options)
    if not as_json:
        console.print(f"results: {files.results}   logs: {files.log_dir}/<bench>_log.{files.suffix}")

    def log(stem: str, text: str) -> None:
        with files.log(stem).open("a") as fh:
            fh.write(text)

    benches = list(BENCHES) if test == "all" else [test]
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True, disable=as_json) as prog:
        tasks: dict[str, object] = {}

        def progress(what: str, done: int, total: int) -> None:
            if what not in tasks:
                tasks[what] = prog.add_task(what, total=total)
            prog.update(tasks[what], completed=done)  # type: ignore[arg-type]

        h = Harness(srv, server, params, prep=(not local) if prep is None else prep,
                    progress=progress, log=log)
        try:
            measured = h.run(benches)
        except HarnessError as e:
            fail(str(e), "the server must take passwordless root ssh (as run-all.sh assumes), or use --local")
    append_results(files, measured)

    failed = [m for m in measured if m.failures]
    if as_json:
        emit_json({"results_file": str(files.results), "notes": h.notes, "rounding": ROUNDING_NOTE,
                   "sections": [{"heading": m.kind.heading, "values": m.values, "failures": m.failures,
                                 "skipped": m.skipped, "tool": m.tool, "params": m.params}
                                for m in measured]})
    else:
        t = Table(title=f"secvma harness run {server}" + (" --local" if local else ""))
        for col in ("section", "samples", "values", "tool", "parameters"):
            t.add_column(col)
        for m in measured:
            vals = f"[yellow]skipped: {m.skipped}[/]" if m.skipped else " ".join(m.values)
            if m.failures:
                vals += f" [red]({len(m.failures)} failed: {m.failures[0]})[/]"
            t.add_row(m.kind.heading, str(len(m.values)), vals, m.tool, params_line(m))
        console.print(t)
        for note in h.notes:
            console.print(f"[dim]substitution: {note}[/]")
        console.print(f"[dim]{ROUNDING_NOTE}[/]")
    if failed:
        fail(f"{sum(len(m.failures) for m in failed)} benchmark run(s) failed "
             f"({', '.join(m.kind.label for m in failed)})", f"read the logs in {files.log_dir}", code=1)


@harness.command("norm")
@click.argument("baseline", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("result", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--no-append", is_flag=True, help="Print only; do not append to RESULT as norm.sh does.")
@click.option("--json", "as_json", is_flag=True)
def norm_cmd(baseline: Path, result: Path, no_append: bool, as_json: bool) -> None:
    """Normalize RESULT against BASELINE (norm.sh: normalized cost, 1.0 = baseline, >1 slower)."""
    from secvma.bench.resultfile import ROUNDING_NOTE, ResultFileError, load, norm_text, normalize

    try:
        base, res = load(baseline), load(result)
        rows = normalize(base, res)
    except ResultFileError as e:
        fail(str(e), "rerun the missing benchmark (run-all.sh writes no Average when every run failed)")
    if not rows:
        fail(f"no section of {result} has a label of {baseline}",
             "both files must come from run-all.sh / `secvma harness run`")
    text = norm_text(baseline.name, rows)
    if not no_append:
        with result.open("a") as fh:
            fh.write(text)
    dups = sorted(set(base.duplicates()) | set(res.duplicates()))
    if as_json:
        emit_json({"baseline": str(baseline), "result": str(result), "rounding": ROUNDING_NOTE,
                   "duplicate_labels_first_used": dups,
                   "normalized": {r.label: {"baseline": str(r.baseline), "result": str(r.result),
                                            "norm": str(r.norm), "higher_is_better": r.higher_is_better}
                                  for r in rows}})
        return
    console.print(text.strip("\n"), markup=False, highlight=False)
    console.print(f"[dim]{ROUNDING_NOTE}; normalized cost: 1.0 = baseline, above 1 = slower"
                  + (f"; first section used for repeated labels {', '.join(dups)}" if dups else "") + "[/]")


COMMANDS: list[click.Command] = [harness]
