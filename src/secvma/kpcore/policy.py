"""Policies: `secvma2024` (the C code, gaps included) and `hardened` (gaps closed).

A policy is data: a `Quirks` record with one flag per reproduced behaviour of the C code
(docs/kpcore-spec.md §11), the stage-2 mapping mode and the invariant switch. Code paths test a
flag at the one place where the two behaviours differ; there is no fork.

    flag                      gap  secvma2024 (True)                   hardened (False)
    store_width_ignored        1   value validated as a whole desc,    each 8-byte slot is
                                   PXN OR-ed then truncated            merged, validated, PXN kept
    mark_ex_trusts_table       2   PXN cleared on whatever maps VA     only a PTE leaf -> MOD_txt
    first_page_blocks          4   block chosen by the faulting page   block only if homogeneous,
                                   (C table, 1 GiB default)            split on class change
    uninit_insn_module         8   module branch decodes insn = 0      real instruction decode
    stxr_drops_high_half       9   64-bit STXR keeps low 32 bits       full 64-bit value
    insn_via_kimage_voffset   10   insn PA = ELR - kimage_voffset      stage-1 walk of ELR
    stall_on_reject           11   refused store re-executes forever   data abort injected
    s2_fallback_rw            12   set_npt fallback maps EL0_PGD RW    per-class permission
    stub_hvcs                 14   HVC 1/2 drop EL2 control            refused (-EINVAL)
    boot_walk_any_nonzero     16   any non-zero entry is a table/leaf  only valid descriptors
    unmap_count_unchecked     17   zeroing a 0/invalid entry still     counts only real links;
                                   decrements; leaf at 1->0 zeroed    only tables released
    pool_area_unvalidated    --    NONE pool pages under RO block:     no such block exists
                                   writes emulated unchecked (§2.6)
    tvm_other_panics         --    ESR/FAR/AFSR writes panic           emulated (no security role)
    no_s1_tlbi               --    no TLBI after emulated PT writes    TLBI VMALLE1IS when needed
    mod_name_prefix           6   signature looked up by prefix        exact `.modinfo` name
                                   (strncmp to strlen(name))
    mod_unchecked_pointers    3   HVC 30 pointers / section places /  host pages of the right
                                   relocation targets: any host page   class, pools, declared
                                   (EL2 as confused deputy)            runs, signed relocations
    mod_ro_writable          15   MOD_ro mapped RW at stage 2, not     RO; refunded at HVC 31
                                   refunded by HVC 31 (spec §7.5)
    mod_bounds_unchecked      7   n > 100 / name > 99 bytes overflow   refused (EINVAL)
                                   EL2 buffers: panic
    unguarded_el1_regs       --    VBAR_EL1/MDSCR_EL1 (no TVM trap)     interrupt guard: checked
                                   seen only at the next trap, which    at every interrupt exit,
                                   a forged vector may never take       at least every 10 ms
    dma_count_unchecked       5   a page mapped for DMA may become a   refused (EBUSY) until
                                   page table (count not checked)      every mapping is cleared

(`--` rows are faithful C behaviour, not bugs, that `hardened` still tightens or simplifies.)
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

POLICY_NAMES = ("secvma2024", "hardened")
S2_MODES = ("huge", "4k")
GUARD_ACTIONS = ("restore", "halt")


@dataclass(frozen=True, slots=True)
class Quirks:
    """One flag per C behaviour that `hardened` changes (see the module table)."""

    store_width_ignored: bool = False
    mark_ex_trusts_table: bool = False
    first_page_blocks: bool = False
    uninit_insn_module: bool = False
    stxr_drops_high_half: bool = False
    insn_via_kimage_voffset: bool = False
    stall_on_reject: bool = False
    s2_fallback_rw: bool = False
    stub_hvcs: bool = False
    boot_walk_any_nonzero: bool = False
    unmap_count_unchecked: bool = False
    pool_area_unvalidated: bool = False
    tvm_other_panics: bool = False
    no_s1_tlbi: bool = False
    mod_name_prefix: bool = False
    mod_unchecked_pointers: bool = False
    mod_ro_writable: bool = False
    mod_bounds_unchecked: bool = False
    unguarded_el1_regs: bool = False
    dma_count_unchecked: bool = False

    @classmethod
    def all_on(cls) -> Quirks:
        return cls(**{f.name: True for f in fields(cls)})

    def enabled(self) -> list[str]:
        return [f.name for f in fields(self) if getattr(self, f.name)]


@dataclass(frozen=True, slots=True)
class Policy:
    """A named policy: quirks + stage-2 mode + invariant checking.

    `xnx` says how stage-2 XN[1:0] is *meant*: the invariants read the descriptor bits with
    FEAT_XNX semantics (spec §9 INV-S2-WX) whatever the CPU; on a v8.0 core (cortex-a57)
    XN[0] is ignored by hardware and EL1 W^X for RW memory rests on stage-1 PXN (spec §2.3).
    """

    name: str
    quirks: Quirks
    s2: str = "huge"
    check_invariants: bool = False
    xnx: bool = True
    guard_action: str = "restore"
    """What a forged untrapped register (kpcore.guard) costs the kernel: "restore" it or "halt"."""

    def __post_init__(self) -> None:
        if self.name not in POLICY_NAMES:
            raise ValueError(f"unknown policy {self.name!r}; choose one of {POLICY_NAMES}")
        if self.s2 not in S2_MODES:
            raise ValueError(f"unknown stage-2 mode {self.s2!r}; choose one of {S2_MODES}")
        if self.guard_action not in GUARD_ACTIONS:
            raise ValueError(f"unknown guard action {self.guard_action!r}; one of {GUARD_ACTIONS}")

    @property
    def hardened(self) -> bool:
        return self.name == "hardened"


def policy_named(name: str, *, s2: str = "huge", check_invariants: bool = False) -> Policy:
    """The policy `name` ("secvma2024" or "hardened") in stage-2 mode `s2` ("huge"/"4k")."""
    quirks = Quirks.all_on() if name == "secvma2024" else Quirks()
    return Policy(name, quirks, s2, check_invariants)


def with_quirks(policy: Policy, **flags: bool) -> Policy:
    """`policy` with some quirk flags changed (tests toggle one gap at a time)."""
    return replace(policy, quirks=replace(policy.quirks, **flags))
