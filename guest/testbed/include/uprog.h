/* User programs of the testbed (one user image, entered with x0 = arg, x1 = program id). */
#ifndef UPROG_H
#define UPROG_H
#define UPROG_LIST(X)                                                       \
	X(UP_HACKBENCH, "hackbench")   /* arg: groups<<16 | fds<<8 | loops */ \
	X(UP_HB_SENDER, "hb_sender")                                       \
	X(UP_HB_RECEIVER, "hb_receiver")                                   \
	X(UP_KERNBENCH, "kernbench")   /* arg: workers<<16 | iterations */  \
	X(UP_KB_WORKER, "kb_worker")                                       \
	X(UP_EXIT, "exit")             /* exits with arg */                 \
	X(UP_READ, "read")             /* reads a u64 at VA arg: the EL0 fault probe */ \
	X(UP_WRITE, "write")           /* writes at VA arg */               \
	X(UP_EXEC, "exec")             /* jumps to VA arg */                \
	X(UP_HELLO, "hello")           /* prints, exits 0 */               \
	X(UP_SPIN, "spin")             /* spins arg ms without syscalls; 0 if it was preempted */
#define UP_ENUM(id, name) id,
enum { UPROG_LIST(UP_ENUM) UP_COUNT };
#undef UP_ENUM

/* syscall numbers: svc #0, x8 = number, x0..x5 = args, x0 = result */
#define SYS_EXIT    0
#define SYS_WRITE   1
#define SYS_READ    2
#define SYS_SPAWN   3   /* (program id, arg) -> pid, children inherit the fd table */
#define SYS_WAIT    4   /* (pid or -1, int *status) -> pid */
#define SYS_MMAP    5   /* (len) -> anonymous RW memory */
#define SYS_MUNMAP  6   /* (addr, len) */
#define SYS_PIPE    7   /* (int fds[2]) */
#define SYS_YIELD   8
#define SYS_CLOSE   9
#define SYS_GETPID  10

#define VDSO_CLOCK_OFF 0   /* u64 clock(void): CNTVCT */
#define VDSO_MAGIC_OFF 4   /* u64 magic(void): VDSO_MAGIC */
#define VDSO_MAGIC 0x7d50
#endif
