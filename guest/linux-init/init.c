/* secvma's /init for the Debian kernel: print a line from userspace, optionally run
 * micro-benchmarks or module loads named on the kernel command line (or sleep SECVMA_IDLE_MS),
 * power off (reboot(2) -> PSCI SYSTEM_OFF).
 * Static, no libc: raw AArch64 syscalls. */
typedef unsigned long u64;

static long sc6(long n, long a, long b, long c, long d, long e)
{
	register long x8 asm("x8") = n, x0 asm("x0") = a, x1 asm("x1") = b, x2 asm("x2") = c,
		      x3 asm("x3") = d, x4 asm("x4") = e;
	asm volatile("svc 0" : "+r"(x0) : "r"(x8), "r"(x1), "r"(x2), "r"(x3), "r"(x4) : "memory");
	return x0;
}
#define sc(n, a, b, c) sc6(n, a, b, c, 0, 0)
#define SYS_write 64
#define SYS_reboot 142
#define SYS_sync 81
#define SYS_getppid 173
#define SYS_sched_yield 124
#define SYS_clock_gettime 113
#define SYS_clone 220
#define SYS_wait4 260
#define SYS_exit 93
#define SYS_openat 56
#define SYS_close 57
#define SYS_pread64 67
#define SYS_pwrite64 68
#define SYS_mount 40
#define SYS_finit_module 273
#define SYS_nanosleep 101
#define SYS_delete_module 106
#define AT_FDCWD -100
#define O_RDWR 2
#define O_DIRECT 0200000 /* arm64 */

static long slen(const char *s) { long n = 0; while (s[n]) n++; return n; }
static void puts_(const char *s) { sc(SYS_write, 1, (long)s, slen(s)); }
static void putn(u64 v)
{
	char b[24]; int i = 23; b[i] = 0;
	do { b[--i] = '0' + v % 10; v /= 10; } while (v);
	puts_(b + i);
}
static u64 now(void) { long ts[2]; sc(SYS_clock_gettime, 1, (long)ts, 0); return ts[0] * 1000000000UL + ts[1]; }

/* value of KEY=<digits> in the environment (the kernel passes unknown cmdline words there) */
static long envnum(char **envp, const char *k)
{
	for (; *envp; envp++) {
		const char *e = *envp, *q = k;
		while (*q && *e == *q) { e++; q++; }
		if (!*q && *e == '=') {
			long v = 0; e++;
			while (*e >= '0' && *e <= '9') v = v * 10 + (*e++ - '0');
			return v;
		}
	}
	return 0;
}

/* SECVMA_DMA=1: load the virtio PCI + blk modules packed as /m/0.ko.. (in dependency order),
 * then write 64 KiB to /dev/vda with O_DIRECT (the device reads the pages by DMA), read them back
 * into another buffer (the device writes them) and compare. */
static unsigned char dma_out[65536] __attribute__((aligned(4096)));
static unsigned char dma_in[65536] __attribute__((aligned(4096)));
static void dma_check(void)
{
	static char path[] = "/m/0.ko";
	for (char c = '0'; c <= '9'; c++) {
		path[3] = c;
		long fd = sc(SYS_openat, AT_FDCWD, (long)path, 0);
		if (fd < 0)
			break;
		long r = sc(SYS_finit_module, fd, (long)"", 0);
		sc(SYS_close, fd, 0, 0);
		if (r < 0 && r != -17) { puts_("SECVMA-INIT: dma FAILED insmod "); puts_(path); puts_("\n"); return; }
	}
	sc6(SYS_mount, (long)"devtmpfs", (long)"/dev", (long)"devtmpfs", 0, 0);
	long fd = sc(SYS_openat, AT_FDCWD, (long)"/dev/vda", O_RDWR | O_DIRECT);
	if (fd < 0) { puts_("SECVMA-INIT: dma FAILED no /dev/vda\n"); return; }
	for (long i = 0; i < (long)sizeof(dma_out); i++)
		dma_out[i] = (unsigned char)(i * 131 + (i >> 9));
	u64 t = now();
	long w = sc6(SYS_pwrite64, fd, (long)dma_out, sizeof(dma_out), 4096, 0);
	long r = sc6(SYS_pread64, fd, (long)dma_in, sizeof(dma_in), 4096, 0);
	t = now() - t;
	sc(SYS_close, fd, 0, 0);
	long same = w == (long)sizeof(dma_out) && r == (long)sizeof(dma_in);
	for (long i = 0; same && i < (long)sizeof(dma_in); i++)
		same = dma_in[i] == dma_out[i];
	puts_(same ? "SECVMA-INIT: dma ok 65536 bytes each way, us " : "SECVMA-INIT: dma FAILED data, us ");
	putn(t / 1000); puts_("\n");
}

/* SECVMA_MODS=1: load /m/0.ko, /m/1.ko ... each in a child (a refused module's init oopses
 * the loading task, not init), print each one's result, then prove the machine goes on. */
static char **envp_;
static void mods_check(void)
{
	static char path[] = "/m/0.ko";
	for (char c = '0'; c <= '9'; c++) {
		path[3] = c;
		long fd = sc(SYS_openat, AT_FDCWD, (long)path, 0);
		if (fd < 0)
			break;
		u64 t = now();
		long pid = sc(SYS_clone, 17 /* SIGCHLD */, 0, 0);
		if (pid == 0) {
			long r = sc(SYS_finit_module, fd, (long)"", 0);
			sc(SYS_exit, r < 0 ? -r : 0, 0, 0);
		}
		sc(SYS_close, fd, 0, 0);
		int st = 0;
		sc6(SYS_wait4, pid, (long)&st, 0, 0, 0);
		puts_("SECVMA-INIT: mod "); puts_(path);
		if ((st & 0x7f) == 0) { puts_(" exit "); putn((st >> 8) & 0xff); }
		else { puts_(" signal "); putn(st & 0x7f); }
		puts_(" us "); putn((now() - t) / 1000);
		puts_("\n");
	}
	/* SECVMA_MODS=2: unload the last module that loaded (its text pages go back) */
	static const char *unload = "virtio_crypto";
	if (envnum(envp_, "SECVMA_MODS") == 2) {
		long r = sc(SYS_delete_module, (long)unload, 04000 /* O_NONBLOCK */, 0);
		puts_(r ? "SECVMA-INIT: unload failed\n" : "SECVMA-INIT: unloaded virtio_crypto\n");
	}
	long pid = sc(SYS_clone, 17, 0, 0);
	if (pid == 0)
		sc(SYS_exit, 7, 0, 0);
	int st = 0;
	sc6(SYS_wait4, pid, (long)&st, 0, 0, 0);
	puts_(((st >> 8) & 0xff) == 7 ? "SECVMA-INIT: alive after modules\n" : "SECVMA-INIT: fork broken\n");
}

void cmain(long *sp)
{
	char **envp = (char **)(sp + 1 + sp[0] + 1);
	puts_("SECVMA-INIT: hello from userspace\n");
	long ns = envnum(envp, "SECVMA_SYSCALLS");
	if (ns) {
		u64 t = now();
		for (long i = 0; i < ns; i++) sc(SYS_getppid, 0, 0, 0);
		t = now() - t;
		puts_("SECVMA-INIT: getppid ns/call "); putn(t / ns); puts_("\n");
	}
	long ny = envnum(envp, "SECVMA_YIELDS");
	if (ny) {
		u64 t = now();
		long pid = sc(SYS_clone, 17 /* SIGCHLD */, 0, 0);
		for (long i = 0; i < ny; i++) sc(SYS_sched_yield, 0, 0, 0);
		if (pid == 0) sc(SYS_exit, 0, 0, 0);
		sc6(SYS_wait4, -1, 0, 0, 0, 0);
		t = now() - t;
		puts_("SECVMA-INIT: sched_yield ns/switch "); putn(t / ny / 2); puts_("\n");
	}
	if (envnum(envp, "SECVMA_DMA"))
		dma_check();
	long idle = envnum(envp, "SECVMA_IDLE_MS"); /* an idle guest: what it costs the host */
	if (idle) {
		long ts[2] = {idle / 1000, (idle % 1000) * 1000000};
		puts_("SECVMA-INIT: idle start\n");
		sc(SYS_nanosleep, (long)ts, 0, 0);
		puts_("SECVMA-INIT: idle end\n");
	}
	envp_ = envp;
	if (envnum(envp, "SECVMA_MODS"))
		mods_check();
	puts_("SECVMA-INIT: powering off\n");
	sc(SYS_sync, 0, 0, 0);
	sc6(SYS_reboot, 0xfee1dead, 672274793, 0x4321fedc, 0, 0);
	for (;;)
		;
}
asm(".globl _start\n_start:\n mov x0, sp\n bl cmain\n");
