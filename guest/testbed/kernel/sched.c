/*
 * Tasks and the scheduler: round robin, preemption of EL0 by the timer tick, kernel code
 * never preempted (it runs with IRQs masked, like a non-preemptible Linux). Task 0 is the
 * kernel's own thread: it runs the host command loop and the workloads' kernel parts.
 *
 * The user address space is switched only through HVC 35 (DO_SWITCH_MM): the kernel never
 * writes TTBR0_EL1 itself after boot.
 */
#include "kernel.h"
#include "uprog.h"

struct task tasks[NTASKS];
struct task *current = &tasks[0];
volatile int need_resched;
struct mm *active_mm;
static struct mm reserved_mm;        /* an empty registered user PGD: "no user space" */
u64 reserved_pgd;
static int next_pid = 1;

extern void cpu_switch_to(struct task *prev, struct task *next);
extern char ret_from_fork[];
extern char init_stack[];

void switch_mm(struct mm *mm)
{
	u64 r = hvc_call(HVC_DO_SWITCH_MM, mm->pgd, mm->asid, 0, 0, 0);
	isb();
	if (r != 0 || (read_sysreg(ttbr0_el1) & PTE_ADDR) != mm->pgd)
		panic("HVC 35 (DO_SWITCH_MM %lx, asid %u) failed: x0 %lx, TTBR0 %lx", mm->pgd,
		      mm->asid, r, read_sysreg(ttbr0_el1));
	active_mm = mm;
}

void sched_init(void)
{
	struct task *t = &tasks[0];
	t->state = T_RUNNABLE;
	t->pid = 0;
	t->kstack = __pa_symbol(init_stack);
	strncpy_z(t->name, "kmain", sizeof(t->name));
	reserved_mm.pgd = pgtable_alloc();
	hvc_call(HVC_ALLOC_EL0_PGD, reserved_mm.pgd, 0, 0, 0, 0);
	reserved_mm.asid = 0;
	reserved_pgd = reserved_mm.pgd;
	switch_mm(&reserved_mm);    /* drops the boot idmap from TTBR0 */
	asm volatile("tlbi vmalle1is; dsb ish; isb");
}

static struct task *pick_next(void)
{
	int cur = (int)(current - tasks);
	for (int k = 1; k <= NTASKS; k++) {
		struct task *t = &tasks[(cur + k) % NTASKS];
		if (t->state == T_RUNNABLE)
			return t;
	}
	return NULL;
}

void schedule(void)
{
	struct task *next = pick_next();
	if (!next)
		panic("deadlock: no runnable task (current %s[%d])", current->name, current->pid);
	if (next == current)
		return;
	if (next->mm && next->mm != active_mm)
		switch_mm(next->mm);
	struct task *prev = current;
	current = next;
	cpu_switch_to(prev, next);
}

int runnable_others(void)
{
	for (int i = 0; i < NTASKS; i++)
		if (&tasks[i] != current && tasks[i].state == T_RUNNABLE)
			return 1;
	return 0;
}

void sleep_on(void *wchan)
{
	current->wchan = wchan;
	current->state = T_BLOCKED;
	schedule();
	current->wchan = NULL;
}

void wake_up(void *wchan)
{
	for (int i = 0; i < NTASKS; i++)
		if (tasks[i].state == T_BLOCKED && tasks[i].wchan == wchan)
			tasks[i].state = T_RUNNABLE;
}

struct pt_regs *task_pt_regs(struct task *t)
{
	return (struct pt_regs *)((u64)__va(t->kstack) + KSTACK_PAGES * PAGE_SIZE) - 1;
}

static const char *const uprog_names[] = {
#define UP_NAME(id, name) name,
	UPROG_LIST(UP_NAME)
#undef UP_NAME
};

static int uprog_id(const char *name)
{
	for (int i = 0; i < UP_COUNT; i++)
		if (!strcmp(uprog_names[i], name))
			return i;
	return -1;
}

/* Create a process running user program `prog` (x0 = arg); it inherits the parent's fds. */
int spawn_user(const char *prog, u64 arg, struct task *parent)
{
	int id = uprog_id(prog);
	struct task *t = NULL;
	if (id < 0)
		return -2;
	for (int i = 1; i < NTASKS; i++)
		if (tasks[i].state == T_UNUSED) {
			t = &tasks[i];
			break;
		}
	if (!t)
		return -11;
	memset(t, 0, sizeof(*t));
	t->kstack = alloc_pages(KSTACK_PAGES);
	t->mm = t->kstack ? mm_create() : NULL;
	u64 entry, sp;
	if (!t->mm || load_user_program(t->mm, &entry, &sp)) {
		if (t->mm)
			mm_destroy(t->mm);
		if (t->kstack)
			free_pages(t->kstack, KSTACK_PAGES);
		return -12;
	}
	struct pt_regs *regs = task_pt_regs(t);
	regs->pc = entry;
	regs->sp = sp;
	regs->pstate = 0;            /* EL0t, interrupts unmasked */
	regs->regs[0] = arg;
	regs->regs[1] = (u64)id;
	t->ctx.pc = (u64)ret_from_fork;
	t->ctx.sp = (u64)regs;
	t->pid = next_pid++;
	t->parent = parent;
	strncpy_z(t->name, prog, sizeof(t->name));
	for (int i = 0; i < NFD; i++)
		t->fd[i] = parent->fd[i] ? file_get(parent->fd[i]) : NULL;
	t->state = T_RUNNABLE;
	return t->pid;
}

static void reap(struct task *t, int *status)
{
	if (status)
		*status = t->exit_code;
	free_pages(t->kstack, KSTACK_PAGES);
	t->state = T_UNUSED;
}

/* Wait for child `pid` (-1: any) to exit; returns its pid, -1 if there is no such child. */
int wait_task(int pid, int *status)
{
	for (;;) {
		int have = 0;
		for (int i = 1; i < NTASKS; i++) {
			struct task *t = &tasks[i];
			if (t->state == T_UNUSED || t->parent != current || (pid != -1 && t->pid != pid))
				continue;
			have = 1;
			if (t->state == T_ZOMBIE) {
				int p = t->pid;
				reap(t, status);
				return p;
			}
		}
		if (!have)
			return -1;
		sleep_on(current);
	}
}

__noreturn void do_exit(int code)
{
	struct task *t = current;
	for (int i = 0; i < NFD; i++)
		if (t->fd[i]) {
			file_put(t->fd[i]);
			t->fd[i] = NULL;
		}
	if (t->mm) {
		if (active_mm == t->mm)
			switch_mm(&reserved_mm);
		mm_destroy(t->mm);
		t->mm = NULL;
	}
	for (int i = 1; i < NTASKS; i++)
		if (tasks[i].state != T_UNUSED && tasks[i].parent == t)
			tasks[i].parent = &tasks[0];
	t->exit_code = code;
	t->state = T_ZOMBIE;
	wake_up(t->parent);
	wake_up(&tasks[0]);
	schedule();
	panic("zombie %d scheduled", t->pid);
}

/* Task 0 reaps the children it adopted from parents that exited first. */
void reap_orphans(void)
{
	for (int i = 1; i < NTASKS; i++)
		if (tasks[i].state == T_ZOMBIE && tasks[i].parent == &tasks[0])
			reap(&tasks[i], NULL);
}
