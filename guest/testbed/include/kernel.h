/* Common declarations of the testbed kernel. */
#ifndef KERNEL_H
#define KERNEL_H

#include "hvabi.h"
#include "layout.h"

#define NULL ((void *)0)
typedef unsigned long size_t;
typedef _Bool bool;
typedef short s16;
typedef int s32;
#define true 1
#define false 0

#define PAGE_SIZE 4096UL
#define PAGE_MASK (~(PAGE_SIZE - 1))
#define ALIGN_UP(x, a) (((x) + (a) - 1) & ~((u64)(a) - 1))
#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define READ_ONCE(x) (*(volatile __typeof__(x) *)&(x))
#define WRITE_ONCE(x, v) (*(volatile __typeof__(x) *)&(x) = (v))
#define __init __attribute__((section(".init.text"), noinline))
#define __noreturn __attribute__((noreturn))

#define dsb(opt) asm volatile("dsb " #opt ::: "memory")
#define isb() asm volatile("isb" ::: "memory")
#define barrier() asm volatile("" ::: "memory")
#define read_sysreg(r) ({ u64 __v; asm volatile("mrs %0, " #r : "=r"(__v)); __v; })
#define write_sysreg(v, r) asm volatile("msr " #r ", %0" :: "r"((u64)(v)))

/* Linux's EXPORT_SYMBOL: one entry per symbol in ___ksymtab+name, sorted by the linker. */
#define __EXPORT(sym, sec)                                                              \
	static const char __kstrtab_##sym[] __attribute__((section("__ksymtab_strings"), used)) = #sym; \
	static const struct kernel_symbol __ksymtab_##sym                                  \
	__attribute__((section(sec #sym), used, aligned(8))) = { (u64)&sym, (u64)__kstrtab_##sym }
#define EXPORT_SYMBOL(sym) __EXPORT(sym, "___ksymtab+")
#define EXPORT_SYMBOL_GPL(sym) __EXPORT(sym, "___ksymtab_gpl+")

/* linker symbols */
extern char _text[], _etext[], __start_rodata[], __init_begin[], __inittext_begin[],
	__inittext_end[], _data[], _edata[], __bss_start[], __bss_stop[], _end[],
	__vdso_start[], __vdso_end[], vectors[], empty_zero_page[], swapper_pg_dir[],
	__start___ksymtab[], __stop___ksymtab[], __start___ksymtab_gpl[], __stop___ksymtab_gpl[];

/* address conversion */
extern u64 kimage_voffset, memstart, ram_end;
#define __pa_symbol(p) ((u64)(p) - kimage_voffset)
#define __va(pa) ((void *)((u64)(pa) - PHYS_OFFSET + PAGE_OFFSET))
#define __pa(va) ((u64)(va) - PAGE_OFFSET + PHYS_OFFSET)
#define is_linear(va) ((u64)(va) >= PAGE_OFFSET && (u64)(va) < PAGE_OFFSET + (1ULL << 46))
u64 virt_to_phys(const void *va);

/* lib.c */
void *memset(void *s, int c, size_t n);
void *memcpy(void *d, const void *s, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
int strcmp(const char *a, const char *b);
int strncmp(const char *a, const char *b, size_t n);
char *strncpy_z(char *d, const char *s, size_t n);
int snprintf(char *buf, size_t n, const char *fmt, ...);
int printk(const char *fmt, ...);
__noreturn void panic(const char *fmt, ...);
u64 cntvct(void);
u64 ticks_to_us(u64 t);

/* uart.c */
void uart_putc(char c);
void uart_set_base(u64 va);

/* asm helpers (entry.S, lib.S) */
u64 hvc_call(u64 nr, u64 a1, u64 a2, u64 a3, u64 a4, u64 a5);
void clear_table_page(void *va);            /* STP XZR, XZR loop (what KPCore emulates) */
__noreturn void psci_system_off(void);

/* mm.c: physical pages */
struct bitmap_alloc { u64 *bits; u64 base, npages, hint, nfree; };
u64 bm_alloc(struct bitmap_alloc *b, u64 n, u64 align_pages);
void bm_free(struct bitmap_alloc *b, u64 pa, u64 n);
void bm_reserve(struct bitmap_alloc *b, u64 pa, u64 n);
void mm_init(u64 dtb);
void mm_report(void);
u64 alloc_pages(u64 n);            /* zeroed, PA; 0 when out of memory */
void free_pages(u64 pa, u64 n);
u64 pgtable_alloc(void);           /* kernel page-table pool page, zeroed by STP XZR */
void pgtable_free(u64 pa);
u64 modpool_alloc(int ro, u64 n);  /* module text / ro pool pages */
void modpool_free(int ro, u64 pa, u64 n);
u64 early_pgtable_alloc(void);
void mm_fill_boot_info(struct secvma_boot_info *bi);
extern struct bitmap_alloc page_bm, pgtable_bm, modtext_bm, modro_bm;
void free_initmem(void);

/* pgtable.c: kernel page tables */
#define PROT_KERNEL_RW   0
#define PROT_KERNEL_RO   1
#define PROT_KERNEL_RX   2
#define PROT_KERNEL_RWX  3
#define PROT_DEVICE      4
u64 prot_bits(int prot);
int map_kernel_page(u64 va, u64 pa, u64 attrs);
u64 unmap_kernel_page(u64 va);     /* returns the old PA (0 if none) */
u64 *kernel_pte(u64 va, int alloc);
void flush_tlb_kernel(u64 va);
void *vmap_range(u64 pa, u64 size, int prot);     /* into the vmalloc area */
void vunmap_range(void *va, u64 size);
void *vmalloc(u64 size);
void vfree(void *va, u64 size);
void *ioremap(u64 pa, u64 size);
u64 va_alloc(struct bitmap_alloc *b, u64 npages);
extern struct bitmap_alloc vmalloc_bm, modva_bm;
void paging_init_late(void);

/* gic.c / timer.c */
void gic_init(void);
u32 gic_ack(void);
void gic_eoi(u32 irq);
void timer_init(void);
void timer_tick(void);
extern volatile u64 jiffies;

/* virtio.c: PCI + virtio-blk (the DMA-capable device behind the SMMU) */
int virtio_blk_init(void);
int virtio_blk_rw(int dir, u64 sector, u64 iova, u64 len);
const char *virtio_blk_error(void);
int dma_command(const u64 *a, u64 *ret, char *msg, u64 len);
int wl_dma(char *msg, u64 len);
int wl_dma_static(char *msg, u64 len);
#define NR_CPUS 4
/* exceptions (traps.c) */
struct pt_regs { u64 regs[31]; u64 sp, pc, pstate; };
struct probe_ctx { u64 active, faulted, esr, far, sp, saved[12]; };
extern struct probe_ctx probe_cpu[NR_CPUS];
/* each CPU's probe (TPIDR_EL1 points at it: set by head.S / secondary_start_kernel) */
#define probe (*(struct probe_ctx *)read_sysreg(tpidr_el1))
u64 probe_call(void *fn, u64 a, u64 b, u64 c, u64 d);
void local_irq_enable(void);
void local_irq_disable(void);
void idle_wait(void);

/* sched.c */
#define NTASKS 48
#define NFD 16
#define KSTACK_PAGES 4
enum { T_UNUSED, T_RUNNABLE, T_BLOCKED, T_ZOMBIE };
struct cpu_context { u64 x19, x20, x21, x22, x23, x24, x25, x26, x27, x28, fp, sp, pc; };
struct vma { u64 start, end; };
#define NVMA 32
struct mm { u64 pgd; u16 asid; struct vma vma[NVMA]; u64 mmap_next; };
struct file;
struct task {
	struct cpu_context ctx;    /* must stay first: cpu_switch_to saves here */
	int pid, state, exit_code;
	struct task *parent;
	struct mm *mm;
	u64 kstack;                /* PA of the kernel stack pages */
	struct file *fd[NFD];
	void *wchan;
	char name[16];
};
extern struct task tasks[NTASKS];
extern struct task *current;
extern volatile int need_resched;
void sched_init(void);
void schedule(void);
void sleep_on(void *wchan);
void wake_up(void *wchan);
int spawn_user(const char *prog, u64 arg, struct task *parent);
int wait_task(int pid, int *status);
__noreturn void do_exit(int code);
void reap_orphans(void);
int runnable_others(void);
struct pt_regs *task_pt_regs(struct task *t);
void switch_mm(struct mm *mm);
extern struct mm *active_mm;
extern u64 reserved_pgd;
#define STATUS_KILLED_SEGV (-11)
#define STATUS_KILLED_ILL  (-4)

/* uvm.c: user address spaces */
struct mm *mm_create(void);
void mm_destroy(struct mm *mm);
int map_user(struct mm *mm, u64 va, u64 size, int exec);
int unmap_user(struct mm *mm, u64 va, u64 size);
int user_ok(struct mm *mm, u64 va, u64 size, int write);
u64 mmap_anon(struct mm *mm, u64 size);
u64 user_pa(struct mm *mm, u64 va);
int load_user_program(struct mm *mm, u64 *entry, u64 *sp);
u64 alloc_asid(void);

/* syscall.c */
void do_syscall(struct pt_regs *regs);
struct file *file_get(struct file *f);
void file_put(struct file *f);
int sys_pipe_kernel(int fds[2]);

/* module.c */
struct loaded_module;
int module_load(const void *image, u64 len, u64 flags, int *handle, u64 *modid, int *init_rc,
		char *msg, u64 msglen);
int module_unload(int handle, char *msg, u64 msglen);
u64 ksym_lookup(const char *name);
void module_report(u64 id, u64 value);
extern u64 module_reports[8];

/* smp.c: secondary CPUs (PSCI CPU_ON) and the race coordination block */
struct secvma_race {
	u64 ready;      /* spinner: in its loop, waiting for go */
	u64 go;         /* CPU0: start spinning now */
	u64 stop;       /* CPU0: stop */
	u64 iters;      /* spinner: iterations since go */
	u64 arm;        /* host: RACE_ARM_* for CPU0's next command */
	u64 min_iters;  /* host: CPU0 waits for this many spinner iterations before its op */
	u64 before, after;          /* spinner iterations just before / after CPU0's op */
	u64 hvc_before, hvc_after;  /* same around HVC 30 (module loads) */
	u64 watch, watch_val;       /* host: VA CPU0 reads right after its op -> value */
	u64 last;       /* spinner: last HVC result */
	u64 cpu_mask;   /* CPUs online (bit n) */
};
#define RACE_ARM_CMD 1
#define RACE_SPIN_STORE    0   /* str value, [addr] */
#define RACE_SPIN_INDIRECT 1   /* p = *addr; if p: str value, [p + off] */
#define RACE_SPIN_HVC35    2   /* hvc 35 (addr = ttbr0, value = asid) */
extern struct secvma_race secvma_race;
extern struct secvma_cmd secvma_cpu_cmd[NR_CPUS];
void smp_init(void);
void race_begin(void);
void race_end(void);
u64 race_spin(u64 addr, u64 value, u64 mode, u64 off);
extern volatile u64 module_tmp_image, module_run_text;
void run_command(struct secvma_cmd *c);

/* cmd.c / workloads.c */
void cmd_loop(void);
int run_workload(const char *name, char *msg, u64 msglen);
extern struct secvma_cmd secvma_cmd;

/* user programs embedded in rodata (blobs.S) */
extern char user_image_start[], user_image_end[];
extern char mod_hello_start[], mod_hello_end[], mod_counter_start[], mod_counter_end[],
	mod_user_start[], mod_user_end[];

#endif
