/*
 * GICv3 (virt, gic-version=3: distributor 0x0800_0000, redistributors from 0x080a_0000, CPU
 * interface through ICC_* system registers) and the EL1 physical timer. The same code runs on
 * the physical CPU interface (no hypervisor guard) and on the virtual one a hypervisor gives
 * with HCR_EL2.IMO (ICC_* accesses then reach ICV_*).
 */
#include "kernel.h"

#define GICD_CTLR        0x0000
#define GICD_CTLR_ARE    (1U << 4)
#define GICD_CTLR_G1     (1U << 1)
#define GICR_WAKER       0x0014
#define GICR_SGI         0x10000          /* SGI/PPI frame of a redistributor */
#define GICR_IGROUPR0    0x0080
#define GICR_ISENABLER0  0x0100
#define GICR_IPRIORITYR  0x0400

#define ICC_SRE_EL1      "S3_0_C12_C12_5"
#define ICC_PMR_EL1      "S3_0_C4_C6_0"
#define ICC_IGRPEN1_EL1  "S3_0_C12_C12_7"
#define ICC_IAR1_EL1     "S3_0_C12_C12_0"
#define ICC_EOIR1_EL1    "S3_0_C12_C12_1"

static volatile u8 *gicd, *gicr;
volatile u64 jiffies;
static u64 tick_ticks;

#define W32(base, off) (*(volatile u32 *)((base) + (off)))

void gic_init(void)
{
	u64 v;

	gicd = ioremap(GICD_PA, 0x10000);
	gicr = ioremap(GICR_PA, 0x20000);     /* CPU 0's redistributor (the testbed is UP) */
	W32(gicd, GICD_CTLR) = GICD_CTLR_ARE | GICD_CTLR_G1;
	W32(gicr, GICR_WAKER) &= ~2U;         /* ProcessorSleep off */
	while (W32(gicr, GICR_WAKER) & 4U)    /* ChildrenAsleep */
		;
	W32(gicr, GICR_SGI + GICR_IGROUPR0) |= 1U << TIMER_PPI;
	*(volatile u8 *)(gicr + GICR_SGI + GICR_IPRIORITYR + TIMER_PPI) = 0xa0;
	W32(gicr, GICR_SGI + GICR_ISENABLER0) = 1U << TIMER_PPI;
	asm volatile("mrs %0, " ICC_SRE_EL1 : "=r"(v));
	asm volatile("msr " ICC_SRE_EL1 ", %0; isb" :: "r"(v | 1));
	asm volatile("msr " ICC_PMR_EL1 ", %0" :: "r"(0xf0UL));
	asm volatile("msr " ICC_IGRPEN1_EL1 ", %0; isb" :: "r"(1UL));
}

u32 gic_ack(void)
{
	u64 v;
	asm volatile("mrs %0, " ICC_IAR1_EL1 : "=r"(v));
	return (u32)v;
}

void gic_eoi(u32 irq) { asm volatile("msr " ICC_EOIR1_EL1 ", %0; isb" :: "r"((u64)irq)); }

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
