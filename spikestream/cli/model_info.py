"""`spikestream model-info --config NAME --attention KEY [--json]`: parameters, synaptic
operations per timestep (AC vs MAC, measured on a real recording) and the 45 nm energy
estimate (0.9 pJ per AC, 4.6 pJ per MAC) that spiking-transformer papers report."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch

from spikestream.cli.model_args import add_attention_args
from spikestream.cli.output import print_fields
from spikestream.pipeline import SpikingTransformer, create_model, list_configs
from spikestream.pipeline.network.energy import E_AC_PJ, E_MAC_PJ, energy_report

DEFAULT_RECORDING = Path("aedat4") / "sample.aedat4"
#: Timesteps measured unless --timesteps says otherwise: the model's T up to this many.
DEFAULT_MAX_STEPS = 256


def default_recording() -> Path | None:
    """The DVXplorer sample of the real recordings folder, if present."""
    env = os.environ.get("SPIKESTREAM_REAL_DATA")
    roots = [Path(env)] if env else []
    roots.append(Path(__file__).resolve().parents[2].parent / "shared" / "data")
    for root in roots:
        if (root / DEFAULT_RECORDING).is_file():
            return root / DEFAULT_RECORDING
    return None


def recording_frames(path: Path, model: SpikingTransformer, steps: int) -> torch.Tensor:
    """Bin a recording into `steps` equal time bins at the model's input size:
    `[T, 1, P, H, W]` event counts (coordinates scaled to the model's grid; P = 1 sums
    polarities)."""
    import tonic.transforms as tt

    from spikestream.datasets import read_events

    rec = read_events(path)
    ev = np.array(rec.events, copy=True)
    if len(ev) == 0:
        raise ValueError(f"{path}: no events to measure the model on")
    sw, sh, _ = rec.sensor_size
    h, w = model.input_size
    ev["x"] = (ev["x"].astype(np.int64) * w // sw).astype(ev["x"].dtype)
    ev["y"] = (ev["y"].astype(np.int64) * h // sh).astype(ev["y"].dtype)
    frames = tt.ToFrame(sensor_size=(w, h, 2), n_time_bins=steps)(ev)  # [T, 2, H, W]
    x = torch.from_numpy(np.asarray(frames, dtype=np.float32))
    if model.in_channels == 1:
        x = x.sum(1, keepdim=True)
    elif model.in_channels != 2:
        raise ValueError(f"model takes {model.in_channels} input channels; recordings give 2")
    return x.unsqueeze(1)


def checkpoint_frames(path: Path, ck, steps: int) -> tuple[torch.Tensor, str]:
    """The recording binned by the checkpoint's input recipe (as its training data was), at
    most `steps` frames `[T, 1, P, H, W]`, and a note when the recording's sensor differs."""
    from spikestream.datasets import read_events
    from spikestream.pipeline.binning import to_frames

    recipe = ck.recipe
    rec = read_events(path)
    events = recipe.filter_events(rec.events)
    if len(events) == 0:
        raise ValueError(f"{path}: no events to measure the model on")
    params = recipe.frame_params()
    params.pop("start_time", None)  # fixed clip bounds do not apply to another recording
    params.pop("end_time", None)
    params["target_size"] = tuple(recipe.frame_size)
    if ck.model.in_channels == 1:
        params["merge_polarity"] = True
    if tuple(recipe.frame_size) == (rec.sensor_size[1], rec.sensor_size[0]):
        params.pop("target_size")
    frames = to_frames(events, rec.sensor_size, dtype=np.float32, **params)[:steps]
    note = recipe.sensor_mismatch(rec.sensor_size)
    return torch.from_numpy(frames).unsqueeze(1), note or ""


def run(args: argparse.Namespace) -> int:
    ck = None
    if args.checkpoint:
        from spikestream.pipeline import load_for_inference

        ck = load_for_inference(args.checkpoint, attention_kwargs=args.attention_args)
        model = ck.model
        name = f"checkpoint {args.checkpoint}"
    else:
        model = create_model(args.config, args.attention, args.attention_args)
        name = args.config
    steps = args.timesteps or min(model.time_steps, DEFAULT_MAX_STEPS)
    if args.random is not None:
        g = torch.Generator().manual_seed(0)
        shape = (steps, 1, model.in_channels, *model.input_size)
        frames = (torch.rand(shape, generator=g) < args.random).float()
        described = f"random spikes, rate {args.random} (not a recording)"
    else:
        path = Path(args.input) if args.input else default_recording()
        if path is None:
            raise FileNotFoundError(
                "no recording given and none found in $SPIKESTREAM_REAL_DATA or ../shared/data; "
                "pass --input FILE (or --random RATE)"
            )
        if ck is not None:
            frames, note = checkpoint_frames(path, ck, steps)
            described = f"{path.name}, {len(frames)} bins by the recipe ({ck.recipe.describe()})"
            if note:
                print(f"spikestream model-info: warning: {note}", file=sys.stderr)
        else:
            frames = recording_frames(path, model, steps)
            described = f"{path.name}, {steps} time bins"
    report = energy_report(model, frames, name, described).as_dict()
    report["energy_uj_per_sample"] = report["energy_uj_per_step"] * len(frames)
    report["pj_per_ac"], report["pj_per_mac"] = E_AC_PJ, E_MAC_PJ
    print_fields(report, as_json=args.json)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from spikestream.pipeline.network.attention import ATTENTION

    p = sub.add_parser(
        "model-info",
        help="parameters, synaptic operations (AC/MAC) and energy per timestep of a model",
    )
    p.add_argument("--config", default="tiny", choices=list_configs())
    p.add_argument("--attention", default=None, choices=sorted(ATTENTION),
                   help="attention key (default: the config's own, else ssa)")
    add_attention_args(p, what="with --config: over the config's defaults; with "
                       "--checkpoint: over the stored options")
    p.add_argument("--checkpoint", default=None,
                   help="checkpoint to measure: .pt, training folder or shipped name; the "
                        "recording is binned by its input recipe")
    p.add_argument("--input", default=None,
                   help="event recording to measure on (default: the real DVXplorer sample)")
    p.add_argument("--random", type=float, default=None, metavar="RATE",
                   help="use random spike frames of this rate instead of a recording")
    p.add_argument("--timesteps", type=int, default=None,
                   help=f"default: the model's T, at most {DEFAULT_MAX_STEPS}")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)
