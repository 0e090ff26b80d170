/* String functions, a small vsnprintf, printk and panic. */
#include <stdarg.h>
#include "kernel.h"

void *memset(void *s, int c, size_t n)
{
	u8 *p = s;
	if (!((u64)p & 7) && !(n & 7)) {
		u64 v = (u8)c * 0x0101010101010101ULL;
		for (size_t i = 0; i < n; i += 8)
			*(u64 *)(p + i) = v;
		return s;
	}
	while (n--)
		*p++ = (u8)c;
	return s;
}

void *memcpy(void *d, const void *s, size_t n)
{
	u8 *dp = d;
	const u8 *sp = s;
	if (!(((u64)dp | (u64)sp) & 7)) {       /* words, then the tail (modules: odd sizes) */
		size_t i = 0;
		for (; i + 8 <= n; i += 8)
			*(u64 *)(dp + i) = *(const u64 *)(sp + i);
		for (; i < n; i++)
			dp[i] = sp[i];
		return d;
	}
	while (n--)
		*dp++ = *sp++;
	return d;
}

int memcmp(const void *a, const void *b, size_t n)
{
	const u8 *x = a, *y = b;
	for (; n; n--, x++, y++)
		if (*x != *y)
			return *x - *y;
	return 0;
}

size_t strlen(const char *s)
{
	size_t n = 0;
	while (s[n])
		n++;
	return n;
}

int strcmp(const char *a, const char *b)
{
	while (*a && *a == *b)
		a++, b++;
	return (u8)*a - (u8)*b;
}

int strncmp(const char *a, const char *b, size_t n)
{
	for (; n; n--, a++, b++) {
		if (*a != *b)
			return (u8)*a - (u8)*b;
		if (!*a)
			return 0;
	}
	return 0;
}

char *strncpy_z(char *d, const char *s, size_t n)
{
	size_t i = 0;
	for (; i + 1 < n && s[i]; i++)
		d[i] = s[i];
	if (n)
		d[i] = 0;
	return d;
}

struct out { char *buf; size_t n, pos; };

static void put(struct out *o, char c)
{
	if (o->buf) {
		if (o->pos + 1 < o->n)
			o->buf[o->pos] = c;
	} else {
		uart_putc(c);
	}
	o->pos++;
}

static void put_num(struct out *o, u64 v, int base, int width, char pad, int neg)
{
	char tmp[24];
	int i = 0;
	do {
		tmp[i++] = "0123456789abcdef"[v % base];
		v /= base;
	} while (v);
	if (neg)
		tmp[i++] = '-';
	while (i < width--)
		put(o, pad);
	while (i)
		put(o, tmp[--i]);
}

/* %d %u %x %lx %llx %p %s %c, with 0-padding and width ("%016llx"). */
static int vformat(struct out *o, const char *fmt, va_list ap)
{
	for (; *fmt; fmt++) {
		if (*fmt != '%') {
			put(o, *fmt);
			continue;
		}
		char pad = ' ';
		int width = 0, lng = 0;
		fmt++;
		if (*fmt == '0')
			pad = '0', fmt++;
		while (*fmt >= '0' && *fmt <= '9')
			width = width * 10 + (*fmt++ - '0');
		while (*fmt == 'l')
			lng++, fmt++;
		switch (*fmt) {
		case 'd': {
			s64 v = lng ? va_arg(ap, s64) : va_arg(ap, int);
			put_num(o, v < 0 ? -(u64)v : (u64)v, 10, width, pad, v < 0);
			break;
		}
		case 'u':
			put_num(o, lng ? va_arg(ap, u64) : va_arg(ap, unsigned), 10, width, pad, 0);
			break;
		case 'x':
			put_num(o, lng ? va_arg(ap, u64) : va_arg(ap, unsigned), 16, width, pad, 0);
			break;
		case 'p':
			put(o, '0'), put(o, 'x');
			put_num(o, va_arg(ap, u64), 16, 16, '0', 0);
			break;
		case 's': {
			const char *s = va_arg(ap, const char *);
			for (s = s ? s : "(null)"; *s; s++)
				put(o, *s);
			break;
		}
		case 'c':
			put(o, (char)va_arg(ap, int));
			break;
		default:
			put(o, *fmt);
		}
	}
	if (o->buf && o->n)
		o->buf[o->pos < o->n ? o->pos : o->n - 1] = 0;
	return (int)o->pos;
}

int snprintf(char *buf, size_t n, const char *fmt, ...)
{
	struct out o = { buf, n, 0 };
	va_list ap;
	va_start(ap, fmt);
	int r = vformat(&o, fmt, ap);
	va_end(ap);
	return r;
}

int printk(const char *fmt, ...)
{
	struct out o = { NULL, 0, 0 };
	va_list ap;
	va_start(ap, fmt);
	int r = vformat(&o, fmt, ap);
	va_end(ap);
	return r;
}
EXPORT_SYMBOL(printk);

__noreturn void panic(const char *fmt, ...)
{
	struct out o = { NULL, 0, 0 };
	va_list ap;
	local_irq_disable();
	printk("Kernel panic: ");
	va_start(ap, fmt);
	vformat(&o, fmt, ap);
	va_end(ap);
	printk("\n");
	psci_system_off();
}

u64 ticks_to_us(u64 t)
{
	return t * 1000000 / read_sysreg(cntfrq_el0);
}
