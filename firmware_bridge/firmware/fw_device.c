/* The protocol state machine of the device: see fw_device.h and docs/protocol.md. */
#include "fw_device.h"

#include <string.h>

#include "fw_config.h"
#include "fw_core.h"
#include "fw_wire.h"
#include "hal.h"

#define PROTOCOL_VERSION 1
#define FLAG_RESPONSE 0x01
#define STEP_WANT_STATE_CRC 0x01
#define CAPS_SIZE 23
#define CAPS_EXT_SIZE 16

enum msg {
    MSG_HELLO = 0x01,
    MSG_LOAD_PARAMS = 0x02,
    MSG_LOAD_STATE = 0x03,
    MSG_COMMIT = 0x04,
    MSG_RESET_STATE = 0x05,
    MSG_STEP = 0x06,
    MSG_READ_STATE = 0x07,
    MSG_PING = 0x08,
    MSG_OK = 0x80,
    MSG_CAPS = 0x81,
    MSG_STEP_RESULT = 0x86,
    MSG_STATE_DATA = 0x87,
    MSG_PONG = 0x88,
    MSG_NAK = 0xFF
};

enum nak {
    NAK_NONE = 0,
    NAK_CORRUPT = 1,
    NAK_OUT_OF_ORDER = 2,
    NAK_NOT_SYNCED = 3,
    NAK_STALE = 4,
    NAK_BAD_MESSAGE = 5,
    NAK_UNKNOWN_TYPE = 6,
    NAK_NO_PARAMS = 7,
    NAK_BAD_PARAMS = 8,
    NAK_CRC_MISMATCH = 9,
    NAK_TOO_LARGE = 10,
    NAK_BAD_VERSION = 11,
    NAK_BAD_SHAPE = 12
};

enum target { TARGET_PARAMS = 0, TARGET_STATE = 1, TARGET_RESET = 2 };

/* One cached answer, encoded as it went out (delimiters included). */
struct slot {
    uint16_t seq;
    uint16_t len; /* 0: empty */
    uint8_t frame[FW_FRAME_MAX];
};

/* A staged upload (LOAD_PARAMS or LOAD_STATE chunks). */
struct upload {
    uint8_t *buf;
    uint32_t cap;
    uint32_t total;
    uint32_t filled;
    int active;
};

static struct fw_core core;
static int core_loaded;
static uint32_t model_hash;
static uint32_t boot_counter, reset_after, step_frames_since_boot;
static int synced;
static uint16_t expected, tx_seq;
static int nak_gap_pending; /* an OUT_OF_ORDER NAK went out for the current `expected` */
static uint16_t nak_gap_for;

static struct slot cache[FW_CACHE_SLOTS];
static unsigned cache_next;

static uint8_t rx[FW_FRAME_MAX]; /* COBS bytes of the frame being received */
static size_t rx_len;
static int rx_overflow, rx_in_sync;

static uint8_t tx_body[FW_BODY_MAX];      /* header | payload | CRC of the answer being built */
static uint8_t small_frame[FW_SMALL_FRAME]; /* an uncached NAK, encoded */

static uint8_t blob_buf[FW_MAX_BLOB];
static uint8_t state_buf[2 * FW_MAX_STATE];
static struct upload uploads[2];

static struct fw_stats stats;

/* ---- answers ------------------------------------------------------------------------------ */

/* Where the answer's payload goes: after the 9-byte header of tx_body. */
#define OUT (tx_body + FW_HEADER_SIZE)

/* Finish tx_body (header and CRC around `len` payload bytes) and COBS-encode it into `out`,
 * delimiters included; returns the encoded length. */
static size_t encode_answer(uint8_t type, uint16_t ack, size_t len, uint8_t *out) {
    size_t body = FW_HEADER_SIZE + len, n;
    tx_seq = (uint16_t)(tx_seq + 1);
    tx_body[0] = PROTOCOL_VERSION;
    tx_body[1] = FLAG_RESPONSE;
    fw_put16(tx_body + 2, tx_seq);
    fw_put16(tx_body + 4, ack);
    tx_body[6] = type;
    fw_put16(tx_body + 7, (uint32_t)len);
    fw_put32(tx_body + body, fw_crc32(0, tx_body, body));
    out[0] = 0;
    n = fw_cobs_encode(tx_body, body + FW_CRC_SIZE, out + 1);
    out[n + 1] = 0;
    return n + 2;
}

/* Build a NAK payload in OUT; returns its length. */
static size_t nak_payload(uint8_t reason, const char *detail) {
    size_t n = detail ? strlen(detail) : 0;
    if (n > FW_NAK_DETAIL_MAX) {
        n = FW_NAK_DETAIL_MAX;
    }
    OUT[0] = reason;
    fw_put32(OUT + 1, boot_counter);
    fw_put16(OUT + 5, expected);
    if (n) {
        memcpy(OUT + 7, detail, n);
    }
    stats.naks_sent++;
    return 7 + n;
}

/* Send a NAK that is not cached (corrupt, unsynced, stale, out of order, bad version). */
static void send_nak(uint8_t reason, uint16_t ack, const char *detail) {
    size_t n = encode_answer(MSG_NAK, ack, nak_payload(reason, detail), small_frame);
    hal_uart_write(small_frame, n);
}

/* Encode the answer into the oldest cache slot under `seq`, and send it. */
static void send_cached(uint8_t type, uint16_t seq, size_t len) {
    struct slot *s = &cache[cache_next];
    cache_next = (cache_next + 1) % FW_CACHE_SLOTS;
    s->len = (uint16_t)encode_answer(type, seq, len, s->frame);
    s->seq = seq;
    hal_uart_write(s->frame, s->len);
}

static const struct slot *cache_find(uint16_t seq) {
    unsigned i;
    for (i = 0; i < FW_CACHE_SLOTS; i++) {
        if (cache[i].len && cache[i].seq == seq) {
            return &cache[i];
        }
    }
    return 0;
}

static void cache_clear(void) {
    unsigned i;
    for (i = 0; i < FW_CACHE_SLOTS; i++) {
        cache[i].len = 0;
    }
    cache_next = 0;
}

/* ---- requests ----------------------------------------------------------------------------- */

/* A handler's outcome: the answer type and payload length in OUT, or a NAK reason and detail. */
struct result {
    uint8_t type;
    uint8_t nak;
    size_t len;
    const char *detail;
};

static struct result ok(uint8_t target, uint32_t value) {
    struct result r = {MSG_OK, NAK_NONE, 5, 0};
    OUT[0] = target;
    fw_put32(OUT + 1, value);
    return r;
}

static struct result refuse(uint8_t reason, const char *detail) {
    struct result r = {MSG_NAK, NAK_NONE, 0, 0};
    r.nak = reason;
    r.detail = detail;
    return r;
}

static size_t caps_payload(void) {
    uint8_t *p = OUT;
    p[0] = PROTOCOL_VERSION;
    fw_put16(p + 1, FW_MTU);
    p[3] = FW_WINDOW;
    fw_put16(p + 4, FW_MAX_TOKENS);
    fw_put16(p + 6, FW_MAX_DIM);
    fw_put16(p + 8, FW_ARITH_ID);
    fw_put32(p + 10, model_hash);
    fw_put32(p + 14, boot_counter);
    p[18] = core_loaded ? 1 : 0;
    fw_put16(p + 19, core_loaded ? core.n_tokens : 0);
    fw_put16(p + 21, core_loaded ? core.dim : 0);
    fw_put32(p + 23, stats.steps_applied);
    fw_put32(p + 27, (uint32_t)stats.core_ticks);
    fw_put32(p + 31, (uint32_t)(stats.core_ticks >> 32));
    fw_put32(p + 35, hal_tick_hz());
    return CAPS_SIZE + CAPS_EXT_SIZE;
}

static struct result load_chunk(unsigned target, const uint8_t *p, size_t len) {
    struct upload *up = &uploads[target];
    uint32_t offset, total, n;
    if (len < 8) {
        return refuse(NAK_BAD_MESSAGE, "chunk needs offset, total");
    }
    offset = fw_get32(p);
    total = fw_get32(p + 4);
    n = (uint32_t)(len - 8);
    if (target == TARGET_STATE && !core_loaded) {
        return refuse(NAK_NO_PARAMS, "no parameters committed since boot");
    }
    if (total > up->cap) {
        return refuse(NAK_TOO_LARGE, "blob over the device's memory");
    }
    if (offset == 0) {
        up->active = 1;
        up->total = total;
        up->filled = 0;
    }
    if (!up->active || up->total != total || offset != up->filled) {
        return refuse(NAK_BAD_MESSAGE, "chunk out of sequence");
    }
    if (n > total - offset) {
        return refuse(NAK_BAD_MESSAGE, "chunk overruns total");
    }
    memcpy(up->buf + offset, p + 8, n);
    up->filled = offset + n;
    return ok((uint8_t)target, up->filled);
}

static struct result commit(const uint8_t *p, size_t len) {
    struct upload *up;
    unsigned target;
    uint32_t crc;
    if (len != 5) {
        return refuse(NAK_BAD_MESSAGE, "COMMIT needs target, crc32");
    }
    target = p[0];
    crc = fw_get32(p + 1);
    if (target != TARGET_PARAMS && target != TARGET_STATE) {
        return refuse(NAK_BAD_MESSAGE, "COMMIT target");
    }
    up = &uploads[target];
    if (!up->active || up->filled != up->total) {
        return refuse(NAK_CRC_MISMATCH, "blob incomplete");
    }
    if (fw_crc32(0, up->buf, up->total) != crc) {
        return refuse(NAK_CRC_MISMATCH, "blob crc differs");
    }
    up->active = 0;
    if (target == TARGET_PARAMS) {
        const char *why = 0;
        enum fw_core_error e;
        e = fw_core_load(&core, up->buf, up->total, FW_MTU - 6, &why);
        if (e == FW_CORE_BAD_PARAMS) {
            return refuse(NAK_BAD_PARAMS, why);
        }
        if (e == FW_CORE_TOO_LARGE) {
            return refuse(NAK_TOO_LARGE, why);
        }
        core_loaded = 1;
        model_hash = crc;
        return ok(TARGET_PARAMS, crc);
    }
    if (!core_loaded) {
        return refuse(NAK_NO_PARAMS, "no parameters committed since boot");
    }
    if (up->total != fw_core_state_bytes(&core)) {
        return refuse(NAK_BAD_MESSAGE, "state size differs from the model's");
    }
    fw_core_write_state(&core, up->buf);
    return ok(TARGET_STATE, fw_core_state_crc(&core));
}

static struct result step(const uint8_t *p, size_t len) {
    struct result r = {MSG_STEP_RESULT, NAK_NONE, 0, 0};
    uint32_t n, flags, bps, i, t0;
    uint8_t *out;
    if (!core_loaded) {
        return refuse(NAK_NO_PARAMS, "no parameters committed since boot");
    }
    if (len < 2) {
        return refuse(NAK_BAD_MESSAGE, "STEP needs n_steps, flags");
    }
    n = p[0];
    flags = p[1] & STEP_WANT_STATE_CRC;
    bps = (core.n_tokens * core.dim + 7) / 8;
    if (len != 2 + n * bps) {
        return refuse(NAK_BAD_SHAPE, "spike bytes differ from n_steps x bytes per step");
    }
    OUT[0] = (uint8_t)n;
    OUT[1] = (uint8_t)flags;
    out = OUT + 2 + (flags ? 4 : 0);
    t0 = hal_now();
    for (i = 0; i < n; i++) {
        fw_core_step(&core, p + 2 + i * bps, out + i * bps);
    }
    stats.core_ticks += (uint32_t)(hal_now() - t0);
    if (flags) {
        fw_put32(OUT + 2, fw_core_state_crc(&core));
    }
    stats.steps_applied += n;
    stats.step_frames++;
    r.len = (size_t)(out - OUT) + n * bps;
    return r;
}

static struct result read_state(const uint8_t *p, size_t len) {
    struct result r = {MSG_STATE_DATA, NAK_NONE, 0, 0};
    uint32_t offset, max_len, total, n;
    if (len != 6) {
        return refuse(NAK_BAD_MESSAGE, "READ_STATE needs offset, max_len");
    }
    if (!core_loaded) {
        return refuse(NAK_NO_PARAMS, "no parameters committed since boot");
    }
    offset = fw_get32(p);
    max_len = fw_get16(p + 4);
    total = fw_core_state_bytes(&core);
    if (offset > total) {
        return refuse(NAK_BAD_MESSAGE, "offset beyond the state");
    }
    n = max_len < FW_MTU - 12 ? max_len : FW_MTU - 12;
    if (n > total - offset) {
        n = total - offset;
    }
    fw_put32(OUT, total);
    fw_put32(OUT + 4, offset);
    fw_put32(OUT + 8, fw_core_state_crc(&core));
    fw_core_read_state(&core, offset, OUT + 12, n);
    r.len = 12 + n;
    return r;
}

static struct result dispatch(uint8_t type, const uint8_t *p, size_t len) {
    struct result r = {0, NAK_NONE, 0, 0};
    switch (type) {
    case MSG_LOAD_PARAMS:
        return load_chunk(TARGET_PARAMS, p, len);
    case MSG_LOAD_STATE:
        return load_chunk(TARGET_STATE, p, len);
    case MSG_COMMIT:
        return commit(p, len);
    case MSG_RESET_STATE:
        if (!core_loaded) {
            return refuse(NAK_NO_PARAMS, "no parameters committed since boot");
        }
        fw_core_reset(&core);
        return ok(TARGET_RESET, fw_core_state_crc(&core));
    case MSG_STEP:
        return step(p, len);
    case MSG_READ_STATE:
        return read_state(p, len);
    case MSG_PING:
        memmove(OUT, p, len);
        r.type = MSG_PONG;
        r.len = len;
        return r;
    default:
        return refuse(NAK_UNKNOWN_TYPE, "unknown message type");
    }
}

static void hello(uint16_t seq, const uint8_t *p, size_t len) {
    if (len < 2) {
        send_nak(NAK_BAD_MESSAGE, seq, "HELLO needs version_min, version_max");
        return;
    }
    if (!(p[0] <= PROTOCOL_VERSION && PROTOCOL_VERSION <= p[1])) {
        send_nak(NAK_BAD_VERSION, seq, "device speaks version 1");
        return;
    }
    synced = 1;
    expected = (uint16_t)(seq + 1);
    cache_clear();
    nak_gap_pending = 0;
    send_cached(MSG_CAPS, seq, caps_payload());
}

/* Answer one decoded frame body; returns 1 when the device must reboot after the answer. */
static int handle(uint8_t *body, size_t len) {
    uint16_t seq;
    uint8_t type;
    size_t plen;
    const uint8_t *payload;
    int16_t behind;
    struct result r;
    if (len < FW_HEADER_SIZE + FW_CRC_SIZE ||
        fw_crc32(0, body, len - FW_CRC_SIZE) != fw_get32(body + len - FW_CRC_SIZE) ||
        fw_get16(body + 7) != len - FW_HEADER_SIZE - FW_CRC_SIZE) {
        stats.corrupt_in++;
        send_nak(NAK_CORRUPT, (uint16_t)(expected - 1), "corrupt frame");
        return 0;
    }
    stats.frames_in++;
    if (body[1] & FLAG_RESPONSE) {
        return 0; /* our own frames echoed back */
    }
    seq = (uint16_t)fw_get16(body + 2);
    type = body[6];
    plen = len - FW_HEADER_SIZE - FW_CRC_SIZE;
    payload = body + FW_HEADER_SIZE;
    if (body[0] != PROTOCOL_VERSION) {
        send_nak(NAK_BAD_VERSION, seq, "frame version");
        return 0;
    }
    if (type == MSG_HELLO) {
        hello(seq, payload, plen);
        return 0;
    }
    {
        uint16_t dd = (uint16_t)(seq - expected);
        behind = (int16_t)(dd >= 0x8000u ? (int32_t)dd - 0x10000 : (int32_t)dd);
    }
    if (synced && behind < 0) {
        const struct slot *s = cache_find(seq);
        if (s) {
            stats.duplicates++;
            hal_uart_write(s->frame, s->len); /* answered before: never applied twice */
            return 0;
        }
    }
    if (!synced) {
        send_nak(NAK_NOT_SYNCED, seq, "no HELLO since boot");
        return 0;
    }
    if (behind < 0) {
        send_nak(NAK_STALE, seq, "older than the answer cache");
        return 0;
    }
    if (behind > 0) {
        stats.out_of_order++;
        if (nak_gap_pending && nak_gap_for == expected) {
            return 0; /* one NAK per gap; the host's timer covers the rest */
        }
        nak_gap_pending = 1;
        nak_gap_for = expected;
        send_nak(NAK_OUT_OF_ORDER, seq, "a frame is missing");
        return 0;
    }
    expected = (uint16_t)(expected + 1);
    nak_gap_pending = 0;
    if (plen > FW_MTU) {
        r = refuse(NAK_TOO_LARGE, "payload over the MTU");
    } else {
        r = dispatch(type, payload, plen);
    }
    if (r.nak != NAK_NONE) {
        send_cached(MSG_NAK, seq, nak_payload(r.nak, r.detail));
        return 0;
    }
    send_cached(r.type, seq, r.len);
    if (type == MSG_STEP) {
        step_frames_since_boot++;
        return reset_after && step_frames_since_boot >= reset_after;
    }
    return 0;
}

/* ---- the byte interface ------------------------------------------------------------------- */

void fw_device_boot(uint32_t boot, uint32_t reset_after_steps) {
    boot_counter = boot;
    reset_after = reset_after_steps;
    step_frames_since_boot = 0;
    synced = 0;
    expected = 0;
    tx_seq = 0;
    nak_gap_pending = 0;
    core_loaded = 0;
    model_hash = 0;
    cache_clear();
    rx_len = 0;
    rx_overflow = 0;
    rx_in_sync = 0; /* bytes before the first delimiter belong to a frame we missed */
    uploads[TARGET_PARAMS].buf = blob_buf;
    uploads[TARGET_PARAMS].cap = sizeof blob_buf;
    uploads[TARGET_PARAMS].active = 0;
    uploads[TARGET_STATE].buf = state_buf;
    uploads[TARGET_STATE].cap = sizeof state_buf;
    uploads[TARGET_STATE].active = 0;
}

int fw_device_poll(void) {
    uint8_t buf[256];
    size_t n, i;
    while ((n = hal_uart_read(buf, sizeof buf)) > 0) {
        for (i = 0; i < n; i++) {
            uint8_t b = buf[i];
            if (b != 0) {
                if (rx_len < sizeof rx) {
                    rx[rx_len++] = b;
                } else {
                    rx_overflow = 1;
                }
                continue;
            }
            if (rx_in_sync && (rx_len || rx_overflow)) {
                long body = rx_overflow ? -1 : fw_cobs_decode(rx, rx_len);
                int reboot;
                if (body < 0) {
                    stats.corrupt_in++;
                    send_nak(NAK_CORRUPT, (uint16_t)(expected - 1), "corrupt frame");
                    reboot = 0;
                } else {
                    reboot = handle(rx, (size_t)body);
                }
                if (reboot) {
                    return 1; /* the rest arrived while the device was rebooting */
                }
            }
            rx_in_sync = 1;
            rx_len = 0;
            rx_overflow = 0;
        }
    }
    return 0;
}

const struct fw_stats *fw_device_stats(void) {
    return &stats;
}
