"""Checkpoints: weights via `torch.save(state_dict)` (loaded with `weights_only=True`) beside
a JSON file holding the model config, the input recipe and any extra metadata. Nothing is
unpickled, and the config is checked against limits before a model is built from it.

A checkpoint is named by a `.pt` path, a training output folder (its `best.pt`) or the name of
a shipped checkpoint (`nmnist`, `gestures`); `resolve_checkpoint` is the one place that turns
such a name into a path.
"""

from __future__ import annotations

import json
import math
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from spikestream.pipeline.recipe import InputRecipe

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

# Limits a checkpoint's config must keep before anything is built from it (a forged JSON must
# not make us allocate terabytes): far above every shipped or paper configuration.
CONFIG_LIMITS: dict[str, int] = {
    "embed_dim": 8192,
    "depth": 128,
    "heads": 256,
    "num_classes": 100_000,
    "in_channels": 16,
    "time_steps": 4096,
    "mlp_ratio": 64,
    "input_side": 4096,
    "stem_stages": 16,
    "attention_int": 4096,  # any integer among the attention's options (k, chunk, dilations)
    "attention_list": 64,  # any list among them
}
#: Largest number of activations one timestep's stem may hold (1 GiB of float32): a config
#: describing more (a huge input with a wide stem) is refused before anything is built.
MAX_STEP_ACTIVATIONS = 1 << 28
#: Bytes a parameter takes at least in a weights file (half precision).
MIN_BYTES_PER_PARAMETER = 2


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded: bad JSON, config out of limits, weights that do not
    fit the config or cannot be read safely."""


@dataclass
class LoadedCheckpoint:
    """A model ready to run, with what it needs to be fed: its input recipe and class names."""

    model: Any
    recipe: InputRecipe
    classes: list[str] | None
    path: Path
    extra: dict[str, Any]


def config_path(path: str | Path) -> Path:
    """The JSON file that goes with weights at `path` (`model.pt` -> `model.json`)."""
    return Path(path).with_suffix(".json")


def shipped_weights() -> list[str]:
    """Names of the checkpoints shipped with the package (`pipeline/weights/<name>.pt`)."""
    return sorted(p.stem for p in WEIGHTS_DIR.glob("*.pt") if p.with_suffix(".json").is_file())


def resolve_checkpoint(path_or_name: str | Path) -> Path:
    """The weights path of a `.pt` path, a training output folder or a shipped name."""
    p = Path(path_or_name)
    if p.is_file():
        return p
    if p.is_dir():
        if (p / "best.pt").is_file():
            return p / "best.pt"
        raise FileNotFoundError(f"{p}: a folder without best.pt (not a training output folder)")
    shipped = WEIGHTS_DIR / f"{path_or_name}.pt"
    if "/" not in str(path_or_name) and shipped.is_file():
        return shipped
    raise FileNotFoundError(
        f"no checkpoint {str(path_or_name)!r}: not a file, not a training folder with best.pt, "
        f"and not a shipped name (shipped: {', '.join(shipped_weights()) or 'none'})"
    )


def save_checkpoint(
    path: str | Path, model: Any, extra: dict[str, Any] | None = None,
    recipe: InputRecipe | None = None,
) -> tuple[Path, Path]:
    """Write weights to `path` and `{"config", "recipe", "extra"}` to `path` with suffix
    `.json`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {"format": "spikestream-checkpoint-1", "config": model.config}
    if recipe is not None:
        meta["recipe"] = recipe.to_dict()
    meta["extra"] = extra or {}
    text = json.dumps(meta, indent=2)  # fails early if `extra` is not JSON-able
    torch.save(model.state_dict(), path)
    cpath = config_path(path)
    cpath.write_text(text + "\n")
    return path, cpath


def validate_config(config: Any, where: str = "config") -> dict[str, Any]:
    """Check a model config's types and sizes against `CONFIG_LIMITS`; returns it."""
    if not isinstance(config, dict):
        raise CheckpointError(f"{where}: the model config must be an object, got "
                              f"{type(config).__name__}")
    for key in ("embed_dim", "depth", "heads", "num_classes", "in_channels", "time_steps",
                "mlp_ratio"):
        if key not in config:
            continue
        v = config[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                or int(v) != v:
            raise CheckpointError(f"{where}: {key} must be an integer, got {v!r}")
        if not 1 <= v <= CONFIG_LIMITS[key]:
            raise CheckpointError(f"{where}: {key} = {v} outside 1..{CONFIG_LIMITS[key]}")
    size = config.get("input_size")
    if size is not None:
        if (not isinstance(size, (list, tuple)) or len(size) != 2
                or not all(isinstance(s, int) and not isinstance(s, bool) for s in size)
                or not all(1 <= s <= CONFIG_LIMITS["input_side"] for s in size)):
            raise CheckpointError(f"{where}: input_size must be two integers in "
                                  f"1..{CONFIG_LIMITS['input_side']}, got {size!r}")
    _check_sizes(config, where)
    return config


def _check_sizes(config: dict[str, Any], where: str) -> None:
    """The stem's stages and activations and the attention's options within limits."""
    from spikestream.pipeline.network.model import normalize_config

    stem = config.get("stem_pool", ())
    if not isinstance(stem, (list, tuple)) or len(stem) > CONFIG_LIMITS["stem_stages"]:
        raise CheckpointError(f"{where}: stem_pool must be a list of at most "
                              f"{CONFIG_LIMITS['stem_stages']} flags")
    kwargs = config.get("attention_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise CheckpointError(f"{where}: attention_kwargs must be an object")
    for key, v in kwargs.items():
        items = v if isinstance(v, (list, tuple)) else [v]
        if len(items) > CONFIG_LIMITS["attention_list"] or any(
                isinstance(i, (int, float)) and not isinstance(i, bool)
                and not abs(i) <= CONFIG_LIMITS["attention_int"] for i in items):
            raise CheckpointError(f"{where}: attention_kwargs.{key} = {v!r} outside the limits "
                                  f"(numbers up to {CONFIG_LIMITS['attention_int']}, lists up "
                                  f"to {CONFIG_LIMITS['attention_list']})")
    try:
        cfg = normalize_config(config)
    except (TypeError, ValueError, KeyError) as e:
        raise CheckpointError(f"{where}: bad model config ({e})") from None
    n = len(cfg["stem_pool"])
    h, w = (s // cfg["stem_stride"] for s in cfg["input_size"])
    acts = 0
    for i, down in enumerate(cfg["stem_pool"]):
        acts += max(1, cfg["embed_dim"] // 2 ** (n - 1 - i)) * h * w
        h, w = (h // 2, w // 2) if down else (h, w)
    if acts > MAX_STEP_ACTIVATIONS:
        raise CheckpointError(f"{where}: a timestep of this model's stem holds {acts} "
                              f"activations (input {cfg['input_size']}, embed_dim "
                              f"{cfg['embed_dim']}); the limit is {MAX_STEP_ACTIVATIONS}")


def min_parameters(config: dict[str, Any]) -> int:
    """A lower bound of the parameters of the model `config` describes (its MLPs and head)."""
    from spikestream.pipeline.network.model import normalize_config

    cfg = normalize_config(config)
    d = cfg["embed_dim"]
    return cfg["depth"] * 2 * cfg["mlp_ratio"] * d * d + d * cfg["num_classes"]


def check_weights_size(path: Path, config: dict[str, Any]) -> None:
    """Refuse a config whose model could not fit in the weights file at `path` (before it is
    built: the memory a model takes follows the weights present, not what the JSON claims)."""
    need = min_parameters(config)
    have = path.stat().st_size
    if need * MIN_BYTES_PER_PARAMETER > have:
        raise CheckpointError(
            f"{path}: not loadable as the weights of {config_path(path).name}: it holds {have} "
            f"bytes, and the config describes a model of at least {need} parameters")


def read_checkpoint_json(path: str | Path) -> dict[str, Any]:
    """The JSON beside the weights at `path` (checked to be a checkpoint's)."""
    cpath = config_path(path)
    if not cpath.is_file():
        raise FileNotFoundError(f"checkpoint config not found: {cpath} (written beside {path})")
    try:
        meta = json.loads(cpath.read_text())
    except RecursionError:
        raise CheckpointError(f"{cpath}: not a spikestream checkpoint config (nested too "
                              "deeply)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{cpath}: not a spikestream checkpoint config ({e})") from None
    if not isinstance(meta, dict) or "config" not in meta:
        raise CheckpointError(f"{cpath}: not a spikestream checkpoint config (no 'config')")
    validate_config(meta["config"], str(cpath))
    return meta


def checkpoint_recipe(meta: dict[str, Any], config: dict[str, Any]) -> InputRecipe:
    """The input recipe of a checkpoint JSON: its `recipe`, or for checkpoints written before
    recipes existed, one derived from `extra.meta` (sensor size, binning, frame size, frame
    parameters), with no live equivalent of per-sample binnings."""
    if meta.get("recipe") is not None:
        try:
            recipe = InputRecipe.from_dict(meta["recipe"])
        except (KeyError, TypeError, ValueError, OverflowError) as e:
            raise CheckpointError(f"bad input recipe ({e})") from None
        return check_recipe(recipe, config)
    info = (meta.get("extra") or {}).get("meta") or {}
    binning = dict(info.get("binning") or {})
    frame_size = binning.pop("frame_size", None) or config.get("input_size")
    params = info.get("frame_params") or {}
    h, w = (int(v) for v in (config.get("input_size") or frame_size))
    sensor = info.get("sensor_size") or [w, h, int(config.get("in_channels", 2))]
    if not any(binning.get(m) is not None for m in ("time_window", "n_time_bins",
                                                    "event_count", "n_event_bins")):
        raise CheckpointError("the checkpoint holds no input recipe and no binning to derive "
                              "one from: give the bin length (--bin-ms)")
    try:
        return InputRecipe.from_binning(binning, sensor, frame_size,
                                        start_time=params.get("start_time"),
                                        end_time=params.get("end_time"))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"cannot derive an input recipe ({e})") from None


def check_recipe(recipe: InputRecipe, config: dict[str, Any]) -> InputRecipe:
    """The recipe must feed this model: frames of its input size, a sensor the event fields can
    address, and at most `CONFIG_LIMITS["time_steps"]` bins per sample."""
    from spikestream.events import check_sensor_size
    from spikestream.pipeline.network.model import normalize_config

    size = list(normalize_config(config)["input_size"])
    if list(recipe.frame_size) != size:
        raise CheckpointError(f"the input recipe's frame size {list(recipe.frame_size)} is not "
                              f"the model's input size {size}")
    try:
        check_sensor_size(recipe.sensor_size, source="the input recipe")
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    if recipe.per_sample and recipe.value > CONFIG_LIMITS["time_steps"]:
        raise CheckpointError(f"the input recipe cuts a sample into {recipe.value} bins; the "
                              f"limit is {CONFIG_LIMITS['time_steps']}")
    return recipe


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu",
    attention_kwargs: dict[str, Any] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Rebuild the model from the JSON config and load its weights; returns `(model, extra)`.

    `path` is anything `resolve_checkpoint` takes; `attention_kwargs` go over the stored
    attention options (e.g. STAtten's `mode`). The model is returned in eval mode."""
    from spikestream.pipeline import SpikingTransformer

    path = resolve_checkpoint(path)
    meta = read_checkpoint_json(path)
    config = dict(meta["config"])
    if attention_kwargs:
        stored = config.get("attention_kwargs") or {}
        if not isinstance(stored, dict):
            raise CheckpointError(f"{config_path(path)}: attention_kwargs is not an object")
        config["attention_kwargs"] = {**stored, **attention_kwargs}
    check_weights_size(path, config)
    try:
        model = SpikingTransformer(config)
    except (TypeError, ValueError, KeyError) as e:
        raise CheckpointError(f"{config_path(path)}: bad model config ({e})") from None
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: not loadable as plain weights ({first})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: holds {type(state).__name__}, not a state dict")
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise CheckpointError(f"{path}: weights do not fit the config ({first})") from None
    return model.eval(), dict(meta.get("extra", {}))


def load_for_inference(path_or_name: str | Path,
                       map_location: str | torch.device = "cpu",
                       attention_kwargs: dict[str, Any] | None = None) -> LoadedCheckpoint:
    """The model, its input recipe and class names: what every command that runs a
    checkpoint starts from (`attention_kwargs` as in `load_checkpoint`)."""
    path = resolve_checkpoint(path_or_name)
    model, extra = load_checkpoint(path, map_location, attention_kwargs)
    meta = read_checkpoint_json(path)
    try:
        recipe = checkpoint_recipe(meta, meta["config"])
    except CheckpointError as e:
        raise CheckpointError(f"{config_path(path)}: {e}") from None
    classes = (extra.get("meta") or {}).get("classes")
    classes = [str(c) for c in classes] if classes else None
    if classes is not None and len(classes) != model.num_classes:
        classes = None
    return LoadedCheckpoint(model, recipe, classes, path, extra)
