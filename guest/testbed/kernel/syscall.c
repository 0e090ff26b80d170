/* System calls (SVC from EL0) and pipes. */
#include "kernel.h"
#include "uprog.h"

#define PIPE_BUF_SIZE 4096
#define PIPE_ATOMIC 512   /* writes up to this size are never interleaved */

struct pipe { u64 head, tail; int readers, writers; u8 buf[PIPE_BUF_SIZE]; };
enum { F_CONSOLE = 1, F_PIPE_R, F_PIPE_W };
struct file { int type, refs; struct pipe *pipe; };

static struct file *file_new(int type, struct pipe *p)
{
	u64 pa = alloc_pages(1);   /* one page per file object: simple, and there are few */
	if (!pa)
		return NULL;
	struct file *f = __va(pa);
	f->type = type;
	f->refs = 1;
	f->pipe = p;
	if (p)
		(*(type == F_PIPE_R ? &p->readers : &p->writers))++;
	return f;
}

struct file *file_get(struct file *f)
{
	f->refs++;
	if (f->pipe)
		(*(f->type == F_PIPE_R ? &f->pipe->readers : &f->pipe->writers))++;
	return f;
}

void file_put(struct file *f)
{
	struct pipe *p = f->pipe;
	if (p) {
		(*(f->type == F_PIPE_R ? &p->readers : &p->writers))--;
		wake_up(p);
		if (!p->readers && !p->writers)
			free_pages(__pa(p), 2);
	}
	if (--f->refs == 0)
		free_pages(__pa(f), 1);
}

static int fd_install(struct task *t, struct file *f)
{
	for (int i = 3; i < NFD; i++)   /* 0-2 are the console */
		if (!t->fd[i]) {
			t->fd[i] = f;
			return i;
		}
	file_put(f);
	return -24;
}

/* pipe(): fds[0] read end, fds[1] write end, in the current task's table. */
int sys_pipe_kernel(int fds[2])
{
	u64 pa = alloc_pages(2);
	if (!pa)
		return -12;
	struct pipe *p = __va(pa);
	struct file *r = file_new(F_PIPE_R, p), *w = file_new(F_PIPE_W, p);
	fds[0] = fd_install(current, r);
	fds[1] = fd_install(current, w);
	return fds[0] < 0 || fds[1] < 0 ? -24 : 0;
}

static s64 pipe_write(struct pipe *p, const u8 *buf, u64 len)
{
	u64 done = 0;
	while (done < len) {
		if (!p->readers)
			return done ? (s64)done : -32;   /* EPIPE */
		u64 space = PIPE_BUF_SIZE - (p->head - p->tail);
		u64 want = len - done;
		if (space == 0 || (len <= PIPE_ATOMIC && space < len)) {
			sleep_on(p);
			continue;
		}
		u64 n = want < space ? want : space;
		for (u64 i = 0; i < n; i++)
			p->buf[(p->head + i) % PIPE_BUF_SIZE] = buf[done + i];
		p->head += n;
		done += n;
		wake_up(p);
	}
	return (s64)done;
}

static s64 pipe_read(struct pipe *p, u8 *buf, u64 len)
{
	while (p->head == p->tail) {
		if (!p->writers)
			return 0;
		sleep_on(p);
	}
	u64 n = p->head - p->tail;
	if (n > len)
		n = len;
	for (u64 i = 0; i < n; i++)
		buf[i] = p->buf[(p->tail + i) % PIPE_BUF_SIZE];
	p->tail += n;
	wake_up(p);
	return (s64)n;
}

static struct file *fd_file(int fd)
{
	return fd >= 0 && fd < NFD ? current->fd[fd] : NULL;
}

static s64 sys_write(int fd, u64 ubuf, u64 len)
{
	if (!user_ok(current->mm, ubuf, len, 0))
		return -14;
	if (fd == 1 || fd == 2) {
		for (u64 i = 0; i < len; i++)
			uart_putc(((const char *)ubuf)[i]);
		return (s64)len;
	}
	struct file *f = fd_file(fd);
	if (!f || f->type != F_PIPE_W)
		return -9;
	return pipe_write(f->pipe, (const u8 *)ubuf, len);
}

static s64 sys_read(int fd, u64 ubuf, u64 len)
{
	if (!user_ok(current->mm, ubuf, len, 1))
		return -14;
	struct file *f = fd_file(fd);
	if (!f || f->type != F_PIPE_R)
		return -9;
	return pipe_read(f->pipe, (u8 *)ubuf, len);
}

static const char *const names[] = {
#define UP_NAME(id, name) name,
	UPROG_LIST(UP_NAME)
#undef UP_NAME
};

void do_syscall(struct pt_regs *regs)
{
	u64 *x = regs->regs;
	s64 r;
	switch (x[8]) {
	case SYS_EXIT:
		do_exit((int)x[0]);
	case SYS_WRITE:
		r = sys_write((int)x[0], x[1], x[2]);
		break;
	case SYS_READ:
		r = sys_read((int)x[0], x[1], x[2]);
		break;
	case SYS_SPAWN:
		r = x[0] < UP_COUNT ? spawn_user(names[x[0]], x[1], current) : -22;
		break;
	case SYS_WAIT: {
		int st = 0;
		if (x[1] && !user_ok(current->mm, x[1], 4, 1))
			return (void)(x[0] = (u64)-14);
		r = wait_task((int)x[0], &st);
		if (r >= 0 && x[1])
			*(int *)x[1] = st;
		break;
	}
	case SYS_MMAP:
		r = (s64)mmap_anon(current->mm, x[0]);
		break;
	case SYS_MUNMAP:
		r = unmap_user(current->mm, x[0], ALIGN_UP(x[1], PAGE_SIZE));
		break;
	case SYS_PIPE: {
		int fds[2];
		if (!user_ok(current->mm, x[0], 8, 1))
			return (void)(x[0] = (u64)-14);
		r = sys_pipe_kernel(fds);
		((int *)x[0])[0] = fds[0];
		((int *)x[0])[1] = fds[1];
		break;
	}
	case SYS_YIELD:
		schedule();
		r = 0;
		break;
	case SYS_CLOSE: {
		struct file *f = fd_file((int)x[0]);
		if (f) {
			file_put(f);
			current->fd[x[0]] = NULL;
		}
		r = f ? 0 : -9;
		break;
	}
	case SYS_GETPID:
		r = current->pid;
		break;
	default:
		r = -38;
	}
	x[0] = (u64)r;
}
