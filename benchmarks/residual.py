"""The paper's residual-reconstruction claim, measured: for one sparse model and one global
threshold on |γ|, graphprune's reconstruction (the branches of a residual add keep different
channels) against the conventional coupling (one shared mask per residual group), against
``residual="auto"`` (reconstruct a group only where the FLOPs saved outweigh its extra nodes)
and against torch-pruning's own pruners (``BNScalePruner`` and ``GroupNormPruner``, global
ranking over their dependency groups, asked for the share of channels the threshold selects).

Columns: parameters and FLOPs left, onnxruntime latency (interleaved, median), and — when the
model comes with data — the feature attention loss LFA⁺ and mAP@0.5, all without fine-tuning.
graphprune's variants fold the pruned channels' constants (``--no-fold`` for plain
zero-masking); torch-pruning removes the channels together with their β.

    python -m benchmarks.residual                        # the demo's sparse model (make demo)
    python -m benchmarks.residual --random yolov5s       # random γ, no data: params/FLOPs/latency
    python -m benchmarks.residual --weights W.pt --data D.yaml --imgsz 320 --threshold 0.01
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import warnings
from datetime import date
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

import graphprune as gp
from graphprune import data as gpdata
from graphprune.detect.loss import find_detect
from graphprune.detect.val import resolve_device
from graphprune.export import export_onnx
from graphprune.models import randomize_batchnorm, yolov5
from graphprune.stats import count_flops, count_params
from graphprune.workflow import evaluate_map

from benchmarks.common import machine, ort_session, time_sessions, write_results

HERE = Path(__file__).resolve().parent


def torch_pruning_model(model, x, ratio: float, kind: str):
    """torch-pruning's pruner on a copy of ``model``: global ranking over its groups, the
    detection head's output convolutions left alone."""
    import torch_pruning as tp

    work = copy.deepcopy(model).eval()
    head = find_detect(work)
    if kind == "bnscale":
        importance = tp.importance.BNScaleImportance()
        pruner_class = tp.pruner.BNScalePruner
    else:
        importance = tp.importance.GroupMagnitudeImportance(p=2)
        pruner_class = tp.pruner.GroupNormPruner
    pruner = pruner_class(work, x, importance=importance, global_pruning=True,
                          pruning_ratio=ratio, ignored_layers=[head])
    pruner.step()
    return work


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=Path("runs/demo/sparse/last.pt"))
    parser.add_argument("--data", type=Path, default=Path("runs/demo/data/data.yaml"))
    parser.add_argument("--random", default=None, metavar="yolov5s",
                        help="use this built-in model with random γ instead (no data)")
    parser.add_argument("--imgsz", type=int, default=256, help="input size of LFA and mAP")
    parser.add_argument("--latency-imgsz", type=int, default=640)
    parser.add_argument("--threshold", type=float, default=None,
                        help="global δ on |γ| (default: 0.01, or 0.1 for random γ)")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--calib-images", type=int, default=64)
    parser.add_argument("--no-torch-pruning", action="store_true")
    parser.add_argument("--no-fold", action="store_true",
                        help="graphprune variants without bias folding (plain zero-masking)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json-out", type=Path, default=None)
    parser.add_argument("--results", type=Path, default=HERE / "results")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    console = Console(stderr=True)
    if args.random:
        model = randomize_batchnorm(yolov5(args.random[-1], 10), 0).eval()
        data = None
        source = f"{args.random} with random γ"
    else:
        for path in (args.weights, args.data):
            if not path.exists():
                sys.exit(f"residual.py: {path} does not exist: run make demo, or pass "
                         "--weights/--data, or --random yolov5s")
        model = gp.load(args.weights).eval()
        data = gpdata.load_data_config(args.data)
        source = str(args.weights)
    delta = args.threshold if args.threshold is not None else (0.1 if args.random else 0.01)
    x = torch.rand(1, 3, args.imgsz, args.imgsz, generator=torch.Generator().manual_seed(0))
    xl = torch.rand(1, 3, args.latency_imgsz, args.latency_imgsz,
                    generator=torch.Generator().manual_seed(1))
    device = resolve_device(args.device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        variants = {}
        for mode in ("reconstruct", "couple", "auto"):
            # auto weighs FLOPs against nodes at the size it will run at: the latency size
            with console.status(f"compiling at δ = {delta} ({mode})"):
                variants[mode] = gp.compile(model, xl if mode == "auto" else x,
                                            threshold=delta, residual=mode,
                                            fold_pruned_bias=not args.no_fold).module
        report = gp.analyze(model, x)
        gammas = np.concatenate([s.gamma for s in report.statistics.values()])
        asked = float((gammas < delta).mean())
        if not args.no_torch_pruning:
            for kind in ("bnscale", "groupnorm"):
                with console.status(f"torch-pruning {kind} at {asked:.1%} of the channels"):
                    try:
                        variants[f"torch-pruning {kind}"] = torch_pruning_model(
                            model, x, asked, kind)
                    except Exception as exc:          # report, keep going
                        console.print(f"torch-pruning {kind} failed: {type(exc).__name__}: "
                                      f"{exc}")
    calib = fa_sparse = None
    if data is not None:
        calib = gp.CalibrationSet.from_dataset(
            gpdata.DetectionDataset(data.val, data.names, args.imgsz), args.calib_images)
        fa_sparse = gp.feature_attention(model, calib)
    base_flops, base_params = count_flops(model, (xl,)), count_params(model)
    tmp = Path(tempfile.mkdtemp(prefix="gp-residual-"))
    sessions = {"sparse (unpruned)": ort_session(export_onnx(model, (xl,), tmp / "base.onnx"),
                                                 os.cpu_count())}
    rows = []
    for name, m in variants.items():
        path = export_onnx(m, (xl,), tmp / f"{name.replace(' ', '_')}.onnx")
        sessions[name] = ort_session(path, os.cpu_count())
        row = {"variant": name, "params": count_params(m), "flops": count_flops(m, (xl,))}
        if calib is not None:
            row["lfa_plus"] = gp.lfa(gp.feature_attention(m, calib), fa_sparse).plus
            row["map50"] = evaluate_map(m, data, args.imgsz, device).map50
        rows.append(row)
    feed = xl.numpy()
    with console.status(f"timing {len(sessions)} models, {args.rounds} interleaved rounds"):
        ms = time_sessions(sessions, feed, args.rounds)
    sparse_map = evaluate_map(model, data, args.imgsz, device).map50 if data else None
    for row in rows:
        row.update(params_ratio=row["params"] / base_params, flops_ratio=row["flops"] / base_flops,
                   ms=ms[row["variant"]], speedup=ms["sparse (unpruned)"] / ms[row["variant"]])
    title = (f"{source}: global δ = {delta} ({asked:.1%} of the prunable channels below it; "
             f"graphprune {'without' if args.no_fold else 'with'} bias folding); "
             f"latency at {args.latency_imgsz} px in onnxruntime, unpruned "
             f"{ms['sparse (unpruned)']:.1f} ms" + (f"; sparse mAP50 {sparse_map:.3f}"
                                                     if sparse_map is not None else "") +
             f" ({machine()}, {date.today()})")
    table = Table(title=title)
    for col in ("variant", "params left", "FLOPs left", "latency", "speed-up", "LFA⁺", "mAP50"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r["variant"], f"{r['params']:,} ({r['params_ratio']:.3f})",
                      f"{r['flops'] / 1e9:.3f} G ({r['flops_ratio']:.3f})", f"{r['ms']:.1f} ms",
                      f"{r['speedup']:.2f}×",
                      f"{r['lfa_plus']:.2%}" if "lfa_plus" in r else "–",
                      f"{r['map50']:.3f}" if "map50" in r else "–")
    Console().print(table)
    payload = {"source": source, "threshold": delta, "share_below": asked,
               "fold_pruned_bias": not args.no_fold,
               "imgsz": args.imgsz, "latency_imgsz": args.latency_imgsz,
               "unpruned_ms": ms["sparse (unpruned)"], "sparse_map50": sparse_map,
               "params_before": base_params, "flops_before": base_flops,
               "machine": machine(),
               "date": str(date.today()), "rows": rows}
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(payload, indent=2) + "\n")
    if not args.no_write:
        write_results(args.results, "residual_random" if args.random else "residual",
                      payload, [table], 150)
    return 0


if __name__ == "__main__":
    sys.exit(main())
