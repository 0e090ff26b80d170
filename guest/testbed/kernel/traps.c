/* Exception handlers: EL1 faults (probe fixup or oops), EL0 syscalls and faults, IRQs. */
#include "kernel.h"

struct probe_ctx probe_cpu[NR_CPUS];
extern char probe_recover[];

static void show_regs(struct pt_regs *r, u64 esr, u64 far)
{
	printk("  pc %lx lr %lx sp %lx pstate %lx\n  esr %lx far %lx\n",
	       r->pc, r->regs[30], r->sp, r->pstate, esr, far);
}

/*
 * A synchronous exception in the kernel. Inside probe_call (the attack primitives) it is an
 * expected outcome: record it and resume at probe_recover (Linux's exception-table fixup).
 */
void el1_sync_handler(struct pt_regs *regs)
{
	u64 esr = read_sysreg(esr_el1), far = read_sysreg(far_el1);
	if (probe.active) {
		probe.faulted = 1;
		probe.esr = esr;
		probe.far = far;
		probe.active = 0;
		regs->pc = (u64)probe_recover;
		return;
	}
	static int nested;
	if (nested++)
		psci_system_off();   /* faulting while reporting a fault: nothing left to do */
	printk("Unable to handle kernel exception (EC %lx) at %lx\n", esr >> 26, far);
	show_regs(regs, esr, far);
	panic("Oops in %s (pid %d)", current ? current->name : "?", current ? current->pid : -1);
}

void bad_mode(struct pt_regs *regs, int kind)
{
	show_regs(regs, read_sysreg(esr_el1), read_sysreg(far_el1));
	panic("bad mode: unexpected exception kind %d", kind);
}

/* From EL0: SVC is a syscall; any other synchronous exception kills the process. */
void el0_sync_handler(struct pt_regs *regs)
{
	u64 esr = read_sysreg(esr_el1), far = read_sysreg(far_el1);
	u64 ec = esr >> 26;
	if (ec == 0x15) {
		do_syscall(regs);
		return;
	}
	int sig = (ec == 0x24 || ec == 0x20) ? STATUS_KILLED_SEGV : STATUS_KILLED_ILL;
	printk("%s[%d]: killed (%s): esr %lx far %lx pc %lx\n", current->name, current->pid,
	       sig == STATUS_KILLED_SEGV ? "SIGSEGV" : "SIGILL", esr, far, regs->pc);
	do_exit(sig);
}

void irq_handler(void)
{
	u32 iar = gic_ack();
	u32 irq = iar & 0x3ff;
	if (irq == TIMER_PPI)
		timer_tick();
	else if (irq < 1020)
		printk("spurious irq %u\n", irq);
	if (irq < 1020)
		gic_eoi(iar);
}

void user_return_work(void)
{
	while (need_resched) {
		need_resched = 0;
		schedule();
	}
}
