// SPDX-License-Identifier: GPL-2.0
/*
 * secvma_unsigned: a module nobody signed. Loading it is the attack (`UNSIGNED_MODULE`):
 * without a hypervisor the kernel (CONFIG_MODULE_SIG without FORCE) only taints itself and
 * runs its init; under `transparent` its text must never become executable.
 */
#include <linux/module.h>

static int secvma_unsigned_value;

static int __init secvma_unsigned_init(void)
{
	secvma_unsigned_value = 42;
	pr_info("secvma_unsigned: init ran, value %d\n", secvma_unsigned_value);
	return 0;
}

static void __exit secvma_unsigned_exit(void)
{
}

module_init(secvma_unsigned_init);
module_exit(secvma_unsigned_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("secvma: an unsigned module (attack scenario UNSIGNED_MODULE)");
