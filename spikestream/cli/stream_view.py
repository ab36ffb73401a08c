"""The live terminal view of `spikestream stream` and `demo`: an ON/OFF preview of the current
bin, the decision with class probabilities, the true label where the source knows it, the bin
length and the run's counters.

`render_view` is a pure function of one step and the console size: `LiveView` calls it at
every refresh with the console's current size, so the layout follows a resized terminal. The
preview packs two frame rows into one character cell (the upper half block `▀`, its
foreground the upper pixel and its background the lower one), ON blue and OFF red as
`spikestream render` draws them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.style import Style
from rich.table import Table
from rich.text import Text

from spikestream.devices.render import OFF_COLOR, ON_COLOR
from spikestream.pipeline.recipe import StreamBinning
from spikestream.pipeline.streaming import StepInfo

#: what a preview pixel holds
EMPTY, ON, OFF, BOTH = 0, 1, 2, 3
#: the colour of each kind of preview pixel (BOTH: more ON than OFF or not is not shown)
PIXEL_COLORS = {EMPTY: (24, 24, 24), ON: ON_COLOR, OFF: OFF_COLOR, BOTH: (230, 230, 230)}
#: the widest preview, in characters (one frame pixel per character at 32x32 frames)
MAX_PREVIEW_COLS = 64
#: columns the class table needs beside the preview before the preview goes above it
SIDE_MIN_COLS = 44


def preview_pixels(frame: np.ndarray, cols: int, rows: int) -> np.ndarray:
    """`frame[P, H, W]` (P = 2: OFF, ON; P = 1: merged) downsampled to `[rows, cols]` preview
    pixels: EMPTY, ON, OFF or BOTH by whether any ON / OFF event fell in each block. With
    merged polarity every non-empty pixel is ON."""
    f = np.asarray(frame)
    if f.ndim == 2:
        f = f[None]
    h, w = f.shape[1], f.shape[2]
    rows, cols = max(1, min(rows, h)), max(1, min(cols, w))
    # block edges: pixel y goes to row y * rows // h, so every frame pixel lands in one block
    ry = (np.arange(h) * rows) // h
    cx = (np.arange(w) * cols) // w

    def blocks(channel: np.ndarray) -> np.ndarray:
        out = np.zeros((rows, cols), bool)
        ys, xs = np.nonzero(channel)
        out[ry[ys], cx[xs]] = True
        return out

    if f.shape[0] >= 2:
        off, on = blocks(f[0]), blocks(f[1])
    else:
        on, off = blocks(f[0]), np.zeros((rows, cols), bool)
    return np.where(on & off, BOTH, np.where(on, ON, np.where(off, OFF, EMPTY))).astype(np.uint8)


def preview_text(pixels: np.ndarray) -> Text:
    """Preview pixels `[rows, cols]` as half-block characters: one line per two pixel rows."""
    text = Text(no_wrap=True, overflow="crop")
    rows = pixels.shape[0]
    for r in range(0, rows, 2):
        top = pixels[r]
        bottom = pixels[r + 1] if r + 1 < rows else None
        for c, kind in enumerate(top):
            fg = PIXEL_COLORS[int(kind)]
            bg = PIXEL_COLORS[int(bottom[c])] if bottom is not None else None
            text.append("▀", Style(color=_rgb(fg), bgcolor=_rgb(bg) if bg else None))
        if r + 2 < rows:
            text.append("\n")
    return text


def _rgb(c: tuple[int, int, int]) -> str:
    return f"rgb({c[0]},{c[1]},{c[2]})"


def bin_length(binning: StreamBinning | None) -> str:
    """The bin length in words: '100 ms bins' or '2,000 events per bin'."""
    if binning is None:
        return "bins: -"
    if binning.time_window is not None:
        return f"{binning.time_window / 1000:g} ms bins"
    if binning.event_count is not None:
        return f"{binning.event_count:,} events per bin"
    return "bins: -"


@dataclass
class ViewState:
    """What the view shows besides the step: class names, bin length, true label, rate."""

    class_names: Sequence[str] | None = None
    binning: StreamBinning | None = None
    truth: int | None = None  # the label the source says is being shown
    rate_kev_s: float | None = None


def render_view(info: StepInfo, view: ViewState, width: int, height: int) -> Group:
    """The whole view for one step, fitted to `width` x `height` characters: the preview
    beside the class table when the width allows, above it otherwise."""
    names = view.class_names
    n = len(info.probs)
    truth = view.truth
    truth_s = "-" if truth is None else (names[truth] if names and 0 <= truth < len(names)
                                         else str(truth))
    decision = info.name or str(info.label)
    mark = "" if truth is None else (" ✓" if info.label == truth else " ✗")
    head = Text(no_wrap=True, overflow="ellipsis")
    head.append(f"step {info.step}  ", style="dim")
    head.append(f"{decision} ({info.confidence:.0%}){mark}", style="bold")
    head.append(f"  true: {truth_s}")
    rate = f"{view.rate_kev_s:.1f} kev/s" if view.rate_kev_s is not None else "-"
    foot = Text(f"{bin_length(view.binning)}  events {info.events:,}  rate {rate}  "
                f"step {info.latency_ms:.2f} ms  lag {info.lag_ms:.1f} ms  "
                f"queue {info.queue_len}  drops {info.drops}", no_wrap=True,
                overflow="ellipsis", style="dim")
    for line in (head, foot):
        line.truncate(width, overflow="ellipsis")

    side = width >= SIDE_MIN_COLS + 20
    spare_rows = max(height - 3, 2)  # header, footer, a margin
    # the most probable classes that fit (all of them where there is room)
    table_rows = min(n, spare_rows) if side else min(n, max(spare_rows // 2, 1))
    name_w = max(4, min(24, max((len(s) for s in names[:n]), default=4) if names else 4))
    if side:
        cols = min(MAX_PREVIEW_COLS, width - SIDE_MIN_COLS, 2 * spare_rows)
        rows = 2 * spare_rows
    else:
        cols = min(MAX_PREVIEW_COLS, width)
        rows = 2 * max(spare_rows - table_rows, 1)
    parts: list = [head]
    preview, preview_w = None, 0
    if info.frame is not None and cols >= 4:
        pixels = preview_pixels(info.frame, cols, rows)
        preview, preview_w = preview_text(pixels), pixels.shape[1]
    bar_w = max(1, (width - (preview_w + 2 if side else 0)) - name_w - 7)
    table = Table.grid(padding=(0, 1))
    table.add_column(width=name_w, no_wrap=True, overflow="ellipsis")
    table.add_column(justify="right", width=4, no_wrap=True)
    table.add_column(no_wrap=True, overflow="crop")
    order = np.argsort(-np.asarray(info.probs))[:table_rows] if table_rows < n else range(n)
    for i in order:
        name = names[i] if names and i < len(names) else str(i)
        style = "bold" if i == info.label else ("green" if i == truth else "")
        p = float(info.probs[i])
        table.add_row(Text(name, style=style), f"{p:.2f}", "█" * int(round(p * bar_w)))
    if preview is None:
        parts.append(table)
    elif side:
        row = Table.grid(padding=(0, 2))
        row.add_column(width=preview_w, no_wrap=True)
        row.add_column(no_wrap=True)
        row.add_row(preview, table)
        parts.append(row)
    else:
        parts.extend([preview, table])
    parts.append(foot)
    return Group(*parts)


class _Fitted:
    """A renderable that draws the latest step at the console's size when it is rendered."""

    def __init__(self, live_view: LiveView) -> None:
        self.live_view = live_view

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        lv = self.live_view
        if lv.info is None:
            yield Text("waiting for the first bin ...", style="dim")
            return
        yield render_view(lv.info, lv.state, options.max_width, console.size.height)


class LiveView:
    """A rich live view on stderr, redrawn at the terminal's current size every refresh."""

    def __init__(self, class_names: Sequence[str] | None, binning: StreamBinning | None = None,
                 truth: Callable[[int], int | None] | None = None) -> None:
        from rich.live import Live

        self.state = ViewState(class_names, binning)
        self.truth = truth  # stream time (µs) -> the label the source was showing
        self.console = Console(stderr=True)
        self.info: StepInfo | None = None
        self.live = Live(_Fitted(self), console=self.console, refresh_per_second=8,
                         transient=False, redirect_stdout=False, redirect_stderr=False)
        self._last_events = 0
        self._last_t: int | None = None

    def __enter__(self) -> LiveView:
        self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.__exit__(*exc)

    def update(self, info: StepInfo) -> None:
        if info.t_us is not None and self._last_t is not None and info.t_us > self._last_t:
            self.state.rate_kev_s = ((info.events - self._last_events)
                                     / ((info.t_us - self._last_t) * 1e-6) / 1e3)
        self._last_events, self._last_t = info.events, info.t_us
        if self.truth is not None and info.t_us is not None:
            self.state.truth = self.truth(info.t_us)
        self.info = info
