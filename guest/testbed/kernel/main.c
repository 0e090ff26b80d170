/* start_kernel (init text) and the kernel's main thread. */
#include "kernel.h"

u64 idmap_pg_dir[512] __attribute__((aligned(4096)));
u64 idmap_pud[512] __attribute__((aligned(4096)));
char init_stack[KSTACK_PAGES * 4096] __attribute__((aligned(16)));
__asm__(".globl init_stack_top\n.set init_stack_top, init_stack + " "16384");

/* a page of kernel data the attack primitives may scribble on (e.g. DC ZVA) */
u8 secvma_scratch[4096] __attribute__((aligned(4096), section(".data.scratch"))) = { 1 };
EXPORT_SYMBOL(secvma_scratch);

/* a GPL-only exported variable the test modules read */
u64 secvma_test_value = 1000;
EXPORT_SYMBOL_GPL(secvma_test_value);

__init void start_kernel(u64 dtb, u64 boot_info_pa)
{
	paging_init_late();
	mm_init(dtb);
	uart_set_base((u64)ioremap(UART_PA, PAGE_SIZE));
	printk("\nsecvma testbed kernel: EL%lu, MMU on, text %lx, boot info at pa %lx\n",
	       (read_sysreg(CurrentEL) >> 2) & 3, (u64)_text, boot_info_pa);
	mm_report();
	sched_init();
	gic_init();
	timer_init();
	printk("ksymtab: %lu symbols (+%lu GPL)\n",
	       (u64)(__stop___ksymtab - __start___ksymtab) / sizeof(struct kernel_symbol),
	       (u64)(__stop___ksymtab_gpl - __start___ksymtab_gpl) / sizeof(struct kernel_symbol));
}

void kernel_main(void)
{
	free_initmem();
	smp_init();
	cmd_loop();
}
