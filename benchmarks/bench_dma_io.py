#!/usr/bin/env python3
"""Disk and network throughput of the Debian guest with and without the SMMU, in one run.

Usage: python3 benchmarks/bench_dma_io.py [--configs null,null+smmu,transparent,transparent+smmu]
                                          [--mb 32] [--seconds 5] [--reps 3] [--json]

Each configuration boots the unmodified Debian 6.1 kernel with the root filesystem of `secvma
bench apps` (guestos/rootfs.py: virtio-blk-pci root disk and virtio-net-pci with QEMU user
networking, both `iommu_platform=on,disable-legacy=on`, ports on 127.0.0.1 only) and measures:

  disk write   dd of `--mb` MiB from /dev/zero to a file of the root filesystem, O_DIRECT + fsync
  disk read    dd of the same file to /dev/null, O_DIRECT (no page cache: every byte is DMA)
  net rx       iperf3 from this host to the guest (the device writes guest memory), `--seconds`
  net tx       iperf3 -R (the device reads guest memory)

`transparent-regs`: TransparentKPCore with `protect_tables=False` (registers only, nothing armed):
the SMMU's identity map is the same minus the pages arming classes, and it runs the Debian
modules the guest needs (virtio, ext4), which armed transparent does not execute until module
authentication lands. `+smmu`: the board has the SMMUv3. Under `transparent` every DMA of both
devices is translated by the hypervisor's identity map (IOVA = PA of ordinary pages); under
`null` the SMMU is never enabled and the devices bypass it (the cost of the board alone).
Figures are medians over `--reps` repetitions inside one boot, MiB/s for the disk and Mbit/s
for the network; the run fails (exit 1) if any configuration did not complete or the
hypervisor refused anything.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from typing import Any

from secvma.bench import apps
from secvma.guestos.agent import GuestServer
from secvma.platform import Hypervisor

CONFIGS = ("null", "null+smmu", "transparent", "transparent+smmu", "transparent-regs",
           "transparent-regs+smmu")
DD_RE = re.compile(r"(\d+) bytes .* copied, ([\d.]+) s")


def _dd(guest: GuestServer, cmd: str) -> float:
    """Run one dd in the guest; its throughput in MiB/s (dd's own byte count and seconds)."""
    d = guest.run(cmd + " 2>&1", 600)
    m = DD_RE.search(d.stdout)
    if d.returncode != 0 or m is None:
        raise RuntimeError(f"`{cmd}` failed ({d.returncode}): {d.stdout.strip()[-300:]}")
    return int(m.group(1)) / float(m.group(2)) / (1 << 20)


def _iperf3(port: int, seconds: int, reverse: bool) -> float:
    """One iperf3 client run against the guest's server; received Mbit/s."""
    cmd = ["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(seconds), "-J"]
    if reverse:
        cmd.append("-R")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds * 10 + 60)
    if out.returncode != 0:
        raise RuntimeError(f"iperf3 {'-R ' if reverse else ''}failed: {out.stdout[-300:]}{out.stderr[-300:]}")
    return float(json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"]) / 1e6


def measure(config: str, mb: int, seconds: int, reps: int) -> dict[str, Any]:
    policy, _, extra = config.partition("+")
    smmu = extra == "smmu"
    make_hv = None
    if policy == "transparent-regs":  # TransparentKPCore(protect_tables=False)
        from secvma.kpcore.transparent import TransparentKPCore

        def make_hv() -> Hypervisor:
            return TransparentKPCore(protect_tables=False)
    figures: dict[str, list[float]] = {"disk_write_mib_s": [], "disk_read_mib_s": [],
                                       "net_rx_mbit_s": [], "net_tx_mbit_s": []}

    def job(guest: GuestServer, ports: dict[str, int], _hv: Hypervisor | None,
            run: apps.ConfigRun) -> None:
        f = "/var/tmp/secvma-dd.bin"
        port = ports["iperf3_port"]
        for _ in range(reps):
            figures["disk_write_mib_s"].append(_dd(
                guest, f"dd if=/dev/zero of={f} bs=1M count={mb} oflag=direct conv=fsync"))
            figures["disk_read_mib_s"].append(_dd(guest, f"dd if={f} of=/dev/null bs=1M iflag=direct"))
            for key, rev in (("net_rx_mbit_s", False), ("net_tx_mbit_s", True)):
                d = guest.run("(setsid iperf3 -s -1 -p 5201 </dev/null >/dev/null 2>&1 &)", 60)
                if d.returncode != 0:
                    raise RuntimeError(f"iperf3 server did not start: {d.stderr[-200:]}")
                time.sleep(1)
                figures[key].append(_iperf3(port, seconds, rev))
        guest.run(f"rm -f {f}", 60)

    t0 = time.perf_counter()
    run = apps.run_guest(policy, job, smmu=smmu, timeout_s=3600, make_hv=make_hv)
    out: dict[str, Any] = {"config": config, "policy": policy, "smmu": smmu, "reps": reps,
                           "wall_s": round(time.perf_counter() - t0, 1), "error": run.error,
                           "notes": run.notes}
    for k, v in figures.items():
        out[k] = round(statistics.median(v), 2) if v else None
        out[k + "_all"] = [round(x, 2) for x in v]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--mb", type=int, default=32)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    configs = [c for c in a.configs.split(",") if c]
    bad = [c for c in configs if c not in CONFIGS]
    if bad:
        ap.error(f"unknown configuration(s) {bad}; one of {CONFIGS}")
    rows = [measure(c, a.mb, a.seconds, a.reps) for c in configs]
    if a.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"{'config':18} {'disk write':>11} {'disk read':>10} {'net rx':>9} {'net tx':>9}   "
              f"(MiB/s, Mbit/s; median of {a.reps}, {a.mb} MiB dd, {a.seconds} s iperf3)")
        for r in rows:
            def f(k: str, r: dict[str, Any] = r) -> str:
                return "-" if r[k] is None else f"{r[k]:.1f}"
            print(f"{r['config']:18} {f('disk_write_mib_s'):>11} {f('disk_read_mib_s'):>10} "
                  f"{f('net_rx_mbit_s'):>9} {f('net_tx_mbit_s'):>9}   {r['error'] or ''}")
            for n in r["notes"]:
                print(f"{'':18} note: {n}")
    failed = [r for r in rows if r["error"] or any("refusal(s)" in n for n in r["notes"])]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
