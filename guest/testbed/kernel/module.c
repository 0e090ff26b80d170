/*
 * Kernel modules, the SECvma way (docs/kpcore-spec.md §7.2): copy the .ko into a temporary image
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
#define SHN_LORESERVE 0xff00
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
#define MAX_SHNUM 1024
struct loaded_module {
	int used, prot, init_done, exited;
	char name[56];
	u64 tmp_va, tmp_pa, tmp_pages;
	u64 text_pa, text_pages, ro_pa, ro_pages, data_pa, data_pages;
	u64 init_fn, exit_fn;
	u64 ksym_va, ksym_n, ksymgpl_va, ksymgpl_n;   /* exports: 6.1 prel32 kernel_symbol */
	u8 uses[MAX_MODULES];                       /* links against module j (ref_module) */
	struct secvma_mod_arch arch;
};
static struct loaded_module mods[MAX_MODULES];
struct secvma_mod_report module_info[MAX_MODULES];
u64 module_secaddr[MAX_MODULES][MOD_REPORT_SECS];
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

/* Linux 6.1 arm64 modules export `struct kernel_symbol {int value_offset, name_offset,
 * namespace_offset;}` (PREL32, 12 bytes), sorted by name by the module linker script. */
struct prel_symbol { s32 value_off, name_off, ns_off; };

static u64 prel_search(u64 va, u64 n, const char *name)
{
	struct prel_symbol *lo = (void *)va, *hi = lo + n;
	while (lo < hi) {
		struct prel_symbol *mid = lo + (hi - lo) / 2;
		int c = strcmp(name, (const char *)&mid->name_off + mid->name_off);
		if (!c)
			return (u64)&mid->value_off + (s64)mid->value_off;
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
	if (!v)
		v = ksym_search((struct kernel_symbol *)__start___ksymtab_gpl,
				(struct kernel_symbol *)__stop___ksymtab_gpl, name);
	for (int i = 0; i < MAX_MODULES && !v; i++)
		if (mods[i].used) {
			v = prel_search(mods[i].ksym_va, mods[i].ksym_n, name);
			if (!v)
				v = prel_search(mods[i].ksymgpl_va, mods[i].ksymgpl_n, name);
		}
	return v;
}

/* The generated Linux 6.1 export table (linux_syms.S): each function stub jumps here with
 * x16 = its index. Print the name the first time, return 0. */
const char *const linux_stub_names[1] __attribute__((weak)) = { "" };
const u64 linux_stub_count __attribute__((weak)) = 0;   /* overridden by linux_syms.S */
static u64 linux_stub_seen[16384 / 64];

u64 linux_stub_hit(u64 idx)
{
	if (idx < linux_stub_count && idx < 16384 &&
	    !(linux_stub_seen[idx / 64] & (1ULL << (idx % 64)))) {
		linux_stub_seen[idx / 64] |= 1ULL << (idx % 64);
		printk("linux stub: %s() called, returning 0\n", linux_stub_names[idx]);
	}
	return 0;
}

/* ---- relocation (fallback loader only): Linux 6.1 arch/arm64/kernel/module.c ------------ */

enum { OP_ABS, OP_PREL, OP_PAGE };
enum { IMM_12, IMM_14, IMM_16, IMM_19, IMM_26, IMM_ADR };
enum { MOVKZ, MOVNZ };

static s64 do_reloc(int op, u64 place, u64 val)
{
	switch (op) {
	case OP_ABS: return (s64)val;
	case OP_PREL: return (s64)(val - place);
	default: return (s64)((val & PAGE_MASK) - (place & PAGE_MASK));
	}
}

static u32 encode_imm(int type, u32 insn, u64 imm)
{
	u32 mask, shift;
	switch (type) {
	case IMM_ADR:
		insn &= ~((3u << 29) | (0x7ffffu << 5));
		return insn | (u32)(imm & 3) << 29 | (u32)((imm >> 2) & 0x7ffff) << 5;
	case IMM_26: mask = 0x3ffffff; shift = 0; break;
	case IMM_19: mask = 0x7ffff; shift = 5; break;
	case IMM_16: mask = 0xffff; shift = 5; break;
	case IMM_14: mask = 0x3fff; shift = 5; break;
	default: mask = 0xfff; shift = 10; break;
	}
	return (insn & ~(mask << shift)) | ((u32)imm & mask) << shift;
}

/* 0 or -1 (overflow) */
static int reloc_data(int op, u64 place, u64 val, int len)
{
	s64 sval = do_reloc(op, place, val);
	switch (len) {
	case 16:
		*(s16 *)place = (s16)sval;
		return op == OP_ABS ? (sval < 0 || sval > 0xffff) : (sval < -32768 || sval > 32767);
	case 32:
		*(s32 *)place = (s32)sval;
		return op == OP_ABS ? (sval < 0 || sval > 0xffffffffLL) :
			(sval < -(1LL << 31) || sval > (1LL << 31) - 1);
	default:
		*(s64 *)place = sval;
		return 0;
	}
}

static int reloc_insn_movw(int op, u64 place, u64 val, int lsb, int imm_type)
{
	u32 insn = *(u32 *)place;
	s64 sval = do_reloc(op, place, val);
	u64 imm = (u64)(sval >> lsb);
	if (imm_type == MOVNZ) {
		insn &= ~(3u << 29);
		if (sval >= 0)
			insn |= 2u << 29;
		else
			imm = ~imm;
	}
	*(u32 *)place = encode_imm(IMM_16, insn, imm);
	return imm > 0xffff;
}

static int reloc_insn_imm(int op, u64 place, u64 val, int lsb, int len, int imm_type)
{
	s64 sval = do_reloc(op, place, val) >> lsb;
	u64 imm_mask = ((1ULL << (lsb + len)) - 1) >> lsb;
	*(u32 *)place = encode_imm(imm_type, *(u32 *)place, (u64)sval & imm_mask);
	sval = (s64)((u64)sval & ~(imm_mask >> 1)) >> (len - 1);
	return (u64)(sval + 1) >= 2;
}

static int apply_rela(u32 type, u64 P, u64 val, char *msg, u64 msglen)
{
	int ovf, check = 1;
	switch (type) {
	case 0: case 256: return 0;                                             /* NONE */
	case 257: ovf = reloc_data(OP_ABS, P, val, 64); break;                  /* ABS64 */
	case 258: ovf = reloc_data(OP_ABS, P, val, 32); break;
	case 259: ovf = reloc_data(OP_ABS, P, val, 16); break;
	case 260: ovf = reloc_data(OP_PREL, P, val, 64); break;                 /* PREL64 */
	case 261: ovf = reloc_data(OP_PREL, P, val, 32); break;                 /* PREL32 */
	case 262: ovf = reloc_data(OP_PREL, P, val, 16); break;
	case 264: check = 0; /* fallthrough */                                  /* MOVW_UABS_G0_NC */
	case 263: ovf = reloc_insn_movw(OP_ABS, P, val, 0, MOVKZ); break;
	case 266: check = 0; /* fallthrough */
	case 265: ovf = reloc_insn_movw(OP_ABS, P, val, 16, MOVKZ); break;
	case 268: check = 0; /* fallthrough */
	case 267: ovf = reloc_insn_movw(OP_ABS, P, val, 32, MOVKZ); break;
	case 269: check = 0; ovf = reloc_insn_movw(OP_ABS, P, val, 48, MOVKZ); break;
	case 270: ovf = reloc_insn_movw(OP_ABS, P, val, 0, MOVNZ); break;      /* MOVW_SABS_G0.. */
	case 271: ovf = reloc_insn_movw(OP_ABS, P, val, 16, MOVNZ); break;
	case 272: ovf = reloc_insn_movw(OP_ABS, P, val, 32, MOVNZ); break;
	case 288: check = 0; ovf = reloc_insn_movw(OP_PREL, P, val, 0, MOVKZ); break;
	case 287: ovf = reloc_insn_movw(OP_PREL, P, val, 0, MOVNZ); break;     /* MOVW_PREL_G0 */
	case 290: check = 0; ovf = reloc_insn_movw(OP_PREL, P, val, 16, MOVKZ); break;
	case 289: ovf = reloc_insn_movw(OP_PREL, P, val, 16, MOVNZ); break;
	case 292: check = 0; ovf = reloc_insn_movw(OP_PREL, P, val, 32, MOVKZ); break;
	case 291: ovf = reloc_insn_movw(OP_PREL, P, val, 32, MOVNZ); break;
	case 293: check = 0; ovf = reloc_insn_movw(OP_PREL, P, val, 48, MOVNZ); break;
	case 273: ovf = reloc_insn_imm(OP_PREL, P, val, 2, 19, IMM_19); break;  /* LD_PREL_LO19 */
	case 274: ovf = reloc_insn_imm(OP_PREL, P, val, 0, 21, IMM_ADR); break; /* ADR_PREL_LO21 */
	case 276: check = 0; /* fallthrough */                                  /* ADR_PREL_PG_HI21_NC */
	case 275: ovf = reloc_insn_imm(OP_PAGE, P, val, 12, 21, IMM_ADR); break;
	case 277: case 278: check = 0;                                          /* ADD/LDST8_ABS_LO12_NC */
		ovf = reloc_insn_imm(OP_ABS, P, val, 0, 12, IMM_12); break;
	case 284: check = 0; ovf = reloc_insn_imm(OP_ABS, P, val, 1, 11, IMM_12); break;
	case 285: check = 0; ovf = reloc_insn_imm(OP_ABS, P, val, 2, 10, IMM_12); break;
	case 286: check = 0; ovf = reloc_insn_imm(OP_ABS, P, val, 3, 9, IMM_12); break;
	case 299: check = 0; ovf = reloc_insn_imm(OP_ABS, P, val, 4, 8, IMM_12); break;
	case 279: ovf = reloc_insn_imm(OP_PREL, P, val, 2, 14, IMM_14); break;  /* TSTBR14 */
	case 280: ovf = reloc_insn_imm(OP_PREL, P, val, 2, 19, IMM_19); break;  /* CONDBR19 */
	case 282: case 283:                                                     /* JUMP26 / CALL26 */
		ovf = reloc_insn_imm(OP_PREL, P, val, 2, 26, IMM_26); break;
	default:
		snprintf(msg, msglen, "unsupported relocation type %u", type);
		return -1;
	}
	if (check && ovf) {   /* no PLTs: the module window is within CALL26 reach of the kernel */
		snprintf(msg, msglen, "relocation %u overflows at %lx (value %lx)", type, P, val);
		return -1;
	}
	return 0;
}

/* simplify_symbols + apply_relocate_add, on the temporary image's headers (sh_addr final) */
static int link_and_relocate(struct elf64_ehdr *eh, struct elf64_shdr *sh, int symidx,
			     char *msg, u64 msglen)
{
	struct elf64_sym *sym = (void *)((char *)eh + sh[symidx].offset);
	const char *str = (const char *)eh + sh[sh[symidx].link].offset;
	u64 nsym = sh[symidx].size / sizeof(*sym);
	for (u64 k = 1; k < nsym; k++) {
		struct elf64_sym *s = &sym[k];
		if (s->shndx == SHN_UNDEF) {
			u64 v = ksym_lookup(str + s->name);
			if (!v && (s->info >> 4) != STB_WEAK) {
				snprintf(msg, msglen, "unknown symbol %s", str + s->name);
				return -1;
			}
			s->value = v;
		} else if (s->shndx < SHN_LORESERVE && s->shndx < eh->shnum) {
			s->value += sh[s->shndx].addr;   /* percpu: its section is the (only) copy */
		}
	}
	for (int r = 1; r < eh->shnum; r++) {
		if (sh[r].type != SHT_RELA || sh[r].info >= eh->shnum ||
		    !(sh[sh[r].info].flags & SHF_ALLOC))
			continue;
		struct elf64_rela *rel = (void *)((char *)eh + sh[r].offset);
		for (u64 k = 0; k < sh[r].size / sizeof(*rel); k++) {
			u64 P = sh[sh[r].info].addr + rel[k].offset;
			u64 si = rel[k].info >> 32;
			if (si >= nsym) {
				snprintf(msg, msglen, "relocation symbol %lu out of range", si);
				return -1;
			}
			if (apply_rela((u32)rel[k].info, P, sym[si].value + (u64)rel[k].addend, msg, msglen))
				return -1;
		}
	}
	return 0;
}

/* ---- load-time headers (what the SECvma signer reproduces, docs/eval-spec.md §3.3) ----------- */

static int rela_cmp(const struct elf64_rela *a, const struct elf64_rela *b)
{
	u32 ta = (u32)a->info, tb = (u32)b->info, sa = (u32)(a->info >> 32), sb = (u32)(b->info >> 32);
	if (ta != tb)
		return ta < tb ? -1 : 1;
	if (sa != sb)
		return sa < sb ? -1 : 1;
	if (a->addend != b->addend)
		return a->addend < b->addend ? -1 : 1;
	return 0;
}

static void rela_swap(struct elf64_rela *a, struct elf64_rela *b)
{
	struct elf64_rela t = *a;
	*a = *b;
	*b = t;
}

/* Linux 4.18 lib/sort.c heapsort, exactly (unstable: equal keys end in its own order) */
static void sort_relas(struct elf64_rela *base, s64 num)
{
	s64 i = num / 2 - 1, n = num, r, c;
	for (; i >= 0; i--)
		for (r = i; r * 2 + 1 < n; r = c) {
			c = r * 2 + 1;
			if (c < n - 1 && rela_cmp(&base[c], &base[c + 1]) < 0)
				c++;
			if (rela_cmp(&base[r], &base[c]) >= 0)
				break;
			rela_swap(&base[r], &base[c]);
		}
	for (i = n - 1; i > 0; i--) {
		rela_swap(&base[0], &base[i]);
		for (r = 0; r * 2 + 1 < i; r = c) {
			c = r * 2 + 1;
			if (c < i - 1 && rela_cmp(&base[c], &base[c + 1]) < 0)
				c++;
			if (rela_cmp(&base[r], &base[c]) >= 0)
				break;
			rela_swap(&base[r], &base[c]);
		}
	}
}

static int first_alloc(struct elf64_shdr *sh, int n, const char *shstr, const char *name)
{
	for (int i = 1; i < n; i++)
		if ((sh[i].flags & SHF_ALLOC) && !strcmp(shstr + sh[i].name, name))
			return i;
	return 0;
}

/* rewrite_section_headers + module_frob_arch_sections (4.18, KASLR off: no PLT slots) +
 * layout_symtab (KALLSYMS): returns the symtab index, or -1 */
static int prepare_headers(struct elf64_ehdr *eh, struct elf64_shdr *sh, const char *shstr)
{
	int n = eh->shnum, symidx = -1, plt = 0, init_plt = 0;
	for (int i = 0; i < n; i++)
		sh[i].addr = 0;
	int v = first_alloc(sh, n, shstr, "__versions"), mi = first_alloc(sh, n, shstr, ".modinfo");
	if (v)
		sh[v].flags &= ~(u64)SHF_ALLOC;
	if (mi)
		sh[mi].flags &= ~(u64)SHF_ALLOC;
	for (int i = 1; i < n; i++) {
		if (sh[i].type == SHT_SYMTAB && symidx < 0)
			symidx = i;
		if (!strcmp(shstr + sh[i].name, ".plt"))
			plt = i;
		if (!strcmp(shstr + sh[i].name, ".init.plt"))
			init_plt = i;
		if (sh[i].type == SHT_RELA && sh[i].info < (u32)n && (sh[sh[i].info].flags & SHF_EXECINSTR))
			sort_relas((void *)((char *)eh + sh[i].offset), (s64)(sh[i].size / sizeof(struct elf64_rela)));
	}
	if (symidx < 0 || sh[symidx].link >= (u32)n)
		return -1;
	for (int k = 0; k < 2; k++) {
		int i = k ? init_plt : plt;
		if (!i)
			continue;
		sh[i].type = SHT_NOBITS;
		sh[i].flags = SHF_EXECINSTR | SHF_ALLOC;
		sh[i].addralign = 64;          /* L1_CACHE_BYTES */
		sh[i].size = 16;               /* (0 PLT slots + 1) x 16 */
	}
	sh[symidx].flags |= SHF_ALLOC;
	sh[sh[symidx].link].flags |= SHF_ALLOC;
	return symidx;
}

/* ---- layout (docs/kpcore-spec.md §7.2) ------------------------------------------------------- */

static int is_init(const char *name) { return !strncmp(name, ".init", 5); }

enum { RUN_TEXT, RUN_RO, RUN_DATA };
static u8 sec_run[MAX_SHNUM];
static u64 sec_off[MAX_SHNUM];
static u8 taken[MAX_SHNUM];

/* Append the sections of one class to a run at *size, in index order; record in checklist. */
static void place(struct elf64_shdr *sh, int n, const char *shstr, int init, int kind,
		  int run, u64 *size, u32 *check, u32 *ncheck)
{
	for (int i = 1; i < n; i++) {
		u64 f = sh[i].flags;
		if (taken[i] || !(f & SHF_ALLOC) || is_init(shstr + sh[i].name) != init)
			continue;
		if (kind == RUN_TEXT ? !(f & SHF_EXECINSTR) :
		    kind == RUN_RO ? (f & SHF_WRITE) != 0 : !(f & SHF_WRITE))
			continue;
		u64 al = sh[i].addralign ? sh[i].addralign : 1;
		*size = ALIGN_UP(*size, al);
		sec_run[i] = (u8)run;
		sec_off[i] = *size;
		*size += sh[i].size;
		taken[i] = 1;
		if (check && *ncheck < MAX_CHECK)
			check[(*ncheck)++] = (u32)i;
	}
}

/* pages (PA contiguous, from a module pool or the page allocator) mapped into the module
 * window, zeroed through the new mapping */
static u64 map_run(int pool, u64 pages, u64 *pa_out)
{
	u64 pa = pool == 2 ? alloc_pages(pages) : modpool_alloc(pool, pages);
	if (!pa)
		return 0;
	modva_bm.hint = 0;   /* lowest fit: a load/unload cycle reuses the same VAs (and tables) */
	u64 va = va_alloc(&modva_bm, pages);
	if (!va) {
		if (pool == 2)
			free_pages(pa, pages);
		else
			modpool_free(pool, pa, pages);
		return 0;
	}
	for (u64 i = 0; i < pages; i++) {
		map_kernel_page(va + i * PAGE_SIZE, pa + i * PAGE_SIZE,
				prot_bits(pool == 0 ? PROT_KERNEL_RWX : PROT_KERNEL_RW));
		memset((void *)(va + i * PAGE_SIZE), 0, PAGE_SIZE);
	}
	*pa_out = pa;
	return va;
}

static void unmap_run(int pool, u64 va, u64 pa, u64 pages)
{
	if (!pages || !va)
		return;
	for (u64 i = 0; i < pages; i++)
		unmap_kernel_page(va + i * PAGE_SIZE);
	bm_free(&modva_bm, va, pages + 1);
	if (pool == 2)
		free_pages(pa, pages);
	else
		modpool_free(pool, pa, pages);
}

static void set_run_prot(u64 va, u64 pa, u64 pages, int prot)
{
	for (u64 i = 0; i < pages; i++) {   /* same output address, new permissions: an "update" */
		map_kernel_page(va + i * PAGE_SIZE, pa + i * PAGE_SIZE, prot_bits(prot));
		flush_tlb_kernel(va + i * PAGE_SIZE);
	}
}

static u64 find_sym(struct elf64_ehdr *eh, struct elf64_shdr *sh, int symidx, const char *want)
{
	struct elf64_sym *sym = (void *)((char *)eh + sh[symidx].offset);
	const char *str = (const char *)eh + sh[sh[symidx].link].offset;
	for (u64 k = 1; k < sh[symidx].size / sizeof(*sym); k++)
		if (sym[k].shndx && sym[k].shndx < eh->shnum && !strcmp(str + sym[k].name, want))
			return sh[sym[k].shndx].addr + sym[k].value;
	return 0;
}

static void module_free(struct loaded_module *m, int h)
{
	unmap_run(0, m->arch.text_va, m->text_pa, m->text_pages);
	unmap_run(1, m->arch.ro_va, m->ro_pa, m->ro_pages);
	unmap_run(2, m->arch.data_va, m->data_pa, m->data_pages);
	m->used = 0;
	memset(&module_info[h], 0, sizeof(module_info[h]));
	memset(module_secaddr[h], 0, sizeof(module_secaddr[h]));
}

static void free_tmp(struct loaded_module *m)
{
	WRITE_ONCE(module_tmp_image, 0);
	WRITE_ONCE(module_run_text, 0);
	unmap_run(1, m->tmp_va, m->tmp_pa, m->tmp_pages);
	m->tmp_va = 0;
}

/* ref_module: which loaded modules export a symbol this one imports */
static void record_uses(struct loaded_module *m, struct elf64_ehdr *eh, struct elf64_shdr *sh,
			int symidx)
{
	struct elf64_sym *sym = (void *)((char *)eh + sh[symidx].offset);
	const char *str = (const char *)eh + sh[sh[symidx].link].offset;
	for (u64 k = 1; k < sh[symidx].size / sizeof(*sym); k++) {
		if (sym[k].shndx != SHN_UNDEF || !sym[k].name)
			continue;
		for (int j = 0; j < MAX_MODULES; j++)
			if (mods[j].used && &mods[j] != m && !m->uses[j] &&
			    (prel_search(mods[j].ksym_va, mods[j].ksym_n, str + sym[k].name) ||
			     prel_search(mods[j].ksymgpl_va, mods[j].ksymgpl_n, str + sym[k].name)))
				m->uses[j] = 1;
	}
}

static void record_exports(struct loaded_module *m, struct elf64_shdr *sh, int n, const char *shstr)
{
	for (int i = 1; i < n; i++) {
		if (!sh[i].addr)
			continue;
		if (!strcmp(shstr + sh[i].name, "__ksymtab")) {
			m->ksym_va = sh[i].addr;
			m->ksym_n = sh[i].size / sizeof(struct prel_symbol);
		} else if (!strcmp(shstr + sh[i].name, "__ksymtab_gpl")) {
			m->ksymgpl_va = sh[i].addr;
			m->ksymgpl_n = sh[i].size / sizeof(struct prel_symbol);
		}
	}
}

static int mload_enosys;

int module_load(const void *image, u64 len, u64 flags, int *handle, u64 *modid, int *init_rc,
		char *msg, u64 msglen)
{
	u64 t0 = cntvct();
	struct loaded_module *m = NULL;
	int h = -1;
	*handle = -1;
	*modid = HVC_INVALID;
	*init_rc = 0;
	for (int i = 0; i < MAX_MODULES && !m; i++)
		if (!mods[i].used) {
			m = &mods[i];
			h = i;
		}
	if (!m)
		return snprintf(msg, msglen, "too many modules"), -1;
	memset(m, 0, sizeof(*m));
	m->used = 1;
	m->arch.modid = HVC_INVALID;

	/* 1. temporary image (module ro pool pages), like VM_SEKVM_TMP */
	m->tmp_pages = ALIGN_UP(len, PAGE_SIZE) / PAGE_SIZE;
	struct elf64_ehdr *eh = (void *)map_run(1, m->tmp_pages, &m->tmp_pa);
	m->tmp_va = (u64)eh;
	if (!eh)
		return snprintf(msg, msglen, "module pool exhausted (%lu pages)", m->tmp_pages),
			m->used = 0, -1;
	memcpy(eh, image, len);
	dsb(sy);
	WRITE_ONCE(module_tmp_image, (u64)eh);   /* where a racing CPU finds the image (smp.c) */
	if (len < sizeof(*eh) || memcmp(eh->ident, "\177ELF\2\1", 6) || eh->type != 1 ||
	    eh->machine != 183 || eh->shentsize != sizeof(struct elf64_shdr) ||
	    eh->shnum > MAX_SHNUM || eh->shoff + (u64)eh->shnum * 64 > len ||
	    eh->shstrndx >= eh->shnum) {
		snprintf(msg, msglen, "not an AArch64 relocatable ELF");
		goto fail;
	}
	struct elf64_shdr *sh = (void *)((char *)eh + eh->shoff);
	int n = eh->shnum;
	for (int i = 1; i < n; i++)
		if (sh[i].type != SHT_NOBITS && sh[i].offset + sh[i].size > len) {
			snprintf(msg, msglen, "section %d beyond the end of the file", i);
			goto fail;
		}
	const char *shstr = (const char *)eh + sh[eh->shstrndx].offset;
	for (int i = 1; i < n; i++) {                       /* .modinfo "name=" (el2_get_modinfo) */
		if (strcmp(shstr + sh[i].name, ".modinfo"))
			continue;
		const char *p = (const char *)eh + sh[i].offset, *e = p + sh[i].size;
		while (p < e) {
			u64 l = 0;
			while (p + l < e && p[l])
				l++;
			if (p + l < e && !strncmp(p, "name=", 5))
				strncpy_z(m->name, p + 5, sizeof(m->name));
			p += l + 1;
		}
	}
	for (int i = 0; i < MAX_MODULES; i++)
		if (&mods[i] != m && mods[i].used && !strcmp(mods[i].name, m->name)) {
			snprintf(msg, msglen, "module %s already loaded", m->name);
			goto fail;
		}
	int symidx = prepare_headers(eh, sh, shstr);
	if (symidx < 0) {
		snprintf(msg, msglen, "module has no symbol table");
		goto fail;
	}
	int stridx = (int)sh[symidx].link;

	/* 2. layout + checklist: core text, core ro, init text, init ro, symtab, strtab, relas */
	u32 *check = vmalloc(PAGE_SIZE), nc = 0;
	if (!check) {
		snprintf(msg, msglen, "out of memory");
		goto fail;
	}
	u64 tsz = 0, rsz = 0, dsz = 0, core_text;
	memset(taken, 0, sizeof(taken));
	taken[0] = taken[symidx] = taken[stridx] = 1;
	place(sh, n, shstr, 0, RUN_TEXT, RUN_TEXT, &tsz, check, &nc);
	core_text = tsz;
	tsz = ALIGN_UP(tsz, PAGE_SIZE);
	place(sh, n, shstr, 0, RUN_RO, RUN_RO, &rsz, check, &nc);
	rsz = ALIGN_UP(rsz, PAGE_SIZE);
	u64 init_text = tsz;
	place(sh, n, shstr, 1, RUN_TEXT, RUN_TEXT, &tsz, check, &nc);
	place(sh, n, shstr, 1, RUN_RO, RUN_RO, &rsz, check, &nc);
	for (int k = 0; k < 2; k++) {                     /* KALLSYMS: symtab, strtab */
		int i = k ? stridx : symidx;
		rsz = ALIGN_UP(rsz, sh[i].addralign ? sh[i].addralign : 1);
		sec_run[i] = RUN_RO;
		sec_off[i] = rsz;
		rsz += sh[i].size;
		check[nc++] = (u32)i;
	}
	for (int i = 1; i < n; i++)                         /* RELA of checklisted sections */
		for (u32 k = 0; k < nc && sh[i].type == SHT_RELA && nc < MAX_CHECK; k++)
			if (check[k] == sh[i].info) {
				check[nc++] = (u32)i;
				break;
			}
	place(sh, n, shstr, 0, RUN_DATA, RUN_DATA, &dsz, NULL, NULL);
	place(sh, n, shstr, 1, RUN_DATA, RUN_DATA, &dsz, NULL, NULL);

	m->text_pages = ALIGN_UP(tsz ? tsz : 1, PAGE_SIZE) / PAGE_SIZE;
	m->ro_pages = ALIGN_UP(rsz ? rsz : 1, PAGE_SIZE) / PAGE_SIZE;
	m->data_pages = ALIGN_UP(dsz ? dsz : 1, PAGE_SIZE) / PAGE_SIZE;
	m->arch.text_va = map_run(0, m->text_pages, &m->text_pa);
	m->arch.ro_va = m->arch.text_va ? map_run(1, m->ro_pages, &m->ro_pa) : 0;
	m->arch.data_va = m->arch.ro_va ? map_run(2, m->data_pages, &m->data_pa) : 0;
	if (!m->arch.data_va) {
		vfree(check, PAGE_SIZE);
		snprintf(msg, msglen, "module memory exhausted (%lu text, %lu ro, %lu data pages)",
			 m->text_pages, m->ro_pages, m->data_pages);
		goto fail;
	}
	WRITE_ONCE(module_run_text, m->arch.text_va);   /* for a racing CPU (smp.c) */
	u64 base[3] = { m->arch.text_va, m->arch.ro_va, m->arch.data_va };
	u64 percpu = 0;
	for (int i = 1; i < n; i++)
		if (taken[i] && (sh[i].flags & SHF_ALLOC)) {
			sh[i].addr = base[sec_run[i]] + sec_off[i];
			if (!strcmp(shstr + sh[i].name, ".data..percpu"))
				percpu = sh[i].addr;
		}
	m->arch.text_size = core_text;
	m->arch.init_text_va = m->arch.text_va + init_text;
	m->arch.init_text_size = tsz - init_text;
	m->arch.ro_size = rsz;
	m->arch.data_size = dsz;

	/* 3. copy the sections to their final place (RELA stays in the temporary image) */
	for (int i = 1; i < n; i++)
		if (sh[i].addr && sh[i].type != SHT_NOBITS)
			memcpy((void *)sh[i].addr, (char *)eh + sh[i].offset, sh[i].size);

	/* 4. ask EL2 (HVC 30), or link and relocate here (symbol values become absolute) */
	m->init_fn = find_sym(eh, sh, symidx, "init_module");
	m->exit_fn = find_sym(eh, sh, symidx, "cleanup_module");
	secvma_race.hvc_before = READ_ONCE(secvma_race.iters);
	u64 r = mload_enosys ? HVC_ENOSYS :
		hvc_call(HVC_MLOAD, (u64)eh, percpu, (u64)&m->arch, (u64)check, nc);
	secvma_race.hvc_after = READ_ONCE(secvma_race.iters);
	mload_enosys = r == HVC_ENOSYS;   /* an unmodified kernel never asks: ask once per boot */
	vfree(check, PAGE_SIZE);
	if (r == HVC_ENOSYS) {
		if (link_and_relocate(eh, sh, symidx, msg, msglen))
			goto fail;
		set_run_prot(m->arch.text_va, m->text_pa, m->text_pages, PROT_KERNEL_RX);
		set_run_prot(m->arch.ro_va, m->ro_pa, m->ro_pages, PROT_KERNEL_RO);
	} else if (r == HVC_INVALID) {
		snprintf(msg, msglen, "hypervisor refused module %s (HVC 30)", m->name);
		goto fail;
	} else {
		m->prot = 1;
		m->arch.modid = r;
	}
	asm volatile("ic iallu; dsb ish; isb");
	record_uses(m, eh, sh, symidx);
	record_exports(m, sh, n, shstr);

	struct secvma_mod_report *rep = &module_info[h];
	rep->used = 1;
	rep->prot = (u64)m->prot;
	rep->shnum = (u64)n;
	rep->text_va = m->arch.text_va;
	rep->text_pa = m->text_pa;
	rep->text_pages = m->text_pages;
	rep->ro_va = m->arch.ro_va;
	rep->ro_pa = m->ro_pa;
	rep->ro_pages = m->ro_pages;
	rep->data_va = m->arch.data_va;
	rep->data_pa = m->data_pa;
	rep->data_pages = m->data_pages;
	rep->init_text_va = m->arch.init_text_va;
	rep->modid = m->arch.modid;
	for (int i = 0; i < n && i < MOD_REPORT_SECS; i++)
		module_secaddr[h][i] = sh[i].addr;
	free_tmp(m);
	*handle = h;
	*modid = m->arch.modid;

	/* 5. init, under the probe: a module whose text the hypervisor left non-executable
	 * (e.g. loaded by the kernel while EL2 forces PXN) fails to load instead of oopsing */
	if (flags & MODLOAD_F_NO_INIT) {
		rep->load_ticks = cntvct() - t0;
		snprintf(msg, msglen, "%s linked at %lx (%s), init not run", m->name, m->arch.text_va,
			 m->prot ? "protected by EL2" : "kernel-side loader");
		printk("module %s\n", msg);
		return 0;
	}
	*init_rc = m->init_fn ? (int)probe_call((void *)m->init_fn, 0, 0, 0, 0) : 0;
	if (probe.faulted) {
		snprintf(msg, msglen, "%s: init faulted (esr %lx far %lx)%s", m->name, probe.esr,
			 probe.far, m->prot ? "" : ": module text not executable, loaded without EL2");
		printk("module %s\n", msg);
		goto fail_loaded;
	}
	if (m->prot)
		hvc_call(HVC_MOD_INIT_FREE, m->arch.modid, 0, 0, 0, 0);
	m->init_done = 1;
	rep->init_done = 1;
	if (*init_rc) {
		snprintf(msg, msglen, "%s: init returned %d", m->name, *init_rc);
		if (m->prot)
			hvc_call(HVC_MFREE, m->arch.modid, 0, 0, 0, 0);
		module_free(m, h);
		*handle = -1;
		return -1;
	}
	rep->load_ticks = cntvct() - t0;
	snprintf(msg, msglen, "%s loaded at %lx (%s)", m->name, m->arch.text_va,
		 m->prot ? "protected by EL2" : "kernel-side loader");
	printk("module %s\n", msg);
	return 0;
fail_loaded:
	if (m->prot) {
		hvc_call(HVC_MOD_INIT_FREE, m->arch.modid, 0, 0, 0, 0);
		hvc_call(HVC_MFREE, m->arch.modid, 0, 0, 0, 0);
	}
	module_free(m, h);
	*handle = -1;
	return -1;
fail:
	printk("module load failed: %s\n", msg);
	free_tmp(m);
	module_free(m, h);
	return -1;
}

int module_unload(int handle, char *msg, u64 msglen)
{
	if (handle < 0 || handle >= MAX_MODULES || !mods[handle].used)
		return snprintf(msg, msglen, "no module %d", handle), -1;
	struct loaded_module *m = &mods[handle];
	for (int j = 0; j < MAX_MODULES; j++)                /* try_stop_module: in use? */
		if (mods[j].used && mods[j].uses[handle])
			return snprintf(msg, msglen, "module %s is in use by %s", m->name, mods[j].name), -1;
	if (m->prot && !m->init_done &&
	    hvc_call(HVC_MOD_INIT_FREE, m->arch.modid, 0, 0, 0, 0) == HVC_INVALID)
		printk("module %s: HVC 32 (MOD_INIT_FREE) refused\n", m->name);
	if (m->init_done && !m->exited && m->exit_fn &&
	    (probe_call((void *)m->exit_fn, 0, 0, 0, 0), probe.faulted))
		printk("module %s: exit faulted (esr %lx far %lx)\n", m->name, probe.esr, probe.far);
	m->init_done = m->exited = 1;     /* a retry after a refused HVC 31 only retries that */
	if (m->prot && hvc_call(HVC_MFREE, m->arch.modid, 0, 0, 0, 0) == HVC_INVALID) {
		/* EL2 still owns the runs: freeing them here would hand its pages out again */
		printk("module %s: HVC 31 (MFREE) refused\n", m->name);
		return snprintf(msg, msglen, "%s: hypervisor refused to free it (HVC 31)", m->name), -1;
	}
	snprintf(msg, msglen, "%s unloaded", m->name);
	module_free(m, handle);
	return 0;
}
