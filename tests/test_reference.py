"""`import_reference` / `export_reference`: the official models' state-dict layouts round-trip
exactly, their parameter counts, and the imported models against a second implementation
written in the official models' own tensor layout (`[T, B, C, H, W]` maps, 1x1 convolutions,
spikingjelly's multistep LIF as the official code uses it, heads averaged over T), on random
weights where every neuron layer fires."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from spikestream.pipeline import create_model, export_reference, import_reference
from spikestream.pipeline.network.reference import (
    SOURCES,
    reference_parameter_count,
    reference_table,
)

COUNTS = {  # (all parameters, parameters the official forward uses)
    "spikformer": (2_585_867, 2_566_923),
    "sdt": (2_567_051, 2_566_923),
    "statten": (2_590_181, 2_590_053),
}
CONFIG = {"spikformer": "spikformer-2-256", "sdt": "sdt-2-256", "statten": "statten-2-256"}
SMALL = {"img_size_h": 32, "img_size_w": 32, "embed_dims": 32, "num_heads": 4, "depths": 2,
         "T": 4, "num_classes": 5}
SMALL_BY_SOURCE = {"spikformer": {}, "sdt": {"pooling_stat": "0111"},
                   "statten": {"pooling_stat": "0011", "chunk_size": 2}}


def random_official(source: str, seed: int = 0, **kwargs) -> dict[str, torch.Tensor]:
    """An official-layout state dict with random values; batch norms shifted so that the
    neurons after them fire."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for p in reference_table(source, **kwargs):
        if p.key.endswith("num_batches_tracked"):
            sd[p.key] = torch.tensor(int(torch.randint(0, 1000, (), generator=g)))
        elif p.key.endswith("running_var"):
            sd[p.key] = torch.rand(p.shape, generator=g) * 0.5 + 0.05
        elif p.key.endswith("running_mean"):
            sd[p.key] = torch.rand(p.shape, generator=g) * 0.4 - 0.2
        elif "_bn." in p.key and p.key.endswith(".weight"):
            sd[p.key] = torch.rand(p.shape, generator=g) + 0.5
        elif "_bn." in p.key and p.key.endswith(".bias"):
            sd[p.key] = torch.rand(p.shape, generator=g) * 1.5 + 0.5
        else:
            fan_in = max(1, int(torch.tensor(p.shape[1:]).prod())) if len(p.shape) > 1 else 1
            sd[p.key] = torch.randn(p.shape, generator=g) / fan_in ** 0.5
    return sd


@pytest.mark.parametrize("source", SOURCES)
def test_parameter_counts(source):
    total, used = COUNTS[source]
    assert reference_parameter_count(source) == total
    assert reference_parameter_count(source, used_only=True) == used
    assert sum(p.numel() for p in create_model(CONFIG[source]).parameters()) == used


@pytest.mark.parametrize("source", SOURCES)
def test_import_export_round_trip(source):
    kwargs = {**SMALL, **SMALL_BY_SOURCE[source]}
    sd = random_official(source, **kwargs)
    wrapped = {"state_dict": {f"module.{k}": v for k, v in sd.items()}}
    model = import_reference(source, wrapped, **kwargs, drop_path_rate=0.1, TET=False)
    assert not model.training
    back = export_reference(source, model)
    assert set(back) == set(sd)
    for p in reference_table(source, **kwargs):
        assert back[p.key].shape == sd[p.key].shape, p.key
        if p.ours is not None:
            assert torch.equal(back[p.key], sd[p.key]), p.key
    again = import_reference(source, {"model": back}, **kwargs)
    for k, v in model.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k


def test_import_refuses_what_does_not_fit():
    sd = random_official("sdt", **SMALL)
    with pytest.raises(ValueError, match="unknown constructor arguments"):
        import_reference("sdt", sd, **SMALL, window=3)
    with pytest.raises(ValueError, match="unexpected"):
        import_reference("sdt", {**sd, "extra.weight": torch.zeros(1)}, **SMALL)
    with pytest.raises(ValueError, match="missing"):
        import_reference("sdt", {k: v for k, v in sd.items() if k != "head.bias"}, **SMALL)
    with pytest.raises(ValueError, match="shape"):
        import_reference("sdt", sd, **{**SMALL, "num_classes": 7})
    with pytest.raises(ValueError, match="dvs_mode=True is not reproduced"):
        import_reference("sdt", sd, **SMALL, dvs_mode=True)


# --- a second implementation, in the official models' tensor layout ------------------------

def lif(x: torch.Tensor, v_th: float = 1.0) -> torch.Tensor:
    """The neuron the official models use: spikingjelly's multistep LIF (tau 2, hard reset to
    0, reset detached), fresh state, over the leading axis."""
    neuron = pytest.importorskip(
        "spikingjelly.clock_driven.neuron",
        reason="spikingjelly==0.0.0.0.14 is not installed (make install adds it with --no-deps)")
    return neuron.MultiStepLIFNode(tau=2.0, v_threshold=v_th, detach_reset=True)(x)


def tb(fn, x):
    """Apply `fn` to `[T, B, ...]` as one `[T*B, ...]` batch."""
    return fn(x.flatten(0, 1)).unflatten(0, x.shape[:2])


def conv_bn(sd, conv, bn, x, padding=0):
    w = sd[f"{conv}.weight"]
    op = F.conv1d if w.dim() == 3 else F.conv2d
    y = op(x, w, sd.get(f"{conv}.bias"), padding=padding)
    return F.batch_norm(y, sd[f"{bn}.running_mean"], sd[f"{bn}.running_var"], sd[f"{bn}.weight"],
                        sd[f"{bn}.bias"], False, 0.0, 1e-5)


def heads(x, h):
    """`[T, B, C, N]` -> `[T, B, h, N, d]`."""
    t, b, c, n = x.shape
    return x.transpose(-1, -2).reshape(t, b, n, h, c // h).permute(0, 1, 3, 2, 4)


def unheads(x):
    """`[T, B, h, N, d]` -> `[T, B, C, N]`."""
    t, b, h, n, d = x.shape
    return x.transpose(3, 4).reshape(t, b, h * d, n)


def official_logits(source: str, sd, x, kw) -> torch.Tensor:
    """Eval-mode logits `[B, classes]` of the official model for `x[T, B, 2, H, W]`."""
    h = kw["num_heads"]
    stat = "1111" if source == "spikformer" else kw["pooling_stat"]
    pool = lambda z: F.max_pool2d(z, 3, 2, 1)  # noqa: E731
    sfx = ("", "1", "2", "3")
    for i in range(3 if source != "spikformer" else 4):
        x = lif(tb(lambda z, i=i: conv_bn(sd, f"patch_embed.proj_conv{sfx[i]}",
                                          f"patch_embed.proj_bn{sfx[i]}", z, 1), x))
        if stat[i] == "1":
            x = tb(pool, x)
    if source == "spikformer":
        x = x + lif(tb(lambda z: conv_bn(sd, "patch_embed.rpe_conv", "patch_embed.rpe_bn", z, 1),
                       x))
    else:
        x = tb(lambda z: conv_bn(sd, "patch_embed.proj_conv3", "patch_embed.proj_bn3", z, 1), x)
        if stat[3] == "1":
            x = tb(pool, x)
        x = x + tb(lambda z: conv_bn(sd, "patch_embed.rpe_conv", "patch_embed.rpe_bn", z, 1),
                   lif(x))
    t, b, c, gh, gw = x.shape
    for j in range(kw["depths"]):
        p = f"block.{j}."

        def proj(name, z, p=p):
            return tb(lambda u: conv_bn(sd, f"{p}{name}_conv", f"{p}{name}_bn", u), z)

        if source == "spikformer":  # x[T, B, C, N]
            x = x.flatten(3) if x.dim() == 5 else x
            q, k, v = (heads(lif(proj(f"attn.{n}", x)), h) for n in "qkv")
            a = lif(unheads((q @ k.transpose(-1, -2)) @ v * 0.25), 0.5)
            x = x + lif(proj("attn.proj", a))
            x = x + lif(proj("mlp.fc2", lif(proj("mlp.fc1", x))))
            continue
        # x[T, B, C, H, W]
        s = lif(x)
        q, k, v = (lif(proj(f"attn.{n}", s)) for n in "qkv")
        if source == "statten" and kw.get("dvs_mode", True):
            q, k, v = (tb(lambda z: F.max_pool2d(z, 3, 1, 1), m) for m in (q, k, v))
        q, k, v = (heads(m.flatten(3), h) for m in (q, k, v))
        if source == "sdt":
            y = unheads(q * lif((k * v).sum(-2, keepdim=True), 0.5))
        else:
            cs = kw["chunk_size"]
            n, d = q.shape[-2:]
            # [T, B, h, N, d] -> [T/c, B, h, c*N, d]: the c*N tokens of a chunk attend together
            qc, kc, vc = (m.reshape(t // cs, cs, b, h, n, d).permute(0, 2, 3, 1, 4, 5)
                          .reshape(t // cs, b, h, cs * n, d) for m in (q, k, v))
            yc = qc @ (kc.transpose(-1, -2) @ vc) / (n * cs)
            y = yc.reshape(t // cs, b, h, cs, n, d).permute(0, 3, 1, 2, 4, 5).reshape(t, b, h, n, d)
            y = lif(unheads(y), 0.5)
            if kw.get("dvs_mode", True):
                xp = tb(lambda z: F.max_pool2d(z, 3, 1, 1), s).flatten(3)
                y = y * xp + xp
        x = x + proj("attn.proj", y.reshape(t, b, c, gh, gw))
        x = x + proj("mlp.fc2", lif(proj("mlp.fc1", lif(x))))
    feats = x.flatten(3).mean(3)
    if source != "spikformer":
        return F.linear(lif(feats), sd["head.weight"], sd["head.bias"]).mean(0)
    return F.linear(feats.mean(0), sd["head.weight"], sd["head.bias"])


@pytest.mark.parametrize("source", SOURCES)
def test_imported_model_computes_the_official_function(source):
    kw = {**SMALL, **SMALL_BY_SOURCE[source]}
    sd = random_official(source, seed=1, **kw)
    model = import_reference(source, sd, **kw)
    g = torch.Generator().manual_seed(2)
    x = (torch.rand(4, 2, 2, 32, 32, generator=g) < 0.2).float()
    with torch.no_grad():
        ours = model(x)
        want = official_logits(source, sd, x, kw)
        torch.testing.assert_close(ours.mean(0), want, rtol=0, atol=1e-4)
        assert want.abs().max() > 1e-2  # not a dead network
        if model.causal:  # stepping gives the same per-step logits
            state = model.init_state(2)
            steps = []
            for frame in x:
                logits, state = model.step(frame, state)
                steps.append(logits)
            torch.testing.assert_close(torch.stack(steps), ours, rtol=1e-5, atol=1e-5)
        else:
            assert source == "statten"  # chunk mode attends to later steps of its chunk


def test_cli_import_weights(tmp_path, capsys):
    import argparse
    import json

    from spikestream.cli import main
    from spikestream.pipeline import load_for_inference

    kw = {**SMALL, **SMALL_BY_SOURCE["sdt"]}
    sd = random_official("sdt", seed=3, **kw)
    src = tmp_path / "sdt.pth"
    torch.save({"model": sd}, src)
    rc = main(["import-weights", "--from", "sdt", str(src), str(tmp_path / "out"),
               "--kwargs", json.dumps(kw), "--json"])
    assert rc == 0
    assert json.loads(capsys.readouterr().out)["parameters"] == sum(
        p.numel() for p in create_model("sdt-2-256", embed_dim=32, heads=4, num_classes=5,
                                        input_size=(32, 32)).parameters())
    ck = load_for_inference(tmp_path / "out")
    assert (ck.recipe.mode, ck.recipe.value, ck.recipe.frame_size) == ("n_event_bins", 4,
                                                                     (32, 32))
    want = import_reference("sdt", sd, **kw)
    for k, v in want.state_dict().items():
        assert torch.equal(ck.model.state_dict()[k], v), k
    torch.save({"model": sd, "args": argparse.Namespace(lr=1.0)}, tmp_path / "pickled.pth")
    rc = main(["import-weights", "--from", "sdt", str(tmp_path / "pickled.pth"),
               str(tmp_path / "out2"), "--kwargs", json.dumps(kw)])
    assert rc == 2 and "not loadable as plain weights" in capsys.readouterr().err
    assert not (tmp_path / "out2").exists()


@pytest.mark.parametrize("source", SOURCES)
def test_full_size_models_compute_the_official_function(source):
    """The papers' settings themselves (2 blocks, 256 channels, T = 16, full input size)."""
    from spikestream.pipeline.network.reference import OFFICIAL_DEFAULTS

    kw = dict(OFFICIAL_DEFAULTS[source])
    sd = random_official(source, seed=4, **kw)
    model = import_reference(source, sd, **kw)
    g = torch.Generator().manual_seed(5)
    x = (torch.rand(kw["T"], 1, 2, kw["img_size_h"], kw["img_size_w"], generator=g) < 0.1).float()
    with torch.no_grad():
        torch.testing.assert_close(model(x).mean(0), official_logits(source, sd, x, kw),
                                   rtol=0, atol=1e-4)
