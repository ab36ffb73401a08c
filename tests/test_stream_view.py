"""The live view of `spikestream stream`: the ON/OFF preview shows where events fell, and the
whole view fits any terminal width from 40 to 200 columns."""

from __future__ import annotations

import io

import numpy as np
import pytest
from rich.console import Console

from spikestream.cli.stream_view import (
    BOTH,
    EMPTY,
    OFF,
    ON,
    PIXEL_COLORS,
    ViewState,
    bin_length,
    preview_pixels,
    preview_text,
    render_view,
)
from spikestream.events import EVENT_DTYPE
from spikestream.pipeline.binning import to_frames
from spikestream.pipeline.recipe import StreamBinning
from spikestream.pipeline.streaming import StepInfo

SENSOR = (32, 32, 2)


def _frame(points: list[tuple[int, int, int]]) -> np.ndarray:
    """One 10 ms bin of events at (x, y, p), binned by our binner."""
    ev = np.zeros(len(points), EVENT_DTYPE)
    for i, (x, y, p) in enumerate(points):
        ev[i] = (x, y, 100 + i, p)
    return to_frames(ev, SENSOR, time_window=10_000, include_incomplete=True)[0]


def test_preview_pixels_mark_the_blocks_where_on_and_off_events_fell():
    frame = _frame([(3, 5, 1), (20, 9, 0), (30, 30, 1), (31, 31, 0)])
    full = preview_pixels(frame, 32, 32)
    assert full[5, 3] == ON and full[9, 20] == OFF
    assert full[30, 30] == ON and full[31, 31] == OFF
    assert (full != EMPTY).sum() == 4
    half = preview_pixels(frame, 16, 16)  # 2x2 blocks
    assert half[2, 1] == ON and half[4, 10] == OFF and half[15, 15] == BOTH
    assert (half != EMPTY).sum() == 3
    # merged polarity: every event is shown as ON
    merged = preview_pixels(frame.sum(0, keepdims=True), 8, 8)
    assert merged[1, 0] == ON and merged[2, 5] == ON and (merged != EMPTY).sum() == 3


def test_preview_text_colours_each_half_cell_by_its_pixel():
    frame = _frame([(3, 5, 1), (20, 9, 0)])
    pixels = preview_pixels(frame, 32, 32)
    text = preview_text(pixels)
    lines = text.split("\n")
    assert len(lines) == 16 and all(len(line) == 32 for line in lines)

    def colours(row: int, col: int):
        style = lines[row // 2].get_style_at_offset(Console(), col)
        return (style.color.triplet if row % 2 == 0 else style.bgcolor.triplet)

    assert tuple(colours(5, 3)) == PIXEL_COLORS[ON]
    assert tuple(colours(9, 20)) == PIXEL_COLORS[OFF]
    assert tuple(colours(4, 3)) == PIXEL_COLORS[EMPTY]
    assert tuple(colours(0, 0)) == PIXEL_COLORS[EMPTY]


def _info(frame: np.ndarray, names: list[str]) -> StepInfo:
    probs = np.linspace(1, 2, len(names))
    probs /= probs.sum()
    return StepInfo(step=7, bin_index=7, t_us=800_000, logits=np.log(probs), probs=probs,
                    label=len(names) - 1, name=names[-1], confidence=float(probs[-1]),
                    latency_ms=1.25, lag_ms=2.5, queue_len=0, drops=3, events=12_345,
                    frame=frame)


@pytest.mark.parametrize("width", [40, 41, 55, 63, 64, 80, 100, 120, 160, 200])
@pytest.mark.parametrize("height", [12, 24, 50])
def test_the_view_fits_the_terminal_and_names_bin_and_truth(width, height):
    names = [f"gesture number {i}" for i in range(11)]
    frame = _frame([(x, (3 * x) % 32, x % 2) for x in range(32)])
    view = ViewState(names, StreamBinning(100_000, None, None, None, False, "100 ms"), truth=4,
                     rate_kev_s=12.5)
    out = io.StringIO()
    console = Console(file=out, width=width, height=height, color_system="truecolor",
                      force_terminal=True, legacy_windows=False)
    console.print(render_view(_info(frame, names), view, width, height))
    plain = Console(file=io.StringIO(), width=width, height=height)
    with plain.capture() as cap:
        plain.print(render_view(_info(frame, names), view, width, height))
    lines = cap.get().splitlines()
    assert all(plain.measure(line).maximum <= width for line in lines), width
    assert max(len(line) for line in lines) <= width
    assert len(lines) <= height
    text = cap.get()
    assert "▀" in text  # the preview is there
    assert "true: gesture number 4" in text or width < 60
    assert "100 ms bins" in text or width < 60
    # ON and OFF colours were emitted
    on, off = PIXEL_COLORS[ON], PIXEL_COLORS[OFF]
    raw = out.getvalue()
    assert f"38;2;{on[0]};{on[1]};{on[2]}" in raw or f"48;2;{on[0]};{on[1]};{on[2]}" in raw
    assert f"38;2;{off[0]};{off[1]};{off[2]}" in raw or f"48;2;{off[0]};{off[1]};{off[2]}" in raw


def test_bin_length_says_milliseconds_or_events():
    assert bin_length(StreamBinning(38_300, None, None, None, False, "")) == "38.3 ms bins"
    assert bin_length(StreamBinning(None, 2000, None, None, False, "")) == "2,000 events per bin"


def test_the_live_view_redraws_at_the_consoles_current_size():
    """What `Live` refreshes is drawn at the size of the console it is drawn on, so a resized
    terminal gets a fitted layout at the next refresh."""
    from spikestream.cli.stream_view import LiveView

    names = [f"class {i}" for i in range(5)]
    view = LiveView(names, StreamBinning(50_000, None, None, None, False, ""), truth=lambda t: 2)
    frame = _frame([(1, 1, 1), (30, 30, 0)])
    view.update(_info(frame, names))
    assert view.state.truth == 2
    side_by_side = {}
    for width in (40, 120):
        console = Console(file=io.StringIO(), width=width, height=30)
        with console.capture() as cap:
            console.print(view.live.renderable)
        lines = cap.get().splitlines()
        assert max(len(line) for line in lines) <= width and "true: class 2" in cap.get()
        side_by_side[width] = any("▀" in line and "class" in line for line in lines)
    # the narrow terminal stacks preview and table, the wide one puts them side by side
    assert side_by_side == {40: False, 120: True}
