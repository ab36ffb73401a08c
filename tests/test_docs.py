"""Every ```python block of README.md and docs/*.md runs.

The blocks of one file run in order in one namespace (as a reader would type them), in a
scratch folder laid out like a checkout: `../shared/data` there is the real recordings
folder. A block that cannot run here (it needs hardware) is marked in the Markdown with a
visible comment line just above it: `<!-- not run: REASON -->`; `NOT_RUN_ALLOWED` caps how many
such blocks there may be.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NOT_RUN = re.compile(r"<!--\s*not run:\s*(?P<why>.+?)\s*-->")
NOT_RUN_ALLOWED = 2


def blocks(path: Path) -> list[tuple[int, str, str | None]]:
    """`(line, code, reason not run or None)` of every python block in `path`."""
    lines = path.read_text().splitlines()
    out = []
    i = 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            start = i + 1
            end = start
            while end < len(lines) and lines[end].strip() != "```":
                end += 1
            why = next((m.group("why") for m in map(NOT_RUN.search, lines[max(0, i - 2):i])
                        if m), None)
            out.append((start, "\n".join(lines[start:end]) + "\n", why))
            i = end
        i += 1
    return out


def test_the_docs_have_python_blocks_and_few_are_not_run() -> None:
    found = {p.name: blocks(p) for p in DOCS}
    assert sum(len(b) for b in found.values()) >= 7
    skipped = [(n, line) for n, bs in found.items() for line, _, why in bs if why]
    assert len(skipped) <= NOT_RUN_ALLOWED, skipped


@pytest.mark.parametrize("path", [p for p in DOCS if blocks(p)], ids=lambda p: p.name)
def test_python_blocks_run(path: Path, real_data: Path, tmp_path: Path,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "data").symlink_to(real_data)
    work = tmp_path / "project"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("SPIKESTREAM_CACHE", str(tmp_path / "cache"))
    namespace: dict = {"__name__": "__docs__"}
    for line, code, why in blocks(path):
        if why:
            continue
        try:
            exec(compile(code, f"{path.name}:{line + 1}", "exec"), namespace)
        except Exception as e:  # name the block
            raise AssertionError(f"{path.name}, block at line {line + 1}: "
                                 f"{type(e).__name__}: {e}") from e
    assert os.getcwd() == str(work)
