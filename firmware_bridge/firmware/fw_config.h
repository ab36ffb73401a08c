/*
 * Compile-time limits of the LRF-Dyn firmware and the memory they cost.
 *
 * Every buffer of the firmware is a static array sized from these limits: there is no heap.
 * Override any of them on the compiler command line (make LIMITS="-DFW_MTU=1024 ..."); the
 * defaults run the conformance shapes (N = 64 tokens, D = 256 channels: 2048 bytes a timestep).
 *
 *   FW_MAX_TOKENS  tokens N per timestep (advertised in CAPS)
 *   FW_MAX_DIM     channels D = heads * head_dim
 *   FW_MAX_HEADS   heads H
 *   FW_MAX_K       compartments k per channel
 *   FW_MTU         largest payload of a frame, both directions; one timestep, ceil(N*D/8)
 *                  bytes, must fit in FW_MTU - 6
 *   FW_WINDOW      frames in flight the host may keep; the answer cache holds 2 * FW_WINDOW
 *
 * RAM in bytes, F = FW_FRAME_MAX (an encoded frame of FW_MTU + 4 payload bytes, 2140 here):
 *
 *   answer cache       2 * FW_WINDOW * (F + 4)                   16 x 2144 = 34304
 *   receive buffer     F                                                     2140
 *   answer body        F - COBS overhead                                     2129
 *   NAK buffer         FW_SMALL_FRAME                                          96
 *   core: state        2 * FW_MAX_K * FW_MAX_DIM                             4096
 *   core: parameters   FW_MAX_HEADS * FW_MAX_K * 8 + FW_MAX_HEADS * 6        1136
 *   core: scratch rows 2 * 2 * FW_MAX_DIM + 2 * 4 * FW_MAX_DIM               3072
 *   state upload       2 * FW_MAX_K * FW_MAX_DIM                             4096
 *   parameter upload   FW_MAX_BLOB                                            816
 *   firmware total, measured (the rows and a few counters)          52044 (50.8 KiB)
 *   mps2 HAL: receive ring (HAL_RX_RING)                                     8192
 *
 * Flash: 8.4 KiB (8608 B) of code and tables for Cortex-M3 (-O2, newlib-nano's memcpy and
 * friends); `make firmware` prints `arm-none-eabi-size` of the ELF. The stack needs < 1 KiB.
 */
#ifndef FW_CONFIG_H
#define FW_CONFIG_H

#ifndef FW_MAX_TOKENS
#define FW_MAX_TOKENS 4096
#endif
#ifndef FW_MAX_DIM
#define FW_MAX_DIM 256
#endif
#ifndef FW_MAX_HEADS
#define FW_MAX_HEADS 16
#endif
#ifndef FW_MAX_K
#define FW_MAX_K 8
#endif
#ifndef FW_MTU
#define FW_MTU 2112
#endif
#ifndef FW_WINDOW
#define FW_WINDOW 8
#endif

#if FW_MTU < 64 || FW_MTU > 65535
#error "FW_MTU must lie in 64..65535"
#endif
#if FW_WINDOW < 1 || FW_WINDOW > 255
#error "FW_WINDOW must lie in 1..255"
#endif
#if FW_MAX_K < 1 || FW_MAX_K > 255
#error "FW_MAX_K must lie in 1..255"
#endif
#if FW_MAX_TOKENS > 65535 || FW_MAX_DIM > 65535
#error "CAPS carries FW_MAX_TOKENS and FW_MAX_DIM as 16-bit fields"
#endif

/* Derived sizes. */
#define FW_HEADER_SIZE 9
#define FW_CRC_SIZE 4
/* A STEP_RESULT may carry 4 bytes (the state CRC) more than the STEP that asked for it. */
#define FW_PAYLOAD_MAX (FW_MTU + 4)
#define FW_BODY_MAX (FW_HEADER_SIZE + FW_PAYLOAD_MAX + FW_CRC_SIZE)
/* COBS adds one byte per started 254-byte block; two delimiters. */
#define FW_FRAME_MAX (FW_BODY_MAX + (FW_BODY_MAX + 253) / 254 + 2)
#define FW_CACHE_SLOTS (2 * FW_WINDOW)
#define FW_MAX_STATE (FW_MAX_K * FW_MAX_DIM)
#define FW_MAX_BLOB (16 + 6 * FW_MAX_HEADS * FW_MAX_K + 2 * FW_MAX_HEADS)
#define FW_NAK_DETAIL_MAX 48
#define FW_SMALL_FRAME 96 /* a NAK with its detail, or CAPS with its extension */

#endif
