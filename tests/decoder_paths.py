"""A fixture that runs a test on each decoder path of the file readers: compiled (numba) and
numpy (`datasets/decoder_choice.py` picks one per read; both must give the same events and
errors). Use with `@pytest.mark.usefixtures("decoder_path")` after importing it."""

from __future__ import annotations

import pytest

from spikestream.datasets import aedat4, prophesee


@pytest.fixture(params=["compiled", "numpy"])
def decoder_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    compiled = request.param == "compiled"
    for module in (prophesee, aedat4):
        monkeypatch.setattr(module, "use_compiled", lambda nbytes: compiled)
    return request.param
