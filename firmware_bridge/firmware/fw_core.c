/* The LRF-Dyn integer core (ARITH_ID 1): see fw_core.h and docs/arithmetic.md. */
#include "fw_core.h"

#include <string.h>

#include "fw_wire.h"

#define BLOB_HEADER 16

/* floor(a / 2^s) for any sign (C leaves >> of a negative value implementation-defined). */
static inline int32_t asr(int32_t a, unsigned s) {
    return a >= 0 ? (a >> s) : ~((~a) >> s);
}

/* Two's complement readings of raw bytes (a plain cast is implementation-defined in C99). */
static inline int32_t s8(uint32_t v) {
    return v >= 0x80u ? (int32_t)v - 0x100 : (int32_t)v;
}
static inline int32_t s16(uint32_t v) {
    return v >= 0x8000u ? (int32_t)v - 0x10000 : (int32_t)v;
}

static inline int32_t sat16(int32_t a) {
    return a > 32767 ? 32767 : (a < -32768 ? -32768 : a);
}

static enum fw_core_error refuse(const char **detail, const char *why, enum fw_core_error e) {
    if (detail) {
        *detail = why;
    }
    return e;
}

enum fw_core_error fw_core_load(struct fw_core *core, const uint8_t *blob, uint32_t len,
                                uint32_t max_step_bytes, const char **detail) {
    uint32_t heads, head_dim, k, n_tokens, hk, h, j;
    const uint8_t *S, *L, *R, *G, *GS, *C, *TH;
    if (len < BLOB_HEADER) {
        return refuse(detail, "parameter blob too short", FW_CORE_BAD_PARAMS);
    }
    if (memcmp(blob, "LRFD", 4) != 0) {
        return refuse(detail, "parameter blob: bad magic", FW_CORE_BAD_PARAMS);
    }
    if (blob[4] != 1) {
        return refuse(detail, "parameter blob: version is not 1", FW_CORE_BAD_PARAMS);
    }
    if (fw_get16(blob + 5) != FW_ARITH_ID) {
        return refuse(detail, "parameter blob: arithmetic ID is not 1", FW_CORE_BAD_PARAMS);
    }
    heads = fw_get16(blob + 7);
    head_dim = fw_get16(blob + 9);
    k = blob[11];
    n_tokens = fw_get32(blob + 12);
    if (heads < 1 || k < 1) {
        return refuse(detail, "parameter blob: heads and k must be >= 1", FW_CORE_BAD_PARAMS);
    }
    hk = heads * k;
    if (len != BLOB_HEADER + 6 * hk + 2 * heads) {
        return refuse(detail, "parameter blob: size does not match heads, k",
                      FW_CORE_BAD_PARAMS);
    }
    if (head_dim < 1 || n_tokens < 1) {
        return refuse(detail, "head_dim and n_tokens must be >= 1", FW_CORE_BAD_PARAMS);
    }
    S = blob + BLOB_HEADER;
    L = S + hk;
    R = L + hk;
    G = R + hk;
    GS = G + hk;
    C = GS + hk;
    TH = C + hk;
    for (h = 0; h < heads; h++) {
        for (j = 0; j < k; j++) {
            uint32_t x = h * k + j;
            if (S[x] < 1 || S[x] > 15) {
                return refuse(detail, "decay_shift outside 1..15", FW_CORE_BAD_PARAMS);
            }
            if (GS[x] > 8) {
                return refuse(detail, "gamma_shift above 8", FW_CORE_BAD_PARAMS);
            }
        }
        if (L[h * k] != 0) {
            return refuse(detail, "lower[:, 0] must be 0", FW_CORE_BAD_PARAMS);
        }
        if (R[h * k + k - 1] != 0) {
            return refuse(detail, "upper[:, k-1] must be 0", FW_CORE_BAD_PARAMS);
        }
        if (s8(C[h * k]) < 1) {
            return refuse(detail, "readout[:, 0] must be >= 1", FW_CORE_BAD_PARAMS);
        }
        if (s16(fw_get16(TH + 2 * h)) < 1) {
            return refuse(detail, "theta must be >= 1", FW_CORE_BAD_PARAMS);
        }
    }
    if (n_tokens > FW_MAX_TOKENS || heads * head_dim > FW_MAX_DIM || heads > FW_MAX_HEADS ||
        k > FW_MAX_K) {
        return refuse(detail, "N, D, heads or k over the device's limits", FW_CORE_TOO_LARGE);
    }
    if ((n_tokens * heads * head_dim + 7) / 8 > max_step_bytes) {
        return refuse(detail, "one timestep does not fit the MTU", FW_CORE_TOO_LARGE);
    }
    core->heads = (uint16_t)heads;
    core->head_dim = (uint16_t)head_dim;
    core->k = (uint8_t)k;
    core->n_tokens = n_tokens;
    core->dim = heads * head_dim;
    for (j = 0; j < hk; j++) {
        int32_t g = s8(G[j]);
        core->shift[j] = S[j];
        core->lower[j] = (int16_t)s8(L[j]);
        core->upper[j] = (int16_t)s8(R[j]);
        core->charge[j] = (int16_t)(g * (int32_t)(1u << GS[j]));
        core->readout[j] = (int8_t)s8(C[j]);
    }
    for (h = 0; h < heads; h++) {
        core->theta[h] = (int16_t)s16(fw_get16(TH + 2 * h));
        core->fire_at[h] = (int32_t)core->readout[h * k] * core->theta[h];
    }
    fw_core_reset(core);
    return FW_CORE_OK;
}

uint32_t fw_core_state_bytes(const struct fw_core *core) {
    return 2u * core->k * core->dim;
}

void fw_core_reset(struct fw_core *core) {
    memset(core->state, 0, sizeof core->state);
}

/* Scratch rows of one head: the old values of the previous compartments, the charge masks of
 * the input bits, and the soma sums. */
static int16_t old_rows[2][FW_MAX_DIM];
static int32_t charge_on[FW_MAX_DIM];
static int32_t soma[FW_MAX_DIM];

/* One compartment row of a head: new[i] from old row[i], the previous row's old values
 * `below` and the next row `above` (not yet updated); the soma sums gain readout * new.
 * Inlined three times, so that the end rows skip their missing coupling. */
static inline void update_row(int16_t *row, const int16_t *below, const int16_t *above,
                              int16_t *save, uint32_t d, unsigned shift, int32_t lower,
                              int32_t upper, int32_t charge, int32_t readout) {
    uint32_t i;
    for (i = 0; i < d; i++) {
        const int32_t o = row[i];
        int32_t acc = o - asr(o, shift);
        if (below) {
            acc += asr(lower * below[i], FW_COUPLING_SHIFT);
        }
        if (above) {
            acc += asr(upper * above[i], FW_COUPLING_SHIFT);
        }
        acc = sat16(acc + (charge & charge_on[i]));
        save[i] = (int16_t)o;
        row[i] = (int16_t)acc;
        soma[i] += readout * acc;
    }
}

/* Row by row: for a head, compartment j of all its channels at once, so that the compartment's
 * weights stay in registers; channels are independent, so the order is free (fw_core.h). */
void fw_core_step(struct fw_core *core, const uint8_t *u, uint8_t *s) {
    const uint32_t k = core->k, d = core->head_dim, dim = core->dim;
    const uint32_t nbytes = (core->n_tokens * dim + 7) / 8;
    uint32_t n, h, i, j;
    memset(s, 0, nbytes);
    for (n = 0; n < core->n_tokens; n++) {
        for (h = 0; h < core->heads; h++) {
            const uint32_t bit0 = n * dim + h * d;
            int16_t *x = core->state + h * k * d;
            const int16_t *below = 0;
            for (i = 0; i < d; i++) {
                const uint32_t b = bit0 + i;
                charge_on[i] = -(int32_t)((u[b >> 3] >> (b & 7)) & 1); /* all ones or 0 */
                soma[i] = 0;
            }
            for (j = 0; j < k; j++) {
                const uint32_t p = h * k + j;
                int16_t *row = x + j * d;
                int16_t *save = old_rows[j & 1];
                const unsigned sh = core->shift[p];
                const int32_t lo = core->lower[p], up = core->upper[p];
                const int32_t ch = core->charge[p], rd = core->readout[p];
                if (j == 0 && k == 1) {
                    update_row(row, 0, 0, save, d, sh, 0, 0, ch, rd);
                } else if (j == 0) {
                    update_row(row, 0, row + d, save, d, sh, 0, up, ch, rd);
                } else if (j + 1 == k) {
                    update_row(row, below, 0, save, d, sh, lo, 0, ch, rd);
                } else {
                    update_row(row, below, row + d, save, d, sh, lo, up, ch, rd);
                }
                below = save;
            }
            for (i = 0; i < d; i++) {
                if (soma[i] >= core->fire_at[h]) {
                    const uint32_t b = bit0 + i;
                    x[i] = (int16_t)sat16(x[i] - core->theta[h]);
                    s[b >> 3] |= (uint8_t)(1u << (b & 7));
                }
            }
        }
    }
}

void fw_core_read_state(const struct fw_core *core, uint32_t offset, uint8_t *out, uint32_t len) {
    uint32_t b;
    for (b = 0; b < len; b++) {
        uint32_t pos = offset + b;
        uint16_t v = (uint16_t)core->state[pos >> 1];
        out[b] = (uint8_t)((pos & 1) ? (v >> 8) : v);
    }
}

void fw_core_write_state(struct fw_core *core, const uint8_t *raw) {
    uint32_t i, n = fw_core_state_bytes(core) / 2;
    for (i = 0; i < n; i++) {
        core->state[i] = (int16_t)s16(fw_get16(raw + 2 * i));
    }
}

uint32_t fw_core_state_crc(const struct fw_core *core) {
    uint8_t buf[64];
    uint32_t crc = 0, off = 0, total = fw_core_state_bytes(core);
    while (off < total) {
        uint32_t n = total - off < sizeof buf ? total - off : (uint32_t)sizeof buf;
        fw_core_read_state(core, off, buf, n);
        crc = fw_crc32(crc, buf, n);
        off += n;
    }
    return crc;
}
