/*
 * Virtual and physical layout of the testbed kernel (Linux arm64, 48-bit VA, 4 KB pages).
 *
 *   0xffff_0000_0000_0000  PAGE_OFFSET: linear map of RAM (va = pa - PHYS_OFFSET + PAGE_OFFSET)
 *   0xffff_8000_0000_0000  MODULES_VADDR (128 MiB; modules use its top 64 MiB: CALL26 reach)
 *   0xffff_8000_0800_0000  KIMAGE_VADDR: the kernel image (= PA KERNEL_PA)
 *   0xffff_8000_1000_0000  VMALLOC_START .. VMALLOC_END (1 GiB): vmalloc, ioremap
 *   0x0000_0000_0040_0000  user program image; USER_STACK_TOP below 2 GiB; mmap above 4 GiB
 */
#ifndef LAYOUT_H
#define LAYOUT_H

#define SZ_2M          0x200000
#define PHYS_OFFSET    0x40000000ULL          /* RAM base (memstart) */
#define KERNEL_PA      0x42000000ULL          /* the first 32 MiB are the hypervisor's */
#define PAGE_OFFSET    0xffff000000000000ULL
#define MODULES_VADDR  0xffff800000000000ULL
#define MODULES_END    0xffff800008000000ULL
#define MODULES_USE    0xffff800004000000ULL  /* module runs are placed in [MODULES_USE, MODULES_END) */
#define KIMAGE_VADDR   0xffff800008000000ULL
#define VMALLOC_START  0xffff800010000000ULL
#define VMALLOC_END    0xffff800050000000ULL

/* reserved region after _end (offsets from its 2 MiB-aligned base) */
#define RESV_MODTEXT     0x0000000ULL   /* module text pool [+4K, +4M-4K) */
#define RESV_MODTEXT_SZ  0x0400000ULL
#define RESV_MODRO       0x0400000ULL   /* module ro pool   [+4M+4K, +12M-4K): temporary images too */
#define RESV_MODRO_SZ    0x0800000ULL
#define RESV_PGTABLE     0x0E00000ULL   /* page-table pool [+14M, +22M), guards at 12M and 22M */
#define RESV_PGTABLE_SZ  0x0800000ULL
#define RESV_EARLY_SZ    0x0200000ULL   /* boot tables: top 2 MiB of the pool, top-down */
#define RESV_SIZE        0x1800000ULL   /* 24 MiB */

#define DTB_RESERVE      0x200000ULL

#define USER_IMAGE_VA    0x400000ULL
#define USER_STACK_TOP   0x7ff00000ULL
#define USER_STACK_SIZE  0x10000ULL
#define USER_VDSO_VA     0x70000000ULL
#define USER_MMAP_BASE   0x100000000ULL
#define TASK_SIZE        (1ULL << 48)

#define UART_PA   0x09000000ULL
#define PCIE_ECAM_PA   0x3f000000ULL   /* virt, highmem=off: ECAM of buses 0-15 */
#define PCIE_MMIO_PA   0x10000000ULL   /* 32-bit memory window [0x1000_0000, 0x3eff_0000) */
#define PCIE_MMIO_END  0x3eff0000ULL
#define GICD_PA   0x08000000ULL
#define GICR_PA   0x080a0000ULL
#define TIMER_PPI 30
#define HZ        500

/* MAIR indexes */
#define MT_DEVICE_nGnRnE 0
#define MT_NORMAL        1
#define MT_DEVICE_nGnRE  2
#define MAIR_VALUE       0x04ff00ULL

/* descriptor bits (Arm ARM D8.3) */
#define PTE_VALID   (1ULL << 0)
#define PTE_TABLE   (1ULL << 1)   /* table at level 0-2, page at level 3 */
#define PTE_ATTRIDX(i) ((u64)(i) << 2)
#define PTE_USER    (1ULL << 6)   /* AP[1] */
#define PTE_RDONLY  (1ULL << 7)   /* AP[2] */
#define PTE_SH_IS   (3ULL << 8)
#define PTE_AF      (1ULL << 10)
#define PTE_NG      (1ULL << 11)
#define PTE_PXN     (1ULL << 53)
#define PTE_UXN     (1ULL << 54)
#define PTE_ADDR    0x0000fffffffff000ULL
#define PXN_TABLE   (1ULL << 59)

#define TCR_VALUE_BASE (16ULL | (1ULL << 8) | (1ULL << 10) | (3ULL << 12) | (0ULL << 14) | \
	(16ULL << 16) | (1ULL << 22) | (1ULL << 24) | (1ULL << 26) | (3ULL << 28) | (2ULL << 30) | \
	(1ULL << 36))   /* T0SZ/T1SZ 16, WBWA, inner shareable, 4K, A1 (ASID in TTBR1), AS 16-bit */
#define SCTLR_VALUE   (0x30d00800ULL | (1 << 0) | (1 << 2) | (1 << 3) | (1 << 12) | (1 << 16) | (1 << 18))

#endif
