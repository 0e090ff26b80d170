/*
 * secvma's userspace for the unmodified Debian kernel: /init of the workload and attack runs.
 *
 * Static (glibc), controlled by the kernel command line (words the kernel hands to init's
 * environment): SECVMA_WL=<name,name,...> runs workloads, SECVMA_ATTACK=<NAME> runs one
 * attack of the secvma_lkdtm module. Every workload checks its *result* (exit codes, bytes,
 * counters, checksums, faults that must happen), in a child process so a crash is a failed
 * workload, never a lost report. Report lines on the console, one write(2) each:
 *   SECVMA-WL <name> <ok 0|1> <ns> <detail>
 *   SECVMA-ATK <name> <effect 0|1> <exited:N|signal:N> <detail>
 *   SECVMA-ALIVE <0|1> <detail>          (after an attack: the machine still works)
 *   SECVMA-DONE
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAGIC 42
#define SHELLCODE0 0xd2800540u
#define SHELLCODE1 0xd65f03c0u

static char detail[256];
static char *self_path = "/init";

static void say(const char *fmt, ...)
{
	char buf[512];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(buf, sizeof(buf) - 1, fmt, ap);
	va_end(ap);
	if (n > (int)sizeof(buf) - 2)
		n = sizeof(buf) - 2;
	buf[n++] = '\n';
	if (write(1, buf, n) < 0)
		_exit(99);
}

static int fail(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(detail, sizeof(detail), fmt, ap);
	va_end(ap);
	return 0;
}

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

/* ---- fork/exec storm ------------------------------------------------------------------- */
#define FORK_ROUNDS 25
#define FORK_WIDTH 4

static int wl_forkexec(void)
{
	int r, k, spawned = 0;

	for (r = 0; r < FORK_ROUNDS; r++) {
		pid_t pids[FORK_WIDTH];
		for (k = 0; k < FORK_WIDTH; k++) {
			int code = (r * FORK_WIDTH + k) % 200 + 1;
			pids[k] = fork();
			if (pids[k] < 0)
				return fail("fork: %s", strerror(errno));
			if (pids[k] == 0) {
				char num[16];
				snprintf(num, sizeof(num), "%d", code);
				char *argv[] = { self_path, "exit-with", num, NULL };
				char *envp[] = { NULL };
				execve(self_path, argv, envp);
				_exit(255);
			}
		}
		for (k = 0; k < FORK_WIDTH; k++) {
			int st, code = (r * FORK_WIDTH + k) % 200 + 1;
			if (waitpid(pids[k], &st, 0) != pids[k])
				return fail("waitpid: %s", strerror(errno));
			if (!WIFEXITED(st) || WEXITSTATUS(st) != code)
				return fail("child %d: status %#x, expected exit %d", r * FORK_WIDTH + k, st, code);
			spawned++;
		}
	}
	snprintf(detail, sizeof(detail), "%d fork+execve children, every exit code as sent", spawned);
	return 1;
}

/* ---- mmap / munmap / mprotect churn ---------------------------------------------------- */
static sigjmp_buf fault_jmp;
static volatile sig_atomic_t faults;

static void on_segv(int sig)
{
	(void)sig;
	faults++;
	siglongjmp(fault_jmp, 1);
}

static int touches_fault(volatile uint64_t *p, int write_it)
{
	if (sigsetjmp(fault_jmp, 1))
		return 1;
	if (write_it)
		*p = 1;
	else
		(void)*p;
	return 0;
}

#define MMAP_ROUNDS 80
#define MMAP_PAGES 16

static int wl_mmap(void)
{
	struct sigaction sa = { .sa_handler = on_segv };
	long pg = sysconf(_SC_PAGESIZE);
	int r, i;
	unsigned long checked = 0;

	sigemptyset(&sa.sa_mask);
	sigaction(SIGSEGV, &sa, NULL);
	for (r = 0; r < MMAP_ROUNDS; r++) {
		size_t len = MMAP_PAGES * pg;
		uint64_t *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		size_t words = len / 8, w;
		if (m == MAP_FAILED)
			return fail("mmap: %s", strerror(errno));
		for (w = 0; w < words; w++)
			m[w] = ((uint64_t)r << 40) ^ (w * 0x9e3779b97f4a7c15ull);
		if (mprotect(m, len, PROT_READ))
			return fail("mprotect RO: %s", strerror(errno));
		for (w = 0; w < words; w++)
			if (m[w] != (((uint64_t)r << 40) ^ (w * 0x9e3779b97f4a7c15ull)))
				return fail("round %d: word %zu changed after mprotect(PROT_READ)", r, w);
		checked += words;
		if (!touches_fault(&m[r % words], 1))
			return fail("round %d: a write to a PROT_READ page did not fault", r);
		if (mprotect(m, len, PROT_NONE))
			return fail("mprotect NONE: %s", strerror(errno));
		for (i = 0; i < MMAP_PAGES; i += 5)
			if (!touches_fault(&m[i * pg / 8], 0))
				return fail("round %d: a read of a PROT_NONE page did not fault", r);
		if (mprotect(m, len, PROT_READ | PROT_WRITE))
			return fail("mprotect RW: %s", strerror(errno));
		for (w = 0; w < words; w += 97)
			if (m[w] != (((uint64_t)r << 40) ^ (w * 0x9e3779b97f4a7c15ull)))
				return fail("round %d: contents lost across PROT_NONE", r);
		if (munmap((char *)m + len / 2, len / 2))
			return fail("munmap: %s", strerror(errno));
		if (!touches_fault(&m[words - 1], 0))
			return fail("round %d: an unmapped page did not fault", r);
		m[0] = 7;
		if (m[0] != 7 || munmap(m, len / 2))
			return fail("round %d: the kept half is broken", r);
	}
	signal(SIGSEGV, SIG_DFL);
	snprintf(detail, sizeof(detail), "%d rounds, %lu words verified, %d expected faults taken",
		 MMAP_ROUNDS, checked, (int)faults);
	return 1;
}

/* ---- pipes: hackbench-like groups and a ping-pong -------------------------------------- */
#define PIPE_GROUPS 4
#define PIPE_MSGS 200
#define PIPE_MSG_LEN 100
#define PINGS 200

static int read_full(int fd, void *buf, size_t n)
{
	size_t got = 0;
	while (got < n) {
		ssize_t k = read(fd, (char *)buf + got, n - got);
		if (k <= 0)
			return -1;
		got += k;
	}
	return 0;
}

static int wl_pipe(void)
{
	pid_t pids[2 * PIPE_GROUPS];
	int g, st, i;
	uint64_t bytes = 0;

	for (g = 0; g < PIPE_GROUPS; g++) {
		int fds[2];
		if (pipe(fds))
			return fail("pipe: %s", strerror(errno));
		pids[2 * g] = fork();
		if (pids[2 * g] == 0) { /* receiver: exit 0 iff every byte is as sent */
			unsigned char msg[PIPE_MSG_LEN];
			close(fds[1]);
			for (i = 0; i < PIPE_MSGS; i++) {
				if (read_full(fds[0], msg, sizeof(msg)))
					_exit(2);
				for (int b = 0; b < PIPE_MSG_LEN; b++)
					if (msg[b] != (unsigned char)(i * 7 + b + g))
						_exit(3);
			}
			_exit(read(fds[0], msg, 1) == 0 ? 0 : 4);
		}
		pids[2 * g + 1] = fork();
		if (pids[2 * g + 1] == 0) { /* sender */
			unsigned char msg[PIPE_MSG_LEN];
			close(fds[0]);
			for (i = 0; i < PIPE_MSGS; i++) {
				for (int b = 0; b < PIPE_MSG_LEN; b++)
					msg[b] = (unsigned char)(i * 7 + b + g);
				if (write(fds[1], msg, sizeof(msg)) != sizeof(msg))
					_exit(5);
			}
			_exit(0);
		}
		close(fds[0]);
		close(fds[1]);
	}
	for (i = 0; i < 2 * PIPE_GROUPS; i++) {
		if (waitpid(pids[i], &st, 0) != pids[i] || !WIFEXITED(st) || WEXITSTATUS(st))
			return fail("group %d %s: status %#x", i / 2, i % 2 ? "sender" : "receiver", st);
	}
	bytes = (uint64_t)PIPE_GROUPS * PIPE_MSGS * PIPE_MSG_LEN;

	int ab[2], ba[2];
	if (pipe(ab) || pipe(ba))
		return fail("pipe: %s", strerror(errno));
	pid_t echo = fork();
	if (echo == 0) {
		uint64_t v;
		close(ab[1]);
		close(ba[0]);
		while (read_full(ab[0], &v, 8) == 0)
			if (write(ba[1], &(uint64_t){ v + 1 }, 8) != 8)
				_exit(6);
		_exit(0);
	}
	close(ab[0]);
	close(ba[1]);
	for (i = 0; i < PINGS; i++) {
		uint64_t v = (uint64_t)i * 1000003u, back;
		if (write(ab[1], &v, 8) != 8 || read_full(ba[0], &back, 8))
			return fail("ping %d: pipe broke", i);
		if (back != v + 1)
			return fail("ping %d: got %llu, expected %llu", i, (unsigned long long)back,
				    (unsigned long long)(v + 1));
	}
	close(ab[1]);
	if (waitpid(echo, &st, 0) != echo || !WIFEXITED(st) || WEXITSTATUS(st))
		return fail("echo child: status %#x", st);
	close(ba[0]);
	snprintf(detail, sizeof(detail), "%d groups x %d msgs = %llu bytes verified; %d ping-pongs",
		 PIPE_GROUPS, PIPE_MSGS, (unsigned long long)bytes, PINGS);
	return 1;
}

/* ---- threads --------------------------------------------------------------------------- */
#define THREADS 4
#define INCS 20000

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static long locked_counter;
static long atomic_counter;
static long per_thread[THREADS];

static void *thread_body(void *arg)
{
	long id = (long)arg;
	for (int i = 0; i < INCS; i++) {
		__atomic_fetch_add(&atomic_counter, 1, __ATOMIC_SEQ_CST);
		pthread_mutex_lock(&mu);
		locked_counter++;
		pthread_mutex_unlock(&mu);
		per_thread[id] += id + 1;
		if (i % 5000 == 0)
			sched_yield();
	}
	return (void *)(id * 3 + 1);
}

static int wl_threads(void)
{
	pthread_t t[THREADS];
	long i;

	for (i = 0; i < THREADS; i++)
		if (pthread_create(&t[i], NULL, thread_body, (void *)i))
			return fail("pthread_create failed");
	for (i = 0; i < THREADS; i++) {
		void *ret;
		if (pthread_join(t[i], &ret) || (long)ret != i * 3 + 1)
			return fail("thread %ld returned %ld", i, (long)ret);
		if (per_thread[i] != (i + 1) * INCS)
			return fail("thread %ld's own slot is %ld", i, per_thread[i]);
	}
	if (atomic_counter != THREADS * INCS || locked_counter != THREADS * INCS)
		return fail("counters %ld (atomic) %ld (mutex), expected %d", atomic_counter,
			    locked_counter, THREADS * INCS);
	snprintf(detail, sizeof(detail), "%d threads, shared counters %ld and %ld as expected", THREADS,
		 atomic_counter, locked_counter);
	return 1;
}

/* ---- file I/O on tmpfs ----------------------------------------------------------------- */
#define FILE_CHUNK 65536
#define FILE_CHUNKS 32

static uint64_t fnv(uint64_t h, const unsigned char *p, size_t n)
{
	while (n--)
		h = (h ^ *p++) * 0x100000001b3ull;
	return h;
}

static int wl_fileio(void)
{
	static unsigned char buf[FILE_CHUNK];
	const char *path = "/tmp/secvma-fileio";
	uint64_t want = 0xcbf29ce484222325ull, got = 0xcbf29ce484222325ull, x = 88172645463325252ull;
	int fd, c;

	fd = open(path, O_CREAT | O_TRUNC | O_WRONLY, 0600);
	if (fd < 0)
		return fail("open for write: %s", strerror(errno));
	for (c = 0; c < FILE_CHUNKS; c++) {
		for (size_t i = 0; i < FILE_CHUNK; i += 8) {
			x ^= x << 13, x ^= x >> 7, x ^= x << 17;
			memcpy(buf + i, &x, 8);
		}
		want = fnv(want, buf, FILE_CHUNK);
		if (write(fd, buf, FILE_CHUNK) != FILE_CHUNK)
			return fail("write: %s", strerror(errno));
	}
	if (fsync(fd) || close(fd))
		return fail("fsync/close: %s", strerror(errno));
	struct stat sb;
	if (stat(path, &sb) || sb.st_size != (off_t)FILE_CHUNK * FILE_CHUNKS)
		return fail("size %lld after write", (long long)sb.st_size);
	fd = open(path, O_RDONLY);
	if (fd < 0)
		return fail("open for read: %s", strerror(errno));
	for (c = 0; c < FILE_CHUNKS; c++) {
		if (read_full(fd, buf, FILE_CHUNK))
			return fail("short read in chunk %d", c);
		got = fnv(got, buf, FILE_CHUNK);
	}
	close(fd);
	if (got != want)
		return fail("checksum %016llx read back, %016llx written", (unsigned long long)got,
			    (unsigned long long)want);
	if (unlink(path) || access(path, F_OK) == 0 || errno != ENOENT)
		return fail("unlink did not remove the file");
	snprintf(detail, sizeof(detail), "%d KiB written, read back, FNV-1a %016llx matches",
		 FILE_CHUNK * FILE_CHUNKS / 1024, (unsigned long long)got);
	return 1;
}

/* ---- module load / unload -------------------------------------------------------------- */
static int load_module(const char *path)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	long r = syscall(SYS_finit_module, fd, "", 0);
	int e = errno;
	close(fd);
	return r ? -e : 0;
}

/* 1 if /proc/modules lists `name` as Live */
static int module_live(const char *name)
{
	char line[512];
	size_t n = strlen(name);
	FILE *f = fopen("/proc/modules", "r");
	int live = 0;

	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f))
		if (!strncmp(line, name, n) && line[n] == ' ' && strstr(line, " Live "))
			live = 1;
	fclose(f);
	return live;
}

static const char *mod_names[] = { "crypto_engine", "virtio_crypto" };

static int wl_modules(void)
{
	int i, r, rounds;

	for (rounds = 0; rounds < 2; rounds++) {
		for (i = 0; i < 2; i++) {
			char path[128];
			snprintf(path, sizeof(path), "/lib/modules/%s.ko", mod_names[i]);
			if ((r = load_module(path)))
				return fail("finit_module(%s): %s", mod_names[i], strerror(-r));
			if (!module_live(mod_names[i]))
				return fail("%s loaded but not Live in /proc/modules", mod_names[i]);
		}
		for (i = 1; i >= 0; i--) {
			if (syscall(SYS_delete_module, mod_names[i], O_NONBLOCK))
				return fail("delete_module(%s): %s", mod_names[i], strerror(errno));
			if (module_live(mod_names[i]))
				return fail("%s still listed after delete_module", mod_names[i]);
		}
	}
	snprintf(detail, sizeof(detail), "crypto_engine + virtio_crypto loaded, Live, unloaded, twice");
	return 1;
}

/* ---- workload runner ------------------------------------------------------------------- */
struct workload {
	const char *name;
	int (*fn)(void);
};

static const struct workload workloads[] = {
	{ "forkexec", wl_forkexec }, { "mmap", wl_mmap },	{ "pipe", wl_pipe },
	{ "threads", wl_threads },   { "fileio", wl_fileio }, { "modules", wl_modules },
};

static void run_workload(const struct workload *w)
{
	int fds[2], st;
	char buf[300];
	uint64_t t0 = now_ns();
	ssize_t n = 0;

	if (pipe(fds)) {
		say("SECVMA-WL %s 0 0 pipe: %s", w->name, strerror(errno));
		return;
	}
	pid_t pid = fork();
	if (pid == 0) {
		close(fds[0]);
		detail[0] = 0;
		int ok = w->fn();
		dprintf(fds[1], "%d %s", ok, detail);
		_exit(0);
	}
	close(fds[1]);
	while (n < (ssize_t)sizeof(buf) - 1) {
		ssize_t k = read(fds[0], buf + n, sizeof(buf) - 1 - n);
		if (k <= 0)
			break;
		n += k;
	}
	buf[n] = 0;
	close(fds[0]);
	waitpid(pid, &st, 0);
	uint64_t dt = now_ns() - t0;
	if (!WIFEXITED(st) || WEXITSTATUS(st))
		say("SECVMA-WL %s 0 %llu the workload process died (status %#x)", w->name,
		    (unsigned long long)dt, st);
	else if (n < 2)
		say("SECVMA-WL %s 0 %llu no report from the workload", w->name, (unsigned long long)dt);
	else
		say("SECVMA-WL %s %c %llu %s", w->name, buf[0] == '1' ? '1' : '0', (unsigned long long)dt,
		    buf + 2);
}

static void run_workloads(const char *list)
{
	char copy[256], *save, *tok;
	snprintf(copy, sizeof(copy), "%s", list);
	for (tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		size_t i;
		for (i = 0; i < sizeof(workloads) / sizeof(workloads[0]); i++)
			if (!strcmp(tok, workloads[i].name) || !strcmp(tok, "all"))
				run_workload(&workloads[i]);
	}
}

/* ---- attacks --------------------------------------------------------------------------- */
static unsigned long ksym(const char *name)
{
	char line[256], sym[200], type;
	unsigned long addr;
	FILE *f = fopen("/proc/kallsyms", "r");

	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "%lx %c %199s", &addr, &type, sym) == 3 && !strcmp(sym, name)) {
			fclose(f);
			return addr;
		}
	fclose(f);
	return 0;
}

static void read_file(const char *path, char *out, size_t n)
{
	int fd = open(path, O_RDONLY);
	ssize_t k = fd < 0 ? -1 : read(fd, out, n - 1);
	out[k > 0 ? k : 0] = 0;
	if (fd >= 0)
		close(fd);
	char *nl = strchr(out, '\n');
	if (nl)
		*nl = 0;
}

/* Debian's virtio-blk driver stack, in load order (the dma-* attacks' disk) */
static const char *const virtio_blk_mods[] = {
	"virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio_pci", "virtio_blk",
};

/* Load the virtio-blk modules, wait for the disk; *devt = major << 20 | minor (MKDEV). */
static int dma_disk(unsigned long *devt)
{
	char path[96], dev[32];
	unsigned int maj, mnr;
	int r, i;

	for (i = 0; i < (int)(sizeof(virtio_blk_mods) / sizeof(*virtio_blk_mods)); i++) {
		snprintf(path, sizeof(path), "/lib/modules/%s.ko", virtio_blk_mods[i]);
		if ((r = load_module(path)) && r != -EEXIST) {
			fail("finit_module(%s): %s", virtio_blk_mods[i], strerror(-r));
			return r;
		}
	}
	for (i = 0; i < 100; i++) {
		read_file("/sys/block/vda/dev", dev, sizeof(dev));
		if (sscanf(dev, "%u:%u", &maj, &mnr) == 2) {
			*devt = (unsigned long)maj << 20 | mnr;
			return 0;
		}
		usleep(50000);
	}
	fail("/sys/block/vda/dev did not appear");
	return -ENODEV;
}

static void run_attack(const char *name)
{
	char res[300], status[32];
	unsigned long arg = 0, arg2 = 0;
	int st, r;

	if (strcmp(name, "UNSIGNED_MODULE") != 0 && (r = load_module("/lib/modules/secvma_lkdtm.ko"))) {
		say("SECVMA-ATK %s 0 setup:%d loading secvma_lkdtm failed: %s", name, r, strerror(-r));
		return;
	}
	if (!strcmp(name, "TEXT_POKE"))
		arg = ksym("aarch64_insn_patch_text_nosync");
	if (!strncmp(name, "DMA_", 4)) {
		const char *hyp = getenv("SECVMA_HYP_PA");

		if ((r = dma_disk(&arg))) {
			say("SECVMA-ATK %s 0 setup:%d no virtio disk: %s", name, r, detail);
			return;
		}
		arg2 = hyp ? strtoul(hyp, NULL, 16) : 0;
	}
	if (!strcmp(name, "EXEC_USERSPACE")) {
		uint32_t *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE | PROT_EXEC,
				   MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
		if (p == MAP_FAILED) {
			say("SECVMA-ATK %s 0 setup:-1 mmap failed", name);
			return;
		}
		p[0] = SHELLCODE0;
		p[1] = SHELLCODE1;
		__builtin___clear_cache((char *)p, (char *)p + 8);
		arg = (unsigned long)p;
	}
	pid_t pid = fork();
	if (pid == 0) {
		if (!strcmp(name, "UNSIGNED_MODULE")) {
			r = load_module("/lib/modules/secvma_unsigned.ko");
			_exit(r ? 100 + (-r & 0x7f) : 0);
		}
		char cmd[96];
		int fd = open("/sys/kernel/debug/secvma_lkdtm/trigger", O_WRONLY);
		if (fd < 0)
			_exit(90);
		int n = snprintf(cmd, sizeof(cmd), "%s %lx %lx", name, arg, arg2);
		_exit(write(fd, cmd, n) == n ? 0 : 100 + (errno & 0x7f));
	}
	waitpid(pid, &st, 0);
	if (WIFSIGNALED(st))
		snprintf(status, sizeof(status), "signal:%d", WTERMSIG(st));
	else
		snprintf(status, sizeof(status), "exited:%d", WEXITSTATUS(st));
	if (!strcmp(name, "UNSIGNED_MODULE")) {
		int live = module_live("secvma_unsigned");
		say("SECVMA-ATK %s %d %s secvma_unsigned %s in /proc/modules", name, live, status,
		    live ? "is Live" : "is not Live");
	} else {
		read_file("/sys/kernel/debug/secvma_lkdtm/result", res, sizeof(res));
		int effect = !strncmp(res, "effect=1", 8);
		say("SECVMA-ATK %s %d %s %s", name, effect, status, res);
	}
	/* the machine goes on: a fresh process, a pipe and a file still work */
	detail[0] = 0;
	pid = fork();
	if (pid == 0)
		_exit(wl_pipe() && wl_fileio() ? 0 : 1);
	waitpid(pid, &st, 0);
	say("SECVMA-ALIVE %d status %#x", WIFEXITED(st) && WEXITSTATUS(st) == 0, st);
}

int main(int argc, char **argv)
{
	if (argc == 3 && !strcmp(argv[1], "exit-with"))
		return atoi(argv[2]);
	if (getpid() != 1) {
		fprintf(stderr, "secvma helper: run as /init\n");
		return 2;
	}
	mount("proc", "/proc", "proc", 0, NULL);
	mount("sysfs", "/sys", "sysfs", 0, NULL);
	mount("debugfs", "/sys/kernel/debug", "debugfs", 0, NULL);
	mount("tmpfs", "/tmp", "tmpfs", 0, "size=16m");
	say("SECVMA-INIT: hello from userspace");
	const char *wl = getenv("SECVMA_WL");
	const char *atk = getenv("SECVMA_ATTACK");
	if (wl)
		run_workloads(wl);
	if (atk)
		run_attack(atk);
	say("SECVMA-DONE");
	sync();
	reboot(RB_POWER_OFF);
	for (;;)
		pause();
}
