"""``--latency-target``: the measured speed-up it delivers, next to global rounding and the dense
model of equal FLOPs, in one run.

Per model (built from its definition with random BatchNorm γ, log-uniform, a stand-in for a
sparse-trained model), at one input size on onnxruntime's CPU provider:

* ``gp.prune_to_latency`` at ``--target`` (0.5: half the latency) with unrounded widths
  (``round_to`` 1) and with every width a multiple of 8 (``round_to`` 8): each search times its
  probes against the baseline, interleaved, and re-measures its choice;
* the dense model of equal FLOPs to the unrounded result (YOLOv5: the same depth, its width
  multiplier bisected to those FLOPs; not built for ultralytics models);
* then all of them, and the baseline, timed together once more (``--final-rounds``
  interleaved rounds, a shuffled order each round, medians), which the table reports: FLOPs and
  parameters removed, ORT milliseconds, the speed-up over the baseline, and the searches' own
  re-measured ratio.

    python -m benchmarks.latency_target                  # yolov5s, yolov8n @ 640 px, target 0.5
    python -m benchmarks.latency_target --quick          # yolov5n @ 128 px, a few rounds (tests)

yolov8n needs ultralytics (the second environment, ``.venv-tv``); without it that row is left
out and said so.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

import graphprune as gp
from graphprune.latency import OrtTimer, prune_to_latency
from graphprune.models import randomize_batchnorm
from graphprune.stats import count_flops, count_params

from benchmarks.common import stamp, write_results
from benchmarks.latency import dense_of_equal_flops

HERE = Path(__file__).resolve().parent
NUM_CLASSES = 10


def build(name: str) -> tuple[torch.nn.Module, str | None]:
    """The model and its YOLOv5 scale (for the dense twin), or ``None`` for ultralytics'."""
    if name.startswith("yolov5") and len(name) == 7:
        return gp.models.yolov5(name[-1], num_classes=NUM_CLASSES).eval(), name[-1]
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from ultralytics import YOLO     # deferred: ultralytics is an optional extra

    return YOLO(f"{name}.yaml").model.eval(), None


def measure(name: str, imgsz: int, target: float, threads: int, rounds: int,
            final_rounds: int, console: Console, warmup_s: float = 0.5) -> dict[str, Any]:
    model, scale = build(name)
    randomize_batchnorm(model, seed=0)
    x = torch.rand(1, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(0))
    flops, params = count_flops(model, (x,)), count_params(model)
    row: dict[str, Any] = {"model": name, "flops": flops, "params": params, "variants": {}}
    models = {"baseline": model}
    for k in (1, 8):
        with console.status(f"{name}: --latency-target {target} --round-to {k}"), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore", gp.GraphpruneWarning)
            timer = OrtTimer("ort-cpu", threads=threads, warmup_s=warmup_s)
            try:
                found = prune_to_latency(model, x, target, round_to=k, timer=timer,
                                         rounds=rounds, final_rounds=final_rounds)
            finally:
                timer.close()
        key = f"round_to_{k}"
        models[key] = found.compiled.module
        row["variants"][key] = {
            "flops": found.compiled.stats.flops_after,
            "params": found.compiled.stats.params_after,
            "channels_removed": found.compiled.stats.channels_pruned,
            "search_ratio": found.chosen.ratio, "feasible": found.search.feasible,
            "probes": [q.as_dict() for q in found.probes], "notes": list(found.search.notes)}
    if scale is not None:
        with console.status(f"{name}: the dense model of equal FLOPs"):
            dense, dense_flops, width = dense_of_equal_flops(
                scale, NUM_CLASSES, row["variants"]["round_to_1"]["flops"], x)
        models["dense"] = dense
        row["variants"]["dense"] = {"flops": dense_flops, "params": count_params(dense),
                                    "width": width}
    with console.status(f"{name}: all together, {final_rounds} interleaved rounds"):
        timer = OrtTimer("ort-cpu", threads=threads, warmup_s=warmup_s)
        try:
            for key, m in models.items():
                timer.prepare(key, m, (x,))
            samples = timer.measure(list(models), final_rounds)
        finally:
            timer.close()
    base = samples["baseline"]
    row["baseline_ms"] = statistics.median(base)
    for key in models:
        if key == "baseline":
            continue
        mine = samples[key]
        row["variants"][key].update(
            ms=statistics.median(mine),
            ratio=statistics.median(m / b for m, b in zip(mine, base)))
    return row


def table(rows: list[dict[str, Any]], imgsz: int, target: float, threads: int) -> Table:
    t = Table(title=f"--latency-target {target} on onnxruntime CPU ({threads} threads), "
                    f"{imgsz} px, all timed together", show_edge=False)
    for col in ("model", "variant", "FLOPs removed", "params removed", "ORT ms", "× baseline",
                "speed-up", "search's ratio"):
        t.add_column(col, justify="right")
    names = {"round_to_1": "latency target", "round_to_8": "latency target, round-to 8",
             "dense": "dense, FLOPs of the first"}
    for r in rows:
        t.add_row(r["model"], "baseline", "–", "–", f"{r['baseline_ms']:.1f}", "1.000", "1.00×",
                  "–")
        for key, v in r["variants"].items():
            t.add_row("", names[key], f"{1 - v['flops'] / r['flops']:.1%}",
                      f"{1 - v['params'] / r['params']:.1%}", f"{v['ms']:.1f}",
                      f"{v['ratio']:.3f}", f"{1 / v['ratio']:.2f}×",
                      f"{v['search_ratio']:.3f}" if "search_ratio" in v else "–")
    return t


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="yolov5s,yolov8n")
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--target", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--final-rounds", type=int, default=30)
    parser.add_argument("--quick", action="store_true",
                        help="yolov5n at 128 px, target 0.3, a few rounds")
    parser.add_argument("--results", type=Path, default=HERE / "results")
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args(argv)
    if not 0 < args.target < 1:
        parser.error(f"--target is a share in (0, 1), got {args.target}")
    if args.quick:
        args.models, args.imgsz, args.target = "yolov5n", 128, 0.3
        args.rounds, args.final_rounds = 3, 5
    console = Console(stderr=True)
    rows, skipped = [], []
    for name in [m for m in args.models.split(",") if m]:
        try:
            rows.append(measure(name, args.imgsz, args.target, args.threads, args.rounds,
                                args.final_rounds, console, 0.05 if args.quick else 0.5))
        except ImportError as exc:
            skipped.append(f"{name}: {exc}")
            console.print(f"{name} left out: {exc} (run it in .venv-tv)")
    payload = {"imgsz": args.imgsz, "target": args.target, "threads": args.threads,
               "rounds": args.rounds, "final_rounds": args.final_rounds, **stamp(),
               "rows": rows, "skipped": skipped}
    rendered = table(rows, args.imgsz, args.target, args.threads)
    Console().print(rendered)
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    if not args.quick:
        write_results(args.results, f"latency_target_{args.imgsz}", payload, [rendered],
                      width=120)
    return 0


if __name__ == "__main__":
    sys.exit(main())
