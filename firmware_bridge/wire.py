"""Byte-level wire coding shared by host and device: COBS and CRC-32 (numpy and stdlib only).

COBS is Consistent Overhead Byte Stuffing (Cheshire and Baker, IEEE/ACM Trans. Networking 7(2),
1999): the data is cut at each 0x00 into blocks of nonzero bytes, each block written after a
code byte holding its length + 1, so the encoding contains no 0x00 and a frame can be delimited
by 0x00. A run of 254 nonzero bytes is written as code 0xFF with no implied zero after it. The
output is byte for byte that of the `cobs` package: a trailing run of exactly 254*k nonzero
bytes ends without a final 0x01 block; an empty input encodes to 0x01.

CRC-32 is the IEEE 802.3 CRC as zlib computes it.
"""

from __future__ import annotations

import zlib

import numpy as np

BLOCK = 254  # most data bytes behind one code byte
_FULL = 0xFF  # the code of a block of BLOCK bytes with no implied zero after it


class CobsError(ValueError):
    """A byte string is not a valid COBS encoding."""


def crc32(data: bytes | bytearray | memoryview) -> int:
    """CRC-32 (IEEE 802.3, zlib) of `data`, as an unsigned 32-bit integer."""
    return zlib.crc32(data) & 0xFFFFFFFF


def cobs_encode(data: bytes | bytearray | memoryview) -> bytes:
    """COBS-encode `data`; the result holds no 0x00 byte."""
    a = np.frombuffer(data, dtype=np.uint8)
    zeros = np.flatnonzero(a == 0)
    lengths = np.diff(zeros, prepend=-1, append=len(a)) - 1  # the run before each zero; the tail
    full, rem = np.divmod(lengths, BLOCK)
    tail_block = rem[-1] > 0 or lengths[-1] == 0  # a tail of 254*k bytes (k >= 1) needs none
    blocks = full + 1
    if not tail_block:
        blocks[-1] -= 1
    run_start = np.cumsum(lengths) - lengths  # where each run begins among the nonzero bytes
    if not full.any():  # the common case: no run reaches 254 bytes
        return _interleave(a[a != 0], run_start, (lengths + 1).astype(np.uint8))
    seg = np.repeat(np.arange(len(lengths)), blocks)
    first = np.cumsum(blocks) - blocks
    k = np.arange(len(seg)) - first[seg]  # block index within its run
    at = run_start[seg] + BLOCK * k
    codes = np.where(k < full[seg], _FULL, rem[seg] + 1).astype(np.uint8)
    return _interleave(a[a != 0], at, codes)


def _interleave(data: np.ndarray, at: np.ndarray, codes: np.ndarray) -> bytes:
    """`data` with codes[i] inserted before data[at[i]] (`at` ascending)."""
    out = np.empty(len(data) + len(codes), dtype=np.uint8)
    where = at + np.arange(len(at))  # each code lands after the codes before it
    is_code = np.zeros(len(out), dtype=bool)
    is_code[where] = True
    out[where] = codes
    out[~is_code] = data
    return out.tobytes()


def _code_positions(a: np.ndarray) -> tuple[np.ndarray, int]:
    """Positions of the code bytes of COBS data `a` (no zeros) and where the chain ends (== len(a)
    when valid). The chain is followed 16 codes at a time in Python, over jump tables built by
    doubling; the codes in between are filled in by the tables, vectorised."""
    n = len(a)
    nxt = np.arange(n + BLOCK + 1)
    nxt[:n] += a  # positions at or past the end jump to themselves
    jumps = [nxt]
    levels = 4 if n > 512 else 0
    for _ in range(levels):
        jumps.append(jumps[-1][jumps[-1]])
    big = jumps[-1]
    at = [0]
    i = 0
    while i < n:
        i = int(big[i])
        at.append(i)
    end = at.pop()
    pos = np.asarray(at)
    for table in reversed(jumps[:-1]):
        pos = np.stack([pos, table[pos]], axis=1).ravel()
        pos = pos[pos < n]
    if levels:  # the last stretch may have ended inside a jump: end is the first stop past n
        end = int(nxt[pos[-1]])
    return pos, end


def cobs_decode(data: bytes | bytearray | memoryview) -> bytes:
    """Decode COBS; CobsError says what is wrong (a 0x00 inside, or a code past the end)."""
    enc = bytes(data)
    n = len(enc)
    if n == 0:
        return b""
    zero = enc.find(0)
    if zero >= 0:
        raise CobsError(f"zero byte found in input at {zero}")
    a = np.frombuffer(enc, dtype=np.uint8)
    at, end = _code_positions(a)
    if end > n:
        raise CobsError(f"not enough input bytes for length code at {int(at[-1])}")
    keep = np.ones(n, dtype=bool)
    keep[at] = False
    out = a.copy()
    out[at] = 0
    keep[at[1:]] = a[at[:-1]] != _FULL  # a code after a short block stands for a zero
    return out[keep].tobytes()
