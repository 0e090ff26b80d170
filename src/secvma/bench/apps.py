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
    protection: dict[str, Any] = field(default_factory=dict)  # a policy's state after the run
    mailbox: Any = field(default=None, repr=False)  # the mailbox server while it runs (not plain)


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


# What the guest kernel did during one bench, from its own counters: the operations the traps
# are divided by (syscalls are not counted by the kernel without tracing, so none here).
GUEST_COUNTERS = "cat /proc/stat /proc/vmstat /proc/net/dev"
GUEST_EVENTS = ("context switch", "fork", "page fault", "packet")
# the operations each bench is made of (all are in the JSON; these are printed)
BENCH_EVENTS = {"hackbench": ("context switch", "fork"), "kernbench": ("fork", "page fault"),
                "netperf": ("packet",), "apache": ("packet", "fork"), "memcached": ("packet",)}


def parse_guest_counters(text: str) -> dict[str, int]:
    """/proc/stat's ctxt and processes, /proc/vmstat's pgfault, /proc/net/dev's packets of
    every interface but lo (received + sent)."""
    out: dict[str, int] = {}
    keys = {"ctxt": "context switch", "processes": "fork", "pgfault": "page fault"}
    packets = 0
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in keys and parts[1].isdigit():
            out[keys[parts[0]]] = int(parts[1])
        elif ":" in line and len(line.split(":", 1)[1].split()) >= 10:
            name, rest = line.split(":", 1)
            cols = rest.split()
            if name.strip() != "lo" and cols[1].isdigit() and cols[9].isdigit():
                packets += int(cols[1]) + int(cols[9])
    out["packet"] = packets
    return out


def _guest_snapshot(guest: GuestServer) -> dict[str, int]:
    d = guest.run(GUEST_COUNTERS, 60)
    return parse_guest_counters(d.stdout) if d.returncode == 0 else {}


def _el2_snapshot(server: Any) -> dict[str, int]:
    """`MailboxServer.el2_counters()`, or nothing when the run had no mailbox (plain)."""
    return {} if server is None else dict(server.el2_counters())


def accounting(bench: str, p: Params, secs: float, before: dict[str, int], after: dict[str, int],
               el2: tuple[dict[str, int], dict[str, int]] = ({}, {}),
               guest: tuple[dict[str, int], dict[str, int]] = ({}, {})) -> dict[str, Any]:
    """Item 4: a bench's traps by class, per second and per operation, and what they cost.

    Python-handled traps are the hypervisor's classes; `el2` adds the trampoline's counters
    (traps answered at EL2 without Python, and the guest time stalled in Python round trips,
    `python_s`: with one vCPU the guest runs nothing meanwhile, so python_s / seconds is the share of
    the bench's time those traps cost). `guest` divides by the kernel's own counts of context
    switches, forks, page faults and packets."""
    delta = {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}
    # A policy's stats mix trap classes ("trap.X") with finer, overlapping counters: count classes.
    classes = {k: v for k, v in delta.items() if k.startswith("trap.")} or delta
    total = sum(classes.values())
    out: dict[str, Any] = {"bench": bench, "seconds": secs, "traps": delta, "trap_total": total,
                           "traps_per_s": total / secs if secs > 0 else 0.0}
    e0, e1 = el2
    if e0 and e1:
        d = {k: e1[k] - e0.get(k, 0) for k in ("ntr", "fast", "fast_roots", "ticks")}
        python_s = d["ticks"] / e1["cntfrq"] if e1.get("cntfrq") else 0.0
        out["el2"] = {"traps": d["ntr"], "fast_msr": d["fast"] - d["fast_roots"],
                      "fast_root": d["fast_roots"], "python": d["ntr"] - d["fast"],
                      "python_s": python_s, "python_share": python_s / secs if secs > 0 else 0.0,
                      "us_per_python_trap": python_s * 1e6 / (d["ntr"] - d["fast"])
                      if d["ntr"] > d["fast"] else 0.0,
                      "traps_per_s": d["ntr"] / secs if secs > 0 else 0.0}
        total = max(total, d["ntr"])
    ops = operations(bench, p)
    if ops is not None and ops[0] > 0:
        out["per_op"] = {"op": ops[1], "ops": ops[0], "traps_per_op": total / ops[0]}
    g0, g1 = guest
    if g0 and g1:
        counts = {k: g1[k] - g0.get(k, 0) for k in GUEST_EVENTS if k in g1}
        out["guest"] = counts
        out["traps_per_event"] = {k: total / n for k, n in counts.items() if n > 0}
    return out


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def hypervisor_for(config: str, initramfs: Path | None = None) -> Hypervisor | None:
    """The EL2 side of a configuration (None for `plain`). Raises BenchUnavailable.

    A protected configuration authenticates the modules the guest loads after the policy arms:
    the boot modules packed in `initramfs` (virtio, ext4 and their dependencies) are handed to
    kpcore as candidates besides the fixture's own (`linux.trust`)."""
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
        from secvma.linux.trust import TrustError, module_authority

        image = fs.kernel_image.read_bytes()  # its patch sites
        try:
            boot_mods = {} if initramfs is None else {
                f"initramfs:{name}": data
                for name, data in rootfs_mod.initramfs_modules(initramfs).items()}
            authority = module_authority(image, fx=fs, module_bytes=boot_mods)
        except (TrustError, rootfs_mod.RootfsError) as exc:
            raise BenchUnavailable(f"module authentication for {config}: {exc}") from exc
        return TransparentKPCore(s2="4k" if config == "transparent-4k" else "huge",
                                 image=image, modules=authority)
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
    hv = make_hv() if make_hv is not None else hypervisor_for(config, rfs.initramfs)
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

    def on_started(mb: Any) -> None:
        run.mailbox = mb
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
        try:
            modules_failed = INITRD_MODULE_FAILED in log.read_text(errors="replace")
        except OSError:
            modules_failed = False
        kept = _keep_console(log, config) if run.error or modules_failed else None
        shutil.rmtree(work, ignore_errors=True)
    if hasattr(hv, "events"):
        run.traps = {**run.traps, **{f"events.{k}": v for k, v in hv.events.items()}}  # type: ignore[union-attr]
    run.protection = protection_of(hv)
    if run.protection and not run.error:
        run.error = protection_error(config, run.protection)
    elif run.protection and modules_failed:
        rules = ", ".join(str(r) for r in run.protection.get("refusal_rules", []) or []) or "none"
        run.error = (f"{config}: the guest's boot modules did not load under the armed policy "
                     f"(refusal rules: {rules}): {run.error}")
    if run.error and kept is not None:
        run.error += f"\n(the guest's console log is kept in {kept})"
    return run


def _keep_console(log: Path, config: str) -> Path | None:
    """A failed run's console log, copied where the user can read it after the run."""
    dest = fx.cache_root().parent / "logs" / f"apps-{config}-{time.strftime('%Y%m%d-%H%M%S')}.log"
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(log, dest)
    except OSError:
        return None
    return dest


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
            g0 = _guest_snapshot(guest)
            e0, before, tb = _el2_snapshot(run.mailbox), _trap_snapshot(hv), time.perf_counter()
            got = h.run([b])
            secs = time.perf_counter() - tb
            after, e1 = _trap_snapshot(hv), _el2_snapshot(run.mailbox)
            run.measured.extend(got)
            run.per_bench[b] = accounting(b, p, secs, before, after, (e0, e1),
                                          (g0, _guest_snapshot(guest)))
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


INITRD_MODULE_FAILED = "SECVMA-INITRD: insmod"  # the initramfs's line for a module that failed


def protection_of(hv: Hypervisor | None) -> dict[str, Any]:
    """A transparent policy's state after the run: armed, what it protects, the root fast path,
    refusals and internal errors ({} for plain and null)."""
    from secvma.kpcore.transparent import TransparentKPCore

    if not isinstance(hv, TransparentKPCore):
        return {}
    prot = hv.protection_summary()
    fast = sorted(r.name for c in hv.cpus.values() for r in c.fast)
    return {"armed": hv.armed, "arm_seconds": round(hv.arm_seconds, 3),
            "protect_tables": hv.protect_tables, "root_fast_path": fast, **prot,
            "refusals": len(hv.refusals), "refusal_rules": sorted({r.rule for r in hv.refusals}),
            "internal_errors": [f"{e.event}: {e.error}" for e in hv.internal_errors]}


def protection_error(config: str, prot: dict[str, Any]) -> str:
    """Why a protected run's figures do not stand for the protected configuration ("" if they do)."""
    bad = []
    if prot.get("protect_tables", True):  # registers-only variants never arm, by design
        if not prot.get("armed"):
            bad.append("the policy never armed (tables unprotected)")
        if "TTBR0_EL1" not in prot.get("root_fast_path", ()):
            bad.append("the TTBR0 root fast path was never enabled")
    if prot.get("refusals"):  # a benign workload refused is a false positive: a bug
        bad.append(f"{prot['refusals']} refusals ({', '.join(prot.get('refusal_rules', ()))})")
    if prot.get("internal_errors"):
        bad.append(f"internal errors: {'; '.join(prot['internal_errors'])[:300]}")
    return f"{config}: " + ", ".join(bad) if bad else ""


def check_benches(benches: list[str]) -> list[str]:
    bad = [b for b in benches if b not in BENCHES]
    if bad:
        raise BenchUnavailable(f"unknown bench {', '.join(bad)}: one of {', '.join(BENCHES)}")
    return [b for b in BENCHES if b in benches]  # run-all.sh's order


def protection_line(prot: dict[str, Any]) -> str:
    """One line: is this run protected, and how."""
    tables = sum(prot.get("table_pages", {}).values())
    return (f"{'armed' if prot.get('armed') else 'NOT ARMED'} in {prot.get('arm_seconds', 0)} s, "
            f"{tables} table pages and {prot.get('kernel_code_pages', 0)} text pages write-protected, "
            f"root fast path {'+'.join(prot.get('root_fast_path', ())) or 'off'}, "
            f"{prot.get('user_roots_live', 0)} user roots live / "
            f"{prot.get('user_roots_released', 0)} released, "
            f"{prot.get('refusals', 0)} refusals, {len(prot.get('internal_errors', ()))} internal errors")


def accounting_line(acc: dict[str, Any]) -> str:
    """Item 4 in one line: traps/s, traps per operation, EL2 time share, traps by class."""
    el2 = acc.get("el2")
    if not acc.get("traps") and not (el2 and el2["traps"]):
        return ""
    parts = [f"{el2['traps_per_s'] if el2 else acc['traps_per_s']:.0f} traps/s"]
    op = acc.get("per_op")
    if op:
        parts.append(f"{op['traps_per_op']:.3g} per {op['op']}")
    per_event = acc.get("traps_per_event", {})
    parts += [f"{per_event[k]:.3g} per {k}" for k in BENCH_EVENTS.get(acc.get("bench", ""), GUEST_EVENTS)
              if k in per_event]
    if el2:
        parts.append(f"EL2: {el2['fast_root']} root fast path + {el2['fast_msr']} MSR fast path "
                     f"+ {el2['python']} to Python ({el2['us_per_python_trap']:.0f} µs each, "
                     f"{el2['python_s']:.2f} s = {100 * el2['python_share']:.0f}% of the bench)")
    classes = sorted(acc["traps"].items())
    if classes:
        parts.append("Python: " + ", ".join(f"{k}={v}" for k, v in classes))
    return "; ".join(parts)


# The demo's application step: the protected configuration normalized to our EL2 without a
# policy (the paper's question: what does the protection cost), with its traps explained.
DEMO_CONFIGS = ("null", "transparent")
DEMO_TARGETS = {"null": "", "transparent": " (target ≤ 1.3)"}


def demo_summary(runs: dict[str, ConfigRun], norm: dict[str, dict[str, dict[str, float | None]]],
                 bench: str = "hackbench", note: str = "") -> dict[str, Any]:
    """The demo's application step: ok only if every configuration measured `bench` without an
    error (a protected one armed, no refusal), with the last configuration's cost normalized
    to the first and what its traps explain."""
    errors = {c: r.error or "; ".join(f for m in r.measured for f in m.failures)
              for c, r in runs.items()}
    errors = {c: e for c, e in errors.items() if e}
    cfgs = list(runs)
    base, top = cfgs[0], cfgs[-1]
    cost = norm.get(top, {}).get(bench, {}).get(base) if base in ("plain", "null") else None
    means = {c: next((sum(map(float, m.values)) / len(m.values) for m in r.measured
                      if m.kind.key == bench and m.values), None) for c, r in runs.items()}
    ok = not errors and cost is not None and all(v is not None and v > 0 for v in means.values())
    prot = runs[top].protection
    acc = runs[top].per_bench.get(bench, {})
    parts = [f"{c} {v:.3f} s" if v is not None else f"{c}: no figure" for c, v in means.items()]
    summary = f"{bench} --quick ({', '.join(parts)})"
    if cost is not None:
        summary += f": {top}/{base} = {cost:.2f}{DEMO_TARGETS.get(top, '')}"
    if prot:
        summary += f"; {protection_line(prot)}"
    if acc and (acc.get("traps") or acc.get("el2", {}).get("traps")):
        summary += f"; {accounting_line(acc)}"
    if note:
        summary += f"; {note}"
    if errors:
        summary += "; FAILED: " + "; ".join(f"{c}: {e}" for c, e in errors.items())
    return {"ok": ok, "summary": summary, "normalized": {c: norm.get(c, {}).get(bench) for c in runs},
            "mean_s": means, "protection": prot, "accounting": {c: r.per_bench.get(bench)
                                                                for c, r in runs.items()},
            "errors": errors, "params": {c: next((m.params for m in r.measured), {})
                                         for c, r in runs.items()}, "note": note}
