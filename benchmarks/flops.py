"""Parameters and FLOPs of baseline and pruned YOLOv5 models, cross-checked with torch-pruning.

Each model is pruned by graphprune at several global prune ratios (share of the prunable
BatchNorm channels removed, global |γ| ranking) and counted twice:

* **graphprune** (``graphprune.stats``): parameters of ``model.parameters()`` (shared ones once,
  buffers not counted) and FLOPs from ``torch.utils.flop_counter`` on the example input —
  GFLOPs = 2 × GMACs of convolutions and matrix products; BatchNorm, activations, pooling,
  upsampling, adds and the head's box decoding count nothing.
* **torch-pruning** (``torch_pruning.utils.count_ops_and_params``, a copy of ptflops'
  module-hook counter, ``torch_pruning/utils/op_counter.py``): forward hooks on modules whose
  *exact* type is in its table, so functional ops (``torch.cat``, ``+``, ``x.sigmoid()``) and
  subclasses of the listed types count nothing.  It returns **MACs**, per image, of: Conv1/2/3d
  and ConvTranspose k²·C_in/groups·C_out per output position plus 1 per output element when the
  convolution has a bias; Linear numel(input)·out_features plus out_features once for the bias;
  **2 per element for an affine BatchNorm** (1 without affine; also Instance/GroupNorm, LayerNorm);
  1 per *input* element of max/avg pooling (once per call: SPPF's shared MaxPool2d runs 3×); 1 per
  output element of ``nn.Upsample``; 1 per element for ReLU, ReLU6, LeakyReLU, PReLU, ELU and
  GELU — but **not SiLU** (YOLOv5's activation), which is absent from its table and counts 0.
  Its parameter count is ``sum(p.numel() for p in model.parameters())``, the same convention.

So the ratio flop_counter / (2 × torch-pruning MACs) is below 1: torch-pruning adds the
BatchNorm, pooling, upsampling and conv-bias terms.  The script splits torch-pruning's own
per-layer figures into those terms and also reports flop_counter / (2 × torch-pruning's
conv+linear MACs without bias), which is 1 exactly when every convolution and matrix product
runs in an ``nn.Conv*d``/``nn.Linear`` module, as in YOLOv5 — for the slim models too, which are
``torch.fx.GraphModule``s that keep the untraceable ``Detect`` head as a whole submodule (the
hooks still fire on the convolutions inside it).  All terms scale with the feature-map area, so
for image sizes that are multiples of 32 the ratios do not depend on ``--imgsz``.

The untrained models get random BatchNorm γ (``randomize_batchnorm``, log-uniform |γ|) as a
stand-in for a sparse-trained model; ``--weights`` takes a graphprune checkpoint instead.

    python -m benchmarks.flops                                 # yolov5n/s/m @ 640, 30/50/70 %
    python -m benchmarks.flops --quick                         # yolov5n @ 320, 50 %
    python -m benchmarks.flops --models yolov5s --ratios 0.5,0.8 --imgsz 320
    python -m benchmarks.flops --weights runs/demo/sparse/last.pt --imgsz 256
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from datetime import date
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
import torch.fx
import torch.nn as nn
from rich.console import Console
from rich.table import Table

import graphprune as gp
from graphprune.models import build, randomize_batchnorm
from graphprune.models.yolov5 import SCALES
from graphprune.stats import count_flops, count_params

from benchmarks.common import machine, stamp

HERE = Path(__file__).resolve().parent
CONVENTION = "GFLOPs = 2 × GMACs of convolutions and matrix products (torch.utils.flop_counter)"
TP_CONVENTION = ("torch-pruning MACs = conv/linear MACs + 1 per conv-bias output (+ out_features "
                 "per linear bias) + 2 per affine-BatchNorm element + 1 per pooling input "
                 "element + 1 per nn.Upsample output element + 1 per ReLU/ReLU6/LeakyReLU/PReLU/"
                 "ELU/GELU element; SiLU, functional and elementwise ops count 0 "
                 "(torch_pruning.utils.count_ops_and_params)")
WIDTH = 170
MAC_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def _tp_category(module: nn.Module, table: dict) -> str:
    """The term of torch-pruning's count a module contributes to, by the hook its table uses."""
    hook = getattr(table.get(type(module)), "__name__", "")
    for key, category in (("bn_", "batchnorm"), ("ln_", "batchnorm"), ("pool_", "pool"),
                          ("upsample_", "upsample"), ("relu_", "activation")):
        if hook.startswith(key):
            return category
    return "other"


def torch_pruning_count(model: nn.Module, x: torch.Tensor) -> dict[str, Any]:
    """torch-pruning's MACs and parameters of ``model``, its MACs split into their terms.

    The split uses torch-pruning's own per-layer figures (``layer_wise=True``): for a
    convolution it counts (k²·C_in/groups + [bias]) per output element, so its MACs without the
    bias are its figure · w/(w + 1), w = one filter's weight count; for a Linear with bias it
    adds out_features once.  Returns ``{"error": ...}`` when the counter fails on the model.
    """
    try:
        import torch_pruning as tp
        from torch_pruning.utils import op_counter
    except ImportError as e:
        return {"error": f"torch-pruning not installed ({e})"}
    try:
        total, params, layer_flops, _ = tp.utils.count_ops_and_params(model, (x,),
                                                                      layer_wise=True)
    except Exception as e:  # report why instead of failing the whole benchmark
        return {"error": f"{type(e).__name__}: {e}"}
    table = {**op_counter.MODULES_MAPPING, **op_counter.CUSTOM_MODULES_MAPPING}
    terms = dict.fromkeys(("mac_layers", "bias", "batchnorm", "pool", "upsample", "activation",
                           "other"), 0)
    counted = present = 0
    for module in model.modules():
        if type(module) not in table:
            continue
        flops = int(layer_flops.get(module) or 0)
        if type(module) in MAC_LAYERS:
            present += 1
            counted += flops > 0
            bias = 0
            if module.bias is not None and flops:
                if isinstance(module, nn.Linear):
                    bias = module.out_features
                else:
                    per_output = module.weight[0].numel()       # C_in/groups · k²
                    bias = flops // (per_output + 1)
            terms["mac_layers"] += flops - bias
            terms["bias"] += bias
        else:
            terms[_tp_category(module, table)] += flops
    total = int(total) if float(total).is_integer() else float(total)
    return {"macs": total, "params": int(params), "terms": terms,
            "mac_layers_counted": f"{counted}/{present}",
            "terms_sum_to_total": sum(terms.values()) == total}


def measure(model: nn.Module, x: torch.Tensor) -> dict[str, Any]:
    model.eval()
    flops, params = count_flops(model, (x,)), count_params(model)
    tp = torch_pruning_count(model, x)
    row: dict[str, Any] = {"params": params, "flops": flops, "tp_error": tp.get("error")}
    if "error" not in tp:
        row.update(tp_macs=tp["macs"], tp_params=tp["params"], tp_terms=tp["terms"],
                   tp_mac_layers_counted=tp["mac_layers_counted"],
                   tp_terms_sum_to_total=tp["terms_sum_to_total"],
                   flops_over_2tp=flops / (2 * tp["macs"]) if tp["macs"] else None,
                   flops_over_2tp_conv=flops / (2 * tp["terms"]["mac_layers"])
                   if tp["terms"]["mac_layers"] else None)
    return row


def _kind(model: nn.Module) -> str:
    return "torch.fx.GraphModule" if isinstance(model, torch.fx.GraphModule) \
        else type(model).__name__


def _fmt_ratio(value: float | None, digits: int = 6) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="yolov5n,yolov5s,yolov5m",
                        help="comma-separated built-in models (" +
                             ", ".join(f"yolov5{s}" for s in SCALES) + ")")
    parser.add_argument("--weights", type=Path, default=None,
                        help="a graphprune checkpoint to prune instead (--models is ignored)")
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--ratios", default="0.3,0.5,0.7",
                        help="global prune ratios (share of the prunable channels removed)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random γ")
    parser.add_argument("--quick", action="store_true", help="yolov5n @ 320, ratio 0.5")
    parser.add_argument("--json-out", type=Path, default=None)
    parser.add_argument("--results", type=Path, default=HERE / "results",
                        help="where flops.json and flops.txt go (not with --quick)")
    args = parser.parse_args(argv)
    if args.quick:
        args.imgsz, args.models, args.ratios = 320, "yolov5n", "0.5"
    ratios = [float(r) for r in args.ratios.split(",")]
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    for name in names:
        if name not in {f"yolov5{s}" for s in SCALES}:
            parser.error(f"unknown model {name!r}: choose from "
                         + ", ".join(f"yolov5{s}" for s in SCALES))
    x = torch.rand(1, 3, args.imgsz, args.imgsz, generator=torch.Generator().manual_seed(0))
    if args.weights is not None:
        sources = [(args.weights.stem, lambda: gp.load(args.weights))]
    else:
        sources = [(name, lambda name=name: randomize_batchnorm(
            build(name, num_classes=args.num_classes), args.seed)) for name in names]

    console = Console(stderr=True)
    rows: list[dict[str, Any]] = []
    for label, make in sources:
        with console.status(f"{label}: counting the baseline"):
            base = make().eval()
            base_row = {"model": label, "variant": "baseline", "prune_ratio": 0.0,
                        "channels_pruned": 0.0, "leaves": {}, "module": _kind(base),
                        **measure(base, x)}
        rows.append(base_row)
        for ratio in ratios:
            with console.status(f"{label}: pruning {ratio:.0%} and counting"), \
                    warnings.catch_warnings():
                warnings.simplefilter("ignore", gp.GraphpruneWarning)
                result = gp.compile(base, x, prune_ratio=ratio)
                slim = result.module.eval()
                rows.append({"model": label, "variant": f"pruned {ratio:.0%}",
                             "prune_ratio": ratio,
                             "channels_pruned": result.stats.channels_pruned,
                             "leaves": {n: type(slim.get_submodule(n)).__name__
                                        for n in result.leaves},
                             "module": _kind(slim),
                             **measure(slim, x)})
    for r in rows:
        base_row = next(b for b in rows if b["model"] == r["model"] and b["variant"] == "baseline")
        r["flops_kept"] = r["flops"] / base_row["flops"]
        r["params_kept"] = r["params"] / base_row["params"]
        r["tp_macs_kept"] = (r["tp_macs"] / base_row["tp_macs"]
                             if r.get("tp_macs") and base_row.get("tp_macs") else None)

    try:
        tp_version = metadata.version("torch-pruning")
    except metadata.PackageNotFoundError:
        tp_version = None
    source = (f"weights {args.weights}" if args.weights is not None
              else f"{args.num_classes} classes, random γ (seed {args.seed})")
    title = (f"Parameters and FLOPs @ {args.imgsz}x{args.imgsz}, batch 1, {source}: "
             f"graphprune (flop_counter) vs torch-pruning {tp_version} "
             f"({machine()}, torch {torch.__version__}, {date.today()})")
    table = Table(title=title)
    for col in ("model", "variant", "channels pruned", "params", "params (tp)", "GFLOPs",
                "FLOPs kept", "GMACs (tp)", "MACs kept (tp)", "FLOPs / 2·MACs (tp)",
                "FLOPs / 2·conv MACs (tp)"):
        table.add_column(col, justify="right")
    for r in rows:
        failed = r["tp_error"] is not None
        table.add_row(
            r["model"], r["variant"], f"{r['channels_pruned']:.1%}", f"{r['params']:,}",
            "failed" if failed else f"{r['tp_params']:,}", f"{r['flops'] / 1e9:.3f}",
            f"{r['flops_kept']:.3f}", "–" if failed else f"{r['tp_macs'] / 1e9:.3f}",
            _fmt_ratio(r["tp_macs_kept"], 3), _fmt_ratio(r.get("flops_over_2tp")),
            _fmt_ratio(r.get("flops_over_2tp_conv")))

    notes = [CONVENTION, TP_CONVENTION]
    for r in rows:
        if r["tp_error"] is not None:
            notes.append(f"torch-pruning failed on {r['model']} {r['variant']}: {r['tp_error']}")
            continue
        t = r["tp_terms"]
        extra = {k: v / r["tp_macs"] for k, v in t.items() if k != "mac_layers" and v}
        if r["variant"] == "baseline" or r["prune_ratio"] == max(ratios):
            notes.append(
                f"{r['model']} {r['variant']}: torch-pruning MACs = "
                f"{t['mac_layers'] / r['tp_macs']:.4%} conv/linear + "
                + " + ".join(f"{v:.4%} {k}" for k, v in extra.items())
                + f"; conv/linear layers counted {r['tp_mac_layers_counted']}"
                + ("" if r["tp_terms_sum_to_total"] else "; TERMS DO NOT ADD UP"))
        if r["params"] != r["tp_params"]:
            notes.append(f"{r['model']} {r['variant']}: parameter counts differ "
                         f"({r['params']:,} vs {r['tp_params']:,})")
    leaves = dict.fromkeys((r["model"], n, w) for r in rows for n, w in r["leaves"].items())
    for model, name, what in leaves:
        notes.append(f"{model}: the slim torch.fx.GraphModules keep {name} ({what}) whole; "
                     "torch-pruning's module hooks still count the convolutions inside it")

    out = Console(record=True, width=WIDTH)       # printed once, exported to flops.txt
    out.print(table)
    for note in notes:
        out.print(note, highlight=False)
    payload = {"imgsz": args.imgsz, "batch": 1, "num_classes": args.num_classes,
               "weights": str(args.weights) if args.weights is not None
               else f"random γ (seed {args.seed})",
               "ratios": ratios, "convention": CONVENTION, "tp_convention": TP_CONVENTION,
               **stamp(), "torch_pruning": tp_version,
               "date": str(date.today()), "rows": rows, "notes": notes}
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(payload, indent=2) + "\n")
    if not args.quick:
        args.results.mkdir(parents=True, exist_ok=True)
        (args.results / "flops.json").write_text(json.dumps(payload, indent=2) + "\n")
        (args.results / "flops.txt").write_text(out.export_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
