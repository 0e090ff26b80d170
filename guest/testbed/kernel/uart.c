/* PL011 console: polled transmit only. Before the MMU is on the PA is used directly. */
#include "kernel.h"

#define UARTDR 0x00
#define UARTFR 0x18
#define FR_TXFF (1 << 5)

static volatile u32 *uart = (volatile u32 *)UART_PA;

void uart_set_base(u64 va) { uart = (volatile u32 *)va; }

void uart_putc(char c)
{
	if (c == '\n')
		uart_putc('\r');
	while (uart[UARTFR / 4] & FR_TXFF)
		;
	uart[UARTDR / 4] = (u32)(u8)c;
}
