"""Time per training step (forward, loss, backward, optimizer) of every attention key.

BPTT over T = 16 timesteps of batch 8 on 64x64 frames (the `tiny` config, one torch thread,
random sparse event-count frames), median of a few steps after a warm-up. `lrf_dyn` runs
twice: with its compiled token scan (the default on the CPU) and with the reference Python
loop of per-token torch operations, the peer it replaces. Ratios are against `ssa` measured
in the same run; the target is `lrf_dyn` <= 1.1x `ssa`. With `--device cuda` everything runs
on the GPU, `lrf_dyn` with its Triton scan (the loop then launches kernels per token); without
a CUDA device that run prints why and stops.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/training_step.py [--quick] [--keys ssa,lrf_dyn]
        [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
from torch import nn

from spikestream.pipeline import create_model
from spikestream.pipeline.network.attention import ATTENTION
from spikestream.pipeline.network.attention.lrf_dyn import DendriticCore

T, B, SIZE = 16, 8, 64


def _clock(device: torch.device) -> float:
    if device.type == "cuda":  # the GPU runs asynchronously: time finished work
        torch.cuda.synchronize(device)
    return time.perf_counter()


def frames(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(T, B, 2, SIZE, SIZE, generator=g) < 0.05
    return mask * torch.randint(1, 4, mask.shape, generator=g).float()


def step_seconds(key: str, repeats: int, compiled_scan: bool = True,
                 device: torch.device | str = "cpu") -> float:
    device = torch.device(device)
    torch.manual_seed(0)
    kwargs = {"mode": "causal"} if key == "statten" else {}
    model = create_model("tiny", key, attention_kwargs=kwargs, input_size=(SIZE, SIZE),
                         num_classes=10, time_steps=T).to(device).train()
    for m in model.modules():
        if isinstance(m, DendriticCore):
            m.compiled_scan = compiled_scan
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = frames(), torch.randint(0, 10, (B,), generator=torch.Generator().manual_seed(1))
    x, y = x.to(device), y.to(device)
    loss_fn = nn.CrossEntropyLoss()
    times = []
    for i in range(repeats + 1):
        t0 = _clock(device)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x).mean(0), y)
        loss.backward()
        opt.step()
        if i:  # the first step warms up (and compiles)
            times.append(_clock(device) - t0)
    return sorted(times)[len(times) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 timed steps per key instead of 5")
    ap.add_argument("--keys", default=",".join(sorted(ATTENTION)),
                    help="comma-separated attention keys (default: all)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                    help="where the models train (default: cpu)")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("training_step --device cuda: no CUDA device here, nothing timed")
        sys.exit(0)
    torch.set_num_threads(1)
    repeats = 2 if args.quick else 5
    keys = [k for k in args.keys.split(",") if k]
    if "ssa" not in keys:
        keys.insert(0, "ssa")
    res = {k: step_seconds(k, repeats, device=device) for k in keys}
    if "lrf_dyn" in keys:
        res["lrf_dyn (loop)"] = step_seconds("lrf_dyn", repeats, compiled_scan=False,
                                             device=device)
    if args.json:
        print(json.dumps({k: {"s": v, "vs_ssa": v / res["ssa"]} for k, v in res.items()}))
        return
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "1 thread"
    print(f"training step, tiny 64x64, T={T}, B={B}, {where} (median of {repeats})")
    print(f"{'key':<16}{'s/step':>10}{'vs ssa':>9}")
    for k, v in res.items():
        print(f"{k:<16}{v:>10.3f}{v / res['ssa']:>8.2f}x")
    if "lrf_dyn" in res:
        r = res["lrf_dyn"] / res["ssa"]
        print(f"target lrf_dyn <= 1.10x ssa: {r:.2f}x ({'met' if r <= 1.1 else 'not met'}); "
              f"compiled scan vs loop: {res['lrf_dyn (loop)'] / res['lrf_dyn']:.2f}x faster")


if __name__ == "__main__":
    main()
