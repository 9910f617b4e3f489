"""What the benchmark scripts share: writing a run's results as JSON and as the printed table,
and reading a training's minutes from its log."""

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


def compare_residual_modes(model, example, **how) -> dict[str, float]:
    """Params and FLOPs pruned when ``model`` compiles with ``residual="reconstruct"`` and with
    ``"couple"``, the channels chosen by ``how`` (``threshold=`` or ``masks=``)."""
    import warnings

    import graphprune as gp

    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gp.GraphpruneWarning)
        for mode in ("reconstruct", "couple"):
            stats = gp.compile(model, example, residual=mode, **how).stats
            out[f"{mode}_params_pruned"] = 1 - stats.params_ratio
            out[f"{mode}_flops_pruned"] = 1 - stats.flops_ratio
    return out


def logged_minutes(log: Path) -> float:
    """Training minutes of a run (finished or not), summed from its per-epoch log (NaN without
    one)."""
    if not log.exists():
        return float("nan")
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return sum(entry.get("seconds", 0.0) for entry in lines) / 60
