/*
 * Kernel page tables (swapper_pg_dir, TTBR1; 4 levels, 4 KB granule, 48-bit VA).
 *
 * Every update is a plain 64-bit store into a table page, as Linux's set_pte/set_pmd/
 * set_pud/set_pgd do (`str Xt, [Xn]`, ESR.ISV = 1); clears are `str xzr`. Under KPCore the
 * table pages are read-only at stage 2 and each such store traps and is emulated. New tables
 * come from the page-table pool and are zeroed with STP XZR pairs (clear_table_page).
 */
#include "kernel.h"

extern u64 swapper_pa, resv_base;
extern u64 early_pgtable_alloc(void);
static int mmu_on;   /* 0 while the tables are built at PA (head.S, MMU off) */

static inline u64 *tbl(u64 pa) { return mmu_on ? (u64 *)__va(pa) : (u64 *)pa; }

static inline void set_entry(u64 *p, u64 v)   /* set_pte / set_pmd / set_pud / set_pgd */
{
	WRITE_ONCE(*p, v);
	dsb(ishst);
	isb();
}

u64 prot_bits(int prot)
{
	const u64 normal = PTE_VALID | PTE_AF | PTE_SH_IS | PTE_ATTRIDX(MT_NORMAL);
	switch (prot) {
	case PROT_KERNEL_RO:  return normal | PTE_RDONLY | PTE_PXN | PTE_UXN;
	case PROT_KERNEL_RX:  return normal | PTE_RDONLY | PTE_UXN;
	case PROT_KERNEL_RWX: return normal | PTE_UXN;
	case PROT_DEVICE:     return PTE_VALID | PTE_AF | PTE_ATTRIDX(MT_DEVICE_nGnRE) | PTE_PXN | PTE_UXN;
	default:              return normal | PTE_PXN | PTE_UXN;
	}
}

/* Next-level table of entry *p, allocated (from the pool) and linked if absent. */
static u64 *next_table(u64 *p, int alloc)
{
	u64 e = READ_ONCE(*p);
	if (e & PTE_VALID)
		return (e & PTE_TABLE) ? tbl(e & PTE_ADDR) : NULL;   /* NULL: a block */
	if (!alloc)
		return NULL;
	u64 pa = mmu_on ? pgtable_alloc() : early_pgtable_alloc();
	set_entry(p, pa | PTE_TABLE | PTE_VALID);
	return tbl(pa);
}

/* The level-3 entry for va (allocating tables on the way when asked). */
u64 *kernel_pte(u64 va, int alloc)
{
	u64 *pgd = tbl(swapper_pa);
	u64 *pud = next_table(&pgd[(va >> 39) & 511], alloc);
	if (!pud)
		return NULL;
	u64 *pmd = next_table(&pud[(va >> 30) & 511], alloc);
	if (!pmd)
		return NULL;
	u64 *pte = next_table(&pmd[(va >> 21) & 511], alloc);
	return pte ? &pte[(va >> 12) & 511] : NULL;
}

int map_kernel_page(u64 va, u64 pa, u64 attrs)
{
	u64 *pte = kernel_pte(va, 1);
	if (!pte)
		return -1;
	set_entry(pte, (pa & PTE_ADDR) | attrs | PTE_TABLE);
	return 0;
}

void flush_tlb_kernel(u64 va)
{
	dsb(ishst);
	asm volatile("tlbi vaale1is, %0" :: "r"((va >> 12) & 0xfffffffffffULL));
	dsb(ish);
	isb();
}

u64 unmap_kernel_page(u64 va)
{
	u64 *pte = kernel_pte(va, 0);
	if (!pte || !(*pte & PTE_VALID))
		return 0;
	u64 old = *pte;
	set_entry(pte, 0);
	flush_tlb_kernel(va);
	return old & PTE_ADDR;
}

static __init void map_block_2m(u64 va, u64 pa, u64 attrs)
{
	u64 *pgd = tbl(swapper_pa);
	u64 *pud = next_table(&pgd[(va >> 39) & 511], 1);
	u64 *pmd = next_table(&pud[(va >> 30) & 511], 1);
	set_entry(&pmd[(va >> 21) & 511], (pa & PTE_ADDR) | attrs);   /* bit 1 clear: block */
}

static __init void map_segment(char *start, char *end, int prot)
{
	u64 pa = ALIGN_UP((u64)start, PAGE_SIZE) & PAGE_MASK;
	for (; pa < (u64)end; pa += PAGE_SIZE)
		map_kernel_page(pa + kimage_voffset, pa, prot_bits(prot));
}

extern u64 idmap_pg_dir[512], idmap_pud[512];

/*
 * MMU off. The kernel image is mapped with 4 KB pages per segment, each with its own
 * permissions (text RX, rodata RO, init text RX, data/bss/pgdir RW); the linear map of RAM
 * after the hypervisor's region uses 2 MiB blocks, RW and never executable. The idmap
 * (TTBR0, one 1 GiB block) only carries the MMU-on instruction and is dropped right after.
 */
__init void early_map_kernel(void)
{
	map_segment(_text, _etext, PROT_KERNEL_RX);
	map_segment(__start_rodata, __init_begin, PROT_KERNEL_RO);
	map_segment(__inittext_begin, __inittext_end, PROT_KERNEL_RX);
	map_segment(_data, _edata, PROT_KERNEL_RW);
	map_segment(__bss_start, _end, PROT_KERNEL_RW);
	u64 attrs = prot_bits(PROT_KERNEL_RW) & ~PTE_TABLE;
	for (u64 pa = KERNEL_PA; pa < ram_end; pa += SZ_2M)
		map_block_2m(pa - PHYS_OFFSET + PAGE_OFFSET, pa, attrs);
	u64 *idpgd = idmap_pg_dir, *idpud = idmap_pud;
	idpgd[0] = (u64)idpud | PTE_TABLE | PTE_VALID;
	idpud[KERNEL_PA >> 30] = (KERNEL_PA & ~((1ULL << 30) - 1)) |
		(prot_bits(PROT_KERNEL_RWX) & ~PTE_TABLE);
}

/* ---- vmalloc area ---------------------------------------------------------------------- */

static u64 vmalloc_bits[(VMALLOC_END - VMALLOC_START) / PAGE_SIZE / 64];
static u64 modva_bits[(MODULES_END - MODULES_USE) / PAGE_SIZE / 64];
struct bitmap_alloc vmalloc_bm, modva_bm;

void paging_init_late(void)
{
	mmu_on = 1;
	vmalloc_bm = (struct bitmap_alloc){ vmalloc_bits, VMALLOC_START,
		(VMALLOC_END - VMALLOC_START) / PAGE_SIZE, 0, (VMALLOC_END - VMALLOC_START) / PAGE_SIZE };
	modva_bm = (struct bitmap_alloc){ modva_bits, MODULES_USE,
		(MODULES_END - MODULES_USE) / PAGE_SIZE, 0, (MODULES_END - MODULES_USE) / PAGE_SIZE };
}

/* A VA range with one unmapped guard page after it. */
u64 va_alloc(struct bitmap_alloc *b, u64 npages) { return bm_alloc(b, npages + 1, 1); }

void *vmap_range(u64 pa, u64 size, int prot)
{
	u64 n = ALIGN_UP(size + (pa & ~PAGE_MASK), PAGE_SIZE) / PAGE_SIZE;
	u64 va = va_alloc(&vmalloc_bm, n);
	if (!va)
		return NULL;
	for (u64 i = 0; i < n; i++)
		map_kernel_page(va + i * PAGE_SIZE, (pa & PAGE_MASK) + i * PAGE_SIZE, prot_bits(prot));
	return (void *)(va + (pa & ~PAGE_MASK));
}

void vunmap_range(void *va, u64 size)
{
	u64 base = (u64)va & PAGE_MASK;
	u64 n = ALIGN_UP(size + ((u64)va & ~PAGE_MASK), PAGE_SIZE) / PAGE_SIZE;
	for (u64 i = 0; i < n; i++)
		unmap_kernel_page(base + i * PAGE_SIZE);
	bm_free(&vmalloc_bm, base, n + 1);
}

void *ioremap(u64 pa, u64 size) { return vmap_range(pa, size, PROT_DEVICE); }

/* vmalloc: page by page from the page allocator, mapped RW into the vmalloc area. */
void *vmalloc(u64 size)
{
	u64 n = ALIGN_UP(size, PAGE_SIZE) / PAGE_SIZE;
	u64 va = va_alloc(&vmalloc_bm, n);
	if (!va)
		return NULL;
	for (u64 i = 0; i < n; i++) {
		u64 pa = alloc_pages(1);
		if (!pa) {
			while (i--)
				free_pages(unmap_kernel_page(va + i * PAGE_SIZE), 1);
			bm_free(&vmalloc_bm, va, n + 1);
			return NULL;
		}
		map_kernel_page(va + i * PAGE_SIZE, pa, prot_bits(PROT_KERNEL_RW));
	}
	return (void *)va;
}
EXPORT_SYMBOL(vmalloc);

void vfree(void *va, u64 size)
{
	u64 n = ALIGN_UP(size, PAGE_SIZE) / PAGE_SIZE;
	for (u64 i = 0; i < n; i++) {
		u64 pa = unmap_kernel_page((u64)va + i * PAGE_SIZE);
		if (pa)
			free_pages(pa, 1);
	}
	bm_free(&vmalloc_bm, (u64)va, n + 1);
}
EXPORT_SYMBOL(vfree);
