"""The papers' own models: their official weights in, our `SpikingTransformer` out, and back.

`import_reference(source, state_dict, **kwargs)` takes an official model's `state_dict` (plain,
or wrapped as `{"state_dict": ...}` / `{"model": ...}`, keys optionally prefixed `module.`)
and the official constructor's keyword arguments under their official names, and returns our
model in eval mode computing the same function: `model(frames[T, B, 2, H, W]).mean(0)` is the
official model's eval-mode logits (the official heads average over T; ours give per-step
logits). `export_reference(source, model)` is the inverse. Sources:

- `spikformer`: ZK-Zhou/spikformer `cifar10dvs/model.py` (our layout `spikformer`, `ssa` with
  the DVS code's scale 0.25). Its `pos_embed` and LayerNorms are never called.
- `sdt`: BICLab/Spike-Driven-Transformer (layout `ms`, `sdsa`), `dvs_mode=False` as in its
  Gesture config. Its `talking_heads` convs are never called.
- `statten`: Intelligent-Computing-Lab-Yale/STAtten (layout `ms`, `statten` in chunk mode,
  with its DVS branch when `dvs_mode`).

Each official state dict is described by a table (`reference_table`) of keys, shapes and the
parameter of ours each one becomes: 1x1 convolutions (`[out, in, 1]` or `[out, in, 1, 1]`)
become our linears' `[out, in]`; everything else keeps its shape. Keys the official forward
never uses are accepted and dropped on import, and written with the official constructors'
initial values on export (LayerNorm weight 1 and bias 0, zeros otherwise).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from spikestream.pipeline.network.model import SpikingTransformer

SOURCES = ("spikformer", "sdt", "statten")

#: The official constructors' arguments as their training scripts set them (module docstring).
OFFICIAL_DEFAULTS: dict[str, dict[str, Any]] = {
    "spikformer": {"img_size_h": 128, "img_size_w": 128, "patch_size": 16, "in_channels": 2,
                   "num_classes": 11, "embed_dims": 256, "num_heads": 16, "mlp_ratios": 4,
                   "depths": 2, "T": 16},
    "sdt": {"img_size_h": 128, "img_size_w": 128, "patch_size": 16, "in_channels": 2,
            "num_classes": 11, "embed_dims": 256, "num_heads": 8, "mlp_ratios": 4, "depths": 2,
            "T": 16, "pooling_stat": "0111", "spike_mode": "lif", "dvs_mode": False},
    "statten": {"img_size_h": 64, "img_size_w": 64, "patch_size": 16, "in_channels": 2,
                "num_classes": 101, "embed_dims": 256, "num_heads": 8, "mlp_ratios": 4,
                "depths": 2, "T": 16, "pooling_stat": "0011", "spike_mode": "lif",
                "dvs_mode": True, "chunk_size": 4, "attention_mode": "STAtten"},
}

#: Keywords the official constructors take that change nothing at inference.
IGNORED = frozenset({"drop_rate", "attn_drop_rate", "drop_path_rate", "qkv_bias", "qk_scale",
                     "norm_layer", "sr_ratios", "TET", "pretrained", "pretrained_cfg",
                     "pretrained_cfg_overlay", "hook", "cml", "layer", "patch_size"})


@dataclass(frozen=True)
class RefParam:
    """One entry of an official state dict: its key and shape, and our parameter or buffer it
    becomes (`None`: the official forward never uses it)."""

    key: str
    shape: tuple[int, ...]
    ours: str | None


def _unwrap(state_dict: Any) -> dict[str, Tensor]:
    """The plain state dict inside a training checkpoint, keys without `module.`."""
    sd = state_dict
    for wrapper in ("state_dict", "model"):
        if isinstance(sd, dict) and wrapper in sd and isinstance(sd[wrapper], dict):
            sd = sd[wrapper]
            break
    if not isinstance(sd, dict) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise ValueError("not a state dict of tensors (nor one wrapped under 'state_dict' or "
                         "'model')")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in sd.items()}


def model_config(source: str, **kwargs: Any) -> dict[str, Any]:
    """Our model config for the official model `source` built with `kwargs` (official names)."""
    if source not in SOURCES:
        raise ValueError(f"unknown reference model {source!r}; one of {', '.join(SOURCES)}")
    known = OFFICIAL_DEFAULTS[source]
    unknown = sorted(set(kwargs) - set(known) - IGNORED)
    if unknown:
        raise ValueError(f"{source}: unknown constructor arguments {unknown}; known: "
                         f"{sorted(set(known) | IGNORED)}")
    a = {**known, **{k: v for k, v in kwargs.items() if k in known}}
    cfg: dict[str, Any] = {
        "input_size": (int(a["img_size_h"]), int(a["img_size_w"])),
        "in_channels": int(a["in_channels"]), "num_classes": int(a["num_classes"]),
        "embed_dim": int(a["embed_dims"]), "depth": int(a["depths"]),
        "heads": int(a["num_heads"]), "time_steps": int(a["T"]),
        "mlp_ratio": int(a["mlp_ratios"]), "pool": "max", "stem_stride": 1,
    }
    if source == "spikformer":
        return {**cfg, "stem_pool": (True,) * 4, "layout": "spikformer", "attention": "ssa",
                "attention_kwargs": {"scale": 0.25}}
    stat = str(a["pooling_stat"])
    if len(stat) != 4 or set(stat) - {"0", "1"}:
        raise ValueError(f"{source}: pooling_stat must be four of 0/1, got {stat!r}")
    if a["spike_mode"] != "lif":
        raise ValueError(f"{source}: spike_mode {a['spike_mode']!r} is not reproduced (lif is)")
    cfg.update(stem_pool=tuple(c == "1" for c in stat), layout="ms")
    if source == "sdt":
        if a["dvs_mode"]:
            raise ValueError("sdt: dvs_mode=True is not reproduced (its Gesture config, "
                             "conf/gesture/2_256_200E_t16.yml, sets dvs_mode False)")
        return {**cfg, "attention": "sdsa", "attention_kwargs": {}}
    if a["attention_mode"] != "STAtten":
        raise ValueError(f"statten: attention_mode {a['attention_mode']!r} is not reproduced "
                         "(STAtten is)")
    return {**cfg, "attention": "statten",
            "attention_kwargs": {"chunk": int(a["chunk_size"]), "mode": "chunk",
                                 "dvs": bool(a["dvs_mode"])}}


def _bn(key: str, ours: str | None, n: int) -> list[RefParam]:
    shapes = {"weight": (n,), "bias": (n,), "running_mean": (n,), "running_var": (n,),
              "num_batches_tracked": ()}
    return [RefParam(f"{key}.{p}", s, None if ours is None else f"{ours}.{p}")
            for p, s in shapes.items()]


def _conv1x1(key: str, ours: str, c_out: int, c_in: int, dims: int, bias: bool
             ) -> list[RefParam]:
    out = [RefParam(f"{key}.weight", (c_out, c_in) + (1,) * dims, f"{ours}.weight")]
    if bias:
        out.append(RefParam(f"{key}.bias", (c_out,), f"{ours}.bias"))
    return out


def reference_table(source: str, **kwargs: Any) -> list[RefParam]:
    """Every entry of the official `source` model's state dict (module docstring)."""
    cfg = model_config(source, **kwargs)
    d, heads, hidden = cfg["embed_dim"], cfg["heads"], cfg["embed_dim"] * cfg["mlp_ratio"]
    table: list[RefParam] = []
    c_in = cfg["in_channels"]
    for i, sfx in enumerate(("", "1", "2", "3")):
        c = d // 2 ** (3 - i)
        table.append(RefParam(f"patch_embed.proj_conv{sfx}.weight", (c, c_in, 3, 3),
                              f"sps.stages.{i}.conv.weight"))
        table += _bn(f"patch_embed.proj_bn{sfx}", f"sps.stages.{i}.bn", c)
        c_in = c
    table.append(RefParam("patch_embed.rpe_conv.weight", (d, d, 3, 3), "sps.rpe.conv.weight"))
    table += _bn("patch_embed.rpe_bn", "sps.rpe.bn", d)
    dims = 1 if source == "spikformer" else 2  # Conv1d on tokens vs Conv2d on maps
    for j in range(cfg["depth"]):
        b, o = f"block.{j}", f"blocks.{j}"
        for n in "qkv":
            table += _conv1x1(f"{b}.attn.{n}_conv", f"{o}.attn.{n}.proj.linear", d, d, dims,
                              bias=False)
            table += _bn(f"{b}.attn.{n}_bn", f"{o}.attn.{n}.proj.bn", d)
        if source != "spikformer":
            table.append(RefParam(f"{b}.attn.talking_heads.weight", (heads, heads, 1), None))
        table += _conv1x1(f"{b}.attn.proj_conv", f"{o}.attn.proj.linear", d, d, dims, bias=True)
        table += _bn(f"{b}.attn.proj_bn", f"{o}.attn.proj.bn", d)
        table += _conv1x1(f"{b}.mlp.fc1_conv", f"{o}.fc1.linear", hidden, d, dims, bias=True)
        table += _bn(f"{b}.mlp.fc1_bn", f"{o}.fc1.bn", hidden)
        table += _conv1x1(f"{b}.mlp.fc2_conv", f"{o}.fc2.linear", d, hidden, dims, bias=True)
        table += _bn(f"{b}.mlp.fc2_bn", f"{o}.fc2.bn", d)
        if source == "spikformer":
            for norm in ("norm1", "norm2"):
                table += [RefParam(f"{b}.{norm}.{p}", (d,), None) for p in ("weight", "bias")]
    table.append(RefParam("head.weight", (cfg["num_classes"], d), "head.weight"))
    table.append(RefParam("head.bias", (cfg["num_classes"],), "head.bias"))
    if source == "spikformer":
        gh, gw = (s // 16 for s in cfg["input_size"])
        table.append(RefParam("pos_embed", (1, gh * gw, d), None))
        table += [RefParam(f"norm.{p}", (d,), None) for p in ("weight", "bias")]
    return table


def import_reference(source: str, state_dict: Any, **kwargs: Any) -> SpikingTransformer:
    """Our model, in eval mode, with the weights of the official `source` model built with
    `kwargs` (module docstring). Raises `ValueError` naming missing, unexpected or misshapen
    keys."""
    sd = _unwrap(state_dict)
    table = reference_table(source, **kwargs)
    model = SpikingTransformer(model_config(source, **kwargs))
    ours = model.state_dict()
    expected = {p.key for p in table}
    missing = [p.key for p in table if p.ours is not None and p.key not in sd]
    unexpected = sorted(set(sd) - expected)
    if missing or unexpected:
        def listed(what: str, keys: list[str]) -> str:
            return f"{what} {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"

        parts = [listed(w, k) for w, k in (("missing", missing), ("unexpected", unexpected)) if k]
        raise ValueError(f"{source}: the state dict does not fit the model ({'; '.join(parts)})")
    new = {}
    for p in table:
        if p.ours is None:
            continue
        value = sd[p.key]
        if tuple(value.shape) != p.shape:
            raise ValueError(f"{source}: {p.key} has shape {tuple(value.shape)}, the model "
                             f"built with these arguments has {p.shape}")
        new[p.ours] = value.reshape(ours[p.ours].shape).to(ours[p.ours].dtype)
    learned = {n for n, _ in model.named_parameters()} | {
        n for n in ours if n.endswith(("running_mean", "running_var", "num_batches_tracked"))}
    left = sorted(learned - set(new))
    if left:  # the table covers every parameter and BN statistic of ours (neurons: constants)
        raise ValueError(f"{source}: no official weight for {left[:5]}")
    model.load_state_dict({**ours, **new})
    return model.eval()


def reference_kwargs(source: str, model: SpikingTransformer) -> dict[str, Any]:
    """The official constructor's arguments that build `model`'s architecture."""
    cfg = model.config
    kw: dict[str, Any] = {
        "img_size_h": cfg["input_size"][0], "img_size_w": cfg["input_size"][1],
        "in_channels": cfg["in_channels"], "num_classes": cfg["num_classes"],
        "embed_dims": cfg["embed_dim"], "num_heads": cfg["heads"], "mlp_ratios": cfg["mlp_ratio"],
        "depths": cfg["depth"], "T": cfg["time_steps"],
    }
    if source != "spikformer":
        kw["pooling_stat"] = "".join("1" if p else "0" for p in cfg["stem_pool"])
    if source == "statten":
        kw.update(chunk_size=cfg["attention_kwargs"].get("chunk", 4),
                  dvs_mode=bool(cfg["attention_kwargs"].get("dvs", False)))
    want = model_config(source, **kw)
    mine = {k: cfg[k] for k in want}
    want = {**want, "input_size": list(want["input_size"]),
            "stem_pool": [bool(p) for p in want["stem_pool"]]}
    mine["attention_kwargs"] = {**want["attention_kwargs"], **mine["attention_kwargs"]}
    if mine != want:
        diff = sorted(k for k in want if want[k] != mine[k])
        raise ValueError(f"the model is not a {source} architecture (differs in {diff})")
    return kw


def export_reference(source: str, model: SpikingTransformer) -> dict[str, Tensor]:
    """The official `source` model's state dict holding `model`'s weights (the inverse of
    `import_reference`; unused entries at the official initial values)."""
    table = reference_table(source, **reference_kwargs(source, model))
    ours = model.state_dict()
    out: dict[str, Tensor] = {}
    for p in table:
        if p.ours is not None:
            out[p.key] = ours[p.ours].detach().clone().reshape(p.shape)
        elif p.key.endswith(".weight") and ".norm" in f".{p.key}":
            out[p.key] = torch.ones(p.shape)
        else:
            out[p.key] = torch.zeros(p.shape)
    return out


def reference_parameter_count(source: str, used_only: bool = False, **kwargs: Any) -> int:
    """Parameters of the official model (trainable entries: not BN statistics), all or those
    its forward uses."""
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    return sum(math.prod(p.shape) for p in reference_table(source, **kwargs)
               if not p.key.endswith(buffers) and (p.ours is not None or not used_only))
