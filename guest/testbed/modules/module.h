/* What a testbed module sees of the kernel: its exported symbols (kernel/ksymtab). */
typedef unsigned long long u64;
int printk(const char *fmt, ...);
void module_report(u64 id, u64 value);   /* GPL */
void *vmalloc(u64 size);
void vfree(void *p, u64 size);
extern u64 secvma_test_value;             /* GPL */
#define MODULE_NAME(n) static const char __modname[] __attribute__((section(".modinfo"), used)) = "name=" n
