// secvma EL2 trampoline: every EL2 event is forwarded to the Python hypervisor through a
// per-CPU mailbox page in guest RAM (shared with the host as a file), and the commands Python
// writes back are carried out before returning to EL1/EL0.
//
// Entered by QEMU at EL2h (virt, virtualization=on, raw -kernel) with x0 = DTB on the boot CPU,
// and by PSCI CPU_ON (entry redirected here by Python) with x0 = context id on secondaries.
// All addresses and offsets come from layout.inc, generated from secvma/machine/layout.py.
#include "layout.inc"

    .macro SAVE_X2_X30
    stp     x2, x3, [sp, #MB_X + 16]
    stp     x4, x5, [sp, #MB_X + 32]
    stp     x6, x7, [sp, #MB_X + 48]
    stp     x8, x9, [sp, #MB_X + 64]
    stp     x10, x11, [sp, #MB_X + 80]
    stp     x12, x13, [sp, #MB_X + 96]
    stp     x14, x15, [sp, #MB_X + 112]
    stp     x16, x17, [sp, #MB_X + 128]
    stp     x18, x19, [sp, #MB_X + 144]
    stp     x20, x21, [sp, #MB_X + 160]
    stp     x22, x23, [sp, #MB_X + 176]
    stp     x24, x25, [sp, #MB_X + 192]
    stp     x26, x27, [sp, #MB_X + 208]
    stp     x28, x29, [sp, #MB_X + 224]
    str     x30, [sp, #MB_X + 240]
    .endm

    .text
    .globl _start
_start:
    mov     x19, x0                     // DTB (boot CPU) or PSCI context id
    mrs     x1, mpidr_el1
    and     x1, x1, #0xff               // Aff0 = cpu index
    cmp     x1, #MAX_CPUS
    b.hs    park
    ldr     x2, =MBOX_BASE
    add     x2, x2, x1, lsl #12
    mov     sp, x2                      // SP_EL2 = this CPU's mailbox page
    adr     x1, vectors
    msr     vbar_el2, x1
    mov     x1, #3                      // CNTHCTL_EL2: EL1PCTEN | EL1PCEN
    msr     cnthctl_el2, x1
    msr     cntvoff_el2, xzr
    mrs     x1, midr_el1
    msr     vpidr_el2, x1
    mrs     x1, mpidr_el1
    msr     vmpidr_el2, x1
    str     x1, [sp, #MB_MPIDR]
    and     x1, x1, #0xff
    mov     x2, #GICR_STRIDE
    ldr     x3, =GICR_BASE
    madd    x1, x1, x2, x3
    str     x1, [sp, #MB_GICR]
    mrs     x1, id_aa64mmfr0_el1        // FGT (bits 59:56) for Python to report
    str     x1, [sp, #MB_FEAT]
    mrs     x1, id_aa64mmfr1_el1        // XNX (bits 31:28) for Python's stage 2
    str     x1, [sp, #MB_FEAT1]
    mrs     x1, id_aa64pfr0_el1
    ubfx    x1, x1, #24, #4             // GIC system-register interface present?
    cbz     x1, 1f
    mov     x1, #0xf                    // ICC_SRE_EL2: SRE, DFB, DIB, Enable (EL1 may use its
    msr     S3_4_C12_C9_5, x1           // own system-register interface)
    isb
1:
    mrs     x1, cntfrq_el0
    str     x1, [sp, #MB_CNTFRQ]
    mov     x1, #0x32ff                 // CPTR_EL2: RES1 bits, no FP/SIMD/SVE trap
    msr     cptr_el2, x1
    msr     hstr_el2, xzr
    mrs     x1, pmcr_el0
    ubfx    x1, x1, #11, #5             // MDCR_EL2.HPMN = PMCR_EL0.N
    msr     mdcr_el2, x1
    ldr     x1, =0x30d00800             // SCTLR_EL1: RES1 bits, MMU and caches off
    msr     sctlr_el1, x1
    ldr     x1, =(1 << 31)              // HCR_EL2.RW: EL1 is AArch64; Python sets the rest
    msr     hcr_el2, x1
    isb
    str     xzr, [sp, #MB_TOT]
    str     xzr, [sp, #MB_NTR]
    str     xzr, [sp, #MB_SEQ]
    str     xzr, [sp, #MB_FAST]
    str     xzr, [sp, #MB_IRQS]
    str     xzr, [sp, #MB_TICKS]
    str     xzr, [sp, #MB_GUARD_PERIOD]
    str     xzr, [sp, #MB_IRQ_TICKS]
    str     xzr, [sp, #MB_HCR_OR]
    str     xzr, [sp, #MB_CHECKS]
    str     xzr, [sp, #MB_IRQQ_N]
    str     xzr, [sp, #MB_LR_OVF]
    str     xzr, [sp, #MB_SGIS]
    str     xzr, [sp, #MB_ROOT_EN]      // root fast paths off until Python enables them
    str     xzr, [sp, #MB_CUR_TTBR0]
    str     xzr, [sp, #MB_NEXT_TTBR0]
    str     xzr, [sp, #MB_FAST_ROOTS]
    str     xzr, [sp, #MB_PTE_EN]       // PTE fast path off until Python enables it
    str     xzr, [sp, #MB_FAST_PTES]
    str     wzr, [sp, #MB_GUARDTAB + 4] // empty guard table (state 0 ends it)
    // boot frame: x0 = DTB / context id, x1..x30 = 0, EL1h with DAIF masked
    add     x2, sp, #MB_X
    str     x19, [x2], #8
    mov     x3, #30
1:  str     xzr, [x2], #8
    subs    x3, x3, #1
    b.ne    1b
    ldr     x1, =KERNEL_BASE
    str     x1, [sp, #MB_ELR]
    mov     x1, #SPSR_EL1H_MASKED
    str     x1, [sp, #MB_SPSR]
    str     xzr, [sp, #MB_ESR]
    str     xzr, [sp, #MB_FAR]
    str     xzr, [sp, #MB_HPFAR]
    bl      save_el1
    mov     w1, #KIND_HELLO
    str     w1, [sp, #MB_KIND]
    mrs     x0, cntpct_el0
    str     x0, [sp, #MB_TENT]
    b       post_wait

// ---- synchronous exception from EL1/EL0 ------------------------------------------------
#ifdef TRAP_FLOOR
trap_floor:                             // measurement build only (build.TRAMPOLINE_VARIANTS):
    mrs     x0, esr_el2                 // a CONTEXTIDR_EL1 write is dropped as cheaply as a
    lsr     x1, x0, #26                 // trap can return: what QEMU's exception entry and
    cmp     x1, #0x18                   // ERET cost, the floor under every fast path
    b.ne    lower_sync
    and     x0, x0, #0x1ffffff
    and     x0, x0, #~(0x1f << 5)
    ldr     w1, =CONTEXTIDR_ISS_KEY
    cmp     w0, w1
    b.ne    lower_sync
    mrs     x0, elr_el2
    add     x0, x0, #4
    msr     elr_el2, x0
    ldp     x0, x1, [sp, #MB_X]
    eret
#endif
lower_sync:                             // x0, x1 already saved by the vector
    SAVE_X2_X30
    mrs     x0, esr_el2
    str     x0, [sp, #MB_ESR]
    mrs     x1, elr_el2
    str     x1, [sp, #MB_ELR]
    mrs     x1, spsr_el2
    str     x1, [sp, #MB_SPSR]
    ldr     x1, [sp, #MB_NTR]
    add     x1, x1, #1
    str     x1, [sp, #MB_NTR]
    // fast path: an MSR (EC 0x18, direction write) whose ISS key is in the table
    lsr     x1, x0, #26
    cmp     x1, #0x24                   // data abort from EL1/EL0: the PTE fast path
    b.eq    pte_fast
    cmp     x1, #0x18
    b.ne    slow_path
    tbnz    x0, #0, slow_path           // MRS (read): always to Python
    and     x2, x0, #0x1ffffff          // ISS
    and     x2, x2, #~(0x1f << 5)       // key: ISS without Rt
    ldr     w3, =SGI1R_ISS_KEY          // an IPI while interrupts go through EL2 (IMO)
    cmp     w2, w3
    b.eq    sgi_forward
    ldr     w3, =TTBR0_ISS_KEY
    cmp     w2, w3
    b.eq    root_fast0
    ldr     w3, =TTBR1_ISS_KEY
    cmp     w2, w3
    b.eq    root_fast1
    add     x3, sp, #MB_FASTTAB
fast_scan:
    ldr     w4, [x3]
    cbz     w4, slow_path
    cmp     w4, w2
    b.eq    fast_hit
    add     x3, x3, #FAST_ENTRY_SIZE
    b       fast_scan
fast_hit:
    ubfx    x5, x0, #5, #5              // Rt
    mov     x2, xzr
    cmp     x5, #31
    b.eq    1f
    add     x6, sp, #MB_X
    ldr     x2, [x6, x5, lsl #3]        // value = x[Rt]
1:  str     x2, [x3, #8]                // last value, for Python's shadow
    ldr     w1, [x3, #4]                // MSR table index
    ldr     x4, [sp, #MB_FAST]
    add     x4, x4, #1
    str     x4, [sp, #MB_FAST]
    ldr     x4, [sp, #MB_ELR]
    add     x4, x4, #4
    str     x4, [sp, #MB_ELR]
    adr     x30, restore_eret           // return address for the MSR table
    b       msr_dispatch

// root fast path (layout "root fast path"): a TTBR write of a root Python has validated
root_fast0:
    ldr     x4, [sp, #MB_ROOT_EN]
    tbz     x4, #0, slow_path
    bl      rt_value
    str     x2, [sp, #MB_NEXT_TTBR0]    // announce the root before reading the table (Python
    dmb     ish                         // removes, fences, then reads NEXT/CUR: Dekker)
    mov     x7, xzr
    bl      root_lookup
    cbz     x3, 1f
    msr     ttbr0_el1, x2
    isb
    str     x2, [sp, #MB_CUR_TTBR0]     // loaded: CUR before NEXT is cleared
    dmb     ish
    str     xzr, [sp, #MB_NEXT_TTBR0]
    b       root_done
1:  str     xzr, [sp, #MB_NEXT_TTBR0]   // not in the table: Python decides
    b       slow_path
root_fast1:
    ldr     x4, [sp, #MB_ROOT_EN]
    tbz     x4, #1, slow_path
    bl      rt_value
    mov     x7, #ROOT_TABLE_SIZE
    bl      root_lookup
    cbz     x3, slow_path
    msr     ttbr1_el1, x2
    isb
root_done:
    ldr     x4, [sp, #MB_FAST]
    add     x4, x4, #1
    str     x4, [sp, #MB_FAST]
    ldr     x4, [sp, #MB_FAST_ROOTS]
    add     x4, x4, #1
    str     x4, [sp, #MB_FAST_ROOTS]
    ldr     x4, [sp, #MB_ELR]
    add     x4, x4, #4
    str     x4, [sp, #MB_ELR]
    b       restore_eret
rt_value:                               // x0 = ESR -> x2 = x[Rt] (XZR reads 0)
    ubfx    x5, x0, #5, #5
    mov     x2, xzr
    cmp     x5, #31
    b.eq    1f
    add     x6, sp, #MB_X
    ldr     x2, [x6, x5, lsl #3]
1:  ret
root_lookup:                            // x2 = TTBR value, x7 = table offset -> x3 = 1 if listed
    and     x4, x2, #ROOT_BADDR         // ASID and CnP do not matter
    cbz     x4, 2f                      // 0 marks a free slot: never a root
    ldr     x5, =ROOTTAB_BASE
    add     x5, x5, x7
    ubfx    x6, x4, #12, #ROOT_BUCKET_BITS
    add     x5, x5, x6, lsl #5          // ROOT_WAYS u64 per bucket
    ldp     x6, x3, [x5]
    cmp     x6, x4
    ccmp    x3, x4, #4, ne
    b.eq    1f
    ldp     x6, x3, [x5, #16]
    cmp     x6, x4
    ccmp    x3, x4, #4, ne
    b.eq    1f
2:  mov     x3, xzr
    ret
1:  mov     x3, #1
    ret

// PTE fast path (layout "PTE fast path"): a map of an ordinary page (PXN forced) or an unmap
// of one, by an ISV 64-bit store at a slot of a level-3 kernel table page Python marked
pte_fast:
    ldr     x4, [sp, #MB_PTE_EN]
    cbz     x4, slow_path
    ldr     x4, =PTE_ESR_MASK
    and     x4, x0, x4
    ldr     x5, =PTE_ESR_WANT           // ISV, SAS 64, SF, WnR, no S1PTW/CM/EA/FnV, permission
    cmp     x4, x5
    b.ne    slow_path
    ldr     x4, [sp, #MB_SPSR]
    and     x4, x4, #0xe                // M[3:1] = 0b010: EL1t or EL1h
    cmp     x4, #4
    b.ne    slow_path
    mrs     x3, far_el2
    tst     x3, #7                      // an aligned slot
    b.ne    slow_path
    mrs     x2, hpfar_el2
    ubfx    x2, x2, #4, #40
    lsl     x2, x2, #12                 // x2 = table page (IPA = PA)
    ldr     x7, =PTE_TABLE_MAP
    mov     x6, x2
    bl      pte_bit
    cbz     x4, slow_path
    and     x3, x3, #0xff8
    orr     x12, x2, x3                 // x12 = slot
    ubfx    x5, x0, #16, #5             // SRT
    mov     x11, xzr
    cmp     x5, #31
    b.eq    1f
    add     x6, sp, #MB_X
    ldr     x11, [x6, x5, lsl #3]       // x11 = new
1:  ldr     x13, [x12]                  // x13 = old
    ldr     x7, =PTE_TARGET_MAP
    cbnz    x13, 2f
    and     x4, x11, #3                 // map: 0 -> page descriptor of an ordinary page
    cmp     x4, #3
    b.ne    slow_path
    and     x6, x11, #PTE_OA_MASK
    bl      pte_bit
    cbz     x4, slow_path
    orr     x11, x11, #(1 << PTE_PXN_BIT)
    b       3f
2:  cbnz    x11, slow_path              // unmap: page descriptor of an ordinary page -> 0
    and     x4, x13, #3
    cmp     x4, #3
    b.ne    slow_path
    and     x6, x13, #PTE_OA_MASK
    bl      pte_bit
    cbz     x4, slow_path
3:  ldr     x7, =PTE_LOG_BASE           // this CPU's log: its mailbox's index x stride
    ldr     x8, =MBOX_BASE
    mov     x9, sp
    sub     x9, x9, x8
    add     x7, x7, x9, lsl #PTE_LOG_SHIFT
    ldp     x8, x9, [x7]                // head (ours), tail (Python's)
    sub     x10, x8, x9
    cmp     x10, #PTE_LOG_MAX
    b.hs    slow_path                   // full: Python replays it, then decides this store
    str     x11, [x12]
    mov     x9, #PTE_LOG_MAX
    udiv    x10, x8, x9
    msub    x10, x10, x9, x8            // head % PTE_LOG_MAX
    mov     x9, #PTE_LOG_ENTRY
    madd    x10, x10, x9, x7
    stp     x12, x13, [x10, #16]
    str     x11, [x10, #32]
    dmb     ish                         // the entry before the head that publishes it
    add     x8, x8, #1
    str     x8, [x7]
    cbnz    x11, 4f
    dsb     ishst                       // unmap: the invalidation Python would queue
    lsr     x9, x2, #12
    tlbi    ipas2e1is, x9
    dsb     ish
    tlbi    vmalle1is
    dsb     ish
    isb
4:  ldr     x4, [sp, #MB_FAST]
    add     x4, x4, #1
    str     x4, [sp, #MB_FAST]
    ldr     x4, [sp, #MB_FAST_PTES]
    add     x4, x4, #1
    str     x4, [sp, #MB_FAST_PTES]
    ldr     x4, [sp, #MB_ELR]
    add     x4, x4, #4
    str     x4, [sp, #MB_ELR]
    b       restore_eret
pte_bit:                                // x6 = PA, x7 = bitmap -> x4 = its bit (0 outside RAM)
    mov     x4, xzr
    ldr     x8, =RAM_BASE
    subs    x6, x6, x8
    b.lo    1f
    lsr     x6, x6, #12
    ldr     x8, =(MAX_RAM >> 12)
    cmp     x6, x8
    b.hs    1f
    lsr     x8, x6, #3
    ldrb    w4, [x7, x8]
    and     x8, x6, #7
    lsr     w4, w4, w8
    and     w4, w4, #1
1:  ret

sgi_forward:                            // EL2 sends the SGI EL1 asked for (IMO traps it)
    ubfx    x5, x0, #5, #5
    mov     x2, xzr
    cmp     x5, #31
    b.eq    1f
    add     x6, sp, #MB_X
    ldr     x2, [x6, x5, lsl #3]
1:  msr     S3_0_C12_C11_5, x2          // ICC_SGI1R_EL1
    isb
    ldr     x4, [sp, #MB_SGIS]
    add     x4, x4, #1
    str     x4, [sp, #MB_SGIS]
    ldr     x4, [sp, #MB_ELR]
    add     x4, x4, #4
    str     x4, [sp, #MB_ELR]
    b       restore_eret

slow_path:                              // the round trip is timed from here: a CNTPCT read
    mrs     x0, cntpct_el0              // costs QEMU ~0.6 us, too much for the fast paths
    str     x0, [sp, #MB_TENT]
    mrs     x0, far_el2
    str     x0, [sp, #MB_FAR]
    mrs     x0, hpfar_el2
    str     x0, [sp, #MB_HPFAR]
    bl      save_el1
    mov     w0, #KIND_TRAP
    str     w0, [sp, #MB_KIND]

post_wait:
    ldr     x0, [sp, #MB_SEQ]
    add     x0, x0, #1
    str     x0, [sp, #MB_SEQ]
    str     xzr, [sp, #MB_CMDS]         // Python must write at least the terminator
    dmb     sy
    mov     w0, #STATE_REQUEST
    str     w0, [sp, #MB_STATE]         // request posted
2:  ldr     w0, [sp, #MB_STATE]         // spin until Python answers
    cmp     w0, #STATE_RESPONSE
    b.ne    2b
    dmb     sy
    add     x20, sp, #MB_CMDS
    mov     x21, #MAX_CMDS
cmd_loop:
    cbz     x21, cmds_done
    sub     x21, x21, #1
    ldp     x0, x1, [x20]
    ldr     x2, [x20, #16]
    add     x20, x20, #CMD_SIZE
    cbz     x0, cmds_done
    cmp     x0, #OP_MSR
    b.eq    do_msr
    cmp     x0, #OP_TLBI_ALL
    b.eq    do_tlbi_all
    cmp     x0, #OP_VTTBR
    b.eq    do_vttbr
    cmp     x0, #OP_HCR
    b.eq    do_hcr
    cmp     x0, #OP_VTCR
    b.eq    do_vtcr
    cmp     x0, #OP_TLBI_IPA
    b.eq    do_tlbi_ipa
    cmp     x0, #OP_CPTR
    b.eq    do_cptr
    cmp     x0, #OP_SMC
    b.eq    do_smc
    cmp     x0, #OP_CODE_SYNC
    b.eq    do_code_sync
    cmp     x0, #OP_INJECT
    b.eq    do_inject
    cmp     x0, #OP_HALT
    b.eq    park
    cmp     x0, #OP_GUARD
    b.eq    do_guard
    cmp     x0, #OP_STR32
    b.eq    do_str32
    cmp     x0, #OP_DOORBELL
    b.eq    do_doorbell
    b       cmd_loop                    // unknown op: ignored (Python validates its own)

do_msr:
    mov     w1, w1
    cmp     x1, #1                      // TTBR0_EL1: record what this CPU has loaded
    b.ne    1f
    adr     x30, 2f
    b       msr_dispatch
2:  str     x2, [sp, #MB_CUR_TTBR0]     // loaded; Python set NEXT when it decided
    dmb     ish
    str     xzr, [sp, #MB_NEXT_TTBR0]
    b       cmd_loop
1:  adr     x30, cmd_loop
msr_dispatch:                           // x1 = SysReg index, x2 = value, returns to x30
    cmp     x1, #MSR_COUNT
    b.hs    1f
    adr     x3, msr_table
    add     x3, x3, x1, lsl #3
    br      x3
1:  ret
msr_table:
    msr     sctlr_el1, x2       // 0
    b       msr_done
    msr     ttbr0_el1, x2       // 1
    b       msr_done
    msr     ttbr1_el1, x2       // 2
    b       msr_done
    msr     tcr_el1, x2         // 3
    b       msr_done
    msr     mair_el1, x2        // 4
    b       msr_done
    msr     amair_el1, x2       // 5
    b       msr_done
    msr     contextidr_el1, x2  // 6
    b       msr_done
    msr     esr_el1, x2         // 7
    b       msr_done
    msr     far_el1, x2         // 8
    b       msr_done
    msr     afsr0_el1, x2       // 9
    b       msr_done
    msr     afsr1_el1, x2       // 10
    b       msr_done
    msr     elr_el1, x2         // 11
    b       msr_done
    msr     spsr_el1, x2        // 12
    b       msr_done
    msr     vbar_el1, x2        // 13
    b       msr_done
    msr     mdscr_el1, x2       // 14
    b       msr_done
    .equ MSR_COUNT, 15
msr_done:
    isb
    ret

do_tlbi_all:
    dsb     ishst
    tlbi    vmalls12e1is
    dsb     ish
    isb
    b       cmd_loop
do_vttbr:
    msr     vttbr_el2, x1
    isb
    b       cmd_loop
do_hcr:
    ldr     x3, [sp, #MB_HCR_OR]        // the guard's IMO|FMO survive every HCR write
    orr     x1, x1, x3
    msr     hcr_el2, x1
    isb
    b       cmd_loop
do_vtcr:
    msr     vtcr_el2, x1
    isb
    b       cmd_loop
do_tlbi_ipa:                            // x1 = IPA
    lsr     x1, x1, #12
    dsb     ishst
    tlbi    ipas2e1is, x1
    dsb     ish
    tlbi    vmalle1is
    dsb     ish
    isb
    b       cmd_loop
do_cptr:
    msr     cptr_el2, x1
    isb
    b       cmd_loop
do_smc:                                 // the guest's (possibly rewritten) PSCI call, from EL2
    ldp     x0, x1, [sp, #MB_X]
    ldp     x2, x3, [sp, #MB_X + 16]
    smc     #0
    stp     x0, x1, [sp, #MB_X]
    stp     x2, x3, [sp, #MB_X + 16]
    b       cmd_loop
do_str32:                               // a = PA (4-aligned), b = word; EL2 runs MMU-off, so
    str     w2, [x1]                    // the store goes through QEMU's code-write tracking
    b       cmd_loop
do_doorbell:                            // a = device register (the SMMU's CMDQ_PROD), b = PA of
    dsb     sy                          // a u32 in hypervisor memory: its value *now* is
    ldr     w3, [x2]                    // written (never a stale one, whichever CPU rings
    str     w3, [x1]                    // first); EL2 MMU off: Device-nGnRnE access
    dsb     sy
    b       cmd_loop
do_code_sync:                           // a = list PA, b = ranges (layout "code sync"): each
    cbz     x2, 3f                      // u64 loaded and stored back at EL2 (MMU off): QEMU
1:  ldp     x3, x4, [x1], #16           // drops the translations the stores overlap
    cbz     x4, 4f
2:  ldr     x5, [x3]
    str     x5, [x3], #8
    subs    x4, x4, #8
    b.hi    2b
4:  subs    x2, x2, #1
    b.ne    1b
3:  dsb     ish
    ic      ialluis
    dsb     ish
    isb
    b       cmd_loop
do_inject:                              // synchronous exception to EL1: a = ESR, b = FAR
    msr     esr_el1, x1
    msr     far_el1, x2
    ldr     x3, [sp, #MB_ELR]
    msr     elr_el1, x3
    ldr     x3, [sp, #MB_SPSR]
    msr     spsr_el1, x3
    mrs     x4, vbar_el1
    and     x5, x3, #0xf                // SPSR.M[3:0] of the interrupted context
    cmp     x5, #5                      // EL1h: current EL with SP_ELx
    b.eq    1f
    cmp     x5, #4                      // EL1t: current EL with SP_EL0
    b.eq    2f
    add     x4, x4, #0x400              // EL0 (AArch64): lower EL
    b       2f
1:  add     x4, x4, #0x200
2:  str     x4, [sp, #MB_ELR]
    mov     x3, #SPSR_EL1H_MASKED
    str     x3, [sp, #MB_SPSR]
    b       cmd_loop

do_guard:                               // a = CNTHP period (ticks): see layout.py
    str     x1, [sp, #MB_GUARD_PERIOD]
    mov     x3, #0xff
    msr     S3_0_C4_C6_0, x3            // ICC_PMR_EL1 (physical): let everything through
    mrs     x3, S3_0_C12_C12_4          // ICC_CTLR_EL1.EOImode = 1: EOIR drops priority,
    orr     x3, x3, #2                  // deactivation is the kernel's (HW=1) or ICC_DIR's
    msr     S3_0_C12_C12_4, x3
    mov     x3, #1
    msr     S3_0_C12_C12_7, x3          // ICC_IGRPEN1_EL1
    ldr     x4, =GICD_BASE              // distributor: affinity routing, group 1 enabled
    ldr     w3, [x4]
    mov     w5, #0x12
    orr     w3, w3, w5
    str     w3, [x4]
    ldr     x4, [sp, #MB_GICR]          // this CPU's redistributor: awake
    ldr     w3, [x4, #0x14]
    and     w3, w3, #~2
    str     w3, [x4, #0x14]
1:  ldr     w3, [x4, #0x14]
    tbnz    w3, #2, 1b
    add     x4, x4, #0x10000            // SGI frame: guard timer and maintenance PPIs
    ldr     w3, [x4, #0x80]             // group 1
    orr     w3, w3, #((1 << GUARD_PPI) | (1 << MAINT_PPI))
    str     w3, [x4, #0x80]
    mov     w3, #0x80
    strb    w3, [x4, #0x400 + GUARD_PPI]
    strb    w3, [x4, #0x400 + MAINT_PPI]
    mov     w3, #((1 << GUARD_PPI) | (1 << MAINT_PPI))
    str     w3, [x4, #0x100]            // GICR_ISENABLER0
    mrs     x3, S3_4_C12_C11_1          // ICH_VTR_EL2.ListRegs + 1 LRs: cache their mask
    and     x3, x3, #0x1f
    add     x3, x3, #1
    mov     x5, #1
    lsl     x5, x5, x3
    sub     x5, x5, #1
    str     x5, [sp, #MB_NLR_MASK]
    str     xzr, [sp, #MB_IRQQ_N]
    mov     x3, #1
    msr     S3_4_C12_C11_0, x3          // ICH_HCR_EL2.En: virtual CPU interface on
    msr     cnthp_tval_el2, x1
    msr     cnthp_ctl_el2, x3           // EL2 timer on, unmasked
    mrs     x3, cntpct_el0
    str     x3, [sp, #MB_LAST_TICK]
    str     xzr, [sp, #MB_PPI_FIX]
    mov     x3, #HCR_GUARD
    str     x3, [sp, #MB_HCR_OR]
    mrs     x4, hcr_el2
    orr     x4, x4, x3
    msr     hcr_el2, x4
    isb
    b       cmd_loop

cmds_done:
    str     wzr, [sp, #MB_STATE]
    mrs     x0, cntpct_el0
    ldr     x1, [sp, #MB_TENT]
    sub     x0, x0, x1
    str     x0, [sp, #MB_LAST]
    ldr     x1, [sp, #MB_TOT]
    add     x1, x1, x0
    str     x1, [sp, #MB_TOT]
restore_eret:
    ldr     x0, [sp, #MB_ELR]
    msr     elr_el2, x0
    ldr     x0, [sp, #MB_SPSR]
    msr     spsr_el2, x0
    ldp     x2, x3, [sp, #MB_X + 16]
    ldp     x4, x5, [sp, #MB_X + 32]
    ldp     x6, x7, [sp, #MB_X + 48]
    ldp     x8, x9, [sp, #MB_X + 64]
    ldp     x10, x11, [sp, #MB_X + 80]
    ldp     x12, x13, [sp, #MB_X + 96]
    ldp     x14, x15, [sp, #MB_X + 112]
    ldp     x16, x17, [sp, #MB_X + 128]
    ldp     x18, x19, [sp, #MB_X + 144]
    ldp     x20, x21, [sp, #MB_X + 160]
    ldp     x22, x23, [sp, #MB_X + 176]
    ldp     x24, x25, [sp, #MB_X + 192]
    ldp     x26, x27, [sp, #MB_X + 208]
    ldp     x28, x29, [sp, #MB_X + 224]
    ldr     x30, [sp, #MB_X + 240]
    ldp     x0, x1, [sp, #MB_X]
    eret

// ---- physical interrupt from EL1/EL0 (only while the guard is armed: HCR_EL2.IMO) -------
lower_irq:                              // x0, x1 already saved by the vector
    SAVE_X2_X30
    mrs     x19, cntpct_el0             // entry time, for the cost counter
    mrs     x1, elr_el2
    str     x1, [sp, #MB_ELR]
    mrs     x1, spsr_el2
    str     x1, [sp, #MB_SPSR]
    ldr     x1, [sp, #MB_IRQS]
    add     x1, x1, #1
    str     x1, [sp, #MB_IRQS]
    mrs     x0, S3_0_C12_C12_0          // ICC_IAR1_EL1
    cmp     x0, #1020
    b.hs    irq_checks                  // spurious
    msr     S3_0_C12_C12_1, x0          // ICC_EOIR1_EL1: priority drop only (EOImode 1)
    cmp     x0, #GUARD_PPI
    b.eq    irq_tick
    cmp     x0, #MAINT_PPI
    b.eq    irq_maint
    cmp     x0, #16
    b.hs    1f
    msr     S3_0_C12_C11_1, x0          // SGI: deactivate now, EL1 gets a purely virtual one
1:  mov     x1, x0
    bl      inject_irq
    b       irq_checks
irq_tick:
    ldr     x1, [sp, #MB_GUARD_PERIOD]  // re-arm first (drops the level), then deactivate
    msr     cnthp_tval_el2, x1
    isb
    msr     S3_0_C12_C11_1, x0          // ICC_DIR_EL1
    str     x19, [sp, #MB_LAST_TICK]
    ldr     x1, [sp, #MB_TICKS]
    add     x1, x1, #1
    str     x1, [sp, #MB_TICKS]
    b       irq_checks
irq_maint:
    msr     S3_0_C12_C11_1, x0
irq_checks:
    bl      drain_irqq
    ldr     x1, [sp, #MB_LAST_TICK]     // no tick for two periods: the kernel may have disabled
    ldr     x2, [sp, #MB_GUARD_PERIOD]  // the guard's PPIs in its redistributor; enable again
    sub     x1, x19, x1
    cmp     x1, x2, lsl #1
    b.lo    1f
    ldr     x1, [sp, #MB_GICR]
    add     x1, x1, #0x10000
    mov     w2, #((1 << GUARD_PPI) | (1 << MAINT_PPI))
    ldr     w3, [x1, #0x80]             // group 1 again
    orr     w3, w3, w2
    str     w3, [x1, #0x80]
    mov     w3, #0x80                   // priority above the physical PMR again
    strb    w3, [x1, #0x400 + GUARD_PPI]
    strb    w3, [x1, #0x400 + MAINT_PPI]
    str     w2, [x1, #0x100]            // GICR_ISENABLER0
    str     x19, [sp, #MB_LAST_TICK]
    ldr     x1, [sp, #MB_PPI_FIX]
    add     x1, x1, #1
    str     x1, [sp, #MB_PPI_FIX]
1:
    ldr     x1, [sp, #MB_CHECKS]
    add     x1, x1, #1
    str     x1, [sp, #MB_CHECKS]
    add     x20, sp, #MB_GUARDTAB
    mov     x21, xzr
guard_loop:                             // each entry: (reg & mask) == value, else to Python
    ldr     w1, [x20, #4]
    cbz     w1, irq_done
    ldr     w1, [x20]
    bl      mrs_dispatch
    str     x2, [x20, #32]              // seen
    ldr     x3, [x20, #8]
    and     x3, x2, x3
    ldp     x4, x5, [x20, #16]          // value, alt
    cmp     x3, x4
    ccmp    x3, x5, #4, ne              // equal to value, or else to alt
    b.ne    guard_trip
    add     x20, x20, #GUARD_ENTRY_SIZE
    add     x21, x21, #1
    cmp     x21, #GUARD_MAX
    b.lo    guard_loop
irq_done:
    mrs     x0, cntpct_el0
    sub     x0, x0, x19
    ldr     x1, [sp, #MB_IRQ_TICKS]
    add     x1, x1, x0
    str     x1, [sp, #MB_IRQ_TICKS]
    b       restore_eret
guard_trip:                             // Python decides (restore or halt) before EL1 runs
    str     x21, [sp, #MB_GUARD_HIT]
    str     x19, [sp, #MB_TENT]
    str     xzr, [sp, #MB_ESR]
    str     xzr, [sp, #MB_FAR]
    str     xzr, [sp, #MB_HPFAR]
    bl      save_el1
    mov     w0, #KIND_GUARD
    str     w0, [sp, #MB_KIND]
    b       post_wait

inject_irq:                             // x1 = INTID -> a list register (or the queue)
    mov     x9, x30                     // (every GIC register access costs QEMU a lock: few)
    mrs     x7, S3_4_C12_C11_5          // ICH_ELRSR_EL2: bit n set = LR n free
    ldr     x2, [sp, #MB_NLR_MASK]
    bic     x8, x2, x7                  // LRs in use
1:  cbz     x8, 3f                      // already in a used LR: make it pending there
    rbit    x5, x8
    clz     x3, x5
    mov     x6, #1
    lsl     x6, x6, x3
    bic     x8, x8, x6
    bl      lr_read
    and     x6, x4, #0xffffffff
    cmp     x6, x1
    b.ne    1b
    orr     x4, x4, #(1 << 62)
    bl      lr_write
    mov     x30, x9
    ret
3:  and     x5, x7, x2
    cbz     x5, 5f
    rbit    x5, x5
    clz     x3, x5
    mov     x4, x1                      // vINTID, group 1, pending, priority
    orr     x4, x4, #(1 << 60)
    orr     x4, x4, #(1 << 62)
    mov     x6, #GIC_PRIO
    orr     x4, x4, x6, lsl #48
    cmp     x1, #16
    b.lo    4f
    orr     x4, x4, #(1 << 61)          // HW: the kernel's deactivation reaches the physical
    orr     x4, x4, x1, lsl #32         // pINTID
4:  bl      lr_write
    mov     x30, x9
    ret
5:  ldr     x5, [sp, #MB_IRQQ_N]
    cmp     x5, #IRQQ_MAX
    b.hs    6f
    add     x6, sp, #MB_IRQQ
    str     w1, [x6, x5, lsl #2]
    add     x5, x5, #1
    str     x5, [sp, #MB_IRQQ_N]
    mov     x30, x9
    ret
6:  ldr     x5, [sp, #MB_LR_OVF]        // lost: deactivate so it is not stuck active
    add     x5, x5, #1
    str     x5, [sp, #MB_LR_OVF]
    msr     S3_0_C12_C11_1, x1
    mov     x30, x9
    ret

drain_irqq:                             // queued interrupts into free LRs; UIE while any wait
    ldr     x7, [sp, #MB_IRQQ_N]        // empty (the usual case): ICH_HCR is already just En
    cbnz    x7, 0f
    ret
0:  mov     x10, x30
1:  ldr     x7, [sp, #MB_IRQQ_N]
    cbz     x7, 2f
    mrs     x5, S3_4_C12_C11_5
    cbz     x5, 3f
    sub     x7, x7, #1
    str     x7, [sp, #MB_IRQQ_N]
    add     x6, sp, #MB_IRQQ
    ldr     w1, [x6, x7, lsl #2]
    bl      inject_irq
    b       1b
2:  mov     x1, #1                      // ICH_HCR_EL2: En
    b       4f
3:  mov     x1, #3                      // En | UIE (maintenance interrupt when LRs drain)
4:  msr     S3_4_C12_C11_0, x1
    mov     x30, x10
    ret

lr_read:                                // x3 = n -> x4 = ICH_LR<n>_EL2
    adr     x5, 1f
    add     x5, x5, x3, lsl #3
    br      x5
1:
    .irp n, 0, 1, 2, 3, 4, 5, 6, 7
    mrs     x4, S3_4_C12_C12_\n
    ret
    .endr
    .irp n, 0, 1, 2, 3, 4, 5, 6, 7
    mrs     x4, S3_4_C12_C13_\n
    ret
    .endr
lr_write:                               // ICH_LR<x3>_EL2 := x4
    adr     x5, 1f
    add     x5, x5, x3, lsl #3
    br      x5
1:
    .irp n, 0, 1, 2, 3, 4, 5, 6, 7
    msr     S3_4_C12_C12_\n, x4
    ret
    .endr
    .irp n, 0, 1, 2, 3, 4, 5, 6, 7
    msr     S3_4_C12_C13_\n, x4
    ret
    .endr

mrs_dispatch:                           // x1 = SysReg index -> x2 = value (0 if unknown)
    cmp     x1, #MSR_COUNT
    b.hs    1f
    adr     x3, mrs_table
    add     x3, x3, x1, lsl #3
    br      x3
1:  mov     x2, xzr
    ret
mrs_table:                              // same order as msr_table
    mrs     x2, sctlr_el1
    ret
    mrs     x2, ttbr0_el1
    ret
    mrs     x2, ttbr1_el1
    ret
    mrs     x2, tcr_el1
    ret
    mrs     x2, mair_el1
    ret
    mrs     x2, amair_el1
    ret
    mrs     x2, contextidr_el1
    ret
    mrs     x2, esr_el1
    ret
    mrs     x2, far_el1
    ret
    mrs     x2, afsr0_el1
    ret
    mrs     x2, afsr1_el1
    ret
    mrs     x2, elr_el1
    ret
    mrs     x2, spsr_el1
    ret
    mrs     x2, vbar_el1
    ret
    mrs     x2, mdscr_el1
    ret

save_el1:                               // EL1 context for Python's walks and decoding
    mrs     x0, sctlr_el1
    str     x0, [sp, #MB_SCTLR]
    mrs     x0, ttbr0_el1
    str     x0, [sp, #MB_TTBR0]
    mrs     x0, ttbr1_el1
    str     x0, [sp, #MB_TTBR1]
    mrs     x0, tcr_el1
    str     x0, [sp, #MB_TCR]
    mrs     x0, mair_el1
    str     x0, [sp, #MB_MAIR]
    mrs     x0, vbar_el1
    str     x0, [sp, #MB_VBAR]
    mrs     x0, sp_el0
    str     x0, [sp, #MB_SP_EL0]
    mrs     x0, sp_el1
    str     x0, [sp, #MB_SP_EL1]
    ret

unexpected:                             // x1 = vector offset; x0, x1 saved by the vector
    str     x1, [sp, #MB_VEC]
    mrs     x0, esr_el2
    str     x0, [sp, #MB_ESR]
    mrs     x0, elr_el2
    str     x0, [sp, #MB_ELR]
    mrs     x0, far_el2
    str     x0, [sp, #MB_FAR]
    mrs     x0, spsr_el2
    str     x0, [sp, #MB_SPSR]
    mov     w0, #KIND_UNEXPECTED
    str     w0, [sp, #MB_KIND]
    b       post_wait

park:                                   // a halted CPU sleeps here forever
    msr     daifset, #0xf
1:  wfi
    b       1b

    .ltorg

    .macro VEC_UNEXP off
    .balign 0x80
    stp     x0, x1, [sp, #MB_X]
    mov     x1, #\off
    b       unexpected
    .endm

    .balign 0x800
vectors:
    VEC_UNEXP 0x000                     // current EL, SP_EL0
    VEC_UNEXP 0x080
    VEC_UNEXP 0x100
    VEC_UNEXP 0x180
    VEC_UNEXP 0x200                     // current EL, SP_ELx
    VEC_UNEXP 0x280
    VEC_UNEXP 0x300
    VEC_UNEXP 0x380
    .balign 0x80                        // 0x400: lower EL, AArch64, synchronous
    stp     x0, x1, [sp, #MB_X]
#ifdef TRAP_FLOOR
    b       trap_floor
#else
    b       lower_sync
#endif
    .balign 0x80                        // 0x480: lower EL, AArch64, IRQ (guard armed)
    stp     x0, x1, [sp, #MB_X]
    b       lower_irq
    VEC_UNEXP 0x500
    VEC_UNEXP 0x580
    VEC_UNEXP 0x600                     // lower EL, AArch32
    VEC_UNEXP 0x680
    VEC_UNEXP 0x700
    VEC_UNEXP 0x780
