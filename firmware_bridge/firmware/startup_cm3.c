/*
 * Cortex-M3 start-up for the mps2-an385 build: the vector table, and a reset handler that
 * copies .data from flash, zeroes .bss and calls main. Every exception but reset parks the CPU.
 */
#include <stdint.h>
#include <string.h>

extern uint32_t _estack, _sidata, _sdata, _edata, _sbss, _ebss;
int main(void);

void Reset_Handler(void);
void Default_Handler(void);
void UART0_RX_Handler(void); /* hal_mps2.c */

typedef void (*handler_t)(void);

/* Initial stack pointer, the 15 system exception handlers (reset first), then the external
 * interrupts the firmware uses (IRQ 0: UART0 receive on mps2-an385). */
struct vector_table {
    uint32_t *initial_sp;
    handler_t handlers[15 + 1];
};

__attribute__((section(".vectors"), used)) const struct vector_table vectors = {
    &_estack,
    {
        Reset_Handler,   /* reset */
        Default_Handler, /* NMI */
        Default_Handler, /* hard fault */
        Default_Handler, /* memory management fault */
        Default_Handler, /* bus fault */
        Default_Handler, /* usage fault */
        0, 0, 0, 0,      /* reserved */
        Default_Handler, /* SVCall */
        Default_Handler, /* debug monitor */
        0,               /* reserved */
        Default_Handler, /* PendSV */
        Default_Handler, /* SysTick */
        UART0_RX_Handler, /* IRQ 0 */
    },
};

void Reset_Handler(void) {
    memcpy(&_sdata, &_sidata, (size_t)((uint8_t *)&_edata - (uint8_t *)&_sdata));
    memset(&_sbss, 0, (size_t)((uint8_t *)&_ebss - (uint8_t *)&_sbss));
    main();
    for (;;) {
    }
}

void Default_Handler(void) {
    for (;;) {
    }
}
