"""Disk and network throughput of the Debian guest with and without the SMMU (issue 12).

The logic of benchmarks/bench_dma_io.py (and of its test): one boot per configuration of the
`secvma bench apps` guest (guestos/rootfs.py: virtio-blk-pci root disk and virtio-net-pci with
QEMU user networking, both `iommu_platform=on,disable-legacy=on`, ports on 127.0.0.1 only):

  disk write   dd of `mb` MiB from /dev/zero to a file of the root filesystem, O_DIRECT + fsync
  disk read    dd of the same file to /dev/null, O_DIRECT (no page cache: every byte is DMA)
  net rx       iperf3 from this host to the guest (the device writes guest memory)
  net tx       iperf3 -R (the device reads guest memory)

Configurations: `null`, `transparent` (armed), `transparent-regs` (TransparentKPCore with
`protect_tables=False`: registers only; it runs the Debian modules the guest needs - virtio,
ext4 - which armed transparent does not execute until module authentication lands), each
optionally `+smmu`: the board has the SMMUv3; under a transparent policy every DMA of both
devices is translated by the hypervisor's identity map (IOVA = PA of ordinary pages), under
`null` the SMMU is never enabled and the devices bypass it (the cost of the board alone).
"""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import time
from collections.abc import Callable
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


def _iperf3(port: int, seconds: int, reverse: bool, tries: int = 3) -> float:
    """One iperf3 client run against the guest's server; received Mbit/s. A run the server
    refused (not listening yet, still busy) is retried; its error is raised after `tries`."""
    cmd = ["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(seconds), "-J"]
    if reverse:
        cmd.append("-R")
    why = ""
    for _ in range(tries):
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds * 10 + 60)
        try:
            doc = json.loads(out.stdout)
            return float(doc["end"]["sum_received"]["bits_per_second"]) / 1e6
        except (ValueError, KeyError, TypeError):
            why = f"{out.stdout[-300:]}{out.stderr[-300:]}"
            time.sleep(1)
    raise RuntimeError(f"iperf3 {'-R ' if reverse else ''}failed: {why}")


def measure(config: str, mb: int = 32, seconds: int = 5, reps: int = 3) -> dict[str, Any]:
    """One configuration's figures (medians and every value) and what the SMMU did."""
    policy, _, extra = config.partition("+")
    smmu = extra == "smmu"
    make_hv: Callable[[], Hypervisor] | None = None
    if policy == "transparent-regs":  # TransparentKPCore(protect_tables=False)
        from secvma.kpcore.transparent import TransparentKPCore

        def make_hv() -> Hypervisor:
            return TransparentKPCore(protect_tables=False)
    figures: dict[str, list[float]] = {"disk_write_mib_s": [], "disk_read_mib_s": [],
                                       "net_rx_mbit_s": [], "net_tx_mbit_s": []}

    refusals: list[object] = []
    dma: dict[str, object] = {}

    def job(guest: GuestServer, ports: dict[str, int], hv: Hypervisor | None,
            run: apps.ConfigRun) -> None:
        f = "/var/tmp/secvma-dd.bin"
        port = ports["iperf3_port"]
        d = guest.run("setsid iperf3 -s -D -p 5201", 60)
        if d.returncode != 0:
            raise RuntimeError(f"iperf3 server did not start: {d.stderr[-200:]}")
        time.sleep(1)
        for _ in range(reps):
            figures["disk_write_mib_s"].append(_dd(
                guest, f"dd if=/dev/zero of={f} bs=1M count={mb} oflag=direct conv=fsync"))
            figures["disk_read_mib_s"].append(_dd(guest, f"dd if={f} of=/dev/null bs=1M iflag=direct"))
            for key, rev in (("net_rx_mbit_s", False), ("net_tx_mbit_s", True)):
                figures[key].append(_iperf3(port, seconds, rev))
        guest.run(f"rm -f {f}", 60)
        refusals.extend(getattr(hv, "refusals", []))
        st = getattr(hv, "st", None)
        if st is not None and st.dma is not None and st.dma.identity is not None:
            ident = st.dma.identity
            dma.update(faults=st.dma.fault_count, pages_mapped=sum(ident.mapped),
                       pages_dropped=ident.unmapped, invalidations=ident.flushes,
                       smmu_commands=ident.smmu.commands)

    t0 = time.perf_counter()
    if policy not in ("null", "transparent", "transparent-regs") or extra not in ("", "smmu"):
        raise ValueError(f"unknown configuration {config!r}; one of {CONFIGS}")
    run = apps.run_guest(policy, job, smmu=smmu, timeout_s=3600, make_hv=make_hv)
    out: dict[str, Any] = {"config": config, "policy": policy, "smmu": smmu, "reps": reps,
                           "wall_s": round(time.perf_counter() - t0, 1), "error": run.error,
                           "notes": run.notes, "refusals": [str(r) for r in refusals],
                           "dma": dma}
    for k, v in figures.items():
        out[k] = round(statistics.median(v), 2) if v else None
        out[k + "_all"] = [round(x, 2) for x in v]
    return out


