"""The ``graphprune`` command line.

    graphprune compile MODEL (--prune-ratio R | --threshold D | --masks FILE) --out DIR
    graphprune inspect MODEL

Errors are one line (what, where, how to fix) and a non-zero exit code; ``--debug`` shows the
traceback.  Outputs are written to a temporary directory and moved into place when complete.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from . import __version__
from . import data as gpdata
from .argtypes import (EVALUATION_FACTOR, INFERENCE_FACTOR, classes, image_side, non_negative,
                       non_negative_real, positive, positive_real, real, refuse_oversized,
                       unit_interval, whole, workers)
from .argtypes import round_to as round_to_arg
from .artifacts import new_report, plain_goal, write_artifacts
from .checkpoint import open_model
from .context import CompileConfig, ranked_names
from .data.cli import add_data_parser
from .demo import run_demo
from .detect.train import TrainConfig, Trainer, default_workers, resume
from .detect.val import check_classes, resolve_device, validate
from .errors import GraphpruneError, summary
from .export import atomic_path, refuse_existing_output, refuse_output_file, staged_directory
from .integrations.ultralytics import is_detection_model
from .timing import RUNTIMES
from .masks import producers
from .models import DETECTORS, randomize_batchnorm
from .pipeline import analyze, check_example
from .pipeline import compile as gp_compile
from .pipeline import validate_request
from .report import accuracy_rows, fold_sentence
from .sparsity import default_phases
from .widths import WidthTable, is_width_table, rounding_name
from .workflow import target_compile

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a shape like 1,3,640,640") from None
    if not shape or any(s < 1 for s in shape):
        raise argparse.ArgumentTypeError(f"{text!r}: every dimension must be >= 1")
    return shape


_ratio = real(lambda v: 0 <= v < 1,
                 "{} is outside [0, 1): 0.5 prunes half of the prunable channels")
_threshold = real(lambda v: v >= 0, "{}: the threshold on |γ| must be >= 0")
_positive = real(lambda v: v > 0, "{}: the LFA target must be > 0 (0.01 allows a 1 % loss)")
_open_ratio = real(lambda v: 0 < v < 1, "{} is outside (0, 1): 0.65 removes 65 %")
SPARSITY_MODES = ("progressive", "l1rr", "dsm", "ns", "si", "hoyer", "polar")


_period = whole(0, what="a number of epochs (0: off)")


def _model_args(p: argparse.ArgumentParser) -> None:
    """MODEL and the options that open it (compile, inspect)."""
    p.add_argument("model", metavar="MODEL",
                   help="a graphprune checkpoint, a pickled nn.Module (with "
                        "--trust-checkpoint), or a built-in name such as yolov5s")
    p.add_argument("--num-classes", type=classes, default=None,
                   help="classes of a built-in model (default: its own default)")
    p.add_argument("--example-shape", type=_shape, default=None, metavar="N,C,H,W",
                   help="example input shape (default: the checkpoint's, else "
                        "1,3,640,640)")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="allow unpickling MODEL (runs code stored in the file: only for "
                        "files you trust)")
    p.add_argument("--leaf", action="append", default=[], metavar="MODULE",
                   help="keep this submodule whole in the trace (repeatable)")
    p.add_argument("--random-bn", type=non_negative, default=None, metavar="SEED",
                   help="randomise the BatchNorm γ/β and statistics first (a stand-in "
                        "for a trained model when trying a built-in one)")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="show tracebacks on errors")


# the options only a target-guided compile (--lfa-target, --flops-target, --params-target)
# reads; a plain compile given one of them refuses it rather than ignore it
TARGET_ONLY = ("data", "calib_images", "lfa_mode", "lfa_layers", "lfa_criterion", "eval",
               "baseline", "finetune_epochs", "heatmaps", "device", "runtime",
               "latency_threads", "latency_batch", "latency_rounds")
LATENCY_ONLY = ("runtime", "latency_threads", "latency_batch", "latency_rounds")
WIDTH_OPTIONS = ("runtime", "latency_threads", "latency_batch")     # --round-to runtime reads
# kept channels per layer when --round-to is not given: benchmarks/latency.py measured
# unrounded widths 5-12 % slower than the dense model of equal FLOPs at 30-50 % of the FLOPs
# removed (yolov5s, onnxruntime CPU, 320 and 640 px), multiples of 8 within 1.05x at every point
DEFAULT_ROUND_TO = 8
METHODS = ("--prune-ratio", "--threshold", "--masks", "--lfa-target", "--flops-target",
           "--params-target", "--latency-target")


def _compile_parser(sub) -> None:
    """graphprune compile MODEL ..."""
    c = sub.add_parser("compile", help="prune MODEL into a slim, verified model + ONNX")
    _model_args(c)
    how = c.add_mutually_exclusive_group()
    how.add_argument("--prune-ratio", type=_ratio, metavar="R",
                     help="prune this share of the ranked channels, least important first: "
                          "BatchNorm channels by |γ| (a model without BatchNorm: every norm, "
                          "convolution and linear layer by its layer-relative magnitude)")
    how.add_argument("--threshold", type=_threshold, metavar="D",
                     help="prune the ranked channels whose importance (|γ| of a BatchNorm) is "
                          "below D (global threshold δ)")
    how.add_argument("--masks", type=Path, metavar="FILE",
                     help="JSON file {layer name: [0/1 per channel]}: any BatchNorm, GroupNorm, "
                          "channel LayerNorm, or convolution or linear layer with no norm "
                          "after it")
    how.add_argument("--lfa-target", type=_positive, metavar="T",
                     help="prune as far as the feature attention loss LFA⁺ stays <= T "
                          "(0.01 = 1 %%; needs --data)")
    how.add_argument("--flops-target", type=_open_ratio, metavar="R",
                     help="remove at least this share of the FLOPs (0.65 = 65 %%)")
    how.add_argument("--params-target", type=_open_ratio, metavar="R",
                     help="remove at least this share of the parameters")
    c.add_argument("--latency-target", type=_open_ratio, metavar="R",
                   help="remove at least this share of the measured latency (0.5 = twice as "
                        "fast): each probe is compiled and timed on --runtime against the "
                        "unpruned model; with --lfa-target, only within the LFA bound")
    c.add_argument("--runtime", choices=tuple(RUNTIMES), default="ort-cpu",
                   help="where --latency-target and --round-to runtime time: onnxruntime on "
                        "the CPU (default), "
                        "CUDA, TensorRT or OpenVINO (their providers must be installed)")
    c.add_argument("--latency-threads", type=positive, default=2, metavar="N",
                   help="intra-op threads of the timed runtime (default 2)")
    c.add_argument("--latency-batch", type=positive, default=1, metavar="B",
                   help="batch size the latency is timed at (default 1)")
    c.add_argument("--latency-rounds", type=positive, default=10, metavar="N",
                   help="interleaved rounds per probe (default 10; the chosen prune is timed "
                        "again with at least 20)")
    c.add_argument("--data", default=None, metavar="D.yaml",
                   help="dataset (ultralytics data.yaml): its val images calibrate the LFA "
                        "search and --eval measures mAP on them")
    c.add_argument("--imgsz", type=image_side, default=None, metavar="S",
                   help="square input size (default: the checkpoint's, else 640)")
    c.add_argument("--calib-images", type=positive, default=64, metavar="N",
                   help="val images the LFA is measured on (default 64)")
    c.add_argument("--lfa-mode", choices=("confidence", "features"), default="confidence",
                   help="F = the head's target confidence (default) or the feature maps "
                        "entering the head")
    c.add_argument("--lfa-layers", default=None, metavar="NAME,...",
                   help="modules whose outputs are read as the detection levels")
    c.add_argument("--lfa-criterion", choices=("plus", "two-sided"), default="plus",
                   help="what --lfa-target bounds: LFA⁺, the losses of feature attention "
                        "(default), or LFA±, any change (gains of attention count too)")
    c.add_argument("--eval", action="store_true", help="also measure mAP before and after")
    c.add_argument("--baseline", default=None, metavar="CKPT",
                   help="with --eval: the unpruned model the sparse one was trained from "
                        "(a graphprune checkpoint); the report measures the drop from it")
    c.add_argument("--finetune-epochs", type=non_negative, default=0, metavar="N",
                   help="fine-tune the slim model for N epochs (written to DIR/finetune; "
                        "an ultralytics model in ultralytics' own trainer, its "
                        "weights/best.pt the fine-tuned slim checkpoint)")
    c.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda")
    c.add_argument("--fold-pruned-bias", action="store_true",
                   help="fold the constant a pruned channel still emits (act(β)) into "
                        "downstream biases; the reference becomes the γ-zeroed model")
    c.add_argument("--heatmaps", type=non_negative, default=4, metavar="N",
                   help="calibration images drawn in attention.png (default 4, 0 = none)")
    c.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="output directory (refused if it exists, unless --overwrite)")
    c.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    c.add_argument("--residual", choices=("reconstruct", "couple", "auto"), default="reconstruct",
                   help="reconstruct: residual branches keep different channels (L1RR); "
                        "couple: one shared mask per residual group (conventional); auto: "
                        "reconstruct a group only where the FLOPs it saves outweigh the "
                        "extra nodes it takes")
    c.add_argument("--min-channels", type=positive, default=1, metavar="K",
                   help="keep at least K channels in every layer (default 1)")
    c.add_argument("--round-to", type=round_to_arg, default=None, metavar="K|runtime",
                   help="keep a multiple of K channels in every layer, the extra ones by "
                        "importance (|γ| of a BatchNorm); 'runtime': round each layer to a "
                        f"width measured fast on --runtime (cached). Default {DEFAULT_ROUND_TO}"
                        " (1 with --masks: the masks as given)")
    c.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                   help="leave the layers matching this name pattern or module prefix whole "
                        "(repeatable)")
    c.add_argument("--ultralytics-checkpoint", type=Path, default=None, metavar="PATH",
                   help="also write the slim model as an ultralytics checkpoint (MODEL must be "
                        "an ultralytics DetectionModel): YOLO(PATH).val() and predict load it; "
                        "it is a pickled module, so loading it needs graphprune installed")
    c.add_argument("--no-onnx", action="store_true", help="do not write slim.onnx")
    c.add_argument("--no-pt2", action="store_true", help="do not write slim.pt2")
    c.set_defaults(func=cmd_compile, compile_parser=c,
                   target_only_defaults={name: c.get_default(name) for name in TARGET_ONLY})



def _inspect_parser(sub) -> None:
    """graphprune inspect MODEL"""
    i = sub.add_parser("inspect", help="show dependency groups, prunable channels, pins and "
                                       "the γ histogram; writes nothing")
    _model_args(i)
    i.set_defaults(func=cmd_inspect)


def _train_parser(sub) -> None:
    """graphprune train --data D.yaml ..."""
    t = sub.add_parser("train", help="train a built-in YOLOv5 on a YOLO-format dataset")
    t.add_argument("--data", help="dataset data.yaml (ultralytics convention)")
    t.add_argument("--model", default="yolov5s", choices=DETECTORS,
                   help="built-in architecture (default yolov5s)")
    t.add_argument("--weights", default=None, metavar="CKPT",
                   help="start from this graphprune checkpoint (e.g. a compiled slim model)")
    t.add_argument("--imgsz", type=image_side, default=640)
    t.add_argument("--epochs", type=positive, default=None,
                   help="epochs to train (default 100; with --resume: the run's own)")
    t.add_argument("--batch", type=positive, default=16)
    t.add_argument("--workers", type=workers, default=None,
                   help="loader processes (default: 0 on <= 2 cores, else half the cores)")
    t.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1")
    t.add_argument("--seed", type=non_negative, default=0)
    t.add_argument("--out", type=Path, default=None, metavar="DIR")
    t.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    t.add_argument("--resume", type=Path, default=None, metavar="LAST_PT",
                   help="continue the run that wrote this last.pt (its settings are reused; "
                        "--epochs may extend it)")
    t.add_argument("--lr0", type=positive_real, default=0.01, help="initial learning rate")
    t.add_argument("--lrf", type=positive_real, default=0.01, help="final learning rate, × lr0")
    t.add_argument("--cos-lr", action="store_true", help="cosine instead of linear decay")
    t.add_argument("--warmup-epochs", type=non_negative_real, default=3.0)
    t.add_argument("--nominal-batch", type=positive, default=64, metavar="N",
                   help="accumulate gradients to about N images a step (YOLOv5: 64)")
    t.add_argument("--box-gain", type=non_negative_real, default=0.05)
    t.add_argument("--obj-gain", type=non_negative_real, default=1.0)
    t.add_argument("--cls-gain", type=non_negative_real, default=0.5,
                   help="class-loss gain before YOLOv5's ×classes/80 scaling")
    t.add_argument("--hyp", action="append", default=[], metavar="KEY=VALUE",
                   help="augmentation setting, e.g. flipud=0 or scale=0.25 (repeatable)")
    t.add_argument("--no-ema", action="store_true", help="do not keep an EMA of the weights")
    t.add_argument("--anchors", choices=("auto", "fit", "keep"), default="auto",
                   help="auto: fit anchors to the data when the defaults would miss > 2 %% of "
                        "the boxes; fit: always; keep: the COCO defaults")
    t.add_argument("--mosaic", action="store_true", help="4-image mosaic augmentation")
    t.add_argument("--cache", action="store_true", help="keep decoded images in memory")
    t.add_argument("--val-every", type=positive, default=1, metavar="N",
                   help="validate every N epochs")
    t.add_argument("--save-period", type=_period, default=0, metavar="N",
                   help="also keep a checkpoint epoch<N>.pt every N epochs (default: only "
                        "last.pt and best.pt)")
    t.add_argument("--sparsity", choices=SPARSITY_MODES, default=None, nargs="?",
                   const="progressive", metavar="MODE",
                   help="sparse-train BatchNorm γ (plain --sparsity: progressive): progressive "
                        "(channels chosen by a schedule fade out), l1rr (the paper's DSM + "
                        "SASM), dsm, ns (network slimming), si (scale-invariant L1RR), hoyer, "
                        "polar")
    t.add_argument("--theta", type=non_negative_real, default=1e-3, help="sparsity strength θ")
    t.add_argument("--phase-epochs", type=positive, default=None, metavar="N",
                   help="epochs between updates; the first phase is plain training (default: "
                        "40, progressive: a tenth of --epochs)")
    t.add_argument("--max-phases", type=positive, default=None,
                   help="at most this many updates (default: 10, progressive: one per phase "
                        "after the first)")
    t.add_argument("--sparsity-target", type=_open_ratio, default=None, metavar="R",
                   help="progressive: share of the FLOPs (or, with --sparsity-unit channels, "
                        "of the regularised channels) the faded channels remove by the end "
                        "(default 0.5)")
    t.add_argument("--sparsity-unit", choices=("flops", "channels"), default=None,
                   help="progressive: what --sparsity-target counts (default flops)")
    t.add_argument("--importance", choices=("taylor", "gamma"), default=None,
                   help="progressive: how channels are ranked (default taylor)")
    t.set_defaults(func=cmd_train)


def _demo_parser(sub) -> None:
    """graphprune demo (make demo)"""
    d = sub.add_parser("demo", help="the embedded default: synthetic data → baseline → sparse "
                                    "training → compile at --lfa-target → fine-tune → report")
    d.add_argument("--out", type=Path, default=Path("runs/demo"), metavar="DIR")
    d.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    d.add_argument("--quick", action="store_true",
                   help="tiny sizes, every step (about a minute); the tests run this")
    d.add_argument("--lfa-target", type=_positive, default=0.01, metavar="T")
    d.add_argument("--lfa-criterion", choices=("plus", "two-sided"), default="two-sided",
                   help="what --lfa-target bounds (default two-sided: LFA±, any change of "
                        "feature attention; plus: LFA⁺, its losses only)")
    d.add_argument("--sparsity", choices=("progressive", "l1rr", "dsm", "ns"),
                   default="progressive",
                   help="sparse-training mode (default progressive; l1rr: the paper's Eq. 3–7)")
    d.add_argument("--no-finetune", action="store_true",
                   help="stop after the compile (no 5-epoch fine-tune of the slim model)")
    d.add_argument("--device", default="auto")
    d.set_defaults(func=cmd_demo)


def _val_parser(sub) -> None:
    """graphprune val --weights CKPT --data D.yaml"""
    v = sub.add_parser("val", help="mAP of a model on a dataset (YOLOv5 val protocol)")
    v.add_argument("--weights", required=True, metavar="CKPT",
                   help="graphprune checkpoint, or a pickled model with --trust-checkpoint")
    v.add_argument("--data", required=True, help="dataset data.yaml")
    v.add_argument("--split", choices=("val", "train"), default="val")
    v.add_argument("--imgsz", type=image_side, default=640)
    v.add_argument("--batch", type=positive, default=16)
    v.add_argument("--workers", type=workers, default=None,
                   help="loader processes (default: 0 on <= 2 cores, else half the cores)")
    v.add_argument("--device", default="auto")
    v.add_argument("--conf", type=unit_interval, default=0.001)
    v.add_argument("--iou", type=unit_interval, default=0.6)
    v.add_argument("--max-det", type=positive, default=300)
    v.add_argument("--trust-checkpoint", action="store_true")
    v.add_argument("--json-out", type=Path, default=None, help="also write the metrics as JSON")
    v.set_defaults(func=cmd_val)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="graphprune",
        description="Structured-pruning compiler for PyTorch object detectors (L1RR).")
    parser.add_argument("--version", action="version", version=f"graphprune {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_compile_parser, _inspect_parser, _train_parser, _demo_parser, _val_parser,
                add_data_parser):
        add(sub)
    return parser


# -- shared ---------------------------------------------------------------------------------
def _open(args) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    model = open_model(args.model, trust=args.trust_checkpoint, num_classes=args.num_classes)
    if args.random_bn is not None:
        randomize_batchnorm(model, args.random_bn)
    shape = args.example_shape
    recipe = getattr(model, "graphprune_recipe", None)
    if shape is None and recipe and recipe.get("inputs"):
        shape = tuple(recipe["inputs"][0]["shape"])
    train_args = getattr(model, "args", None)          # an ultralytics model's training settings
    imgsz = train_args.get("imgsz") if isinstance(train_args, dict) else None
    if shape is None and isinstance(imgsz, int) and imgsz >= 32 and imgsz % 32 == 0:
        shape = (1, 3, imgsz, imgsz)
    shape = shape or (1, 3, 640, 640)
    refuse_oversized(shape, INFERENCE_FACTOR, "an example input",
                     "pass a smaller --example-shape (or --imgsz)")
    # The invariant is checked on this input: random pixels in [0, 1), not zeros, so that every
    # channel carries a distinct, non-constant signal.
    example = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    # before any other step reads the model: a shape it cannot take is said so in one line
    model.eval()
    check_example(model, (example,), subject=str(args.model),
                  hint="pass --example-shape N,C,H,W that the model takes")
    return model, (example,)


def _nothing_to_prune(model, spec) -> bool:
    """Say so when the model has no layer whose channels a mask could name."""
    if producers(model):
        return False
    err_console.print(f"graphprune: nothing to prune: {spec} has no BatchNorm, GroupNorm, "
                      "LayerNorm, convolution or linear layer (graphprune removes their output "
                      "channels); nothing was written", markup=False, soft_wrap=True)
    return True


def _read_masks(path: Path) -> dict[str, list]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise GraphpruneError(f"mask file {str(path)!r} does not exist") from None
    except (OSError, ValueError) as exc:
        raise GraphpruneError(f"mask file {str(path)!r} is not valid JSON ({exc})",
                              hint='write {"layer.bn": [1, 0, 1, ...], ...}') from None
    if not isinstance(data, dict):
        raise GraphpruneError(f"mask file {str(path)!r} must hold a JSON object",
                              hint='write {"layer.bn": [1, 0, 1, ...], ...}')
    return data


# -- compile --------------------------------------------------------------------------------
def cmd_compile(args) -> int:
    methods = [m for m in METHODS if getattr(args, m[2:].replace("-", "_")) is not None]
    if not methods:
        args.compile_parser.error(f"one of the arguments {' '.join(METHODS)} is required")
    others = [m for m in methods if m not in ("--latency-target", "--lfa-target")]
    if args.latency_target is not None and others:
        args.compile_parser.error(f"--latency-target combines with --lfa-target only, not with "
                                  f"{' '.join(others)}")
    if args.round_to is None:
        args.round_to = 1 if args.masks else DEFAULT_ROUND_TO
    measured_widths = args.round_to == "runtime"
    timing = [f"--{n.replace('_', '-')}" for n in LATENCY_ONLY
              if getattr(args, n) != args.target_only_defaults[n]
              and not (measured_widths and n in WIDTH_OPTIONS)]
    if args.latency_target is None and timing:
        raise GraphpruneError(f"{', '.join(timing)} only {'applies' if len(timing) == 1 else 'apply'}"
                              " to --latency-target" + (" and --round-to runtime"
                                                        if "--latency-rounds" not in timing
                                                        else ""),
                              hint="add --latency-target R, or drop it")
    if args.latency_target is not None and args.fold_pruned_bias:
        raise GraphpruneError("--latency-target does not fold pruned biases yet",
                              hint="drop --fold-pruned-bias")
    validate_request(CompileConfig(threshold=args.threshold, prune_ratio=args.prune_ratio,
                                   residual=args.residual, min_channels=args.min_channels,
                                   round_to=1 if measured_widths else args.round_to))
    if measured_widths:               # refuses a runtime that is not installed, before any work
        args.round_to = WidthTable(args.runtime, threads=args.latency_threads,
                                   batch=args.latency_batch)
    if args.ultralytics_checkpoint is not None:
        if args.ultralytics_checkpoint.suffix != ".pt":
            raise GraphpruneError(f"--ultralytics-checkpoint {str(args.ultralytics_checkpoint)!r}"
                                  " must end in .pt", hint="ultralytics loads PyTorch "
                                                           "checkpoints by their .pt suffix")
    if args.imgsz is not None:         # (the parser checked every number's range)
        square = (1, 3, args.imgsz, args.imgsz)
        if args.example_shape is not None and tuple(args.example_shape) != square:
            raise GraphpruneError(f"--imgsz {args.imgsz} and --example-shape "
                                  f"{','.join(map(str, args.example_shape))} disagree",
                                  hint="give one of them")
        args.example_shape = square
    if args.lfa_target is not None or args.flops_target is not None or \
            args.params_target is not None or args.latency_target is not None:
        return cmd_compile_target(args)
    given = [name for name, default in args.target_only_defaults.items()
             if getattr(args, name) != default
             and not (is_width_table(args.round_to) and name in WIDTH_OPTIONS)]
    if given:
        options = ", ".join("--" + name.replace("_", "-") for name in given)
        raise GraphpruneError(f"{options} {'applies' if len(given) == 1 else 'apply'} only to a "
                              "target-guided compile",
                              hint="add --lfa-target T (or --flops-target / --params-target / "
                                   "--latency-target), or drop it")
    masks = _read_masks(args.masks) if args.masks else None
    sources = _compile_inputs(args)
    refuse_existing_output(args.out, args.overwrite, inputs=sources)
    start = time.perf_counter()
    with err_console.status("loading the model"):
        model, inputs = _open(args)
    if _nothing_to_prune(model, args.model):
        return 0
    _check_ultralytics_model(args, model)
    with err_console.status("compiling (trace, analyse, mask, reconstruct, slim, verify)") \
            as status, warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        if is_width_table(args.round_to):
            args.round_to.progress = lambda text: status.update(f"round-to runtime: {text}")
        result = gp_compile(model, inputs, masks=masks, threshold=args.threshold,
                            prune_ratio=args.prune_ratio, residual=args.residual,
                            min_channels=args.min_channels, exclude=args.exclude,
                            leaves=args.leaf, fold_pruned_bias=args.fold_pruned_bias,
                            round_to=args.round_to)
    compile_s = time.perf_counter() - start
    request = {"prune_ratio": args.prune_ratio, "threshold": args.threshold,
               "masks": str(args.masks) if args.masks else None, "residual": args.residual,
               "min_channels": args.min_channels, "round_to": rounding_name(args.round_to),
               "exclude": list(args.exclude), "leaves": list(args.leaf),
               "fold_pruned_bias": args.fold_pruned_bias}
    report = new_report(result, model=str(args.model), example=inputs[0], request=request,
                        goal=plain_goal(request))
    report = write_artifacts(result, args.out, report, overwrite=args.overwrite,
                             inputs=sources, pt2=not args.no_pt2,
                             onnx=not args.no_onnx,
                             ultralytics_checkpoint=args.ultralytics_checkpoint,
                             source_model=model,
                             ultralytics_extra={"model": str(args.model)}, started=start,
                             console=err_console)
    print_compile_summary(result, args, inputs, report, compile_s)
    return 0


def _compile_inputs(args) -> list[Path]:
    """The files a compile reads: its model (when a path), mask file, data.yaml, baseline."""
    named = [args.model, getattr(args, "masks", None), getattr(args, "data", None),
             getattr(args, "baseline", None)]
    return [Path(x) for x in named if x is not None and Path(x).exists()]


def cmd_compile_target(args) -> int:
    sources = _compile_inputs(args)
    refuse_existing_output(args.out, args.overwrite, inputs=sources)
    with err_console.status("loading the model"):
        model, inputs = _open(args)
    if _nothing_to_prune(model, args.model):
        return 0
    _check_ultralytics_model(args, model)
    baseline = None
    if args.baseline is not None:
        if not args.eval:
            raise GraphpruneError("--baseline is compared by mAP", hint="add --eval")
        with err_console.status("loading the baseline"):
            baseline = open_model(args.baseline, trust=args.trust_checkpoint)
    report = target_compile(
        model, inputs[0], data_yaml=args.data, out=args.out, overwrite=args.overwrite,
        lfa_target=args.lfa_target, flops_target=args.flops_target,
        params_target=args.params_target, latency_target=args.latency_target,
        runtime=args.runtime, latency_threads=args.latency_threads,
        latency_batch=args.latency_batch, latency_rounds=args.latency_rounds,
        calib_images=args.calib_images,
        lfa_mode=args.lfa_mode, lfa_criterion=args.lfa_criterion,
        lfa_layers=[x for x in args.lfa_layers.split(",") if x] if args.lfa_layers else None,
        evaluate=args.eval, finetune_epochs=args.finetune_epochs, device=args.device,
        residual=args.residual, min_channels=args.min_channels, round_to=args.round_to,
        exclude=tuple(args.exclude),
        leaves=tuple(args.leaf), onnx=not args.no_onnx, pt2=not args.no_pt2,
        heatmaps=args.heatmaps, model_name=str(args.model),
        fold_pruned_bias=args.fold_pruned_bias,
        ultralytics_checkpoint=args.ultralytics_checkpoint, baseline=baseline,
        baseline_name=args.baseline, finetune_recipe=_training_recipe(args.model)
        if args.finetune_epochs else None, inputs=sources,
        console=err_console)
    print_target_summary(report, args.out)
    return 0


# settings of the run that trained a model which a fine-tune of its slim version keeps
RECIPE_KEYS = ("batch", "nominal_batch", "box", "obj", "cls", "hyp", "mosaic", "momentum",
               "weight_decay", "seed")


def _training_recipe(spec: str) -> dict[str, Any] | None:
    """The settings recorded in a graphprune training checkpoint (``train.config``), so
    ``--finetune-epochs`` fine-tunes with the recipe the model was trained with."""
    path = Path(spec)
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        config = json.loads(payload["train"]["config"])
    except Exception:       # not a training checkpoint (or not ours): the defaults apply
        return None
    return {k: config[k] for k in RECIPE_KEYS if k in config} if isinstance(config, dict) \
        else None


def _check_ultralytics_model(args, model) -> None:
    """--ultralytics-checkpoint needs an ultralytics DetectionModel, and --eval (graphprune's
    YOLOv5 evaluator) cannot read one: say so before any work."""
    if getattr(args, "eval", False) and is_detection_model(model):
        raise GraphpruneError("--eval measures mAP with graphprune's YOLOv5 evaluator, which "
                              "cannot read an ultralytics model's outputs",
                              hint="drop --eval, write --ultralytics-checkpoint slim.pt and run "
                                   "YOLO('slim.pt').val(data=...) in ultralytics")
    if args.ultralytics_checkpoint is None:
        return
    if not is_detection_model(model):
        raise GraphpruneError(f"--ultralytics-checkpoint needs an ultralytics DetectionModel, "
                              f"but {args.model} is a {type(model).__name__}",
                              hint="drop --ultralytics-checkpoint, or give an ultralytics .pt "
                                   "with --trust-checkpoint")


def print_target_summary(report: dict[str, Any], out: Path) -> None:
    r = report
    lfa_name = "LFA±" if r.get("lfa_criterion") == "two-sided" else "LFA⁺"
    goal = {"lfa": lfa_name + " <= {:g}", "flops": "FLOPs removed >= {:g}",
            "params": "params removed >= {:g}",
            "latency": "latency removed >= {:g}"}[r["goal"]].format(r[f"{r['goal']}_target"])
    console.print(f"[bold]graphprune compile[/bold] {r['model']}  goal {goal}  "
                  f"input {r['imgsz']}×{r['imgsz']}")
    t = Table(show_edge=False)
    for col in ("", "before", "after", "after / before"):
        t.add_column(col, justify="right")
    t.add_row("parameters", f"{r['params_before']:,}", f"{r['params_after']:,}",
              f"{r['params_after'] / max(r['params_before'], 1):.3f}")
    t.add_row("GFLOPs (2×MACs)", f"{r['flops_before'] / 1e9:.3f}",
              f"{r['flops_after'] / 1e9:.3f}", f"{r['flops_after'] / max(r['flops_before'], 1):.3f}")
    console.print(t)
    rows = accuracy_rows(r)
    if rows:
        a = Table(show_edge=False)
        for col in ("model", "params", "GFLOPs", "mAP@0.5", "mAP@0.5:0.95",
                    f"vs {rows[0][0].split(' (')[0]}"):
            a.add_column(col, justify="right")
        for k, (stage, params, flops, m50, m) in enumerate(rows):
            a.add_row(stage, f"{params:,}", f"{flops / 1e9:.3f}", f"{m50:.3f}",
                      "–" if m is None else f"{m:.3f}",
                      "–" if k == 0 else f"{100 * (m50 - rows[0][3]):+.1f} pt")
        console.print(a)
    if r.get("lfa") is not None:
        delta = "∞" if r["threshold"] is None else f"{r['threshold']:.4g}"
        console.print(f"LFA⁺ {100 * r['lfa_plus']:.3f} % (signed {100 * r['lfa_signed']:+.3f} %, "
                      f"LFA± {100 * r['lfa_two_sided']:.3f} %; the target bounds "
                      f"{'LFA±' if r['lfa_criterion'] == 'two-sided' else 'LFA⁺'}) at "
                      f"{r['prune_ratio']:.1%} of the prunable channels removed, δ = "
                      f"{delta}; {r['evaluations']} LFA evaluations for "
                      f"{r['candidates']} candidate channels")
    if r.get("latency_ms") is not None:
        bound = "" if r.get("lfa_target") is None else \
            f", within LFA⁺ <= {r['lfa_target']:g}"
        console.print(f"latency on {r['runtime']}: {r['baseline_ms']:.2f} ms → "
                      f"{r['latency_ms']:.2f} ms ({r['latency_ratio']:.3f} ×, "
                      f"{r['speedup']:.2f}× faster; median of {r['latency_rounds']} "
                      f"interleaved rounds{bound}), {len(r['latency_probes'])} timed probes")
    for note in r.get("notes", []):
        console.print(f"[yellow]note[/yellow] {note}")
    if r.get("fold_pruned_bias"):
        console.print(fold_sentence(r["fold_pruned_bias"]), markup=False)
    console.print(f"verified: slim == zero-masked (max |diff| {r['max_error']:.2e}); "
                  f"{r['seconds']:.1f} s → {out}/ ({', '.join(r['artifacts'])})")
    if r.get("ultralytics_checkpoint"):
        console.print(f"ultralytics checkpoint: {r['ultralytics_checkpoint']} (YOLO(path) loads "
                      "it; needs graphprune installed)", markup=False)


def print_compile_summary(result, args, inputs, report: dict[str, Any],
                          compile_s: float) -> None:
    s = result.stats
    console.print(f"[bold]graphprune compile[/bold] {args.model}  input {tuple(inputs[0].shape)}"
                  f"  residual={args.residual}")
    t = Table(title="Model", show_edge=False)
    for col in ("", "before", "after", "after / before"):
        t.add_column(col, justify="right")
    t.add_row("parameters", f"{s.params_before:,}", f"{s.params_after:,}", f"{s.params_ratio:.3f}")
    t.add_row("GFLOPs (2×MACs)", f"{s.flops_before / 1e9:.3f}", f"{s.flops_after / 1e9:.3f}",
              f"{s.flops_ratio:.3f}")
    by_gamma = all(row["kind"] == "batchnorm" for row in result.layers)
    t.add_row("prunable BN channels" if by_gamma else "prunable channels",
              f"{s.channels_before:,}", f"{s.channels_after:,}", f"{1 - s.channels_pruned:.3f}")
    console.print(t)
    layers = Table(title="Channels kept per layer", show_edge=False)
    for col, justify in (("BatchNorm" if by_gamma else "layer", "left"), ("channels", "right"),
                         ("requested", "right"), ("kept", "right"),
                         ("|γ|<0.01" if by_gamma else "importance<0.01", "right"),
                         ("pinned because", "left")):
        layers.add_column(col, justify=justify, overflow="fold")
    for row in result.layers:
        layers.add_row(row["name"] if by_gamma else f"{row['name']} ({row['kind']})",
                       str(row["channels"]), str(row["requested"]),
                       str(row["kept"]), str(row["near_zero"]), row["pinned"] or "")
    console.print(layers)
    for name, why in result.unprunable.items():
        console.print(f"[yellow]not prunable[/yellow] {name}: {why}")
    for message in result.warnings:
        console.print(f"[yellow]warning[/yellow] {message}")
    console.print(f"verified: slim == zero-masked on the example input "
                  f"(max |diff| {result.max_error:.2e})")
    if result.fold:
        console.print(fold_sentence(result.fold), markup=False)
    pieces = result.emit_stats
    console.print(f"residual reconstruction: {pieces.get('residual_pieces', 0)} add pieces, "
                  f"{pieces.get('slices', 0)} slices, {pieces.get('gathers', 0)} gathers")
    if result.residual_choice:
        coupled = [c for c in result.residual_choice.values() if c["coupled"]]
        console.print(f"residual auto: {len(result.residual_choice) - len(coupled)} residual "
                      f"group(s) reconstructed, {len(coupled)} coupled (their extra nodes would "
                      f"cost more than the FLOPs they save)")
    console.print(f"compile {compile_s:.2f} s, total {report['seconds']:.2f} s"
                  f" → {args.out}/ ({', '.join(report['artifacts'])})")
    if report.get("ultralytics_checkpoint"):
        console.print(f"ultralytics checkpoint: {report['ultralytics_checkpoint']} (YOLO(path) "
                      "loads it; needs graphprune installed)", markup=False)


# -- inspect --------------------------------------------------------------------------------
GAMMA_BINS = (0.0, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, np.inf)


def gamma_histogram(gammas: Sequence[np.ndarray]) -> list[tuple[str, int]]:
    values = np.concatenate(list(gammas)) if gammas else np.zeros(0)
    counts, _ = np.histogram(values, bins=GAMMA_BINS)
    labels = ["< 1e-4", "1e-4 – 1e-3", "1e-3 – 0.01", "0.01 – 0.1", "0.1 – 1", "≥ 1"]
    return list(zip(labels, (int(c) for c in counts)))


def cmd_inspect(args) -> int:
    with err_console.status("loading the model"):
        model, inputs = _open(args)
    with err_console.status("tracing and analysing"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = analyze(model, inputs, leaves=args.leaf)
    console.print(f"[bold]graphprune inspect[/bold] {args.model}  input {tuple(inputs[0].shape)}:"
                  f" {report.params:,} parameters, {report.flops / 1e9:.3f} GFLOPs")
    for name, why in report.leaves.items():
        what = "as requested" if why == "requested" else "untraceable"
        console.print(f"kept whole ({what}): {name}" + ("" if why == "requested" else f" — {why}"))
    groups = report.groups
    if groups.error:
        console.print(f"[yellow]dependency groups unavailable[/yellow]: {groups.error}")
    else:
        g = Table(title=f"Dependency groups with several BatchNorms (torch-pruning, "
                        f"{groups.seconds:.2f} s)", show_edge=False)
        for col in ("root", "BatchNorms", "residual adds", "coupling"):
            g.add_column(col, overflow="fold")
        structural = {frozenset(cs.names) for cs in groups.structural}
        for info in groups.groups:
            if len(info.batchnorms) < 2:
                continue
            tied = [s for s in structural if s <= set(info.batchnorms)]
            kind = "structural: " + "; ".join(", ".join(sorted(s)) for s in tied) if tied \
                else "residual only (decoupled by reconstruction)"
            g.add_row(info.root, ", ".join(info.batchnorms), str(info.residual_adds), kind)
        console.print(g)
    if report.residual:
        r = Table(title="Residual groups (graphprune's channel analysis: decoupled by "
                        "reconstruction, one OR-ed mask each with --residual couple)",
                  show_edge=False)
        for col in ("BatchNorms feeding the adds", "channels"):
            r.add_column(col, overflow="fold")
        for cs in report.residual:
            width = len(cs.members[0][2])
            parts = []
            for name, local, _ in cs.members:
                whole = name in report.statistics and \
                    len(local) == report.statistics[name].channels
                parts.append(name if whole else f"{name}[{local[0]}:{local[-1] + 1}]")
            r.add_row(", ".join(dict.fromkeys(parts)), str(width))
        console.print(r)
    ranked = ranked_names(report.statistics)
    by_gamma = all(report.statistics[n].kind == "batchnorm" for n in ranked)
    t = Table(title="Prunable layers (ranked: what --threshold and --prune-ratio order; the "
                    "others take explicit masks)", show_edge=False)
    for col, justify in (("layer", "left"), ("kind", "left"), ("ranked", "left"),
                         ("channels", "right"), ("importance<0.01", "right"),
                         ("pinned channels", "right"), ("why pinned", "left")):
        t.add_column(col, justify=justify, overflow="fold")
    for name, st in report.statistics.items():
        t.add_row(name, st.kind, "yes" if name in ranked else "", str(st.channels),
                  str(st.near_zero), str(report.pinned_channels.get(name, 0)),
                  report.pin_reasons.get(name, ""))
    console.print(t)
    for name, why in report.unprunable.items():
        console.print(f"not prunable: {name} — {why}")
    hist = gamma_histogram([report.statistics[n].gamma for n in ranked])
    total = max(sum(c for _, c in hist), 1)
    h = Table(title="|γ| histogram (ranked channels)" if by_gamma else
              "importance histogram (ranked channels: layer-relative magnitude)",
              show_edge=False)
    for col, justify in (("|γ|" if by_gamma else "importance", "left"), ("channels", "right"), ("", "left")):
        h.add_column(col, justify=justify)
    for label, count in hist:
        h.add_row(label, str(count), "█" * int(round(40 * count / total)))
    console.print(h)
    return 0


# -- train / val ----------------------------------------------------------------------------
def _key_values(items: Sequence[str]) -> dict[str, float]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        try:
            out[key.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise GraphpruneError(f"--hyp {item!r} is not KEY=NUMBER", hint="e.g. --hyp flipud=0")
    return out


def cmd_train(args) -> int:
    try:
        trainer = _run_training(args)
    except KeyboardInterrupt:
        out = args.resume.parent if args.resume is not None else (args.out or Path("runs/train"))
        last = out / "last.pt"
        err_console.print("graphprune: interrupted; " + (
            f"resume with: graphprune train --resume {last}" if last.exists() else
            "no epoch had completed"))
        return EXIT_INTERRUPTED
    best = max((r for r in trainer.history if r.get("metrics")),
               key=lambda r: 0.1 * r["metrics"]["map50"] + 0.9 * r["metrics"]["map"],
               default=None)
    if trainer.anchor_fit is not None:
        fit = trainer.anchor_fit
        console.print(f"anchors: best possible recall {fit.bpr_before:.3f} with the defaults, "
                      f"{fit.bpr_after:.3f} fitted ({fit.boxes} boxes)")
    if best is not None:
        m = best["metrics"]
        console.print(f"best epoch {best['epoch'] + 1}: P {m['precision']:.3f}  R "
                      f"{m['recall']:.3f}  mAP50 {m['map50']:.3f}  mAP50-95 {m['map']:.3f}")
    console.print(f"weights: {trainer.out / 'best.pt'} (best), {trainer.out / 'last.pt'} (last)")
    return 0


def _sparsity_settings(args) -> dict[str, Any]:
    """Phase settings (mode-dependent defaults) and the progressive mode's options."""
    options = {}
    if args.sparsity_target is not None:
        options["target"] = args.sparsity_target
    if args.importance is not None:
        options["importance"] = args.importance
    if args.sparsity_unit is not None:
        options["unit"] = args.sparsity_unit
    if options and args.sparsity != "progressive":
        raise GraphpruneError("--sparsity-target, --sparsity-unit and --importance apply to "
                              "--sparsity progressive", hint="add --sparsity progressive, or "
                                                             "drop them")
    phase, phases = default_phases(args.sparsity or "l1rr", args.epochs or 100)
    return dict(phase_epochs=phase if args.phase_epochs is None else args.phase_epochs,
                max_phases=phases if args.max_phases is None else args.max_phases,
                sparsity_options=options)


def _run_training(args):
    if args.resume is not None:
        return resume(args.resume, epochs=args.epochs, console=err_console)
    if not args.data:
        raise GraphpruneError("--data is required (or --resume a run)",
                              hint="e.g. --data datasets/nwpu/data.yaml")
    out = args.out or Path("runs") / "train"
    # everything the run reads is checked before its output directory is touched
    sources = [args.data, args.weights]
    refuse_existing_output(out, args.overwrite,
                           "choose another --out, --resume it, or pass --overwrite",
                           inputs=sources)
    gpdata.load_data_config(args.data)
    if args.weights is not None and not Path(args.weights).is_file():
        raise GraphpruneError(f"--weights {str(args.weights)!r} is not a file",
                              hint="give a checkpoint written by graphprune train or compile")
    config = TrainConfig(data=args.data, model=args.model, weights=args.weights,
                         imgsz=args.imgsz, epochs=args.epochs or 100, batch=args.batch,
                         workers=args.workers, device=args.device, seed=args.seed,
                         out=str(out), lr0=args.lr0, lrf=args.lrf, cos_lr=args.cos_lr,
                         warmup_epochs=args.warmup_epochs, nominal_batch=args.nominal_batch,
                         box=args.box_gain, obj=args.obj_gain, cls=args.cls_gain,
                         hyp=_key_values(args.hyp), ema=not args.no_ema,
                         anchors=args.anchors, mosaic=args.mosaic, cache=args.cache,
                         val_every=args.val_every, save_period=args.save_period,
                         sparsity=args.sparsity, theta=args.theta,
                         **_sparsity_settings(args))
    # the trainer reads and checks everything (settings, memory, data, device, model, weights)
    # without writing; only then is the run directory made. A run writes its checkpoints as it
    # goes: an --overwrite'n run is kept aside until the new one is done, and an interrupted new
    # run that saved an epoch stays (it can be resumed)
    trainer = Trainer(config, console=err_console)         # (it runs TrainConfig.check)
    with staged_directory(out, args.overwrite, inputs=sources, keep_partial=True):
        trainer.fit()
    return trainer


def cmd_val(args) -> int:
    if args.json_out is not None:
        refuse_output_file(args.json_out, "--json-out")
    device = resolve_device(args.device)
    model = open_model(args.weights, trust=args.trust_checkpoint).to(device)
    config = gpdata.load_data_config(args.data)
    check_classes(model, config.names, str(args.weights))
    images = config.val if args.split == "val" else config.train
    if not images:
        raise GraphpruneError(f"{args.data} has no {args.split} images",
                              hint=f"add a '{args.split}' entry to the data.yaml")
    refuse_oversized((args.batch, 3, args.imgsz, args.imgsz), EVALUATION_FACTOR,
                     "a validation batch", "pass a smaller --batch or --imgsz")
    dataset = gpdata.DetectionDataset(images, config.names, args.imgsz, augment=False,
                                      kpt_shape=config.kpt_shape)
    workers = default_workers() if args.workers is None else args.workers
    loader = gpdata.make_loader(dataset, args.batch, shuffle=False, workers=workers,
                                epoch_seed=0)
    with err_console.status(f"validating on {len(dataset)} images"):
        metrics = validate(model, loader, config.names, device, conf=args.conf, iou=args.iou,
                           max_det=args.max_det)
    console.print(metrics.table())
    if args.json_out is not None:
        with atomic_path(args.json_out) as tmp:
            tmp.write_text(json.dumps(metrics.as_dict(), indent=2) + "\n")
    return 0


def cmd_demo(args) -> int:
    s = run_demo(args.out, quick=args.quick, overwrite=args.overwrite,
                 lfa_target=args.lfa_target, device=args.device, mode=args.sparsity,
                 finetune=not args.no_finetune, lfa_criterion=args.lfa_criterion,
                 console=err_console)
    t = Table(title=f"graphprune demo ({'quick' if args.quick else 'full'}, "
                    f"{args.sparsity}): {s['total_seconds'] / 60:.1f} min", show_edge=False)
    for col in ("", "value"):
        t.add_column(col, justify="right")
    t.add_row("mAP@0.5 baseline", f"{s['baseline_map50']:.3f}")
    t.add_row(f"mAP@0.5 sparse ({args.sparsity})", f"{s['sparse_map50']:.3f}")
    t.add_row("mAP@0.5 pruned, no fine-tuning", f"{s['map50_after']:.3f}")
    if s.get("map50_finetuned") is not None:
        t.add_row(f"mAP@0.5 pruned + {s['finetune_epochs']}-epoch fine-tune",
                  f"{s['map50_finetuned']:.3f}")
    t.add_row("final vs baseline", f"{-s['final_drop_points']:+.1f} points")
    t.add_row("parameters", f"{s['params_before']:,} → {s['params_after']:,} "
                            f"(−{1 - s['params_after'] / s['params_before']:.1%})")
    t.add_row("GFLOPs", f"{s['flops_before'] / 1e9:.3f} → {s['flops_after'] / 1e9:.3f} "
                        f"(−{1 - s['flops_after'] / s['flops_before']:.1%})")
    t.add_row(f"{'LFA±' if args.lfa_criterion == 'two-sided' else 'LFA⁺'} (target)",
              f"{100 * s['lfa']:.2f} % ({100 * args.lfa_target:g} %)")
    t.add_row("LFA evaluations", f"{s['evaluations']} for {s['candidates']} channels")
    console.print(t)
    console.print(f"report: {args.out / 'compile' / 'report.md'}")
    return 0


# -- entry point ----------------------------------------------------------------------------
class Terminated(BaseException):
    """SIGTERM, raised where the process is so that every temporary output is cleaned up."""


def _terminate(signum, frame):
    raise Terminated()


def _notes(exc: BaseException) -> str:
    notes = getattr(exc, "__notes__", None)
    return "; " + "; ".join(notes) if notes else ""


def _left(exc: BaseException) -> str:
    """What an interrupted command left: its notes (a training's partial run), else nothing."""
    notes = getattr(exc, "__notes__", None)
    return "; ".join(notes) if notes else "nothing was written"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return args.func(args)
    except KeyboardInterrupt as exc:
        err_console.print(f"graphprune: interrupted; {_left(exc)}", markup=False,
                          soft_wrap=True)
        return EXIT_INTERRUPTED
    except Terminated as exc:
        err_console.print(f"graphprune: terminated (SIGTERM); {_left(exc)}", markup=False,
                          soft_wrap=True)
        return EXIT_TERMINATED
    except GraphpruneError as exc:
        if args.debug:
            raise
        err_console.print(f"graphprune: error: {exc}{_notes(exc)}", markup=False,
                          soft_wrap=True)
        return EXIT_ERROR
    except (OSError, MemoryError) as exc:
        if args.debug:
            raise
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        err_console.print(f"graphprune: error: {type(exc).__name__}: "
                          f"{getattr(exc, 'strerror', None) or exc}{where}", markup=False,
                          soft_wrap=True)
        return EXIT_ERROR
    except Exception as exc:           # anything else: still one line, the traceback on request
        if args.debug:
            raise
        err_console.print(f"graphprune: error: unexpected {summary(exc, 300)} "
                          f"(rerun with --debug for the traceback, and please report it)",
                          markup=False, soft_wrap=True)
        return EXIT_ERROR
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
