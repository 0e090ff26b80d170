/* Test module 1: calls (CALL26), rodata through ADRP/ADD, a pointer in data (ABS64). */
#include "module.h"
MODULE_NAME("hello");

static const char *volatile greeting = "HELLO";   /* a pointer in .data: ABS64 */

int init_module(void)
{
	u64 v = 0;
	for (int i = 0; i < 5; i++)
		v = (v << 8) | (u64)greeting[i];
	printk("hello module: init\n");
	module_report(0, v);    /* 0x48454c4c4f */
	return 0;
}

void cleanup_module(void)
{
	printk("hello module: exit\n");
	module_report(0, 0xb7e);
}
