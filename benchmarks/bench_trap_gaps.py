#!/usr/bin/env python3
"""Where a trap-heavy module load waits: Python, or the time between an answer and the next trap.

One xfs load under `hardened` (after a warm-up load), with the PTE fast path off so that every
kernel PTE store traps (~1 860 round trips), in child processes alternating between the mailbox
server that yields its core while it spins (this tree's default) and one that does not. Per
run: the load's guest time, Python's time in `handle`, the gaps between an answer and the next
trap (sum, median, those over 2 ms), and from /proc/<tid>/schedstat the run-queue wait of the
QEMU vCPU thread and of the serving thread during the load. On an idle host the gaps are a few
µs; on a loaded one (4 agents, 2 cores) they were ~10 ms each and matched the vCPU thread's
run-queue wait: the server and the vCPU thread spinning at each other's expense.

Usage: python3 benchmarks/bench_trap_gaps.py [--rounds N] [--module xfs|virtio_crypto] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from typing import Any

CHILD = r'''
import json, os, sys, time
from secvma import fixtures
from secvma.bench.modules import hardened_hypervisor
from secvma.kpcore import ptefast
from secvma.machine import mailbox
from secvma.testbed.commands import TestbedSession

mod, yield_spin = sys.argv[1], sys.argv[2] == "1"
dep = {"xfs": "libcrc32c", "virtio_crypto": "crypto_engine"}[mod]
mailbox.YIELD_WHILE_SPINNING = yield_spin
ptefast.maybe_arm = lambda st, plat, cpu: False  # every PTE store traps
mods = fixtures.available().modules
hyp = hardened_hypervisor(mods)

class Timed:
    def __init__(self, h):
        self.h, self.rec, self.on = h, [], False
        self.poll = getattr(h, "poll", None)
    def handle(self, plat, cpu, ev):
        t0 = time.perf_counter()
        self.h.handle(plat, cpu, ev)
        if self.on:
            self.rec.append((t0, time.perf_counter()))

def waits(pid):
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                run, wait, _n = map(int, f.read().split())
            out[tid] = (run, wait)
        except OSError:
            pass
    return out

w = Timed(hyp)
with TestbedSession(w, command_timeout_s=600) as s:
    at, offs = 0, {}
    for name in (dep, mod):
        data = mods[name].read_bytes()
        s.upload(data, at)
        offs[name] = (at, len(data))
        at += (len(data) + 4095) & ~4095
    for rep in range(2):
        d = s.load_uploaded(offs[dep][1], offs[dep][0], no_init=True)
        qpid = s._server.qemu.proc.pid
        q0, p0 = waits(qpid), waits(os.getpid())
        w.rec.clear()
        w.on = rep == 1
        r = s.load_uploaded(offs[mod][1], offs[mod][0], no_init=True)
        w.on = False
        q1, p1 = waits(qpid), waits(os.getpid())
        s.unload_module(r.value)
        s.unload_module(d.value)

def busiest(a, b):  # the thread that ran most during the load: (run ms, run-queue wait ms)
    best = max((b[t][0] - a[t][0], b[t][1] - a[t][1]) for t in b if t in a)
    return round(best[0] / 1e6, 1), round(best[1] / 1e6, 1)

rec = w.rec
gaps = sorted(rec[i + 1][0] - rec[i][1] for i in range(len(rec) - 1))
print(json.dumps({
    "guest_ms": round(r.guest_s * 1e3, 1), "traps": len(rec),
    "python_ms": round(sum(b - a for a, b in rec) * 1e3, 1),
    "gaps_ms": round(sum(gaps) * 1e3, 1),
    "gap_median_us": round(gaps[len(gaps) // 2] * 1e6, 1) if gaps else 0.0,
    "gaps_over_2ms": sum(1 for g in gaps if g > 2e-3),
    "gaps_over_2ms_ms": round(sum(g for g in gaps if g > 2e-3) * 1e3, 1),
    "vcpu_run_wait_ms": busiest(q0, q1), "server_run_wait_ms": busiest(p0, p1)}))
'''


def _child(module: str, yield_spin: bool) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-c", CHILD, module, "1" if yield_spin else "0"],
                         capture_output=True, text=True, timeout=1200)
    if out.returncode != 0:
        raise SystemExit(f"child failed:\n{out.stderr[-3000:]}")
    doc: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    doc["load_avg"] = round(os.getloadavg()[0], 2)
    return doc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--module", default="xfs", choices=("xfs", "virtio_crypto"))
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    runs: dict[str, list[dict[str, Any]]] = {"spin": [], "spin+yield": []}
    for _ in range(a.rounds):
        for name in runs:  # alternate, so host load hits both alike
            runs[name].append(_child(a.module, name == "spin+yield"))
    if a.json:
        print(json.dumps(runs, indent=2))
        return 0
    print(f"{a.module}, one load per run, every PTE store trapping; {a.rounds} alternating rounds")
    print(f"{'server':11} {'load':>5} {'guest ms':>9} {'traps':>6} {'python ms':>10} "
          f"{'gaps ms':>8} {'median µs':>10} {'>2ms':>5} {'vCPU run/wait ms':>17} "
          f"{'server run/wait ms':>19}")
    for name, rs in runs.items():
        for r in rs:
            print(f"{name:11} {r['load_avg']:>5.1f} {r['guest_ms']:>9.1f} {r['traps']:>6} "
                  f"{r['python_ms']:>10.1f} {r['gaps_ms']:>8.1f} {r['gap_median_us']:>10.1f} "
                  f"{r['gaps_over_2ms']:>5} {r['vcpu_run_wait_ms']!s:>17} "
                  f"{r['server_run_wait_ms']!s:>19}")
    for name, rs in runs.items():
        print(f"median {name}: guest {statistics.median(r['guest_ms'] for r in rs):.1f} ms, gaps "
              f"{statistics.median(r['gaps_ms'] for r in rs):.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
