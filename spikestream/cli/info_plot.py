"""`spikestream info --plot`: one pass over each file into an `EventSummary`, one PNG."""

from __future__ import annotations

from pathlib import Path

from spikestream.datasets import iter_events
from spikestream.devices.event_plots import EventSummary, plot_summaries


def plot_files(paths: list[str], out: str, *, format: str | None = None,
               bin_us: int = 10_000, surface_us: int = 50_000) -> list[EventSummary]:
    """Summarise each file packet by packet and draw them, one row each, into `out`."""
    summaries = []
    for path in paths:
        with iter_events(path, format=format, chunk_events=1 << 20) as stream:
            s = EventSummary(stream.sensor_size, bin_us=bin_us, surface_us=surface_us,
                             name=Path(path).name)
            for packet in stream:
                s.add(packet)
        summaries.append(s)
    plot_summaries(summaries, out)
    return summaries
