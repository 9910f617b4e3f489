"""``graphprune demo`` / ``make demo``: the main job on an embedded default — a synthetic
dataset, a yolov5n baseline, sparse training from it, a ``--lfa-target`` compile with bias
folding and a short fine-tune — and the settings (``DEMO_RECIPE``, ``DEMO_SPARSITY``) the
benchmarks reuse so their runs match the demo's."""

from __future__ import annotations

import copy
import json
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from . import data as gpdata
from .checkpoint import load
from .detect.train import TrainConfig, train
from .errors import GraphpruneError
from .export import staged_directory
from .workflow import target_compile

DEMO_SETTINGS = {
    # the full demo: about 9 minutes on 2 CPU cores
    "full": dict(n_train=400, n_val=100, imgsz=256, model="yolov5n", base_epochs=30,
                 sparse_epochs=30, finetune_epochs=5, sparse_lr0=0.01, finetune_lr0=0.002,
                 calib_images=64),
    # the version the tests run: every step, tiny sizes
    "quick": dict(n_train=16, n_val=8, imgsz=64, model="yolov5n", base_epochs=1,
                  sparse_epochs=2, finetune_epochs=1, sparse_lr0=0.01, finetune_lr0=0.002,
                  calib_images=8),
}
# Sparse-training settings per mode for the demo's budget (30 epochs after the baseline; the
# quick demo's 2 epochs use phases of one epoch).  progressive: a tenth of the run per phase,
# nine updates, channels removing 75 % of the FLOPs faded out by the end; l1rr/dsm/ns: θ = 0.01 and
# α/λ updated every 3 epochs at most 3 times (the settings benchmarks/ablation.py measured
# before the collapse, see the README).
DEMO_SPARSITY: dict[str, dict[str, Any]] = {
    "progressive": dict(phase_epochs=3, max_phases=9, sparsity_options=dict(target=0.75)),
    "l1rr": dict(theta=0.01, phase_epochs=3, max_phases=3),
    "dsm": dict(theta=0.01, phase_epochs=3, max_phases=3),
    "ns": dict(theta=0.01),
}
DEMO_MODE = "progressive"
# the recipe benchmarks/synthetic.py found to learn fastest from scratch on 2 CPU cores
DEMO_RECIPE = dict(batch=8, nominal_batch=8, lr0=0.02, warmup_epochs=1, cls=2.0)


def demo_sparsity(mode: str, quick: bool = False) -> dict[str, Any]:
    """TrainConfig settings of the demo's sparse run in ``mode``."""
    if mode not in DEMO_SPARSITY:
        raise GraphpruneError(f"the demo has no settings for sparsity mode {mode!r}",
                              hint=f"choose one of {', '.join(DEMO_SPARSITY)}")
    settings = {"sparsity": mode, **copy.deepcopy(DEMO_SPARSITY[mode])}
    if quick:
        settings.update(phase_epochs=1, max_phases=1)
    return settings


def run_demo(out: Path, quick: bool = False, overwrite: bool = False, lfa_target: float = 0.01,
             device: str = "auto", mode: str = DEMO_MODE, finetune: bool = True,
             lfa_criterion: str = "two-sided", console: Console | None = None
             ) -> dict[str, Any]:
    """Synthetic data → baseline → sparse training → ``--lfa-target`` compile (→ a short
    fine-tune) → report with baseline, sparse, pruned (and fine-tuned) mAP."""

    console = console or Console(stderr=True)
    s = DEMO_SETTINGS["quick" if quick else "full"]
    sparsity = demo_sparsity(mode, quick)
    with staged_directory(out, overwrite) as out:       # nothing partial is left on failure
        return _demo_steps(out, s, sparsity, lfa_target, device, mode, finetune,
                           lfa_criterion, console)


def _demo_steps(out: Path, s: dict[str, Any], sparsity: dict[str, Any], lfa_target: float,
                device: str, mode: str, finetune: bool, lfa_criterion: str,
                console: Console) -> dict[str, Any]:
    start = time.perf_counter()
    timings: dict[str, float] = {}
    steps = 5 if finetune else 4

    @contextmanager
    def step(name: str, message: str):
        console.rule(f"[bold]{message}")
        began = time.perf_counter()
        yield
        timings[name] = time.perf_counter() - began

    with step("data", f"1/{steps} synthetic dataset: {s['n_train']} training + {s['n_val']} "
                      f"validation images of {s['imgsz']} px"):
        data_yaml = gpdata.make_synthetic_dataset(out / "data", s["n_train"], s["n_val"],
                                                  seed=0, size=max(s["imgsz"], 64))
    common = dict(data=str(data_yaml), imgsz=s["imgsz"], device=device, workers=0,
                  **DEMO_RECIPE)
    with step("baseline", f"2/{steps} baseline: {s['model']} from scratch, {s['base_epochs']} "
                          "epochs"):
        train(TrainConfig(model=s["model"], epochs=s["base_epochs"],
                          out=str(out / "baseline"), val_every=s["base_epochs"],
                          **common), console=console)
    settings = ", ".join(f"{k} = {v}" for k, v in sparsity.items() if k != "sparsity")
    with step("sparse", f"3/{steps} {mode} sparse training from the baseline: "
                        f"{s['sparse_epochs']} epochs ({settings})"):
        sparse = train(TrainConfig(weights=str(out / "baseline" / "last.pt"),
                                   epochs=s["sparse_epochs"], out=str(out / "sparse"),
                                   val_every=s["sparse_epochs"], **sparsity,
                                   **{**common, "warmup_epochs": 0, "lr0": s["sparse_lr0"]}),
                       console=console)
    name = "LFA±" if lfa_criterion == "two-sided" else "LFA⁺"
    with step("compile", f"4/{steps} compile at {name} <= {lfa_target:g} with bias folding, mAP "
                         "of the baseline, the sparse and the pruned model"
                         + (f", then a {s['finetune_epochs']}-epoch fine-tune (step 5/5)"
                            if finetune else "")):
        model = load(out / "sparse" / "last.pt")
        example = torch.rand(1, 3, s["imgsz"], s["imgsz"],
                             generator=torch.Generator().manual_seed(0))
        recipe = {**DEMO_RECIPE, "lr0": s["finetune_lr0"], "warmup_epochs": 0}
        report = target_compile(model, example, data_yaml=str(data_yaml),
                                out=out / "compile", lfa_target=lfa_target,
                                lfa_criterion=lfa_criterion,
                                calib_images=s["calib_images"], evaluate=True, device=device,
                                model_name=f"demo {mode} yolov5n", fold_pruned_bias=True,
                                baseline=load(out / "baseline" / "last.pt"),
                                baseline_name="baseline/last.pt",
                                finetune_epochs=s["finetune_epochs"] if finetune else 0,
                                finetune_recipe=recipe, console=console)
    summary = {
        "settings": s, "recipe": DEMO_RECIPE, "sparsity": sparsity, "lfa_target": lfa_target,
        "lfa_criterion": lfa_criterion, "lfa_plus": report["lfa_plus"],
        "lfa_two_sided": report["lfa_two_sided"],
        "baseline_map50": report["baseline_map50"], "baseline_map": report["baseline_map"],
        "sparse_map50": report["map50_before"], "sparse_map": report["map_before"],
        "alpha_updates": sparse.sparsity.phase if sparse.sparsity else 0,
        "sparse_rho": sparse.sparsity.summary()["rho"] if sparse.sparsity else None,
        "params_before": report["params_before"], "params_after": report["params_after"],
        "flops_before": report["flops_before"], "flops_after": report["flops_after"],
        "flops_removed": 1 - report["flops_after"] / max(report["flops_before"], 1),
        "prune_ratio": report["prune_ratio"], "lfa": report["lfa"],
        "lfa_signed": report["lfa_signed"], "evaluations": report["evaluations"],
        "candidates": report["candidates"], "map50_before": report["map50_before"],
        "map50_after": report["map50_after"], "map_after": report["map_after"],
        "verified_max_error": report["max_error"],
        "seconds": {k: round(v, 1) for k, v in timings.items()},
        "total_seconds": round(time.perf_counter() - start, 1),
    }
    if report.get("map50_finetuned") is not None:
        summary.update(finetune_epochs=report["finetune_epochs"],
                       map50_finetuned=report["map50_finetuned"],
                       map_finetuned=report["map_finetuned"])
    final = summary.get("map50_finetuned", summary["map50_after"])
    summary["final_map50"] = final
    summary["final_drop_points"] = 100 * (summary["baseline_map50"] - final)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    return summary


__all__ = ["DEMO_MODE", "DEMO_RECIPE", "DEMO_SETTINGS", "DEMO_SPARSITY", "demo_sparsity", "run_demo"]
