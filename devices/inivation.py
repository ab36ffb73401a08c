"""`InivationCamera`: a live iniVation camera (DVS128, DAVIS, DVXplorer) through dv-processing.

dv-processing is an optional extra: `pip install spikestream[inivation]`. The same reading
loop serves a live camera and an AEDAT4 recording opened with dv-processing's own reader
(`InivationCamera(recording=PATH)`), which is how the code path is tested without hardware.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from spikestream import EVENT_DTYPE, empty_events

from .base import EventSource

INSTALL_HINT = "install the extra: pip install 'spikestream[inivation]' (dv-processing)"


def import_dv() -> Any:
    """The `dv_processing` module, or ImportError with how to install it."""
    try:
        import dv_processing
    except ImportError as e:
        raise ImportError(f"dv-processing is not installed; {INSTALL_HINT}") from e
    return dv_processing


def dv_available() -> bool:
    try:
        import_dv()
    except ImportError:
        return False
    return True


def _open_reader(dv: Any, serial: str | None, recording: str | Path | None) -> Any:
    """A dv-processing input with `getNextEventBatch`, `isRunning` and `getEventResolution`."""
    if recording is not None:
        path = Path(recording)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such AEDAT4 recording")
        reader = dv.io.MonoCameraRecording(str(path))
    elif hasattr(dv.io, "camera") and hasattr(dv.io.camera, "open"):  # dv-processing 2.x
        try:
            reader = dv.io.camera.open(serial) if serial else dv.io.camera.open()
        except Exception as e:  # noqa: BLE001 - the binding raises plain RuntimeError/ValueError
            raise OSError(f"no iniVation camera could be opened ({serial or 'any'}): {e}") from e
    else:  # dv-processing 1.x
        try:
            reader = dv.io.CameraCapture(serial or "")
        except Exception as e:  # noqa: BLE001
            raise OSError(f"no iniVation camera could be opened ({serial or 'any'}): {e}") from e
    if not reader.isEventStreamAvailable():
        raise OSError(f"{recording or serial or 'camera'}: no event stream")
    return reader


def dv_events_to_array(store: Any) -> np.ndarray:
    """A dv-processing `EventStore` as an `EVENT_DTYPE` array."""
    raw = store.numpy()
    ev = np.empty(len(raw), dtype=EVENT_DTYPE)
    if len(raw):
        ev["x"] = raw["x"]
        ev["y"] = raw["y"]
        ev["t"] = raw["timestamp"]
        ev["p"] = raw["polarity"] != 0
    return ev


class InivationCamera(EventSource):
    """Events from an iniVation camera (first found, or by `serial`), or from an AEDAT4 file.

    The sensor size comes from the device (or file). `zero_time=True` makes timestamps start at
    0 µs (dv-processing gives µs since the epoch). A live camera is polled every `poll_s`;
    when nothing arrived an empty packet is yielded. A recording ends at its last packet; a
    live camera ends when it is unplugged or `stop()` is called.
    """

    def __init__(
        self,
        serial: str | None = None,
        *,
        recording: str | Path | None = None,
        zero_time: bool = True,
        poll_s: float = 0.002,
    ) -> None:
        self._dv = import_dv()
        self.serial = serial
        self.recording = recording
        self.zero_time = zero_time
        self.poll_s = float(poll_s)
        self._reader: Any = _open_reader(self._dv, serial, recording)
        w, h = (int(v) for v in self._reader.getEventResolution())
        super().__init__((w, h, 2))
        self.camera_name = str(self._reader.getCameraName())
        self._t0: int | None = None
        self._stop = False
        self._used = False

    def _open(self) -> None:
        if self._reader is None or self._used:
            self._reader = _open_reader(self._dv, self.serial, self.recording)
        self._t0 = None
        self._stop = False

    def _close(self) -> None:
        self._reader = None
        self._used = True

    def stop(self) -> None:
        """Ask a running iteration to end at its next poll (thread-safe)."""
        self._stop = True

    def _packets(self) -> Iterator[np.ndarray]:
        reader = self._reader
        live = self.recording is None
        while not self._stop and reader.isRunning():
            store = reader.getNextEventBatch()
            if store is None:
                if not live:
                    return
                time.sleep(self.poll_s)
                yield empty_events()
                continue
            ev = dv_events_to_array(store)
            if len(ev) == 0:
                continue
            if self.zero_time:
                if self._t0 is None:
                    self._t0 = int(ev["t"][0])
                ev["t"] -= self._t0
            yield ev
