"""Which hypervisor protects the testbed: the policy registry behind `secvma run --policy`."""

from __future__ import annotations

from typing import Any

from secvma.platform import Hypervisor
from secvma.testbed.nullabi import TestbedNullHypervisor

POLICIES = ("none", "secvma2024", "hardened")
S2_MODES = ("huge", "4k")
DEFAULT_POLICY = "hardened"


def make_hypervisor(policy: str, s2: str = "huge", **kw: Any) -> Hypervisor:
    """A fresh hypervisor for one run.

    `none` -> `TestbedNullHypervisor` (no protection, the SECvma hypercalls work);
    `secvma2024` / `hardened` -> `secvma.kpcore.make_policy(name, s2=..., **kw)`. Without a
    `module_keys` keyword the hypervisor gets a signature table for the testbed's own test
    modules, signed with a key made for this process (`testbed.keys.testbed_module_keys`),
    so the `modules` workload loads through HVC 30; pass `module_keys=None` explicitly for a
    hypervisor that refuses every module.
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; one of {', '.join(POLICIES)}")
    if s2 not in S2_MODES:
        raise ValueError(f"unknown stage-2 mode {s2!r}; one of {', '.join(S2_MODES)}")
    if policy == "none":
        return TestbedNullHypervisor()
    from secvma.kpcore import make_policy

    if "module_keys" not in kw:
        from secvma.testbed.keys import testbed_module_keys

        kw["module_keys"] = testbed_module_keys()
    return make_policy(policy, s2=s2, **kw)
