"""The integer LRF-Dyn core: the device's arithmetic specification, written once in numpy.

This module is the reference that the emulator runs and that firmware and the quantized torch
path must match bit for bit. It imports numpy only. The specification (docs/arithmetic.md),
versioned by `ARITH_ID`, per head h, compartment j in 0..k-1, channel c in 0..d-1, for each
token n of a timestep in raster order (the state carries over from token to token and from
timestep to timestep):

    X'[j] = X[j] - (X[j] >> S[j])                               decay by shift
          + ((L[j] * X[j-1]) >> 8) + ((R[j] * X[j+1]) >> 8)      neighbour couplings (0 at ends)
          + ((G[j] << GS[j]) if u_n[c] else 0)                   charge
    X     = sat16(X')                                            once, after the sum
    y     = sum_j C[j] * X[j]                                    int32
    s_n   = y >= C[0] * theta                                    fire
    X[0]  = sat16(X[0] - theta) where s_n                        subtractive reset of the soma

`>>` is the arithmetic (floor) shift of two's complement; every right-hand side uses the state
after the previous token's reset; intermediate sums are int32 and cannot overflow within the
limits below.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import numpy as np

#: Version of the arithmetic specification; bump on any change of the integer semantics.
ARITH_ID = 1
#: Right shift applied to the int8 x int16 coupling products.
COUPLING_SHIFT = 8
#: Allowed decay shifts (a_j = 1 - 2**-S[j]).
MIN_DECAY_SHIFT, MAX_DECAY_SHIFT = 1, 15
#: Allowed left shifts of the charge weights (127 << 8 still fits int16).
MAX_GAMMA_SHIFT = 8
STATE_MIN, STATE_MAX = -32768, 32767

BLOB_MAGIC = b"LRFD"
BLOB_VERSION = 1
_HEADER = struct.Struct("<4sBHHHBI")  # magic, blob version, arith id, heads, head_dim, k, N
#: Per-head arrays of the blob, in order: (name, numpy dtype, per-head length is k or 1).
_FIELDS: tuple[tuple[str, str, bool], ...] = (
    ("decay_shift", "u1", True),
    ("lower", "i1", True),
    ("upper", "i1", True),
    ("gamma", "i1", True),
    ("gamma_shift", "u1", True),
    ("readout", "i1", True),
    ("theta", "<i2", False),
)


@dataclass
class CoreParams:
    """Integer parameters of one LRF-Dyn core (all heads of one attention layer).

    Arrays are `[heads, k]` unless noted: `decay_shift` S (uint8, 1..15), `lower` L (int8,
    coupling from compartment j-1 into j; column 0 must be 0), `upper` R (int8, from j+1 into j;
    column k-1 must be 0), `gamma` G (int8), `gamma_shift` GS (uint8, 0..8), `readout` C (int8,
    C[:, 0] >= 1: compartment 0 is the soma), `theta` (int16 `[heads]`, >= 1).
    """

    heads: int
    head_dim: int
    k: int
    n_tokens: int
    decay_shift: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    gamma: np.ndarray
    gamma_shift: np.ndarray
    readout: np.ndarray
    theta: np.ndarray

    def __post_init__(self) -> None:
        for name, dt, per_k in _FIELDS:
            arr = np.asarray(getattr(self, name))
            shape = (self.heads, self.k) if per_k else (self.heads,)
            if arr.shape != shape:
                raise ValueError(f"CoreParams.{name}: shape {arr.shape}, expected {shape}")
            info = np.iinfo(np.dtype(dt))
            if arr.size and (arr.min() < info.min or arr.max() > info.max):
                raise ValueError(f"CoreParams.{name}: values outside {np.dtype(dt).name} range")
            setattr(self, name, arr.astype(np.dtype(dt).newbyteorder("=")))
        self.validate()

    @property
    def dim(self) -> int:
        """Channels D = heads * head_dim (channel c = h * head_dim + i)."""
        return self.heads * self.head_dim

    def validate(self) -> None:
        """Raise ValueError naming the first field that breaks the specification's limits."""
        if not (1 <= self.heads <= 0xFFFF and 1 <= self.head_dim <= 0xFFFF):
            raise ValueError(f"heads {self.heads} / head_dim {self.head_dim} outside 1..65535")
        if not 1 <= self.k <= 255:
            raise ValueError(f"k {self.k} outside 1..255")
        if not 1 <= self.n_tokens <= 0xFFFFFFFF:
            raise ValueError(f"n_tokens {self.n_tokens} outside 1..2**32-1")
        ds = self.decay_shift
        if ds.min() < MIN_DECAY_SHIFT or ds.max() > MAX_DECAY_SHIFT:
            raise ValueError(f"decay_shift outside {MIN_DECAY_SHIFT}..{MAX_DECAY_SHIFT}")
        if self.gamma_shift.max() > MAX_GAMMA_SHIFT:
            raise ValueError(f"gamma_shift above {MAX_GAMMA_SHIFT}")
        if np.any(self.lower[:, 0] != 0):
            raise ValueError("lower[:, 0] must be 0 (no compartment below the soma)")
        if np.any(self.upper[:, -1] != 0):
            raise ValueError("upper[:, k-1] must be 0 (no compartment above the last)")
        if np.any(self.readout[:, 0] < 1):
            raise ValueError("readout[:, 0] (the soma's weight) must be >= 1")
        if np.any(self.theta < 1):
            raise ValueError("theta must be >= 1")

    def to_blob(self) -> bytes:
        """Little-endian parameter blob: a 16-byte header, then the arrays in `_FIELDS` order."""
        head = _HEADER.pack(
            BLOB_MAGIC, BLOB_VERSION, ARITH_ID, self.heads, self.head_dim, self.k, self.n_tokens
        )
        body = b"".join(
            np.ascontiguousarray(getattr(self, name), dtype=dt).tobytes() for name, dt, _ in _FIELDS
        )
        return head + body

    @staticmethod
    def blob_size(heads: int, k: int) -> int:
        """Bytes of a blob for `heads` heads of `k` compartments."""
        return _HEADER.size + 6 * heads * k + 2 * heads

    @classmethod
    def from_blob(cls, b: bytes) -> CoreParams:
        """Parse `to_blob` output; raises ValueError saying what is wrong with a bad blob."""
        b = bytes(b)
        if len(b) < _HEADER.size:
            raise ValueError(f"parameter blob too short: {len(b)} bytes, header is {_HEADER.size}")
        magic, version, arith, heads, head_dim, k, n_tokens = _HEADER.unpack_from(b, 0)
        if magic != BLOB_MAGIC:
            raise ValueError(f"parameter blob: bad magic {magic!r}, expected {BLOB_MAGIC!r}")
        if version != BLOB_VERSION:
            raise ValueError(f"parameter blob: version {version}, expected {BLOB_VERSION}")
        if arith != ARITH_ID:
            raise ValueError(f"parameter blob: arithmetic ID {arith}, this core is {ARITH_ID}")
        if heads < 1 or k < 1:
            raise ValueError(f"parameter blob: heads {heads} and k {k} must be >= 1")
        need = cls.blob_size(heads, k)
        if len(b) != need:
            raise ValueError(
                f"parameter blob: {len(b)} bytes, expected {need} for heads={heads}, k={k}"
            )
        off = _HEADER.size
        arrays = {}
        for name, dt, per_k in _FIELDS:
            shape = (heads, k) if per_k else (heads,)
            count = int(np.prod(shape))
            arr = np.frombuffer(b, dtype=dt, count=count, offset=off).reshape(shape)
            arrays[name] = arr.copy()
            off += count * np.dtype(dt).itemsize
        return cls(heads=heads, head_dim=head_dim, k=k, n_tokens=n_tokens, **arrays)

    def crc32(self) -> int:
        """CRC-32 (zlib / IEEE 802.3) of `to_blob()`."""
        return zlib.crc32(self.to_blob()) & 0xFFFFFFFF


class IntCore:
    """Bit-exact reference of the device: `step(u[N, D] bool) -> s[N, D] bool` with carried state.

    The state is int16 `[heads, k, head_dim]`; it is held as int32 between operations, always
    inside the int16 range.
    """

    def __init__(self, params: CoreParams) -> None:
        self.params = params
        p = params
        h, k = p.heads, p.k
        i32 = np.int32
        self._shift = p.decay_shift.astype(i32)[:, :, None]
        self._lower = p.lower.astype(i32)[:, :, None]
        self._upper = p.upper.astype(i32)[:, :, None]
        self._charge = (p.gamma.astype(i32) << p.gamma_shift.astype(i32))[:, :, None]
        self._readout = p.readout.astype(i32)[:, None, :]
        self._theta = p.theta.astype(i32)[:, None]
        self._fire_at = (p.readout[:, 0].astype(i32) * p.theta.astype(i32))[:, None]
        self._xp = np.zeros((h, k + 2, p.head_dim), dtype=i32)  # state with a zero row each end
        self._nxt = np.empty((h, k, p.head_dim), dtype=i32)
        self._tmp = np.empty((h, k, p.head_dim), dtype=i32)

    def reset(self) -> None:
        """All compartments to zero."""
        self._xp[...] = 0

    def step(self, u: np.ndarray) -> np.ndarray:
        """One timestep: N tokens in raster order; returns the fire spikes s `[N, D]` (bool)."""
        p = self.params
        u = np.asarray(u)
        if u.shape != (p.n_tokens, p.dim):
            raise ValueError(f"IntCore.step: input shape {u.shape}, expected {(p.n_tokens, p.dim)}")
        if u.dtype != np.bool_:
            if not np.isin(u, (0, 1)).all():
                raise ValueError("IntCore.step: input must be boolean spikes (0/1)")
            u = u.astype(bool)
        return self._advance(u)

    def _advance(self, u: np.ndarray) -> np.ndarray:
        """The token loop of `step` on a checked bool `[N, D]` input."""
        p = self.params
        uh = u.reshape(p.n_tokens, p.heads, 1, p.head_dim)
        out = np.empty((p.n_tokens, p.heads, p.head_dim), dtype=bool)
        # Preallocated buffers and in-place ufuncs: the loop is bound by per-call overhead.
        xp, x = self._xp, self._xp[:, 1:-1]
        below, above = xp[:, :-2], xp[:, 2:]  # X[j-1] and X[j+1], zero beyond the ends
        nxt, tmp = self._nxt, self._tmp
        x0 = x[:, 0]
        for n in range(p.n_tokens):
            np.right_shift(x, self._shift, out=nxt)
            np.subtract(x, nxt, out=nxt)
            np.multiply(self._lower, below, out=tmp)
            tmp >>= COUPLING_SHIFT
            nxt += tmp
            np.multiply(self._upper, above, out=tmp)
            tmp >>= COUPLING_SHIFT
            nxt += tmp
            np.multiply(self._charge, uh[n], out=tmp)
            nxt += tmp
            np.minimum(nxt, STATE_MAX, out=nxt)
            np.maximum(nxt, STATE_MIN, out=x)
            y = np.matmul(self._readout, x)[:, 0]
            s = np.greater_equal(y, self._fire_at, out=out[n])
            x0 -= self._theta * s
            np.maximum(x0, STATE_MIN, out=x0)
        return out.reshape(p.n_tokens, p.dim)

    def state(self) -> np.ndarray:
        """A copy of the state, int16 `[heads, k, head_dim]`."""
        return self._xp[:, 1:-1].astype(np.int16)

    def load_state(self, arr: np.ndarray) -> None:
        """Replace the state (shape `[heads, k, head_dim]`, values in the int16 range)."""
        p = self.params
        a = np.asarray(arr)
        if a.shape != (p.heads, p.k, p.head_dim):
            raise ValueError(f"load_state: shape {a.shape}, expected {(p.heads, p.k, p.head_dim)}")
        if not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"load_state: integer state expected, got {a.dtype}")
        if a.size and (a.min() < STATE_MIN or a.max() > STATE_MAX):
            raise ValueError("load_state: values outside the int16 range")
        self._xp[:, 1:-1] = a

    def state_crc(self) -> int:
        """CRC-32 of the state as little-endian int16 in `[heads, k, head_dim]` C order."""
        raw = np.ascontiguousarray(self._xp[:, 1:-1], dtype="<i2").tobytes()
        return zlib.crc32(raw) & 0xFFFFFFFF
