"""The compiled (traced, frozen) step reproduces eager `model.step` on real-looking streams."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_helpers import excite

from spikestream.devices import gesture_clip
from spikestream.pipeline import create_model, make_step
from spikestream.pipeline.binning import to_frames
from spikestream.pipeline.engines import compile_step
from spikestream.pipeline.network.state import flat_state
from spikestream.pipeline.recipe import InputRecipe
from spikestream.pipeline.streaming import Sink, StreamPolicy, run_stream

SIZE = (128, 128)


@pytest.fixture(scope="module")
def clip_frames() -> torch.Tensor:
    """10 ms event-count frames of one simulated person performing a gesture, at 128x128."""
    events = gesture_clip(4, duration_s=1.2, sensor_size=(128, 128, 2), seed=3)
    frames = to_frames(events, (128, 128, 2), time_window=10_000)
    assert frames.shape[0] >= 100 and frames.sum() > 0
    return torch.from_numpy(frames.astype(np.float32))[:, None]


@pytest.mark.parametrize("key", ["ssa", "lrf_dyn"])
def test_compiled_step_matches_eager_over_a_gesture_clip(key, clip_frames):
    torch.manual_seed(0)
    model = excite(create_model("tiny", key, input_size=SIZE))
    step = compile_step(model, clip_frames[0])
    assert step.mode == "frozen"
    eager = fast = model.init_state(1)
    outputs = []
    with torch.inference_mode():
        for frame in clip_frames:
            want, new_eager = model.step(frame, eager)
            got, fast = step(frame, fast)
            assert torch.allclose(got, want, rtol=0, atol=1e-5)
            mine, theirs = flat_state(fast), flat_state(new_eager)
            assert mine.keys() == theirs.keys()
            for k in theirs:  # membranes equal, so every spike (a threshold crossing) is too
                assert torch.equal(mine[k], theirs[k]), k
            eager = new_eager
            outputs.append(want)
    assert torch.stack(outputs).std(dim=0).max() > 0  # the clip drives the network


class _BranchyModel(torch.nn.Module):
    """A model whose step takes a data-dependent Python branch, which a trace cannot keep."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = create_model("tiny", input_size=(32, 32))
        self.in_channels, self.input_size = 2, (32, 32)
        self.num_classes = self.inner.num_classes

    def init_state(self, batch: int):
        return self.inner.init_state(batch)

    def step(self, frame, state):
        logits, state = self.inner.step(frame, state)
        if float(frame.sum()) > 0:  # traced once on the empty frame: this branch is lost
            logits = logits + 1.0
        return logits, state


def test_compile_step_falls_back_to_eager_when_the_trace_differs():
    model = _BranchyModel().eval()
    with pytest.warns(RuntimeWarning, match="does not reproduce"):
        step = compile_step(model, torch.zeros(1, 2, 32, 32))
    assert step.mode == "eager"
    frame = torch.ones(1, 2, 32, 32)
    with torch.inference_mode():
        got, _ = step(frame, model.init_state(1))
        want, _ = model.step(frame, model.init_state(1))
    assert torch.equal(got, want)


def test_compiled_step_rejects_frames_of_another_shape():
    model = create_model("tiny", input_size=(32, 32)).eval()
    step = compile_step(model, torch.zeros(1, 2, 32, 32))
    with pytest.raises(ValueError, match="shape"):
        step(torch.zeros(1, 2, 16, 16), model.init_state(1))


@pytest.mark.parametrize("engine", ["torchscript", "numba"])
def test_run_stream_engines_give_the_eager_decisions(engine):
    events = gesture_clip(1, duration_s=0.6, sensor_size=(64, 64, 2), seed=5)
    packets = np.array_split(events, 40)
    torch.manual_seed(1)
    model = excite(create_model("tiny", "lrf_dyn" if engine == "torchscript" else "ssa"))
    logits = {}
    for name in ("eager", engine):
        seen = []
        step = make_step(model, torch.zeros(1, 2, 64, 64), name)
        recipe = InputRecipe.from_binning({"time_window": 10_000}, (64, 64, 2), (64, 64))
        result = run_stream(iter(packets), step, recipe, policy=StreamPolicy(queue="block"),
                            sinks=[Sink(on_step=lambda i, s=seen: s.append(i.logits))])
        assert result.steps == result.bins > 50 and result.drops == 0
        logits[name] = np.stack(seen)
    assert logits["eager"].std(axis=0).max() > 0
    np.testing.assert_allclose(logits[engine], logits["eager"], rtol=0, atol=1e-4)
    assert (logits[engine].argmax(1) == logits["eager"].argmax(1)).all()
