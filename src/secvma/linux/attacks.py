"""Attacks on the unmodified Debian kernel from a real kernel module (`secvma_lkdtm`).

Each scenario is one fresh boot: the helper loads the signed `secvma_lkdtm.ko`, a child
process triggers the attack through debugfs, and the helper then reads the effect the module
measured *after* the attempt (bytes read back through the original mapping, the value the
injected code returned, the register read back) and checks that the machine still works. So
the verdict comes from the effect, never from the absence of an error:

    effect seen                                  -> succeeded
    no effect, machine still runs (task oopsed)  -> blocked
    no effect, machine stopped                   -> blocked (machine halted)
    hypervisor internal error, setup failed,
    no report at all                             -> error (never counted as blocked)

Under `none` every attack must succeed (each defeats the kernel's own stage-1 protections
first, as a compromised kernel can). The `DMA_*` attacks boot a board with the SMMUv3 and a
virtio-blk-pci disk (under `none` the SMMU stays off and devices bypass it) and have the
*device* write the target: the kernel's own virtio-blk driver reads a marker sector into the
target's physical address. Their block under `transparent` must show as a `dma-fault`
refusal (drained from the SMMU's event queue), and DMA_HYP's effect is read by the host.
Under `transparent` each is expected blocked; `rule` names the protection that must stop it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from secvma.attacks.scenarios import Verdict
from secvma.attacks.suite import Outcome, summarize
from secvma.linux.guestbuild import LinuxGuest, build_linux_guest
from secvma.linux.session import (
    POLICIES,
    boot_linux,
    feat_xnx_of,
    internal_errors_of,
    invariant_violations_of,
    make_linux_hypervisor,
    refusals_of,
)
from secvma.machine.layout import HYP_BASE, HYP_SIZE
from secvma.machine.mailbox import MailboxServer
from secvma.machine.qemu import DEFAULT_CPU
from secvma.platform import PhysAddr

BLOCKED = frozenset({Verdict.BLOCKED})
SUCCEEDS = frozenset({Verdict.SUCCEEDED})


DMA_HOW = ("virtio-blk READ (the kernel's block layer and driver) of a marker sector into the "
           "target's physical address, read back")
DMA_RULE = "SMMU identity map of ordinary pages only; the fault drained from the event queue"
DMA_MARKER = b"\0secvma\0dma!atk\0"  # secvma_lkdtm's dma_marker (16 bytes)
DMA_HYP_PA = HYP_BASE + HYP_SIZE - 0x1000
"""DMA_HYP's target: the last page of the hypervisor region (the top of the SMMU pool, used by
neither the NullHypervisor nor, on a 1 GiB guest, the identity map)."""
DMA_DISK_MB = 4


@dataclass(frozen=True)
class LinuxAttack:
    name: str
    goal: str
    how: str
    rule: str  # what must stop it under `transparent`
    gap: str = ""
    """Why `transparent` does not stop it yet (an open item of issue 10): then the attack is
    expected to *succeed* under transparent and is reported as a known gap, like secvma2024's
    §11 gaps on the testbed. Empty: it must be blocked."""
    evidence: str = ""
    """The refusal rule a block must leave under a policy (the guard's restores): without it,
    "no effect" is not credited to the hypervisor (the attack may simply have misfired)."""

    @property
    def dma(self) -> bool:
        """A device does the write (a virtio-blk request): the board needs the SMMU and a
        disk, and under `transparent` a block must show as a DMA fault in `refusals`."""
        return self.name.startswith("DMA_")

    def expected(self, policy: str) -> frozenset[Verdict]:
        if policy == "transparent" and not self.gap:
            return BLOCKED
        return SUCCEEDS


ATTACKS: tuple[LinuxAttack, ...] = (
    LinuxAttack("WRITE_RO", "overwrite kernel rodata (hex_asc_upper)",
                "clear AP[2] in the live leaf mapping it, store, read back",
                "table store validated: no writable mapping of rodata"),
    LinuxAttack("WRITE_KERN", "overwrite kernel text (mac_pton)",
                "clear AP[2] in the live leaf of the text mapping, store, read back",
                "table store validated: no writable mapping of text; text RO at stage 2"),
    LinuxAttack("EXEC_DATA", "run injected code from module .data",
                "clear PXN (and PXNTable) on its leaf, call it",
                "PXN forced on everything but kernel/authenticated module text"),
    LinuxAttack("EXEC_STACK", "run injected code from the kernel stack",
                "clear PXN on the vmap'd stack page, call it", "PXN forced"),
    LinuxAttack("EXEC_KMALLOC", "run injected code from a kmalloc buffer",
                "clear PXN/PXNTable on its linear-map leaf, call it", "PXN forced"),
    LinuxAttack("EXEC_VMALLOC", "run injected code from a vmalloc buffer",
                "clear PXN on its leaf, call it", "PXN forced"),
    LinuxAttack("EXEC_RODATA", "run injected code from module .rodata",
                "clear PXN on its leaf, call it", "PXN forced"),
    LinuxAttack("EXEC_USERSPACE", "run user-page code at EL1",
                "clear PXN in the user PTE and PXNTable above it, call it",
                "user roots validated: PXNTable on every user table entry"),
    LinuxAttack("PXN_CLEAR", "clear PXN in a live kernel PTE (linear map)",
                "store the PTE without PXN, read it back", "PXN forced on non-text leaves"),
    LinuxAttack("TEXT_ALIAS", "write text through a new writable alias",
                "vmap(PAGE_KERNEL) of the text page, store, read back through the text VA",
                "no writable alias of text"),
    LinuxAttack("TTBR1_FORGE", "run on a forged kernel root",
                "MSR TTBR1_EL1 of a copied swapper_pg_dir, read back",
                "TTBR1 only to learned roots"),
    LinuxAttack("TTBR0_CRAFT", "load a crafted user root",
                "MSR TTBR0_EL1 of a root without PXNTable mapping RAM, read back",
                "TTBR0 only to validated, write-protected roots"),
    LinuxAttack("SCTLR_WRITE", "change SCTLR_EL1", "flip SCTLR_EL1.UMA, read back",
                "SCTLR/TCR/MAIR pinned"),
    LinuxAttack("VBAR_WRITE", "move the exception vectors",
                "write VBAR_EL1 + 0x800, wait five guard intervals (IRQs masked at EL1), read back",
                "VBAR_EL1 restored by the interrupt guard within one interval (no FEAT_FGT)",
                evidence="vbar"),
    LinuxAttack("MDSCR_KDE", "enable kernel debug exceptions (MDSCR_EL1.KDE)",
                "set KDE, wait five guard intervals (IRQs masked at EL1), read back",
                "MDSCR_EL1.KDE cleared by the interrupt guard within one interval",
                evidence="mdscr-kde"),
    LinuxAttack("TEXT_POKE", "patch text at no patch site through the text-poke alias",
                "aarch64_insn_patch_text_nosync(mac_pton+16, NOP)",
                "text patches only at sites the Image declares"),
    LinuxAttack("UNSIGNED_MODULE", "load and run an unsigned module",
                "finit_module(secvma_unsigned.ko), check it is Live",
                "module text executable only when its signature verifies"),
    LinuxAttack("DMA_TEXT", "a device writes kernel text (mac_pton)", DMA_HOW, DMA_RULE),
    LinuxAttack("DMA_RODATA", "a device writes kernel rodata (hex_asc_upper)", DMA_HOW, DMA_RULE),
    LinuxAttack("DMA_PGTABLE", "a device writes two free entries of the kernel root table",
                DMA_HOW, DMA_RULE),
    LinuxAttack("DMA_MODTEXT", "a device writes the text of a loaded module", DMA_HOW, DMA_RULE),
    LinuxAttack("DMA_HYP", "a device writes hypervisor memory (the SMMU pool's last page)",
                DMA_HOW + "; the host reads the page", DMA_RULE),
)
NAMES = tuple(a.name for a in ATTACKS)
SAMPLE = ("WRITE_KERN", "EXEC_VMALLOC", "TTBR0_CRAFT", "VBAR_WRITE", "UNSIGNED_MODULE", "DMA_TEXT")
"""One attack per protection class (tables, PXN, user roots, the interrupt guard, module
signatures, DMA): what the demo runs under transparent, a boot each."""

_ATK_RE = re.compile(r"^SECVMA-ATK (\S+) ([01]) (\S+) ?(.*)$", re.MULTILINE)
_ALIVE_RE = re.compile(r"^SECVMA-ALIVE ([01])", re.MULTILINE)


LinuxOutcome = Outcome  # one outcome record for the testbed and the Linux suites


def judge(console: str, name: str, exit_kind: str, internal: list[str], *,
          host_effect: bool | None = None, dma_faults: int | None = None,
          evidence: tuple[str, list[str]] | None = None) -> tuple[Verdict, str]:
    """The verdict of one attack run from the helper's lines and how the run ended.

    `host_effect`: the effect as the host saw it in memory (hypervisor memory, which the
    kernel cannot read back), overriding the module's. `dma_faults` (DMA attacks under a
    policy with the SMMU): faults drained from the SMMU's event queue; a DMA attack without
    its effect counts as blocked only with at least one. `evidence` (rule, refusal rules
    recorded): likewise, no effect counts as blocked only if that rule was recorded.
    """
    if internal:
        return Verdict.INTERNAL_ERROR, f"hypervisor internal error: {internal[0]}"
    m = next((m for m in _ATK_RE.finditer(console) if m.group(1) == name), None)
    alive = _ALIVE_RE.search(console)
    if m is None:
        if "secvma_lkdtm: " + name in console:  # started, then the machine stopped
            return Verdict.HALTED, f"the machine stopped during the attack ({exit_kind})"
        return Verdict.ERROR, f"no report from the helper (run ended: {exit_kind})"
    effect, status, detail = m.group(2) == "1", m.group(3), m.group(4).rstrip()
    if status.startswith("setup:") or detail.startswith("effect=0 setup:"):
        return Verdict.ERROR, f"setup failed: {detail}"
    text = f"{detail} [{status}]"
    if host_effect is not None:
        effect = host_effect
        text += f"; the host {'found' if effect else 'did not find'} the marker in memory"
    if effect:
        return Verdict.SUCCEEDED, text
    if dma_faults == 0:
        return Verdict.ERROR, f"no effect, but no DMA fault was recorded either: {text}"
    if evidence is not None and evidence[0] not in evidence[1]:
        return Verdict.ERROR, f"no effect, but no {evidence[0]!r} refusal was recorded: {text}"
    if alive is not None and alive.group(1) == "1" and exit_kind == "poweroff":
        how = "the attacking task was killed" if status.startswith("signal:") else \
            "the attempt failed"
        return Verdict.BLOCKED, f"{how}; machine went on: {text}"
    return Verdict.HALTED, f"no effect, and the machine did not go on ({exit_kind}): {text}"


def run_linux_attack(attack: LinuxAttack, policy: str, guest: LinuxGuest | None = None,
                     *, timeout_s: float = 300.0, echo: bool = False,
                     trust_certs: Sequence[Path] = (), cpu: str = DEFAULT_CPU) -> LinuxOutcome:
    """Boot a fresh Debian kernel under `policy`, run one attack, judge it by its effect."""
    guest = guest or build_linux_guest()
    # DMA attacks under a policy: INV-DMA (and transparent's other invariants) after every trap
    hv = make_linux_hypervisor(policy, guest=guest, trust_certs=trust_certs,
                               check_invariants=attack.dma and policy != "none")
    t0 = time.perf_counter()
    seen: list[bool] = []

    def watch_hyp(server: MailboxServer) -> None:
        if not seen and server.read(PhysAddr(DMA_HYP_PA), len(DMA_MARKER)) == DMA_MARKER:
            seen.append(True)

    cmdline = f"SECVMA_ATTACK={attack.name}"
    if attack.name == "DMA_HYP":
        cmdline += f" SECVMA_HYP_PA={DMA_HYP_PA:x}"
    res = boot_linux(hv, cmdline, timeout_s=timeout_s, echo=echo, guest=guest,
                     smmu=attack.dma, disk_mb=DMA_DISK_MB if attack.dma else 0,
                     poll_hook=watch_hyp if attack.name == "DMA_HYP" else None, cpu=cpu)
    raw_refusals = refusals_of(hv)
    faults = sum(r["rule"] == "dma-fault" for r in raw_refusals)
    broken = internal_errors_of(hv) + [f"invariant broken: {v}" for v in invariant_violations_of(hv)]
    verdict, detail = judge(res.console, attack.name, res.exit, broken,
                            host_effect=bool(seen) if attack.name == "DMA_HYP" else None,
                            dma_faults=faults if attack.dma and policy != "none" else None,
                            evidence=(attack.evidence, [str(r["rule"]) for r in raw_refusals])
                            if attack.evidence and policy != "none" else None)
    expected = attack.expected(policy)
    refusals = [f"{r['rule']}: {r['reason']}" for r in raw_refusals]
    return LinuxOutcome(attack.name, policy, verdict, detail, sorted(v.value for v in expected),
                        verdict in expected, refusals[:5], time.perf_counter() - t0, cpu,
                        feat_xnx_of(hv))


def run_linux_suite(policies: tuple[str, ...] = POLICIES, only: tuple[str, ...] = (),
                    *, echo: bool = False, trust_certs: Sequence[Path] = (),
                    cpu: str = DEFAULT_CPU) -> dict[str, Any]:
    """Every (or each `only`) attack under every policy; same JSON shape as the testbed suite."""
    unknown = [n for n in only if n not in NAMES]
    if unknown:
        raise ValueError(f"unknown attack(s) {unknown}; one of {NAMES}")
    guest = build_linux_guest()
    outcomes = [run_linux_attack(a, p, guest, echo=echo, trust_certs=trust_certs, cpu=cpu)
                for a in ATTACKS if not only or a.name in only for p in policies]
    return {"ok": bool(outcomes) and all(o.matches for o in outcomes),
            "guest": "linux", "cpu": cpu, "feat_xnx": any(o.feat_xnx for o in outcomes),
            "summary": summarize(outcomes, policies),
            "outcomes": [o.as_json() for o in outcomes]}
