/*
 * The host command interface: `secvma_cmd` (struct secvma_cmd, hvabi.h) is one page of .data
 * the host reads and writes through guest RAM. The host fills a command and increments `seq`;
 * task 0 polls it from its idle loop (waking on each timer tick), runs it, writes status and
 * results and sets `done = seq`. Attack primitives run under probe_call, so a fault they
 * cause is reported (ESR/FAR) instead of crashing the kernel.
 */
#include "kernel.h"

struct secvma_cmd secvma_cmd __attribute__((aligned(4096), section(".data.cmd"))) = {
	.magic = CMD_MAGIC, .version = CMD_VERSION,
};
static u8 upload_buf[4 << 20] __attribute__((aligned(4096)));   /* xfs.ko is 2.9 MB */
extern struct secvma_boot_info boot_info;

typedef u64 (*prim_fn)(u64, u64, u64);
#define P(n) extern u64 n(u64, u64, u64);
P(pw_str_1) P(pw_str_2) P(pw_str_4) P(pw_str_8) P(pw_stur_1) P(pw_stur_2) P(pw_stur_4) P(pw_stur_8)
P(pw_sreg_1) P(pw_sreg_2) P(pw_sreg_4) P(pw_sreg_8) P(pw_pre_4) P(pw_pre_8) P(pw_post_4)
P(pw_post_8) P(pw_stp_4) P(pw_stp_8) P(pw_stpz_8) P(pw_stxr_4) P(pw_stxr_8) P(pw_stlr_1)
P(pw_stlr_2) P(pw_stlr_4) P(pw_stlr_8) P(pw_sttr_1) P(pw_sttr_2) P(pw_sttr_4) P(pw_sttr_8)
P(pw_stnp_8) P(pw_dczva_8) P(pr_ldr_1) P(pr_ldr_2) P(pr_ldr_4) P(pr_ldr_8) P(px_call)
P(pm_msr) P(pm_mrs) P(pm_at) P(pw_stlxr_4) P(pw_stlxr_8) P(pw_strq_16) P(pw_st1_16) P(pw_cas_8)
P(pw_swp_8) P(pw_ldadd_8)
#undef P

/* [form][log2 width] */
static prim_fn const store_prims[NR_FORMS][5] = {
	[FORM_STR] = { pw_str_1, pw_str_2, pw_str_4, pw_str_8 },
	[FORM_STUR] = { pw_stur_1, pw_stur_2, pw_stur_4, pw_stur_8 },
	[FORM_STR_REG] = { pw_sreg_1, pw_sreg_2, pw_sreg_4, pw_sreg_8 },
	[FORM_STR_PRE] = { NULL, NULL, pw_pre_4, pw_pre_8 },
	[FORM_STR_POST] = { NULL, NULL, pw_post_4, pw_post_8 },
	[FORM_STP] = { NULL, NULL, pw_stp_4, pw_stp_8 },
	[FORM_STP_XZR] = { NULL, NULL, NULL, pw_stpz_8 },
	[FORM_STXR] = { NULL, NULL, pw_stxr_4, pw_stxr_8 },
	[FORM_STLR] = { pw_stlr_1, pw_stlr_2, pw_stlr_4, pw_stlr_8 },
	[FORM_STTR] = { pw_sttr_1, pw_sttr_2, pw_sttr_4, pw_sttr_8 },
	[FORM_STNP] = { NULL, NULL, NULL, pw_stnp_8 },
	[FORM_DC_ZVA] = { NULL, NULL, NULL, pw_dczva_8 },
	[FORM_STLXR] = { NULL, NULL, pw_stlxr_4, pw_stlxr_8 },
	[FORM_STR_Q] = { NULL, NULL, NULL, NULL, pw_strq_16 },
	[FORM_ST1] = { NULL, NULL, NULL, NULL, pw_st1_16 },
	[FORM_CAS] = { NULL, NULL, NULL, pw_cas_8 },
	[FORM_SWP] = { NULL, NULL, NULL, pw_swp_8 },
	[FORM_LDADD] = { NULL, NULL, NULL, pw_ldadd_8 },
};
static prim_fn const load_prims[4] = { pr_ldr_1, pr_ldr_2, pr_ldr_4, pr_ldr_8 };

static int width_log2(u64 w)
{
	return w == 1 ? 0 : w == 2 ? 1 : w == 4 ? 2 : w == 8 ? 3 : w == 16 ? 4 : -1;
}

/* Run fn under the probe; on a fault fill status/esr/far. Returns fn's result. */
static u64 probed(struct secvma_cmd *c, prim_fn fn, u64 a, u64 b, u64 d)
{
	u64 r = probe_call((void *)fn, a, b, d, 0);
	if (probe.faulted) {
		c->status = ST_FAULT;
		c->esr = probe.esr;
		c->far = probe.far;
		snprintf(c->msg, CMD_MSG_LEN, "fault: esr %lx far %lx", probe.esr, probe.far);
	}
	return r;
}

void run_command(struct secvma_cmd *c)
{
	u64 *a = c->arg;
	int lw;
	c->status = ST_OK;
	c->esr = c->far = 0;
	c->msg[0] = 0;
	for (int i = 0; i < 4; i++)
		c->ret[i] = 0;
	c->name[CMD_NAME_LEN - 1] = 0;
	switch (c->op) {
	case CMD_NOP:
		break;
	case CMD_WORKLOAD:
		if (run_workload(c->name, c->msg, CMD_MSG_LEN))
			c->status = ST_FAILED;
		break;
	case CMD_WRITE:
		lw = width_log2(a[2]);
		if (a[3] >= NR_FORMS || lw < 0 || !store_prims[a[3]][lw]) {
			c->status = ST_BADARG;
			snprintf(c->msg, CMD_MSG_LEN, "no store form %lu with width %lu", a[3], a[2]);
			break;
		}
		c->ret[1] = probed(c, store_prims[a[3]][lw], a[0], a[1], a[4]);
		break;
	case CMD_READ:
		lw = width_log2(a[1]);
		if (lw < 0 || lw > 3) {
			c->status = ST_BADARG;
			break;
		}
		c->ret[0] = probed(c, load_prims[lw], a[0], 0, 0);
		break;
	case CMD_EXEC:
		c->ret[0] = probed(c, px_call, a[0], a[1], 0);
		break;
	case CMD_MSR:
		if (a[0] > 14) {
			c->status = ST_BADARG;
			break;
		}
		probed(c, pm_msr, a[0], a[1], 0);
		break;
	case CMD_MRS:
		c->ret[0] = probed(c, pm_mrs, a[0], 0, 0);
		break;
	case CMD_HVC:
		c->ret[0] = hvc_call(a[0], a[1], a[2], a[3], a[4], a[5]);
		break;
	case CMD_AT:
		c->ret[0] = probed(c, pm_at, a[0], a[1], 0);
		break;
	case CMD_DMA:
		c->status = (u32)dma_command(a, c->ret, c->msg, CMD_MSG_LEN);
		break;
	case CMD_ALLOC_PAGE: {
		u64 pa = a[0] ? pgtable_alloc() : alloc_pages(1);
		c->ret[0] = pa ? (u64)__va(pa) : 0;
		c->ret[1] = pa;
		c->status = pa ? ST_OK : ST_FAILED;
		break;
	}
	case CMD_FREE_PAGE:
		if (a[1])
			pgtable_free(a[0]);
		else
			free_pages(a[0], 1);
		break;
	case CMD_MODLOAD: {
		int h = -1, rc = 0;
		u64 id = HVC_INVALID;
		if (!a[0] || a[2] > sizeof(upload_buf) || a[0] > sizeof(upload_buf) - a[2]) {
			c->status = ST_BADARG;
			break;
		}
		if (module_load(upload_buf + a[2], a[0], a[1], &h, &id, &rc, c->msg, CMD_MSG_LEN))
			c->status = ST_FAILED;
		c->ret[0] = (u64)h;
		c->ret[1] = id;
		c->ret[2] = (u64)(s64)rc;
		break;
	}
	case CMD_MODUNLOAD:
		if (module_unload((int)a[0], c->msg, CMD_MSG_LEN))
			c->status = ST_FAILED;
		break;
	case CMD_SPAWN: {
		int st = 0, pid = spawn_user(c->name, a[0], current);
		if (pid < 0) {
			c->status = ST_BADARG;
			snprintf(c->msg, CMD_MSG_LEN, "cannot spawn '%s' (%d)", c->name, pid);
			break;
		}
		wait_task(pid, &st);
		c->ret[0] = (u64)(s64)st;
		c->ret[1] = (u64)pid;
		break;
	}
	case CMD_SYMBOL:
		c->ret[0] = ksym_lookup(c->name);
		c->status = c->ret[0] ? ST_OK : ST_FAILED;
		break;
	case CMD_VMAP:
		c->ret[0] = (u64)vmap_range(a[0], a[1], a[2] == 1 ? PROT_KERNEL_RO :
					    a[2] == 2 ? PROT_KERNEL_RX : PROT_KERNEL_RW);
		c->status = c->ret[0] ? ST_OK : ST_FAILED;
		break;
	case CMD_VUNMAP:
		vunmap_range((void *)a[0], a[1]);
		break;
	case CMD_RACE_SPIN:
		c->ret[0] = probe_call((void *)race_spin, a[0], a[1], a[2], a[3]);
		if (probe.faulted) {
			c->status = ST_FAULT;
			c->esr = probe.esr;
			c->far = probe.far;
			snprintf(c->msg, CMD_MSG_LEN, "fault: esr %lx far %lx", probe.esr, probe.far);
		}
		c->ret[1] = READ_ONCE(secvma_race.iters);
		c->ret[2] = READ_ONCE(secvma_race.last);
		break;
	case CMD_POWEROFF:
		printk("secvma: power off\n");
		c->t_end = cntvct();
		dsb(sy);
		WRITE_ONCE(c->done, c->seq);
		psci_system_off();
	default:
		c->status = ST_BADARG;
		snprintf(c->msg, CMD_MSG_LEN, "unknown command %u", c->op);
	}
}

void cmd_loop(void)
{
	struct secvma_cmd *c = &secvma_cmd;
	c->cntfrq = read_sysreg(cntfrq_el0);
	c->upload = (u64)upload_buf;
	c->upload_pa = __pa_symbol(upload_buf);
	c->upload_size = sizeof(upload_buf);
	c->boot_info = __pa_symbol(&boot_info);
	c->booted_ticks = cntvct();
	dsb(sy);
	WRITE_ONCE(c->ready, 1);
	printk("secvma: ready for commands (mailbox at pa %lx)\n", __pa_symbol(c));
	for (;;) {
		u64 seq = READ_ONCE(c->seq);
		if (seq == READ_ONCE(c->done)) {
			if (runnable_others())
				schedule();
			else
				idle_wait();
			continue;
		}
		dsb(sy);
		c->t_start = cntvct();
		int armed = READ_ONCE(secvma_race.arm) == RACE_ARM_CMD;
		if (armed)
			race_begin();
		run_command(c);
		if (armed)
			race_end();
		reap_orphans();
		c->t_end = cntvct();
		dsb(sy);
		WRITE_ONCE(c->done, seq);
	}
}
