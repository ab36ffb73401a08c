"""Training recipes of the papers, as data: `pipeline/recipes/NAME.json`.

A recipe sets `spikestream train` options (by their argument names: `lr`, `weight_decay`,
`optimizer`, `epochs`, `cooldown_epochs`, `label_smoothing`, `time_bins`, `config`, ...), each
with the official file its value was read from, or a note that it was not read from one:

    {"description": "...", "settings": {"lr": {"value": 3e-4, "source": "conf/...yml"}, ...}}

`spikestream train --recipe NAME` (or a path to such a file) takes every option the command
line leaves unset from the recipe; the recipe's name and settings go into the checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"


def recipe_names() -> list[str]:
    """The shipped recipes (`pipeline/recipes/*.json`)."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.json"))


def load_recipe(name_or_path: str | Path) -> dict[str, Any]:
    """A recipe by shipped name or path, checked: `{"name", "description", "settings"}` with
    every setting a `{"value", "source"}` object."""
    path = Path(name_or_path)
    if not path.is_file():
        path = RECIPES_DIR / f"{name_or_path}.json"
        if "/" in str(name_or_path) or not path.is_file():
            raise FileNotFoundError(f"no training recipe {str(name_or_path)!r}: not a file and "
                                    f"not a shipped name ({', '.join(recipe_names())})")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a training recipe ({e})") from None
    settings = data.get("settings") if isinstance(data, dict) else None
    if not isinstance(settings, dict):
        raise ValueError(f"{path}: a training recipe needs a 'settings' object")
    for key, entry in settings.items():
        if not (isinstance(entry, dict) and set(entry) == {"value", "source"}
                and isinstance(entry["source"], str) and entry["source"]):
            raise ValueError(f"{path}: setting {key!r} must be {{'value': ..., 'source': "
                             "'the file it comes from'}")
    return {"name": path.stem, "description": str(data.get("description", "")),
            "settings": settings}
