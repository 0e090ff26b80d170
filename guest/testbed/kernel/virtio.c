/*
 * A DMA-capable device: PCI enumeration through ECAM and a minimal modern virtio-blk driver
 * (one split virtqueue of 8 entries, polled, no interrupts).
 *
 * The device sits behind the SMMU (iommu_platform=on), so every address it is given is an IOVA.
 * The kernel never sees the SMMU: it asks the hypervisor for DMA mappings with SECvma's SMMU
 * hypercalls (HVC 24 once for the device's stream, HVC 25 / 27 around each transfer), always
 * with IOVA = PA. A hypervisor that does not model them (HVC_ENOSYS) leaves the SMMU off and
 * the device then reaches physical addresses directly.
 */
#include "kernel.h"

#define VIRTIO_VENDOR      0x1af4
#define VIRTIO_BLK_MODERN  0x1042
#define PCI_CAP_VENDOR     0x09
#define CAP_COMMON         1
#define CAP_NOTIFY         2
#define CAP_DEVICE         4

#define VS_ACK          1
#define VS_DRIVER       2
#define VS_DRIVER_OK    4
#define VS_FEATURES_OK  8

/* common configuration (virtio 1.x, 4.1.4.3) */
#define CC_DFSELECT   0x00
#define CC_DF         0x04
#define CC_GFSELECT   0x08
#define CC_GF         0x0c
#define CC_NUMQ       0x12
#define CC_STATUS     0x14
#define CC_QSELECT    0x16
#define CC_QSIZE      0x18
#define CC_QENABLE    0x1c
#define CC_QNOTIFYOFF 0x1e
#define CC_QDESC      0x20
#define CC_QDRIVER    0x28
#define CC_QDEVICE    0x30

#define F_VERSION_1       (1ULL << 32)
#define F_ACCESS_PLATFORM (1ULL << 33)

#define QSIZE 8
#define DESC_F_NEXT  1
#define DESC_F_WRITE 2
#define BLK_T_IN  0
#define BLK_T_OUT 1
#define SECTOR 512

struct vdesc { u64 addr; u32 len; u16 flags, next; };
struct vavail { u16 flags, idx, ring[QSIZE], used_event; };
struct vused { u16 flags, idx; struct { u32 id, len; } ring[QSIZE]; u16 avail_event; };
struct blk_req { u32 type, reserved; u64 sector; };

static struct {
	int state;                 /* 0 not probed, 1 ready, -1 no device */
	volatile u8 *ecam, *common, *notify, *devcfg;
	u32 notify_mult;
	u16 notify_off, sid;
	int iommu;                 /* the hypervisor gave the stream a context (HVC 24 -> 0) */
	u64 ring_pa, req_pa;       /* one page each, DMA-mapped for the device's lifetime */
	u64 bounce_pa;             /* DMA_MAX_LEN of ordinary pages (CMD_DMA with IOVA 0) */
	struct vdesc *desc;
	struct vavail *avail;
	struct vused *used;
	struct blk_req *req;
	volatile u8 *status;
	u16 last_used;
	u64 sectors;
	u64 mmio_next;
	char why[96];
} vb;

static u32 cfg_r32(int dev, u32 off) { return *(volatile u32 *)(vb.ecam + ((u64)dev << 15) + off); }
static void cfg_w32(int dev, u32 off, u32 v) { *(volatile u32 *)(vb.ecam + ((u64)dev << 15) + off) = v; }
static u8 cfg_r8(int dev, u32 off) { return (u8)(cfg_r32(dev, off & ~3U) >> (8 * (off & 3))); }
static void w8(volatile u8 *p, u32 off, u8 v) { *(volatile u8 *)(p + off) = v; }
static u8 r8(volatile u8 *p, u32 off) { return *(volatile u8 *)(p + off); }
static void w16(volatile u8 *p, u32 off, u16 v) { *(volatile u16 *)(p + off) = v; }
static u16 r16(volatile u8 *p, u32 off) { return *(volatile u16 *)(p + off); }
static void w32(volatile u8 *p, u32 off, u32 v) { *(volatile u32 *)(p + off) = v; }
static u32 r32(volatile u8 *p, u32 off) { return *(volatile u32 *)(p + off); }
static void w64(volatile u8 *p, u32 off, u64 v) { w32(p, off, (u32)v); w32(p, off + 4, (u32)(v >> 32)); }

/* Give BAR `bar` of device `dev` an address in the 32-bit window; returns its VA (0: failed). */
static volatile u8 *map_bar(int dev, int bar, u64 *bar_pa)
{
	static volatile u8 *mapped[6];
	static u64 mapped_pa[6];
	u32 off = 0x10 + 4 * bar, lo = cfg_r32(dev, off);
	if (lo & 1)
		return NULL;                          /* I/O BAR: not used by virtio modern */
	if (mapped[bar]) {
		*bar_pa = mapped_pa[bar];
		return mapped[bar];
	}
	int is64 = ((lo >> 1) & 3) == 2;
	cfg_w32(dev, off, 0xffffffffU);
	u64 size = (u64)(~(cfg_r32(dev, off) & ~0xfU)) + 1;
	size &= 0xffffffffULL;
	if (!size || size > (16ULL << 20))
		return NULL;
	u64 pa = ALIGN_UP(vb.mmio_next, size);
	if (pa + size > PCIE_MMIO_END)
		return NULL;
	vb.mmio_next = pa + size;
	cfg_w32(dev, off, (u32)pa);
	if (is64)
		cfg_w32(dev, off + 4, 0);
	mapped[bar] = ioremap(pa, ALIGN_UP(size, PAGE_SIZE));
	mapped_pa[bar] = pa;
	*bar_pa = pa;
	return mapped[bar];
}

/* Pages for DMA buffers. The page allocator hands out freed init memory first, and those
 * pages keep their EL1_INIT class in SECvma's page table: the hypervisor refuses to give them
 * to a device (a usage class), as it would Linux's. Skip them. */
static u64 dma_alloc(u64 n)
{
	u64 lo = __pa_symbol(__init_begin), hi = __pa_symbol(_data), skipped[64], ns = 0, pa = 0;
	while (ns < ARRAY_SIZE(skipped)) {
		pa = alloc_pages(n);
		if (!pa || pa >= hi || pa + n * PAGE_SIZE <= lo)
			break;
		skipped[ns++] = pa;
		pa = 0;
	}
	for (u64 i = 0; i < ns; i++)
		free_pages(skipped[i], n);
	return pa;
}

static u64 hvc_map(u64 pa, u64 len, u64 *first_err)
{
	u64 n = 0;
	for (u64 p = pa & PAGE_MASK; p < pa + len; p += PAGE_SIZE) {
		u64 r = hvc_call(HVC_SMMU_LPAE_MAP, p, p, 3, vb.sid, 0);
		if (r && first_err && !*first_err)
			*first_err = r;
		n += !r;
	}
	return n;
}

static void hvc_unmap(u64 pa, u64 len)
{
	for (u64 p = pa & PAGE_MASK; p < pa + len; p += PAGE_SIZE)
		hvc_call(HVC_SMMU_CLEAR, p, vb.sid, 0, 0, 0);
}

static int fail(const char *why)
{
	strncpy_z(vb.why, why, sizeof(vb.why));
	vb.state = -1;
	return -1;
}

/* Find the disk, reset it, set up queue 0. Idempotent; a device that stopped answering is
 * reset and set up again (its stream context and ring mappings are kept). */
int virtio_blk_init(void)
{
	if (vb.state == 1)
		return 0;
	if (!vb.ecam) {
		vb.ecam = ioremap(PCIE_ECAM_PA, 1 << 20);     /* bus 0: 32 devices x 8 functions */
		vb.mmio_next = PCIE_MMIO_PA;
		if (!vb.ecam)
			return fail("cannot map PCI ECAM");
	}
	int dev = -1;
	for (int d = 0; d < 32 && dev < 0; d++) {
		u32 id = cfg_r32(d, 0);
		if ((id & 0xffff) == VIRTIO_VENDOR && (id >> 16) == VIRTIO_BLK_MODERN)
			dev = d;
	}
	if (dev < 0)
		return fail("no virtio-blk-pci (modern) device on bus 0");
	vb.sid = (u16)(dev << 3);                     /* requester ID 00:dev.0 = StreamID */
	if (!(cfg_r32(dev, 0x04) >> 16 & 0x10))
		return fail("virtio device without a capability list");
	for (u8 cap = cfg_r8(dev, 0x34) & ~3; cap; cap = cfg_r8(dev, cap + 1) & ~3) {
		if (cfg_r8(dev, cap) != PCI_CAP_VENDOR)
			continue;
		u8 type = cfg_r8(dev, cap + 3), bar = cfg_r8(dev, cap + 4);
		u32 off = cfg_r32(dev, cap + 8);
		u64 bar_pa;
		if (type != CAP_COMMON && type != CAP_NOTIFY && type != CAP_DEVICE)
			continue;
		if (bar > 5)
			return fail("virtio capability names a bad BAR");
		volatile u8 *base = map_bar(dev, bar, &bar_pa);
		if (!base)
			return fail("cannot assign the virtio BAR");
		if (type == CAP_COMMON)
			vb.common = base + off;
		else if (type == CAP_DEVICE)
			vb.devcfg = base + off;
		else {
			vb.notify = base + off;
			vb.notify_mult = cfg_r32(dev, cap + 16);
		}
	}
	if (!vb.common || !vb.notify || !vb.devcfg)
		return fail("virtio capabilities incomplete");
	cfg_w32(dev, 0x04, (cfg_r32(dev, 0x04) & 0xffff) | 0x6);   /* memory space + bus master */

	if (!vb.ring_pa) {
		u64 r = hvc_call(HVC_SMMU_ALLOC_PGD, vb.sid, 0, 0, 0, 0);
		vb.iommu = r == 0;
		vb.ring_pa = dma_alloc(1);
		vb.req_pa = dma_alloc(1);
		vb.bounce_pa = dma_alloc(DMA_MAX_LEN / PAGE_SIZE);
		if (!vb.ring_pa || !vb.req_pa || !vb.bounce_pa)
			return fail("out of memory for the virtqueue");
		if (vb.iommu && hvc_map(vb.ring_pa, PAGE_SIZE, NULL) + hvc_map(vb.req_pa, PAGE_SIZE, NULL) != 2)
			return fail("the hypervisor refused to map the virtqueue");
	}
	u8 *ring = __va(vb.ring_pa);
	memset(ring, 0, PAGE_SIZE);
	vb.desc = (struct vdesc *)ring;
	vb.avail = (struct vavail *)(ring + 0x400);
	vb.used = (struct vused *)(ring + 0x800);
	vb.req = __va(vb.req_pa);
	vb.status = (volatile u8 *)__va(vb.req_pa) + 0x100;
	vb.last_used = 0;

	volatile u8 *cc = vb.common;
	w8(cc, CC_STATUS, 0);
	for (int i = 0; i < 1000 && r8(cc, CC_STATUS); i++)
		;
	w8(cc, CC_STATUS, VS_ACK | VS_DRIVER);
	w32(cc, CC_DFSELECT, 1);
	u64 offered = (u64)r32(cc, CC_DF) << 32;
	if (!(offered & F_VERSION_1))
		return fail("device does not offer VIRTIO_F_VERSION_1");
	u64 want = F_VERSION_1 | (offered & F_ACCESS_PLATFORM);
	w32(cc, CC_GFSELECT, 0);
	w32(cc, CC_GF, 0);
	w32(cc, CC_GFSELECT, 1);
	w32(cc, CC_GF, (u32)(want >> 32));
	w8(cc, CC_STATUS, VS_ACK | VS_DRIVER | VS_FEATURES_OK);
	if (!(r8(cc, CC_STATUS) & VS_FEATURES_OK))
		return fail("device refused the features");
	w16(cc, CC_QSELECT, 0);
	if (r16(cc, CC_QSIZE) < QSIZE)
		return fail("virtqueue too small");
	w16(cc, CC_QSIZE, QSIZE);
	w64(cc, CC_QDESC, vb.ring_pa);
	w64(cc, CC_QDRIVER, vb.ring_pa + 0x400);
	w64(cc, CC_QDEVICE, vb.ring_pa + 0x800);
	vb.notify_off = r16(cc, CC_QNOTIFYOFF);
	w16(cc, CC_QENABLE, 1);
	w8(cc, CC_STATUS, VS_ACK | VS_DRIVER | VS_FEATURES_OK | VS_DRIVER_OK);
	vb.sectors = r32(vb.devcfg, 0) | (u64)r32(vb.devcfg, 4) << 32;
	vb.state = 1;
	printk("virtio-blk: 00:%02x.0 stream %x, %lu sectors, %s\n", vb.sid >> 3, vb.sid, vb.sectors,
	       vb.iommu ? "DMA through an SMMU context (HVC 24)" : "no SMMU context (direct DMA)");
	return 0;
}

const char *virtio_blk_error(void) { return vb.why; }
u16 virtio_blk_stream(void) { return vb.sid; }
int virtio_blk_iommu(void) { return vb.iommu; }

/* One request: `dir` DMA_DIR_FROM_DEVICE (disk read into iova) or DMA_DIR_TO_DEVICE.
 * Returns the virtio status (0 ok), or 0xff if the device never completed it (it is then reset
 * before the next use). A transfer the SMMU refused still completes with status 0 on QEMU 7.2:
 * the data just does not arrive. */
int virtio_blk_rw(int dir, u64 sector, u64 iova, u64 len)
{
	if (virtio_blk_init())
		return 0xff;
	if (!len || len % SECTOR || sector + len / SECTOR > vb.sectors)
		return 0xfe;
	vb.req->type = dir == DMA_DIR_TO_DEVICE ? BLK_T_OUT : BLK_T_IN;
	vb.req->reserved = 0;
	vb.req->sector = sector;
	*vb.status = 0xff;
	vb.desc[0] = (struct vdesc){ vb.req_pa, sizeof(struct blk_req), DESC_F_NEXT, 1 };
	vb.desc[1] = (struct vdesc){ iova, (u32)len,
				     DESC_F_NEXT | (dir == DMA_DIR_FROM_DEVICE ? DESC_F_WRITE : 0), 2 };
	vb.desc[2] = (struct vdesc){ vb.req_pa + 0x100, 1, DESC_F_WRITE, 0 };
	u16 idx = vb.avail->idx;
	vb.avail->ring[idx % QSIZE] = 0;
	dsb(sy);
	WRITE_ONCE(vb.avail->idx, (u16)(idx + 1));
	dsb(sy);
	w16(vb.notify, (u32)vb.notify_off * vb.notify_mult, 0);
	u64 t0 = cntvct(), limit = read_sysreg(cntfrq_el0) * 2;     /* 2 s */
	while (READ_ONCE(vb.used->idx) == vb.last_used) {
		if (cntvct() - t0 > limit) {
			vb.state = 0;                     /* reset and set up again before the next use */
			return 0xff;
		}
	}
	dsb(sy);
	vb.last_used++;
	return *vb.status;
}

/* CMD_DMA: a[0] IOVA (0: the driver's own bounce buffer), a[1] len, a[2] dir, a[3] sector,
 * a[4] DMA_F_*, a[5] fill byte. */
int dma_command(const u64 *a, u64 *ret, char *msg, u64 len)
{
	u64 iova = a[0], n = a[1], flags = a[4], maperr = 0, mapped = 0;
	if (virtio_blk_init()) {
		snprintf(msg, len, "no DMA device: %s", vb.why);
		return ST_UNSUPPORTED;
	}
	if (!iova)
		iova = vb.bounce_pa;
	if (!n || n % SECTOR || n > DMA_MAX_LEN || a[2] > DMA_DIR_TO_DEVICE) {
		snprintf(msg, len, "bad DMA request (len %lu, dir %lu)", n, a[2]);
		return ST_BADARG;
	}
	if (flags & DMA_F_FILL) {
		if (iova < KERNEL_PA || iova + n > ram_end) {
			snprintf(msg, len, "fill: %lx is not kernel RAM", iova);
			return ST_BADARG;
		}
		memset(__va(iova), (int)a[5], n);
		dsb(sy);
	}
	if (flags & DMA_F_MAP)
		mapped = hvc_map(iova, n, &maperr);
	int st = virtio_blk_rw((int)a[2], a[3], iova, n);
	if ((flags & DMA_F_MAP) && !(flags & DMA_F_NO_UNMAP) && mapped)
		hvc_unmap(iova, n);
	ret[0] = (u64)st;
	ret[1] = maperr;
	ret[2] = vb.sid;
	if (st) {
		snprintf(msg, len, "virtio-blk %s of %lu bytes at iova %lx: %s (map: %lx)",
			 a[2] == DMA_DIR_TO_DEVICE ? "write" : "read", n, iova,
			 st == 0xff ? "never completed" : "device error", maperr);
		return ST_FAILED;
	}
	snprintf(msg, len, "virtio-blk %s of %lu bytes at iova %lx done (map: %lx)",
		 a[2] == DMA_DIR_TO_DEVICE ? "write" : "read", n, iova, maperr);
	return ST_OK;
}

/* The `dma` workload: 1 MiB written to the disk and read back in 64 KiB requests, each buffer
 * mapped for the device before and unmapped after (a streaming DMA API), every byte checked.
 * `dma-static` maps both buffers once (a coherent DMA API): only the SMMU's translation
 * remains per request. */
static int dma_run(char *msg, u64 len, int streaming);
int wl_dma(char *msg, u64 len) { return dma_run(msg, len, 1); }
int wl_dma_static(char *msg, u64 len) { return dma_run(msg, len, 0); }

static int dma_run(char *msg, u64 len, int streaming)
{
	const char *wl = streaming ? "dma" : "dma-static";
	const u64 chunk = 0x10000, total = 1 << 20, pages = chunk / PAGE_SIZE;
	if (virtio_blk_init())
		return snprintf(msg, len, "%s: no device: %s", wl, vb.why), -1;
	u64 src = dma_alloc(pages), dst = dma_alloc(pages);
	int per_req = vb.iommu && streaming, once = vb.iommu && !streaming;
	u64 err0 = 0;
	int rc = -1;
	u64 tw = 0, tr = 0;
	if (!src || !dst) {
		snprintf(msg, len, "%s: out of memory", wl);
		goto out;
	}
	if (once && hvc_map(src, chunk, &err0) + hvc_map(dst, chunk, &err0) != 2 * pages) {
		snprintf(msg, len, "%s: the hypervisor refused a buffer (%lx)", wl, err0);
		goto out;
	}
	for (u64 off = 0; off < total; off += chunk) {
		u64 *s = __va(src), *d = __va(dst);
		for (u64 i = 0; i < chunk / 8; i++)
			s[i] = (off + 8 * i) * 0x9e3779b97f4a7c15ULL ^ jiffies;
		memset(d, 0, chunk);
		u64 err = 0, t0 = cntvct();
		if (per_req && hvc_map(src, chunk, &err) != pages) {
			snprintf(msg, len, "%s: the hypervisor refused a buffer (%lx)", wl, err);
			goto out;
		}
		int st = virtio_blk_rw(DMA_DIR_TO_DEVICE, off / SECTOR, src, chunk);
		if (per_req)
			hvc_unmap(src, chunk);
		u64 t1 = cntvct();
		if (per_req && hvc_map(dst, chunk, &err) != pages) {
			snprintf(msg, len, "%s: the hypervisor refused a buffer (%lx)", wl, err);
			goto out;
		}
		int st2 = st ? st : virtio_blk_rw(DMA_DIR_FROM_DEVICE, off / SECTOR, dst, chunk);
		if (per_req)
			hvc_unmap(dst, chunk);
		tw += t1 - t0;
		tr += cntvct() - t1;
		if (st || st2) {
			snprintf(msg, len, "%s: request at %lx failed (status %x/%x)", wl, off, st, st2);
			goto out;
		}
		if (memcmp(s, d, chunk)) {
			snprintf(msg, len, "%s: data read back at %lx differs from what was written", wl, off);
			goto out;
		}
	}
	snprintf(msg, len, "%s: %lu KiB written and read back via virtio-blk (stream %x, %s), "
		 "identical; write %lu us, read %lu us", wl, total >> 10, vb.sid,
		 !vb.iommu ? "direct" : streaming ? "SMMU context, mapped per request" :
		 "SMMU context, mapped once", ticks_to_us(tw), ticks_to_us(tr));
	rc = 0;
out:
	if (once && src && dst) {   /* pages never mapped answer ENOENT: harmless */
		hvc_unmap(src, chunk);
		hvc_unmap(dst, chunk);
	}
	if (src)
		free_pages(src, pages);
	if (dst)
		free_pages(dst, pages);
	return rc;
}
