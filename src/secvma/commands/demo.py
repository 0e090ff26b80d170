"""`secvma demo`: the main job in one command — boot, workloads, attacks, measurements, report.

Every step runs; a step that raises (an ImportError included: a missing part of secvma is
breakage, not something to skip) is reported as FAILED with the error, and the command exits 1.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import click
from rich.table import Table

from secvma.ui import console, emit_json, err_console


def _step_debian_boot() -> dict[str, Any]:
    from secvma import fixtures
    from secvma.machine.initramfs import INIT_BANNER, build_initramfs
    from secvma.machine.null import NullHypervisor
    from secvma.machine.qemu import MachineConfig
    from secvma.machine.runner import boot

    fx = fixtures.fetch()
    res = boot(MachineConfig(kernel=fx.kernel_image, initrd=build_initramfs(), timeout_s=120),
               NullHypervisor(), watch=(INIT_BANNER,))
    ok = res.exit == "poweroff" and INIT_BANNER.decode() in res.first_seen
    return {"ok": ok, "kernel": fx.kernel_version,
            "userspace_s": round(res.first_seen.get(INIT_BANNER.decode(), 0.0), 3),
            "traps": res.traps}


def _step_run(policy: str, s2: str = "huge") -> Callable[[], dict[str, Any]]:
    def step() -> dict[str, Any]:
        from secvma.testbed.policies import make_hypervisor
        from secvma.testbed.run import run_workloads

        report = run_workloads(make_hypervisor(policy, s2), ("all",), policy=policy, s2=s2)
        data = report.to_json()
        data["ok"] = report.ok
        data.pop("console", None)
        parts = [f"{n} {'ok' if w['ok'] else 'FAILED: ' + str(w['message'])[:60]}"
                 for n, w in data["workloads"].items()]
        data["summary"] = "; ".join(parts) + (
            f"; refusals {data['refusals']}, invariant violations {data['invariant_violations']}")
        return data
    return step


def _step_attacks(quick: bool = False) -> dict[str, Any]:
    from secvma.attacks.suite import class_sample, run_suite

    data = run_suite(only=class_sample()) if quick else run_suite()
    data["summary"] = "; ".join(f"{p}: {c['blocked']} blocked, {c['succeeded']} succeeded"
                                for p, c in data["summary"].items()) + (
        "" if data["ok"] else " — UNEXPECTED: " + ", ".join(
            f"{o['attack']}@{o['policy']}" for o in data["outcomes"] if not o["matches"]))
    return data


def _step_linux(quick: bool = False) -> dict[str, Any]:
    """The stock Debian kernel: its workloads unprotected and under `transparent` (measured in
    one run, so the cost of protection reads directly), every secvma_lkdtm attack unprotected,
    and one attack per protection class under transparent (the whole suite: `secvma attack
    --guest linux --policy transparent`)."""
    from secvma.linux.attacks import SAMPLE, run_linux_suite
    from secvma.linux.session import run_linux_workloads

    none = run_linux_workloads("none").to_json()
    tr = run_linux_workloads("transparent").to_json()
    attacks = run_linux_suite(("none",), SAMPLE if quick else ())
    blocked = run_linux_suite(("transparent",), SAMPLE)
    parts = []
    for label, run in (("none", none), ("transparent", tr)):
        bad = [n for n, w in run["workloads"].items() if not w["ok"]]
        secs = sum(w["seconds"] or 0.0 for w in run["workloads"].values())
        parts.append(f"{label}: {len(run['workloads']) - len(bad)}/{len(run['workloads'])} "
                     f"workloads ok in {secs:.1f} s" + (f" (FAILED: {', '.join(bad)})" if bad else ""))
    prot = tr["protection"]
    parts.append(f"transparent protected {sum(prot['table_pages'].values())} table pages, "
                 f"{prot['kernel_code_pages']} text pages, validated "
                 f"{prot['text_patches_accepted']} text patches, authenticated "
                 f"{prot['modules_authenticated']} modules, released "
                 f"{prot['user_roots_released']} user roots; {len(tr['refusals'])} refusals")
    c = attacks["summary"]["none"]
    parts.append(f"attacks none: {c['succeeded']} of {len(attacks['outcomes'])} succeed")
    t = blocked["summary"]["transparent"]
    parts.append(f"attacks transparent: {t['blocked']} of {len(blocked['outcomes'])} blocked "
                 f"({', '.join(SAMPLE)})")
    for run in (none, tr):
        run.pop("traps", None)
    return {"ok": none["ok"] and tr["ok"] and attacks["ok"] and blocked["ok"],
            "workloads": {"none": none, "transparent": tr}, "attacks": attacks,
            "attacks_transparent": blocked, "summary": "; ".join(parts)}


def _step_apps() -> dict[str, Any]:
    """Issue 11 item 7: one application bench (`bench apps --quick`'s hackbench) in the Debian
    guest, the last configuration normalized to the first, with its traps explained."""
    from secvma.bench import apps, report

    runs = {cfg: apps.run_config(cfg, ["hackbench"], apps.QUICK) for cfg in apps.DEMO_CONFIGS}
    return apps.demo_summary(runs, report.normalized(
        {c: report.from_measured(r.measured) for c, r in runs.items()}))


def _step_micro(quick: bool = False) -> dict[str, Any]:
    from secvma import fixtures
    from secvma.bench.micro import TARGETS, run_micro

    fx = fixtures.available()
    res = run_micro(iterations=5000, boot_runs=1 if fx else 0, kernel=fx.kernel_image if fx else None,
                    syscalls=5000, idle_ms=1000 if quick else 4000,
                    syscall_rounds=1 if quick else 3)
    # measured, so ok; whether this host met the speed targets is reported, not judged here
    # (timing depends on the host's load; tests check behaviour, benchmarks the figures)
    res["ok"] = True
    res["targets_met"] = all(res[k] <= TARGETS[k]
                             for k in ("hvc_roundtrip_us", "stage2_abort_us", "sysreg_trap_us"))
    res["summary"] = (f"HVC {res['hvc_roundtrip_us']} µs, stage-2 fault {res['stage2_abort_us']} µs, "
                      f"MSR {res['sysreg_trap_us']} µs (median round trips, targets "
                      f"{'met' if res['targets_met'] else 'NOT met on this host now'})")
    if res.get("boot_s_null") is not None:
        res["summary"] += (f"; Debian boot {res['boot_s_null']} s under EL2 vs "
                           f"{res['boot_s_plain']} s plain")
    if res.get("syscall_ratio") is not None:
        fast = res["syscall_traps_per_call"]["transparent"]["fast"]
        res["summary"] += (f"; getppid transparent/null {res['syscall_ratio']:.2f} "
                           f"(target ≤ {TARGETS['syscall_ratio']}: {fast:.1f} TTBR writes per "
                           "call answered at EL2")
        if res.get("ttbr_fast_path_us") is not None:
            res["summary"] += f", {res['ttbr_fast_path_us']:.2f} µs each guest-timed"
        res["summary"] += (f"; the fast path's own EL2 time {res['ttbr_fast_path_el2_us']:.2f} µs "
                           f"above QEMU's trap floor of {res['trap_floor_us']:.2f} µs)")
    return res


def _step_modules() -> dict[str, Any]:
    from secvma.bench.modules import run_modules

    res = run_modules(reps=2)
    mods: dict[str, Any] = res.get("modules", {})
    res["ok"] = bool(mods) and not res.get("errors") and all(
        v["load_ms"] is not None for v in mods.values())
    res["summary"] = "; ".join(
        f"{name}: {v['load_ms']:.1f} ms through HVC 30 vs {v['load_ms_unprotected']:.1f} ms "
        f"kernel-side ({v['ratio']:.1f}x)" for name, v in mods.items() if v["load_ms"] is not None)
    return res


STEPS: list[tuple[str, Callable[[], dict[str, Any]]]] = [
    ("Debian 6.1 boots to userspace under the Python EL2", _step_debian_boot),
    ("testbed kernel, workloads, policy none", _step_run("none")),
    ("testbed kernel, workloads, policy hardened", _step_run("hardened")),
    ("testbed kernel, workloads, policy hardened, 4 KB stage 2", _step_run("hardened", "4k")),
    ("testbed kernel, workloads, policy secvma2024", _step_run("secvma2024")),
    ("attack suite", _step_attacks),
    ("stock Debian kernel: workloads and secvma_lkdtm attacks, none and transparent", _step_linux),
    ("Debian modules signed, linked and installed by EL2 (xfs, virtio_crypto)", _step_modules),
    ("application bench in the Debian guest: hackbench --quick, normalized", _step_apps),
    ("trap round trips (bench micro)", _step_micro),
]


QUICK_STEPS: dict[Callable[[], dict[str, Any]], Callable[[], dict[str, Any]]] = {
    _step_attacks: lambda: _step_attacks(quick=True),
    _step_linux: lambda: _step_linux(quick=True),
    _step_micro: lambda: _step_micro(quick=True),
}
"""--quick: the same steps, with the testbed catalogue cut to one scenario per class
(`attacks.suite.class_sample`), the stock kernel's attacks to `linux.attacks.SAMPLE` and a 1 s
idle window; every step still runs for real (the test suite runs the whole catalogues)."""


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--quick", is_flag=True,
              help="One attack per class on each kernel and a shorter idle window (~2 min less).")
def demo(as_json: bool, quick: bool) -> None:
    """Boot, run workloads and attacks under each policy, measure, and print a report."""
    report: dict[str, Any] = {}
    for title, fn in STEPS:
        if quick:
            fn = QUICK_STEPS.get(fn, fn)
        t0 = time.perf_counter()
        with console.status(title + " ...", spinner="dots"):
            try:
                out = fn()
            except Exception as e:  # a demo step failing must not hide the others
                out = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        out["step_s"] = round(time.perf_counter() - t0, 2)
        report[title] = out
        if not as_json:
            mark = "[green]ok[/]" if out.get("ok") is True else "[red]FAILED[/]"
            console.print(f"{mark}  {title}  [dim]({out['step_s']} s)[/]")
    if as_json:
        emit_json(report)
        _exit_if_failed(report)
        return
    t = Table(title="secvma demo report")
    t.add_column("step")
    t.add_column("result")
    t.add_column("details")
    for title, out in report.items():
        detail = out.get("error") or out.get("summary") or ", ".join(
            f"{k}={v}" for k, v in out.items() if k not in ("ok", "step_s") and not isinstance(v, dict | list)
        )
        t.add_row(title, "ok" if out.get("ok") is True else "FAILED", str(detail)[:240])
    console.print(t)
    _exit_if_failed(report)


def _exit_if_failed(report: dict[str, dict[str, Any]]) -> None:
    """Exit 1 unless every step reported `ok: True` (anything else, a missing `ok` included,
    is a failure)."""
    failed = [k for k, v in report.items() if v.get("ok") is not True]
    if failed:
        err_console.print(f"[bold red]demo failed:[/] {'; '.join(failed)}")
        raise SystemExit(1)


COMMANDS: list[click.Command] = [demo]
