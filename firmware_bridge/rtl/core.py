"""The LRF-Dyn integer core (ARITH_ID 1) as synthesizable Amaranth RTL.

One compartment update per clock. The core reads the bit-packed `u` words of a STEP payload
(token-major, channel-minor, least significant bit first, each timestep starting on a fresh
word: exactly the rows `np.packbits(u.reshape(steps, N * D), axis=1, bitorder="little")` that
the wire protocol carries) and writes the spikes `s` in the same packing, bit-exact with
`spikestream.firmware_bridge.intcore.IntCore`. A channel of one token takes k clocks, so a
timestep takes N * D * k clocks (more when D * k is below the pipeline depth:
`cycles_per_step`).

Pipeline, one item per (token, channel, compartment j), in the order IntCore defines:

    0  issue: state and parameter reads of (c, j)
    1  old[j] leaves the state memory
    2  window: old[j] registered
    3  old[j-1], old[j], old[j+1] in registers: decay, both couplings, charge
    4  sum, sat16 -> new[j]
    5  C[j] * new[j]; theta read
    6  soma sum y += C[j] * new[j]; C[0] * theta
    7  write new[j] (j >= 1); on the last compartment: fire and reset of the soma
    8  write the soma (in the slot the next channel's j = 0 leaves free); spike to the packer

The state is one memory of D * k int16 words (address c * k + j); the parameters are written
through a byte port whose addresses are the offsets of the parameter blob's body
(`CoreParams.to_blob()[16:]`), so a front end can stream LOAD_PARAMS into it unchanged.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

STATE_MIN, STATE_MAX = -32768, 32767
#: Right shift of the coupling products (docs/arithmetic.md, CSH).
COUPLING_SHIFT = 8
#: Per-compartment parameter fields in blob order; each is one byte lane of the parameter word.
FIELDS = ("decay_shift", "lower", "upper", "gamma", "gamma_shift", "readout")
#: Issue-to-last-write distance beyond k: the next token may read a channel only this many
#: clocks (plus k) after it read it last.
PIPELINE_GAP = 7


def channel_spacing(dim: int, k: int) -> int:
    """Clocks between channel starts: k, more when D * k is below the pipeline depth."""
    return max(k, -(-(k + PIPELINE_GAP) // dim))


def cycles_per_step(n_tokens: int, dim: int, k: int) -> int:
    """Clocks per timestep when the input and output streams never wait."""
    return n_tokens * dim * channel_spacing(dim, k)


def _sat16(v):
    """`min(32767, max(-32768, v))` as a 16-bit signed value."""
    return Mux(v > STATE_MAX, Const(STATE_MAX, signed(16)),
               Mux(v < STATE_MIN, Const(STATE_MIN, signed(16)), v[:16].as_signed()))


class LRFDynCoreRTL(wiring.Component):
    """The integer LRF-Dyn core for `heads` x `head_dim` channels, `k` compartments, N tokens.

    Ports (all synchronous to the `sync` domain):
    - `u_data/u_valid/u_ready`: input words of `word` bits (a valid/ready stream);
    - `s_data/s_valid/s_ready/s_last`: spike words; `s_last` marks a timestep's last word;
    - `p_addr/p_data/p_we`: parameter bytes at their offset in the blob body (decay shifts,
      lower, upper, gamma, gamma shifts, readout `[heads][k]`, then theta `[heads]` int16 LE);
    - `st_addr/st_wdata/st_we/st_rdata`: the state word `X[h][j][i]` at address
      `(h * head_dim + i) * k + j`, read one clock after the address; to be used only while
      `busy` is low (reset is writing zeros, READ_STATE reading them out);
    - `busy`: a channel is being issued or is in the pipeline.

    Parameters and state are written only between steps; the core does not validate them
    (`CoreParams` does, on the host).
    """

    def __init__(self, heads: int, head_dim: int, k: int, n_tokens: int, word: int = 8):
        if min(heads, head_dim, k, n_tokens, word) < 1:
            raise ValueError("heads, head_dim, k, n_tokens and word must be >= 1")
        self.heads, self.head_dim, self.k, self.n_tokens, self.word = (
            heads, head_dim, k, n_tokens, word)
        self.dim = heads * head_dim
        self.state_words = self.dim * k
        self.param_bytes = len(FIELDS) * heads * k + 2 * heads
        super().__init__({
            "u_data": In(word), "u_valid": In(1), "u_ready": Out(1),
            "s_data": Out(word), "s_valid": Out(1), "s_ready": In(1), "s_last": Out(1),
            "p_addr": In(range(self.param_bytes)), "p_data": In(8), "p_we": In(1),
            "st_addr": In(range(self.state_words)), "st_wdata": In(signed(16)),
            "st_we": In(1), "st_rdata": Out(signed(16)),
            "busy": Out(1),
        })

    @property
    def channel_spacing(self) -> int:
        """Clocks between channel starts (`channel_spacing(D, k)`)."""
        return channel_spacing(self.dim, self.k)

    def elaborate(self, platform) -> Module:  # noqa: C901 - one pipeline, stage by stage
        m = Module()
        H, d, k, N, W = self.heads, self.head_dim, self.k, self.n_tokens, self.word
        D, HK = self.dim, self.heads * self.k

        tag = data.StructLayout({
            "valid": 1, "j": range(k), "first": 1, "last": 1, "u": 1,
            "h": range(H), "addr": range(self.state_words), "step_end": 1,
        })
        pword = data.StructLayout({
            "decay_shift": unsigned(8), "lower": signed(8), "upper": signed(8),
            "gamma": signed(8), "gamma_shift": unsigned(8), "readout": signed(8),
        })

        # Memories: state X, per-compartment parameters (one byte lane per field), theta.
        m.submodules.state = state = Memory(shape=signed(16), depth=self.state_words, init=[])
        m.submodules.pmem = pmem = Memory(shape=8 * len(FIELDS), depth=HK, init=[])
        m.submodules.tmem = tmem = Memory(shape=16, depth=H, init=[])
        st_w = state.write_port()
        st_r = state.read_port(transparent_for=(st_w,))
        p_w = pmem.write_port(granularity=8)
        p_r = pmem.read_port()
        t_w = tmem.write_port(granularity=8)
        t_r = tmem.read_port()

        # Global advance: the whole pipeline moves only when the spike word can be taken.
        en = Signal()
        m.d.comb += en.eq(~self.s_valid | self.s_ready)
        for port in (st_r, p_r, t_r):
            m.d.comb += port.en.eq(en)

        # ---- parameter write port: blob-body offset -> field lane and index -----------------
        with m.If(self.p_addr < len(FIELDS) * HK):
            for f in range(len(FIELDS)):
                with m.If((self.p_addr >= f * HK) & (self.p_addr < (f + 1) * HK)):
                    m.d.comb += [
                        p_w.addr.eq(self.p_addr - f * HK),
                        p_w.en.eq(self.p_we << f),
                    ]
            m.d.comb += p_w.data.eq(self.p_data.replicate(len(FIELDS)))
        with m.Else():
            off = Signal(range(2 * H))
            m.d.comb += [
                off.eq(self.p_addr - len(FIELDS) * HK),
                t_w.addr.eq(off >> 1),
                t_w.en.eq(self.p_we << off[0]),
                t_w.data.eq(self.p_data.replicate(2)),
            ]

        # ---- stage 0: input word buffer and issue sequencer ---------------------------------
        ubuf = Signal(W)
        ucnt = Signal(range(W + 1))
        ucur = Signal()  # the u bit of the channel being issued
        mid = Signal()   # issuing compartments 1..k-1 of a channel
        jc = Signal(range(k))
        addr = Signal(range(self.state_words))
        pbase = Signal(range(HK))
        hc = Signal(range(H))
        ic = Signal(range(d))
        cc = Signal(range(D))
        nc = Signal(range(N))
        m.d.comb += self.u_ready.eq(ucnt == 0)
        with m.If(self.u_valid & self.u_ready):
            m.d.sync += [ubuf.eq(self.u_data), ucnt.eq(W)]

        # Channels start at least `spacing` clocks apart, so that a channel is read again (next
        # token, D channels later) only after its last write: D * spacing >= k + PIPELINE_GAP.
        spacing = self.channel_spacing
        gap_ok = Signal()
        if spacing > k:
            since = Signal(range(spacing + 1), init=spacing)
            m.d.comb += gap_ok.eq(since >= spacing)
        else:
            m.d.comb += gap_ok.eq(1)
        start = Signal()
        issue = Signal()
        step_end = Signal()
        m.d.comb += [
            start.eq(~mid & (ucnt != 0) & gap_ok),
            issue.eq(mid | start),
            step_end.eq((nc == N - 1) & (cc == D - 1)),
        ]
        t0 = Signal(tag)
        m.d.comb += [
            t0.valid.eq(issue), t0.j.eq(jc), t0.first.eq(jc == 0), t0.last.eq(jc == k - 1),
            t0.u.eq(Mux(mid, ucur, ubuf[0])), t0.h.eq(hc), t0.addr.eq(addr),
            t0.step_end.eq(step_end),
            st_r.addr.eq(Mux(issue, addr, self.st_addr)),
            p_r.addr.eq(pbase + jc),
            self.st_rdata.eq(st_r.data),
        ]
        with m.If(en & issue):
            m.d.sync += addr.eq(Mux(addr == self.state_words - 1, 0, addr + 1))
            with m.If(start):
                m.d.sync += ucur.eq(ubuf[0])
                with m.If(step_end):
                    m.d.sync += ucnt.eq(0)  # the rest of the word is padding
                with m.Else():
                    m.d.sync += [ucnt.eq(ucnt - 1), ubuf.eq(ubuf >> 1)]
                if spacing > k:
                    m.d.sync += since.eq(1)
            with m.If(jc == k - 1):
                m.d.sync += [jc.eq(0), mid.eq(0)]
                # next channel: (n, h, i) counters and the parameter base h * k
                m.d.sync += cc.eq(Mux(cc == D - 1, 0, cc + 1))
                with m.If(cc == D - 1):
                    m.d.sync += nc.eq(Mux(nc == N - 1, 0, nc + 1))
                with m.If(ic == d - 1):
                    m.d.sync += [ic.eq(0), hc.eq(Mux(hc == H - 1, 0, hc + 1)),
                                 pbase.eq(Mux(hc == H - 1, 0, pbase + k))]
                with m.Else():
                    m.d.sync += ic.eq(ic + 1)
            with m.Else():
                m.d.sync += [jc.eq(jc + 1), mid.eq(1)]
        if spacing > k:
            with m.If(en & ~start & (since < spacing)):
                m.d.sync += since.eq(since + 1)

        # ---- stages 1..3: tags follow the state words through a three-word window ----------
        t1, t2, t3, t4, t5, t6, t7, t8 = (Signal(tag, name=f"t{i}") for i in range(1, 9))
        p2, p3, p4, p5 = (Signal(pword, name=f"p{i}") for i in range(2, 6))
        w0, w1, w2 = (Signal(signed(16), name=f"w{i}") for i in range(3))
        with m.If(en):
            m.d.sync += [t1.eq(t0), t2.eq(t1), t3.eq(t2), t4.eq(t3), t5.eq(t4), t6.eq(t5),
                         t7.eq(t6), t8.eq(t7),
                         p2.eq(p_r.data), p3.eq(p2), p4.eq(p3), p5.eq(p4),
                         w0.eq(st_r.data), w1.eq(w0), w2.eq(w1)]
        # stage 3: w2 = old[j-1], w1 = old[j], w0 = old[j+1] (zero beyond the ends, as IntCore)
        dec4 = Signal(signed(17))
        lo4 = Signal(signed(16))
        up4 = Signal(signed(16))
        chg4 = Signal(signed(24))
        with m.If(en):
            m.d.sync += [
                dec4.eq(w1 - (w1 >> p3.decay_shift[:4])),
                lo4.eq(Mux(t3.j == 0, 0, (p3.lower * w2) >> COUPLING_SHIFT)),
                up4.eq(Mux(t3.j == k - 1, 0, (p3.upper * w0) >> COUPLING_SHIFT)),
                chg4.eq(Mux(t3.u, p3.gamma << p3.gamma_shift[:4], 0)),
            ]
        # stage 4: the full sum, saturated once
        new5 = Signal(signed(16))
        with m.If(en):
            m.d.sync += new5.eq(_sat16(dec4 + lo4 + up4 + chg4))
        # stage 5: readout product; theta of the head
        prod6 = Signal(signed(24))
        new6, new7 = Signal(signed(16)), Signal(signed(16))
        c6 = Signal(signed(8))
        m.d.comb += t_r.addr.eq(t5.h)
        with m.If(en):
            m.d.sync += [prod6.eq(p5.readout * new5), new6.eq(new5), c6.eq(p5.readout)]
        # stage 6: soma sum; fire level C[0] * theta
        y7 = Signal(signed(32))
        c0 = Signal(signed(8))
        fire_at7 = Signal(signed(24))
        theta7 = Signal(signed(16))
        c0_now = Mux(t6.first, c6, c0)
        with m.If(en):
            m.d.sync += [
                y7.eq(Mux(t6.first, prod6, y7 + prod6)),
                new7.eq(new6),
                fire_at7.eq(c0_now * t_r.data.as_signed()),
                theta7.eq(t_r.data.as_signed()),
            ]
            with m.If(t6.first):
                m.d.sync += c0.eq(c6)
        # stage 7: write new[j] for j >= 1; fire and reset the soma on the last compartment
        soma = Signal(signed(16))  # new[0] of the channel, held until its fire is known
        soma_now = Mux(t7.first, new7, soma)
        fire8 = Signal()
        soma8 = Signal(signed(16))
        fire = Signal()
        m.d.comb += fire.eq(y7 >= fire_at7)
        with m.If(en):
            with m.If(t7.first):
                m.d.sync += soma.eq(new7)
            m.d.sync += [
                fire8.eq(fire),
                soma8.eq(Mux(fire, _sat16(soma_now - theta7), soma_now)),
            ]
        # stage 8 writes the soma into the slot left free by the next channel's j = 0
        with m.If(en & t8.valid & t8.last):
            m.d.comb += [st_w.addr.eq(t8.addr - (k - 1)), st_w.data.eq(soma8), st_w.en.eq(1)]
        with m.Elif(en & t7.valid & (t7.j != 0)):
            m.d.comb += [st_w.addr.eq(t7.addr), st_w.data.eq(new7), st_w.en.eq(1)]
        with m.Elif(self.st_we):
            m.d.comb += [st_w.addr.eq(self.st_addr), st_w.data.eq(self.st_wdata),
                         st_w.en.eq(1)]

        # ---- spike packer ------------------------------------------------------------------
        obuf = Signal(W)
        ocnt = Signal(range(W))
        word = Signal(W)
        m.d.comb += word.eq(obuf | (fire8 << ocnt))
        with m.If(self.s_valid & self.s_ready):
            m.d.sync += self.s_valid.eq(0)
        with m.If(en & t8.valid & t8.last):
            with m.If((ocnt == W - 1) | t8.step_end):
                m.d.sync += [self.s_data.eq(word), self.s_valid.eq(1),
                             self.s_last.eq(t8.step_end), obuf.eq(0), ocnt.eq(0)]
            with m.Else():
                m.d.sync += [obuf.eq(word), ocnt.eq(ocnt + 1)]

        m.d.comb += self.busy.eq(mid | Cat(t.valid for t in (t1, t2, t3, t4, t5, t6, t7, t8)).any())
        return m
