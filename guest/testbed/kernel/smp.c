/*
 * Secondary CPUs and the race primitives (issue 13 "SMP races").
 *
 * kernel_main starts every other CPU with PSCI CPU_ON (SMC; the hypervisor traps it and sends
 * the CPU through its trampoline first). A secondary runs head.S's secondary_entry (the same
 * HVC 6 + five trapped MSRs as the boot CPU), drops the idmap with HVC 35 and then polls its own
 * command slot `secvma_cpu_cmd[cpu]` (struct secvma_cmd, the same protocol as `secvma_cmd`),
 * running only the attack primitives (no scheduler, interrupts masked).
 *
 * Races: the host puts CMD_RACE_SPIN in a secondary's slot (it waits in race_spin for `go`)
 * and arms `secvma_race` for CPU 0's next command: CPU 0 waits until the spinner is ready,
 * sets `go`, waits for `min_iters` iterations, samples the spinner's counter around its own
 * operation (`before` / `after`: iterations that ran while CPU 0 was in its trap), reads
 * `watch`, then sets `stop`. Everything is plain memory in .data, written by both CPUs and
 * read by the host.
 */
#include "kernel.h"

struct secvma_cmd secvma_cpu_cmd[NR_CPUS] __attribute__((aligned(4096), section(".data.smp")));
struct secvma_race secvma_race __attribute__((aligned(64), section(".data.smp")));
char secondary_stacks[NR_CPUS * 16384] __attribute__((aligned(16)));
volatile u64 module_tmp_image;
volatile u64 module_run_text;   /* VA of the text run of the module being loaded */

#define PSCI_CPU_ON 0xC4000003UL
extern char secondary_entry[];

static s64 psci_cpu_on(u64 mpidr, u64 entry, u64 ctx)
{
	register u64 x0 asm("x0") = PSCI_CPU_ON;
	register u64 x1 asm("x1") = mpidr;
	register u64 x2 asm("x2") = entry;
	register u64 x3 asm("x3") = ctx;
	asm volatile("smc #0" : "+r"(x0), "+r"(x1), "+r"(x2), "+r"(x3) :: "memory");
	return (s64)x0;
}

static u64 wait_until(volatile u64 *p, u64 v, u64 us)
{
	u64 t0 = cntvct();
	while (READ_ONCE(*p) < v)
		if (ticks_to_us(cntvct() - t0) > us)
			return 0;
	return 1;
}

void smp_init(void)
{
	secvma_race.cpu_mask = 1;
	for (u64 cpu = 1; cpu < NR_CPUS; cpu++) {
		struct secvma_cmd *c = &secvma_cpu_cmd[cpu];
		s64 r = psci_cpu_on(cpu, __pa_symbol(secondary_entry), cpu);
		if (r) {
			if (cpu == 1)
				printk("smp: no CPU 1 (PSCI CPU_ON %ld)\n", r);
			break;
		}
		u64 t0 = cntvct();
		while (!READ_ONCE(c->ready) && ticks_to_us(cntvct() - t0) < 2000000)
			;
		if (!READ_ONCE(c->ready)) {
			printk("smp: CPU %lu did not come up\n", cpu);
			break;
		}
		secvma_race.cpu_mask |= 1UL << cpu;
	}
	printk("smp: CPUs online: mask %lx\n", secvma_race.cpu_mask);
}

/* Only the primitives run on a secondary CPU (no tasks, no allocators). */
static int secondary_op_ok(u32 op)
{
	return op == CMD_NOP || op == CMD_WRITE || op == CMD_READ || op == CMD_EXEC ||
	       op == CMD_MSR || op == CMD_MRS || op == CMD_HVC || op == CMD_AT ||
	       op == CMD_RACE_SPIN;
}

void secondary_start_kernel(u64 cpu)
{
	write_sysreg(&probe_cpu[cpu], tpidr_el1);
	isb();
	u64 r = hvc_call(HVC_DO_SWITCH_MM, reserved_pgd, 0, 0, 0, 0);   /* drop the idmap */
	struct secvma_cmd *c = &secvma_cpu_cmd[cpu];
	c->magic = CMD_MAGIC;
	c->version = CMD_VERSION;
	c->cntfrq = read_sysreg(cntfrq_el0);
	c->ret[0] = r;
	dsb(sy);
	WRITE_ONCE(c->ready, 1);
	for (;;) {
		u64 seq = READ_ONCE(c->seq);
		if (seq == READ_ONCE(c->done))
			continue;
		dsb(sy);
		c->t_start = cntvct();
		if (secondary_op_ok(c->op)) {
			run_command(c);
		} else {
			c->status = ST_UNSUPPORTED;
			snprintf(c->msg, CMD_MSG_LEN, "command %u runs on CPU 0 only", c->op);
		}
		c->t_end = cntvct();
		dsb(sy);
		WRITE_ONCE(c->done, seq);
	}
}

/* The spinner (under the probe: a fault ends it, reported as ST_FAULT). */
u64 race_spin(u64 addr, u64 value, u64 mode, u64 off)
{
	struct secvma_race *r = &secvma_race;
	u64 n = 0, t0 = cntvct();
	WRITE_ONCE(r->iters, 0);
	dsb(sy);
	WRITE_ONCE(r->ready, 1);
	while (!READ_ONCE(r->go))
		if (READ_ONCE(r->stop) || ticks_to_us(cntvct() - t0) > 10000000)
			return 0;
	while (!READ_ONCE(r->stop)) {
		if (mode == RACE_SPIN_STORE) {
			asm volatile("str %1, [%0]" :: "r"(addr), "r"(value) : "memory");
		} else if (mode == RACE_SPIN_INDIRECT) {
			u64 p = READ_ONCE(*(volatile u64 *)addr);
			if (p)
				asm volatile("str %1, [%0]" :: "r"(p + off), "r"(value) : "memory");
		} else if (mode == RACE_SPIN_HVC35) {
			WRITE_ONCE(r->last, hvc_call(HVC_DO_SWITCH_MM, addr, value, 0, 0, 0));
		} else {
			return 0;
		}
		WRITE_ONCE(r->iters, ++n);
		if ((n & 0xff) == 0 && ticks_to_us(cntvct() - t0) > 30000000)
			break;
	}
	return n;
}

/* CPU 0, around an armed command (cmd.c) */
void race_begin(void)
{
	struct secvma_race *r = &secvma_race;
	wait_until(&r->ready, 1, 2000000);
	WRITE_ONCE(r->go, 1);
	dsb(sy);
	wait_until(&r->iters, r->min_iters, 2000000);
	r->before = READ_ONCE(r->iters);
}

void race_end(void)
{
	struct secvma_race *r = &secvma_race;
	r->after = READ_ONCE(r->iters);
	if (r->watch)
		r->watch_val = READ_ONCE(*(volatile u64 *)r->watch);
	dsb(sy);
	WRITE_ONCE(r->stop, 1);
	WRITE_ONCE(r->arm, 0);
}
