/*
 * All user programs of the testbed, in one EL0 image (entered with x0 = arg, x1 = program id).
 * Each checks its own results and exits 0 on success.
 */
#include "uprog.h"

typedef unsigned long long u64;
typedef unsigned char u8;
typedef long long s64;

s64 syscall6(u64 nr, u64 a, u64 b, u64 c, u64 d, u64 e);
#define sys(nr, a, b, c) syscall6(nr, (u64)(a), (u64)(b), (u64)(c), 0, 0)

void *memset(void *d, int c, unsigned long n)   /* the compiler may call it */
{
	u8 *p = d;
	while (n--)
		*p++ = (u8)c;
	return d;
}

void *memcpy(void *d, const void *s, unsigned long n)
{
	u8 *p = d;
	const u8 *q = s;
	while (n--)
		*p++ = *q++;
	return d;
}

static void puts_(const char *s)
{
	u64 n = 0;
	while (s[n])
		n++;
	sys(SYS_WRITE, 1, s, n);
}

static int read_full(int fd, u8 *buf, u64 len)
{
	u64 got = 0;
	while (got < len) {
		s64 r = sys(SYS_READ, fd, buf + got, len - got);
		if (r <= 0)
			return -1;
		got += (u64)r;
	}
	return 0;
}

static int write_full(int fd, const u8 *buf, u64 len)
{
	return sys(SYS_WRITE, fd, buf, len) == (s64)len ? 0 : -1;
}

/* ---- hackbench ---------------------------------------------------------------------------- */
#define MSG 100

static u8 msg_byte(u64 sender, u64 seq, u64 i) { return (u8)(sender * 131 + seq * 7 + i * 3 + 1); }

/* sender: arg = loops<<32 | sender<<24 | nrecv<<16 | first write fd */
static int hb_sender(u64 arg)
{
	u64 loops = arg >> 32, id = (arg >> 24) & 0xff, nrecv = (arg >> 16) & 0xff, fd0 = arg & 0xffff;
	u8 buf[MSG];
	for (u64 l = 0; l < loops; l++)
		for (u64 r = 0; r < nrecv; r++) {
			buf[0] = (u8)id;
			buf[1] = (u8)l;
			for (u64 i = 2; i < MSG; i++)
				buf[i] = msg_byte(id, l, i);
			if (write_full((int)(fd0 + 2 * r), buf, MSG))
				return 10;
		}
	return 0;
}

/* receiver: arg = loops<<32 | nsend<<16 | read fd; checks every byte and per-sender order */
static int hb_receiver(u64 arg)
{
	u64 loops = arg >> 32, nsend = (arg >> 16) & 0xff, fd = arg & 0xffff;
	u8 buf[MSG], next[256] = { 0 };
	for (u64 k = 0; k < loops * nsend; k++) {
		if (read_full((int)fd, buf, MSG))
			return 20;
		u64 id = buf[0], l = buf[1];
		if (id >= nsend || l != next[id])
			return 21;
		next[id]++;
		for (u64 i = 2; i < MSG; i++)
			if (buf[i] != msg_byte(id, l, i))
				return 22;
	}
	return 0;
}

/* arg = groups<<16 | pairs<<8 | loops: per group one pipe per receiver, all senders write to all */
static int hackbench(u64 arg)
{
	u64 groups = arg >> 16, pairs = (arg >> 8) & 0xff, loops = arg & 0xff;
	int pids[64], n = 0;
	for (u64 g = 0; g < groups; g++) {
		int fds[16][2];
		for (u64 r = 0; r < pairs; r++)
			if (sys(SYS_PIPE, fds[r], 0, 0))
				return 1;
		for (u64 r = 0; r < pairs; r++)
			pids[n++] = (int)sys(SYS_SPAWN, UP_HB_RECEIVER, loops << 32 | pairs << 16 | (u64)fds[r][0], 0);
		for (u64 s = 0; s < pairs; s++)   /* write fds are consecutive: r0 w0 r1 w1 ... */
			pids[n++] = (int)sys(SYS_SPAWN, UP_HB_SENDER,
					     loops << 32 | s << 24 | pairs << 16 | (u64)fds[0][1], 0);
		for (u64 r = 0; r < pairs; r++) {
			sys(SYS_CLOSE, fds[r][0], 0, 0);
			sys(SYS_CLOSE, fds[r][1], 0, 0);
		}
	}
	int bad = 0;
	for (int i = 0; i < n; i++) {
		int st = -1;
		if (pids[i] < 0 || sys(SYS_WAIT, pids[i], &st, 0) != pids[i] || st)
			bad++;
	}
	return bad ? 2 : 0;
}

/* ---- kernbench ---------------------------------------------------------------------------- */
static int kb_worker(u64 arg)
{
	u64 iters = arg & 0xffff, seed = arg >> 16;
	u64 (*vclock)(void) = (u64 (*)(void))(0x70000000ULL + VDSO_CLOCK_OFF);
	u64 (*vmagic)(void) = (u64 (*)(void))(0x70000000ULL + VDSO_MAGIC_OFF);
	if (vmagic() != VDSO_MAGIC)
		return 30;
	u64 t0 = vclock();
	for (u64 it = 0; it < iters; it++) {
		u64 pages = 1 + (it + seed) % 8;
		u64 *p = (u64 *)sys(SYS_MMAP, pages * 4096, 0, 0);
		if ((s64)p < 0)
			return 31;
		for (u64 i = 0; i < pages * 512; i += 64)
			if (p[i])
				return 32;       /* fresh anonymous memory must be zero */
		for (u64 i = 0; i < pages * 512; i += 8)
			p[i] = i ^ (seed << 40) ^ it;
		for (u64 i = 0; i < pages * 512; i += 8)
			if (p[i] != (i ^ (seed << 40) ^ it))
				return 33;
		if (sys(SYS_MUNMAP, p, pages * 4096, 0))
			return 34;
		for (int k = 0; k < 20; k++)
			if (sys(SYS_GETPID, 0, 0, 0) <= 0)
				return 35;
		if (it % 4 == 0)
			sys(SYS_YIELD, 0, 0, 0);
	}
	return vclock() >= t0 ? 0 : 36;
}

/*
 * Spin for (arg & 0xffff) ms on the vDSO clock without entering the kernel; exit 0 only if some
 * gap between two clock reads was longer than 1 ms, i.e. the timer preempted us for another
 * task. With a start pipe (read fd + 1 in arg >> 16), wait for one byte first, so that both
 * CPU-bound children start spinning together however long spawning the second one took.
 */
static int spin(u64 arg)
{
	u64 ms = arg & 0xffff, start_fd = arg >> 16;
	if (start_fd) {
		u8 go;
		if (read_full((int)(start_fd - 1), &go, 1))
			return 41;
	}
	u64 (*vclock)(void) = (u64 (*)(void))(0x70000000ULL + VDSO_CLOCK_OFF);
	u64 freq;
	asm volatile("mrs %0, cntfrq_el0" : "=r"(freq));
	u64 t0 = vclock(), last = t0, gap = 0;
	while (last - t0 < ms * freq / 1000) {
		u64 now = vclock();
		if (now - last > gap)
			gap = now - last;
		last = now;
	}
	return gap > freq / 1000 ? 0 : 40;
}

/*
 * arg = workers<<16 | iterations. Exit 0, or 100 + a mask of what failed: 1 a worker (its own
 * exit code tells which check), 2 a CPU-bound child that was never preempted, 4 an exit code
 * that did not come back through wait, 8 no pipe for the start signal.
 */
static int kernbench(u64 arg)
{
	u64 workers = arg >> 16, iters = arg & 0xffff;
	int pids[32], bad = 0;
	for (u64 w = 0; w < workers; w++)
		pids[w] = (int)sys(SYS_SPAWN, UP_KB_WORKER, (w + 1) << 16 | iters, 0);
	if (kb_worker(iters))
		bad |= 1;
	for (u64 w = 0; w < workers; w++) {
		int st = -1;
		if (pids[w] < 0 || sys(SYS_WAIT, pids[w], &st, 0) != pids[w] || st)
			bad |= 1;
	}
	/* two CPU-bound children at once: each must have been preempted by the timer tick */
	int sp[2], go[2];
	if (sys(SYS_PIPE, go, 0, 0))
		return 100 + 8;
	for (int i = 0; i < 2; i++)
		sp[i] = (int)sys(SYS_SPAWN, UP_SPIN, ((u64)go[0] + 1) << 16 | 20, 0);
	if (write_full(go[1], (const u8 *)"gg", 2))
		bad |= 2;
	sys(SYS_CLOSE, go[0], 0, 0);
	sys(SYS_CLOSE, go[1], 0, 0);
	for (int i = 0; i < 2; i++) {
		int st = -1;
		if (sp[i] < 0 || sys(SYS_WAIT, sp[i], &st, 0) != sp[i] || st)
			bad |= 2;
	}
	/* a child that exits with a code: the code must come back through wait */
	int st = -1, pid = (int)sys(SYS_SPAWN, UP_EXIT, 42, 0);
	if (sys(SYS_WAIT, pid, &st, 0) != pid || st != 42)
		bad |= 4;
	return bad ? 100 + bad : 0;
}

int user_main(u64 arg, u64 prog)
{
	switch (prog) {
	case UP_HACKBENCH: return hackbench(arg);
	case UP_HB_SENDER: return hb_sender(arg);
	case UP_HB_RECEIVER: return hb_receiver(arg);
	case UP_KERNBENCH: return kernbench(arg);
	case UP_KB_WORKER: return kb_worker(arg);
	case UP_EXIT: return (int)arg;
	case UP_READ: return (int)*(volatile u64 *)arg;
	case UP_WRITE: *(volatile u64 *)arg = 0x5ec7; return 0;
	case UP_EXEC: return (int)((u64 (*)(void))arg)();
	case UP_HELLO: puts_("hello from EL0\n"); return 0;
	case UP_SPIN: return spin(arg);
	}
	return 99;
}
