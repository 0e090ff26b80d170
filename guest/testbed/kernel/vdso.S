/* The vDSO page: lives in rodata, mapped into every process at USER_VDSO_VA, EL0-executable. */
	.section ".vdso.text", "ax"
	.globl	__vdso_text
__vdso_text:
	b	__vdso_clock		// +0
	b	__vdso_magic		// +4
__vdso_clock:
	isb
	mrs	x0, cntvct_el0
	ret
__vdso_magic:
	mov	x0, #0x7d50
	ret
