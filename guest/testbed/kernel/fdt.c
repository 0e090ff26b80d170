/*
 * Just enough flattened-device-tree parsing to find the RAM size: the first node whose name
 * starts with "memory", property "reg" (#address-cells = #size-cells = 2 on QEMU virt).
 * Runs with the MMU off (init text, PA-relative code only).
 */
#include "kernel.h"

#define FDT_MAGIC 0xd00dfeed
#define FDT_BEGIN_NODE 1
#define FDT_END_NODE 2
#define FDT_PROP 3
#define FDT_NOP 4
#define FDT_END 9

static u32 be32(const void *p)
{
	const u8 *b = p;
	return (u32)b[0] << 24 | (u32)b[1] << 16 | (u32)b[2] << 8 | b[3];
}

static u64 be64(const void *p) { return (u64)be32(p) << 32 | be32((const u8 *)p + 4); }

__init int fdt_memory(u64 dtb, u64 *base, u64 *size)
{
	const u8 *fdt = (const u8 *)dtb;
	if (be32(fdt) != FDT_MAGIC)
		return -1;
	const u8 *st = fdt + be32(fdt + 8);
	const char *strings = (const char *)fdt + be32(fdt + 12);
	int depth = 0, in_mem = -1;
	for (;;) {
		u32 tok = be32(st);
		st += 4;
		if (tok == FDT_BEGIN_NODE) {
			const char *name = (const char *)st;
			u64 n = 0;
			while (name[n])
				n++;
			depth++;
			if (depth == 2 && name[0] == 'm' && name[1] == 'e' && name[2] == 'm' &&
			    name[3] == 'o' && name[4] == 'r' && name[5] == 'y')
				in_mem = depth;
			st += ALIGN_UP(n + 1, 4);
		} else if (tok == FDT_END_NODE) {
			if (depth == in_mem)
				in_mem = -1;
			depth--;
		} else if (tok == FDT_PROP) {
			u32 len = be32(st), nameoff = be32(st + 4);
			const char *pn = strings + nameoff;
			if (in_mem == depth && pn[0] == 'r' && pn[1] == 'e' && pn[2] == 'g' && !pn[3] &&
			    len >= 16) {
				*base = be64(st + 8);
				*size = be64(st + 16);
				return 0;
			}
			st += 8 + ALIGN_UP(len, 4);
		} else if (tok == FDT_NOP) {
			continue;
		} else {
			return -1;
		}
	}
}
