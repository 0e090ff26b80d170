"""Refusals (the guest asked for something illegal) and outcomes (what EL2 does about it).

Two channels, never mixed (docs/STYLE.md §5 rule 6):

* `HypRefusal(code, rule, reason, **values)` is raised by a *check* phase. The code is one of
  five errno-like values, each with one meaning:

    ===========  ===========================================================
    EPERM        wrong page state / class / owner for the request
    EINVAL       malformed argument (outside RAM, misaligned, bad encoding)
    ENOENT       the object named does not exist (no mapping, no such root)
    EBUSY        the object is in use (a live TTBR0 root, a page with users)
    ENOMEM       the hypervisor's stage-2 table pool is exhausted
    ===========  ===========================================================

* `Outcome` is what the hypervisor does with the trapping instruction: EMULATED (done,
  PC advanced), RETRY (state changed, re-execute: lazy stage-2 fill, claim-then-retry),
  REFUSED (hypercall answered with -errno, or an abort injected into EL1), STALL (the C code
  returns without emulating: the CPU re-executes the store forever, spec §11 gap 11) and
  PANIC (`v_panic`: fatal for the host).

Every refusal is logged as a `Refusal` record with the rule that refused it; model bugs are
`AssertionError`s and never reach the guest as refusals.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, field

log = logging.getLogger("secvma.kpcore")


class Errno(enum.IntEnum):
    """The five refusal codes (Linux errno numbers, so `-code` is what x0 carries)."""

    EPERM = 1
    ENOENT = 2
    ENOMEM = 12
    EBUSY = 16
    EINVAL = 22


class Outcome(enum.Enum):
    """What happened to the trapping instruction or hypercall."""

    EMULATED = "emulated"
    RETRY = "retry"
    REFUSED = "refused"
    STALL = "stall"
    PANIC = "panic"


class HypRefusal(Exception):
    """A check refused a guest request; nothing has been changed yet."""

    def __init__(self, code: Errno, rule: str, reason: str, **values: int) -> None:
        super().__init__(f"{rule}: {code.name}: {reason}")
        self.code = code
        self.rule = rule
        self.reason = reason
        self.values = values


@dataclass(frozen=True, slots=True)
class Refusal:
    """One logged refusal: rule name, code, reason, where (CPU, PC) and the values involved."""

    rule: str
    code: Errno
    reason: str
    outcome: Outcome
    cpu: int
    pc: int
    values: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return {"rule": self.rule, "code": self.code.name, "reason": self.reason,
                "outcome": self.outcome.value, "cpu": self.cpu, "pc": f"{self.pc:#x}",
                "values": {k: f"{v:#x}" for k, v in self.values.items()}}

    def __str__(self) -> str:
        vals = " ".join(f"{k}={v:#x}" for k, v in self.values.items())
        return (f"[{self.outcome.value}] {self.rule} {self.code.name}: {self.reason} "
                f"(cpu{self.cpu} pc={self.pc:#x} {vals})").rstrip()


class HypPanic(HypRefusal):
    """A check whose C counterpart calls `v_panic` (fatal for the host under secvma2024)."""
