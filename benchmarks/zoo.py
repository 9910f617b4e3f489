"""Prunability zoo: compile many architectures with random masks and check slim == zero-masked.

Every model is built with random weights (nothing is downloaded), put in eval mode, given random
norm γ, β and BatchNorm statistics (``randomize_norms``), and compiled with a random keep-mask
of p = 0.5 over every BatchNorm (in a model without BatchNorm: over every channel producer —
GroupNorm, LayerNorm, convolution, linear layer).  ``gp.compile`` verifies the invariant itself; the zoo checks it
again independently (``gp.zero_mask`` of the original model against the slim module, every output
elementwise |slim − ref| ≤ 1e-4 + 1e-4·|ref|) and, unless ``--no-onnx``, exports the slim model
to ONNX (``export_onnx`` compares onnxruntime with it).  A model passes when all of that holds
and at least 15 % of its prunable channels (BatchNorm channels; a model without BatchNorm: its
producers' channels) were really removed; one that compiles and
verifies but keeps more is marked "pinned everything".  Every failure is reported with its
reason (one line: where it failed, the exception type and message); the script never stops on
one model.

Architectures: graphprune's own (yolov5n/s/m, tiny_resnet); torchvision classifiers and
detectors when torchvision imports; ultralytics YOLOv8/YOLOv5u when ultralytics imports (built
from their yaml files, no weights).  Input sizes: 224 px for classifiers, 320 px for detectors.

    python -m benchmarks.zoo                          # everything importable; writes results/zoo.*
    python -m benchmarks.zoo --quick                  # a handful of models at 64 px
    python -m benchmarks.zoo --models resnet18,densenet121 --no-onnx --imgsz 128
    python -m benchmarks.zoo --list                   # the registry, and what is unavailable

``main(argv, extra=[ZooEntry(...)])`` adds models of one's own (the tests use it).
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from datetime import date
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch
import torch.nn as nn
from rich.console import Console
from rich.table import Table
from torch.utils._pytree import tree_flatten

import graphprune as gp
from graphprune.groups import TimeLimit, deadline
from graphprune.masks import batchnorms, features, producers
from graphprune.models import build, randomize_norms

from benchmarks.common import machine

HERE = Path(__file__).resolve().parent
ATOL = RTOL = 1e-4
MIN_PRUNED = 0.15         # a pass removes at least this share of the prunable BN channels
KEEP_P = 0.5              # each masked channel is kept with this probability
NOTHING_TO_PRUNE = "no norm, convolution or linear layer: nothing to prune"


@dataclass(frozen=True)
class ZooEntry:
    """One architecture of the zoo.

    ``build()`` returns the model (random init, no downloads).  ``inputs`` says what it takes:
    ``"image"`` = one batch tensor [1, 3, S, S]; ``"image_list"`` = a list holding one image
    [3, S, S] (torchvision detectors); or a callable ``S -> tuple of forward arguments``.
    ``requires`` names a package that must import (else the entry is unavailable).
    ``native_imgsz``: the model's own input size, used instead when it cannot run at the
    zoo's (attention blocks sized for one resolution)."""

    name: str
    source: str
    build: Callable[[], nn.Module]
    imgsz: int = 224
    quick_imgsz: int = 64
    inputs: str | Callable[[int], tuple[Any, ...]] = "image"
    requires: str | None = None
    quick: bool = False
    native_imgsz: int | None = None   # the size to fall back to when the model takes only that

    def example(self, size: int, seed: int = 0) -> tuple[Any, ...]:
        if callable(self.inputs):
            return tuple(self.inputs(size))
        g = torch.Generator().manual_seed(seed)
        if self.inputs == "image":
            return (torch.rand(1, 3, size, size, generator=g),)
        if self.inputs == "image_list":
            return ([torch.rand(3, size, size, generator=g)],)
        raise ValueError(f"unknown input kind {self.inputs!r} for {self.name}")


# --- the registry -----------------------------------------------------------------------------

TV_CLASSIFIERS = {
    # name: extra builder arguments
    "resnet18": {}, "resnet50": {}, "resnext50_32x4d": {}, "wide_resnet50_2": {},
    "mobilenet_v2": {}, "mobilenet_v3_small": {}, "mobilenet_v3_large": {},
    "efficientnet_b0": {}, "shufflenet_v2_x1_0": {}, "regnet_y_400mf": {}, "densenet121": {},
    "vgg11_bn": {}, "googlenet": {"aux_logits": False, "init_weights": True},
    "mnasnet0_5": {}, "convnext_tiny": {}, "squeezenet1_0": {},
}
TV_DETECTORS = {
    "fasterrcnn_mobilenet_v3_large_320_fpn": {},
    "retinanet_resnet50_fpn": {"min_size": 320, "max_size": 320},
    "ssdlite320_mobilenet_v3_large": {},
    "fcos_resnet50_fpn": {"min_size": 320, "max_size": 320},
}
ULTRALYTICS = ("yolov8n", "yolov5nu", "yolov8s", "yolo11n")
# timm CNNs across families (the backbones of many detectors), each at 128 px (at its own size
# where it takes only that, as attention blocks sized for one resolution do): ResNet and its
# variants, CSP/Darknet, DenseNet/DLA/DPN, the EfficientNet/MobileNet family, RegNet, VoVNet,
# HGNet, re-parameterisable RepVGG/MobileOne, GhostNet, and norm-free / LayerNorm nets (no
# BatchNorm: their other channel producers take the masks)
TIMM = (
    "resnet18", "resnet26t", "resnet50d", "resnext26ts", "seresnet33ts", "seresnext26d_32x4d",
    "ecaresnet26t", "skresnet18", "res2net50_26w_4s", "res2next50", "resnest14d",
    "gcresnet33ts", "bat_resnext26ts", "resnetblur18", "resnetrs50", "wide_resnet50_2",
    "tresnet_m", "resnetv2_50", "densenet121", "dla34", "dpn68", "cspdarknet53",
    "cspresnet50", "cspresnext50", "darknet53", "cs3darknet_s", "cs3darknet_focus_s",
    "cs3sedarknet_l", "efficientnet_b0", "efficientnet_lite0", "efficientnetv2_rw_t",
    "tf_efficientnetv2_b0", "mobilenetv2_100", "mobilenetv3_large_100",
    "mobilenetv3_small_100", "mobilenetv4_conv_small", "mixnet_s", "mnasnet_100",
    "fbnetc_100", "spnasnet_100", "lcnet_050", "hardcorenas_a", "tinynet_a", "ghostnet_100",
    "ghostnetv2_100", "repghostnet_050", "regnetx_002", "regnety_002", "regnety_008",
    "regnetz_b16", "rexnet_100", "selecsls42b", "hrnet_w18_small", "vovnet39a",
    "ese_vovnet19b_dw", "hgnet_tiny", "hgnetv2_b0", "repvgg_a0", "repvgg_b0", "mobileone_s0",
    "gernet_s", "inception_v3", "xception41", "vgg11_bn", "efficientformer_l1",
    "fastvit_t8", "mobilevit_xxs", "nf_resnet26", "dm_nfnet_f0", "convnext_atto",
)


def _timm(name: str) -> nn.Module:
    import timm
    return timm.create_model(name, pretrained=False)


def _timm_native_size(name: str) -> int | None:
    """The input side timm's default configuration gives ``name`` (None without timm)."""
    try:
        import timm
        cfg = timm.get_pretrained_cfg(name)
        return int(cfg.input_size[-1]) if cfg is not None else None
    except Exception:                                         # noqa: BLE001 - no timm, no size
        return None
QUICK = ("yolov5n", "tiny_resnet", "resnet18", "mobilenet_v3_small")


def _torchvision(name: str, **kwargs) -> nn.Module:
    from torchvision import models
    return models.get_model(name, weights=None, **kwargs)


def _torchvision_detector(name: str, **kwargs) -> nn.Module:
    from torchvision import models
    return models.get_model(name, weights=None, weights_backbone=None, **kwargs)


class _DetectorNet(nn.Module):
    """A torchvision detector's network without its image-list transform, anchors and
    post-processing: backbone (+ FPN) alone, or backbone and the dense head (Faster R-CNN: the
    RPN head) returning raw per-level outputs.  What remains prunable of a detector whose own
    forward cannot be traced."""

    def __init__(self, detector: nn.Module, head: bool):
        super().__init__()
        self.backbone = detector.backbone
        self.head = (detector.head if hasattr(detector, "head") else detector.rpn.head) \
            if head else None

    def forward(self, x):
        features = self.backbone(x)
        if self.head is None:
            return features
        return self.head(list(features.values()))


def _torchvision_net(name: str, head: bool, **kwargs) -> nn.Module:
    return _DetectorNet(_torchvision_detector(name, **kwargs), head)


def _ultralytics(name: str) -> nn.Module:
    from ultralytics import YOLO
    return YOLO(f"{name}.yaml").model


def default_entries() -> dict[str, ZooEntry]:
    """Every architecture the zoo knows, available or not, in table order."""
    entries = [ZooEntry(n, "graphprune", partial(build, n), imgsz=320, quick=n == "yolov5n")
               for n in ("yolov5n", "yolov5s", "yolov5m")]
    entries.append(ZooEntry("tiny_resnet", "graphprune", partial(build, "tiny_resnet"),
                            quick=True))
    entries += [ZooEntry(n, "torchvision", partial(_torchvision, n, **kw), requires="torchvision",
                         quick=n in QUICK) for n, kw in TV_CLASSIFIERS.items()]
    entries += [ZooEntry(n, "torchvision", partial(_torchvision_detector, n, **kw), imgsz=320,
                         inputs="image_list", requires="torchvision")
                for n, kw in TV_DETECTORS.items()]
    entries += [ZooEntry(f"{n}.{part}", "torchvision",
                         partial(_torchvision_net, n, part == "backbone+head", **kw), imgsz=320,
                         requires="torchvision")
                for n, kw in TV_DETECTORS.items() for part in ("backbone", "backbone+head")]
    entries += [ZooEntry(n, "ultralytics", partial(_ultralytics, n), imgsz=320,
                         requires="ultralytics") for n in ULTRALYTICS]
    entries += [ZooEntry(f"timm.{n}", "timm", partial(_timm, n), imgsz=128, requires="timm",
                         native_imgsz=_timm_native_size(n)) for n in TIMM]
    return {e.name: e for e in entries}


def importable(package: str | None) -> str | None:
    """None when ``package`` imports, else why not (one line)."""
    if package is None:
        return None
    try:
        importlib.import_module(package)
    except Exception as exc:                                  # noqa: BLE001 - any import error
        return f"{package} not importable ({type(exc).__name__}: {one_line(exc, 120)})"
    return None


def version_of(package: str) -> str | None:
    try:
        return importlib.import_module(package).__version__
    except Exception:                                         # noqa: BLE001
        return None


# --- one model ----------------------------------------------------------------------------------

def one_line(exc: BaseException | str, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def failure(exc: BaseException) -> str:
    """``Type: message`` on one line (a graphprune error's fix-it hint is kept apart)."""
    message = exc.message if isinstance(exc, gp.GraphpruneError) else exc
    return f"{type(exc).__name__}: {one_line(message)}"


def random_keep_masks(model: nn.Module, p: float, seed: int) -> dict[str, np.ndarray]:
    """A keep-mask for every BatchNorm (in a model without BatchNorm: for every channel
    producer, the layers a prune ratio ranks there), each channel kept with probability ``p``."""
    rng = np.random.default_rng(seed)
    layers = batchnorms(model) or producers(model)
    return {n: rng.random(features(m)) < p for n, m in layers.items()}


def run_model(model: nn.Module, inputs: tuple[Any, ...]):
    with torch.no_grad():
        return model(*inputs)


def runs(model: nn.Module, inputs: tuple[Any, ...]) -> bool:
    """Whether the model runs on ``inputs`` at all."""
    try:
        run_model(model, inputs)
    except Exception:                                         # noqa: BLE001 - any failure
        return False
    return True


def compare(out, ref) -> str | None:
    """None when every output matches within |a − b| ≤ 1e-4 + 1e-4·|b|, else what differs."""
    flat_out = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
    flat_ref = [t for t in tree_flatten(ref)[0] if isinstance(t, torch.Tensor)]
    if len(flat_out) != len(flat_ref):
        return f"{len(flat_out)} output tensors instead of {len(flat_ref)}"
    for k, (o, r) in enumerate(zip(flat_out, flat_ref)):
        if o.shape != r.shape:
            return f"output {k} has shape {tuple(o.shape)} instead of {tuple(r.shape)}"
        diff = (o.float() - r.float()).abs()
        if not bool((diff <= ATOL + RTOL * r.float().abs()).all()):
            return f"output {k}: max |diff| {float(diff.max()):.3g}"
    return None


def max_abs_diff(out, ref) -> float:
    pairs = zip(tree_flatten(out)[0], tree_flatten(ref)[0])
    return max((float((o.float() - r.float()).abs().max()) for o, r in pairs
                if isinstance(o, torch.Tensor) and o.numel()), default=0.0)


def evaluate(entry: ZooEntry, size: int, *, onnx: bool, workdir: Path, seed: int = 0
             ) -> dict[str, Any]:
    """Build, compile and check one architecture; every failure becomes a reason, never raises."""
    row: dict[str, Any] = {
        "model": entry.name, "source": entry.source, "imgsz": size, "status": "fail",
        "compiled": None, "verified": None, "onnx": None, "channels_pruned": None,
        "channels_before": None, "channels_after": None, "batchnorms": None,
        "params_before": None, "params_after": None, "params_ratio": None, "flops_ratio": None,
        "leaves": None, "leaf_names": {}, "pinned": None, "pin_examples": {}, "unprunable": None,
        "max_abs_diff": None, "reason": None, "hint": None, "seconds": {}}
    phase = "build"
    clock = time.perf_counter()
    try:
        model = entry.build().eval()
        row["batchnorms"] = len(batchnorms(model))
        if not producers(model):
            row["reason"] = NOTHING_TO_PRUNE
            return row
        randomize_norms(model, seed)
        masks = random_keep_masks(model, KEEP_P, seed)
        inputs = entry.example(size, seed)
        if entry.native_imgsz and entry.native_imgsz != size and not runs(model, inputs):
            size = row["imgsz"] = entry.native_imgsz
            inputs = entry.example(size, seed)
        row["seconds"]["build"] = time.perf_counter() - clock

        phase, clock = "compile", time.perf_counter()
        row["compiled"] = False
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", gp.GraphpruneWarning)
                result = gp.compile(model, inputs, masks=masks)
        except gp.VerificationError:
            row["compiled"], row["verified"] = True, False    # slimmed, then refused
            raise
        row["seconds"]["compile"] = time.perf_counter() - clock
        row["compiled"] = True
        s = result.stats
        row.update(channels_before=s.channels_before, channels_after=s.channels_after,
                   channels_pruned=s.channels_pruned if s.channels_before else 0.0,
                   params_before=s.params_before, params_after=s.params_after,
                   params_ratio=s.params_ratio, flops_ratio=s.flops_ratio,
                   leaves=len(result.leaves), leaf_names=dict(result.leaves),
                   pinned=len(result.pinned), unprunable=len(result.unprunable),
                   pin_examples=dict(list(result.pinned.items())[:3]))

        phase, clock = "check", time.perf_counter()
        ref = run_model(gp.zero_mask(model, result.masks).eval(), inputs)
        out = run_model(result.module.eval(), inputs)
        row["max_abs_diff"] = max_abs_diff(out, ref)
        mismatch = compare(out, ref)
        row["verified"] = mismatch is None
        row["seconds"]["check"] = time.perf_counter() - clock
        if mismatch is not None:
            row["reason"] = f"check: slim != zero-masked ({mismatch})"
            return row

        if onnx:
            phase, clock = "onnx", time.perf_counter()
            row["onnx"] = False
            result.export_onnx(workdir / f"{entry.name}.onnx")
            row["onnx"] = True
            row["seconds"]["onnx"] = time.perf_counter() - clock
    except Exception as exc:                                  # noqa: BLE001 - report, go on
        row["reason"] = f"{phase}: {failure(exc)}"
        row["hint"] = getattr(exc, "hint", None)
        return row
    finally:
        row["seconds"] = {k: round(v, 2) for k, v in row["seconds"].items()}
    if row["channels_before"] == 0:
        row["status"], row["reason"] = "pinned everything", "no prunable channel"
    elif row["channels_pruned"] < MIN_PRUNED:
        row["status"] = "pinned everything"
        row["reason"] = (f"only {row['channels_pruned']:.1%} of the prunable channels "
                         f"removed (< {MIN_PRUNED:.0%})")
        if row["pin_examples"]:
            name, why = next(iter(row["pin_examples"].items()))
            row["reason"] += f"; {row['pinned']} layer(s) pinned, e.g. {name!r}: {why}"
    else:
        row["status"] = "pass"
    return row


# --- torch-pruning on the same model -----------------------------------------------------------

def output_layers(model: nn.Module, inputs: tuple[Any, ...]) -> list[nn.Module]:
    """The convolutions and linear layers whose output is (a view of) a model output, plus a
    timm model's classifier: what a pruner must leave whole to keep the outputs' shapes."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))]
    produced: dict[int, nn.Module] = {}

    def record(module: nn.Module, _inputs, out) -> None:      # returns None: output unchanged
        if isinstance(out, torch.Tensor):
            produced.setdefault(out.untyped_storage().data_ptr(), module)

    hooks = [m.register_forward_hook(record) for m in layers]
    try:
        outputs = run_model(model, inputs)
    finally:
        for h in hooks:
            h.remove()
    found = [produced[t.untyped_storage().data_ptr()] for t in tree_flatten(outputs)[0]
             if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() in produced]
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if isinstance(head, nn.Module) and any(p.numel() for p in head.parameters()):
        found.append(head)
    return list({id(m): m for m in found}.values())


TP_LIMIT_S = 120          # torch-pruning's graph building can run on for many minutes


def evaluate_tp(entry: ZooEntry, size: int, seed: int = 0, limit: float | None = None
                ) -> dict[str, Any]:
    """Torch-Pruning on the same model, by its own check: a MetaPruner with random importance
    and pruning ratio 0.5 per layer (its counterpart of the random masks), the output layers
    left whole; a pass runs afterwards with unchanged output shapes and has removed at least
    ``MIN_PRUNED`` of the BatchNorm channels (of the parameters, for a model without BatchNorm).
    Nothing here checks the pruned model's values: torch-pruning defines none to check."""
    row: dict[str, Any] = {"tp_status": "fail", "tp_pruned": None, "tp_params_ratio": None,
                           "tp_reason": None, "tp_seconds": None}
    clock = time.perf_counter()
    try:
        with deadline(TP_LIMIT_S if limit is None else limit):
            _run_tp(entry, size, seed, row)
    except (Exception, TimeLimit) as exc:                     # noqa: BLE001 - report, go on
        row["tp_reason"] = failure(exc)
    finally:
        row["tp_seconds"] = round(time.perf_counter() - clock, 2)
    return row


def _run_tp(entry: ZooEntry, size: int, seed: int, row: dict[str, Any]) -> None:
    """evaluate_tp's body: fills ``row``."""
    import torch_pruning as tp
    model = entry.build().eval()
    randomize_norms(model, seed)
    inputs = entry.example(size, seed)
    shapes = [t.shape for t in tree_flatten(run_model(model, inputs))[0]
              if isinstance(t, torch.Tensor)]
    bn_before = sum(m.num_features for m in batchnorms(model).values())
    params_before = sum(p.numel() for p in model.parameters())
    pruner = tp.pruner.MetaPruner(model, example_inputs=inputs[0] if len(inputs) == 1
                                  else inputs, importance=tp.importance.RandomImportance(),
                                  pruning_ratio=KEEP_P,
                                  ignored_layers=output_layers(model, inputs))
    pruner.step()
    after = [t.shape for t in tree_flatten(run_model(model, inputs))[0]
             if isinstance(t, torch.Tensor)]
    row["tp_params_ratio"] = sum(p.numel() for p in model.parameters()) / params_before
    if after != shapes:
        row["tp_reason"] = "the pruned model's output shapes changed"
        return
    bn_after = sum(m.num_features for m in batchnorms(model).values())
    row["tp_pruned"] = 1 - bn_after / bn_before if bn_before else \
        1 - row["tp_params_ratio"]
    row["tp_status"] = "pass" if row["tp_pruned"] >= MIN_PRUNED else "pinned everything"
    if row["tp_status"] != "pass":
        row["tp_reason"] = f"only {row['tp_pruned']:.1%} removed"


# --- output -------------------------------------------------------------------------------------

def yes_no(value: bool | None) -> str:
    return "—" if value is None else ("yes" if value else "no")


def count(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else str(n)


def cells(row: Mapping[str, Any]) -> list[str]:
    pruned = "—" if row["channels_pruned"] is None else f"{row['channels_pruned']:.1%}"
    params = "—" if row["params_after"] is None else \
        f"{count(row['params_after'])} / {count(row['params_before'])}"
    seconds = sum(row["seconds"].values())
    tp = row.get("tp_status")
    tp_cell = "—" if tp is None else tp + ("" if row.get("tp_pruned") is None else
                                           f", {row['tp_pruned']:.1%}")
    if row.get("tp_reason"):
        tp_cell += f": {row['tp_reason']}"
    return [row["model"], row["source"], str(row["imgsz"]), row["status"],
            yes_no(row["compiled"]), yes_no(row["verified"]), yes_no(row["onnx"]), pruned,
            params, "—" if row["leaves"] is None else str(row["leaves"]), f"{seconds:.1f}",
            row["reason"] or "", tp_cell]


HEADERS = ["model", "source", "px", "status", "compiled?", "verified?", "ONNX parity?",
           "channels pruned", "params after / before", "leaves kept whole", "s", "reason",
           "torch-pruning (random, 0.5)"]


def rich_table(rows: Iterable[Mapping[str, Any]], title: str) -> Table:
    table = Table(title=title)
    for h in HEADERS:
        numeric = h in ("px", "channels pruned", "params after / before",
                        "leaves kept whole", "s")
        table.add_column(h, justify="right" if numeric else "left",
                         overflow="fold", max_width=70 if h in ("reason", HEADERS[-1])
                         else None)
    colours = {"pass": "green", "fail": "red", "pinned everything": "yellow"}
    for row in rows:
        c = cells(row)
        c[3] = f"[{colours[row['status']]}]{c[3]}[/]"
        table.add_row(*c)
    return table


def markdown(payload: Mapping[str, Any]) -> str:
    rows = payload["rows"]
    passed = sum(r["status"] == "pass" for r in rows)
    lines = [
        "# Prunability zoo", "",
        f"Random keep-masks (p = {KEEP_P}) over every BatchNorm (a model without BatchNorm: over "
        f"every GroupNorm, channel LayerNorm, convolution and linear layer) of randomly "
        f"initialised models with random norm parameters and statistics (seed "
        f"{payload['seed']}); a pass compiles, verifies "
        f"slim == zero-masked (by gp.compile and again independently, |a − b| ≤ 1e-4 + "
        f"1e-4·|b|){', matches in onnxruntime' if payload['onnx'] else ''} and removes at least "
        f"{MIN_PRUNED:.0%} of the prunable channels (BatchNorm channels; without BatchNorm, the "
        f"producers' channels).", "",
        f"{payload['machine']}; Python {payload['python']}, torch {payload['torch']}, "
        f"torchvision {payload['torchvision'] or 'not installed'}, ultralytics "
        f"{payload['ultralytics'] or 'not installed'}, timm "
        f"{payload.get('timm') or 'not installed'}, onnxruntime {payload['onnxruntime']}; "
        f"{payload['threads']} torch thread(s); {payload['date']}; the run took "
        f"{payload['total_s'] / 60:.1f} min.", "",
        f"**{passed} of {len(rows)} pass.**" + (
            f" Torch-Pruning {payload.get('torch_pruning')} on the same models (MetaPruner, "
            f"random importance, ratio {KEEP_P} per layer, output layers left whole; its own "
            f"check: the pruned model runs with the same output shapes and lost ≥ "
            f"{MIN_PRUNED:.0%} of its BatchNorm channels, or of its parameters without "
            f"BatchNorm; it has no reference to compare values with; stopped after "
            f"{payload.get('tp_limit_s', TP_LIMIT_S):g} s): "
            f"{sum(r.get('tp_status') == 'pass' for r in rows)} of {len(rows)} pass."
            if payload.get("tp") else ""), "",
        "`NAME.backbone` is a torchvision detector's backbone + FPN alone and "
        "`NAME.backbone+head` adds its dense head (Faster R-CNN: the RPN head), without the "
        "image-list transform, anchors and post-processing of the full detector. "
        "*s*: seconds to build, compile, check and export the model.", "",
        "| " + " | ".join(HEADERS) + " |",
        "|" + "---|" * len(HEADERS)]
    for row in rows:
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells(row)) + " |")
    if payload["skipped"]:
        lines += ["", "Not run: " + "; ".join(f"{k} ({v})" for k, v in payload["skipped"].items())
                  + "."]
    leaves = {r["model"]: r["leaf_names"] for r in rows if r["leaf_names"]}
    if leaves:
        lines += ["", "Leaves kept whole (submodules torch.fx could not trace):", ""]
        for model, names in leaves.items():
            lines.append(f"- {model}: " + "; ".join(f"`{n}` ({why})" for n, why in names.items()))
    return "\n".join(lines) + "\n"


# --- command line -------------------------------------------------------------------------------

def main(argv=None, extra: Iterable[ZooEntry] | Mapping[str, ZooEntry] = ()) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=None,
                        help="comma-separated names (default: every available one)")
    parser.add_argument("--sources", default=None,
                        help="only these sources, comma-separated: graphprune, torchvision, "
                             "ultralytics, timm (results then go to zoo_SOURCES.*)")
    parser.add_argument("--stem", default=None,
                        help="name of the results files (default zoo, or zoo_SOURCES)")
    parser.add_argument("--quick", action="store_true",
                        help=f"small inputs (64 px) and only {', '.join(QUICK)} "
                             "(or the --models given)")
    parser.add_argument("--imgsz", type=int, default=None,
                        help="input size for every model (default: 224 classifiers, "
                             "320 detectors; 64 with --quick)")
    parser.add_argument("--no-onnx", dest="onnx", action="store_false",
                        help="skip the ONNX export and onnxruntime parity check")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-tp", dest="tp", action="store_false",
                        help="skip the torch-pruning run on each model")
    parser.add_argument("--tp-limit", type=float, default=TP_LIMIT_S, metavar="S",
                        help=f"stop a torch-pruning run after S seconds (default {TP_LIMIT_S})")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's own choice, e.g. OMP_NUM_THREADS)")
    parser.add_argument("--json-out", type=Path, default=None)
    parser.add_argument("--results", type=Path, default=HERE / "results",
                        help="where zoo.json and zoo.md go (not with --quick)")
    parser.add_argument("--list", action="store_true", help="list the registry and exit")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    registry = default_entries()
    extra = list(extra.values()) if isinstance(extra, Mapping) else list(extra)
    registry.update({e.name: e for e in extra})
    checked: dict[str | None, str | None] = {}

    def unavailable(entry: ZooEntry) -> str | None:          # import each package once, if asked
        if entry.requires not in checked:
            checked[entry.requires] = importable(entry.requires)
        return checked[entry.requires]

    console = Console(stderr=True)
    if args.list:
        width = max(len(n) for n in registry)
        for e in registry.values():
            print(f"{e.name:{width}s}  {e.source:12s} {e.imgsz:4d} px  "
                  f"{unavailable(e) or 'available'}")
        return 0

    if args.models:
        names = [n.strip() for n in args.models.split(",") if n.strip()]
        unknown = [n for n in names if n not in registry]
        if unknown:
            parser.error(f"unknown model(s) {', '.join(unknown)}; --list shows the registry")
    elif args.quick:
        names = [n for n, e in registry.items() if e.quick or e in extra]
    else:
        names = list(registry)
    if args.sources:
        sources = [s for s in args.sources.split(",") if s]
        known = {e.source for e in registry.values()}
        if set(sources) - known:
            parser.error(f"unknown source(s) {', '.join(sorted(set(sources) - known))}; "
                         f"known: {', '.join(sorted(known))}")
        names = [n for n in names if registry[n].source in sources]
    skipped = {n: why for n in names if (why := unavailable(registry[n]))}
    chosen = [registry[n] for n in names if n not in skipped]

    start = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="gp-zoo-") as tmp:
        for k, entry in enumerate(chosen, 1):
            size = args.imgsz or (entry.quick_imgsz if args.quick else entry.imgsz)
            with console.status(f"[{k}/{len(chosen)}] {entry.name} @ {size} px"):
                row = evaluate(entry, size, onnx=args.onnx, workdir=Path(tmp), seed=args.seed)
                if args.tp:
                    row.update(evaluate_tp(entry, row["imgsz"], seed=args.seed,
                                           limit=args.tp_limit))
            rows.append(row)
            pruned = "" if row["channels_pruned"] is None else \
                f", {row['channels_pruned']:.1%} pruned"
            tp_note = "" if row.get("tp_status") is None else \
                f"; torch-pruning: {row['tp_status']}" + \
                (f" ({row['tp_reason']})" if row.get("tp_reason") else "")
            console.print(f"[{k}/{len(chosen)}] {entry.name}: {row['status']}{pruned}"
                          f"{' — ' + row['reason'] if row['reason'] else ''} "
                          f"({sum(row['seconds'].values()):.1f} s){tp_note}")
    total = time.perf_counter() - start

    payload = {
        "benchmark": "zoo", "keep_probability": KEEP_P, "min_pruned": MIN_PRUNED,
        "seed": args.seed, "onnx": args.onnx, "quick": args.quick, "imgsz": args.imgsz,
        "machine": f"{machine()}, {platform.system()} "
                   f"{platform.release()}",
        "python": platform.python_version(), "torch": torch.__version__,
        "torchvision": version_of("torchvision"), "ultralytics": version_of("ultralytics"),
        "timm": version_of("timm"), "torch_pruning": version_of("torch_pruning"),
        "tp": args.tp, "tp_limit_s": args.tp_limit,
        "onnxruntime": version_of("onnxruntime"), "threads": torch.get_num_threads(),
        "date": str(date.today()), "total_s": round(total, 1),
        "passed": sum(r["status"] == "pass" for r in rows), "rows": rows, "skipped": skipped}
    title = (f"Prunability zoo — random masks p={KEEP_P}, {payload['passed']}/{len(rows)} pass "
             f"({payload['machine']}, torch {payload['torch']}, torchvision "
             f"{payload['torchvision'] or '—'}, {payload['date']}, {total / 60:.1f} min)")
    Console(width=220).print(rich_table(rows, title))
    if skipped:
        print("not run: " + "; ".join(f"{k} ({v})" for k, v in skipped.items()))
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(payload, indent=2) + "\n")
    if not args.quick:
        args.results.mkdir(parents=True, exist_ok=True)
        stem = args.stem or ("zoo" if not args.sources else
                             "zoo_" + "_".join(args.sources.split(",")))
        (args.results / f"{stem}.json").write_text(json.dumps(payload, indent=2) + "\n")
        (args.results / f"{stem}.md").write_text(markdown(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
