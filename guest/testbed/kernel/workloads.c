/*
 * Workloads run by host command. Each one checks its own results and returns 0 (ok) or -1
 * with an explanation in msg. The user-space halves live in guest/testbed/user/.
 */
#include "kernel.h"
#include "uprog.h"

#define HB_GROUPS 4
#define HB_PAIRS 5      /* senders = receivers per group (fd table: 13 free slots) */
#define HB_LOOPS 25
#define KB_WORKERS 4
#define KB_ITERS 40
#define KB_VMALLOC_ROUNDS 64

static int run_user(const char *prog, u64 arg, int *status)
{
	int pid = spawn_user(prog, arg, current);
	if (pid < 0)
		return pid;
	return wait_task(pid, status) == pid ? 0 : -1;
}

/* hackbench: groups of senders and receivers over pipes, every message checksummed. */
static int wl_hackbench(char *msg, u64 len)
{
	int st = -1;
	u64 arg = (u64)HB_GROUPS << 16 | HB_PAIRS << 8 | HB_LOOPS;
	if (run_user("hackbench", arg, &st) || st) {
		snprintf(msg, len, "hackbench: user program exited with %d", st);
		return -1;
	}
	snprintf(msg, len, "hackbench: %d groups x %d senders x %d receivers x %d loops, checksums ok",
		 HB_GROUPS, HB_PAIRS, HB_PAIRS, HB_LOOPS);
	return 0;
}

/* kernbench: vmalloc/vfree churn in the kernel (kernel PTE stores), then processes doing
 * spawn, mmap/munmap, page touching and syscalls, each verifying what it wrote. */
static int wl_kernbench(char *msg, u64 len)
{
	for (int r = 0; r < KB_VMALLOC_ROUNDS; r++) {
		u64 size = (u64)(1 + r % 4) * 4 * PAGE_SIZE;
		u64 *p = vmalloc(size);
		if (!p)
			return snprintf(msg, len, "kernbench: vmalloc(%lu) failed", size), -1;
		for (u64 i = 0; i < size / 8; i += 64)
			p[i] = i * 0x9e3779b97f4a7c15ULL + (u64)r;
		for (u64 i = 0; i < size / 8; i += 64)
			if (p[i] != i * 0x9e3779b97f4a7c15ULL + (u64)r)
				return snprintf(msg, len, "kernbench: vmalloc data mismatch"), -1;
		vfree(p, size);
	}
	int st = -1;
	if (run_user("kernbench", (u64)KB_WORKERS << 16 | KB_ITERS, &st) || st) {
		snprintf(msg, len, "kernbench: user program exited with %d", st);
		return -1;
	}
	snprintf(msg, len, "kernbench: %d vmalloc rounds, %d workers x %d mmap/touch/munmap rounds, "
		 "2 CPU-bound tasks preempted, ok",
		 KB_VMALLOC_ROUNDS, KB_WORKERS, KB_ITERS);
	return 0;
}

/* modules: load the two test modules through the module path, check what their init and
 * exit report (module_report), unload them. */
static int wl_modules(char *msg, u64 len)
{
	struct { const char *start, *end; u64 id, init_val, exit_val; } tm[] = {
		{ mod_hello_start, mod_hello_end, 0, 0x48454c4c4f, 0xb7e },
		{ mod_counter_start, mod_counter_end, 1, 4950 + 1000, 0xc0de },
	};
	char m[CMD_MSG_LEN];
	int prot = 0;
	for (u64 i = 0; i < ARRAY_SIZE(tm); i++) {
		int h, rc;
		u64 modid;
		module_reports[tm[i].id] = 0;
		if (module_load(tm[i].start, (u64)(tm[i].end - tm[i].start), 0, &h, &modid, &rc, m, sizeof(m)))
			return snprintf(msg, len, "modules: %s", m), -1;
		prot += modid != HVC_INVALID;
		if (module_reports[tm[i].id] != tm[i].init_val) {
			snprintf(msg, len, "modules: init of #%lu reported %lx, want %lx", i,
				 module_reports[tm[i].id], tm[i].init_val);
			module_unload(h, m, sizeof(m));
			return -1;
		}
		if (module_unload(h, m, sizeof(m)))
			return snprintf(msg, len, "modules: %s", m), -1;
		if (module_reports[tm[i].id] != tm[i].exit_val)
			return snprintf(msg, len, "modules: exit of #%lu reported %lx", i,
					module_reports[tm[i].id]), -1;
	}
	snprintf(msg, len, "modules: 2 modules loaded, initialised, unloaded (%s)",
		 prot ? "EL2 loader" : "kernel-side loader");
	return 0;
}

/* faults: EL0 processes that touch kernel memory or jump into it are killed; the kernel goes on. */
static int wl_faults(char *msg, u64 len)
{
	struct { const char *prog; u64 arg; int want; } cases[] = {
		{ "read", KIMAGE_VADDR, STATUS_KILLED_SEGV },
		{ "write", (u64)&secvma_cmd, STATUS_KILLED_SEGV },
		{ "read", PAGE_OFFSET + (KERNEL_PA - PHYS_OFFSET), STATUS_KILLED_SEGV },
		{ "exec", KIMAGE_VADDR, STATUS_KILLED_SEGV },
		{ "read", 0x10, STATUS_KILLED_SEGV },
		{ "exit", 7, 7 },
	};
	for (u64 i = 0; i < ARRAY_SIZE(cases); i++) {
		int st = 0;
		if (run_user(cases[i].prog, cases[i].arg, &st) || st != cases[i].want)
			return snprintf(msg, len, "faults: %s(%lx) ended with %d, want %d", cases[i].prog,
					cases[i].arg, st, cases[i].want), -1;
	}
	snprintf(msg, len, "faults: %lu EL0 processes, bad accesses killed, kernel fine", ARRAY_SIZE(cases));
	return 0;
}

static const struct { const char *name; int (*fn)(char *, u64); } workloads[] = {
	{ "hackbench", wl_hackbench },
	{ "kernbench", wl_kernbench },
	{ "modules", wl_modules },
	{ "faults", wl_faults },
	{ "dma", wl_dma },
	{ "dma-static", wl_dma_static },
};

int run_workload(const char *name, char *msg, u64 len)
{
	int all = !strcmp(name, "all");
	for (u64 i = 0; i < ARRAY_SIZE(workloads); i++) {
		if (!all && strcmp(name, workloads[i].name))
			continue;
		u64 t0 = cntvct();
		int r = workloads[i].fn(msg, len);
		printk("workload %s: %s (%lu us) %s\n", workloads[i].name, r ? "FAILED" : "ok",
		       ticks_to_us(cntvct() - t0), msg);
		if (r || !all)
			return r;
	}
	if (all)
		return snprintf(msg, len, "all workloads ok"), 0;
	snprintf(msg, len, "unknown workload '%s'", name);
	return -1;
}
