"""Printing a command's result: a JSON object, or aligned `key: value` lines."""

from __future__ import annotations

import json
from typing import Any


def print_fields(fields: dict[str, Any], *, as_json: bool) -> None:
    """One JSON object with `as_json`, else one right-aligned `key: value` line per field."""
    if as_json:
        print(json.dumps(fields))
        return
    width = max((len(k) for k in fields), default=0)
    for key, value in fields.items():
        if isinstance(value, float):
            value = f"{value:.6g}"
        print(f"{key:>{width}}: {value}")
