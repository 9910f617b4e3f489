"""ultralytics detection heads pruned inside: size and onnxruntime CPU latency, before and after.

ultralytics' Detect head cannot be traced (it rebuilds its anchors behind a shape check), so the
compiler keeps it whole, but its box and class branches are sealed blocks that graphprune
compiles on their own (``graphprune.inner``).  Per model, built from its yaml with random
BatchNorm γ (log-uniform, a stand-in for a sparse-trained model), in one run:

* **random masks p = 0.5** on every BatchNorm: the head's parameters and its share of the model,
  before and after; compile's own check (slim == zero-masked, every output, decoded boxes
  included) and ONNX Runtime parity;
* **a FLOPs goal** (``--flops-target``, default −50 %): graphprune's global |γ| ranking over the
  whole model, head branches included; and Torch-Pruning 1.6 at the same global ratio (the share
  of channels graphprune removed) with its BNScaleImportance, global pruning and the Detect head
  ignored, as its own YOLOv8 recipe does — or the reason it fails (it runs in a child process,
  stopped past 6 GiB of memory or 3 minutes);
* params, FLOPs (``torch.utils.flop_counter``) and ONNX Runtime CPU latency (batch 1, median of
  interleaved rounds) of the baseline and each pruned model.

    python -m benchmarks.heads                   # yolov8n, yolo11n and the -obb/-seg/-pose @ 640 px
    python -m benchmarks.heads --quick           # yolov8n @ 128 px, a few rounds (the tests)
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

import graphprune as gp
from graphprune.export import export_onnx
from graphprune.models import randomize_batchnorm
from graphprune.search import prune_to_target
from graphprune.stats import count_flops, count_params

from benchmarks.common import ort_session, stamp, time_sessions, write_results

HERE = Path(__file__).resolve().parent


def build(name: str) -> torch.nn.Module:
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from ultralytics import YOLO     # deferred: ultralytics is an optional extra

    return YOLO(f"{name}.yaml").model.eval()


def head_of(model: torch.nn.Module) -> str:
    return f"model.{len(model.model) - 1}"


def params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def head_row(model, slim, head: str) -> dict[str, Any]:
    before, after = params(model.get_submodule(head)), params(slim.get_submodule(head))
    return {"head_params_before": before, "head_params_after": after,
            "head_removed": 1 - after / before,
            "head_share_before": before / params(model),
            "head_share_after": after / params(slim)}


# Torch-Pruning runs in a child process with a budget: on yolo11n its pruner's memory grows
# without bound (past 24 GiB, until the kernel kills the run), which is a finding, not a crash
TP_TIMEOUT_S = 180.0
TP_MAX_GIB = 6.0


def _tp_child(model, x, ratio: float, out: str) -> None:
    """In the child process: prune with Torch-Pruning and save the result (or the error)."""
    import torch_pruning as tp     # deferred: an optional comparison

    work = copy.deepcopy(model).eval()
    head = work.get_submodule(head_of(work))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            small = torch.zeros(1, 3, 64, 64)      # its dependency graph, traced small
            pruner = tp.pruner.BNScalePruner(work, small,
                                             importance=tp.importance.BNScaleImportance(),
                                             global_pruning=True, pruning_ratio=ratio,
                                             ignored_layers=[head])
            pruner.step()
            with torch.no_grad():
                work(x)
    except Exception as exc:                 # noqa: BLE001 — any failure is the finding
        torch.save({"failed": f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"}, out)
        return
    torch.save({"model": work}, out)


def _rss_gib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30
    except (OSError, ValueError, IndexError):
        return 0.0


def tp_prune(model, x, ratio: float, timeout: float = TP_TIMEOUT_S, max_gib: float = TP_MAX_GIB):
    """Torch-Pruning's global BNScale pruning at ``ratio``, the Detect head ignored: its pruned
    copy, or the reason it failed — an exception, or (run in a child process) more than
    ``max_gib`` of memory or ``timeout`` seconds, after which the child is stopped."""
    context = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "tp.pt"
        child = context.Process(target=_tp_child, args=(model, x, ratio, str(out)))
        child.start()
        start = time.monotonic()
        while child.is_alive():
            child.join(0.5)
            reason = (f"stopped past {max_gib:g} GiB of memory"
                      if _rss_gib(child.pid) > max_gib else
                      f"stopped after {timeout:g} s" if time.monotonic() - start > timeout
                      else None)
            if reason is not None and child.is_alive():
                child.kill()
                child.join()
                return None, reason
        if not out.exists():
            return None, f"its process ended with exit code {child.exitcode}"
        # our own child's file, written a moment ago
        result = torch.load(out, map_location="cpu", weights_only=False)
    return result.get("model"), result.get("failed")


def measure(name: str, imgsz: int, flops_target: float, rounds: int, threads: int,
            console: Console) -> dict[str, Any]:
    model = randomize_batchnorm(build(name), seed=0)
    head = head_of(model)
    x = torch.rand(1, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(0))
    row: dict[str, Any] = {"model": name, "params": count_params(model),
                           "flops": count_flops(model, (x,))}
    rng = np.random.default_rng(1)
    masks = {n: rng.random(m.num_features) < 0.5 for n, m in model.named_modules()
             if isinstance(m, torch.nn.BatchNorm2d)}
    with warnings.catch_warnings(), tempfile.TemporaryDirectory() as tmp:
        warnings.simplefilter("ignore", gp.GraphpruneWarning)
        with console.status(f"{name}: random masks p = 0.5"):
            random_cut = gp.compile(model, x, masks=masks)
            random_cut.export_onnx(Path(tmp) / "random.onnx")     # raises unless ORT agrees
        row["random"] = {**head_row(model, random_cut.module, head),
                         "params_after": random_cut.stats.params_after,
                         "max_error": random_cut.max_error, "onnx_parity": True}
        with console.status(f"{name}: FLOPs −{flops_target:.0%}"):
            found = prune_to_target(model, x, None, flops_target=flops_target)
        slim = found.compiled
        checked = slim.export_onnx(Path(tmp) / "graphprune.onnx")   # raises unless ORT agrees
        ratio = slim.stats.channels_pruned
        row["graphprune"] = {**head_row(model, slim.module, head),
                             "params_after": slim.stats.params_after,
                             "flops_after": slim.stats.flops_after,
                             "channels_pruned": ratio, "max_error": slim.max_error}
        with console.status(f"{name}: Torch-Pruning at ratio {ratio:.2f}"):
            tp_model, failed = tp_prune(model, x, ratio)
        models = {"baseline": model, "graphprune": slim.module}
        if tp_model is not None:
            row["torch_pruning"] = {**head_row(model, tp_model, head),
                                    "params_after": count_params(tp_model),
                                    "flops_after": count_flops(tp_model, (x,))}
            models["torch_pruning"] = tp_model
        else:
            row["torch_pruning"] = {"failed": failed}
        with console.status(f"{name}: onnxruntime, {rounds} rounds"):
            sessions = {"graphprune": ort_session(checked, threads)}
            for key, m in models.items():
                if key != "graphprune":
                    path = export_onnx(copy.deepcopy(m).cpu().eval(), (x,),
                                       Path(tmp) / f"{key}.onnx", check=False)
                    sessions[key] = ort_session(path, threads)
            ms = time_sessions(sessions, x.numpy(), rounds)
    row["latency_ms"] = ms
    return row


def table(rows: list[dict[str, Any]], imgsz: int, flops_target: float) -> Table:
    t = Table(title=f"ultralytics heads pruned inside Detect, {imgsz} px, onnxruntime CPU",
              show_edge=False)
    for col in ("model", "cut", "params", "GFLOPs", "head params", "head share", "ORT ms"):
        t.add_column(col, justify="right")
    failures = []
    for r in rows:
        ms = r["latency_ms"]
        t.add_row(r["model"], "baseline", f"{r['params'] / 1e6:.2f} M",
                  f"{r['flops'] / 1e9:.2f}", f"{r['random']['head_params_before'] / 1e6:.3f} M",
                  f"{r['random']['head_share_before']:.1%}", f"{ms['baseline']:.1f}")
        rc = r["random"]
        t.add_row("", "random p = 0.5", f"{rc['params_after'] / 1e6:.2f} M", "–",
                  f"{rc['head_params_after'] / 1e6:.3f} M (−{rc['head_removed']:.0%})",
                  f"{rc['head_share_after']:.1%}", "–")
        g = r["graphprune"]
        t.add_row("", f"graphprune FLOPs −{flops_target:.0%}", f"{g['params_after'] / 1e6:.2f} M",
                  f"{g['flops_after'] / 1e9:.2f}",
                  f"{g['head_params_after'] / 1e6:.3f} M (−{g['head_removed']:.0%})",
                  f"{g['head_share_after']:.1%}", f"{ms['graphprune']:.1f}")
        tp = r["torch_pruning"]
        if "failed" in tp:
            failures.append(f"{r['model']}: Torch-Pruning failed ({tp['failed']})")
            t.add_row("", f"torch-pruning ratio {g['channels_pruned']:.2f}",
                      f"failed ({len(failures)})", "", "", "", "")
        else:
            t.add_row("", f"torch-pruning ratio {g['channels_pruned']:.2f}",
                      f"{tp['params_after'] / 1e6:.2f} M", f"{tp['flops_after'] / 1e9:.2f}",
                      f"{tp['head_params_after'] / 1e6:.3f} M (−{tp['head_removed']:.0%})",
                      f"{tp['head_share_after']:.1%}", f"{ms['torch_pruning']:.1f}")
    if failures:
        t.caption = "\n".join(f"({k}) {why}" for k, why in enumerate(failures, start=1))
    return t


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models",
                        default="yolov8n,yolo11n,yolov8n-obb,yolov8n-seg,yolov8n-pose")
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--flops-target", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="yolov8n at 128 px, 2 rounds")
    parser.add_argument("--results", type=Path, default=HERE / "results")
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args(argv)
    if not 0 < args.flops_target < 1:
        parser.error(f"--flops-target is a share in (0, 1), got {args.flops_target}")
    if args.quick:
        args.models, args.imgsz, args.rounds = "yolov8n", 128, 2
    console = Console(stderr=True)
    rows = [measure(m, args.imgsz, args.flops_target, args.rounds, args.threads, console)
            for m in args.models.split(",") if m]
    payload = {"imgsz": args.imgsz, "flops_target": args.flops_target, "rounds": args.rounds,
               "threads": args.threads, **stamp(), "rows": rows}
    rendered = table(rows, args.imgsz, args.flops_target)
    Console().print(rendered)
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    if not args.quick:
        write_results(args.results, "heads", payload, [rendered], width=130)
    return 0


if __name__ == "__main__":
    sys.exit(main())
