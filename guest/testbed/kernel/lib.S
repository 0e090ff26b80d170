/* Small assembly helpers whose exact instructions matter to the hypervisor. */
	.text
	.globl	hvc_call
hvc_call:				// x0 = nr, x1..x5 = args -> x0
	hvc	#0
	ret

	/*
	 * Zero a page-table page with STP XZR, XZR, [Xn] (64-bit, signed offset, imm7 = 0):
	 * the one STP form KPCore emulates on free pool pages (docs/kpcore-spec.md §3.2).
	 */
	.globl	clear_table_page
clear_table_page:
	add	x1, x0, #4096
1:	stp	xzr, xzr, [x0]
	add	x0, x0, #16
	cmp	x0, x1
	b.lo	1b
	ret

	.globl	psci_system_off
psci_system_off:
	ldr	x0, =0x84000008
	smc	#0
	b	.

	.globl	cntvct
cntvct:
	isb
	mrs	x0, cntvct_el0
	ret
	.ltorg
