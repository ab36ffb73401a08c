/*
 * Byte-level pieces of the wire protocol (docs/protocol.md): CRC-32 (IEEE 802.3, as zlib) and
 * COBS (Consistent Overhead Byte Stuffing). Portable C99, no heap.
 */
#ifndef FW_WIRE_H
#define FW_WIRE_H

#include <stddef.h>
#include <stdint.h>

/* Continue a CRC-32: start with crc = 0 (as zlib.crc32(data, 0)). */
uint32_t fw_crc32(uint32_t crc, const uint8_t *data, size_t len);

/* COBS-encode `len` bytes into `out` (room for len + len / 254 + 1 bytes); returns its length. */
size_t fw_cobs_encode(const uint8_t *in, size_t len, uint8_t *out);

/* COBS-decode in place; returns the decoded length, or -1 for an invalid encoding. */
long fw_cobs_decode(uint8_t *buf, size_t len);

static inline void fw_put16(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}
static inline void fw_put32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}
static inline uint32_t fw_get16(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8);
}
static inline uint32_t fw_get32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
           ((uint32_t)p[3] << 24);
}

#endif
