/*
 * The SECvma kernel <-> hypervisor ABI as the testbed kernel speaks it, and the host command
 * mailbox.  Mirrored field by field in src/secvma/hvabi.py; tests/testbed/test_hvabi.py compiles
 * static asserts generated from the Python side against this header, so the two cannot drift.
 *
 * Hypercalls: `hvc #0`, x0 = number, x1..x5 = arguments, result in x0 (docs/kpcore-spec.md §8.2).
 * Extension: HVC 6 (ENABLE_S2_TRANS) takes x1 = PA of a struct secvma_boot_info.
 */
#ifndef HVABI_H
#define HVABI_H

#ifndef __ASSEMBLER__
typedef unsigned long long u64;
typedef unsigned int u32;
typedef unsigned short u16;
typedef unsigned char u8;
typedef long long s64;
#endif

/* hypercall numbers (docs/kpcore-spec.md §8.2) */
#define HVC_GET_VECTORS      5
#define HVC_ENABLE_S2_TRANS  6
#define HVC_SMMU_FREE_PGD    23   /* cb (StreamID), smmu */
#define HVC_SMMU_ALLOC_PGD   24   /* cb, vmid (0), smmu */
#define HVC_SMMU_LPAE_MAP    25   /* iova, pa, prot (1 read | 2 write), cb, smmu */
#define HVC_SMMU_IOVA_TO_PHYS 26  /* iova, cb, smmu -> x0 = PA or 0 */
#define HVC_SMMU_CLEAR       27   /* iova, cb, smmu */
#define HVC_MLOAD            30
#define HVC_MFREE            31
#define HVC_MOD_INIT_FREE    32
#define HVC_ALLOC_EL0_PGD    33
#define HVC_FREE_EL0_PGD     34
#define HVC_DO_SWITCH_MM     35

#define HVC_INVALID   0xFFFFFFFFULL          /* SECvma's "refused" (module load/free) */
#define HVC_ENOSYS    0xFFFFFFFFFFFFFFDAULL  /* (u64)-38: not implemented by this hypervisor */

#define BOOT_INFO_MAGIC    0x4f464e4942564553ULL  /* "SEVBINFO" little-endian */
#define BOOT_INFO_VERSION  1

/*
 * Boot information, handed over by HVC 6 before the MMU is turned on. All addresses are
 * physical unless named *_va; a kernel-image VA is PA + kimage_voffset, a linear-map VA is
 * PA + linear_offset. Ranges are [start, end).
 */
#ifndef __ASSEMBLER__
struct secvma_boot_info {
	u64 magic;
	u32 version;
	u32 size;                 /* sizeof(struct secvma_boot_info) */
	u64 text, etext;          /* [_text, _etext): kernel text (KCODE) */
	u64 rodata, erodata;      /* [__start_rodata, __init_begin): RODATA, incl. the vDSO */
	u64 vdso, evdso;          /* vDSO pages (EL0-executable), inside rodata */
	u64 inittext, einittext;  /* init text (INIT), freed after boot */
	u64 data, edata;          /* [_data, _edata): initialised data */
	u64 bss, ebss;            /* [__bss_start, __bss_stop) */
	u64 end;                  /* _end: [data, end) is SECvma's DATA range */
	u64 swapper_pg_dir;
	u64 empty_zero_page;
	u64 kimage_voffset;       /* kernel-image VA - PA */
	u64 linear_offset;        /* linear-map VA - PA */
	u64 text_va;              /* VA of _text */
	u64 pgtable_pool, pgtable_pool_end;   /* kernel page-table pool (all of it) */
	u64 pgtable_early;        /* boot tables live in [pgtable_early, pgtable_pool_end) */
	u64 mod_text_pool, mod_text_pool_end;
	u64 mod_ro_pool, mod_ro_pool_end;
	u64 reserved, reserved_end;           /* the whole reserved region holding the pools */
	u64 ksymtab, ksymtab_end;             /* struct kernel_symbol[], sorted by name */
	u64 ksymtab_gpl, ksymtab_gpl_end;
	u64 ram, ram_end;                     /* RAM the kernel may use (after the hypervisor's) */
	u64 dtb;
	u64 modules_va, modules_va_end;       /* module VA area (CALL26 reach of the kernel text) */
	u64 vmalloc_va, vmalloc_va_end;
	u64 tcr, mair, sctlr;                 /* values the kernel is about to install */
	u64 cmd_mailbox;                      /* PA of struct secvma_cmd (host command interface) */
};

/* Linux 4.18 `struct kernel_symbol`: absolute pointers (name points into rodata). */
struct kernel_symbol {
	u64 value;
	u64 name;
};

/* What the kernel passes as mod_arch_va to HVC 30: where it placed the module's runs. */
struct secvma_mod_arch {
	u64 text_va, text_size;       /* core text, then init text right after it */
	u64 ro_va, ro_size;           /* core ro, init ro, symtab, strtab */
	u64 init_text_va, init_text_size;
	u64 data_va, data_size;       /* writable sections (normal kernel memory) */
	u64 modid;                    /* HVC 30 result when protected, else HVC_INVALID */
};

/* Where the kernel put a loaded module (kernel symbols `module_info[8]`, `module_secaddr[8][96]`):
 * read by the host to check the kernel-side relocation (tests) and to find the runs. */
#define MOD_REPORT_SECS 96
struct secvma_mod_report {
	u64 used, prot, init_done, shnum;     /* prot: loaded by EL2 (HVC 30) */
	u64 text_va, text_pa, text_pages;     /* core text | init text (page-aligned), text pool */
	u64 ro_va, ro_pa, ro_pages;           /* core ro | init ro | symtab, strtab, ro pool */
	u64 data_va, data_pa, data_pages;     /* writable sections, core then init */
	u64 init_text_va, modid, load_ticks;  /* load_ticks: CNTVCT spent in module_load */
};
#endif

/* ---- host command mailbox (kernel symbol `secvma_cmd`, one page in .data) ---------------- */
#define CMD_MAGIC    0x444d43414d564553ULL   /* "SEVMACMD" */
#define CMD_VERSION  1

#define CMD_NOP        0   /* ping */
#define CMD_WORKLOAD   1   /* name = workload */
#define CMD_WRITE      2   /* arg0 = VA, arg1 = value, arg2 = width, arg3 = form, arg4 = value2 */
#define CMD_READ       3   /* arg0 = VA, arg1 = width, arg2 = form -> ret0 */
#define CMD_EXEC       4   /* arg0 = VA, arg1 = x0 -> ret0 = x0 after return */
#define CMD_MSR        5   /* arg0 = SysReg index (secvma.platform.SysReg), arg1 = value */
#define CMD_MRS        6   /* arg0 = SysReg index -> ret0 */
#define CMD_HVC        7   /* arg0 = nr, arg1..arg5 -> ret0 = x0 */
#define CMD_DMA        8   /* arg0 = IOVA, arg1 = len, arg2 = DMA_DIR_*, arg3 = disk sector,
			      arg4 = DMA_F_*, arg5 = fill byte -> ret0 = virtio status (0xff: no
			      completion), ret1 = HVC 25 answer, ret2 = StreamID */
#define CMD_AT         9   /* arg0 = VA, arg1 = 1 for write -> ret0 = PAR_EL1 */
#define CMD_ALLOC_PAGE 10  /* arg0 = 1: page-table pool page -> ret0 = linear VA, ret1 = PA */
#define CMD_FREE_PAGE  11  /* arg0 = PA, arg1 = 1: pool page */
#define CMD_MODLOAD    12  /* upload buffer holds a .ko of arg0 bytes -> ret0 = handle, ret1 = modid, ret2 = init rc */
			   /* arg1 = MODLOAD_F_* flags, arg2 = offset of the .ko in the upload buffer */
#define CMD_MODUNLOAD  13  /* arg0 = handle */
#define CMD_SPAWN      14  /* name = user program, arg0 = x0 -> ret0 = exit status, ret1 = pid */
#define CMD_POWEROFF   15
#define CMD_SYMBOL     16  /* name = exported symbol -> ret0 = value */
#define CMD_VMAP       17  /* arg0 = PA, arg1 = bytes, arg2 = prot (0 RW, 1 RO, 2 RX) -> ret0 = VA */
#define CMD_VUNMAP     18  /* arg0 = VA, arg1 = bytes */
#define CMD_RACE_SPIN  19  /* (a secondary CPU's slot) arg0 = addr, arg1 = value, arg2 = mode,
			      arg3 = offset: spin until CPU0 says stop -> ret0 = iterations */

#define DMA_DIR_FROM_DEVICE 0   /* disk read: the device writes memory */
#define DMA_DIR_TO_DEVICE   1   /* disk write: the device reads memory */
#define DMA_F_MAP       1       /* HVC 25 (IOVA = PA) first, whatever the answer */
#define DMA_F_FILL      2       /* fill the buffer (IOVA = PA of kernel RAM) with arg5 first */
#define DMA_F_NO_UNMAP  4       /* keep the mapping after the transfer */
#define DMA_MAX_LEN     0x10000

#define ST_OK          0
#define ST_FAULT       1   /* the access faulted: esr/far say how (kernel fixup, not a crash) */
#define ST_FAILED      2   /* a workload's self-check failed, or the operation was refused */
#define ST_UNSUPPORTED 3
#define ST_BADARG      4
#define ST_BUSY        5   /* (host side) machine not ready */

/* store forms of CMD_WRITE: each is one distinct instruction encoding */
#define FORM_STR       0   /* STR/STRB/STRH (unsigned immediate 0), width 1/2/4/8 */
#define FORM_STUR      1   /* STUR* (unscaled immediate), width 1/2/4/8 */
#define FORM_STR_REG   2   /* STR* [Xn, Xm] register offset, width 1/2/4/8 */
#define FORM_STR_PRE   3   /* STR Xt, [Xn, #0]! (writeback: ISV = 0), width 4/8 */
#define FORM_STR_POST  4   /* STR Xt, [Xn], #0 (writeback: ISV = 0), width 4/8 */
#define FORM_STP       5   /* STP Xt, Xt2, [Xn] (imm7 = 0), width 8 (pair) or 4 (W pair) */
#define FORM_STP_XZR   6   /* STP XZR, XZR, [Xn], width 8 */
#define FORM_STXR      7   /* LDXR + STXR Ws, Xt, [Xn], width 4/8; ret1 = status Ws */
#define FORM_STLR      8   /* STLR*, width 1/2/4/8 */
#define FORM_STTR      9   /* STTR* (unprivileged), width 1/2/4/8 */
#define FORM_STNP      10  /* STNP Xt, Xt2, [Xn], width 8 */
#define FORM_DC_ZVA    11  /* DC ZVA, Xn (zeroes one cache-line block) */
#define FORM_STLXR     12  /* LDXR + STLXR Ws, Xt, [Xn], width 4/8; ret1 = status Ws */
#define FORM_STR_Q     13  /* STR Qt, [Xn] (SIMD, 128 bits = value | value2 << 64), width 16 */
#define FORM_ST1       14  /* ST1 {Vt.16B}, [Xn] (SIMD structure store), width 16 */
#define FORM_CAS       15  /* LDR + CAS Xs, Xt, [Xn] (FEAT_LSE), width 8 */
#define FORM_SWP       16  /* SWP Xs, Xt, [Xn] (FEAT_LSE), width 8 */
#define FORM_LDADD     17  /* LDADD Xs, Xt, [Xn] (FEAT_LSE; memory += value), width 8 */
#define NR_FORMS       18

/* CMD_MODLOAD flags */
#define MODLOAD_F_NO_INIT 1   /* stop before running init (real modules: link only) */

#define CMD_NAME_LEN   64
#define CMD_MSG_LEN    192

#ifndef __ASSEMBLER__
struct secvma_cmd {
	u64 magic;
	u32 version;
	u32 ready;            /* 1 while the kernel polls */
	u64 seq;              /* host: increment to post a command (after filling it) */
	u64 done;             /* kernel: set to seq when the command finished */
	u32 op;
	u32 status;
	u64 arg[6];
	u64 ret[4];
	u64 esr, far;         /* ST_FAULT details */
	u64 t_start, t_end;   /* CNTVCT at start and end of the command */
	u64 cntfrq;
	u64 upload;           /* VA of the upload buffer (for CMD_MODLOAD) */
	u64 upload_pa;
	u64 upload_size;
	u64 boot_info;        /* PA of the boot-info block */
	u64 booted_ticks;     /* CNTVCT when the command loop started */
	char name[CMD_NAME_LEN];
	char msg[CMD_MSG_LEN];
};
#endif

#endif
