/* Test module 2: bss and data (LDST64_ABS_LO12_NC), function pointers (ABS64), a kernel
 * GPL variable (ADRP + LDR), vmalloc/vfree from the kernel. Exports counter_add and
 * counter_get (module-to-module linking: mod_user). */
#include "module.h"
MODULE_NAME("counter");

static u64 counter;
static u64 table[100];
static int (*volatile hook)(int) ;

static int add_one(int x) { return x + 1; }

u64 counter_add(u64 v)
{
	counter += v;
	return counter;
}
EXPORT_SYMBOL(counter_add);

u64 counter_get(void)
{
	return counter;
}
EXPORT_SYMBOL_GPL(counter_get);

int init_module(void)
{
	hook = add_one;
	u64 *buf = vmalloc(8192);
	if (!buf)
		return -12;
	for (int i = 0; i < 100; i++)
		table[i] = (u64)i;
	for (int i = 0; i < 100; i++) {
		buf[i * 10] = table[i];
		counter += buf[i * 10];
	}
	vfree(buf, 8192);
	counter += secvma_test_value;   /* 4950 + 1000 */
	printk("counter module: init, counter %lu\n", counter);
	module_report(1, counter);
	return hook(-1);
}

void cleanup_module(void)
{
	printk("counter module: exit\n");
	module_report(1, 0xc0de);
}
