/*
 * The device side of the LRF-Dyn protocol (docs/protocol.md): framing, sequence numbers, the
 * answer cache, and the messages HELLO/CAPS, LOAD_PARAMS, LOAD_STATE, COMMIT, RESET_STATE,
 * STEP/STEP_RESULT, READ_STATE/STATE_DATA, PING/PONG and NAK around one integer core.
 *
 * CAPS carries, after its 23 bytes, an extension the host may ignore:
 *   steps_applied:u32  core_ticks_lo:u32  core_ticks_hi:u32  tick_hz:u32
 * (timesteps applied since boot, and the time spent in the core's arithmetic in hal_now ticks).
 */
#ifndef FW_DEVICE_H
#define FW_DEVICE_H

#include <stdint.h>

struct fw_stats {
    uint32_t frames_in;
    uint32_t corrupt_in;
    uint32_t duplicates;
    uint32_t out_of_order;
    uint32_t steps_applied;
    uint32_t step_frames;
    uint32_t naks_sent;
    uint64_t core_ticks;
};

/* Power-on: unsynced, no parameters, empty cache. `boot_counter` is the platform's (it must
 * change at every boot); with `reset_after` > 0 the device asks for a reboot after every
 * reset_after-th STEP frame it applies since boot (a fault for recovery tests). */
void fw_device_boot(uint32_t boot_counter, uint32_t reset_after);

/* Read what the UART holds and answer every complete frame. Returns 1 when the device must
 * reboot now (its last answer has been written), else 0. */
int fw_device_poll(void);

const struct fw_stats *fw_device_stats(void);

#endif
