"""The module evaluation (artifact `run-mod.sh`, docs/eval-spec.md §2), on the testbed kernel.

What is measured: insmod and rmmod of `xfs` (after `libcrc32c`) and `virtio_crypto` (after
`crypto_engine`), Debian's 6.1 arm64 modules, each up to but not including their init (the
testbed cannot run Linux's init code; its imports are stubs named after Module.symvers). As in
run-mod.sh the dependency's load and unload are not timed. Two configurations, each booted
once and run for `reps` repetitions:

* **protected**: policy `hardened` with a signature table made for this run (a fresh Ed25519
  key signs all four modules as `secvma_sig` does): the kernel hands the module to HVC 30,
  which authenticates, installs, links and relocates it; rmmod is HVC 32 + HVC 31.
* **unprotected**: policy `none` (HVC 30 answers HVC_ENOSYS): the kernel's own loader links
  and relocates the same modules at the same kind of addresses.

Timing: `load_ms` / `unload_ms` are guest-side, CNTVCT around the kernel's command handler
(copy of the .ko into the temporary image, layout, HVC 30 or the kernel-side link, page-table
updates, unmapping); CNTVCT keeps running while EL2 (Python) works, so the hypervisor's time
is included. The host-side round trip of the same command (post to done, through guest RAM;
its resolution is the mailbox poll period, ~0.2 ms) is reported as `*_host_ms`. The .ko files
are put into the kernel's upload buffer once per boot, so neither figure includes a copy from
the host. run-mod.sh takes one sample per operation; here it is the mean and sample standard
deviation over `reps`.

Less noisy than wall time on a shared host, per protected load: `load_traps` (round trips to
Python during the load command), `load_python_ms` (Python's time in the hypervisor's `handle`
for them, wall), `load_python_cpu_ms` (the serving thread's CPU time of the same) and
`load_fast_ptes` (kernel PTE stores the trampoline's PTE fast path carried out without a
round trip, kpcore/ptefast.py), each a mean over `reps`.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from secvma.hvabi import HVC_INVALID
from secvma.kpcore import make_policy
from secvma.kpcore.modkeys import ModuleKeys, keys_for
from secvma.machine.errors import MachineError
from secvma.platform import Event, Hypervisor, Platform, Vcpu
from secvma.testbed.build import TestbedImage, build_testbed
from secvma.testbed.commands import CommandResult, TestbedSession
from secvma.testbed.modules import REAL_PAIRS
from secvma.testbed.nullabi import TestbedNullHypervisor

MEASURED = tuple(m for _d, m in REAL_PAIRS)
TIMING_NOTE = ("load_ms/unload_ms: guest CNTVCT around the kernel's MODLOAD/MODUNLOAD handler "
               "(includes EL2 time); *_host_ms: host round trip of the same command")


class BenchUnavailable(RuntimeError):
    """What the measurement needs is missing (the Debian modules are not fetched)."""


class BenchFailed(RuntimeError):
    """A configuration was measured and failed (a load refused, the machine stopped)."""


@dataclass
class Samples:
    """Per-operation samples of one configuration, in seconds."""

    load: list[float] = field(default_factory=list)
    unload: list[float] = field(default_factory=list)
    load_host: list[float] = field(default_factory=list)
    unload_host: list[float] = field(default_factory=list)
    load_traps: list[int] = field(default_factory=list)
    load_python: list[float] = field(default_factory=list)
    load_python_cpu: list[float] = field(default_factory=list)
    load_fast_ptes: list[int] = field(default_factory=list)


class _Counting:
    """The hypervisor, with the round trips it served and the time it took counted."""

    def __init__(self, hyp: Hypervisor) -> None:
        self.hyp = hyp
        self.traps = 0
        self.python_s = 0.0
        self.python_cpu_s = 0.0  # CPU time of the serving thread: hardly moved by host load
        self.poll = getattr(hyp, "poll", None)  # the mailbox loop looks this up once

    def handle(self, platform: Platform, cpu: Vcpu, event: Event) -> None:
        t, c = time.perf_counter(), time.thread_time()
        try:
            self.hyp.handle(platform, cpu, event)
        finally:
            self.python_s += time.perf_counter() - t
            self.python_cpu_s += time.thread_time() - c
            self.traps += 1


def _fast_ptes(platform: Platform) -> int:
    """PTE stores the machine carried out itself so far (0 without the capability)."""
    path = getattr(platform, "pte_fast_path", None)
    return int(getattr(path, "carried_out", lambda: 0)())


def _ms(xs: list[float]) -> tuple[float, float]:
    if not xs:
        return float("nan"), float("nan")
    mean = statistics.fmean(xs) * 1e3
    std = statistics.stdev(xs) * 1e3 if len(xs) > 1 else 0.0
    return round(mean, 4), round(std, 4)


def signed_keys(modules: Mapping[str, Path]) -> ModuleKeys:
    """`ModuleKeys` for the four modules, signed with a key generated for this run."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return keys_for(Ed25519PrivateKey.generate(), [p.read_bytes() for p in modules.values()])


def hardened_hypervisor(modules: Mapping[str, Path]) -> Hypervisor:
    """`make_policy("hardened", module_keys=...)` with this run's signature table."""
    return make_policy("hardened", module_keys=signed_keys(modules))


def _check(r: CommandResult, what: str) -> CommandResult:
    if not r.ok:
        raise BenchFailed(f"{what}: {r.status.name.lower()}: {r.msg}")
    return r


def measure(hypervisor: Hypervisor, modules: Mapping[str, Path], reps: int, *,
            protected: bool, image: TestbedImage | None = None,
            progress: Callable[[str], None] | None = None) -> dict[str, Samples]:
    """Boot once under `hypervisor`; `reps` × (dep, module) load/unload; samples per module."""
    out = {m: Samples() for m in MEASURED}
    counting = _Counting(hypervisor)
    with TestbedSession(counting, image=image, command_timeout_s=600) as s:
        offsets: dict[str, tuple[int, int]] = {}
        at = 0
        for name in (n for pair in REAL_PAIRS for n in pair):
            data = modules[name].read_bytes()
            _check(s.upload(data, at), f"upload {name}")
            offsets[name] = (at, len(data))
            at += (len(data) + 4095) & ~4095
        for dep, mod in REAL_PAIRS:
            for k in range(reps):
                if progress:
                    progress(f"{'protected' if protected else 'unprotected'} {mod} {k + 1}/{reps}")
                d = _check(s.load_uploaded(offsets[dep][1], offsets[dep][0], no_init=True),
                           f"insmod {dep}")
                traps, py, cpu_s = counting.traps, counting.python_s, counting.python_cpu_s
                fast = _fast_ptes(s.platform)
                r = _check(s.load_uploaded(offsets[mod][1], offsets[mod][0], no_init=True),
                           f"insmod {mod}")
                traps, py = counting.traps - traps, counting.python_s - py
                cpu_s = counting.python_cpu_s - cpu_s
                fast = _fast_ptes(s.platform) - fast
                if protected and (r.ret[1] == HVC_INVALID or d.ret[1] == HVC_INVALID):
                    s.unload_module(r.value)
                    s.unload_module(d.value)
                    raise BenchFailed("HVC 30 answered HVC_ENOSYS: the kernel loaded the "
                                      "module itself, so the hypervisor loader was not measured")
                u = _check(s.unload_module(r.value), f"rmmod {mod}")
                _check(s.unload_module(d.value), f"rmmod {dep}")
                smp = out[mod]
                smp.load.append(r.guest_s)
                smp.unload.append(u.guest_s)
                smp.load_host.append(r.wall_s)
                smp.unload_host.append(u.wall_s)
                smp.load_traps.append(traps)
                smp.load_python.append(py)
                smp.load_python_cpu.append(cpu_s)
                smp.load_fast_ptes.append(fast)
    return out


def run_modules(reps: int = 5, *, image: TestbedImage | None = None,
                modules: Mapping[str, Path] | None = None,
                progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Both configurations; JSON-ready result (keys per module: load_ms, unload_ms,
    load_ms_unprotected, ratio, plus *_std, *_host_ms, unload_ms_unprotected, reps).

    A failed unprotected run raises BenchFailed; a failed protected run is reported under
    `errors` with the unprotected figures (the command then exits 1)."""
    if modules is None:
        from secvma import fixtures

        fx = fixtures.available()
        if fx is None:
            raise BenchUnavailable("the Debian modules are not fetched (secvma fixtures fetch)")
        modules = fx.modules
    image = image or build_testbed()
    if not image.linux_symbols:
        raise BenchUnavailable("the testbed was built without the Linux 6.1 export table")
    errors: dict[str, str] = {}
    unprot = measure(TestbedNullHypervisor(), modules, reps, protected=False, image=image,
                     progress=progress)
    prot: dict[str, Samples] | None = None
    try:
        prot = measure(hardened_hypervisor(modules), modules, reps, protected=True,
                       image=image, progress=progress)
    except (BenchFailed, MachineError) as exc:
        errors["protected"] = str(exc)
    res: dict[str, Any] = {}
    for mod in MEASURED:
        u = unprot[mod]
        lu, lu_sd = _ms(u.load)
        uu, uu_sd = _ms(u.unload)
        row: dict[str, Any] = {
            "load_ms": None, "load_ms_std": None, "unload_ms": None, "unload_ms_std": None,
            "load_ms_unprotected": lu, "load_ms_unprotected_std": lu_sd,
            "unload_ms_unprotected": uu, "unload_ms_unprotected_std": uu_sd,
            "ratio": None, "unload_ratio": None,
            "load_host_ms_unprotected": _ms(u.load_host)[0],
            "unload_host_ms_unprotected": _ms(u.unload_host)[0],
            "reps": reps,
        }
        if prot is not None:
            p = prot[mod]
            lp, lp_sd = _ms(p.load)
            up, up_sd = _ms(p.unload)
            row.update(load_ms=lp, load_ms_std=lp_sd, unload_ms=up, unload_ms_std=up_sd,
                       ratio=round(lp / lu, 3) if lu else None,
                       unload_ratio=round(up / uu, 3) if uu else None,
                       load_host_ms=_ms(p.load_host)[0], unload_host_ms=_ms(p.unload_host)[0],
                       load_traps=round(statistics.fmean(p.load_traps), 1),
                       load_python_ms=_ms(p.load_python)[0],
                       load_python_cpu_ms=_ms(p.load_python_cpu)[0],
                       load_fast_ptes=round(statistics.fmean(p.load_fast_ptes), 1))
        else:
            row["error"] = errors["protected"]
        res[mod] = row
    return {"modules": res, "reps": reps, "timing": TIMING_NOTE,
            "protected_policy": "hardened", "errors": errors}
