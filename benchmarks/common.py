"""What the benchmark scripts share: writing a run's results as JSON and as the printed table."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Sequence

from rich.console import Console


def write_results(results: Path, stem: str, payload: dict[str, Any], renderables: Sequence,
                  width: int) -> None:
    """``results/stem.json`` (the payload) and ``results/stem.txt`` (the renderables as they
    print, at ``width`` columns)."""
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{stem}.json").write_text(json.dumps(payload, indent=2) + "\n")
    record = Console(record=True, width=width, file=io.StringIO())
    for item in renderables:
        record.print(item)
    (results / f"{stem}.txt").write_text(record.export_text())
