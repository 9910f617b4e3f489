"""Accuracy against size on one budget: pruned models next to the honest yardsticks.

Every method starts from one baseline trained from scratch and spends the same epochs after it:

* **dense family** — the same YOLOv5 at narrower width multipliers, trained from scratch for the
  whole budget (baseline + sparse + fine-tune epochs);
* **same-budget baseline** (``none``) — the baseline trained on for the sparse epochs with no
  sparsity term (the same schedule), then "fine-tuned" like the pruned models, unpruned;
* **ns**, **l1rr** (graphprune's modes: network slimming, the paper's Eq. 3–7),
  **progressive** (graphprune's collapse-proof mode), **tp-groupnorm** and **tp-bnscale**
  (torch-pruning's sparse-training pruners: their ``regularize`` during training, their global
  ranking at the cut) — each sparse-trained once, then cut at several operating points: LFA⁺
  targets (graphprune's modes) and FLOPs targets (all), each measured as pruned and after a short
  fine-tune of the same length for all.

torch-pruning's cuts are realised by graphprune's compiler from the channels torch-pruning
chose (``residual="couple"``, its own coupling), and checked against torch-pruning's own pruned
model on the example input, so both are the same network; that lets every pruned model be
fine-tuned with the same trainer.  Each point gets mAP50 and mAP50-95 on the validation split,
parameters, FLOPs (``torch.utils.flop_counter``) and onnxruntime CPU latency (batch 1, all
models of a seed timed interleaved).  Seeds change the model's initialisation, the data order
and — for NWPU — the train/val split (and for the synthetic set the generated images).

    python -m benchmarks.tradeoff                       # synthetic set, the demo's budget
    python -m benchmarks.tradeoff --data nwpu           # NWPU VHR-10, yolov5n @ 320
    python -m benchmarks.tradeoff --data nwpu --model yolov5s --methods progressive-scratch@0.5
                                  # a larger model; a progressive method at its own FLOPs target
    python -m benchmarks.tradeoff --quick               # every step at toy sizes (the tests)

Finished runs are kept under ``--work`` and reused when the script runs again, so an
interrupted benchmark continues where it stopped.  Results: ``results/tradeoff_<data>.{md,json,
png}``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

import graphprune as gp
from graphprune import data as gpdata
from graphprune.demo import DEMO_RECIPE, DEMO_SPARSITY
from graphprune.detect.loss import find_detect
from graphprune.detect.train import TrainConfig, load_resume, resume, train
from graphprune.detect.val import resolve_device
from graphprune.export import atomic_path, export_onnx
from graphprune.integrations.torch_pruning import masks_from_pruner
from graphprune.models.yolov5 import SCALES
from graphprune.search import prune_to_target
from graphprune.sparsity import default_phases
from graphprune.stats import count_flops, count_params
from graphprune.workflow import calibration_set, evaluate_map

from benchmarks.common import dense_family_text, logged_minutes, op_name, ort_session, stamp, time_sessions

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

SHARED_NWPU = ROOT.parent / "shared" / "data" / "nwpu_vhr10"

# One budget per dataset.  synthetic: the demo's (400 + 100 images at 256 px, yolov5n, 30
# baseline + 30 sparse epochs); nwpu: yolov5n at 320 px, 60 + 40 epochs.  Fine-tunes are a
# sixth of the sparse epochs for every method.
PRESETS: dict[str, dict[str, Any]] = {
    "synthetic": dict(model="yolov5n", imgsz=256, base_epochs=30, sparse_epochs=30,
                      finetune_epochs=5, n_train=400, n_val=100, recipe=DEMO_RECIPE,
                      sparse_lr0=0.01, finetune_lr0=0.002, calib_images=64,
                      widths=(0.25, 0.1875, 0.15, 0.125, 0.0625), seeds=(0, 1)),
    "nwpu": dict(model="yolov5n", imgsz=320, base_epochs=60, sparse_epochs=40,
                 finetune_epochs=7, recipe=DEMO_RECIPE, sparse_lr0=0.01, finetune_lr0=0.002,
                 calib_images=64, widths=(0.25, 0.1875, 0.125, 0.0625), seeds=(0, 1)),
    "quick": dict(model="yolov5n", imgsz=64, base_epochs=1, sparse_epochs=2, finetune_epochs=1,
                  n_train=16, n_val=8, recipe=DEMO_RECIPE, sparse_lr0=0.01, finetune_lr0=0.002,
                  calib_images=8, widths=(0.25, 0.125), seeds=(0,)),
}


def methods(preset: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The sparse-training methods at this budget.  ns and l1rr: the demo's settings (θ = 0.01;
    l1rr's α/λ every 3 of 30 epochs, at most 3 updates, scaled to the sparse epochs);
    progressive: the demo's target with ``default_phases`` for the sparse epochs; torch-pruning's
    pruners their regularisation strengths: BNScalePruner the same L1 strength as ns,
    GroupNormPruner the 5e-4 of torch-pruning's own benchmarks."""
    epochs = preset["sparse_epochs"]
    l1rr, ns = DEMO_SPARSITY["l1rr"], DEMO_SPARSITY["ns"]
    phase, phases = default_phases("progressive", epochs)
    scratch_phase, scratch_phases = default_phases("progressive",
                                                   preset["base_epochs"] + epochs)
    return {
        "none": dict(kind="gp", sparsity=None),
        "ns": dict(kind="gp", sparsity="ns", theta=ns["theta"]),
        "l1rr": dict(kind="gp", sparsity="l1rr", theta=l1rr["theta"],
                     phase_epochs=max(round(l1rr["phase_epochs"] * epochs / 30), 1),
                     max_phases=l1rr["max_phases"]),
        "progressive": dict(kind="gp", sparsity="progressive", phase_epochs=phase,
                            max_phases=phases,
                            options=dict(DEMO_SPARSITY["progressive"]["sparsity_options"])),
        # the same mode from scratch, over the baseline's and the sparse epochs in one run
        "progressive-scratch": dict(kind="gp", sparsity="progressive", scratch=True,
                                    phase_epochs=scratch_phase, max_phases=scratch_phases,
                                    options=dict(DEMO_SPARSITY["progressive"]
                                                 ["sparsity_options"])),
        "tp-groupnorm": dict(kind="tp", pruner="groupnorm", reg=5e-4),
        "tp-bnscale": dict(kind="tp", pruner="bnscale", reg=ns["theta"]),
    }


def method_spec(preset: dict[str, Any], name: str) -> dict[str, Any]:
    """The settings of method ``name``: one of :func:`methods`, or a progressive one with its
    own FLOPs target, written ``NAME@TARGET`` (``progressive-scratch@0.5`` sparse-trains toward
    half the FLOPs instead of the demo's 0.75, the way a user who wants a 50 % model would).
    Raises ValueError naming what is wrong."""
    base, at, target = name.partition("@")
    known = methods(preset)
    if base not in known:
        raise ValueError(f"unknown method {base!r}: choose from {', '.join(known)}")
    spec = copy.deepcopy(known[base])
    if not at:
        return spec
    if spec.get("sparsity") != "progressive":
        raise ValueError(f"{name!r}: only the progressive methods take @TARGET")
    try:
        value = float(target)
    except ValueError:
        raise ValueError(f"{name!r}: the target after @ must be a number") from None
    if not 0 < value < 1:
        raise ValueError(f"{name!r}: the target is a share of the FLOPs, in (0, 1)")
    spec["options"]["target"] = value
    return spec


def run_name(method: str) -> str:
    """A method's run directory name (``@`` spelled out)."""
    return method.replace("@", "-target")


def dense_widths(model: str) -> tuple[float, ...]:
    """The dense family of a built-in YOLOv5: its own width and 3/4, 1/2 and 1/4 of it."""
    width = SCALES[model.removeprefix("yolov5")][1]
    return tuple(width * f for f in (1.0, 0.75, 0.5, 0.25))


# -- runs (each kept under --work and reused) -----------------------------------------------
def done(path: Path) -> dict[str, Any] | None:
    marker = path / "done.json"
    return json.loads(marker.read_text()) if marker.exists() else None


def mark_done(path: Path, info: dict[str, Any]) -> dict[str, Any]:
    (path / "done.json").write_text(json.dumps(info, indent=2, default=float) + "\n")
    return info


def training(out: Path, config: TrainConfig, console: Console, callbacks=None) -> dict[str, Any]:
    """Train (or reuse) one run; returns its final metrics and minutes."""
    found = done(out)
    if found is not None:
        return found
    last, earlier = out / "last.pt", 0.0
    start = time.perf_counter()
    if interrupted(last, config):
        earlier = logged_minutes(out / "results.jsonl")     # the epochs before the interruption
        console.print(f"resuming the interrupted run {out}")
        trainer = resume(last, callbacks=callbacks, console=console)
    else:
        if out.exists():
            import shutil
            shutil.rmtree(out)
        trainer = train(config, callbacks=callbacks, console=console)
    final = trainer.history[-1].get("metrics") or {}
    info = {"map50": final.get("map50"), "map": final.get("map"),
            "minutes": earlier + (time.perf_counter() - start) / 60, "epochs": config.epochs}
    if trainer.sparsity is not None:
        log = [json.loads(x) for x in (out / "sparsity.jsonl").read_text().splitlines()]
        info["rho_by_epoch"] = [row["rho"] for row in log]
    return mark_done(out, info)


def interrupted(last: Path, config: TrainConfig) -> bool:
    """Whether ``last`` is the checkpoint of an unfinished run with this very configuration
    (then it is resumed, exactly, instead of trained again from the start)."""
    if not last.exists():
        return False
    try:
        saved, _ = load_resume(last)
    except (gp.GraphpruneError, RuntimeError, OSError, KeyError, ValueError):
        return False
    # compared as the checkpoint stores it (JSON: a tuple reads back as a list)
    return asdict(saved) == json.loads(json.dumps({**asdict(config), "out": saved.out}))


class TorchPruningRegularizer:
    """A graphprune Trainer callback: torch-pruning's pruner ``regularize`` after each backward
    (after clipping, as graphprune's own terms), on the model being trained."""

    def __init__(self, kind: str, reg: float, imgsz: int):
        self.kind, self.reg, self.imgsz = kind, reg, imgsz
        self.pruner = None

    def on_train_start(self, trainer) -> None:
        model = trainer.model
        was = model.training
        model.eval()
        self.pruner = tp_pruner(model, torch.zeros(1, 3, min(self.imgsz, 64), min(self.imgsz, 64),
                                                   device=trainer.device),
                                self.kind, 0.5, reg=self.reg)
        model.train(was)

    def before_optimizer_step(self, trainer) -> None:
        if self.kind == "bnscale":
            self.pruner.regularize(trainer.model, reg=self.reg)
        else:
            self.pruner.regularize(trainer.model)


def tp_pruner(model, x, kind: str, ratio: float, reg: float = 1e-4):
    import torch_pruning as tp

    head = find_detect(model)
    if kind == "bnscale":
        return tp.pruner.BNScalePruner(model, x, importance=tp.importance.BNScaleImportance(),
                                       global_pruning=True, pruning_ratio=ratio, reg=reg,
                                       ignored_layers=[head])
    return tp.pruner.GroupNormPruner(model, x, importance=tp.importance.GroupMagnitudeImportance(
        p=2), global_pruning=True, pruning_ratio=ratio, reg=reg, ignored_layers=[head])


def tp_masks(model, x, kind: str, ratio: float) -> tuple[dict[str, np.ndarray], torch.nn.Module]:
    """The BatchNorm keep-masks torch-pruning's global ranking chooses at ``ratio``, and its own
    pruned copy of the model."""
    work = copy.deepcopy(model).eval()
    masks = masks_from_pruner(work, tp_pruner(work, x, kind, ratio), apply=True)
    return masks, work


# operating-point kinds of an LFA target, by the criterion the search bounds
LFA_OPS = {"lfa": "plus", "lfa2": "two-sided"}


def gp_point(sparse: torch.nn.Module, example, calib, device, op: tuple[str, float]):
    """graphprune's cut of a sparse model: the LFA-guided search or a FLOPs goal, with the pruned
    channels' constants folded."""
    kind, value = op
    guided = kind in LFA_OPS
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gp.GraphpruneWarning)
        found = prune_to_target(sparse, example, calib if guided else None,
                                lfa_target=value if guided else None,
                                flops_target=value if kind == "flops" else None,
                                device=device, fold_pruned_bias=True,
                                lfa_criterion=LFA_OPS.get(kind, "plus"))
    loss = found.lfa_slim
    return found.compiled, {"lfa": loss.plus if loss is not None else None,
                            "lfa_two_sided": loss.two_sided if loss is not None else None,
                            "threshold": found.search.plan.threshold}


def tp_point(sparse: torch.nn.Module, example, kind: str, flops_target: float):
    """torch-pruning's cut at a FLOPs goal: its pruning ratio bisected until at least the goal's
    share of the FLOPs is gone, realised by graphprune's compiler and checked against
    torch-pruning's own pruned model."""
    small = torch.zeros(1, 3, 64, 64)
    base = count_flops(sparse, (example,))
    lo, hi, best = 0.0, 1.0, None
    for _ in range(10):
        mid = (lo + hi) / 2
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            masks, pruned = tp_masks(sparse, small, kind, mid)
        removed = 1 - count_flops(pruned, (example,)) / base
        if removed >= flops_target:
            best, hi = (mid, masks, pruned), mid
        else:
            lo = mid
    if best is None:
        raise RuntimeError(f"torch-pruning could not remove {flops_target:.0%} of the FLOPs")
    ratio, masks, pruned = best
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gp.GraphpruneWarning)
        compiled = gp.compile(sparse, example, masks={n: torch.as_tensor(m)
                                                      for n, m in masks.items()},
                              residual="couple")
    with torch.no_grad():
        ours = compiled.module.eval()(example)
        theirs = pruned.eval()(example)
    ours, theirs = torch.utils._pytree.tree_flatten(ours)[0], \
        torch.utils._pytree.tree_flatten(theirs)[0]
    diff = max(float((a - b).abs().max()) for a, b in zip(ours, theirs))
    if diff > 1e-3 or count_params(compiled.module) != count_params(pruned):
        raise RuntimeError(f"graphprune's realisation of torch-pruning's {kind} cut differs "
                           f"from torch-pruning's model (max |diff| {diff:.3g})")
    return compiled, {"tp_ratio": ratio, "tp_max_diff": diff}


# -- one seed --------------------------------------------------------------------------------
def dataset(args, preset, seed: int) -> Path:
    root = args.work / f"data-seed{seed}"
    yaml = root / "data.yaml"
    if yaml.exists():
        return yaml
    if args.data == "nwpu":
        if not args.nwpu.exists():
            sys.exit(f"tradeoff.py: NWPU VHR-10 not found at {args.nwpu} (give its folder "
                     "with --nwpu)")
        gpdata.convert_nwpu(args.nwpu, root, val_fraction=0.2, seed=seed)
        return yaml
    return gpdata.make_synthetic_dataset(root, preset["n_train"], preset["n_val"], seed=seed,
                                         size=max(preset["imgsz"], 64))


def part_needs_baseline(preset: dict[str, Any], part: str | None) -> bool:
    """Whether ``--part`` ``part`` starts from its seed's baseline (``none`` and every method
    but the from-scratch ones)."""
    if part in ("baseline", "none"):
        return part == "none"
    if part is None:
        return True
    if part.startswith("dense@"):
        return False
    return not method_spec(preset, part).get("scratch")


def run_seed(args, preset, seed: int, console: Console) -> dict[str, Any] | None:
    """Train, cut, fine-tune and measure everything of one seed (reusing finished runs).  With
    ``args.part`` only that part is trained and nothing is measured (returns None); with
    ``args.finished_only`` nothing new is trained, and a seed whose baseline has not finished is
    left out (None)."""
    part = args.part
    device = resolve_device(args.device)
    data_yaml = dataset(args, preset, seed)
    data = gpdata.load_data_config(data_yaml)
    work = args.work / f"seed{seed}"
    imgsz = preset["imgsz"]
    recipe = dict(preset["recipe"])
    common = dict(data=str(data_yaml), imgsz=imgsz, device=args.device, workers=args.workers,
                  cache=args.cache, seed=seed, **recipe)
    total = preset["base_epochs"] + preset["sparse_epochs"] + preset["finetune_epochs"]
    example = torch.rand(1, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(0))
    out: dict[str, Any] = {"seed": seed, "runs": {}, "points": [], "dense": []}

    base_ckpt = work / "baseline" / "last.pt"
    if args.finished_only and done(work / "baseline") is None:
        console.print(f"seed {seed}: the baseline has not finished; the seed is left out "
                      "(--finished-only)")
        return None
    if part not in (None, "baseline") and part_needs_baseline(preset, part) and \
            done(work / "baseline") is None:
        sys.exit(f"tradeoff.py: --part {part} starts from seed {seed}'s baseline, which has not "
                 "finished: run --part baseline first")
    if part in (None, "baseline"):
        console.rule(f"seed {seed}: baseline, {preset['base_epochs']} epochs")
        out["runs"]["baseline"] = training(work / "baseline", TrainConfig(
            model=preset["model"], epochs=preset["base_epochs"], out=str(work / "baseline"),
            val_every=preset["base_epochs"], **common), console)

    calib, _ = calibration_set(data, imgsz, preset["calib_images"])
    sparse_common = {**common, "lr0": preset["sparse_lr0"], "warmup_epochs": 0}
    ft_settings = {**recipe, "lr0": preset["finetune_lr0"], "warmup_epochs": 0}
    chosen = [m for m in args.methods if m != "none"]
    names = ["none", *chosen]
    if part is not None:
        names = [] if part == "baseline" or part.startswith("dense@") else [part]
    for name in names:
        spec = method_spec(preset, name)
        run = work / f"sparse-{run_name(name)}"
        callbacks = None
        if args.finished_only and (done(run) is None or
                                   (name == "none" and done(run / "finetune") is None)):
            console.print(f"seed {seed}: {name} has no finished sparse run; left out "
                          "(--finished-only)")
            continue
        if spec.get("scratch"):         # sparse training from scratch, for the baseline's and
            epochs = preset["base_epochs"] + preset["sparse_epochs"]       # sparse epochs
            console.rule(f"seed {seed}: {name}, {epochs} epochs from scratch")
            config = dict(model=preset["model"], epochs=epochs, out=str(run), val_every=epochs,
                          **common)
        else:
            console.rule(f"seed {seed}: {name}, {preset['sparse_epochs']} epochs from the "
                         "baseline")
            config = dict(weights=str(base_ckpt), epochs=preset["sparse_epochs"], out=str(run),
                          val_every=preset["sparse_epochs"], **sparse_common)
        if spec["kind"] == "tp":
            callbacks = [TorchPruningRegularizer(spec["pruner"], spec["reg"], imgsz)]
        elif spec["sparsity"]:
            config.update(sparsity=spec["sparsity"], theta=spec.get("theta", 1e-3),
                          phase_epochs=spec.get("phase_epochs", 40),
                          max_phases=spec.get("max_phases", 10),
                          sparsity_options=spec.get("options", {}))
        out["runs"][name] = training(run, TrainConfig(**config), console, callbacks)
        sparse = gp.load(run / "last.pt").to(device).eval()
        if name == "none":              # the same-budget baseline: fine-tuned too, unpruned
            ft = training(run / "finetune", TrainConfig(
                weights=str(run / "last.pt"), epochs=preset["finetune_epochs"],
                out=str(run / "finetune"), val_every=preset["finetune_epochs"],
                **{**common, **ft_settings}), console)
            out["reference"] = point_row(name, ("none", 0.0), sparse, sparse, example, device,
                                         out["runs"][name], ft, {})
            continue
        ops = [("flops", f) for f in args.flops_targets]
        if spec["kind"] == "gp":
            ops = [(kind, t) for kind in args.lfa_kinds for t in args.lfa_targets] + ops
        for op in ops:
            cut = work / f"cut-{run_name(name)}-{op[0]}{op[1]:g}"
            found = done(cut)
            if found is None and args.finished_only:
                console.print(f"seed {seed}: {name}'s cut at {op[0]} {op[1]:g} has not finished;"
                              " left out (--finished-only)")
                continue
            if found is None:
                console.print(f"[bold]{name}[/bold]: cut at {op[0]} {op[1]:g}")
                try:
                    if spec["kind"] == "gp":
                        compiled, extra = gp_point(sparse, example, calib, device, op)
                    else:
                        compiled, extra = tp_point(sparse.cpu(), example, spec["pruner"], op[1])
                        sparse = sparse.to(device)
                except (gp.GraphpruneError, RuntimeError) as exc:
                    cut.mkdir(parents=True, exist_ok=True)
                    found = mark_done(cut, {"failed": str(exc)})
                else:
                    found = None
            if found is None:                   # cut: measure it, fine-tune it
                cut.mkdir(parents=True, exist_ok=True)
                compiled.module.cpu()
                compiled.save(cut / "slim.graphprune.pt")
                slim = gp.load(cut / "slim.graphprune.pt").to(device)
                pruned = evaluate_map(slim, data, imgsz, device, console=console)
                ft = training(cut / "finetune", TrainConfig(
                    weights=str(cut / "slim.graphprune.pt"), epochs=preset["finetune_epochs"],
                    out=str(cut / "finetune"), val_every=preset["finetune_epochs"],
                    **{**common, **ft_settings}), console)
                found = mark_done(cut, {"op": list(op), **extra,
                                        "pruned": {"map50": pruned.map50, "map": pruned.map},
                                        "finetuned": ft})
            if "failed" in found:
                out["points"].append({"method": name, "op": list(op), "failed": found["failed"]})
                continue
            slim = gp.load(cut / "slim.graphprune.pt").eval()
            out["points"].append(point_row(name, op, slim, sparse, example, device,
                                           found["pruned"], found["finetuned"], found,
                                           path=cut / "slim.graphprune.pt"))

    widths = preset["widths"]
    if part is not None:
        widths = [float(part.removeprefix("dense@"))] if part.startswith("dense@") else []
    for width in widths:
        run = work / f"dense-w{width:g}"
        if args.finished_only and done(run) is None:
            console.print(f"seed {seed}: dense width {width:g} is not finished; left out "
                          "(--finished-only)")
            continue
        console.rule(f"seed {seed}: dense width {width:g}, {total} epochs from scratch")
        info = training(run, TrainConfig(model="yolov5_custom", model_kwargs=dict(
            depth_multiple=SCALES[preset["model"].removeprefix("yolov5")][0],
            width_multiple=width), epochs=total, out=str(run),
            val_every=total, **common), console)
        if part is not None:
            continue
        model = gp.load(run / "last.pt").eval()
        out["dense"].append({"width": width, "params": count_params(model),
                             "flops": count_flops(model, (example,)), "map50": info["map50"],
                             "map": info["map"], "path": str(run / "last.pt"),
                             "minutes": info["minutes"]})
    if part is not None:
        return None
    fine_tunes = [*out["points"], out.get("reference") or {}]
    out["train_minutes"] = sum(r.get("minutes", 0.0) for r in out["runs"].values()) + \
        sum(r["minutes"] for r in out["dense"]) + sum(p.get("ft_minutes", 0.0) for p in fine_tunes)
    latency(out, example, console, args.rounds)
    return out


def point_row(method, op, slim, sparse, example, device, pruned, finetuned, extra, path=None):
    sparse_cpu = copy.deepcopy(sparse).cpu().eval()
    flops_before = count_flops(sparse_cpu, (example,))
    flops = count_flops(slim.cpu().eval(), (example,))
    return {"method": method, "op": list(op), "params": count_params(slim), "flops": flops,
            "flops_removed": 1 - flops / flops_before,
            "params_removed": 1 - count_params(slim) / count_params(sparse_cpu),
            "map50": pruned["map50"], "map": pruned["map"],
            "map50_ft": finetuned["map50"], "map_ft": finetuned["map"],
            "lfa": extra.get("lfa"), "lfa_two_sided": extra.get("lfa_two_sided"),
            "threshold": extra.get("threshold"), "ft_minutes": finetuned.get("minutes", 0.0),
            "path": str(path) if path else None}


def latency(out: dict[str, Any], example: torch.Tensor, console: Console, rounds: int) -> None:
    """onnxruntime CPU latency (batch 1, median of interleaved rounds) of every model of the
    seed: the pruned points, the dense family and the same-budget baseline."""
    models = {}
    for k, row in enumerate(out["points"]):
        if row.get("path"):
            models[f"p{k}"] = gp.load(row["path"])
    for k, row in enumerate(out["dense"]):
        models[f"d{k}"] = gp.load(row["path"])
    with console.status(f"onnxruntime latency of {len(models)} models, {rounds} rounds"), \
            tempfile.TemporaryDirectory() as tmp:
        sessions = {name: ort_session(export_onnx(m.cpu().eval(), (example,),
                                                  Path(tmp) / f"{name}.onnx"), os.cpu_count())
                    for name, m in models.items()}
        ms = time_sessions(sessions, example.numpy(), rounds)
    for k, row in enumerate(out["points"]):
        if f"p{k}" in ms:
            row["latency_ms"] = ms[f"p{k}"]
    for k, row in enumerate(out["dense"]):
        row["latency_ms"] = ms[f"d{k}"]
    if out.get("reference") is not None:
        out["reference"]["latency_ms"] = out["dense"][0]["latency_ms"] \
            if out["dense"] and out["dense"][0]["flops"] == out["reference"]["flops"] else None


def device_name(device: str) -> str:
    """Where the runs trained, in words (CUDA trains with mixed precision)."""
    dev = resolve_device(device)
    if dev.type == "cuda":
        return f"{torch.cuda.get_device_name(dev)} (mixed precision)"
    return "the CPU"


# -- summaries -------------------------------------------------------------------------------
def mean_spread(values: list[float]) -> tuple[float, float]:
    """Mean and half the range (the run-to-run spread over seeds)."""
    values = [v for v in values if v is not None]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (max(values) - min(values)) / 2


def aggregate(seeds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per (method, operating point) and per dense width: mean and spread over the seeds."""
    def agg(rows: list[dict[str, Any]], keys) -> dict[str, Any]:
        out = {}
        for key in keys:
            m, s = mean_spread([r.get(key) for r in rows])
            out[key], out[f"{key}_spread"] = m, s
        return out

    keys = ("flops", "params", "flops_removed", "map50", "map", "map50_ft", "map_ft",
            "latency_ms", "lfa")
    points: dict[tuple, list] = {}
    for seed in seeds:
        for row in seed["points"]:
            points.setdefault((row["method"], tuple(row["op"])), []).append(row)
    summary = {"points": [], "dense": [], "reference": None}
    for (method, op), rows in points.items():
        ok = [r for r in rows if "failed" not in r]
        entry = {"method": method, "op": list(op), "seeds": len(ok)}
        if ok:
            entry.update(agg(ok, keys))
        if len(ok) < len(rows):
            entry["failed"] = [r["failed"] for r in rows if "failed" in r]
        summary["points"].append(entry)
    widths: dict[float, list] = {}
    for seed in seeds:
        for row in seed["dense"]:
            widths.setdefault(row["width"], []).append(row)
    for width, rows in sorted(widths.items(), reverse=True):
        summary["dense"].append({"width": width, "seeds": len(rows),
                                 **agg(rows, ("flops", "params", "map50", "map",
                                              "latency_ms"))})
    refs = [s["reference"] for s in seeds if s.get("reference")]
    if refs:
        summary["reference"] = agg(refs, ("flops", "params", "map50", "map", "map50_ft",
                                          "map_ft"))
    summary["paired"] = paired(seeds)
    summary["paired_dense"] = paired(seeds, against="dense")
    return summary


def yardstick(seed: dict[str, Any], against: str):
    """``(row, key) -> mAP50`` of seed ``seed``'s own yardstick for a cut's ``key`` (``map50``
    or ``map50_ft``), or None where the seed has none: ``"baseline"``, its same-budget baseline
    (fine-tuned for ``map50_ft``); ``"dense"``, its dense family's front at the cut's FLOPs
    (:func:`front_value`; trained as long as the cut and its fine-tune together, so both keys
    meet the same front)."""
    if against not in PAIRED_TEXT:
        raise ValueError(f"no yardstick {against!r}: choose from {', '.join(PAIRED_TEXT)}")
    if against == "dense":
        front = [(d["flops"], d["map50"]) for d in seed.get("dense", ())
                 if d.get("map50") is not None]
        return (lambda row, key: front_value(front, row["flops"])) if front else None
    ref = seed.get("reference") or {}
    return (lambda row, key: ref.get(key)) if ref.get("map50") is not None else None


def paired(seeds: list[dict[str, Any]], against: str = "baseline") -> list[dict[str, Any]]:
    """Per (method, operating point): each seed's mAP50 minus that of the same seed's own
    yardstick (:func:`yardstick`: by default its same-budget baseline, pruned against the
    baseline and fine-tuned against the fine-tuned baseline; ``against="dense"``: its dense
    family at the cut's FLOPs).  A seed changes the split, the initialisation and the data
    order; the difference within a pair takes out what that changes in both models alike (how
    hard the seed's validation images are, above all), which is what "within 1 point of the
    baseline" or "above the dense family" asks about.  What moves one model and not the other
    stays in the spread.  Each entry: the seeds, the differences per seed (``d_map50``,
    ``d_map50_ft``), their mean, half range and — from three seeds on — standard error."""
    out: dict[tuple, dict[str, Any]] = {}
    for seed in seeds:
        yard = yardstick(seed, against)
        for row in seed["points"]:
            if "failed" in row or yard is None:
                continue
            entry = out.setdefault((row["method"], tuple(row["op"])),
                                   {"method": row["method"], "op": list(row["op"]), "seeds": [],
                                    "d_map50": [], "d_map50_ft": []})
            entry["seeds"].append(seed["seed"])
            for key in ("map50", "map50_ft"):
                theirs = yard(row, key)
                entry[f"d_{key}"].append(row[key] - theirs if None not in (row.get(key), theirs)
                                         else None)
    for entry in out.values():
        for key in ("d_map50", "d_map50_ft"):
            values = [v for v in entry[key] if v is not None]
            entry[f"{key}_mean"], entry[f"{key}_spread"] = mean_spread(values)
            entry[f"{key}_se"] = statistics.stdev(values) / math.sqrt(len(values)) \
                if len(values) >= 3 else None
    return list(out.values())


def paired_of(payload: dict[str, Any], against: str = "baseline") -> list[dict[str, Any]]:
    """A results payload's paired differences against ``against`` (:func:`paired`; computed
    from its seeds for results written before they were kept); none for a table of one seed."""
    if len(payload.get("seeds", ())) < 2:
        return []
    key = "paired" if against == "baseline" else f"paired_{against}"
    return payload["summary"].get(key) or paired(payload.get("per_seed", []), against)


def front_value(front: list[tuple[float, float]], flops: float) -> float:
    """The best mAP a front reaches at ``flops`` or fewer (its upper envelope, linear between
    its points); below its smallest model, that model's mAP (a conservative yardstick)."""
    pts = sorted(front)
    if not pts:
        return float("-inf")
    if flops <= pts[0][0]:
        return pts[0][1]
    best = float("-inf")
    for (f0, m0), (f1, m1) in zip(pts, pts[1:]):
        if f0 <= flops <= f1 and f1 > f0:
            best = max(best, m0 + (m1 - m0) * (flops - f0) / (f1 - f0))
    best = max(best, max(m for f, m in pts if f <= flops))
    return best


def verdicts(summary: dict[str, Any], ours: str = "progressive") -> dict[str, Any]:
    """The acceptance questions, answered from the measured means."""
    rows = [p for p in summary["points"] if p["method"] == ours and "map50" in p]
    ref = summary["reference"] or {}
    dense = [(d["flops"], d["map50"]) for d in summary["dense"]]
    ns_ft = [(p["flops"], p["map50_ft"]) for p in summary["points"]
             if p["method"] == "ns" and "map50_ft" in p]
    out: dict[str, Any] = {"method": ours}
    for share in (50, 70):      # the NWPU acceptance asks ≥ 50 %, the demo's ≥ 70 %
        for key, ref_key in (("map50", "map50"), ("map50_ft", "map50_ft")):
            good = [p for p in rows if p["flops_removed"] >= share / 100 - 1e-9 and
                    ref.get(ref_key) is not None and p[key] >= ref[ref_key] - 0.01]
            out[f"within_1pt_at_{share}pct_flops_{key}"] = [p["op"] for p in good]
    ns = [(q["flops"], q["map50"]) for q in summary["points"]
          if q["method"] == "ns" and "map50" in q]
    # a yardstick this run did not measure answers nothing (an empty front is -inf, which
    # every point would beat)
    out["not_measured"] = [name for name, front in (("dense", dense), ("ns", ns)) if not front]
    for key in ("map50", "map50_ft"):
        out[f"beats_dense_{key}"] = [p["op"] for p in rows if dense and
                                     p[key] > front_value(dense, p["flops"])]
        if ours == "ns":        # NS is not asked whether it beats itself
            continue
        out[f"beats_ns_{key}"] = [p["op"] for p in rows if ns and
                                  p[key] > front_value(ns_ft if key == "map50_ft" else ns,
                                                       p["flops"])]
    return out


def cell(mean: float, spread: float, digits: int = 3, pct: bool = False) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    if pct:
        return f"{100 * mean:.1f} %" + (f" ± {100 * spread:.1f}" if spread else "")
    return f"{mean:.{digits}f}" + (f" ± {spread:.{digits}f}" if spread else "")


# each verdict of verdicts(): its key, how the table words it, and the yardstick it needs
# measured in the run (None: the same-budget baseline, which every run trains)
VERDICT_LABELS = (
    ("within_1pt_at_50pct_flops_map50", "≥ 50 % of FLOPs removed and mAP50 within 1 point of "
     "the same-budget baseline, pruned", None),
    ("within_1pt_at_50pct_flops_map50_ft", "the same after the fine-tune (against the "
     "fine-tuned baseline)", None),
    ("within_1pt_at_70pct_flops_map50", "≥ 70 % of FLOPs removed and mAP50 within 1 point of "
     "the same-budget baseline, pruned", None),
    ("within_1pt_at_70pct_flops_map50_ft", "the same after the fine-tune (against the "
     "fine-tuned baseline)", None),
    ("beats_dense_map50_ft", "fine-tuned, higher mAP50 than the dense family at ≤ equal FLOPs",
     "dense"),
    ("beats_ns_map50_ft", "fine-tuned, higher mAP50 than NS at ≤ equal FLOPs", "ns"),
    ("beats_dense_map50", "pruned only, higher mAP50 than the dense family", "dense"),
    ("beats_ns_map50", "pruned only, higher mAP50 than NS (pruned only)", "ns"),
)


def markdown(payload: dict[str, Any]) -> str:
    s, p = payload["summary"], payload["preset"]
    lines = [f"# Accuracy against size: {payload['data']}, {p['model']} @ {p['imgsz']} px", "",
             f"Budget: baseline {p['base_epochs']} epochs from scratch, then "
             f"{p['sparse_epochs']} sparse epochs, then a {p['finetune_epochs']}-epoch "
             f"fine-tune; {dense_family_text(payload)}.  Seeds {payload['seeds']} (mean ± half the range).  "
             f"{payload['machine']}, torch {payload['torch']}, {payload['date']}; trained on "
             f"{payload.get('train_device', 'the CPU')}, {payload['train_minutes']:.0f} min in "
             "all (each run's own time; runs side by side overlap).", "",
             "mAP on the validation split; FLOPs = 2 × MACs at the input size; latency: "
             "onnxruntime CPU, batch 1, median of interleaved rounds.", ""]
    if payload.get("sources"):
        lines += [f"Merged from {len(payload['sources'])} runs of this configuration "
                  "(`benchmarks/tradeoff_merge.py`): " + "; ".join(
                      f"`{src['file']}`, seeds {src['seeds']}: {src['date']}, {src['machine']}, "
                      f"torch {src['torch']}, trained on {src.get('train_device', 'the CPU')}, "
                      f"{src['train_minutes']:.0f} min" for src in payload["sources"]) + ".", ""]
    ref = s.get("reference")
    if ref:
        lines += [f"Same-budget baseline (unpruned, same schedule, no sparsity): mAP50 "
                  f"{cell(ref['map50'], ref['map50_spread'])}, after the fine-tune "
                  f"{cell(ref['map50_ft'], ref['map50_ft_spread'])}; "
                  f"{ref['flops'] / 1e9:.3f} GFLOPs.", ""]
    lines += ["| method | cut | FLOPs removed | GFLOPs | params | mAP50 pruned | mAP50-95 pruned "
              "| mAP50 fine-tuned | mAP50-95 fine-tuned | ORT ms | seeds |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in s["points"]:
        if "map50" not in row:
            lines.append(f"| {row['method']} | {op_name(row['op'])} | failed: "
                         f"{row['failed'][0]} | | | | | | | | 0 |")
            continue
        lines.append(f"| {row['method']} | {op_name(row['op'])} | "
                     f"{cell(row['flops_removed'], row['flops_removed_spread'], pct=True)} | "
                     f"{row['flops'] / 1e9:.3f} | {row['params'] / 1e6:.3f} M | "
                     f"{cell(row['map50'], row['map50_spread'])} | "
                     f"{cell(row['map'], row['map_spread'])} | "
                     f"{cell(row['map50_ft'], row['map50_ft_spread'])} | "
                     f"{cell(row['map_ft'], row['map_ft_spread'])} | "
                     f"{cell(row['latency_ms'], row['latency_ms_spread'], 2)} | {row['seeds']} |")
    for row in s["dense"]:
        lines.append(f"| dense w = {row['width']:g} | trained from scratch | – | "
                     f"{row['flops'] / 1e9:.3f} | {row['params'] / 1e6:.3f} M | – | – | "
                     f"{cell(row['map50'], row['map50_spread'])} | "
                     f"{cell(row['map'], row['map_spread'])} | "
                     f"{cell(row['latency_ms'], row['latency_ms_spread'], 2)} | {row['seeds']} |")
    # results written before the paired differences were kept: computed from their seeds
    lines += paired_markdown(paired_of(payload))
    lines += paired_markdown(paired_of(payload, "dense"), "dense")
    for v in payload["verdicts"].values():
        lines += ["", f"## Verdicts: {v['method']} (from the means)", ""]
        for key, label, yardstick in VERDICT_LABELS:
            ops = v.get(key)
            # a question not asked: written before it was, or of the yardstick itself (results
            # written before verdicts() left out NS's question of NS still hold one)
            if ops is None or yardstick == v["method"]:
                continue
            if yardstick in v.get("not_measured", ()):
                lines.append(f"- {label}: not measured in this run")
                continue
            lines.append(f"- {label}: {', '.join(op_name(o) for o in ops) if ops else 'none'}")
    lines += ["", "![Pareto fronts](" + payload["plot"] + ")", ""]
    return "\n".join(lines) + "\n"


def points_text(values: list[float | None]) -> str:
    """Differences of mAP50 in points, signed: ``+4.8, −5.7``."""
    return ", ".join("–" if v is None else f"{100 * v:+.1f}".replace("-", "−") for v in values)


def paired_cell(entry: dict[str, Any], key: str) -> str:
    """A paired difference's mean in points, ± half the range, and the standard error where
    there are three seeds or more."""
    mean, spread, se = entry[f"{key}_mean"], entry[f"{key}_spread"], entry[f"{key}_se"]
    if math.isnan(mean):
        return "–"
    text = points_text([mean]) + (f" ± {100 * spread:.1f}" if round(100 * spread, 1) else "")
    return text + (f" (s.e. {100 * se:.1f})" if se is not None else "")


PAIRED_TEXT = {
    "baseline": ("## Against each seed's own same-budget baseline",
                 "mAP50 of the cut minus that of the same seed's same-budget baseline, in points "
                 "(fine-tuned: against the fine-tuned baseline)"),
    "dense": ("## Against each seed's own dense family",
              "mAP50 of the cut minus that of the same seed's dense family at the cut's FLOPs "
              "(the line between its widths; below the narrowest, the narrowest model's), in "
              "points, pruned and fine-tuned against the same dense models, which train as "
              "long as the cut and its fine-tune together; the verdicts compare the means, "
              "these show whether each seed agrees"),
}


def paired_markdown(entries: list[dict[str, Any]], against: str = "baseline") -> list[str]:
    """The section of paired differences against each seed's own yardstick (:func:`paired`)."""
    if not entries:
        return []
    se = any(e["d_map50_se"] is not None for e in entries)
    title, text = PAIRED_TEXT[against]
    lines = ["", title, "", text + "; mean ± half the range" +
             (" (s.e.: the standard error of the mean, from three seeds on)." if se else "."),
             "",
             "| method | cut | seeds | Δ pruned, per seed | Δ pruned | Δ fine-tuned, per seed "
             "| Δ fine-tuned |", "|---|---|---|---|---|---|---|"]
    for e in entries:
        lines.append(f"| {e['method']} | {op_name(e['op'])} | "
                     f"{', '.join(str(x) for x in e['seeds'])} | {points_text(e['d_map50'])} | "
                     f"{paired_cell(e, 'd_map50')} | {points_text(e['d_map50_ft'])} | "
                     f"{paired_cell(e, 'd_map50_ft')} |")
    return lines


def plot(payload: dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = payload["summary"]
    fig, axes = plt.subplots(1, 3, figsize=(16, 5), dpi=100)
    styles = {"ns": ("tab:orange", "s"), "l1rr": ("tab:red", "^"),
              "progressive": ("tab:green", "o"), "progressive-scratch": ("tab:olive", "P"),
              "tp-groupnorm": ("tab:purple", "v"),
              "tp-bnscale": ("tab:brown", "D")}
    dense = s["dense"]
    for ax, key, xkey, title in ((axes[0], "map50", "flops", "pruned, no fine-tune"),
                                 (axes[1], "map50_ft", "flops", "pruned + fine-tune"),
                                 (axes[2], "map50_ft", "latency_ms", "fine-tuned, against "
                                                                     "latency")):
        scale = 1e9 if xkey == "flops" else 1.0
        if dense:
            xs = [d[xkey] / scale for d in dense]
            ax.errorbar(xs, [d["map50"] for d in dense], yerr=[d["map50_spread"] for d in dense],
                        color="black", marker="x", ls="--", label="dense family (from scratch)")
        for method, (color, marker) in styles.items():
            rows = sorted((r for r in s["points"] if r["method"].partition("@")[0] == method
                           and key in r and
                           r.get(xkey) is not None and not math.isnan(r[xkey])),
                          key=lambda r: r[xkey])
            for variant in sorted({r["method"] for r in rows}):
                mine = [r for r in rows if r["method"] == variant]
                ax.errorbar([r[xkey] / scale for r in mine], [r[key] for r in mine],
                            yerr=[r[f"{key}_spread"] for r in mine], color=color,
                            marker=marker, ls="-" if variant == method else ":",
                            label=variant, capsize=2)
        ref = s.get("reference")
        if ref and xkey == "flops":
            ax.plot([ref["flops"] / 1e9], [ref["map50_ft" if key == "map50_ft" else "map50"]],
                    "*", ms=14, color="gold", mec="black", label="same-budget baseline")
        ax.set_xlabel("GFLOPs" if xkey == "flops" else "onnxruntime CPU ms (batch 1)")
        ax.set_ylabel("mAP@0.5")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"{payload['data']}: {payload['preset']['model']} @ "
                 f"{payload['preset']['imgsz']} px, seeds {payload['seeds']}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def relative_paths(payload: dict[str, Any]) -> None:
    """Model paths under the repository are written relative to it, so the committed results
    name no machine's directories."""
    for seed in payload["per_seed"]:
        for row in [*seed["points"], *seed["dense"]]:
            if row.get("path"):
                path = Path(row["path"])
                if path.is_relative_to(ROOT):
                    row["path"] = str(path.relative_to(ROOT))


def tabulated(config: dict[str, Any], per_seed: list[dict[str, Any]], ours: list[str],
              stem: str, **run: Any) -> dict[str, Any]:
    """A results payload, the one shape both a run (:func:`main`) and a merge of runs
    (:func:`merge`) write: the configuration (``MERGE_KEYS``), the seeds, what describes the
    run (``run``: machine, torch, date, train_device, minutes, train_minutes, and a merge's
    sources), the plot's file name, the means over ``per_seed`` (:func:`aggregate`), the seeds
    themselves and the verdicts of each method of ``ours``."""
    summary = aggregate(per_seed)
    return {**config, "seeds": [s["seed"] for s in per_seed], "plot": f"{stem}.png", **run,
            "summary": summary, "per_seed": per_seed,
            "verdicts": {m: verdicts(summary, m) for m in ours}}


# configuration keys that runs must share to be merged into one table (of the preset, all but
# its default seeds)
MERGE_KEYS = ("data", "preset", "methods", "total_epochs")


def merge(payloads: list[dict[str, Any]], files: list[str], stem: str = "merged"
          ) -> dict[str, Any]:
    """One table's payload (its plot ``STEM.png``) from the payloads of runs of one configuration
    over different seeds (``files`` names them in errors and in the merged table).  Raises
    ValueError, naming the file and what differs, for a payload that is not a results file, runs
    of another configuration or other operating points, and a seed measured twice."""
    if len(payloads) < 2:
        raise ValueError("give at least two results files to merge")
    payloads = json.loads(json.dumps(payloads, default=float))   # tuples compare as lists
    seen: dict[int, str] = {}
    wanted = None
    for payload, name in zip(payloads, files):
        check_mergeable(payload, payloads[0], name, files[0])
        try:
            ops = operating_points(payload)
            seeds = [int(s["seed"]) for s in payload["per_seed"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{name}: not a tradeoff.py results file ({exc!r} in its "
                             "seeds)") from None
        wanted = ops if wanted is None else wanted
        if ops != wanted:
            raise ValueError(f"{name}: its operating points differ from {files[0]}'s")
        for seed in seeds:
            if seed in seen:
                raise ValueError(f"{name}: seed {seed} is also in {seen[seed]}; each seed "
                                 "may come from one run only")
            seen[seed] = name
    first = payloads[0]
    per_seed = sorted((s for p in payloads for s in p["per_seed"]), key=lambda s: s["seed"])
    sources = [{"file": name, "seeds": [s["seed"] for s in p["per_seed"]],
                "date": p.get("date", "?"), "machine": p.get("machine", "?"),
                "torch": p.get("torch", "?"),
                # results written before the device was recorded trained on the CPU
                "train_device": p.get("train_device", "the CPU"),
                "train_minutes": p["train_minutes"], "minutes": p.get("minutes", 0.0)}
               for p, name in zip(payloads, files)]

    def joined(key: str) -> str:
        return " and ".join(dict.fromkeys(str(src[key]) for src in sources))

    return tabulated({k: first[k] for k in MERGE_KEYS}, per_seed, list(first["verdicts"]), stem,
                     machine=joined("machine"), torch=joined("torch"), date=joined("date"),
                     train_device=joined("train_device"),
                     minutes=sum(src["minutes"] for src in sources),
                     train_minutes=sum(src["train_minutes"] for src in sources),
                     sources=sources)


def check_mergeable(payload: Any, first: dict[str, Any], name: str, first_name: str) -> None:
    """Raise ValueError (``NAME: ...``) unless ``payload`` is a results file of ``first``'s
    configuration."""
    if not isinstance(payload, dict):
        raise ValueError(f"{name}: not a tradeoff.py results file")
    missing = [k for k in (*MERGE_KEYS, "per_seed", "verdicts", "train_minutes")
               if k not in payload]
    if missing:
        raise ValueError(f"{name}: not a tradeoff.py results file (no {missing[0]!r})")
    for key in MERGE_KEYS:
        mine, theirs = payload[key], first[key]
        if key == "preset" and isinstance(mine, dict) and isinstance(theirs, dict):
            differ = sorted(k for k in {*mine, *theirs} - {"seeds"}
                            if mine.get(k) != theirs.get(k))
        else:
            differ = [] if mine == theirs else [key]
        if differ:
            what = f"'{key}'" + ("" if differ == [key] else f" ({', '.join(differ)})")
            raise ValueError(f"{name}: its {what} does not match {first_name}'s; only runs of "
                             "one configuration merge")


def operating_points(payload: dict[str, Any]) -> list[tuple]:
    """The (method, operating point) pairs a results file measured."""
    return sorted({(p["method"], tuple(p["op"])) for s in payload["per_seed"]
                   for p in s["points"]})


def write_tables(payload: dict[str, Any], results: Path, stem: str) -> None:
    """``results/STEM.{json,png,md}``: all three made before any is renamed into place, so a
    failure leaves the earlier files as they were."""
    payload["plot"] = f"{stem}.png"
    texts = {".json": json.dumps(payload, indent=2, default=float) + "\n",
             ".md": markdown(payload)}
    with atomic_path(results / f"{stem}.png", ".png") as png, \
            atomic_path(results / f"{stem}.json") as js, atomic_path(results / f"{stem}.md") as md:
        plot(payload, png)
        js.write_text(texts[".json"])
        md.write_text(texts[".md"])


def check_stem(name: str | None) -> str | None:
    """Why ``name`` is no results file stem (None when it is one)."""
    if not name or Path(name).name != name or name.startswith("."):
        return f"--name is a file stem without folders, got {name!r}"
    return None


def parse(argv=None) -> tuple[argparse.Namespace, dict[str, Any], str, dict[str, Any],
                              list[int]]:
    """The command line, checked: (args, preset, result file stem, method settings, seeds)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=("synthetic", "nwpu"), default="synthetic")
    parser.add_argument("--model", choices=tuple(f"yolov5{k}" for k in SCALES), default=None,
                        help="the detector (default: the preset's, yolov5n); the dense family "
                             "follows its depth and width, the results go to "
                             "tradeoff_<data>_<model>.*")
    parser.add_argument("--quick", action="store_true", help="every step at toy sizes")
    parser.add_argument("--methods",
                        default="ns,l1rr,progressive,progressive-scratch,tp-groupnorm,tp-bnscale",
                        help="comma-separated; a progressive method takes its own FLOPs target "
                             "as NAME@TARGET (progressive-scratch@0.5)")
    parser.add_argument("--lfa-targets", default="0.01")
    parser.add_argument("--lfa-criteria", default="plus,two-sided",
                        help="what the LFA targets bound: plus (LFA⁺), two-sided (LFA±)")
    parser.add_argument("--flops-targets", default="0.5,0.7,0.85")
    parser.add_argument("--seeds", default=None, help="comma-separated (default: the preset's)")
    parser.add_argument("--finished-only", action="store_true",
                        help="train nothing new: leave out of a seed every method whose sparse "
                             "run and every dense width whose training has not finished (the "
                             "table's seeds column says how many seeds each row averages)")
    parser.add_argument("--widths", default=None,
                        help="dense family width multipliers, comma-separated (default: the "
                             "preset's), or 'none' for no dense family (its verdicts then "
                             "read 'not measured')")
    parser.add_argument("--rounds", type=int, default=30, help="latency rounds")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=0,
                        help="data-loading processes of each training (default 0: in the "
                             "training process)")
    parser.add_argument("--cache", action="store_true",
                        help="decode every image once and keep it in memory")
    parser.add_argument("--nwpu", type=Path, default=SHARED_NWPU,
                        help="the NWPU VHR-10 folder (default ../shared/data/nwpu_vhr10)")
    parser.add_argument("--part", default=None,
                        help="train one part of each seed and stop, measuring nothing (parts "
                             "run side by side: benchmarks/tradeoff_parallel.py): 'baseline', "
                             "'none' (the same-budget baseline run and its fine-tune), a method "
                             "of --methods (its sparse run, cuts and fine-tunes), or "
                             "dense@WIDTH; 'none' and the methods that are not from scratch "
                             "need the finished baseline; then run again with --finished-only "
                             "for the tables")
    parser.add_argument("--work", type=Path, default=None,
                        help="where runs are kept (default runs/tradeoff-<data>[-<model>])")
    parser.add_argument("--results", type=Path, default=HERE / "results")
    parser.add_argument("--json-out", type=Path, default=None)
    parser.add_argument("--name", default=None,
                        help="results file stem (default: tradeoff_<data>[_<model>]); the runs "
                             "stay under --work, so a second table over other methods reuses "
                             "the same baselines")
    args = parser.parse_args(argv)
    preset_name = "quick" if args.quick else args.data
    preset = dict(PRESETS[preset_name])
    stem = f"tradeoff_{preset_name}"
    if args.model and args.model != preset["model"]:
        preset["model"], preset["widths"] = args.model, dense_widths(args.model)
        stem += f"_{args.model}"
    args.methods = [m for m in args.methods.split(",") if m]
    specs = {}
    for m in args.methods:
        try:
            specs[m] = method_spec(preset, m)
        except ValueError as exc:
            parser.error(str(exc))
    specs["none"] = method_spec(preset, "none")
    args.lfa_targets = [float(v) for v in args.lfa_targets.split(",") if v]
    by_criterion = {c: k for k, c in LFA_OPS.items()}
    try:
        args.lfa_kinds = [by_criterion[c] for c in args.lfa_criteria.split(",") if c]
    except KeyError as exc:
        parser.error(f"unknown LFA criterion {exc}")
    args.flops_targets = [float(v) for v in args.flops_targets.split(",") if v]
    seeds = [int(v) for v in args.seeds.split(",")] if args.seeds else list(preset["seeds"])
    if args.widths is not None and args.widths.strip().lower() == "none":
        preset["widths"] = ()
    elif args.widths is not None:
        try:
            preset["widths"] = tuple(float(v) for v in args.widths.split(",") if v)
        except ValueError:
            parser.error(f"--widths takes numbers, got {args.widths!r}")
        if not preset["widths"] or any(not 0 < w <= 2 for w in preset["widths"]):
            parser.error(f"--widths must be in (0, 2] (or 'none'), got {args.widths!r}")
    if args.workers < 0:
        parser.error(f"--workers must be >= 0, got {args.workers}")
    if args.part is not None:
        if args.finished_only:
            parser.error("--part trains, --finished-only does not: give one of them")
        if args.part.startswith("dense@"):
            try:
                width = float(args.part.removeprefix("dense@"))
            except ValueError:
                width = -1.0
            if not 0 < width <= 2:
                parser.error(f"--part {args.part}: the width after dense@ must be in (0, 2]")
        elif args.part not in ("baseline", "none") and args.part not in args.methods:
            parser.error(f"--part {args.part!r}: give 'baseline', 'none', one of --methods "
                         f"({', '.join(args.methods)}) or dense@WIDTH")
    if args.quick:
        args.rounds = min(args.rounds, 3)
    args.work = args.work or ROOT / "runs" / stem.replace("_", "-")
    if args.name is not None:
        if check_stem(args.name):
            parser.error(check_stem(args.name))
        stem = args.name
    return args, preset, stem, specs, seeds


def main(argv=None) -> int:
    args, preset, stem, specs, seeds = parse(argv)
    console = Console(stderr=True)
    start = time.perf_counter()
    if args.part is not None:
        for seed in seeds:
            run_seed(args, preset, seed, console)
        return 0
    per_seed = [r for r in (run_seed(args, preset, seed, console) for seed in seeds)
                if r is not None]
    if not per_seed:
        console.print("tradeoff.py: no seed has a finished baseline; nothing to measure")
        return 1
    config = {"data": args.data if not args.quick else "synthetic (quick)",
              "preset": {k: (list(v) if isinstance(v, tuple) else v)
                         for k, v in preset.items()},
              "methods": {m: specs[m] for m in ["none", *args.methods]},
              "total_epochs": preset["base_epochs"] + preset["sparse_epochs"] +
              preset["finetune_epochs"]}
    payload = tabulated(config, per_seed, [m for m in args.methods if specs[m]["kind"] == "gp"],
                        stem, **stamp(), train_device=device_name(args.device),
                        minutes=(time.perf_counter() - start) / 60,
                        train_minutes=sum(seed["train_minutes"] for seed in per_seed))
    relative_paths(payload)
    summary = payload["summary"]
    report = Table(title=f"tradeoff: {payload['data']}", show_edge=False)
    for col in ("method", "cut", "FLOPs removed", "mAP50", "mAP50 fine-tuned"):
        report.add_column(col, justify="right")
    for row in summary["points"]:
        if "map50" in row:
            report.add_row(row["method"], op_name(row["op"]),
                           cell(row["flops_removed"], row["flops_removed_spread"], pct=True),
                           cell(row["map50"], row["map50_spread"]),
                           cell(row["map50_ft"], row["map50_ft_spread"]))
    for row in summary["dense"]:
        report.add_row(f"dense w={row['width']:g}", "–", "–", "–",
                       cell(row["map50"], row["map50_spread"]))
    Console().print(report)
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    if not args.quick:
        write_tables(payload, args.results, stem)
    else:
        with tempfile.TemporaryDirectory() as tmp:      # the quick run draws them too
            plot(payload, Path(tmp) / f"{stem}.png")
            markdown(payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
