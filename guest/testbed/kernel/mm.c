/*
 * Physical memory: the early (MMU-off) table set-up, the boot-information block, and the
 * runtime allocators (pages, the kernel page-table pool, the module text/ro pools).
 *
 * Physical layout (1 GiB board):
 *   0x4000_0000  hypervisor (32 MiB, never touched)
 *   0x4200_0000  kernel image: text | rodata+vDSO | init text | data | bss | pgdir (2 MiB steps)
 *   _end         reserved region (24 MiB): module text pool, module ro pool, guard,
 *                page-table pool (boot tables top-down in its top 2 MiB), guard
 *   DTB          (2 MiB reserved), then the page allocator's memory up to the end of RAM
 */
#include "kernel.h"

int fdt_memory(u64 dtb, u64 *base, u64 *size);
void early_map_kernel(void);

u64 kimage_voffset, memstart = PHYS_OFFSET, ram_end, resv_base, dtb_pa;
u64 swapper_pa;
static u64 early_next;               /* next free boot table page (top-down) */
static u64 early_low;                /* lowest boot table page handed out */

struct secvma_boot_info boot_info __attribute__((aligned(64)));
struct boot_regs { u64 bi, tcr, mair, sctlr, ttbr1; } boot_regs;

#define MAX_PAGES (((3ULL << 30) - (KERNEL_PA - PHYS_OFFSET)) >> 12)
static u64 page_bits[MAX_PAGES / 64 + 1];
static u64 pgtable_bits[RESV_PGTABLE_SZ / PAGE_SIZE / 64];
static u64 modtext_bits[RESV_MODTEXT_SZ / PAGE_SIZE / 64];
static u64 modro_bits[RESV_MODRO_SZ / PAGE_SIZE / 64];
struct bitmap_alloc page_bm, pgtable_bm, modtext_bm, modro_bm;

__init u64 early_pgtable_alloc(void)
{
	early_next -= PAGE_SIZE;
	if (early_next < resv_base + RESV_PGTABLE + RESV_PGTABLE_SZ - RESV_EARLY_SZ)
		for (;;)
			;                    /* out of boot tables: nothing to print with yet */
	early_low = early_next;
	u64 *p = (u64 *)early_next;
	for (int i = 0; i < 512; i++)
		p[i] = 0;
	return early_next;
}

/* Called from head.S with the MMU off: every address here is physical. */
__init struct boot_regs *early_paging_init(u64 dtb)
{
	u64 base = PHYS_OFFSET, size = 1ULL << 30;
	fdt_memory(dtb, &base, &size);
	dtb_pa = dtb;
	ram_end = base + size;
	kimage_voffset = KIMAGE_VADDR - (u64)_text;
	resv_base = ALIGN_UP((u64)_end, SZ_2M);
	early_next = resv_base + RESV_PGTABLE + RESV_PGTABLE_SZ;
	swapper_pa = (u64)swapper_pg_dir;
	early_map_kernel();

	u64 mmfr0 = read_sysreg(id_aa64mmfr0_el1);
	u64 ips = mmfr0 & 7;
	if (ips > 5)
		ips = 5;
	struct secvma_boot_info *bi = &boot_info;
	bi->magic = BOOT_INFO_MAGIC;
	bi->version = BOOT_INFO_VERSION;
	bi->size = sizeof(*bi);
	bi->text = (u64)_text;
	bi->etext = (u64)_etext;
	bi->rodata = (u64)__start_rodata;
	bi->erodata = (u64)__init_begin;
	bi->vdso = (u64)__vdso_start;
	bi->evdso = (u64)__vdso_end;
	bi->inittext = (u64)__inittext_begin;
	bi->einittext = (u64)__inittext_end;
	bi->data = (u64)_data;
	bi->edata = (u64)_edata;
	bi->bss = (u64)__bss_start;
	bi->ebss = (u64)__bss_stop;
	bi->end = (u64)_end;
	bi->swapper_pg_dir = swapper_pa;
	bi->empty_zero_page = (u64)empty_zero_page;
	bi->kimage_voffset = kimage_voffset;
	bi->linear_offset = PAGE_OFFSET - PHYS_OFFSET;
	bi->text_va = KIMAGE_VADDR;
	bi->pgtable_pool = resv_base + RESV_PGTABLE;
	bi->pgtable_pool_end = resv_base + RESV_PGTABLE + RESV_PGTABLE_SZ;
	bi->pgtable_early = bi->pgtable_pool_end - RESV_EARLY_SZ;
	bi->mod_text_pool = resv_base + RESV_MODTEXT + PAGE_SIZE;
	bi->mod_text_pool_end = resv_base + RESV_MODTEXT + RESV_MODTEXT_SZ - PAGE_SIZE;
	bi->mod_ro_pool = resv_base + RESV_MODRO + PAGE_SIZE;
	bi->mod_ro_pool_end = resv_base + RESV_MODRO + RESV_MODRO_SZ - PAGE_SIZE;
	bi->reserved = resv_base;
	bi->reserved_end = resv_base + RESV_SIZE;
	bi->ksymtab = (u64)__start___ksymtab;
	bi->ksymtab_end = (u64)__stop___ksymtab;
	bi->ksymtab_gpl = (u64)__start___ksymtab_gpl;
	bi->ksymtab_gpl_end = (u64)__stop___ksymtab_gpl;
	bi->ram = KERNEL_PA;
	bi->ram_end = ram_end;
	bi->dtb = dtb;
	bi->modules_va = MODULES_USE;
	bi->modules_va_end = MODULES_END;
	bi->vmalloc_va = VMALLOC_START;
	bi->vmalloc_va_end = VMALLOC_END;
	bi->tcr = TCR_VALUE_BASE | (ips << 32);
	bi->mair = MAIR_VALUE;
	bi->sctlr = SCTLR_VALUE;
	bi->cmd_mailbox = (u64)&secvma_cmd;

	struct boot_regs *br = &boot_regs;
	br->bi = (u64)bi;
	br->tcr = bi->tcr;
	br->mair = bi->mair;
	br->sctlr = bi->sctlr;
	br->ttbr1 = swapper_pa;
	return br;
}

/* ---- runtime allocators (MMU on) ------------------------------------------------------- */

static void bm_init(struct bitmap_alloc *b, u64 *bits, u64 base, u64 npages)
{
	b->bits = bits;
	b->base = base;
	b->npages = npages;
	b->hint = 0;
	b->nfree = npages;
}

static int bm_test(struct bitmap_alloc *b, u64 i) { return (b->bits[i / 64] >> (i % 64)) & 1; }

static void bm_set(struct bitmap_alloc *b, u64 i, u64 n, int v)
{
	for (u64 j = i; j < i + n; j++) {
		if (v)
			b->bits[j / 64] |= 1ULL << (j % 64);
		else
			b->bits[j / 64] &= ~(1ULL << (j % 64));
	}
	b->nfree += v ? -n : n;
}

/* First fit from a rotating hint; returns the address (base + index * 4K) or 0. */
u64 bm_alloc(struct bitmap_alloc *b, u64 n, u64 align)
{
	if (!align)
		align = 1;
	for (int pass = 0; pass < 2; pass++) {
		u64 start = pass ? 0 : b->hint;
		for (u64 i = ALIGN_UP(start, align); i + n <= b->npages; i += align) {
			u64 k = 0;
			while (k < n && !bm_test(b, i + k))
				k++;
			if (k == n) {
				bm_set(b, i, n, 1);
				b->hint = i + n;
				return b->base + i * PAGE_SIZE;
			}
			if (align == 1)
				i += k;
		}
	}
	return 0;
}

void bm_free(struct bitmap_alloc *b, u64 addr, u64 n)
{
	u64 i = (addr - b->base) / PAGE_SIZE;
	for (u64 j = i; j < i + n; j++)
		if (!bm_test(b, j))
			panic("double free of page %lx", b->base + j * PAGE_SIZE);
	bm_set(b, i, n, 0);
}

void bm_reserve(struct bitmap_alloc *b, u64 addr, u64 n)
{
	if (addr + n * PAGE_SIZE <= b->base || addr >= b->base + b->npages * PAGE_SIZE)
		return;
	u64 i = addr < b->base ? 0 : (addr - b->base) / PAGE_SIZE;
	for (u64 j = i; j < i + n && j < b->npages; j++)
		if (!bm_test(b, j))
			bm_set(b, j, 1, 1);
}

void mm_init(u64 dtb)
{
	bm_init(&page_bm, page_bits, KERNEL_PA, (ram_end - KERNEL_PA) / PAGE_SIZE);
	bm_reserve(&page_bm, KERNEL_PA, (resv_base + RESV_SIZE - KERNEL_PA) / PAGE_SIZE);
	bm_reserve(&page_bm, dtb & ~(SZ_2M - 1ULL), DTB_RESERVE / PAGE_SIZE + 512);
	bm_init(&pgtable_bm, pgtable_bits, resv_base + RESV_PGTABLE, RESV_PGTABLE_SZ / PAGE_SIZE);
	bm_reserve(&pgtable_bm, early_low, (resv_base + RESV_PGTABLE + RESV_PGTABLE_SZ - early_low) / PAGE_SIZE);
	bm_init(&modtext_bm, modtext_bits, boot_info.mod_text_pool,
		(boot_info.mod_text_pool_end - boot_info.mod_text_pool) / PAGE_SIZE);
	bm_init(&modro_bm, modro_bits, boot_info.mod_ro_pool,
		(boot_info.mod_ro_pool_end - boot_info.mod_ro_pool) / PAGE_SIZE);
}

void mm_report(void)
{
	printk("mm: RAM %lx-%lx, %lu pages free; pt pool %lx (%lu boot tables); dtb %lx\n",
	       KERNEL_PA, ram_end, page_bm.nfree, pgtable_bm.base,
	       (pgtable_bm.base + RESV_PGTABLE_SZ - early_low) / PAGE_SIZE, dtb_pa);
}

u64 alloc_pages(u64 n)
{
	u64 pa = bm_alloc(&page_bm, n, 1);
	if (pa)
		memset(__va(pa), 0, n * PAGE_SIZE);
	return pa;
}
EXPORT_SYMBOL(alloc_pages);

void free_pages(u64 pa, u64 n) { bm_free(&page_bm, pa, n); }
EXPORT_SYMBOL(free_pages);

/* The runtime pool part only: boot tables stay where they are. */
u64 pgtable_alloc(void)
{
	u64 pa = bm_alloc(&pgtable_bm, 1, 1);
	if (!pa)
		panic("page-table pool exhausted");
	clear_table_page(__va(pa));
	return pa;
}

void pgtable_free(u64 pa) { bm_free(&pgtable_bm, pa, 1); }

u64 modpool_alloc(int ro, u64 n) { return bm_alloc(ro ? &modro_bm : &modtext_bm, n, 1); }

void modpool_free(int ro, u64 pa, u64 n) { bm_free(ro ? &modro_bm : &modtext_bm, pa, n); }

u64 virt_to_phys(const void *va)
{
	u64 v = (u64)va;
	if (v >= KIMAGE_VADDR && v < KIMAGE_VADDR + (boot_info.end - boot_info.text))
		return v - kimage_voffset;
	if (is_linear(v))
		return __pa(v);
	u64 *pte = kernel_pte(v & PAGE_MASK, 0);
	return pte && (*pte & PTE_VALID) ? (*pte & PTE_ADDR) | (v & ~PAGE_MASK) : 0;
}

/*
 * free_initmem: unmap the init text from the kernel-image map (zero stores into the PTE
 * table, which KPCore sees as unmappings) and give its pages to the page allocator.
 */
void free_initmem(void)
{
	u64 n = 0;
	for (u64 va = (u64)__inittext_begin; va < (u64)__inittext_end; va += PAGE_SIZE, n++)
		unmap_kernel_page(va);
	bm_free(&page_bm, __pa_symbol(__inittext_begin), n);
	printk("Freeing unused kernel memory: %luK\n", n * 4);
}
