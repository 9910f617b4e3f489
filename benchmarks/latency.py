"""Real latency of pruned models: measured speed-up against the ideal (the FLOPs ratio), and
against the fair yardstick — a dense model narrowed uniformly to the same FLOPs.

For each FLOPs target the model is pruned by graphprune (global |γ| ranking, residual
reconstruction), exported to ONNX, and timed in onnxruntime on the CPU (and in eager torch)
together with the baseline and the dense model of equal FLOPs: all models run interleaved, one
call each per round, in a shuffled order, and each reports the median of its rounds, so machine
noise hits them alike.  The untrained baseline gets random BatchNorm γ (log-uniform, as
``--random-bn``) as a stand-in for a sparse-trained model; ``--weights`` takes a real one.

    python -m benchmarks.latency                         # yolov5s @ 640, 30/50/65/70 % of FLOPs
    python -m benchmarks.latency --quick                 # yolov5s @ 320, fewer rounds
    python -m benchmarks.latency --round-to 8 --profile  # aligned widths; ORT op profile
    python -m benchmarks.latency --round-to 8 --runtime-widths --imgsz 320
                                   # + widths measured fast on onnxruntime (gp.WidthTable)

Results go to results/latency.{txt,json} at 640 px, results/latency_<imgsz> otherwise
(``--name`` to choose).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from datetime import date
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

import graphprune as gp
from graphprune.export import export_onnx
from graphprune.models import YOLOv5, randomize_batchnorm, yolov5
from graphprune.models.yolov5 import SCALES
from graphprune.stats import count_flops, count_params
from graphprune.widths import WidthTable, rounding_name

from benchmarks.common import (machine, ort_session, stamp, time_interleaved, time_sessions,
                               write_results)

HERE = Path(__file__).resolve().parent

RESIDUAL_OPS = ("Slice", "Gather", "Concat", "Add", "Split")


def dense_of_equal_flops(scale: str, num_classes: int, target: int, x: torch.Tensor):
    """A YOLOv5 of the same depth, its width multiplier bisected to ``target`` FLOPs."""
    depth, width = SCALES[scale]
    lo, hi = 0.01, width
    best = None
    for _ in range(14):
        mid = (lo + hi) / 2
        model = YOLOv5(num_classes, depth, mid).eval()
        flops = count_flops(model, (x,))
        if best is None or abs(flops - target) < abs(best[1] - target):
            best = (model, flops, mid)
        if flops > target:
            hi = mid
        else:
            lo = mid
    return best


def op_profile(session) -> dict[str, float]:
    """Milliseconds per ONNX op type over the profiled runs."""
    path = session.end_profiling()
    totals: dict[str, float] = defaultdict(float)
    with open(path) as f:
        for event in json.load(f):
            if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
                totals[event.get("args", {}).get("op_name", "?")] += event["dur"] / 1e3
    os.unlink(path)
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="yolov5s", choices=[f"yolov5{s}" for s in SCALES])
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--weights", type=Path, default=None,
                        help="a graphprune checkpoint of that model (default: random γ)")
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--targets", default="0.3,0.5,0.65,0.7",
                        help="FLOPs shares to remove")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--round-to", type=int, default=1, metavar="K",
                        help="also prune with channel counts rounded to multiples of K")
    parser.add_argument("--runtime-widths", action="store_true",
                        help="also prune with runtime-aware widths (graphprune.WidthTable: "
                             "each layer rounded to a width measured fast on onnxruntime)")
    parser.add_argument("--width-cache", type=Path, default=None,
                        help="the width table's cache file (default: the user cache)")
    parser.add_argument("--profile", action="store_true",
                        help="ORT op-type profile of the slim and dense models at the target "
                             "nearest 0.65")
    parser.add_argument("--no-torch", action="store_true", help="skip the eager torch timings")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json-out", type=Path, default=None)
    parser.add_argument("--quick", action="store_true", help="320 px, 10 rounds, 2 targets")
    parser.add_argument("--results", type=Path, default=HERE / "results")
    parser.add_argument("--name", default=None,
                        help="results file name (default: latency, latency_<imgsz> off 640 px)")
    args = parser.parse_args(argv)
    if args.quick:
        args.imgsz, args.rounds, args.targets = 320, 10, "0.5,0.65"
    torch.set_num_threads(args.threads)
    scale = args.model[-1]
    x = torch.rand(1, 3, args.imgsz, args.imgsz, generator=torch.Generator().manual_seed(0))
    if args.weights is not None:
        base = gp.load(args.weights).eval()
    else:
        base = randomize_batchnorm(yolov5(scale, args.num_classes), args.seed).eval()
    console = Console(stderr=True)
    base_flops, base_params = count_flops(base, (x,)), count_params(base)
    targets = [float(t) for t in args.targets.split(",")]
    variants = [(t, 1) for t in targets]
    if args.round_to > 1:
        variants += [(t, args.round_to) for t in targets]
    widths, widths_s = None, 0.0
    if args.runtime_widths:
        widths = WidthTable("ort-cpu", threads=args.threads, cache=args.width_cache or True)
        variants += [(t, widths) for t in targets]
    tmp = Path(tempfile.mkdtemp(prefix="gp-latency-"))
    models = {"baseline": base}
    paths = {"baseline": export_onnx(base, (x,), tmp / "baseline.onnx")}
    info = {}
    for target, k in variants:
        tag = "" if k == 1 else "_rt" if k is widths else f"_r{k}"
        name = f"slim{int(round(100 * target))}{tag}"
        with console.status(f"pruning {target:.0%} of the FLOPs (round-to "
                            f"{rounding_name(k)})"), warnings.catch_warnings():
            warnings.simplefilter("ignore", gp.GraphpruneWarning)
            start = time.perf_counter()
            found = gp.prune_to_target(base, x, None, flops_target=target, round_to=k)
            if k is widths:
                widths_s += time.perf_counter() - start
        slim = found.compiled.module.eval()
        models[name] = slim
        paths[name] = found.compiled.export_onnx(tmp / f"{name}.onnx")
        info[name] = {"target": target, "round_to": rounding_name(k), "stats": found.compiled.stats,
                      "pieces": dict(found.compiled.emit_stats)}
        if k == 1:
            with console.status(f"narrowing a dense {args.model} to the same FLOPs"):
                dense, flops, width = dense_of_equal_flops(scale, args.num_classes,
                                                           found.compiled.stats.flops_after, x)
            dname = f"dense{int(round(100 * target))}"
            models[dname] = dense
            paths[dname] = export_onnx(dense, (x,), tmp / f"{dname}.onnx")
            info[dname] = {"target": target, "width": width, "flops": flops,
                           "params": count_params(dense)}
    feed = x.numpy()
    sessions = {n: ort_session(p, args.threads) for n, p in paths.items()}
    with console.status(f"timing {len(sessions)} models in onnxruntime, {args.rounds} rounds"):
        ort_ms = time_sessions(sessions, feed, args.rounds)
    torch_ms = {}
    if not args.no_torch:
        def eager(m):
            def run():
                with torch.no_grad():
                    m(x)
            return run
        with console.status(f"timing {len(models)} models in eager torch"):
            torch_ms = time_interleaved({n: eager(m) for n, m in models.items()},
                                        max(args.rounds // 2, 5))
    rows = []
    for name, meta in info.items():
        if not name.startswith("slim"):
            continue
        s = meta["stats"]
        dname = f"dense{int(round(100 * meta['target']))}"
        ideal = s.flops_before / s.flops_after
        measured = ort_ms["baseline"] / ort_ms[name]
        rows.append({
            "model": name, "round_to": meta["round_to"], "flops_target": meta["target"],
            "prune_ratio": s.channels_pruned, "flops_ratio": s.flops_ratio,
            "params_ratio": s.params_ratio, "ideal_speedup": ideal,
            "measured_speedup": measured, "efficiency": measured / ideal,
            "ort_ms": ort_ms[name], "baseline_ms": ort_ms["baseline"],
            "dense_ms": ort_ms[dname], "dense_width": info[dname]["width"],
            "dense_flops_ratio": info[dname]["flops"] / base_flops,
            "dense_speedup": ort_ms["baseline"] / ort_ms[dname],
            "slim_vs_dense": ort_ms[name] / ort_ms[dname],
            "torch_speedup": torch_ms["baseline"] / torch_ms[name] if torch_ms else None,
            "torch_dense_speedup": torch_ms["baseline"] / torch_ms[dname] if torch_ms else None,
            "residual_pieces": meta["pieces"]})
    for r in rows:                   # each rounding next to round-to K at the same target
        other = f"slim{int(round(100 * r['flops_target']))}_r{args.round_to}"
        r["vs_round_to"] = (r["ort_ms"] / ort_ms[other]
                            if other in ort_ms and other != r["model"] else None)
    profile = None
    if args.profile:
        near = min((r for r in rows if r["round_to"] == 1),
                   key=lambda r: abs(r["flops_target"] - 0.65))
        profile = {}
        for name in (near["model"], f"dense{int(round(100 * near['flops_target']))}"):
            session = ort_session(paths[name], args.threads, profile=True)
            for _ in range(args.rounds):
                session.run(None, {session.get_inputs()[0].name: feed})
            ops = op_profile(session)
            total = sum(ops.values())
            profile[name] = {"ms_per_run": {k: v / args.rounds for k, v in ops.items()},
                             "residual_share": sum(v for k, v in ops.items()
                                                   if k in RESIDUAL_OPS) / max(total, 1e-9)}
    title = (f"{args.model} ({args.num_classes} classes) @ {args.imgsz}, onnxruntime CPU, "
             f"{args.threads} threads, median of {args.rounds} interleaved rounds: baseline "
             f"{ort_ms['baseline']:.1f} ms, {base_params:,} params, "
             f"{base_flops / 1e9:.2f} GFLOPs ({machine()}, "
             f"{date.today()})")
    table = Table(title=title)
    for col in ("model", "channels pruned", "FLOPs after", "ideal speed-up", "measured",
                "efficiency", "dense of ≈ equal FLOPs", "slim / dense time", "torch eager: slim ·"
                " dense"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r["model"], f"{r['prune_ratio']:.1%}", f"{r['flops_ratio']:.3f}",
                      f"{r['ideal_speedup']:.2f}×", f"{r['measured_speedup']:.2f}×",
                      f"{r['efficiency']:.2f}",
                      f"{r['dense_speedup']:.2f}× (FLOPs {r['dense_flops_ratio']:.3f})",
                      f"{r['slim_vs_dense']:.3f}",
                      "–" if r["torch_speedup"] is None else
                      f"{r['torch_speedup']:.2f}× · {r['torch_dense_speedup']:.2f}×")
    lines = [f"{r['model']}: {r['vs_round_to']:.3f}x the time of round-to {args.round_to} at "
             f"the same target (FLOPs {r['flops_ratio']:.3f})"
             for r in rows if r["model"].endswith("_rt") and r["vs_round_to"] is not None]
    if widths is not None:
        lines.append(f"width table: {widths.timed} stand-ins timed in {widths_s:.0f} s of "
                     f"pruning to {len(targets)} targets")
    lines += [f"ORT profile {name} (ms/run): "
             + ", ".join(f"{k} {v:.1f}" for k, v in list(p["ms_per_run"].items())[:8])
             + f"; Slice/Gather/Concat/Add/Split {p['residual_share']:.1%} of kernel time"
             for name, p in (profile or {}).items()]
    for item in (table, *lines):
        Console().print(item)
    payload = {"model": args.model, "num_classes": args.num_classes, "imgsz": args.imgsz,
               "threads": args.threads, "rounds": args.rounds, "round_to": args.round_to,
               "weights": str(args.weights) if args.weights else "random γ (seed "
               f"{args.seed})", "baseline_ms": ort_ms["baseline"],
               "baseline_torch_ms": torch_ms.get("baseline"), "baseline_flops": base_flops,
               "baseline_params": base_params, **stamp(),
               "rows": rows, "profile": profile,
               "width_table": None if widths is None else {
                   "timed": widths.timed, "seconds": widths_s, "tolerance": widths.tolerance,
                   "span": widths.span, "rounds": widths.rounds}}
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(payload, indent=2) + "\n")
    if not args.quick:
        name = args.name or ("latency" if args.imgsz == 640 else f"latency_{args.imgsz}")
        write_results(args.results, name, payload, [table, *lines], 170)
    return 0


if __name__ == "__main__":
    sys.exit(main())
