/* GICv2 (virt: distributor 0x0800_0000, CPU interface 0x0801_0000) and the EL1 physical timer. */
#include "kernel.h"

#define GICD_CTLR       0x000
#define GICD_ISENABLER  0x100
#define GICD_IPRIORITYR 0x400
#define GICC_CTLR       0x000
#define GICC_PMR        0x004
#define GICC_IAR        0x00c
#define GICC_EOIR       0x010

static volatile u8 *gicd, *gicc;
volatile u64 jiffies;
static u64 tick_ticks;

#define W32(base, off) (*(volatile u32 *)((base) + (off)))

void gic_init(void)
{
	gicd = ioremap(GICD_PA, 0x10000);
	gicc = ioremap(GICC_PA, 0x2000);
	W32(gicd, GICD_CTLR) = 1;
	W32(gicd, GICD_IPRIORITYR + (TIMER_PPI & ~3)) = 0xa0a0a0a0;
	W32(gicd, GICD_ISENABLER) = 1U << TIMER_PPI;
	W32(gicc, GICC_PMR) = 0xf0;
	W32(gicc, GICC_CTLR) = 1;
}

u32 gic_ack(void) { return W32(gicc, GICC_IAR); }
void gic_eoi(u32 irq) { W32(gicc, GICC_EOIR) = irq; }

void timer_init(void)
{
	tick_ticks = read_sysreg(cntfrq_el0) / HZ;
	write_sysreg(tick_ticks, cntp_tval_el0);
	write_sysreg(1, cntp_ctl_el0);            /* enabled, not masked */
	write_sysreg(read_sysreg(cntkctl_el1) | 2, cntkctl_el1);   /* EL0VCTEN: vDSO clock */
}

void timer_tick(void)
{
	write_sysreg(tick_ticks, cntp_tval_el0);
	jiffies++;
	need_resched = 1;
}
