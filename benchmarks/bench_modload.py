#!/usr/bin/env python3
"""Module loading before and after, measured side by side in one run (issue 14 item 4).

"Before" is the source tree of a baseline revision (default: d2c8dab, main before the PTE
fast path and the HVC 30 work), exported with `git archive` into a temporary directory with a
copy of this checkout's build directory (artifacts are content-addressed: each tree finds its
own trampoline); "after" is this checkout. Each round runs `secvma bench modules --reps N
--json` in a child process for each tree, alternately, so host load hits both alike.

Reported per module and tree (medians over rounds): the protected load (guest CNTVCT, ms),
the kernel's own load in the same run, their ratio (the issue's figure: target <= 2), and
where the tree reports them the round trips to Python per load, Python's wall and CPU time per
load, and the PTE stores the trampoline carried out. The CPU time hardly moves with host load;
the wall figures do (4 agents share 2 cores): the load average is printed with them.

Usage: python3 benchmarks/bench_modload.py [--baseline REV] [--rounds N] [--reps N] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MODULES = ("xfs", "virtio_crypto")
KEYS = ("load_ms", "load_ms_unprotected", "ratio", "load_traps", "load_python_ms",
        "load_python_cpu_ms", "load_fast_ptes")
CHILD = "import sys; from secvma.cli import main; sys.exit(main(sys.argv[1:]))"


def _export(rev: str, into: Path) -> Path:
    tar = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "src", "guest"],
                         check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=tar, check=True)
    build = Path(os.environ.get("SECVMA_BUILD", ROOT / "build"))
    if build.is_dir():
        shutil.copytree(build, into / "build", symlinks=True)
    return into


def _child(tree: Path, build: Path, reps: int) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(tree / "src"), SECVMA_BUILD=str(build))
    out = subprocess.run([sys.executable, "-c", CHILD, "bench", "modules", "--reps", str(reps),
                          "--json"], env=env, capture_output=True, text=True, timeout=3600,
                         cwd=tree)
    if out.returncode != 0:
        raise SystemExit(f"{tree}: bench modules failed:\n{out.stderr[-3000:]}{out.stdout[-2000:]}")
    doc: dict[str, Any] = json.loads(out.stdout[out.stdout.index("{"):])
    return doc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", default="d2c8dab")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    loads: list[float] = []
    with tempfile.TemporaryDirectory(prefix="secvma-modload-") as tmp:
        before = _export(a.baseline, Path(tmp))
        trees = {"before": (before, before / "build"),
                 "after": (ROOT, Path(os.environ.get("SECVMA_BUILD", ROOT / "build")))}
        runs: dict[str, list[dict[str, Any]]] = {k: [] for k in trees}
        for _ in range(a.rounds):
            for name, (tree, build) in trees.items():
                runs[name].append(_child(tree, build, a.reps))
                loads.append(os.getloadavg()[0])
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for name, docs in runs.items():
        out[name] = {}
        for mod in MODULES:
            row: dict[str, float | None] = {}
            for key in KEYS:
                vals = [d["modules"][mod].get(key) for d in docs]
                vals = [v for v in vals if v is not None]
                row[key] = round(statistics.median(vals), 3) if vals else None
            out[name][mod] = row
    doc = {"baseline": a.baseline, "rounds": a.rounds, "reps": a.reps,
           "load_avg_during": [round(x, 2) for x in loads], **out}
    if a.json:
        print(json.dumps(doc, indent=2))
        return 0
    print(f"baseline {a.baseline} vs this tree; {a.rounds} alternating rounds of "
          f"`bench modules --reps {a.reps}`; load average during: "
          f"{min(loads):.1f}..{max(loads):.1f} (2 cores)")
    print(f"{'module':14} {'tree':7} {'load ms':>9} {'kernel ms':>10} {'ratio':>7} "
          f"{'traps':>7} {'py ms':>8} {'py CPU ms':>10} {'fast PTEs':>10}")

    def f(v: float | None, w: int, p: int = 1) -> str:
        return f"{'—':>{w}}" if v is None else f"{v:>{w}.{p}f}"

    for mod in MODULES:
        for name in trees:
            r = out[name][mod]
            print(f"{mod:14} {name:7} {f(r['load_ms'], 9)} {f(r['load_ms_unprotected'], 10)} "
                  f"{f(r['ratio'], 7, 2)} {f(r['load_traps'], 7, 0)} {f(r['load_python_ms'], 8)} "
                  f"{f(r['load_python_cpu_ms'], 10)} {f(r['load_fast_ptes'], 10, 0)}")
    print("target: ratio <= 2 (issue 14 item 4)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
