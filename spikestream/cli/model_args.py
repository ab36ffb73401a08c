"""Model options shared by `train`, `eval` and `model-info`: `--attention-args JSON`."""

from __future__ import annotations

import argparse
import json
from typing import Any


def attention_args(text: str) -> dict[str, Any]:
    """`--attention-args` as a dict: a JSON object such as `{"mode": "causal", "chunk": 4}`."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(
            f"must be a JSON object of option names and values, got {type(value).__name__}")
    return value


def add_attention_args(p: argparse.ArgumentParser, *, what: str) -> None:
    """Add `--attention-args JSON`; `what` says what the options apply to."""
    p.add_argument("--attention-args", type=attention_args, default=None, metavar="JSON",
                   help=f"options of the attention mechanism as a JSON object, e.g. "
                        f"'{{\"mode\": \"causal\", \"chunk\": 4}}' or '{{\"scale\": 0.25}}' "
                        f"({what}; stored in the checkpoint's JSON)")
