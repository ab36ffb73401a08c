"""The EVT 3.0 word table; decoded per the format by `compiled_decoders.decode_evt3` (compiled).

Our own decoder rather than expelliarmus's: expelliarmus counts a 2^24 µs wrap whenever an
EVT_TIME_LOW value goes down instead of following the EVT_TIME_HIGH words, so on files that
emit every TIME_HIGH (Metavision's, faery's) it counts each 4,096 µs step of the high bits twice
(its own test recording reads as 53.9 ms instead of 8.8 ms).

Words are little-endian u16, type in bits 15..12:
0x0 EVT_ADDR_Y (y in 10..0, system type in 11), 0x2 EVT_ADDR_X (x in 10..0, polarity in 11),
0x3 VECT_BASE_X (x base in 10..0, polarity in 11), 0x4 VECT_12 / 0x5 VECT_8 (validity masks:
bit i is an event at base + i; the base then advances by 12 / 8), 0x6 EVT_TIME_LOW (t bits
11..0), 0x8 EVT_TIME_HIGH (t bits 23..12; the 24-bit time wraps at 2^24 µs, seen as TIME_HIGH
going down), 0x7 CONTINUED_4, 0xA EXT_TRIGGER, 0xE OTHERS, 0xF CONTINUED_12 (not CD events:
skipped). Types 0x1, 0x9, 0xB, 0xC, 0xD are undefined: an error naming file and offset.
CD events before the first TIME_HIGH have no time base and are an error too.
"""

from __future__ import annotations

#: CD and time word types.
ADDR_Y, ADDR_X, VECT_BASE_X, VECT_12, VECT_8 = 0x0, 0x2, 0x3, 0x4, 0x5
TIME_LOW, TIME_HIGH = 0x6, 0x8
#: Word types the format defines (CD, time and the skipped kinds).
DEFINED_TYPES = (0x0, 0x2, 0x3, 0x4, 0x5, 0x6, 0x7, 0x8, 0xA, 0xE, 0xF)
#: Period of the 24-bit time.
WRAP_US = 1 << 24
