/* Test module 3: links against another module's exports (mod_counter: counter_add, GPL
 * counter_get), so it loads only after "counter" and resolves through that module's
 * __ksymtab / __ksymtab_gpl. */
#include "module.h"
MODULE_NAME("user");

u64 counter_add(u64 v);
u64 counter_get(void);

int init_module(void)
{
	u64 before = counter_get();
	u64 after = counter_add(7);
	printk("user module: init, counter %lu -> %lu\n", before, after);
	module_report(2, after - before);   /* 7 */
	return 0;
}

void cleanup_module(void)
{
	counter_add(100);
	printk("user module: exit, counter %lu\n", counter_get());
	module_report(2, 0x05e7);
}
