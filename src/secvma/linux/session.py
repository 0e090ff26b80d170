"""Boot the unmodified Debian kernel with secvma's helper as /init and read its report.

One boot per request: the kernel command line names the workloads (`SECVMA_WL=a,b`) or the
attack (`SECVMA_ATTACK=NAME`), the helper runs them and prints one line each, the machine
powers off. The host reads the lines from the console; a workload without its line failed
(the machine stopped or the helper died), never passed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from secvma import fixtures
from secvma.kpcore.policy import S2_MODES
from secvma.kpcore.transparent import TransparentKPCore
from secvma.linux.guestbuild import LinuxGuest, build_linux_guest
from secvma.linux.trust import module_authority
from secvma.machine.errors import GuestTimeout
from secvma.machine.initramfs import INIT_BANNER
from secvma.machine.mailbox import MailboxServer, RunResult
from secvma.machine.null import NullHypervisor
from secvma.machine.qemu import DEFAULT_CPU, MachineConfig
from secvma.machine.runner import boot
from secvma.platform import Hypervisor

POLICIES = ("none", "transparent")
WORKLOADS = ("forkexec", "mmap", "pipe", "threads", "fileio", "modules")
PROTECTION_KEYS = ("table_pages", "kernel_code_pages", "text_patches_accepted",
                   "text_patches_refused", "text_patches_boot", "text_patches_runtime",
                   "user_roots_live", "user_roots_released",
                   "modules_authenticated", "modules_refused")
_DICT_KEYS = ("table_pages", "text_patches_boot", "text_patches_runtime")
BASE_APPEND = "console=ttyAMA0 panic=-1"
DONE = b"SECVMA-DONE"

# not anchored at the line's start: with -smp 2 a kernel message may get there first
_WL_RE = re.compile(r"SECVMA-WL (\S+) ([01]) (\d+)[ \t]?([^\n]*)")


def make_linux_hypervisor(policy: str, s2: str = "huge", *,
                          check_invariants: bool = False, root_fast_path: bool = True,
                          guest: LinuxGuest | None = None,
                          trust_certs: Sequence[Path] = ()) -> Hypervisor:
    """`none` -> NullHypervisor; `transparent` -> TransparentKPCore in stage-2 mode `s2`.

    Modules: Debian's certificate and modules from the fixtures, `guest`'s own modules and
    build-local certificate, and `trust_certs` are handed to kpcore (`linux.trust`)."""
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r} for the Debian kernel; one of {POLICIES}")
    if s2 not in S2_MODES:
        raise ValueError(f"unknown stage-2 mode {s2!r}; one of {S2_MODES}")
    if policy == "none":
        if check_invariants:
            raise ValueError("--check-invariants needs a KPCore policy (transparent)")
        return NullHypervisor()
    fx = fixtures.fetch()
    image = fx.kernel_image.read_bytes()  # its patch sites, read before it runs
    mods = [] if guest is None else [guest.modules.lkdtm, guest.modules.unsigned]
    certs = [*([] if guest is None else [guest.modules.cert]), *trust_certs]
    authority = module_authority(image, trust_certs=certs, modules=mods, fx=fx)
    return TransparentKPCore(s2=s2, image=image, check_invariants=check_invariants,
                             root_fast_path=root_fast_path, modules=authority)


def transparent_of(hv: Hypervisor) -> TransparentKPCore | None:
    return hv if isinstance(hv, TransparentKPCore) else None


def protection_of(hv: Hypervisor) -> dict[str, object]:
    """The policy's protection summary; all zero for `none` (nothing is protected)."""
    t = transparent_of(hv)
    if t is None:
        return {k: ({} if k in _DICT_KEYS else 0) for k in PROTECTION_KEYS}
    return t.protection_summary()


def refusals_of(hv: Hypervisor) -> list[dict[str, object]]:
    t = transparent_of(hv)
    return [] if t is None else [r.as_dict() for r in t.refusals]


def invariant_violations_of(hv: Hypervisor) -> list[str]:
    t = transparent_of(hv)
    return [] if t is None else list(t.invariant_violations)


def internal_errors_of(hv: Hypervisor) -> list[str]:
    t = transparent_of(hv)
    return [] if t is None else [f"{e.event}: {e.error}" for e in t.internal_errors]


def boot_linux(hv: Hypervisor, cmdline: str, *, smp: int = 1, timeout_s: float = 300.0,
               echo: bool = False, guest: LinuxGuest | None = None,
               until: Callable[[Any], bool] | None = None, smmu: bool = False,
               disk_mb: int = 0,
               poll_hook: Callable[[MailboxServer], None] | None = None,
               cpu: str = DEFAULT_CPU) -> RunResult:
    """Boot the fixture kernel with the helper initramfs; returns how the run ended.

    `smmu`: the board's SMMUv3 (the hypervisor's; under `none` it stays off: devices bypass
    it); `disk_mb`: a virtio-blk-pci disk (iommu_platform=on) of that size.
    A hang becomes a RunResult with exit "timeout" (its console kept), so the caller can
    report what did finish.
    """
    fx = fixtures.fetch()
    guest = guest or build_linux_guest(fx)
    cfg = MachineConfig(kernel=fx.kernel_image, initrd=guest.initramfs, ncpus=smp,
                        append=f"{BASE_APPEND} {cmdline}", timeout_s=timeout_s,
                        echo_console=echo, smmu=smmu, dma_disk_mb=disk_mb, cpu=cpu)
    try:
        return boot(cfg, hv, watch=(INIT_BANNER, DONE), until=until, poll_hook=poll_hook)
    except GuestTimeout as e:
        return RunResult("timeout", str(e).splitlines()[0], timeout_s, str(e), None)


@dataclass
class WorkloadResult:
    name: str
    ok: bool
    seconds: float | None
    detail: str

    def to_json(self) -> dict[str, object]:
        return {"ok": self.ok, "seconds": None if self.seconds is None else round(self.seconds, 4),
                "detail": self.detail}


@dataclass
class LinuxRunReport:
    policy: str
    s2: str
    smp: int
    exit: str
    reason: str
    wall_s: float
    boot_s: float | None
    workloads: dict[str, WorkloadResult]
    refusals: list[dict[str, object]]
    invariant_violations: list[str]
    protection: dict[str, object]
    internal_errors: list[str] = field(default_factory=list)
    traps: dict[str, int] = field(default_factory=dict)
    console: str = ""
    fast_traps: dict[str, int] = field(default_factory=dict)  # answered at EL2: total, roots
    sysreg_traps: dict[str, int] = field(default_factory=dict)  # trapped MSRs by register
    kpcore_stats: dict[str, int] = field(default_factory=dict)  # the policy's own counters
    cpu: str = DEFAULT_CPU
    feat_xnx: bool = False  # the CPU has FEAT_XNX and transparent's stage 2 relied on it

    @property
    def ok(self) -> bool:
        """Every workload ok, the machine powered off, nothing refused, violated or broken."""
        return (bool(self.workloads) and all(w.ok for w in self.workloads.values())
                and self.exit == "poweroff" and not self.refusals
                and not self.invariant_violations and not self.internal_errors)

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "guest": "linux", "policy": self.policy, "s2": self.s2,
                "smp": self.smp, "exit": self.exit, "reason": self.reason,
                "wall_s": round(self.wall_s, 3),
                "boot_s": None if self.boot_s is None else round(self.boot_s, 3),
                "workloads": {n: w.to_json() for n, w in self.workloads.items()},
                "refusals": self.refusals, "invariant_violations": self.invariant_violations,
                "protection": self.protection, "internal_errors": self.internal_errors,
                "traps": self.traps, "fast_traps": self.fast_traps,
                "sysreg_traps": self.sysreg_traps, "cpu": self.cpu, "feat_xnx": self.feat_xnx}


def parse_workloads(console: str, wanted: tuple[str, ...], why_missing: str) -> dict[str, WorkloadResult]:
    """The helper's SECVMA-WL lines; a workload without one failed with `why_missing`."""
    out: dict[str, WorkloadResult] = {}
    for m in _WL_RE.finditer(console):
        name = m.group(1)
        if name in wanted and name not in out:
            out[name] = WorkloadResult(name, m.group(2) == "1", int(m.group(3)) / 1e9,
                                       m.group(4).strip())
    for name in wanted:
        if name not in out:
            seen = [ln for ln in console.splitlines() if f"SECVMA-WL {name}" in ln]
            why = f"report unreadable on the console: {seen[0]!r}" if seen else \
                f"no report: {why_missing}"
            out[name] = WorkloadResult(name, False, None, why)
    return {n: out[n] for n in wanted}


def run_linux_workloads(policy: str, s2: str = "huge", smp: int = 1,
                        workloads: tuple[str, ...] = ("all",), *, check_invariants: bool = False,
                        timeout_s: float = 900.0, echo: bool = False,
                        root_fast_path: bool = True,
                        trust_certs: Sequence[Path] = (), cpu: str = DEFAULT_CPU) -> LinuxRunReport:
    """Boot Debian under `policy`, run the named workloads (or all), report each one's result."""
    names = WORKLOADS if "all" in workloads else tuple(dict.fromkeys(workloads))
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        raise ValueError(f"unknown workload(s) {unknown}; one of {WORKLOADS}")
    guest = build_linux_guest()
    hv = make_linux_hypervisor(policy, s2, check_invariants=check_invariants,
                               root_fast_path=root_fast_path, guest=guest, trust_certs=trust_certs)
    res = boot_linux(hv, f"SECVMA_WL={','.join(names)}", smp=smp, timeout_s=timeout_s, echo=echo,
                     guest=guest, cpu=cpu)
    why = f"the run ended ({res.exit}{': ' + res.reason if res.reason else ''}) first"
    return LinuxRunReport(
        policy=policy, s2=s2, smp=smp, exit=res.exit, reason=res.reason, wall_s=res.wall_s,
        boot_s=res.first_seen.get(INIT_BANNER.decode()),
        workloads=parse_workloads(res.console, names, why),
        refusals=refusals_of(hv),
        invariant_violations=invariant_violations_of(hv),
        protection=protection_of(hv), internal_errors=internal_errors_of(hv),
        traps=dict(res.traps), console=res.console,
        fast_traps={"total": res.fast_traps, "roots": res.fast_root_traps},
        sysreg_traps=sysreg_traps_of(hv), cpu=cpu, feat_xnx=feat_xnx_of(hv),
        kpcore_stats={k: int(v) for k, v in getattr(hv, "stats", {}).items() if isinstance(k, str)})


def feat_xnx_of(hv: Hypervisor) -> bool:
    """Whether transparent's stage 2 ran on a CPU with FEAT_XNX (never for `none`)."""
    t = transparent_of(hv)
    return t is not None and t.st is not None and t.st.feat_xnx


def sysreg_traps_of(hv: object) -> dict[str, int]:
    """Trapped MSRs by register, as the hypervisor counted them (empty if it does not)."""
    stats = getattr(hv, "stats", None)
    if not isinstance(stats, dict):
        return {}
    return {k[4:]: int(v) for k, v in sorted(stats.items()) if isinstance(k, str) and k.startswith("msr.")}
