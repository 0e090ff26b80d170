"""secvma.kpcore: SECvma's hypervisor core (EL2 policy) in Python, per docs/kpcore-spec.md.

In this package, "spec §N" always means docs/kpcore-spec.md §N (gap numbers are its §11 list),
and "C: file:function" names the function of SECvma's C code a handler models.

Modules (data flows top to bottom):

    core        KPCore.handle: dispatch, refusal -> outcome, TLB flush, VBAR, invariants
    hypercalls  HVC dispatcher (0-2, 5, 6, 30-35)      userpgd   HVC 33/34/35
    faults      stage-2 aborts                          kpt       table-store emulation
    sysregs     TVM-trapped MSRs                        fetch     instruction at ELR
    boot        HVC 6 classification                    bootinfo  the HVC 6 block
    hostmem     class changes that touch stage 2        stage2    stage-2 table manager
    pages       page-usage table + transitions          descs     descriptor shapes
    invariants  spec §9                                 policy    Policy / Quirks
    refusal     HypRefusal, Outcome, Refusal            state     KState
    modload     HVC 30/31/32 (ModuleLoad)               modkeys   ModuleKeys, signing
    modstate    loaded modules (hypervisor memory)
    snapshot    JSON dump for `secvma inspect`

Public API: `make_policy(name, s2=..., check_invariants=..., module_keys=...) -> KPCore`,
`ModuleKeys.from_files(pubkey, table)`.
"""

from secvma.kpcore.core import KPCore, make_policy
from secvma.kpcore.modkeys import ModuleKeys
from secvma.kpcore.policy import POLICY_NAMES, S2_MODES, Policy, Quirks

__all__ = ["POLICY_NAMES", "S2_MODES", "KPCore", "ModuleKeys", "Policy", "Quirks", "make_policy"]
