"""Time per timestep of the `lrf_dyn` attention and of its cores, beside `ssa`, at N tokens.

For N = 64 and 1024 tokens (D = 256, 8 heads, batch 1, inference): the whole `lrf_dyn` and
`ssa` attention steps (ratio to `ssa`), the float `DendriticCore` alone, the quantized torch
core and the numpy `IntCore` (the device reference), and the bytes of state each keeps.

    .venv/bin/python benchmarks/lrf_dyn_step.py [--quick] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable

import torch

from spikestream.firmware_bridge.intcore import IntCore
from spikestream.firmware_bridge.quantize import QuantizedLRFDynCore, quantize_lrf_dyn
from spikestream.pipeline.network.attention import create_attention


def per_call(fn: Callable[[], object], repeats: int) -> float:
    """Median seconds of `fn()` over `repeats` calls after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def grid_for(n: int) -> tuple[int, int]:
    side = int(round(n**0.5))
    if side * side != n:
        raise ValueError(f"N = {n} is not a square grid")
    return side, side


def measure(n: int, dim: int, heads: int, repeats: int) -> dict[str, float]:
    torch.manual_seed(0)
    grid = grid_for(n)
    x = (torch.rand(1, n, dim) < 0.2).float()
    res: dict[str, float] = {"N": n}
    with torch.no_grad():
        for key in ("ssa", "lrf_dyn"):
            att = create_attention(key, dim, heads, grid).eval()
            st = att.init_state(1)
            res[f"{key}_ms"] = per_call(lambda att=att, st=st: att.step(x, st), repeats) * 1e3
            res[f"{key}_state_bytes"] = sum(v.numel() * v.element_size() for v in st.values())
            if key == "lrf_dyn":
                lrf = att
        core = lrf.core
        u = (torch.rand(1, n, dim) < 0.1).float()
        xc = core.init_state(1)
        res["float_core_ms"] = per_call(lambda: core.step(u, xc), repeats) * 1e3
        res["core_state_bytes"] = xc.numel() * xc.element_size()
        params = quantize_lrf_dyn(lrf)
        qcore = QuantizedLRFDynCore(params)
        xq = qcore.init_state(1)
        res["int_torch_core_ms"] = per_call(lambda: qcore.step(u, xq), repeats) * 1e3
        ref = IntCore(params)
        un = u[0].numpy() > 0
        res["intcore_numpy_ms"] = per_call(lambda: ref.step(un), repeats) * 1e3
    res["lrf_dyn_over_ssa_time"] = res["lrf_dyn_ms"] / res["ssa_ms"]
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="N = 64 only, fewer repeats")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    sizes = (64,) if args.quick else (64, 1024)
    rows = [measure(n, args.dim, args.heads, 3 if args.quick else 7) for n in sizes]
    if args.json:
        print(json.dumps(rows))
        return 0
    print(f"D = {args.dim}, {args.heads} heads, batch 1, inference, 1 thread (median ms per step)")
    cols = ("N", "ssa_ms", "lrf_dyn_ms", "lrf_dyn_over_ssa_time", "float_core_ms",
            "int_torch_core_ms", "intcore_numpy_ms", "core_state_bytes")  # fmt: skip
    print("  ".join(f"{c:>21}" for c in cols))
    for r in rows:
        print(
            "  ".join(f"{r[c]:>21.3f}" if isinstance(r[c], float) else f"{r[c]:>21}" for c in cols)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
