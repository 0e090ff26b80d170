/* What a testbed module sees of the kernel: its exported symbols (kernel/ksymtab). */
typedef unsigned long long u64;
int printk(const char *fmt, ...);
void module_report(u64 id, u64 value);   /* GPL */
void *vmalloc(u64 size);
void vfree(void *p, u64 size);
extern u64 secvma_test_value;             /* GPL */
#define MODULE_NAME(n) static const char __modname[] __attribute__((section(".modinfo"), used)) = "name=" n

/* Linux 6.1 arm64 EXPORT_SYMBOL: `struct kernel_symbol {int value_offset, name_offset,
 * namespace_offset;}` (PREL32) in ___ksymtab+<name>, merged and sorted by module.lds. */
#define __EXPORT(sym, sec)                                                              \
	static const char __kstrtab_##sym[] __attribute__((section("__ksymtab_strings"), used, aligned(1))) = #sym; \
	asm(".section \"" sec #sym "\", \"a\"\n\t.balign 4\n__ksymtab_" #sym ":\n"          \
	    "\t.long " #sym " - .\n\t.long __kstrtab_" #sym " - .\n\t.long 0\n\t.previous\n")
#define EXPORT_SYMBOL(sym) __EXPORT(sym, "___ksymtab+")
#define EXPORT_SYMBOL_GPL(sym) __EXPORT(sym, "___ksymtab_gpl+")
