/*
 * Kernel entry: EL1h, MMU off, x0 = DTB PA, running at KERNEL_PA.
 *
 * The order is SECvma's contract: build the tables (early_paging_init, PA-only C), give the
 * hypervisor the boot information (HVC 6), then install the translation registers
 * (MAIR, TCR, TTBR0 = idmap, TTBR1 = swapper_pg_dir) and turn the MMU on with SCTLR. Under
 * KPCore these MSRs are the TVM-trapped writes it must accept once, at boot. Then jump high;
 * start_kernel replaces the idmap in TTBR0 through HVC 35 (no direct TTBR0 write after boot).
 */
#include "layout.h"
#include "hvabi.h"

	.section ".head.text", "ax"
	.globl	_start
_start:
	mov	x19, x0				// DTB
	msr	daifset, #0xf
	adrp	x0, __bss_start			// clear bss and the pgdir section (PA, aligned)
	add	x0, x0, :lo12:__bss_start
	adrp	x1, _end
	add	x1, x1, :lo12:_end
1:	stp	xzr, xzr, [x0], #16
	cmp	x0, x1
	b.lo	1b
	adrp	x0, init_stack_top		// boot stack (PA for now)
	add	x0, x0, :lo12:init_stack_top
	mov	sp, x0
	mov	x0, x19
	bl	early_paging_init		// -> x0 = PA of struct boot_regs (mm.c)
	ldp	x20, x21, [x0]			// boot-info PA, TCR
	ldp	x22, x23, [x0, #16]		// MAIR, SCTLR
	ldr	x24, [x0, #32]			// swapper_pg_dir PA

	mov	x1, x20				// HVC 6: ENABLE_S2_TRANS(boot_info PA)
	mov	x0, #HVC_ENABLE_S2_TRANS
	hvc	#0

	ldr	x0, =vectors			// VBAR_EL1 (not TVM-trapped): high VA
	msr	vbar_el1, x0
	msr	mair_el1, x22
	msr	tcr_el1, x21
	adrp	x0, idmap_pg_dir
	msr	ttbr0_el1, x0
	msr	ttbr1_el1, x24
	isb
	tlbi	vmalle1
	dsb	nsh
	msr	sctlr_el1, x23			// MMU on
	isb
	ldr	x8, =__primary_switched		// jump high
	br	x8

	.section ".init.text", "ax"
__primary_switched:
	ldr	x0, =init_stack_top
	mov	sp, x0
	ldr	x0, =probe_cpu			// CPU 0's probe context (TPIDR_EL1, see kernel.h)
	msr	tpidr_el1, x0
	mov	x29, xzr
	mov	x0, x19
	mov	x1, x20
	bl	start_kernel
	bl	kernel_main
	b	.

	.ltorg

/*
 * Secondary CPUs (PSCI CPU_ON from smp.c, x0 = context = CPU index): EL1, MMU off, at the PA
 * of secondary_entry. The same contract as the boot CPU: HVC 6 (this CPU's TVM and boot
 * window), then the five trapped MSRs with the values the boot CPU installed (boot_regs),
 * TTBR0 = idmap, jump high; secondary_start_kernel drops the idmap with HVC 35.
 */
	.text
	.globl	secondary_entry
secondary_entry:
	msr	daifset, #0xf
	mov	x19, x0				// CPU index
	adrp	x0, boot_regs			// PA (MMU off)
	add	x0, x0, :lo12:boot_regs
	ldp	x20, x21, [x0]			// boot-info PA, TCR
	ldp	x22, x23, [x0, #16]		// MAIR, SCTLR
	ldr	x24, [x0, #32]			// swapper_pg_dir PA
	mov	x1, x20
	mov	x0, #HVC_ENABLE_S2_TRANS
	hvc	#0
	ldr	x0, =vectors
	msr	vbar_el1, x0
	msr	mair_el1, x22
	msr	tcr_el1, x21
	adrp	x0, idmap_pg_dir
	msr	ttbr0_el1, x0
	msr	ttbr1_el1, x24
	isb
	tlbi	vmalle1
	dsb	nsh
	msr	sctlr_el1, x23			// MMU on
	isb
	ldr	x8, =__secondary_switched
	br	x8
__secondary_switched:
	ldr	x0, =secondary_stacks		// stack: secondary_stacks[cpu + 1] (top)
	add	x1, x19, #1
	lsl	x1, x1, #14			// 16 KiB each
	add	x0, x0, x1
	mov	sp, x0
	mov	x29, xzr
	mov	x0, x19
	bl	secondary_start_kernel
	b	.
	.ltorg
