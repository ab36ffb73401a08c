"""Which decoder a read takes: the compiled one (numba, `compiled_decoders`) or numpy.

numba's start-up in a fresh process (its import, the scipy import it pulls in, loading the
cached decoders) takes about 1 s, more than a small file takes to decode in numpy; so a process
decodes in numpy until it has read `COMPILED_AFTER_BYTES` (as the event check in
`spikestream.events` does), and compiled at once where numba is loaded already (streaming,
training) or one file is that large. `spikestream info` on a small file never imports numba.
"""

from __future__ import annotations

import sys

#: Bytes a process decodes in numpy before the compiled decoders take over: numba's start-up
#: then costs less than the numpy passes it saves (EVT 3.0 decodes at about 15 MB/s in numpy).
COMPILED_AFTER_BYTES = 16 << 20
_numpy_bytes = [0]


def use_compiled(nbytes: int) -> bool:
    """Whether to decode `nbytes` of a file compiled; counts them otherwise."""
    if "numba" in sys.modules or _numpy_bytes[0] + nbytes >= COMPILED_AFTER_BYTES:
        return True
    _numpy_bytes[0] += nbytes
    return False
