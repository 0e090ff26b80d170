/* Exception vectors, entry/exit, context switch and the probe (fault-catching call). */
#define S_FRAME 272		/* struct pt_regs: x0..x30, sp, pc, pstate */

	.macro	kernel_entry, el
	sub	sp, sp, #S_FRAME
	stp	x0, x1, [sp, #16 * 0]
	stp	x2, x3, [sp, #16 * 1]
	stp	x4, x5, [sp, #16 * 2]
	stp	x6, x7, [sp, #16 * 3]
	stp	x8, x9, [sp, #16 * 4]
	stp	x10, x11, [sp, #16 * 5]
	stp	x12, x13, [sp, #16 * 6]
	stp	x14, x15, [sp, #16 * 7]
	stp	x16, x17, [sp, #16 * 8]
	stp	x18, x19, [sp, #16 * 9]
	stp	x20, x21, [sp, #16 * 10]
	stp	x22, x23, [sp, #16 * 11]
	stp	x24, x25, [sp, #16 * 12]
	stp	x26, x27, [sp, #16 * 13]
	stp	x28, x29, [sp, #16 * 14]
	.if	\el == 0
	mrs	x21, sp_el0
	.else
	add	x21, sp, #S_FRAME
	.endif
	mrs	x22, elr_el1
	mrs	x23, spsr_el1
	stp	x30, x21, [sp, #8 * 30]
	stp	x22, x23, [sp, #8 * 32]
	.endm

	.macro	kernel_exit, el
	ldp	x22, x23, [sp, #8 * 32]
	msr	elr_el1, x22
	msr	spsr_el1, x23
	.if	\el == 0
	ldr	x21, [sp, #8 * 31]
	msr	sp_el0, x21
	.endif
	ldp	x0, x1, [sp, #16 * 0]
	ldp	x2, x3, [sp, #16 * 1]
	ldp	x4, x5, [sp, #16 * 2]
	ldp	x6, x7, [sp, #16 * 3]
	ldp	x8, x9, [sp, #16 * 4]
	ldp	x10, x11, [sp, #16 * 5]
	ldp	x12, x13, [sp, #16 * 6]
	ldp	x14, x15, [sp, #16 * 7]
	ldp	x16, x17, [sp, #16 * 8]
	ldp	x18, x19, [sp, #16 * 9]
	ldp	x20, x21, [sp, #16 * 10]
	ldp	x22, x23, [sp, #16 * 11]
	ldp	x24, x25, [sp, #16 * 12]
	ldp	x26, x27, [sp, #16 * 13]
	ldp	x28, x29, [sp, #16 * 14]
	ldr	x30, [sp, #8 * 30]
	add	sp, sp, #S_FRAME
	eret
	.endm

	.macro	ventry, label
	.align	7
	b	\label
	.endm

	.text
	.align	11
	.globl	vectors
vectors:
	ventry	bad_sync		// EL1t
	ventry	bad_irq
	ventry	bad_fiq
	ventry	bad_serror
	ventry	el1_sync		// EL1h
	ventry	el1_irq
	ventry	bad_fiq
	ventry	bad_serror
	ventry	el0_sync		// EL0 AArch64
	ventry	el0_irq
	ventry	bad_fiq
	ventry	bad_serror
	ventry	bad_sync		// EL0 AArch32
	ventry	bad_irq
	ventry	bad_fiq
	ventry	bad_serror

	.macro	bad, n
	kernel_entry 1
	mov	x0, sp
	mov	x1, #\n
	bl	bad_mode
	.endm
bad_sync:	bad 0
bad_irq:	bad 1
bad_fiq:	bad 2
bad_serror:	bad 3

el1_sync:
	kernel_entry 1
	mov	x0, sp
	bl	el1_sync_handler
	kernel_exit 1

el1_irq:
	kernel_entry 1
	bl	irq_handler
	kernel_exit 1

el0_sync:
	kernel_entry 0
	mov	x0, sp
	bl	el0_sync_handler
	b	ret_to_user

el0_irq:
	kernel_entry 0
	bl	irq_handler
	b	ret_to_user

	.globl	ret_to_user
ret_to_user:
	msr	daifset, #2
	bl	user_return_work	// reschedule if the tick asked for it
	kernel_exit 0

/* cpu_switch_to(prev, next): save callee-saved state of prev, load next's. */
	.globl	cpu_switch_to
cpu_switch_to:
	mov	x10, sp
	stp	x19, x20, [x0, #16 * 0]
	stp	x21, x22, [x0, #16 * 1]
	stp	x23, x24, [x0, #16 * 2]
	stp	x25, x26, [x0, #16 * 3]
	stp	x27, x28, [x0, #16 * 4]
	stp	x29, x10, [x0, #16 * 5]
	str	x30, [x0, #16 * 6]
	ldp	x19, x20, [x1, #16 * 0]
	ldp	x21, x22, [x1, #16 * 1]
	ldp	x23, x24, [x1, #16 * 2]
	ldp	x25, x26, [x1, #16 * 3]
	ldp	x27, x28, [x1, #16 * 4]
	ldp	x29, x10, [x1, #16 * 5]
	ldr	x30, [x1, #16 * 6]
	mov	sp, x10
	ret

/* First run of a new task: its kernel stack top holds the pt_regs of its EL0 entry. */
	.globl	ret_from_fork
ret_from_fork:
	b	ret_to_user

/*
 * probe_call(fn, a, b, c, d): call fn(a, b, c, d) so that a synchronous exception inside it
 * is caught (like a Linux exception-table fixup): el1_sync_handler sees probe.active, records
 * ESR/FAR and resumes at probe_recover, which restores this frame and returns 0.
 */
	.globl	probe_call
probe_call:
	mrs	x9, tpidr_el1		// this CPU's probe_ctx
	mov	x10, sp
	str	x10, [x9, #32]
	stp	x19, x20, [x9, #40]
	stp	x21, x22, [x9, #56]
	stp	x23, x24, [x9, #72]
	stp	x25, x26, [x9, #88]
	stp	x27, x28, [x9, #104]
	stp	x29, x30, [x9, #120]
	str	xzr, [x9, #8]		// faulted = 0
	mov	x10, #1
	str	x10, [x9]		// active = 1
	mov	x16, x0
	mov	x0, x1
	mov	x1, x2
	mov	x2, x3
	mov	x3, x4
	blr	x16
	mrs	x9, tpidr_el1		// this CPU's probe_ctx
	str	xzr, [x9]
	ldp	x29, x30, [x9, #120]
	ret

	.globl	probe_recover
probe_recover:
	mrs	x9, tpidr_el1		// this CPU's probe_ctx
	str	xzr, [x9]
	ldr	x10, [x9, #32]
	mov	sp, x10
	ldp	x19, x20, [x9, #40]
	ldp	x21, x22, [x9, #56]
	ldp	x23, x24, [x9, #72]
	ldp	x25, x26, [x9, #88]
	ldp	x27, x28, [x9, #104]
	ldp	x29, x30, [x9, #120]
	mov	x0, #0
	ret

	.globl	local_irq_enable
local_irq_enable:
	msr	daifclr, #2
	ret
	.globl	local_irq_disable
local_irq_disable:
	msr	daifset, #2
	ret
/* Sleep until an interrupt, take it, and come back with IRQs masked again. */
	.globl	idle_wait
idle_wait:
	dsb	sy
	wfi
	msr	daifclr, #2
	isb
	msr	daifset, #2
	ret
