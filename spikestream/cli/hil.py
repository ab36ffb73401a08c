"""`spikestream hil --port PORT [--steps N] [--json]`: conformance run of a device.

Handshake, parameter upload, N timesteps of inputs, each output compared bit for bit with the
numpy reference core. Inputs are made batch by batch as the run goes, so memory does not grow
with N. PORT is anything pyserial opens: /dev/ttyACM0, a pty path,
socket://HOST:PORT or spikeemu://?faults=...&seed=.... Inputs come from real N-MNIST recordings
when they are found (--input auto), else from a seeded Bernoulli source. Parameters are seeded
random integers within the arithmetic specification (--params random), or the quantized core of
a seeded `lrf_dyn` attention layer (--params lrf_dyn).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from serial import SerialException

from spikestream.firmware_bridge.hil import (
    bernoulli_batches,
    events_kv,
    random_core_params,
    run_conformance,
)
from spikestream.firmware_bridge.intcore import CoreParams
from spikestream.firmware_bridge.link import Link, LinkError

STEPS_PER_SAMPLE = 32


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "hil",
        help="hardware-in-the-loop conformance run against a device or the emulator",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--port", required=True, help="serial port or URL of the device")
    p.add_argument("--steps", type=int, default=512, help="timesteps to run (default 512)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--input", default="auto",
                   help="auto | random | a folder of N-MNIST .bs2/.bin files (default auto)")
    p.add_argument("--tokens", type=int, default=64, help="tokens N (default 64)")
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=16)
    p.add_argument("--k", type=int, default=3, help="compartments per neuron")
    p.add_argument("--params", choices=("random", "lrf_dyn"), default="random",
                   help="random integer parameters, or a quantized seeded lrf_dyn layer")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=0.5, help="retransmission timeout (s)")
    p.add_argument("--window", type=int, default=8, help="frames in flight")
    p.add_argument("--baud", type=int, default=115200, help="baud rate for a real port")
    p.add_argument("--progress", choices=("auto", "bar", "lines", "none"), default="auto",
                   help="progress on stderr: a bar, a line per batch, or none; auto: a bar "
                   "when stderr is a terminal")
    p.set_defaults(func=run)


def _nmnist_dir() -> Path | None:
    env = os.environ.get("SPIKESTREAM_REAL_DATA")
    roots = ([Path(env)] if env else []) + [Path(__file__).resolve().parents[2].parent / "shared"
                                           / "data"]
    for root in roots:
        d = root / "nmnist-small" / "train"
        if d.is_dir():
            return d
    return None


def nmnist_batches(folder: Path, steps: int, n_tokens: int, dim: int
                   ) -> tuple[Iterator[np.ndarray], str]:
    """Inputs from consecutive N-MNIST samples (cycling through the folder), STEPS_PER_SAMPLE
    timesteps each, read one sample per batch as the run asks for them; and their description."""
    from spikestream.datasets import read_events

    files = sorted(
        (f for f in folder.iterdir() if f.suffix in (".bs2", ".bin")),
        key=lambda f: (len(f.stem), f.stem),
    )
    if not files:
        raise FileNotFoundError(f"{folder}: no N-MNIST .bs2/.bin files")

    def batches() -> Iterator[np.ndarray]:
        for used, start in enumerate(range(0, steps, STEPS_PER_SAMPLE)):
            rec = read_events(files[used % len(files)])
            u = events_kv(rec.events, rec.sensor_size, STEPS_PER_SAMPLE, n_tokens, dim)
            yield u[: steps - start]

    used = -(-steps // STEPS_PER_SAMPLE)
    return batches(), f"N-MNIST {folder} ({used} samples)"


def nmnist_inputs(folder: Path, steps: int, n_tokens: int, dim: int) -> tuple[np.ndarray, str]:
    """`nmnist_batches` as one array [steps, N, D] (for short runs)."""
    batches, source = nmnist_batches(folder, steps, n_tokens, dim)
    return np.concatenate(list(batches)), source


def lrf_dyn_params(heads: int, head_dim: int, k: int, n_tokens: int, seed: int) -> CoreParams:
    """The quantized core of a freshly initialised (seeded) `lrf_dyn` layer on a N x 1 grid."""
    import torch

    from spikestream.firmware_bridge.quantize import quantize_lrf_dyn
    from spikestream.pipeline.network.attention.lrf_dyn import LRFDyn

    torch.manual_seed(seed)
    return quantize_lrf_dyn(LRFDyn(heads * head_dim, heads, (n_tokens, 1), k=k))


def _repairs(link: Link) -> str:
    s = link.stats
    return (f"retransmits {s.retransmits}, reboots recovered {s.resets_recovered}, "
            f"replayed {s.replayed}")


@contextlib.contextmanager
def progress_reporter(mode: str) -> Iterator[Callable[[int, int, Link], None] | None]:
    """Progress on stderr (`bar`: rich, `lines`: one line per batch, `none`): steps done and
    what the link has had to repair so far."""
    if mode == "none":
        yield None
        return
    if mode == "lines":

        def line(done: int, total: int, link: Link) -> None:
            print(f"hil: {done}/{total} steps, {_repairs(link)}", file=sys.stderr, flush=True)

        yield line
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (
        TextColumn("hil"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("{task.fields[link]}"),
    )
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("steps", total=None, link="")

        def update(done: int, total: int, link: Link) -> None:
            bar.update(task, completed=done, total=total, link=_repairs(link))

        yield update


def run(args: argparse.Namespace) -> int:
    if args.steps < 1:
        raise ValueError("--steps must be >= 1")
    make = random_core_params if args.params == "random" else lrf_dyn_params
    params = make(args.heads, args.head_dim, args.k, args.tokens, seed=args.seed)
    dim = params.dim
    folder = None
    if args.input == "auto":
        folder = _nmnist_dir()
    elif args.input != "random":
        folder = Path(args.input)
        if not folder.is_dir():
            raise FileNotFoundError(f"--input {args.input}: not a folder")
    if folder is not None:  # inputs made batch by batch: memory does not grow with --steps
        inputs, source = nmnist_batches(folder, args.steps, args.tokens, dim)
    else:
        inputs = bernoulli_batches(args.steps, args.tokens, dim, seed=args.seed)
        source = f"Bernoulli k AND v, rate 0.3, seed {args.seed}"
    mode = args.progress
    if mode == "auto":
        mode = "bar" if sys.stderr.isatty() else "none"
    try:
        with (
            Link(args.port, timeout=args.timeout, window=args.window, baudrate=args.baud) as link,
            progress_reporter(mode) as progress,
        ):
            result = run_conformance(link, params, inputs, progress=progress, total=args.steps)
    except (LinkError, SerialException) as e:
        from spikestream.cli import EXIT_DEVICE, error_line

        what = f"link to {args.port} failed: {type(e).__name__}: {error_line(e)}"
        if args.json:  # stdout stays one parseable object
            print(json.dumps({"error": what, "port": args.port, "exit_code": EXIT_DEVICE}))
        print(f"spikestream hil: error: {what}", file=sys.stderr)
        return EXIT_DEVICE
    out = result.as_dict()
    out["input"] = source
    out["shape"] = {"tokens": args.tokens, "dim": dim, "heads": args.heads, "k": args.k}
    out["params"] = f"{args.params}, seed {args.seed}, model hash 0x{params.crc32():08x}"
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for key in ("steps", "bit_exact", "retransmits", "lost", "steps_per_s"):
            v = out[key]
            print(f"{key}: {v:.1f}" if isinstance(v, float) else f"{key}: {v}")
        for key, v in out.items():
            if key not in ("steps", "bit_exact", "retransmits", "lost", "steps_per_s"):
                print(f"{key}: {v:.4g}" if isinstance(v, float) else f"{key}: {v}")
    return 0 if result.bit_exact else 1
