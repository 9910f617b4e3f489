"""What a compile leaves in its output directory, written in one place for every caller — the
plain ``graphprune compile`` (ratio, threshold or mask file) and the target-guided compile
(``--lfa-target`` and friends):

* ``slim.graphprune.pt`` always; ``slim.pt2`` and ``slim.onnx`` unless switched off;
* whatever the caller adds inside the directory first (fine-tune run, plots);
* an ultralytics checkpoint beside it when asked for;
* ``report.json`` with one schema, :data:`REPORT_KEYS` (the README's report table), and
  ``report.md`` for people.

The directory appears whole or not at all (``export.atomic_directory``)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from rich.console import Console

from .export import atomic_directory
from .integrations.ultralytics import save_ultralytics_checkpoint
from .report import markdown

REPORT_SCHEMA = 1

# every report.json holds exactly these keys; those that do not apply to a compile are null
REPORT_KEYS: tuple[str, ...] = (
    "schema",
    # what was compiled, and how it was asked
    "model", "data", "example_shape", "imgsz", "device", "goal", "request",
    "lfa_target", "flops_target", "params_target", "lfa_mode", "lfa_layers", "lfa_criterion",
    # what came out
    "params_before", "params_after", "flops_before", "flops_after", "threshold", "prune_ratio",
    "max_error", "pinned", "warnings", "fold_pruned_bias", "compile",
    # feature attention of the slim model (target-guided compiles with data)
    "lfa", "lfa_plus", "lfa_two_sided", "lfa_signed", "lfa_per_level", "lfa_levels_skipped",
    "lfa_probe", "fa_sparse", "fa_pruned",
    # the search
    "probes", "evaluations", "candidates", "calibration_images", "feasible", "notes",
    # the measured speed (--latency-target)
    "latency_target", "runtime", "baseline_ms", "latency_ms", "latency_ratio", "speedup",
    "latency_rounds", "lfa_bound_count", "latency_probes",
    # accuracy (with --eval; the baseline with --baseline; fine-tuned with --finetune-epochs)
    "baseline_model", "baseline_map50", "baseline_map", "baseline_params", "baseline_flops",
    "map50_before", "map_before", "map50_after", "map_after",
    "finetune_epochs", "finetune_recipe", "map50_finetuned", "map_finetuned",
    # where things went
    "ultralytics_checkpoint", "artifacts", "seconds",
)

# what the plain compile's "goal" is, by the first request field that is set
PLAIN_GOALS = ("masks", "threshold", "prune_ratio")


def new_report(compiled, *, model: str, example: Any, request: dict[str, Any],
               goal: str, device: str = "cpu", data: str | None = None) -> dict[str, Any]:
    """A report with every :data:`REPORT_KEYS` entry: the compile's own facts filled in from
    ``compiled`` (a ``CompileResult``), the rest null for the caller to set."""
    report: dict[str, Any] = dict.fromkeys(REPORT_KEYS)
    s = compiled.stats
    shape = list(example.shape) if isinstance(example, torch.Tensor) else None
    square = shape is not None and len(shape) == 4 and shape[-1] == shape[-2]
    report.update(
        schema=REPORT_SCHEMA, model=model, data=data, example_shape=shape,
        imgsz=shape[-1] if square else None, device=str(device), goal=goal,
        request=dict(request), params_before=s.params_before, params_after=s.params_after,
        flops_before=s.flops_before, flops_after=s.flops_after,
        threshold=request.get("threshold"), prune_ratio=s.channels_pruned,
        max_error=compiled.max_error, pinned=dict(compiled.pinned),
        warnings=list(compiled.warnings), fold_pruned_bias=compiled.fold,
        compile=compiled.summary(), probes=[], notes=[])
    return report


def check_schema(report: dict[str, Any]) -> None:
    """Raise when ``report`` lacks a :data:`REPORT_KEYS` entry or has one more (a programming
    error, not a user's: the schema is fixed, and the output directory is not written)."""
    unknown = sorted(set(report) - set(REPORT_KEYS))
    missing = sorted(set(REPORT_KEYS) - set(report))
    if unknown or missing:
        raise ValueError(f"report.json schema mismatch: unknown keys {unknown}, missing {missing}")


def plain_goal(request: dict[str, Any]) -> str:
    """The goal name of a compile asked for by masks, a threshold or a prune ratio."""
    return next((k for k in PLAIN_GOALS if request.get(k) is not None), "prune_ratio")


def write_artifacts(compiled, out: Path, report: dict[str, Any], *, overwrite: bool = False,
                    inputs: Iterable[str | Path] = (), pt2: bool = True, onnx: bool = True,
                    ultralytics_checkpoint: Path | None = None,
                    source_model: torch.nn.Module | None = None,
                    ultralytics_extra: dict[str, Any] | None = None,
                    extra: Callable[[Path], Iterable[str]] | None = None,
                    started: float | None = None,
                    console: Console | None = None) -> dict[str, Any]:
    """Write the compile's artifact set into ``out`` and return ``report`` completed with
    ``artifacts`` and ``seconds`` (since ``started``, a ``time.perf_counter()`` value).

    ``extra(tmp)`` runs first inside the directory being built and returns the names it wrote
    there (a fine-tune run, plots; images among them are shown in report.md); it may update
    ``report``.  ``inputs``: the files the compile read, which ``out`` may not overlap.
    ``ultralytics_checkpoint``: also write an ultralytics checkpoint of the slim
    model there, built from ``source_model``."""
    check_schema(report)
    console = console or Console(stderr=True)
    written: list[str] = []
    with atomic_directory(out, overwrite=overwrite, inputs=inputs) as tmp:
        if extra is not None:
            written += list(extra(tmp))
            check_schema(report)            # ``extra`` may have added keys
        compiled.module.cpu()
        with console.status("writing the graphprune checkpoint"):
            compiled.save(tmp / "slim.graphprune.pt")
            written.append("slim.graphprune.pt")
        if pt2:
            with console.status("exporting slim.pt2 (torch.export)"):
                compiled.export_pt2(tmp / "slim.pt2")
                written.append("slim.pt2")
        if onnx:
            with console.status("exporting slim.onnx and checking it in onnxruntime"):
                compiled.export_onnx(tmp / "slim.onnx")
                written.append("slim.onnx")
        if ultralytics_checkpoint is not None:
            with console.status("writing the ultralytics checkpoint"):
                save_ultralytics_checkpoint(compiled, source_model, ultralytics_checkpoint,
                                            extra=ultralytics_extra or {})
            report["ultralytics_checkpoint"] = str(ultralytics_checkpoint)
        written += ["report.json", "report.md"]
        report["artifacts"] = written
        if started is not None:
            report["seconds"] = round(time.perf_counter() - started, 3)
        plots = [name for name in written if name.endswith((".png", ".svg"))]
        (tmp / "report.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
        (tmp / "report.md").write_text(markdown(report, plots))
    return report


__all__ = ["REPORT_KEYS", "REPORT_SCHEMA", "check_schema", "new_report", "plain_goal",
           "write_artifacts"]
