/*
 * Compile-time limits of the LRF-Dyn firmware and the memory they cost.
 *
 * Every buffer of the firmware is a static array sized from these limits: there is no heap.
 * Override any of them on the compiler command line (-DFW_MTU=1024 ...); the defaults fit a
 * Cortex-M with 64 KiB of RAM and run the conformance shapes (N = 64 tokens, D = 256 channels).
 *
 *   FW_MAX_TOKENS  tokens N per timestep (advertised in CAPS; N only bounds a loop counter)
 *   FW_MAX_DIM     channels D = heads * head_dim
 *   FW_MAX_HEADS   heads H
 *   FW_MAX_K       compartments k per channel
 *   FW_MTU         largest payload of a frame, both directions (also bounds ceil(N*D/8) + 6)
 *   FW_WINDOW      frames in flight the host may keep; the answer cache holds 2 * FW_WINDOW
 *
 * RAM (bytes), with F = FW_FRAME_MAX (an encoded frame of FW_MTU + 4 payload bytes):
 *
 *   answer cache          2 * FW_WINDOW * (F + 4)       16 * 2136 = 34176 at the defaults
 *   receive buffer        F                                            2132
 *   NAK / CAPS buffer     FW_SMALL_FRAME                                 96
 *   state                 2 * FW_MAX_K * FW_MAX_DIM                    4096
 *   state upload          2 * FW_MAX_K * FW_MAX_DIM                    4096
 *   parameter upload      FW_MAX_BLOB                                   816
 *   parameters            H * k * 10 + H * 4                           1344
 *   total                                                       ~ 46.8 KiB
 *
 * Flash: the code and a 1 KiB CRC table (`arm-none-eabi-size` of the ELF: see README).
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
