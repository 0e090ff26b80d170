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
first, as a compromised kernel can). Under `transparent` each is expected blocked; `rule`
names the protection of issue 10 that must stop it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from secvma.attacks.scenarios import Verdict
from secvma.attacks.suite import Outcome
from secvma.linux.guestbuild import LinuxGuest, build_linux_guest
from secvma.linux.session import (
    POLICIES,
    boot_linux,
    internal_errors_of,
    make_linux_hypervisor,
    refusals_of,
)

BLOCKED = frozenset({Verdict.BLOCKED})
SUCCEEDS = frozenset({Verdict.SUCCEEDED})


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
                "VBAR_EL1 restored by the interrupt guard within one interval (no FEAT_FGT)"),
    LinuxAttack("TEXT_POKE", "patch text at no patch site through the text-poke alias",
                "aarch64_insn_patch_text_nosync(mac_pton+16, NOP)",
                "text patches only at sites the Image declares"),
    LinuxAttack("UNSIGNED_MODULE", "load and run an unsigned module",
                "finit_module(secvma_unsigned.ko), check it is Live",
                "module text executable only when its signature verifies"),
)
NAMES = tuple(a.name for a in ATTACKS)

_ATK_RE = re.compile(r"^SECVMA-ATK (\S+) ([01]) (\S+) ?(.*)$", re.MULTILINE)
_ALIVE_RE = re.compile(r"^SECVMA-ALIVE ([01])", re.MULTILINE)


LinuxOutcome = Outcome  # one outcome record for the testbed and the Linux suites


def judge(console: str, name: str, exit_kind: str, internal: list[str]) -> tuple[Verdict, str]:
    """The verdict of one attack run from the helper's lines and how the run ended."""
    if internal:
        return Verdict.INTERNAL_ERROR, f"hypervisor internal error: {internal[0]}"
    m = next((m for m in _ATK_RE.finditer(console) if m.group(1) == name), None)
    alive = _ALIVE_RE.search(console)
    if m is None:
        if "secvma_lkdtm: " + name in console:  # started, then the machine stopped
            return Verdict.HALTED, f"the machine stopped during the attack ({exit_kind})"
        return Verdict.ERROR, f"no report from the helper (run ended: {exit_kind})"
    effect, status, detail = m.group(2) == "1", m.group(3), m.group(4)
    if status.startswith("setup:"):
        return Verdict.ERROR, f"setup failed: {detail}"
    text = f"{detail} [{status}]"
    if effect:
        return Verdict.SUCCEEDED, text
    if alive is not None and alive.group(1) == "1" and exit_kind == "poweroff":
        how = "the attacking task was killed" if status.startswith("signal:") else \
            "the attempt failed"
        return Verdict.BLOCKED, f"{how}; machine went on: {text}"
    return Verdict.HALTED, f"no effect, and the machine did not go on ({exit_kind}): {text}"


def run_linux_attack(attack: LinuxAttack, policy: str, guest: LinuxGuest | None = None,
                     *, timeout_s: float = 300.0, echo: bool = False,
                     trust_certs: Sequence[Path] = ()) -> LinuxOutcome:
    """Boot a fresh Debian kernel under `policy`, run one attack, judge it by its effect."""
    guest = guest or build_linux_guest()
    hv = make_linux_hypervisor(policy, guest=guest, trust_certs=trust_certs)
    t0 = time.perf_counter()
    res = boot_linux(hv, f"SECVMA_ATTACK={attack.name}", timeout_s=timeout_s, echo=echo,
                     guest=guest)
    verdict, detail = judge(res.console, attack.name, res.exit, internal_errors_of(hv))
    expected = attack.expected(policy)
    refusals = [f"{r['rule']}: {r['reason']}" for r in refusals_of(hv)]
    return LinuxOutcome(attack.name, policy, verdict, detail, sorted(v.value for v in expected),
                        verdict in expected, refusals[:5], time.perf_counter() - t0)


def run_linux_suite(policies: tuple[str, ...] = POLICIES, only: tuple[str, ...] = (),
                    *, echo: bool = False, trust_certs: Sequence[Path] = ()) -> dict[str, Any]:
    """Every (or each `only`) attack under every policy; same JSON shape as the testbed suite."""
    unknown = [n for n in only if n not in NAMES]
    if unknown:
        raise ValueError(f"unknown attack(s) {unknown}; one of {NAMES}")
    guest = build_linux_guest()
    outcomes = [run_linux_attack(a, p, guest, echo=echo, trust_certs=trust_certs) for a in ATTACKS
                if not only or a.name in only for p in policies]
    return {"ok": bool(outcomes) and all(o.matches for o in outcomes),
            "guest": "linux",
            "summary": {p: {"blocked": sum(o.verdict in (Verdict.BLOCKED, Verdict.HALTED)
                                           for o in outcomes if o.policy == p),
                            "succeeded": sum(o.verdict is Verdict.SUCCEEDED
                                             for o in outcomes if o.policy == p),
                            "internal_errors": sum(o.verdict is Verdict.INTERNAL_ERROR
                                                   for o in outcomes if o.policy == p),
                            "unexpected": sum(not o.matches for o in outcomes if o.policy == p)}
                        for p in policies},
            "outcomes": [o.as_json() for o in outcomes]}
