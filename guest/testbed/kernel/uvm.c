/*
 * User address spaces (TTBR0). The PGD comes from the page-table pool and is registered with
 * HVC 33 (ALLOC_EL0_PGD) / released with HVC 34 (FREE_EL0_PGD); under KPCore it is read-only
 * at stage 2 and the stores linking PUDs into it are emulated (PXNTable forced). Lower levels
 * are ordinary pages. Every mapping is populated eagerly (no demand paging).
 */
#include "kernel.h"

/*
 * ASIDs are even, as Linux allocates them with KPTI (UNMAP_KERNEL_AT_EL0, SECvma's config):
 * the odd twin (bit 48 of TTBR1, USER_ASID_FLAG) belongs to the trampoline's user view, and
 * KPCore accepts TTBR1 = swapper only with that bit clear.
 */
static u16 next_asid = 2;

#define USER_PAGE (PTE_VALID | PTE_TABLE | PTE_AF | PTE_SH_IS | PTE_ATTRIDX(MT_NORMAL) | \
		   PTE_USER | PTE_NG | PTE_PXN)

u64 alloc_asid(void)
{
	for (;;) {
		u16 a = next_asid;
		next_asid += 2;
		if (!next_asid) {
			next_asid = 2;
			asm volatile("tlbi vmalle1is; dsb ish; isb");
		}
		int used = !a;
		for (int i = 0; i < NTASKS && !used; i++)
			used = tasks[i].state != T_UNUSED && tasks[i].mm && tasks[i].mm->asid == a;
		if (!used)
			return a;
	}
}

struct mm *mm_create(void)
{
	u64 pa = alloc_pages(1);
	if (!pa)
		return NULL;
	struct mm *mm = __va(pa);
	mm->pgd = pgtable_alloc();
	hvc_call(HVC_ALLOC_EL0_PGD, mm->pgd, 0, 0, 0, 0);
	mm->asid = (u16)alloc_asid();
	mm->mmap_next = USER_MMAP_BASE;
	return mm;
}

static u64 *utable(u64 *entry, int alloc, int top)
{
	u64 e = READ_ONCE(*entry);
	if (e & PTE_VALID)
		return __va(e & PTE_ADDR);
	if (!alloc)
		return NULL;
	u64 pa = alloc_pages(1);
	if (!pa)
		return NULL;
	(void)top;
	WRITE_ONCE(*entry, pa | PTE_TABLE | PTE_VALID);   /* into the PGD: a trapped store under KPCore */
	dsb(ishst);
	return __va(pa);
}

static u64 *user_pte(struct mm *mm, u64 va, int alloc)
{
	u64 *pgd = __va(mm->pgd);
	u64 *pud = utable(&pgd[(va >> 39) & 511], alloc, 1);
	u64 *pmd = pud ? utable(&pud[(va >> 30) & 511], alloc, 0) : NULL;
	u64 *pte = pmd ? utable(&pmd[(va >> 21) & 511], alloc, 0) : NULL;
	return pte ? &pte[(va >> 12) & 511] : NULL;
}

static int add_vma(struct mm *mm, u64 start, u64 end)
{
	for (int i = 0; i < NVMA; i++)
		if (mm->vma[i].end == 0) {
			mm->vma[i] = (struct vma){ start, end };
			return 0;
		}
	return -1;
}

/* Map fresh zeroed pages at [va, va+size), user RW (and executable when asked). */
int map_user(struct mm *mm, u64 va, u64 size, int exec)
{
	for (u64 a = va; a < va + size; a += PAGE_SIZE) {
		u64 *pte = user_pte(mm, a, 1);
		u64 pa = pte ? alloc_pages(1) : 0;
		if (!pa)
			return -1;
		WRITE_ONCE(*pte, pa | USER_PAGE | (exec ? 0 : PTE_UXN));
	}
	dsb(ishst);
	return add_vma(mm, va, va + size);
}

int unmap_user(struct mm *mm, u64 va, u64 size)
{
	int found = -1;
	for (int i = 0; i < NVMA; i++)
		if (mm->vma[i].start == va && mm->vma[i].end == va + size) {
			mm->vma[i].start = mm->vma[i].end = 0;
			found = 0;
		}
	if (found)
		return -1;
	for (u64 a = va; a < va + size; a += PAGE_SIZE) {
		u64 *pte = user_pte(mm, a, 0);
		if (pte && (*pte & PTE_VALID)) {
			u64 pa = *pte & PTE_ADDR;
			WRITE_ONCE(*pte, 0);
			free_pages(pa, 1);
		}
	}
	dsb(ishst);
	asm volatile("tlbi aside1is, %0; dsb ish; isb" :: "r"((u64)mm->asid << 48));
	return 0;
}

u64 mmap_anon(struct mm *mm, u64 size)
{
	size = ALIGN_UP(size, PAGE_SIZE);
	u64 va = mm->mmap_next;
	if (!size || map_user(mm, va, size, 0))
		return (u64)-12;
	mm->mmap_next += size + PAGE_SIZE;
	return va;
}

u64 user_pa(struct mm *mm, u64 va)
{
	u64 *pte = user_pte(mm, va, 0);
	return pte && (*pte & PTE_VALID) ? (*pte & PTE_ADDR) | (va & ~PAGE_MASK) : 0;
}

/* Is [va, va+size) mapped for EL0 in mm? (checked by walking, before the kernel touches it) */
int user_ok(struct mm *mm, u64 va, u64 size, int write)
{
	(void)write;
	if (va >= TASK_SIZE || va + size > TASK_SIZE || va + size < va)
		return 0;
	for (u64 a = va & PAGE_MASK; a < va + size; a += PAGE_SIZE) {
		u64 *pte = user_pte(mm, a, 0);
		if (!pte || !(*pte & PTE_VALID) || !(*pte & PTE_USER))
			return 0;
	}
	return 1;
}

static void free_level(u64 *table, int level)
{
	for (int i = 0; i < 512; i++) {
		u64 e = table[i];
		if (!(e & PTE_VALID))
			continue;
		if (level < 3)
			free_level(__va(e & PTE_ADDR), level + 1);
		if (!(level == 3 && (e & PTE_ADDR) == __pa_symbol(__vdso_start)))
			free_pages(e & PTE_ADDR, 1);
	}
}

/* Caller made sure mm is not the active one. */
void mm_destroy(struct mm *mm)
{
	asm volatile("tlbi aside1is, %0; dsb ish; isb" :: "r"((u64)mm->asid << 48));
	u64 *pgd = __va(mm->pgd);
	for (int i = 0; i < 512; i++)
		if (pgd[i] & PTE_VALID) {
			free_level(__va(pgd[i] & PTE_ADDR), 1);
			free_pages(pgd[i] & PTE_ADDR, 1);
		}
	hvc_call(HVC_FREE_EL0_PGD, mm->pgd, 0, 0, 0, 0);
	pgtable_free(mm->pgd);
	free_pages(__pa(mm), 1);
}

/* The user image (text+data+bss, one RWX region), a stack, and the vDSO page (RX). */
int load_user_program(struct mm *mm, u64 *entry, u64 *sp)
{
	u64 size = ALIGN_UP((u64)(user_image_end - user_image_start), PAGE_SIZE) + 4 * PAGE_SIZE;
	if (map_user(mm, USER_IMAGE_VA, size, 1) ||
	    map_user(mm, USER_STACK_TOP - USER_STACK_SIZE, USER_STACK_SIZE, 0))
		return -1;
	for (u64 off = 0; off < (u64)(user_image_end - user_image_start); off += PAGE_SIZE) {
		u64 n = (u64)(user_image_end - user_image_start) - off;
		memcpy(__va(user_pa(mm, USER_IMAGE_VA + off)), user_image_start + off,
		       n < PAGE_SIZE ? n : PAGE_SIZE);
	}
	u64 *pte = user_pte(mm, USER_VDSO_VA, 1);
	if (!pte)
		return -1;
	WRITE_ONCE(*pte, __pa_symbol(__vdso_start) | (USER_PAGE | PTE_RDONLY));
	add_vma(mm, USER_VDSO_VA, USER_VDSO_VA + PAGE_SIZE);
	asm volatile("ic iallu; dsb ish; isb");
	*entry = USER_IMAGE_VA;
	*sp = USER_STACK_TOP;
	return 0;
}
