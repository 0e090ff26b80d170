"""`secvma bench ...`: measurements printed side by side with their targets."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from secvma.machine.errors import MachineError
from secvma.ui import console, emit_json, fail


@click.group()
def bench() -> None:
    """Benchmarks (micro: trap round trips and boot time; modules: run-mod)."""


@bench.command()
@click.option("--iterations", type=click.IntRange(100, 1_000_000), default=20000, show_default=True)
@click.option("--boot-runs", type=click.IntRange(0, 20), default=3, show_default=True,
              help="Boots of the Debian kernel per configuration (0 skips the boot figures).")
@click.option("--spin-us", type=float, default=1000.0, show_default=True,
              help="Spin window of spin-then-sleep (the machine's default mode).")
@click.option("--idle-ms", type=click.IntRange(0, 60_000), default=4000, show_default=True,
              help="How long the Debian guest sleeps for the idle CPU figure (0 skips it).")
@click.option("--syscalls", type=click.IntRange(0, 10_000_000), default=20000, show_default=True,
              help="getppid calls of the Debian /init under null and transparent (0 skips).")
@click.option("--syscall-rounds", type=click.IntRange(1, 20), default=3, show_default=True,
              help="Alternating null/transparent getppid runs; the median pair's ratio is reported.")
@click.option("--json", "as_json", is_flag=True)
def micro(iterations: int, boot_runs: int, spin_us: float, idle_ms: int, syscalls: int,
          syscall_rounds: int, as_json: bool) -> None:
    """Trap round trips (HVC, stage-2 fault, MSR, the TTBR fast path), getppid under transparent
    vs null, Debian boot time (null vs plain), idle host CPU."""
    from secvma import fixtures
    from secvma.bench.micro import TARGETS, run_micro

    kernel = None
    if boot_runs or idle_ms or syscalls:
        fx = fixtures.available()
        if fx is None:
            fail("the Debian kernel is not fetched",
                 "run `secvma fixtures fetch` or pass --boot-runs 0 --idle-ms 0 --syscalls 0")
        kernel = fx.kernel_image
    try:
        with console.status("measuring (trap loops, boots, idle guest)...", spinner="dots"):
            res = run_micro(iterations, boot_runs if kernel else 0, kernel, spin_us, idle_ms,
                            syscalls if kernel else 0, syscall_rounds)
    except MachineError as e:
        fail(str(e), e.hint)
    if as_json:
        emit_json(res)
        return
    t = Table(title="secvma bench micro")
    for col in ("figure", "median", "p99", "guest-side", "target", "ok"):
        t.add_column(col)
    for key in ("hvc_roundtrip_us", "stage2_abort_us", "sysreg_trap_us"):
        med = res[key]
        t.add_row(key, f"{med:.2f} µs", f"{res[key.replace('_us', '_p99_us')]:.2f} µs",
                  f"{res[key.replace('_us', '_guest_us')]:.2f} µs", f"≤ {TARGETS[key]} µs",
                  "[green]yes[/]" if med <= TARGETS[key] else "[red]no[/]")
    if res.get("boot_s_null") is not None:
        ok = res["boot_ratio"] <= TARGETS["boot_ratio"]
        t.add_row("boot_s_null / boot_s_plain", f"{res['boot_s_null']:.3f} / {res['boot_s_plain']:.3f} s",
                  "", f"ratio {res['boot_ratio']:.2f}", f"≤ {TARGETS['boot_ratio']}×",
                  "[green]yes[/]" if ok else "[red]no[/]")
    if res.get("syscall_ratio") is not None:
        ok = res["syscall_ratio"] <= TARGETS["syscall_ratio"]
        per = res["syscall_traps_per_call"]["transparent"]
        t.add_row("getppid transparent / null", f"{res['syscall_ns_transparent']} / "
                  f"{res['syscall_ns_null']} ns", "", f"ratio {res['syscall_ratio']:.2f} "
                  f"({per['el2']:.1f} EL2 traps/call, {per['fast']:.1f} fast; rounds "
                  f"{', '.join(f'{r:.2f}' for r in res['syscall_runs']['ratio'])})",
                  f"≤ {TARGETS['syscall_ratio']}×", "[green]yes[/]" if ok else "[red]no[/]")
    ok = res["ttbr_fast_path_el2_us"] <= TARGETS["ttbr_fast_path_el2_us"]
    t.add_row("ttbr_fast_path_el2_us (fast path less trap floor)",
              f"{res['ttbr_fast_path_el2_us']:.3f} µs", "",
              f"{res['ttbr_fast_path_guest_us']:.3f} µs per trap, floor {res['trap_floor_us']:.3f}",
              f"≤ {TARGETS['ttbr_fast_path_el2_us']} µs", "[green]yes[/]" if ok else "[red]no[/]")
    t.add_row("ttbr_asid_trap_us (a trapped TTBR write that changes the ASID, over an "
              "untrapped one)", f"{res['ttbr_asid_trap_us']:.3f} µs", "",
              f"{res['ttbr_asid_fast_path_guest_us']:.3f} vs {res['ttbr_asid_untrapped_us']:.3f} µs"
              + ("" if res.get("syscall_ratio_floor") is None else
                 f"; getppid ratio at that cost: {res['syscall_ratio_floor']:.2f}"), "", "")
    if res.get("ttbr_fast_path_us") is not None:
        t.add_row("ttbr_fast_path_us (getppid, guest-timed)", f"{res['ttbr_fast_path_us']:.3f} µs",
                  "", "", "", "")
    if res.get("idle_hypervisor_pct") is not None:
        ok = res["idle_hypervisor_pct"] <= TARGETS["idle_hypervisor_pct"]
        bp = res["busy_poll_idle"]
        t.add_row("idle_hypervisor_pct (QEMU)",
                  f"{res['idle_hypervisor_pct']:.2f} % ({res['idle_qemu_pct']:.2f} %)",
                  "", f"busy-poll {bp['idle_hypervisor_pct']:.1f} % ({bp['idle_qemu_pct']:.1f} %)",
                  f"≤ {TARGETS['idle_hypervisor_pct']} %", "[green]yes[/]" if ok else "[red]no[/]")
    console.print(t)
    sb = res["spin_then_block"]
    console.print(f"spin-then-sleep ({sb['spin_us']:.0f} µs window): HVC {sb['hvc_roundtrip_us']:.2f} µs "
                  f"median, p99 {sb['hvc_roundtrip_p99_us']:.2f} µs, {sb['hvc_roundtrip_guest_us']:.2f} µs "
                  "guest-side" + (f", boot {sb['boot_s_null']:.3f} s" if "boot_s_null" in sb else ""))
    if res.get("idle_hypervisor_pct") is not None:
        console.print(f"idle guest: {res['idle_s']:.1f} s, guard ticks "
                      f"{res['idle_guard_ticks_per_s']:.0f}/s, "
                      f"{res['idle_sleeps']} sleeps of the mailbox loop")
    console.print(f"[dim]{res['busy_polling']}[/]")



@bench.command()
@click.option("--reps", type=click.IntRange(1, 1000), default=5, show_default=True,
              help="Load/unload repetitions per module and configuration.")
@click.option("--json", "as_json", is_flag=True)
def modules(reps: int, as_json: bool) -> None:
    """run-mod: insmod/rmmod of xfs and virtio_crypto, hypervisor loader vs kernel-side."""
    from secvma.bench.modules import BenchFailed, BenchUnavailable, run_modules

    try:
        with console.status("loading modules...", spinner="dots") as st:
            res = run_modules(reps, progress=lambda m: st.update(m))
    except BenchUnavailable as e:
        fail(str(e), "run `secvma fixtures fetch`, then retry")
    except BenchFailed as e:
        fail(f"the kernel-side (unprotected) run failed: {e}", code=1)
    except MachineError as e:
        fail(str(e), e.hint)
    if as_json:
        emit_json(res)
        _fail_on_errors(res["errors"])
        return

    def ms(row: dict[str, object], key: str) -> str:
        v, sd = row.get(key), row.get(key + "_std")
        return "—" if v is None else f"{v:.2f} ± {sd:.2f} ms"

    t = Table(title=f"secvma bench modules ({reps} reps, up to init; guest-side time)")
    for col in ("module", "load (EL2)", "unload (EL2)", "load (kernel)", "unload (kernel)",
                "load ratio"):
        t.add_column(col)
    for name, row in res["modules"].items():
        ratio = row["ratio"]
        t.add_row(name, ms(row, "load_ms"), ms(row, "unload_ms"), ms(row, "load_ms_unprotected"),
                  ms(row, "unload_ms_unprotected"), "—" if ratio is None else f"{ratio:.2f}×")
    console.print(t)
    for name, row in res["modules"].items():
        if row.get("load_traps") is not None:
            console.print(f"{name}: per protected load {row['load_traps']:.0f} round trips to "
                          f"Python, {row['load_python_ms']:.1f} ms in the hypervisor "
                          f"({row['load_python_cpu_ms']:.1f} ms CPU), "
                          f"{row['load_fast_ptes']:.0f} PTE stores done by the trampoline")
    console.print(f"[dim]{res['timing']}[/]")
    _fail_on_errors(res["errors"])


def _fail_on_errors(errors: dict[str, str]) -> None:
    """A configuration that could not be measured fails the command (exit status 1)."""
    if errors:
        fail("; ".join(f"{what} run failed: {err}" for what, err in errors.items()),
             "rerun `secvma run --policy hardened --workload modules` to see the loader's "
             "refusals", code=1)





@bench.command()
@click.option("--config", "configs", multiple=True,
              type=click.Choice(["plain", "null", "transparent", "transparent-4k"]),
              help="Configurations, in order (default: plain null transparent).")
@click.option("--bench", "benches", multiple=True,
              type=click.Choice(["kernbench", "hackbench", "netperf", "apache", "memcached"]),
              help="Benchmarks (default: all, in run-all.sh's order).")
@click.option("--reps", type=click.IntRange(1, 1000), default=None,
              help="Repetitions of every bench (default: the scaled defaults, printed).")
@click.option("--quick", is_flag=True, help="Small parameters: a few minutes per configuration.")
@click.option("-o", "name", default=None,
              help="Write results/NAME.<config> and log/<bench>_log.NAME.<config> (run-all.sh format).")
@click.option("--json", "as_json", is_flag=True)
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write a Figure-6-style bar chart (PNG) of the normalized costs.")
@click.option("--smmu", is_flag=True,
              help="Board with the SMMUv3: under transparent the disk and network DMA go through "
                   "the hypervisor's identity map (plain/null: the SMMU stays off).")
def apps(configs: tuple[str, ...], benches: tuple[str, ...], reps: int | None, quick: bool, name: str | None,
         as_json: bool, plot_path: Path | None, smmu: bool) -> None:
    """The paper's application benchmarks on the Debian guest, normalized (Figures 6/7)."""
    from dataclasses import replace

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from secvma.bench import apps as apps_mod
    from secvma.bench import report
    from secvma.bench.harness import BENCHES, OutputFiles, append_results, output_files, params_line
    from secvma.bench.resultfile import ROUNDING_NOTE, load, norm_text, normalize

    cfgs = list(configs) or ["plain", "null", "transparent"]
    chosen = apps_mod.check_benches(list(benches) or list(BENCHES))
    params = apps_mod.QUICK if quick else apps_mod.DEFAULT
    if reps is not None:
        params = replace(params, hackbench_reps=reps, kernbench_reps=reps, netperf_reps=reps,
                         apache_reps=reps, memcached_reps=reps)
    results: report.Results = {}
    runs: dict[str, apps_mod.ConfigRun] = {}
    files: dict[str, OutputFiles] = {}
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True, disable=as_json) as prog:
        status_task = prog.add_task("starting", total=None)
        for cfg in cfgs:
            tasks: dict[str, object] = {}

            def progress(what: str, done: int, total: int, cfg: str = cfg,
                         tasks: dict[str, object] = tasks) -> None:
                if what not in tasks:
                    tasks[what] = prog.add_task(f"{cfg}: {what}", total=total)
                prog.update(tasks[what], completed=done)  # type: ignore[arg-type]

            def status(msg: str) -> None:
                prog.update(status_task, description=msg)

            log = None
            if name:
                files[cfg] = output_files(Path("."), f"{name}.{cfg}")

                def log(stem: str, text: str, f: OutputFiles = files[cfg]) -> None:
                    with f.log(stem).open("a") as fh:
                        fh.write(text)
            try:
                run = apps_mod.run_config(cfg, chosen, params, progress=progress, status=status,
                                          tool_log=log, smmu=smmu)
            except apps_mod.BenchUnavailable as e:
                run = apps_mod.ConfigRun(cfg, error=str(e))
            runs[cfg] = run
            got = report.from_measured(run.measured)
            if got:
                results[cfg] = got
            if name and run.measured:
                append_results(files[cfg], run.measured)
    files = {c: f for c, f in files.items() if f.results.exists()}
    if name and "plain" in files:  # norm.sh against the bare-metal baseline, appended as norm.sh does
        base = load(files["plain"].results, strict=False)
        for cfg, f in files.items():
            if cfg != "plain":
                rows = normalize(base, load(f.results, strict=False), skip_missing=True)
                with f.results.open("a") as fh:
                    fh.write(norm_text(files["plain"].results.name, rows))
    if plot_path is not None and results:
        report.plot(results, plot_path)
    failures = {c: r.error for c, r in runs.items() if r.error}
    failed_runs = {c: [f"{m.kind.label}: {m.failures[0]}" for m in r.measured if m.failures]
                   for c, r in runs.items()}
    if as_json:
        doc = report.to_json(results)
        doc["params"] = {c: {m.kind.key: m.params for m in r.measured} for c, r in runs.items()}
        doc["runs"] = {c: {"error": r.error, "notes": r.notes, "wall_s": r.wall_s, "bench_s": r.bench_s,
                           "traps": r.traps, "guest": r.banner, "per_bench": r.per_bench,
                           "protection": r.protection,
                           "failed": failed_runs[c], "skipped": {m.kind.key: m.skipped for m in r.measured
                                                                 if m.skipped}}
                       for c, r in runs.items()}
        emit_json(doc)
    else:
        console.print(report.table(results, title="secvma bench apps" + (" --quick" if quick else "")))
        seen: set[str] = set()
        for r in runs.values():
            for m in r.measured:
                line = f"{m.kind.key}: {m.tool}; {params_line(m)}"
                if line not in seen:
                    seen.add(line)
                    console.print(f"[dim]{line}[/]")
            for note in r.notes:
                if note not in seen:
                    seen.add(note)
                    console.print(f"[dim]note: {note}[/]")
        for c, r in runs.items():
            if r.traps:
                n = sum(v for k, v in r.traps.items() if not k.startswith("events."))
                per_s = n / max(r.wall_s, 1e-9)
                console.print(f"[dim]{c}: {per_s:.0f} traps/s over {r.wall_s:.0f} s "
                              f"({', '.join(f'{k}={v}' for k, v in sorted(r.traps.items()))})[/]")
            if r.protection:
                console.print(f"[dim]{c}: {apps_mod.protection_line(r.protection)}[/]")
            for b, acc in r.per_bench.items():
                line = apps_mod.accounting_line(acc)
                if line:
                    console.print(f"[dim]{c}: {b}: {line}[/]")
            for m in r.measured:
                if m.skipped:
                    console.print(f"[yellow]{c}: {m.kind.key} skipped: {m.skipped}[/]")
        console.print(f"[dim]guest: Debian 6.1 arm64, {apps_mod.GUEST_CPUS} vCPU, "
                      f"{apps_mod.GUEST_RAM_MB} MiB, "
                      f"TCG; clients on this host through QEMU user networking; {ROUNDING_NOTE} "
                      "in the results files[/]")
        if plot_path is not None and results:
            console.print(f"chart: {plot_path}")
        if name:
            for f in files.values():
                console.print(f"results: {f.results}")
    bad = {c: e for c, e in failures.items()} | {c: "; ".join(v) for c, v in failed_runs.items() if v}
    if bad:
        fail("; ".join(f"{c}: {e}" for c, e in bad.items()), "see the table above; rerun one "
             "configuration with --config C --bench B", code=1)



@bench.command()
@click.option("--config", "configs", multiple=True,
              type=click.Choice(["none", "secvma2024-huge", "secvma2024-4k", "hardened-huge", "hardened-4k"]),
              help="Configurations (default: all five).")
@click.option("--reps", type=click.IntRange(1, 100), default=3, show_default=True,
              help="Boots per configuration.")
@click.option("--json", "as_json", is_flag=True)
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
def emu(configs: tuple[str, ...], reps: int, as_json: bool, plot_path: Path | None) -> None:
    """The testbed kernel's hackbench and kernbench per policy, normalized against `none`."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from secvma.bench import emu as emu_mod
    from secvma.bench import report

    cfgs = list(configs) or list(emu_mod.CONFIGS)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True, disable=as_json) as prog:
        tasks: dict[str, object] = {}

        def progress(what: str, done: int, total: int) -> None:
            if what not in tasks:
                tasks[what] = prog.add_task(what, total=total)
            prog.update(tasks[what], completed=done)  # type: ignore[arg-type]

        try:
            run = emu_mod.run_emu(cfgs, reps, progress)
        except MachineError as e:
            fail(str(e), e.hint)
    if plot_path is not None and run.results:
        report.plot(run.results, plot_path, baselines=emu_mod.BASELINE,
                    title="Testbed kernel: workloads normalized to none")
    if as_json:
        doc = report.to_json(run.results, emu_mod.BASELINE)
        doc["traps"] = run.traps
        doc["errors"] = run.errors
        emit_json(doc)
    else:
        console.print(report.table(run.results, "secvma bench emu (testbed kernel, guest-timed)",
                                   emu_mod.BASELINE))
        for cfg, traps in run.traps.items():
            console.print(f"[dim]{cfg}: {', '.join(f'{k}={v}' for k, v in sorted(traps.items()))}[/]")
    if run.errors:
        fail("; ".join(f"{c}: {e}" for c, e in run.errors.items()), "rerun with `secvma run --policy P`",
             code=1)
COMMANDS: list[click.Command] = [bench]
