/* The user image and the test modules, embedded in rodata (built first by the Makefile). */
	.section ".rodata.blobs", "a"
	.balign	16
	.globl	user_image_start, user_image_end
user_image_start:
	.incbin	"user.bin"
user_image_end:
	.balign	16
	.globl	mod_hello_start, mod_hello_end
mod_hello_start:
	.incbin	"mod_hello.ko"
mod_hello_end:
	.balign	16
	.globl	mod_counter_start, mod_counter_end
mod_counter_start:
	.incbin	"mod_counter.ko"
mod_counter_end:
	.balign	16
	.globl	mod_user_start, mod_user_end
mod_user_start:
	.incbin	"mod_user.ko"
mod_user_end:
