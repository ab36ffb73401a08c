/*
 * The LRF-Dyn integer core, ARITH_ID 1 (docs/arithmetic.md), bit-exact with the numpy IntCore:
 * int8 weights, int16 saturating state, decays as shifts, floor shifts, fire on >=,
 * subtractive reset. Portable C99: <stdint.h> and <string.h> only, no heap.
 */
#ifndef FW_CORE_H
#define FW_CORE_H

#include <stdint.h>

#include "fw_config.h"

#define FW_ARITH_ID 1
#define FW_COUPLING_SHIFT 8

/* Result of fw_core_load: 0 on success, else why the blob was refused. */
enum fw_core_error {
    FW_CORE_OK = 0,
    FW_CORE_BAD_PARAMS = 1, /* the blob does not parse or breaks the specification's ranges */
    FW_CORE_TOO_LARGE = 2   /* valid, but over this build's limits */
};

/* Parameters of one core, decoded from the blob; per head h and compartment j at h * k + j. */
struct fw_core {
    uint16_t heads, head_dim;
    uint8_t k;
    uint32_t n_tokens;
    uint32_t dim;            /* heads * head_dim */
    uint8_t shift[FW_MAX_HEADS * FW_MAX_K];
    int16_t lower[FW_MAX_HEADS * FW_MAX_K];
    int16_t upper[FW_MAX_HEADS * FW_MAX_K];
    int16_t charge[FW_MAX_HEADS * FW_MAX_K]; /* G << GS, at most 127 * 256 in magnitude */
    int8_t readout[FW_MAX_HEADS * FW_MAX_K];
    int16_t theta[FW_MAX_HEADS];
    int32_t fire_at[FW_MAX_HEADS];            /* C[h][0] * theta[h] */
    int16_t state[FW_MAX_STATE];              /* X[h][j][i] at (h * k + j) * head_dim + i */
};

/* Check `blob` (docs/arithmetic.md "Parameter blob") and, if it is valid, fits the limits and
 * one timestep takes at most `max_step_bytes` bytes of spikes (ceil(N*D/8)), replace the parameters of `core` and zero its state. A refused blob leaves `core` as it was.
 * `detail` (may be NULL) receives a short static text saying why. */
enum fw_core_error fw_core_load(struct fw_core *core, const uint8_t *blob, uint32_t len,
                                uint32_t max_step_bytes, const char **detail);

/* Bytes of the state: 2 * heads * k * head_dim. */
uint32_t fw_core_state_bytes(const struct fw_core *core);

/* All compartments to zero. */
void fw_core_reset(struct fw_core *core);

/* One timestep: `u` and `s` are ceil(N*D/8) bytes of spikes, bit j = n * D + c LSB first. */
void fw_core_step(struct fw_core *core, const uint8_t *u, uint8_t *s);

/* The state as little-endian int16 bytes (C order [H][k][d]): `len` bytes from `offset`. */
void fw_core_read_state(const struct fw_core *core, uint32_t offset, uint8_t *out, uint32_t len);

/* Replace the state from little-endian int16 bytes (fw_core_state_bytes of them). */
void fw_core_write_state(struct fw_core *core, const uint8_t *raw);

/* CRC-32 of the state bytes. */
uint32_t fw_core_state_crc(const struct fw_core *core);

#endif
