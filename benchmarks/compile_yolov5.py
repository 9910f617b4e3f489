"""Compile the built-in YOLOv5 models: wall time, parameters and FLOPs, reconstruct vs couple.

The γ of the untrained models are randomised (``randomize_batchnorm``: log-uniform |γ|), a
stand-in for a sparse-trained model; the masks come from a global prune ratio.  For each row the
same request is compiled with ``residual="reconstruct"`` (L1RR) and ``residual="couple"`` (one
shared mask per residual group), and both are verified slim == zero-masked.

    python -m benchmarks.compile_yolov5 [--quick] [--imgsz 640] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from datetime import date

import torch
from rich.console import Console
from rich.table import Table

import graphprune as gp
from graphprune.models import build, randomize_batchnorm

from benchmarks.common import machine


def timed_compile(model, x, repeats, **kwargs):
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", gp.GraphpruneWarning)
            result = gp.compile(model, x, **kwargs)
        times.append(time.perf_counter() - start)
    return result, statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="yolov5n only, 320x320, one repeat")
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = parser.parse_args(argv)
    models = ["yolov5n"] if args.quick else ["yolov5n", "yolov5s"]
    imgsz = 320 if args.quick else args.imgsz
    ratios = [0.5] if args.quick else [0.3, 0.5, 0.7]
    repeats = 1 if args.quick else 3
    x = torch.rand(1, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(0))
    rows = []
    for name in models:
        model = randomize_batchnorm(build(name, num_classes=args.num_classes), seed=0)
        for ratio in ratios:
            rec, seconds = timed_compile(model, x, repeats, prune_ratio=ratio)
            cpl, _ = timed_compile(model, x, 1, prune_ratio=ratio, residual="couple")
            rows.append({
                "model": name, "imgsz": imgsz, "prune_ratio": ratio,
                "compile_s": round(seconds, 3),
                "params_before": rec.stats.params_before,
                "params_ratio_reconstruct": round(rec.stats.params_ratio, 4),
                "params_ratio_couple": round(cpl.stats.params_ratio, 4),
                "flops_ratio_reconstruct": round(rec.stats.flops_ratio, 4),
                "flops_ratio_couple": round(cpl.stats.flops_ratio, 4),
                "channels_pruned_reconstruct": round(rec.stats.channels_pruned, 4),
                "channels_pruned_couple": round(cpl.stats.channels_pruned, 4),
                "max_error": rec.max_error,
            })
    table = Table(title=f"graphprune compile, {imgsz}x{imgsz}, random-γ YOLOv5 "
                        f"({machine()}, torch "
                        f"{torch.__version__}, {date.today()})")
    for col in ("model", "prune ratio", "compile s", "params after/before rec | couple",
                "FLOPs after/before rec | couple", "channels pruned rec | couple"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r["model"], f"{r['prune_ratio']:.1f}", f"{r['compile_s']:.2f}",
                      f"{r['params_ratio_reconstruct']:.3f} | {r['params_ratio_couple']:.3f}",
                      f"{r['flops_ratio_reconstruct']:.3f} | {r['flops_ratio_couple']:.3f}",
                      f"{r['channels_pruned_reconstruct']:.3f} | "
                      f"{r['channels_pruned_couple']:.3f}")
    console = Console(record=True, width=120)
    console.print(table)
    if not args.quick:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "compile_yolov5.json"), "w") as f:
            json.dump(rows, f, indent=2)
        with open(os.path.join(args.out, "compile_yolov5.txt"), "w") as f:
            f.write(console.export_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
