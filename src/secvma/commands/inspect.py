"""`secvma inspect`: KPCore's view of physical memory (usage classes) and of stage 2."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from secvma.kpcore import POLICY_NAMES, S2_MODES, make_policy
from secvma.ui import console, emit_json, fail

COLORS = {"EL2": "#444444", "NONE": "#d9d9d9", "EL1_KCODE": "#d62728", "EL1_RODATA": "#ff9896",
          "EL1_INIT": "#ffbb78", "EL1_DATA": "#1f77b4", "EL1_PGD": "#2ca02c",
          "EL1_PUD": "#98df8a", "EL1_PMD": "#17becf", "EL1_PTE": "#9edae5",
          "EL0_PGD": "#9467bd", "EL1_AUTH": "#8c564b", "EL1_MOD_TXT": "#e377c2",
          "EL1_MOD_RO": "#f7b6d2"}
SIZE_COLORS = {"1G": "#08306b", "2M": "#4292c6", "4K": "#c6dbef"}


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _pair(v: object) -> bool:
    return isinstance(v, list) and len(v) == 2 and all(_is_int(x) for x in v)


def snapshot_problem(snap: object) -> str | None:
    """What is wrong with the shape of a saved snapshot (None when `_print`/`draw_png` can
    use it): the first missing key or value of the wrong type, as a path like
    `classes.NONE.ranges[3]`."""
    if not isinstance(snap, dict):
        return f"the top level is a {type(snap).__name__}, not an object"
    for key, ok, want in (("policy", isinstance(snap.get("policy"), str), "a string"),
                          ("s2", isinstance(snap.get("s2"), str), "a string"),
                          ("installed", isinstance(snap.get("installed"), bool), "true/false"),
                          ("ram", _pair(snap.get("ram")), "[start, end]"),
                          ("classes", isinstance(snap.get("classes"), dict), "an object"),
                          ("stage2", isinstance(snap.get("stage2"), dict), "an object"),
                          ("refusals", isinstance(snap.get("refusals"), list), "a list")):
        if not ok:
            return f"{key}: missing or not {want}"
    if not isinstance(snap.get("invariant_violations", []), list):
        return "invariant_violations: not a list"
    for name, c in snap["classes"].items():
        if not isinstance(c, dict):
            return f"classes.{name}: not an object"
        if not _is_int(c.get("pages")) or not isinstance(c.get("mib"), int | float) \
                or isinstance(c.get("mib"), bool) or not isinstance(c.get("ranges"), list):
            return f"classes.{name}: needs pages (integer), mib (number) and ranges (list)"
        for i, r in enumerate(c["ranges"]):
            if not _pair(r):
                return f"classes.{name}.ranges[{i}]: not [start, end]"
    s2 = snap["stage2"]
    hist, leaves = s2.get("histogram"), s2.get("leaves")
    if not isinstance(hist, dict) or not all(_is_int(v) for v in hist.values()):
        return "stage2.histogram: missing or not an object of counts"
    if not _is_int(s2.get("pool_free")):
        return "stage2.pool_free: missing or not an integer"
    if not isinstance(leaves, list):
        return "stage2.leaves: missing or not a list"
    for i, leaf in enumerate(leaves):
        if not (isinstance(leaf, list) and len(leaf) == 3 and _is_int(leaf[0])
                and leaf[1] in SIZE_COLORS and isinstance(leaf[2], str)):
            return f"stage2.leaves[{i}]: not [base, \"1G\"|\"2M\"|\"4K\", kind]"
    return None


def _boot(policy: str, s2: str, workloads: tuple[str, ...], timeout: float) -> dict[str, Any]:
    from secvma.machine.errors import MachineError
    from secvma.testbed.build import build_testbed
    from secvma.testbed.run import run_workloads

    hv = make_policy(policy, s2=s2)
    try:
        run_workloads(hv, list(workloads), policy=policy, s2=s2, image=build_testbed(),
                      timeout_s=timeout)
    except MachineError as exc:
        fail(exc.message, exc.hint or "run `secvma run --console` to see the kernel's output")
    return hv.snapshot()


def _print(snap: dict[str, Any], max_ranges: int) -> None:
    console.print(f"[bold]KPCore[/] policy [cyan]{snap['policy']}[/], stage 2 "
                  f"[cyan]{snap['s2']}[/], installed: {snap['installed']}")
    t = Table(title="physical memory by usage class")
    for col in ("class", "pages", "MiB", "ranges"):
        t.add_column(col, justify="right" if col in ("pages", "MiB") else "left")
    for name, c in sorted(snap["classes"].items(), key=lambda kv: -kv[1]["pages"]):
        rs = c["ranges"]
        shown = ", ".join(f"{a:#x}-{b:#x}" for a, b in rs[:max_ranges])
        if len(rs) > max_ranges:
            shown += f" (+{len(rs) - max_ranges} more)"
        t.add_row(name, str(c["pages"]), f"{c['mib']:.2f}", shown)
    console.print(t)
    s = Table(title="stage-2 leaves (size, permission)")
    s.add_column("leaf")
    s.add_column("count", justify="right")
    for k, v in snap["stage2"]["histogram"].items():
        s.add_row(k, str(v))
    console.print(s)
    console.print(f"stage-2 pool pages free: {snap['stage2']['pool_free']}   refusals: "
                  f"{len(snap['refusals'])}   invariant violations: "
                  f"{len(snap.get('invariant_violations', []))}")


def _panel(ax: Any, snap: dict[str, Any], lo: int, hi: int, title: str) -> None:
    """Usage classes and stage-2 leaves over [lo, hi), in MiB from the start of RAM."""
    ram = snap["ram"][0]
    mib = 1 << 20
    for name, c in snap["classes"].items():
        bars = [((max(a, lo) - ram) / mib, (min(b, hi) - max(a, lo)) / mib)
                for a, b in c["ranges"] if a < hi and b > lo]
        ax.broken_barh(bars, (10, 8), color=COLORS.get(name, "black"))
    for base, size, _kind in snap["stage2"]["leaves"]:
        if lo <= base < hi:
            width = {"1G": 1024, "2M": 2, "4K": 1 / 256}[size]
            ax.broken_barh([((base - ram) / mib, width)], (0, 8), color=SIZE_COLORS[size])
    ax.set_xlim((lo - ram) / mib, (hi - ram) / mib)
    ax.set_ylim(0, 20)
    ax.set_yticks([4, 14], labels=["stage-2 leaf", "usage class"])
    ax.set_xlabel(f"MiB from {ram:#x}")
    ax.set_title(title, fontsize=10)


def draw_png(snap: dict[str, Any], path: Path) -> None:
    """Two panels: all RAM, and a zoom on the region the hypervisor classified (not NONE);
    each with a bar of usage classes and a bar of stage-2 leaf sizes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    lo, hi = snap["ram"]
    marked = [(a, b) for name, c in snap["classes"].items() if name != "NONE"
              for a, b in c["ranges"]]
    z_lo = min((a for a, _ in marked), default=lo) & ~0x1F_FFFF
    z_hi = min(hi, (max((b for _, b in marked), default=hi) + 0x1F_FFFF) & ~0x1F_FFFF)
    fig, (top, zoom) = plt.subplots(2, 1, figsize=(12, 5))
    _panel(top, snap, lo, hi, f"KPCore {snap['policy']} / {snap['s2']}: all physical memory")
    _panel(zoom, snap, z_lo, z_hi, f"zoom: {z_lo:#x}-{z_hi:#x} (every page not NONE)")
    handles = [Patch(color=COLORS.get(n, "black"), label=n) for n in snap["classes"]]
    handles += [Patch(color=c, label=f"S2 {s}") for s, c in SIZE_COLORS.items()]
    fig.legend(handles=handles, loc="lower center", ncol=8, fontsize=7)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


@click.command("inspect")
@click.option("--policy", type=click.Choice(POLICY_NAMES), default="hardened", show_default=True)
@click.option("--s2", type=click.Choice(S2_MODES), default="huge", show_default=True)
@click.option("--workload", "workloads", multiple=True, default=("hackbench",),
              show_default=True, help="Workloads to run before inspecting (repeatable).")
@click.option("--state", "state_file", type=click.Path(exists=True, dir_okay=False,
                                                         path_type=Path),
              help="Inspect a saved snapshot instead of booting.")
@click.option("--save", type=click.Path(dir_okay=False, path_type=Path),
              help="Save the snapshot as JSON.")
@click.option("--png", type=click.Path(dir_okay=False, path_type=Path),
              help="Draw the physical memory map to this PNG.")
@click.option("--ranges", "max_ranges", type=int, default=4, show_default=True,
              help="Ranges listed per class.")
@click.option("--timeout", type=float, default=120.0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the snapshot as JSON.")
def inspect_cmd(policy: str, s2: str, workloads: tuple[str, ...], state_file: Path | None,
                save: Path | None, png: Path | None, max_ranges: int, timeout: float,
                as_json: bool) -> None:
    """Boot the testbed under KPCore and show memory by usage class and stage-2 mappings."""
    if state_file is not None:
        try:
            snap = json.loads(state_file.read_text())
        except (OSError, ValueError) as exc:
            fail(f"cannot read snapshot {state_file}: {exc}")
        problem = snapshot_problem(snap)
        if problem is not None:
            fail(f"{state_file} is not a secvma inspect snapshot: {problem}",
                 "save one with `secvma inspect --save FILE`")
    else:
        snap = _boot(policy, s2, workloads, timeout)
    if save is not None:
        save.write_text(json.dumps(snap))
    if png is not None:
        draw_png(snap, png)
    if as_json:
        emit_json(snap)
    else:
        _print(snap, max_ranges)
        if png is not None:
            console.print(f"memory map drawn to {png}")


COMMANDS: list[click.Command] = [inspect_cmd]
