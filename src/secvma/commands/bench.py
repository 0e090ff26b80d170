"""`secvma bench ...`: measurements printed side by side with their targets."""

from __future__ import annotations

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
@click.option("--spin-us", type=float, default=200.0, show_default=True,
              help="Spin window of the spin-then-block alternative.")
@click.option("--json", "as_json", is_flag=True)
def micro(iterations: int, boot_runs: int, spin_us: float, as_json: bool) -> None:
    """Trap round trips (HVC, stage-2 fault, MSR) and Debian boot time, null vs plain."""
    from secvma import fixtures
    from secvma.bench.micro import TARGETS, run_micro

    kernel = None
    if boot_runs:
        fx = fixtures.available()
        if fx is None:
            fail("the Debian kernel is not fetched", "run `secvma fixtures fetch` or pass --boot-runs 0")
        kernel = fx.kernel_image
    try:
        with console.status("measuring (trap loops, then boots)...", spinner="dots"):
            res = run_micro(iterations, boot_runs, kernel, spin_us)
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
    console.print(t)
    sb = res["spin_then_block"]
    console.print(f"spin-then-block ({sb['spin_us']:.0f} µs window): HVC {sb['hvc_roundtrip_us']:.2f} µs "
                  f"median, {sb['hvc_roundtrip_guest_us']:.2f} µs guest-side"
                  + (f", boot {sb['boot_s_null']:.3f} s" if "boot_s_null" in sb else ""))
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
    console.print(f"[dim]{res['timing']}[/]")
    _fail_on_errors(res["errors"])


def _fail_on_errors(errors: dict[str, str]) -> None:
    """A configuration that could not be measured fails the command (exit status 1)."""
    if errors:
        fail("; ".join(f"{what} run failed: {err}" for what, err in errors.items()),
             "rerun `secvma run --policy hardened --workload modules` to see the loader's "
             "refusals", code=1)


COMMANDS: list[click.Command] = [bench]
