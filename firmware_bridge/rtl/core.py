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
    2  window: old[j] registered; old[j] >> S[j] and the charge G[j] << GS[j]
    3  old[j-1], old[j], old[j+1] in registers: decay, both couplings
    4  two partial sums
    5  the full sum
    6  sat16 -> new[j]; theta read
    7  C[j] * new[j]; C[0] * theta
    8  soma sum less the fire level: y - C[0] * theta += C[j] * new[j]
    9  write new[j] (j >= 1); on the last compartment: fire, and the soma less theta
    10 write the soma, reset where it fired (in the slot the next channel's j = 0 leaves
       free); spike to the packer

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
#: Pipeline stages after issue (the last one writes the soma and packs the spike).
DEPTH = 10
#: The next token may read a channel only k + PIPELINE_GAP clocks after it read it first: the
#: soma is written k - 1 + DEPTH clocks after that read, and the state memory's read port is
#: not transparent (a bypass mux there cost 10% of the clock), so the read comes one clock
#: after the write. The tests show that one clock less gives wrong results at D = 1.
PIPELINE_GAP = DEPTH


def channel_spacing(dim: int, k: int) -> int:
    """Clocks between channel starts: k, more when D * k is below the pipeline depth."""
    return max(k, -(-(k + PIPELINE_GAP) // dim))


def cycles_per_step(n_tokens: int, dim: int, k: int) -> int:
    """Clocks per timestep when the input and output streams never wait."""
    return n_tokens * dim * channel_spacing(dim, k)


def _sat16(v):
    """`min(32767, max(-32768, v))` as a 16-bit signed value (v signed, wider than 16 bits).

    In range iff the bits from 15 up are all equal; no comparator carry chains."""
    top = v[15:]
    inside = (top == 0) | (top == (1 << len(top)) - 1)
    rail = Mux(v[-1], Const(STATE_MIN, signed(16)), Const(STATE_MAX, signed(16)))
    return Mux(inside, v[:16].as_signed(), rail)


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
    - `busy`: a channel is being issued or is in the pipeline, a spike word waits to be
      taken, or a parameter write (which lands two clocks after `p_we`) is pending.

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

    def elaborate(self, platform) -> Module:
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
        st_r = state.read_port()
        p_w = pmem.write_port(granularity=8)
        p_r = pmem.read_port()
        t_w = tmem.write_port(granularity=8)
        t_r = tmem.read_port()

        # Global advance: the whole pipeline moves only when the spike word can be taken.
        en = Signal()
        m.d.comb += en.eq(~self.s_valid | self.s_ready)
        for port in (st_r, p_r, t_r):
            m.d.comb += port.en.eq(en)

        # ---- parameter write port: blob-body offset -> field lane and index. Two register
        # stages (compare; then select and subtract), so the decode never limits the clock.
        nf = len(FIELDS)
        a_addr = Signal.like(self.p_addr, reset_less=True)
        a_data = Signal(8, reset_less=True)
        a_we = Signal()
        above = Signal(nf + 1)  # above[f]: the offset is at or past field f (f = nf: theta)
        m.d.sync += [a_addr.eq(self.p_addr), a_data.eq(self.p_data), a_we.eq(self.p_we),
                     above.eq(Cat(self.p_addr >= f * HK for f in range(nf + 1)))]
        pw_addr, tw_addr = Signal(range(HK), reset_less=True), Signal(range(H), reset_less=True)
        pw_en, tw_en = Signal(nf), Signal(2)
        pw_data = Signal(8, reset_less=True)
        m.d.sync += [pw_en.eq(0), tw_en.eq(0), pw_data.eq(a_data)]
        for f in range(nf):
            with m.If(above[f] & ~above[f + 1]):
                m.d.sync += [pw_addr.eq(a_addr - f * HK), pw_en.eq(a_we << f)]
        with m.If(above[nf]):
            off = Signal(range(2 * H))
            m.d.comb += off.eq(a_addr - nf * HK)
            m.d.sync += [tw_addr.eq(off >> 1), tw_en.eq(a_we << off[0])]
        m.d.comb += [
            p_w.addr.eq(pw_addr), p_w.en.eq(pw_en), p_w.data.eq(pw_data.replicate(nf)),
            t_w.addr.eq(tw_addr), t_w.en.eq(tw_en), t_w.data.eq(pw_data.replicate(2)),
        ]

        # ---- stage 0: input word buffer and issue sequencer ---------------------------------
        ubuf = Signal(W)
        ucnt = Signal(range(W + 1))
        has = Signal()  # ucnt != 0, as a register: it gates the whole sequencer
        ucur = Signal()  # the u bit of the channel being issued
        mid = Signal()   # issuing compartments 1..k-1 of a channel
        jc = Signal(range(k))
        addr = Signal(range(self.state_words))
        pbase = Signal(range(HK))
        hc = Signal(range(H))
        ic = Signal(range(d))
        cc = Signal(range(D))
        nc = Signal(range(N))
        m.d.comb += self.u_ready.eq(~has)
        with m.If(self.u_valid & self.u_ready):
            m.d.sync += [ubuf.eq(self.u_data), ucnt.eq(W), has.eq(1)]

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
            start.eq(~mid & has & gap_ok),
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
                    m.d.sync += [ucnt.eq(0), has.eq(0)]  # the rest of the word is padding
                with m.Else():
                    m.d.sync += [ucnt.eq(ucnt - 1), ubuf.eq(ubuf >> 1), has.eq(ucnt != 1)]
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

        def reg(shape, name):
            return Signal(shape, name=name, reset_less=True)

        # ---- stages 1..3: tags follow the state words through a three-word window ----------
        # t[s] is the tag of the item in stage s; r[s] its readout weight C[j] (s >= 4)
        t = [t0] + [Signal(tag, name=f"t{i}") for i in range(1, DEPTH + 1)]
        p2, p3 = (Signal(pword, name=f"p{i}", reset_less=True) for i in range(2, 4))
        r = {i: reg(signed(8), f"r{i}") for i in range(4, 8)}
        w0, w1, w2 = (reg(signed(16), f"w{i}") for i in range(3))
        with m.If(en):
            m.d.sync += [t[i].eq(t[i - 1]) for i in range(1, DEPTH + 1)]
            m.d.sync += [r[i].eq(r[i - 1]) for i in range(5, 8)]
            m.d.sync += [p2.eq(p_r.data), p3.eq(p2), r[4].eq(p3.readout),
                         w0.eq(st_r.data), w1.eq(w0), w2.eq(w1)]

        # stage 2: w0 = old[j]: its decay shift and the charge, both by variable shifts
        sh3, chg3 = reg(signed(16), "sh3"), reg(signed(16), "chg3")
        with m.If(en):
            m.d.sync += [
                sh3.eq(w0 >> p2.decay_shift[:4]),
                # G << GS fits int16 for GS <= 8, the specification's limit
                chg3.eq(Mux(t[2].u, (p2.gamma << p2.gamma_shift[:4])[:16], 0)),
            ]
        # stage 3: w2 = old[j-1], w1 = old[j], w0 = old[j+1] (zero beyond the ends, as IntCore)
        dec4, lo4, up4, chg4 = (reg(signed(17), "dec4"), reg(signed(16), "lo4"),
                                reg(signed(16), "up4"), reg(signed(16), "chg4"))
        with m.If(en):
            m.d.sync += [
                dec4.eq(w1 - sh3),
                lo4.eq(Mux(t[3].j == 0, 0, (p3.lower * w2) >> COUPLING_SHIFT)),
                up4.eq(Mux(t[3].j == k - 1, 0, (p3.upper * w0) >> COUPLING_SHIFT)),
                chg4.eq(chg3),
            ]
        # stage 4: two partial sums; 5: the full sum; 6: saturated once
        sa5, sb5 = reg(signed(18), "sa5"), reg(signed(17), "sb5")
        sum6, new7 = reg(signed(19), "sum6"), reg(signed(16), "new7")
        with m.If(en):
            m.d.sync += [sa5.eq(dec4 + lo4), sb5.eq(up4 + chg4), sum6.eq(sa5 + sb5),
                         new7.eq(_sat16(sum6))]
        # stage 7: readout product; the fire level C[0] * theta (used from the channel's j = 0)
        prod8, fire_at8 = reg(signed(24), "prod8"), reg(signed(24), "fire_at8")
        theta8, theta9 = reg(signed(16), "theta8"), reg(signed(16), "theta9")
        new8, new9 = reg(signed(16), "new8"), reg(signed(16), "new9")
        m.d.comb += t_r.addr.eq(t[6].h)
        with m.If(en):
            m.d.sync += [prod8.eq(r[7] * new7), new8.eq(new7),
                         fire_at8.eq(r[7] * t_r.data.as_signed()),
                         theta8.eq(t_r.data.as_signed())]
        # stage 8: the soma potential less the fire level, y - C[0] * theta: it fires when >= 0
        excess9 = reg(signed(25 + k.bit_length()), "excess9")
        with m.If(en):
            m.d.sync += [
                excess9.eq(Mux(t[8].first, prod8 - fire_at8, excess9 + prod8)),
                new9.eq(new8),
                theta9.eq(theta8),
            ]
        # stage 9: write new[j] for j >= 1; fire and the lowered soma on the last compartment
        soma = reg(signed(16), "soma")  # new[0] of the channel, held until its fire is known
        soma_now = Mux(t[9].first, new9, soma)
        fire10 = Signal()
        keep10, lowered10 = reg(signed(16), "keep10"), reg(signed(16), "lowered10")
        with m.If(en):
            with m.If(t[9].first):
                m.d.sync += soma.eq(new9)
            m.d.sync += [
                fire10.eq(~excess9[-1]),
                keep10.eq(soma_now),
                lowered10.eq(_sat16(soma_now - theta9)),
            ]
        # stage 10 writes the soma into the slot left free by the next channel's j = 0
        with m.If(en & t[10].valid & t[10].last):
            m.d.comb += [st_w.addr.eq(t[10].addr - (k - 1)),
                         st_w.data.eq(Mux(fire10, lowered10, keep10)), st_w.en.eq(1)]
        with m.Elif(en & t[9].valid & (t[9].j != 0)):
            m.d.comb += [st_w.addr.eq(t[9].addr), st_w.data.eq(new9), st_w.en.eq(1)]
        with m.Elif(self.st_we):
            m.d.comb += [st_w.addr.eq(self.st_addr), st_w.data.eq(self.st_wdata),
                         st_w.en.eq(1)]

        # ---- spike packer ------------------------------------------------------------------
        obuf = Signal(W)
        ocnt = Signal(range(W))
        word = Signal(W)
        m.d.comb += word.eq(obuf | (fire10 << ocnt))
        with m.If(self.s_valid & self.s_ready):
            m.d.sync += self.s_valid.eq(0)
        with m.If(en & t[DEPTH].valid & t[DEPTH].last):
            with m.If((ocnt == W - 1) | t[DEPTH].step_end):
                m.d.sync += [self.s_data.eq(word), self.s_valid.eq(1),
                             self.s_last.eq(t[DEPTH].step_end), obuf.eq(0), ocnt.eq(0)]
            with m.Else():
                m.d.sync += [obuf.eq(word), ocnt.eq(ocnt + 1)]

        m.d.comb += self.busy.eq(mid | Cat(x.valid for x in t[1:]).any() | self.s_valid
                                 | a_we | pw_en.any() | tw_en.any())
        return m
