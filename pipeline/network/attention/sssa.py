"""`sssa`: SNN-ViT's saccadic spike self-attention, a per-token gate from spike statistics.

Per head: `Q' = sum_d Q`, `K' = sum_d K` (spike counts per token), token salience
`Patch = (Q' K'^T) 1 / (N d^2)` (O(N), in [0, 1]); the saccadic neuron integrates it over time,
`H[t] = sum_{t' <= t} M[t, t'] Patch[t']`, fires `S = [H >= th]` (learned threshold per head)
and gates the values: `out = S ⊙ V`, then `BN(W_o .)`.

M is lower-triangular and learned, with the Toeplitz sum-of-exponentials form
`M[t, t'] = sum_r w_r lam_r^(t - t')` (R = `rates` terms, `lam_r` in (0, 1)). This is our
choice: a free T x T matrix would need every past Patch to be kept, so state would grow with
the stream; with this form the running sums `H_r <- lam_r H_r + Patch` are exact and the
state is R values per token, the same at step 10 and step 100,000. `forward` builds M as an
explicit T x T matrix, which the step recursion must match (a test checks it).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from spikestream.pipeline.network.attention.base import State, register_attention
from spikestream.pipeline.network.attention.qkv import SpikingQKV
from spikestream.pipeline.network.neurons import spike_ge


@register_attention("sssa")
class SSSA(SpikingQKV):
    """Saccadic spike self-attention with a constant-state saccadic neuron."""

    def __init__(
        self,
        dim: int,
        heads: int,
        grid: tuple[int, int],
        rates: int = 4,
        threshold: float = 0.25,
    ) -> None:
        super().__init__(dim, heads, grid, attn_lif=False)  # the saccadic neuron fires instead
        self.rates = int(rates)
        # decays 1/2, 3/4, 7/8, ... as logits; weights 1/R; one set per head
        lam0 = 1.0 - 0.5 ** torch.arange(1, self.rates + 1, dtype=torch.float32)
        self.lam_logit = nn.Parameter(torch.logit(lam0).repeat(heads, 1))
        self.weight = nn.Parameter(torch.full((heads, self.rates), 1.0 / self.rates))
        self.threshold = nn.Parameter(torch.full((heads,), float(threshold)))

    def init_state(self, batch: int, device=None, dtype=None) -> State:
        st = {n: self._zeros(batch, device, dtype) for n in ("q", "k", "v")}
        st["h"] = torch.zeros(batch, self.heads, self.rates, self.num_tokens,
                              device=device, dtype=dtype)
        return st

    def salience(self, q: Tensor, k: Tensor) -> Tensor:
        """`Patch[B, h, N] = Q'_n * sum_m K'_m / (N d^2)` from spikes `[B, h, N, d]`."""
        d = q.shape[-1]
        qc, kc = q.sum(-1), k.sum(-1)
        return qc * kc.sum(-1, keepdim=True) / (self.num_tokens * d * d)

    def gate(self, h: Tensor, v: Tensor) -> Tensor:
        """Fire `[H >= th]` and mask the values: `h[B, h, N]`, `v[B, h, N, d]` -> `[B, N, D]`."""
        s = spike_ge(h - self.threshold[:, None])
        return self.merge_heads(s.unsqueeze(-1) * v)

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        q, k, v, state = self.qkv(x, state)
        lam = torch.sigmoid(self.lam_logit)[..., None]  # [h, R, 1]
        hr = lam * state["h"] + self.salience(q, k).unsqueeze(2)  # [B, h, R, N]
        h = (self.weight[..., None] * hr).sum(2)
        return self.proj(self.gate(h, v)), dict(state, h=hr)

    def kernel(self, steps: int) -> Tensor:
        """The explicit lower-triangular `M[h, T, T]` for `steps` timesteps."""
        t = torch.arange(steps, device=self.weight.device)
        lag = (t[:, None] - t[None, :]).to(self.weight.dtype)  # t - t'
        lam = torch.sigmoid(self.lam_logit)[:, :, None, None]  # [h, R, 1, 1]
        powers = lam ** lag.clamp(min=0)
        m = (self.weight[:, :, None, None] * powers).sum(1)  # [h, T, T]
        return m * (lag >= 0)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.qkv_seq(x)
        patch = self.salience(q, k)  # [T, B, h, N]
        h = torch.einsum("hts,sbhn->tbhn", self.kernel(x.shape[0]), patch)
        s = spike_ge(h - self.threshold[:, None])
        return self.proj(self.merge_seq(s.unsqueeze(-1) * v))

    def extra_repr(self) -> str:
        return f"rates={self.rates}"
