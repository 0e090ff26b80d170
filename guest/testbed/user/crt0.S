/* EL0 entry: x0 = arg, x1 = program id (uprog.h); exit with main's return value. */
	.section ".text.start", "ax"
	.globl	_start
_start:
	bl	user_main
	mov	x8, #0			// SYS_EXIT
	svc	#0
	b	.
	.globl	syscall6
syscall6:				// (nr, a0..a4)
	mov	x8, x0
	mov	x0, x1
	mov	x1, x2
	mov	x2, x3
	mov	x3, x4
	mov	x4, x5
	svc	#0
	ret
