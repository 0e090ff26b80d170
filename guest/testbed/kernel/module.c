/*
 * Kernel modules, the SECvma way (kpcore-spec §7.2): copy the .ko into a temporary image
 * (module ro pool pages), lay the sections out into a text run (module text pool) and a ro run
 * (module ro pool), write each section's final VA into its sh_addr, build the checklist of
 * section indices, and ask EL2 to authenticate, link and relocate: HVC 30 (MLOAD). When the
 * hypervisor does not implement it (HVC_ENOSYS, e.g. policy "none") the kernel links and
 * relocates the module itself, unprotected, as an unmodified Linux would.
 */
#include "kernel.h"

#define SHT_SYMTAB 2
#define SHT_STRTAB 3
#define SHT_RELA 4
#define SHT_NOBITS 8
#define SHF_WRITE 1
#define SHF_ALLOC 2
#define SHF_EXECINSTR 4
#define SHN_UNDEF 0
#define SHN_ABS 0xfff1
#define SHN_COMMON 0xfff2
#define STB_WEAK 2

struct elf64_ehdr {
	u8 ident[16];
	u16 type, machine;
	u32 version;
	u64 entry, phoff, shoff;
	u32 flags;
	u16 ehsize, phentsize, phnum, shentsize, shnum, shstrndx;
};
struct elf64_shdr { u32 name, type; u64 flags, addr, offset, size; u32 link, info; u64 addralign, entsize; };
struct elf64_sym { u32 name; u8 info, other; u16 shndx; u64 value, size; };
struct elf64_rela { u64 offset, info; s64 addend; };

#define MAX_MODULES 8
#define MAX_CHECK 100
struct loaded_module {
	int used, protected;
	char name[32];
	u64 tmp_va, tmp_pa, tmp_pages;
	u64 text_pa, text_pages, ro_pa, ro_pages, data_va, data_size;
	u64 init_fn, exit_fn;
	struct secvma_mod_arch arch;
};
static struct loaded_module mods[MAX_MODULES];
u64 module_reports[8];

void module_report(u64 id, u64 value)
{
	if (id < ARRAY_SIZE(module_reports))
		module_reports[id] = value;
}
EXPORT_SYMBOL_GPL(module_report);

/* binary search in a name-sorted ksymtab, as EL2's el2_resolve_symbol does */
static u64 ksym_search(struct kernel_symbol *lo, struct kernel_symbol *hi, const char *name)
{
	while (lo < hi) {
		struct kernel_symbol *mid = lo + (hi - lo) / 2;
		int c = strcmp(name, (const char *)mid->name);
		if (!c)
			return mid->value;
		if (c < 0)
			hi = mid;
		else
			lo = mid + 1;
	}
	return 0;
}

u64 ksym_lookup(const char *name)
{
	u64 v = ksym_search((struct kernel_symbol *)__start___ksymtab,
			    (struct kernel_symbol *)__stop___ksymtab, name);
	return v ? v : ksym_search((struct kernel_symbol *)__start___ksymtab_gpl,
				   (struct kernel_symbol *)__stop___ksymtab_gpl, name);
}

/* ---- relocation (fallback loader only) --------------------------------------------------- */

static void insn_imm(u32 *p, u32 mask, u32 val) { *p = (*p & ~mask) | (val & mask); }

static int apply_rela(u32 type, u64 P, u64 SA, char *msg, u64 msglen)
{
	u32 *insn = (u32 *)P;
	s64 off;
	switch (type) {
	case 0: case 256:                    /* NONE */
		return 0;
	case 257: *(u64 *)P = SA; return 0;  /* ABS64 */
	case 258: *(u32 *)P = (u32)SA; return 0;
	case 260: *(u64 *)P = SA - P; return 0;
	case 261:                            /* PREL32 */
		off = (s64)(SA - P);
		if (off != (s64)(int)off)
			goto overflow;
		*(u32 *)P = (u32)off;
		return 0;
	case 275: case 276: {                /* ADR_PREL_PG_HI21(_NC) */
		off = (s64)((SA & PAGE_MASK) - (P & PAGE_MASK)) >> 12;
		if (type == 275 && (off < -(1LL << 20) || off >= (1LL << 20)))
			goto overflow;
		insn_imm(insn, 3u << 29, (u32)(off & 3) << 29);
		insn_imm(insn, 0x7ffffu << 5, (u32)((off >> 2) & 0x7ffff) << 5);
		return 0;
	}
	case 277: case 278: case 284: case 285: case 286: case 299: {   /* ADD/LDSTn_ABS_LO12_NC */
		int shift = type == 284 ? 1 : type == 285 ? 2 : type == 286 ? 3 : type == 299 ? 4 : 0;
		insn_imm(insn, 0xfffu << 10, (u32)(((SA & 0xfff) >> shift) << 10));
		return 0;
	}
	case 282: case 283:                  /* JUMP26 / CALL26 */
		off = (s64)(SA - P);
		if (off < -(1LL << 27) || off >= (1LL << 27))
			goto overflow;
		insn_imm(insn, 0x3ffffff, (u32)(off >> 2));
		return 0;
	}
	snprintf(msg, msglen, "unsupported relocation type %u", type);
	return -1;
overflow:
	snprintf(msg, msglen, "relocation %u overflows at %lx", type, P);
	return -1;
}

static int link_and_relocate(struct elf64_ehdr *eh, struct elf64_shdr *sh, char *msg, u64 msglen)
{
	const char *shstr = (const char *)eh + sh[eh->shstrndx].offset;
	for (int i = 1; i < eh->shnum; i++) {
		if (sh[i].type != SHT_SYMTAB)
			continue;
		struct elf64_sym *sym = (void *)((char *)eh + sh[i].offset);
		const char *str = (const char *)eh + sh[sh[i].link].offset;
		for (u64 k = 1; k < sh[i].size / sizeof(*sym); k++) {   /* simplify_symbols */
			struct elf64_sym *s = &sym[k];
			if (s->shndx == SHN_UNDEF) {
				u64 v = ksym_lookup(str + s->name);
				if (!v && (s->info >> 4) != STB_WEAK) {
					snprintf(msg, msglen, "unknown symbol %s", str + s->name);
					return -1;
				}
				s->value = v;
			} else if (s->shndx < SHN_ABS && s->shndx < eh->shnum) {
				s->value += sh[s->shndx].addr;
			}
		}
		for (int r = 1; r < eh->shnum; r++) {              /* apply_relocate_add */
			if (sh[r].type != SHT_RELA || sh[r].link != (u32)i || !(sh[sh[r].info].flags & SHF_ALLOC))
				continue;
			struct elf64_rela *rel = (void *)((char *)eh + sh[r].offset);
			for (u64 k = 0; k < sh[r].size / sizeof(*rel); k++) {
				u64 P = sh[sh[r].info].addr + rel[k].offset;
				u64 SA = sym[rel[k].info >> 32].value + (u64)rel[k].addend;
				if (apply_rela((u32)rel[k].info, P, SA, msg, msglen))
					return -1;
			}
		}
		(void)shstr;
		return 0;
	}
	snprintf(msg, msglen, "module has no symbol table");
	return -1;
}

/* ---- layout -------------------------------------------------------------------------------- */

static int is_init(const char *name) { return !strncmp(name, ".init", 5); }

/* Place sections matching (want flags, init) into a run starting at *size; record them. */
static void place(struct elf64_shdr *sh, int n, const char *shstr, u64 mask, u64 want, int init,
		  u64 base, u64 *size, u32 *check, u32 *ncheck)
{
	for (int i = 1; i < n; i++) {
		if ((sh[i].flags & mask) != want || is_init(shstr + sh[i].name) != init || sh[i].addr)
			continue;
		u64 al = sh[i].addralign ? sh[i].addralign : 1;
		*size = ALIGN_UP(*size, al);
		sh[i].addr = base + *size;
		*size += sh[i].size;
		if (check && *ncheck < MAX_CHECK)
			check[(*ncheck)++] = (u32)i;
	}
}

static void *map_pool_run(int ro, u64 pages, u64 *pa_out, u64 *va_out)
{
	u64 pa = modpool_alloc(ro, pages);
	u64 va = pa ? va_alloc(&modva_bm, pages) : 0;
	if (!va)
		return NULL;
	for (u64 i = 0; i < pages; i++) {
		map_kernel_page(va + i * PAGE_SIZE, pa + i * PAGE_SIZE,
				prot_bits(ro ? PROT_KERNEL_RW : PROT_KERNEL_RWX));
		memset((void *)(va + i * PAGE_SIZE), 0, PAGE_SIZE);
	}
	*pa_out = pa;
	*va_out = va;
	return (void *)va;
}

static void unmap_pool_run(int ro, u64 va, u64 pa, u64 pages)
{
	for (u64 i = 0; i < pages; i++)
		unmap_kernel_page(va + i * PAGE_SIZE);
	bm_free(&modva_bm, va, pages + 1);
	modpool_free(ro, pa, pages);
}

static void set_run_prot(u64 va, u64 pa, u64 pages, int prot)
{
	for (u64 i = 0; i < pages; i++) {   /* same output address, new permissions: an "update" */
		map_kernel_page(va + i * PAGE_SIZE, pa + i * PAGE_SIZE, prot_bits(prot));
		flush_tlb_kernel(va + i * PAGE_SIZE);
	}
}

static u64 find_sym(struct elf64_ehdr *eh, struct elf64_shdr *sh, const char *want)
{
	for (int i = 1; i < eh->shnum; i++) {
		if (sh[i].type != SHT_SYMTAB)
			continue;
		struct elf64_sym *sym = (void *)((char *)eh + sh[i].offset);
		const char *str = (const char *)eh + sh[sh[i].link].offset;
		for (u64 k = 1; k < sh[i].size / sizeof(*sym); k++)
			if (!strcmp(str + sym[k].name, want) && sym[k].shndx && sym[k].shndx < eh->shnum)
				return sh[sym[k].shndx].addr + sym[k].value;
	}
	return 0;
}

static void module_free(struct loaded_module *m)
{
	u64 tp = m->text_pages, rp = m->ro_pages;
	if (tp)
		unmap_pool_run(0, m->arch.text_va, m->text_pa, tp);
	if (rp)
		unmap_pool_run(1, m->arch.ro_va, m->ro_pa, rp);
	if (m->data_va)
		vfree((void *)m->data_va, m->data_size);
	m->used = 0;
}

static void free_tmp(struct loaded_module *m)
{
	if (m->tmp_va)
		unmap_pool_run(1, m->tmp_va, m->tmp_pa, m->tmp_pages);
	m->tmp_va = 0;
}

int module_load(const void *image, u64 len, int *handle, u64 *modid, int *init_rc, char *msg, u64 msglen)
{
	struct loaded_module *m = NULL;
	for (int i = 0; i < MAX_MODULES && !m; i++)
		if (!mods[i].used) {
			m = &mods[i];
			*handle = i;
		}
	if (!m)
		return snprintf(msg, msglen, "too many modules"), -1;
	memset(m, 0, sizeof(*m));
	m->used = 1;
	m->arch.modid = HVC_INVALID;

	/* 1. temporary image (module ro pool pages), like VM_SEKVM_TMP */
	m->tmp_pages = ALIGN_UP(len, PAGE_SIZE) / PAGE_SIZE;
	struct elf64_ehdr *eh = map_pool_run(1, m->tmp_pages, &m->tmp_pa, &m->tmp_va);
	if (!eh)
		return snprintf(msg, msglen, "module pool exhausted"), m->used = 0, -1;
	memcpy(eh, image, len);
	if (memcmp(eh->ident, "\177ELF\2\1", 6) || eh->type != 1 || eh->machine != 183 ||
	    eh->shentsize != sizeof(struct elf64_shdr) || eh->shoff + (u64)eh->shnum * 64 > len) {
		snprintf(msg, msglen, "not an AArch64 relocatable ELF");
		goto fail;
	}
	struct elf64_shdr *sh = (void *)((char *)eh + eh->shoff);
	const char *shstr = (const char *)eh + sh[eh->shstrndx].offset;
	for (int i = 0; i < eh->shnum; i++) {
		sh[i].addr = 0;
		if (!strcmp(shstr + sh[i].name, ".modinfo"))   /* never loaded, as in Linux */
			sh[i].flags &= ~(u64)SHF_ALLOC;
	}

	/* 2. layout: sizes first (base 0), then real addresses */
	const u64 AXW = SHF_ALLOC | SHF_EXECINSTR | SHF_WRITE;
	u64 tsz = 0, rsz = 0, dsz = 0, ntext;
	place(sh, eh->shnum, shstr, AXW, SHF_ALLOC | SHF_EXECINSTR, 0, 0, &tsz, NULL, NULL);
	place(sh, eh->shnum, shstr, AXW, SHF_ALLOC | SHF_EXECINSTR, 1, 0, &tsz, NULL, NULL);
	place(sh, eh->shnum, shstr, AXW, SHF_ALLOC, 0, 0, &rsz, NULL, NULL);
	place(sh, eh->shnum, shstr, AXW, SHF_ALLOC, 1, 0, &rsz, NULL, NULL);
	for (int i = 1; i < eh->shnum; i++)
		if (sh[i].type == SHT_SYMTAB)
			rsz = ALIGN_UP(rsz, 8) + sh[i].size + sh[sh[i].link].size + 8;
	place(sh, eh->shnum, shstr, SHF_ALLOC | SHF_WRITE, SHF_ALLOC | SHF_WRITE, 0, 0, &dsz, NULL, NULL);
	place(sh, eh->shnum, shstr, SHF_ALLOC | SHF_WRITE, SHF_ALLOC | SHF_WRITE, 1, 0, &dsz, NULL, NULL);
	for (int i = 0; i < eh->shnum; i++)
		sh[i].addr = 0;
	m->text_pages = ALIGN_UP(tsz ? tsz : 1, PAGE_SIZE) / PAGE_SIZE;
	m->ro_pages = ALIGN_UP(rsz ? rsz : 1, PAGE_SIZE) / PAGE_SIZE;
	if (!map_pool_run(0, m->text_pages, &m->text_pa, &m->arch.text_va) ||
	    !map_pool_run(1, m->ro_pages, &m->ro_pa, &m->arch.ro_va)) {
		m->text_pages = m->arch.text_va ? m->text_pages : 0;
		m->ro_pages = m->arch.ro_va ? m->ro_pages : 0;
		snprintf(msg, msglen, "module pool exhausted");
		goto fail;
	}
	m->data_size = dsz ? dsz : 1;
	m->data_va = (u64)vmalloc(m->data_size);

	u32 *check = vmalloc(PAGE_SIZE), n = 0;
	tsz = rsz = dsz = 0;
	place(sh, eh->shnum, shstr, AXW, SHF_ALLOC | SHF_EXECINSTR, 0, m->arch.text_va, &tsz, check, &n);
	ntext = tsz;
	place(sh, eh->shnum, shstr, AXW, SHF_ALLOC, 0, m->arch.ro_va, &rsz, check, &n);
	place(sh, eh->shnum, shstr, AXW, SHF_ALLOC | SHF_EXECINSTR, 1, m->arch.text_va, &tsz, check, &n);
	place(sh, eh->shnum, shstr, AXW, SHF_ALLOC, 1, m->arch.ro_va, &rsz, check, &n);
	for (int i = 1; i < eh->shnum; i++)
		if (sh[i].type == SHT_SYMTAB) {          /* KALLSYMS: symtab + strtab after init ro */
			rsz = ALIGN_UP(rsz, 8);
			sh[i].addr = m->arch.ro_va + rsz;
			rsz += sh[i].size;
			sh[sh[i].link].addr = m->arch.ro_va + rsz;
			rsz += sh[sh[i].link].size;
			check[n++] = (u32)i;
			check[n++] = sh[i].link;
		}
	for (int i = 1; i < eh->shnum; i++)             /* RELA of checklisted sections */
		for (u32 k = 0; k < n && sh[i].type == SHT_RELA; k++)
			if (check[k] == sh[i].info) {
				check[n++] = (u32)i;
				break;
			}
	place(sh, eh->shnum, shstr, SHF_ALLOC | SHF_WRITE, SHF_ALLOC | SHF_WRITE, 0, m->data_va, &dsz, NULL, NULL);
	place(sh, eh->shnum, shstr, SHF_ALLOC | SHF_WRITE, SHF_ALLOC | SHF_WRITE, 1, m->data_va, &dsz, NULL, NULL);
	m->arch.text_size = ntext;
	m->arch.init_text_va = m->arch.text_va + ntext;
	m->arch.init_text_size = tsz - ntext;
	m->arch.ro_size = rsz;
	m->arch.data_va = m->data_va;
	m->arch.data_size = dsz;

	/* 3. copy the sections to their final place */
	for (int i = 1; i < eh->shnum; i++)
		if (sh[i].addr && sh[i].type != SHT_RELA) {
			if (sh[i].type == SHT_NOBITS)
				memset((void *)sh[i].addr, 0, sh[i].size);
			else
				memcpy((void *)sh[i].addr, (char *)eh + sh[i].offset, sh[i].size);
		}
	for (int i = 1; i < eh->shnum; i++)
		if (!strcmp(shstr + sh[i].name, ".modinfo") && !strncmp((char *)eh + sh[i].offset, "name=", 5))
			strncpy_z(m->name, (char *)eh + sh[i].offset + 5, sizeof(m->name));

	/* 4. ask EL2 (HVC 30), or link and relocate here (symbol values become absolute) */
	m->init_fn = find_sym(eh, sh, "init_module");
	m->exit_fn = find_sym(eh, sh, "cleanup_module");
	u64 r = hvc_call(HVC_MLOAD, (u64)eh, 0, (u64)&m->arch, (u64)check, n);
	vfree(check, PAGE_SIZE);
	if (r == HVC_ENOSYS) {
		if (link_and_relocate(eh, sh, msg, msglen))
			goto fail;
		set_run_prot(m->arch.text_va, m->text_pa, m->text_pages, PROT_KERNEL_RX);
		set_run_prot(m->arch.ro_va, m->ro_pa, m->ro_pages, PROT_KERNEL_RO);
	} else if (r == HVC_INVALID) {
		snprintf(msg, msglen, "hypervisor refused module %s (HVC 30)", m->name);
		goto fail;
	} else {
		m->protected = 1;
		m->arch.modid = r;
	}
	asm volatile("ic iallu; dsb ish; isb");
	free_tmp(m);

	/* 5. init, under the probe: a module whose text the hypervisor left non-executable
	 * (e.g. loaded by the kernel while EL2 forces PXN) fails to load instead of oopsing */
	*modid = m->arch.modid;
	*init_rc = m->init_fn ? (int)probe_call((void *)m->init_fn, 0, 0, 0, 0) : 0;
	if (probe.faulted) {
		snprintf(msg, msglen, "%s: init faulted (esr %lx far %lx)%s", m->name, probe.esr,
			 probe.far, m->protected ? "" : ": module text not executable, loaded without EL2");
		printk("module %s\n", msg);
		if (m->protected)
			hvc_call(HVC_MFREE, m->arch.modid, 0, 0, 0, 0);
		module_free(m);
		return -1;
	}
	if (m->protected)
		hvc_call(HVC_MOD_INIT_FREE, m->arch.modid, 0, 0, 0, 0);
	if (*init_rc) {
		snprintf(msg, msglen, "%s: init returned %d", m->name, *init_rc);
		if (m->protected)
			hvc_call(HVC_MFREE, m->arch.modid, 0, 0, 0, 0);
		module_free(m);
		return -1;
	}
	snprintf(msg, msglen, "%s loaded at %lx (%s)", m->name, m->arch.text_va,
		 m->protected ? "protected by EL2" : "kernel-side loader");
	printk("module %s\n", msg);
	return 0;
fail:
	printk("module load failed: %s\n", msg);
	free_tmp(m);
	module_free(m);
	return -1;
}

int module_unload(int handle, char *msg, u64 msglen)
{
	if (handle < 0 || handle >= MAX_MODULES || !mods[handle].used)
		return snprintf(msg, msglen, "no module %d", handle), -1;
	struct loaded_module *m = &mods[handle];
	if (m->exit_fn && (probe_call((void *)m->exit_fn, 0, 0, 0, 0), probe.faulted))
		printk("module %s: exit faulted (esr %lx far %lx)\n", m->name, probe.esr, probe.far);
	if (m->protected && hvc_call(HVC_MFREE, m->arch.modid, 0, 0, 0, 0) == HVC_INVALID)
		printk("module %s: HVC 31 (MFREE) refused\n", m->name);
	snprintf(msg, msglen, "%s unloaded", m->name);
	module_free(m);
	return 0;
}
