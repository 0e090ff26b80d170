"""`secvma bench apps`: the paper's application benchmarks on the Debian guest (docs/eval-spec.md §1).

Each configuration boots the unmodified Debian 6.1 kernel with the Debian root filesystem
(guestos/rootfs.py) on a virtio-blk disk and virtio-net with QEMU user networking (both PCI,
`iommu_platform=on,disable-legacy=on`; ports forwarded to 127.0.0.1 only). The servers run in
the guest, the load generators on this host, through the same `Harness` as `secvma harness
run`: the guest is just another `Server`, reached over the serial console (guestos/agent.py).

Configurations: `plain` (QEMU boots the kernel at EL1, no EL2: the bare-metal baseline),
`null` (our EL2 trampoline + NullHypervisor: traps forwarded, no policy), `transparent`
(TransparentKPCore, stage 2 huge) and `transparent-4k` (the same with 4 KB stage-2 mappings,
`s2="4k"`). Parameters are scaled for the emulator and printed with every
result.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from secvma import fixtures as fx
from secvma.bench.harness import BENCHES, Harness, Measured, Params
from secvma.guestos import rootfs as rootfs_mod
from secvma.guestos.agent import AgentError, GuestServer
from secvma.machine.errors import MachineError
from secvma.machine.qemu import MachineConfig
from secvma.machine.runner import boot
from secvma.platform import Hypervisor

CONFIGS = ("plain", "null", "transparent", "transparent-4k")
GUEST_RAM_MB = 1024
GUEST_CPUS = 1
APPEND = "console=ttyAMA0 panic=-1 rdinit=/init"  # the agent turns console messages off (dmesg -n 1)

# Scaled for TCG (a guest instruction costs ~10-50 host instructions). `--quick`: seconds each.
DEFAULT = Params(hackbench_groups=10, hackbench_loops=100, hackbench_reps=4, kernbench_reps=2,
                 kernbench_tree="/opt/kernbench", netperf_reps=3, netperf_seconds=5, apache_reps=4,
                 apache_requests=2000, apache_concurrency=16, apache_path="/gcc/index.html",
                 memcached_reps=4, memcached_ops=20000, memcached_threads=2, memcached_concurrency=16,
                 timeout_s=900.0, warmup=1)
QUICK = replace(DEFAULT, hackbench_groups=2, hackbench_loops=20, hackbench_reps=2, kernbench_reps=1,
                kernbench_tree="/opt/kernbench-quick",
                netperf_reps=2, netperf_seconds=2, apache_reps=2, apache_requests=300,
                apache_concurrency=8, memcached_reps=2, memcached_ops=3000, memcached_threads=1,
                memcached_concurrency=8, timeout_s=600.0)

SERVERS = (
    "setsid apache2 -f /etc/apache2/secvma.conf -k start",
    "setsid memcached -d -u nobody -l 0.0.0.0 -p 11211 -m 64 -U 0",
    "(setsid sockperf sr --tcp -p 11111 </dev/null >/dev/null 2>&1 &)",
)


class BenchUnavailable(RuntimeError):
    """A configuration cannot run here (fixtures, root filesystem or policy missing)."""


@dataclass
class ConfigRun:
    """One configuration's measurements and what its hypervisor did meanwhile."""

    config: str
    measured: list[Measured] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    bench_s: float = 0.0
    traps: dict[str, int] = field(default_factory=dict)
    banner: str = ""
    error: str = ""
    per_bench: dict[str, dict[str, Any]] = field(default_factory=dict)


def _trap_snapshot(hv: Hypervisor | None) -> dict[str, int]:
    """The hypervisor's trap counters by class (NullHypervisor.events, a policy's stats)."""
    for attr in ("events", "stats"):
        c = getattr(hv, attr, None)
        if isinstance(c, dict):
            return {str(k): int(v) for k, v in c.items() if isinstance(v, int)}
    return {}


def operations(bench: str, p: Params) -> tuple[float, str] | None:
    """How many operations one bench's runs (warm-up included) performed, and their name."""
    runs = {"hackbench": p.hackbench_reps, "apache": p.apache_reps, "memcached": p.memcached_reps}
    n = runs.get(bench, 0) + p.warmup
    if bench == "hackbench":  # 20 senders x 20 receivers per group, `loops` messages each
        return float(n * p.hackbench_groups * 400 * p.hackbench_loops), "message"
    if bench == "apache":
        return float(n * p.apache_requests), "request"
    if bench == "memcached":
        return float(n * p.memcached_ops), "memcached op"
    if bench == "kernbench":
        return float(p.kernbench_reps), "build"
    return None


def _accounting(bench: str, p: Params, secs: float, before: dict[str, int],
                after: dict[str, int]) -> dict[str, Any]:
    delta = {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}
    # A policy's stats mix trap classes ("trap.X") with finer, overlapping counters: count classes.
    classes = {k: v for k, v in delta.items() if k.startswith("trap.")} or delta
    total = sum(classes.values())
    out: dict[str, Any] = {"seconds": secs, "traps": delta, "trap_total": total,
                           "traps_per_s": total / secs if secs > 0 else 0.0}
    ops = operations(bench, p)
    if ops is not None and ops[0] > 0:
        out["per_op"] = {"op": ops[1], "ops": ops[0], "traps_per_op": total / ops[0]}
    return out


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def hypervisor_for(config: str) -> Hypervisor | None:
    """The EL2 side of a configuration (None for `plain`). Raises BenchUnavailable."""
    if config == "plain":
        return None
    if config == "null":
        from secvma.machine.null import NullHypervisor

        return NullHypervisor()
    from secvma.kpcore.transparent import TransparentKPCore

    if config in ("transparent", "transparent-4k"):
        fs = fx.available()
        if fs is None:
            raise BenchUnavailable("the Debian kernel is not fetched (secvma fixtures fetch)")
        return TransparentKPCore(s2="4k" if config == "transparent-4k" else "huge",
                                 image=fs.kernel_image.read_bytes())  # its patch sites
    raise BenchUnavailable(f"unknown configuration {config!r}: one of {', '.join(CONFIGS)}")


GuestJob = Callable[[GuestServer, dict[str, int], "Hypervisor | None", "ConfigRun"], None]
"""What runs once the guest is up: (agent, host ports by GUEST_PORTS key, hypervisor, record)."""


def run_guest(config: str, job: GuestJob, *, smmu: bool = False, timeout_s: float = 1800.0,
              status: Callable[[str], None] = lambda _m: None,
              make_hv: Callable[[], Hypervisor] | None = None) -> ConfigRun:
    """Boot the Debian guest in `config` (with the board's SMMUv3 if `smmu`: under
    `transparent` the devices go through the hypervisor's identity map, under `plain`/`null`
    the SMMU stays off and they bypass it), run `job` against it, power it off. `make_hv`:
    the hypervisor to use instead of `config`'s (a variant of it)."""
    fs = fx.available()
    if fs is None:
        raise BenchUnavailable("the Debian kernel is not fetched (secvma fixtures fetch)")
    try:
        status("root filesystem (cached after the first build)")
        rfs = rootfs_mod.build(status)
    except rootfs_mod.RootfsError as exc:
        raise BenchUnavailable(f"root filesystem: {exc}") from exc
    hv = make_hv() if make_hv is not None else hypervisor_for(config)
    ports = {k: _free_port() for k in rootfs_mod.GUEST_PORTS}
    fwd = ",".join(f"hostfwd=tcp:127.0.0.1:{ports[k]}-:{g}" for k, g in rootfs_mod.GUEST_PORTS.items())
    work = Path(tempfile.mkdtemp(prefix="secvma-apps-"))
    sock, log = work / "console.sock", work / "console.log"
    extra = ["-drive", f"file={rfs.image},if=none,id=root,format=raw,snapshot=on",
             "-device", "virtio-blk-pci,drive=root,iommu_platform=on,disable-legacy=on",
             "-netdev", f"user,id=net0,{fwd}",
             "-device", "virtio-net-pci,netdev=net0,iommu_platform=on,disable-legacy=on,romfile="]
    mc = MachineConfig(kernel=fs.kernel_image, initrd=rfs.initramfs, append=APPEND, ncpus=GUEST_CPUS,
                       ram_mb=GUEST_RAM_MB, timeout_s=timeout_s, log_path=log,
                       plain=hv is None, extra_args=extra, console_socket=sock, smmu=smmu)
    run = ConfigRun(config)
    guest = GuestServer(sock, log)
    done = threading.Event()
    started = threading.Event()

    def driver() -> None:
        try:
            started.wait(60)
            status(f"{config}: booting the Debian guest")
            run.banner = guest.connect(300)
            job(guest, ports, hv, run)
            guest.run("sync", 60)
        except AgentError as exc:
            run.error = str(exc)
        except Exception as exc:  # the driver thread must always let the boot loop finish
            run.error = f"internal error in the benchmark driver: {exc!r}"
        finally:
            done.set()

    th = threading.Thread(target=driver, name=f"apps-{config}", daemon=True)
    th.start()

    def on_started(_server: Any) -> None:
        started.set()

    if hv is None:
        started.set()
    try:
        res = boot(mc, hv, until=lambda _c: done.is_set(), on_started=on_started)
        run.wall_s = res.wall_s
        run.traps = dict(res.traps)
        if not done.is_set():
            run.error = run.error or f"the guest stopped before the benchmarks finished ({res.reason})"
    except MachineError as exc:
        run.error = f"{exc}"
    finally:
        done.set()
        guest.close()
        th.join(30)
        shutil.rmtree(work, ignore_errors=True)
    if hasattr(hv, "events"):
        run.traps = {**run.traps, **{f"events.{k}": v for k, v in hv.events.items()}}  # type: ignore[union-attr]
    refusals = getattr(hv, "refusals", None)
    if refusals:
        run.notes.append(f"{len(refusals)} refusal(s), first: {refusals[0]}")
    return run


def run_config(config: str, benches: list[str], params: Params,
               progress: Callable[[str, int, int], None] = lambda _w, _d, _t: None,
               status: Callable[[str], None] = lambda _m: None,
               tool_log: Callable[[str, str], None] | None = None, *,
               smmu: bool = False) -> ConfigRun:
    """Boot the guest in `config`, run `benches` against it, power it off."""

    def job(guest: GuestServer, ports: dict[str, int], hv: Hypervisor | None, run: ConfigRun) -> None:
        status(f"{config}: starting the servers in the guest")
        start_servers(guest, run)
        p = params.override(f"{k}={v}" for k, v in ports.items())
        h = Harness(guest, "127.0.0.1", p, prep=False, progress=progress, restart_iperf3=True,
                    server_ports=dict(rootfs_mod.GUEST_PORTS))
        if tool_log is not None:
            h.log = tool_log
        t0 = time.perf_counter()
        for b in benches:
            before, tb = _trap_snapshot(hv), time.perf_counter()
            got = h.run([b])
            secs = time.perf_counter() - tb
            run.measured.extend(got)
            run.per_bench[b] = _accounting(b, p, secs, before, _trap_snapshot(hv))
        run.bench_s = time.perf_counter() - t0
        run.notes.extend(h.notes)

    return run_guest(config, job, smmu=smmu, timeout_s=params.timeout_s * 12 + 600, status=status)


def start_servers(guest: GuestServer, run: ConfigRun) -> None:
    """apache2, memcached and sockperf in the guest (iperf3: the harness restarts it per run)."""
    for cmd in SERVERS:
        d = guest.run(cmd, 120)
        if d.returncode != 0:
            run.notes.append(f"server start `{cmd.split()[1]}` exited {d.returncode}: "
                             f"{d.stderr.strip()[-200:]}")
    time.sleep(1)


def check_benches(benches: list[str]) -> list[str]:
    bad = [b for b in benches if b not in BENCHES]
    if bad:
        raise BenchUnavailable(f"unknown bench {', '.join(bad)}: one of {', '.join(BENCHES)}")
    return [b for b in BENCHES if b in benches]  # run-all.sh's order
