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
        return np.insert(a[a != 0], run_start, (lengths + 1).astype(np.uint8)).tobytes()
    seg = np.repeat(np.arange(len(lengths)), blocks)
    first = np.cumsum(blocks) - blocks
    k = np.arange(len(seg)) - first[seg]  # block index within its run
    at = run_start[seg] + BLOCK * k
    codes = np.where(k < full[seg], _FULL, rem[seg] + 1).astype(np.uint8)
    return np.insert(a[a != 0], at, codes).tobytes()


def cobs_decode(data: bytes | bytearray | memoryview) -> bytes:
    """Decode COBS; CobsError says what is wrong (a 0x00 inside, or a code past the end)."""
    enc = bytes(data)
    n = len(enc)
    if n == 0:
        return b""
    zero = enc.find(0)
    if zero >= 0:
        raise CobsError(f"zero byte found in input at {zero}")
    codes: list[int] = []
    add = codes.append
    i = 0
    while i < n:  # the code bytes form a chain: each says where the next one is
        add(i)
        i += enc[i]
    if i > n:
        raise CobsError(f"not enough input bytes for length code at {codes[-1]}")
    a = np.frombuffer(enc, dtype=np.uint8)
    at = np.asarray(codes)
    keep = np.ones(n, dtype=bool)
    keep[at] = False
    out = a.copy()
    out[at] = 0
    keep[at[1:]] = a[at[:-1]] != _FULL  # a code after a short block stands for a zero
    return out[keep].tobytes()
