"""Checkpoints: weights via `torch.save(state_dict)` (loaded with `weights_only=True`) beside
a JSON file holding the model config and any extra metadata. Nothing is unpickled."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from spikestream.pipeline.network.model import SpikingTransformer


def config_path(path: str | Path) -> Path:
    """The JSON file that goes with weights at `path` (`model.pt` -> `model.json`)."""
    return Path(path).with_suffix(".json")


def save_checkpoint(
    path: str | Path, model: SpikingTransformer, extra: dict[str, Any] | None = None
) -> tuple[Path, Path]:
    """Write weights to `path` and `{"config", "extra"}` to `path` with suffix `.json`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": "spikestream-checkpoint-1", "config": model.config, "extra": extra or {}}
    text = json.dumps(meta, indent=2)  # fails early if `extra` is not JSON-able
    torch.save(model.state_dict(), path)
    cpath = config_path(path)
    cpath.write_text(text + "\n")
    return path, cpath


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[SpikingTransformer, dict[str, Any]]:
    """Rebuild the model from the JSON config and load its weights; returns `(model, extra)`.

    The model is returned in eval mode."""
    path = Path(path)
    cpath = config_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint weights not found: {path}")
    if not cpath.is_file():
        raise FileNotFoundError(f"checkpoint config not found: {cpath} (written beside {path})")
    try:
        meta = json.loads(cpath.read_text())
        config = meta["config"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{cpath}: not a spikestream checkpoint config ({e})") from None
    model = SpikingTransformer(config)
    state = torch.load(path, map_location=map_location, weights_only=True)
    model.load_state_dict(state)
    return model.eval(), dict(meta.get("extra", {}))
