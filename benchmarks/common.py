"""What the benchmark scripts share: the machine/date stamp of a results file, writing a run's
results as JSON and as the printed table, onnxruntime sessions and interleaved timing, and
reading a training's minutes from its log.  The scripts run as modules of this package from the
repository root: ``python -m benchmarks.latency``."""

from __future__ import annotations

import copy
import io
import json
import os
import platform
import random
import statistics
import tempfile
import time
import warnings
from collections import defaultdict
from datetime import date
from pathlib import Path
from typing import Any, Callable, Sequence

import onnxruntime as ort
import torch
from rich.console import Console

import graphprune as gp
from graphprune.export import export_onnx


def machine() -> str:
    """The machine a figure was measured on, as results files and captions name it."""
    return f"{platform.machine()}, {os.cpu_count()} cores"


def stamp() -> dict[str, str]:
    """machine, torch version and date: the stamp every results JSON carries."""
    return {"machine": machine(), "torch": torch.__version__, "date": str(date.today())}


def op_name(op) -> str:
    """How a tradeoff operating point ``(kind, value)`` reads in a table."""
    kind, value = op
    return {"lfa": f"LFA⁺ ≤ {100 * value:g} %", "lfa2": f"LFA± ≤ {100 * value:g} %",
            "flops": f"FLOPs −{100 * value:g} %", "none": "unpruned"}[kind]


def dense_family_text(payload: dict[str, Any]) -> str:
    """How a tradeoff table's budget line names its dense family (or its absence)."""
    if not payload["summary"]["dense"]:
        return "no dense family in this run"
    return f"the dense family trains {payload['total_epochs']} epochs from scratch"


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


def ort_session(path: Path, threads: int, profile: bool = False):
    """An onnxruntime CPU session on ``path`` with ``threads`` intra-op threads, all graph
    optimisations, no spin-waiting, optionally profiling."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    # idle threads of a session spin-wait by default and take the cores from the next session
    # timed after it (the interleaved timing below runs several): off
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if profile:
        options.enable_profiling = True
        options.profile_file_prefix = str(path.with_suffix(""))
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def time_interleaved(runners: dict[str, Callable[[], Any]], rounds: int, warmup: int = 3
                     ) -> dict[str, float]:
    """Median milliseconds per call; one call of each runner per round, shuffled order."""
    for fn in runners.values():
        for _ in range(warmup):
            fn()
    samples = defaultdict(list)
    names = list(runners)
    rng = random.Random(0)
    for _ in range(rounds):
        rng.shuffle(names)
        for name in names:
            start = time.perf_counter()
            runners[name]()
            samples[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(v) for name, v in samples.items()}


def time_sessions(sessions: dict, feed, rounds: int) -> dict[str, float]:
    """Median milliseconds per run of each onnxruntime session on one input, interleaved."""
    return time_interleaved({n: (lambda s=s: s.run(None, {s.get_inputs()[0].name: feed}))
                             for n, s in sessions.items()}, rounds)


def ort_latency(models: dict, x: torch.Tensor, rounds: int, threads: int) -> dict[str, float]:
    """Export each model (a CPU copy) to ONNX and time them interleaved on ``x``."""
    with tempfile.TemporaryDirectory() as tmp:
        sessions = {name: ort_session(export_onnx(copy.deepcopy(m).cpu().eval(), (x,),
                                                  Path(tmp) / f"{name}.onnx"), threads)
                    for name, m in models.items()}
        return time_sessions(sessions, x.numpy(), rounds)
