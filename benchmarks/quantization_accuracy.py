"""Accuracy of a trained `lrf_dyn` model with its float core and with the integer core.

Trains a small `lrf_dyn` SpikingTransformer on the real N-MNIST samples in
`../shared/data/nmnist-small` (1,000 recordings, 34x34 ATIS), then evaluates the same weights
twice on held-out samples: with the float `DendriticCore` and with the integer core
(`quantize_cores`, bit-exact with `IntCore`). Prints both accuracies, their difference (target:
under 1 point), and how often the two cores agree on spikes and on predictions.

    .venv/bin/python benchmarks/quantization_accuracy.py            # a few minutes
    .venv/bin/python benchmarks/quantization_accuracy.py --quick    # half of that
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.progress import Progress

from spikestream.firmware_bridge.quantize import (
    QuantizedLRFDynCore,
    quantize_cores,
    quantize_lrf_dyn,
)
from spikestream.pipeline import create_model
from spikestream.pipeline.network.attention.lrf_dyn import LRFDyn

ROOT = Path(__file__).resolve().parents[1]
SIZE = 32  # the centre 32x32 of the 34x34 sensor


def read_nmnist(path: Path) -> np.ndarray:
    """N-MNIST 40-bit records -> (x, y, p, t) columns; y == 240 records carry the 2**23 wrap.

    A few lines of numpy suffice for this benchmark's own input; the project's file readers
    live in `spikestream.datasets`, which benchmarks of the firmware bridge do not depend on.
    """
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size % 5:
        raise ValueError(f"{path}: {raw.size} bytes is not a multiple of the 5-byte record")
    r = raw.reshape(-1, 5).astype(np.int64)
    x, y = r[:, 0], r[:, 1]
    p = r[:, 2] >> 7
    t = ((r[:, 2] & 0x7F) << 16) | (r[:, 3] << 8) | r[:, 4]
    wrap = y == 240
    t = t + (np.cumsum(wrap) << 23)
    keep = ~wrap
    return np.stack([x[keep], y[keep], p[keep], t[keep]], axis=1)


def to_frames(ev: np.ndarray, steps: int, span_us: int) -> np.ndarray:
    """Binary frames `[T, 2, 32, 32]` over equal time bins of `span_us`."""
    x, y, p, t = (ev[:, i] for i in range(4))
    x, y = x - 1, y - 1
    ok = (x >= 0) & (x < SIZE) & (y >= 0) & (y < SIZE) & (t < span_us)
    b = (t[ok] * steps) // span_us
    frames = np.zeros((steps, 2, SIZE, SIZE), dtype=np.uint8)
    frames[b, p[ok], y[ok], x[ok]] = 1
    return frames


def load(data: Path, steps: int, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    lines = (data / "labels.txt").read_text().split("\n")[1:]
    pairs = [tuple(int(v) for v in ln.split()) for ln in lines if ln.strip()]
    if limit:
        pairs = pairs[:limit]
    xs = np.stack([to_frames(read_nmnist(data / f"{i}.bs2"), steps, 300_000) for i, _ in pairs])
    return xs, np.array([c for _, c in pairs])


def accuracy(model: torch.nn.Module, xs: np.ndarray, ys: np.ndarray, batch: int) -> np.ndarray:
    """Predictions (class of the time-averaged logits) for every sample."""
    model.eval()
    preds = []
    with torch.no_grad():
        for i in range(0, len(xs), batch):
            frames = torch.from_numpy(xs[i : i + batch]).float().transpose(0, 1)
            preds.append(model(frames).mean(0).argmax(-1).numpy())
    return np.concatenate(preds)


def record_core(model: torch.nn.Module) -> tuple[LRFDyn, list[tuple[torch.Tensor, torch.Tensor]]]:
    """Record `(u, s)` of every step of the first `lrf_dyn` layer's core."""
    layer = next(m for m in model.modules() if isinstance(m, LRFDyn))
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []
    core_step = layer.core.step

    def step(u: torch.Tensor, st: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s, st = core_step(u, st)
        calls.append((u, s))
        return s, st

    layer.core.step = step
    return layer, calls


def spike_agreement(
    layer: LRFDyn, calls: list, steps: int, state_range: float | None
) -> tuple[float, float, float]:
    """Percent of equal spikes, integer vs float core, on the float run's own inputs `u`;
    with the percentages of active inputs u and of float spikes s (how much there is to agree
    on)."""
    qcore = QuantizedLRFDynCore(quantize_lrf_dyn(layer, state_range=state_range))
    same = total = 0
    u_on = s_on = 0.0
    with torch.no_grad():
        for i, (u, s) in enumerate(calls):
            if i % steps == 0:  # every forward pass starts from a zero state
                x = qcore.init_state(u.shape[0])
            sq, x = qcore.step(u, x)
            same += int((sq == s).sum())
            total += s.numel()
            u_on += float(u.sum())
            s_on += float(s.sum())
    return 100.0 * same / total, 100.0 * u_on / total, 100.0 * s_on / total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "nmnist-small")
    ap.add_argument("--quick", action="store_true", help="3 epochs instead of 6")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--steps", type=int, default=6, help="timesteps T per sample")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--embed-dim", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--state-range", type=float, default=None, help="quantizer state range")
    ap.add_argument("--save", type=Path, default=None, help="save the trained float weights")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    data = args.data / "train" if (args.data / "train").is_dir() else args.data
    if not (data / "labels.txt").is_file():
        print(f"N-MNIST samples not found under {args.data}", file=sys.stderr)
        return 2
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    xs, ys = load(data, args.steps, None)
    epochs = 3 if args.quick else args.epochs
    order = np.random.default_rng(args.seed).permutation(len(xs))
    n_test = len(xs) // 5
    test, train = order[:n_test], order[n_test:]
    model = create_model(
        "tiny", "lrf_dyn", input_size=(SIZE, SIZE), time_steps=args.steps, embed_dim=args.embed_dim,
        heads=4, stem_pool=(True, True, False), num_classes=10,
    )  # fmt: skip
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-2)
    n_batches = epochs * ((len(train) + args.batch - 1) // args.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=n_batches)
    rng = np.random.default_rng(args.seed + 1)
    with Progress(transient=True) as bar:
        task = bar.add_task("training lrf_dyn on N-MNIST", total=n_batches)
        for _ in range(epochs):
            model.train()
            perm = rng.permutation(train)
            for i in range(0, len(perm), args.batch):
                idx = perm[i : i + args.batch]
                frames = torch.from_numpy(xs[idx]).float().transpose(0, 1)
                loss = F.cross_entropy(model(frames).mean(0), torch.from_numpy(ys[idx]))
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                bar.advance(task)
    train_s = time.perf_counter() - t0
    if args.save:
        torch.save(model.state_dict(), args.save)  # loadable with weights_only=True
    layer, calls = record_core(model)
    pf = accuracy(model, xs[test], ys[test], args.batch)
    del layer.core.step  # back to the class's method
    agree, u_rate, s_rate = spike_agreement(layer, calls, args.steps, args.state_range)
    quantize_cores(model, state_range=args.state_range)
    pi = accuracy(model, xs[test], ys[test], args.batch)
    acc_f = float((pf == ys[test]).mean() * 100)
    acc_i = float((pi == ys[test]).mean() * 100)
    res = {
        "samples_train": int(len(train)),
        "samples_test": int(len(test)),
        "epochs": epochs,
        "float_accuracy": round(acc_f, 2),
        "int_accuracy": round(acc_i, 2),
        "delta_points": round(acc_i - acc_f, 2),
        "prediction_agreement": round(float((pf == pi).mean() * 100), 2),
        "core_spike_agreement": round(agree, 3),
        "core_input_rate": round(u_rate, 3),
        "core_spike_rate": round(s_rate, 3),
        "train_seconds": round(train_s, 1),
    }
    if args.json:
        print(json.dumps(res))
    else:
        print(
            f"lrf_dyn on N-MNIST ({res['samples_train']} train / {res['samples_test']} test, "
            f"{epochs} epochs, T={args.steps}, {train_s:.0f} s)\n"
            f"  float core accuracy   {acc_f:6.2f} %\n"
            f"  integer core accuracy {acc_i:6.2f} %\n"
            f"  change                {acc_i - acc_f:+6.2f} points (target: |change| < 1)\n"
            f"  same prediction       {res['prediction_agreement']:6.2f} % of test samples\n"
            f"  same core spikes      {agree:6.2f} % (first lrf_dyn layer, identical inputs u;\n"
            f"                        u active {u_rate:.2f} %, float core fires {s_rate:.2f} %)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
