/*
 * The HAL and main() of the Cortex-M3 build for QEMU's mps2-an385 board (AN385): CMSDK APB
 * UART0 at 0x40004000 for the link (receive interrupt into a ring buffer, so bytes that arrive
 * while the core computes are kept; polled transmit), CMSDK timer 0 at 0x40000000 as a free-running
 * 25 MHz clock, and a system reset through the SCB. Run it with
 *
 *   qemu-system-arm -M mps2-an385 -nographic -monitor none -serial pty -kernel fw.elf
 *
 * Boot configuration: the first 8 bytes of RAM (0x20000000) are read at boot; if the word at
 * 0x20000000 is FW_CONFIG_MAGIC, the word after it is `reset_after` (reboot after every N-th
 * STEP frame, a fault for recovery tests). QEMU sets them with
 *   -device loader,addr=0x20000000,data=0x<N as 8 hex digits>46574346,data-len=8
 * The boot counter lives in .noinit RAM, which a reset leaves alone.
 */
#include <stdint.h>

#include "fw_device.h"
#include "hal.h"

#define REG(addr) (*(volatile uint32_t *)(addr))

#define UART0 0x40004000u
#define UART_DATA REG(UART0 + 0x00)
#define UART_STATE REG(UART0 + 0x04)
#define UART_CTRL REG(UART0 + 0x08)
#define UART_INTCLEAR REG(UART0 + 0x0C)
#define UART_BAUDDIV REG(UART0 + 0x10)
#define UART_TX_FULL 0x1u
#define UART_RX_FULL 0x2u
#define UART_CTRL_TX_RX 0x3u
#define UART_CTRL_RX_INT 0x8u
#define UART_INT_RX 0x2u
#define NVIC_ISER0 REG(0xE000E100u)
#define UART0_RX_IRQ 0

/* Received bytes not yet taken by the firmware (a power of two). When it is full the receive
 * interrupt is masked until there is room; a real UART then overruns, QEMU's holds the byte. */
#ifndef HAL_RX_RING
#define HAL_RX_RING 8192u
#endif
static volatile uint8_t rx_ring[HAL_RX_RING];
static volatile uint32_t rx_put, rx_get;

#define TIMER0 0x40000000u
#define TIMER_CTRL REG(TIMER0 + 0x00)
#define TIMER_VALUE REG(TIMER0 + 0x04)
#define TIMER_RELOAD REG(TIMER0 + 0x08)

#define SCB_AIRCR REG(0xE000ED0Cu)
#define AIRCR_SYSRESETREQ 0x05FA0004u

#define PCLK_HZ 25000000u
#define BAUD 115200u
#define FW_CONFIG_MAGIC 0x46574346u /* "FCWF" little-endian */
#define BOOT_MAGIC 0x424F4F54u

/* Written by the debugger or QEMU's loader before the CPU starts; never by the firmware. */
__attribute__((section(".fwconfig"), used)) volatile uint32_t fw_boot_config[2];

__attribute__((section(".noinit"))) static uint32_t boot_magic;
__attribute__((section(".noinit"))) static uint32_t boot_count;

void UART0_RX_Handler(void) {
    UART_INTCLEAR = UART_INT_RX;
    while (UART_STATE & UART_RX_FULL) {
        if (rx_put - rx_get == HAL_RX_RING) {
            UART_CTRL = UART_CTRL_TX_RX; /* full: mask until hal_uart_read makes room */
            return;
        }
        rx_ring[rx_put % HAL_RX_RING] = (uint8_t)UART_DATA;
        rx_put++;
    }
}

size_t hal_uart_read(uint8_t *buf, size_t max) {
    size_t n = 0;
    while (n < max && rx_get != rx_put) {
        buf[n++] = rx_ring[rx_get % HAL_RX_RING];
        rx_get++;
    }
    if (n && !(UART_CTRL & UART_CTRL_RX_INT)) { /* room again */
        __asm__ volatile("cpsid i" ::: "memory");
        UART_CTRL = UART_CTRL_TX_RX | UART_CTRL_RX_INT;
        UART0_RX_Handler(); /* the byte that waited in the data register raises no new IRQ */
        __asm__ volatile("cpsie i" ::: "memory");
    }
    return n;
}

/* Sleep until an interrupt when nothing was received (interrupts masked around the check, so
 * a byte that arrives just before WFI still wakes it). */
static void wait_for_input(void) {
    __asm__ volatile("cpsid i" ::: "memory");
    if (rx_get == rx_put) {
        __asm__ volatile("wfi" ::: "memory");
    }
    __asm__ volatile("cpsie i" ::: "memory");
}

void hal_uart_write(const uint8_t *buf, size_t len) {
    size_t i;
    for (i = 0; i < len; i++) {
        while (UART_STATE & UART_TX_FULL) {
        }
        UART_DATA = buf[i];
    }
}

uint32_t hal_now(void) {
    return ~TIMER_VALUE; /* the timer counts down from 0xFFFFFFFF */
}

uint32_t hal_tick_hz(void) {
    return PCLK_HZ;
}

static void system_reset(void) {
    while (UART_STATE & UART_TX_FULL) { /* the last answer leaves first */
    }
    SCB_AIRCR = AIRCR_SYSRESETREQ;
    for (;;) {
    }
}

int main(void) {
    uint32_t reset_after = fw_boot_config[0] == FW_CONFIG_MAGIC ? fw_boot_config[1] : 0;
    if (boot_magic != BOOT_MAGIC) { /* power-on: RAM holds no counter yet */
        boot_magic = BOOT_MAGIC;
        boot_count = 0;
    }
    boot_count++;
    TIMER_RELOAD = 0xFFFFFFFFu;
    TIMER_VALUE = 0xFFFFFFFFu;
    TIMER_CTRL = 0x1u; /* enable, no interrupt */
    UART_BAUDDIV = PCLK_HZ / BAUD;
    UART_CTRL = UART_CTRL_TX_RX | UART_CTRL_RX_INT;
    NVIC_ISER0 = 1u << UART0_RX_IRQ;
    fw_device_boot(boot_count, reset_after);
    for (;;) {
        if (fw_device_poll()) {
            system_reset();
        }
        wait_for_input();
    }
}
