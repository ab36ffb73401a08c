/*
 * The platform layer: all the firmware needs from a board. Implemented by hal_posix.c (the host
 * build: a pty or TCP port) and hal_mps2.c (Cortex-M3 on QEMU's mps2-an385, CMSDK UART0).
 */
#ifndef FW_HAL_H
#define FW_HAL_H

#include <stddef.h>
#include <stdint.h>

/* Copy up to `max` received bytes into `buf` without waiting; returns how many. */
size_t hal_uart_read(uint8_t *buf, size_t max);

/* Queue `len` bytes for transmission (waits only while the transmitter is full). */
void hal_uart_write(const uint8_t *buf, size_t len);

/* A free-running tick counter (wraps), and its rate in ticks per second. */
uint32_t hal_now(void);
uint32_t hal_tick_hz(void);

#endif
