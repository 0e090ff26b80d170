/*
 * Attack primitives: one function per (store form, width), so each store is exactly one known
 * instruction encoding. Called through probe_call: x0 = address, x1 = value, x2 = value2.
 * Return x0 = 0, except the STXR forms, which return the exclusive status (0 = stored).
 */
	.text
	.macro	prim, name, insn:vararg
	.globl	\name
\name:
	\insn
	mov	x0, #0
	ret
	.endm

	prim	pw_str_1,  strb w1, [x0]
	prim	pw_str_2,  strh w1, [x0]
	prim	pw_str_4,  str w1, [x0]
	prim	pw_str_8,  str x1, [x0]
	prim	pw_stur_1, sturb w1, [x0, #0]
	prim	pw_stur_2, sturh w1, [x0, #0]
	prim	pw_stur_4, stur w1, [x0, #0]
	prim	pw_stur_8, stur x1, [x0, #0]
	prim	pw_sreg_1, strb w1, [x0, xzr]
	prim	pw_sreg_2, strh w1, [x0, xzr]
	prim	pw_sreg_4, str w1, [x0, xzr]
	prim	pw_sreg_8, str x1, [x0, xzr]
	prim	pw_pre_4,  str w1, [x0, #0]!
	prim	pw_pre_8,  str x1, [x0, #0]!
	prim	pw_post_4, str w1, [x0], #0
	prim	pw_post_8, str x1, [x0], #0
	prim	pw_stp_4,  stp w1, w2, [x0]
	prim	pw_stp_8,  stp x1, x2, [x0]
	prim	pw_stpz_8, stp xzr, xzr, [x0]
	prim	pw_stlr_1, stlrb w1, [x0]
	prim	pw_stlr_2, stlrh w1, [x0]
	prim	pw_stlr_4, stlr w1, [x0]
	prim	pw_stlr_8, stlr x1, [x0]
	prim	pw_sttr_1, sttrb w1, [x0]
	prim	pw_sttr_2, sttrh w1, [x0]
	prim	pw_sttr_4, sttr w1, [x0]
	prim	pw_sttr_8, sttr x1, [x0]
	prim	pw_stnp_8, stnp x1, x2, [x0]
	prim	pw_dczva_8, dc zva, x0

	.globl	pw_stxr_4
pw_stxr_4:
	ldxr	w3, [x0]
	stxr	w4, w1, [x0]
	mov	w0, w4
	ret
	.globl	pw_stxr_8
pw_stxr_8:
	ldxr	x3, [x0]
	stxr	w4, x1, [x0]
	mov	w0, w4
	ret

	.globl	pw_stlxr_4
pw_stlxr_4:
	ldxr	w3, [x0]
	stlxr	w4, w1, [x0]
	mov	w0, w4
	ret
	.globl	pw_stlxr_8
pw_stlxr_8:
	ldxr	x3, [x0]
	stlxr	w4, x1, [x0]
	mov	w0, w4
	ret

/* SIMD stores of value | value2 << 64 through v0 (FP/SIMD enabled at EL1 first: CPACR.FPEN) */
	.macro	simd_prim, name, insn:vararg
	.globl	\name
\name:
	mrs	x3, cpacr_el1
	orr	x3, x3, #(3 << 20)
	msr	cpacr_el1, x3
	isb
	fmov	d0, x1
	fmov	v0.d[1], x2
	\insn
	mov	x0, #0
	ret
	.endm
	simd_prim pw_strq_16, str q0, [x0]
	simd_prim pw_st1_16, st1 {v0.16b}, [x0]

/* FEAT_LSE atomics (UNDEFINED on a v8.0 CPU such as cortex-a57: the probe reports EC 0) */
	.arch_extension lse
	.globl	pw_cas_8
pw_cas_8:
	ldr	x3, [x0]
	cas	x3, x1, [x0]
	mov	x0, #0
	ret
	prim	pw_swp_8, swp x1, x3, [x0]
	prim	pw_ldadd_8, ldadd x1, x3, [x0]

	.globl	pr_ldr_1, pr_ldr_2, pr_ldr_4, pr_ldr_8
pr_ldr_1: ldrb	w0, [x0]
	ret
pr_ldr_2: ldrh	w0, [x0]
	ret
pr_ldr_4: ldr	w0, [x0]
	ret
pr_ldr_8: ldr	x0, [x0]
	ret

/* exec target for the "execute at an address" primitive: returns its argument + 0x5ec0 */
	.globl	testbed_exec_target
testbed_exec_target:
	mov	x1, #0x5ec0
	add	x0, x0, x1
	ret

/* exec primitive: call x0 with x1 as argument */
	.globl	px_call
px_call:
	stp	x29, x30, [sp, #-16]!
	mov	x16, x0
	mov	x0, x1
	blr	x16
	ldp	x29, x30, [sp], #16
	ret

	/* system registers by secvma.platform.SysReg index: x0 = index, x1 = value */
	.globl	pm_msr
pm_msr:
	cmp	x0, #14
	b.hi	9f
	adr	x9, 1f
	add	x9, x9, x0, lsl #3
	br	x9
1:	msr	sctlr_el1, x1
	b	8f
	msr	ttbr0_el1, x1
	b	8f
	msr	ttbr1_el1, x1
	b	8f
	msr	tcr_el1, x1
	b	8f
	msr	mair_el1, x1
	b	8f
	msr	amair_el1, x1
	b	8f
	msr	contextidr_el1, x1
	b	8f
	msr	esr_el1, x1
	b	8f
	msr	far_el1, x1
	b	8f
	msr	afsr0_el1, x1
	b	8f
	msr	afsr1_el1, x1
	b	8f
	msr	elr_el1, x1
	b	8f
	msr	spsr_el1, x1
	b	8f
	msr	vbar_el1, x1
	b	8f
	msr	mdscr_el1, x1
	b	8f
8:	isb
	mov	x0, #0
	ret
9:	mov	x0, #1
	ret

	.globl	pm_mrs			// x0 = index -> x0 = value
pm_mrs:
	and	x0, x0, #15
	adr	x9, 1f
	add	x9, x9, x0, lsl #3
	br	x9
1:	mrs	x0, sctlr_el1
	ret
	mrs	x0, ttbr0_el1
	ret
	mrs	x0, ttbr1_el1
	ret
	mrs	x0, tcr_el1
	ret
	mrs	x0, mair_el1
	ret
	mrs	x0, amair_el1
	ret
	mrs	x0, contextidr_el1
	ret
	mrs	x0, esr_el1
	ret
	mrs	x0, far_el1
	ret
	mrs	x0, afsr0_el1
	ret
	mrs	x0, afsr1_el1
	ret
	mrs	x0, elr_el1
	ret
	mrs	x0, spsr_el1
	ret
	mrs	x0, vbar_el1
	ret
	mrs	x0, mdscr_el1
	ret
	mov	x0, #0
	ret

	.globl	pm_hvc			// x0 = nr, x1..x5 -> x0
pm_hvc:
	hvc	#0
	ret

	.globl	pm_at			// x0 = va, x1 = write -> PAR_EL1
pm_at:
	cbnz	x1, 1f
	at	s1e1r, x0
	b	2f
1:	at	s1e1w, x0
2:	isb
	mrs	x0, par_el1
	ret
