"""The compile report: ``report.json`` (plain data), ``report.md`` (for people) and its plots.

Plots (matplotlib, Agg backend, written only for target-guided compiles):

* ``lfa_vs_prune.png`` — every probe of the search: prune ratio against LFA⁺ (and signed LFA),
  the target, the chosen point, and mAP@0.5 before/after when evaluated (the paper's Fig. 10).
* ``attention.png`` — feature attention heatmaps of a few calibration images, sparse vs pruned,
  with the ground-truth boxes (the paper's Fig. 2).
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image


def _fmt_count(n: float | None) -> str:
    if n is None:
        return "–"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend."""
    import matplotlib  # deferred: ~0.6 s to import, and only the plots need it
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred: as above
    return plt


def _pct(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{100 * x:.{digits}f} %"


def plot_search(path: Path, probes: Sequence[dict[str, Any]], chosen: dict[str, Any],
                target: float | None, goal: str, maps: dict[str, float] | None = None) -> Path:
    plt = pyplot()
    measured = sorted((p for p in probes if p.get("lfa_plus") is not None),
                      key=lambda p: p["prune_ratio"])
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    if measured:
        x = [100 * p["prune_ratio"] for p in measured]
        ax.plot(x, [100 * p["lfa_plus"] for p in measured], "o-", color="tab:red",
                label="LFA⁺ (losses only)")
        ax.plot(x, [100 * p["lfa_signed"] for p in measured], "s--", color="tab:orange",
                alpha=0.7, label="LFA (signed, Eq. 2)")
        if any(p.get("lfa_two_sided") is not None for p in measured):
            ax.plot(x, [100 * (p.get("lfa_two_sided") or 0.0) for p in measured], "^:",
                    color="tab:purple", alpha=0.8, label="LFA± (any change)")
    if target is not None and goal == "lfa":
        ax.axhline(100 * target, color="grey", lw=1, ls=":", label=f"target {100 * target:g} %")
    cut = chosen.get("lfa_cut", chosen.get("lfa_plus"))
    if cut is not None:
        ax.plot([100 * chosen["prune_ratio"]], [100 * cut], "*", ms=16,
                color="tab:green", label="chosen", zorder=5)
    ax.set_xlabel("prunable channels removed (%)")
    ax.set_ylabel("feature attention loss (%)")
    ax.set_yscale("symlog", linthresh=1.0)
    ax.grid(alpha=0.3)
    if maps:
        ax2 = ax.twinx()
        ax2.plot([0, 100 * chosen["prune_ratio"]],
                 [100 * maps["map50_before"], 100 * maps["map50_after"]], "D-",
                 color="tab:blue", label="mAP@0.5")
        ax2.set_ylabel("mAP@0.5 (%)", color="tab:blue")
        ax2.set_ylim(0, 100)
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="center right")
    else:
        ax.legend(fontsize=8, loc="center right")
    ax.set_title("Threshold search: prune ratio vs feature attention loss")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_latency(path: Path, probes: Sequence[dict[str, Any]], target: float,
                 runtime: str) -> Path:
    """Latency (as a share of the baseline's, timed interleaved with it) against the share of
    prunable channels removed: every probe of a ``--latency-target`` search, the goal, and the
    chosen prune's re-measurement."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    search = sorted((p for p in probes if not p["final"]), key=lambda p: p["prune_ratio"])
    final = [p for p in probes if p["final"]]
    ax.plot([100 * p["prune_ratio"] for p in search], [p["latency_ratio"] for p in search],
            "o-", color="tab:blue", label=f"probes ({runtime}, median of interleaved rounds)")
    ax.axhline(1 - target, color="grey", lw=1, ls=":",
               label=f"goal: {1 - target:.2f} × the baseline")
    if final:
        ax.plot([100 * p["prune_ratio"] for p in final], [p["latency_ratio"] for p in final],
                "*", ms=14, color="tab:green", label="chosen, re-measured", zorder=5)
    ax.set_xlabel("prunable channels removed (%)")
    ax.set_ylabel("latency / baseline latency")
    ax.set_ylim(0, max([1.05] + [p["latency_ratio"] * 1.05 for p in probes]))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    ax.set_title("Latency search: prune ratio vs measured latency")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _combined(levels: Sequence[np.ndarray], size: tuple[int, int]) -> np.ndarray:
    """Levels upsampled (nearest) to the image size and averaged."""
    h, w = size
    out = np.zeros((h, w), dtype=np.float32)
    for f in levels:
        ry, rx = max(h // f.shape[0], 1), max(w // f.shape[1], 1)
        up = np.kron(f, np.ones((ry, rx), dtype=np.float32))[:h, :w]
        out[:up.shape[0], :up.shape[1]] += up
    return out / max(len(levels), 1)


def plot_attention(path: Path, images: Sequence[np.ndarray], boxes: Sequence[np.ndarray],
                   sparse: Sequence[Sequence[np.ndarray]],
                   pruned: Sequence[Sequence[np.ndarray]]) -> Path:
    """``images``: HWC uint8; ``sparse``/``pruned``: per image, the F map of each level."""
    plt = pyplot()
    import matplotlib.patches as patches  # deferred: part of matplotlib (see pyplot)

    n = len(images)
    fig, axes = plt.subplots(n, 3, figsize=(9, 3 * n), dpi=80, squeeze=False)
    for i in range(n):
        size = images[i].shape[:2]
        a, b = _combined(sparse[i], size), _combined(pruned[i], size)
        vmax = max(float(a.max()), float(b.max()), 1e-9)
        for j, (title, img) in enumerate((("image + boxes", None), ("sparse model", a),
                                          ("pruned model", b))):
            ax = axes[i][j]
            ax.imshow(images[i])
            if img is not None:
                ax.imshow(img, cmap="jet", alpha=0.55, vmin=0, vmax=vmax)
            for x1, y1, x2, y2 in boxes[i]:
                ax.add_patch(patches.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False,
                                               ec="white", lw=0.8))
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(title, fontsize=10)
    fig.suptitle("Feature attention F (mean over detection levels), same colour scale per row",
                 fontsize=10)
    fig.tight_layout()
    _save_small(fig, path)
    plt.close(fig)
    return path


def _save_small(fig, path: Path) -> None:
    """Save as a 256-colour PNG: photos under heatmaps compress badly in full colour."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    buffer.seek(0)
    with Image.open(buffer) as im:
        im.convert("RGB").quantize(256).save(path, format="PNG", optimize=True)


def fold_sentence(fold: dict[str, Any]) -> str:
    dev = fold["deviation_from_gamma_zeroed"]
    return (f"bias folding: {len(fold['folded'])} layers absorbed the constants of pruned "
            f"channels, {len(fold['unfoldable'])} could not "
            f"({', '.join(fold['unfoldable']) or 'none'}); against the γ-zeroed model the slim "
            f"model differs by at most {dev['max']:.3g} (padded borders), "
            f"{dev['interior_max']:.3g} one cell in from the edges")


def accuracy_rows(r: dict[str, Any]) -> list[tuple[str, int, int, float, float | None]]:
    """(stage, params, FLOPs, mAP@0.5, mAP@0.5:0.95) for each model the report measured:
    the baseline (when given), the sparse model, the slim model, the fine-tuned slim model."""
    rows = []
    if r.get("baseline_map50") is not None:
        name = r.get("baseline_model")
        rows.append((f"baseline ({name})" if name else "baseline", r["baseline_params"],
                     r["baseline_flops"], r["baseline_map50"], r.get("baseline_map")))
    if r.get("map50_before") is not None:
        rows.append(("sparse (before pruning)", r["params_before"], r["flops_before"],
                     r["map50_before"], r.get("map_before")))
        rows.append(("pruned, no fine-tuning", r["params_after"], r["flops_after"],
                     r["map50_after"], r.get("map_after")))
    if r.get("map50_finetuned") is not None:
        rows.append((f"pruned + fine-tuned {r['finetune_epochs']} epochs", r["params_after"],
                     r["flops_after"], r["map50_finetuned"], r.get("map_finetuned")))
    return rows


def accuracy_table(r: dict[str, Any]) -> list[str]:
    """The report's accuracy table: every measured stage, with its change in mAP@0.5 points
    from the first row (the baseline when given, else the sparse model)."""
    rows = accuracy_rows(r)
    if not rows:
        return []
    ref_name, ref = rows[0][0].split(" (")[0], rows[0][3]
    lines = ["", "## Accuracy", "", f"| model | parameters | GFLOPs | mAP@0.5 | mAP@0.5:0.95 | "
             f"mAP@0.5 vs {ref_name} |", "|---|---|---|---|---|---|"]
    for k, (stage, params, flops, m50, m) in enumerate(rows):
        delta = "–" if k == 0 else f"{100 * (m50 - ref):+.1f} points"
        lines.append(f"| {stage} | {params:,} | {flops / 1e9:.3f} | {m50:.3f} | "
                     f"{'–' if m is None else f'{m:.3f}'} | {delta} |")
    return lines


def markdown(report: dict[str, Any], plots: Sequence[str] = ()) -> str:
    """report.md: what was asked, what came out, how the search went."""
    r = report
    lines = [f"# graphprune compile report: {r.get('model')}", ""]
    goal = r.get("goal")
    if goal == "lfa":
        name = "LFA±" if r.get("lfa_criterion") == "two-sided" else "LFA⁺"
        lines.append(f"Goal: the largest global prune whose feature attention loss {name} ≤ "
                     f"{_pct(r['lfa_target'], 2)} (L1RR Eq. 1–2, {r.get('lfa_mode')}"
                     + ("; LFA± counts gains of attention as changes too" if name == "LFA±"
                        else "") + ").")
    elif goal in ("flops", "params"):
        lines.append(f"Goal: remove at least {_pct(r[f'{goal}_target'])} of the {goal}.")
    elif goal == "latency":
        bound = "" if r.get("lfa_target") is None else \
            f", within LFA ≤ {_pct(r['lfa_target'], 2)}"
        lines.append(f"Goal: remove at least {_pct(r['latency_target'])} of the latency measured "
                     f"on {r.get('runtime')}, with the fewest channels{bound}.")
    elif goal == "prune_ratio":
        lines.append(f"Goal: prune {_pct(r['request']['prune_ratio'])} of the prunable "
                     f"channels, least important first (BatchNorm |γ|; without BatchNorm, "
                     f"the layer-relative magnitude).")
    elif goal == "threshold":
        lines.append(f"Goal: prune the ranked channels whose importance (a BatchNorm's |γ|) "
                     f"< δ = {r['threshold']:.4g}.")
    elif goal == "masks":
        lines.append(f"Goal: the keep masks in `{r['request']['masks']}`.")
    else:
        lines.append(f"Request: {r.get('request')}")
    lines += ["", "## Result", "", "| | before | after | after / before |", "|---|---|---|---|",
              f"| parameters | {r['params_before']:,} | {r['params_after']:,} | "
              f"{r['params_after'] / max(r['params_before'], 1):.3f} |",
              f"| GFLOPs (2×MACs) | {r['flops_before'] / 1e9:.3f} | {r['flops_after'] / 1e9:.3f}"
              f" | {r['flops_after'] / max(r['flops_before'], 1):.3f} |"]
    lines += ["", f"- prunable channels removed: {_pct(r['prune_ratio'])} "
              f"(global threshold δ = {r['threshold']:.4g})" if r.get("threshold") is not None
              else f"- prunable channels removed: {_pct(r['prune_ratio'])}"]
    if r.get("lfa") is not None:
        lvl = ", ".join("–" if v is None else f"{100 * v:+.2f} %" for v in r["lfa_per_level"])
        two = r.get("lfa_two_sided")
        lines.append(f"- LFA⁺ of the slim model {_pct(r.get('lfa_plus', r['lfa']), 3)}, signed "
                     f"LFA {100 * r['lfa_signed']:+.3f} %"
                     + (f", LFA± {_pct(two, 3)}" if two is not None else "")
                     + f", per level: {lvl} (search probe: {_pct(r['lfa_probe'], 3)})")
        if r.get("lfa_levels_skipped"):
            lines.append(f"- levels left out (no feature attention on the sparse model): "
                         f"{r['lfa_levels_skipped']}")
    lines.append(f"- verified: slim == zero-masked on the example input, max |diff| "
                 f"{r['max_error']:.2e}")
    if r.get("fold_pruned_bias"):
        lines.append(f"- {fold_sentence(r['fold_pruned_bias'])}")
    if r.get("latency_ms") is not None:
        lines.append(f"- latency on {r['runtime']}: {r['baseline_ms']:.2f} ms → "
                     f"{r['latency_ms']:.2f} ms, {r['latency_ratio']:.3f} × the baseline's "
                     f"({r['speedup']:.2f}× faster; median of {r['latency_rounds']} interleaved "
                     f"rounds, re-measured after the search)")
    if r.get("evaluations") is not None and (goal != "latency" or r.get("lfa_target")):
        lines.append(f"- {r['evaluations']} LFA evaluations for N = {r['candidates']} candidate "
                     f"channels (bound ⌈log₂ N⌉ + 2 = "
                     f"{math.ceil(math.log2(max(r['candidates'], 2))) + 2}), on "
                     f"{r['calibration_images']} calibration images")
    for note in r.get("notes", []):
        lines.append(f"- note: {note}")
    lines += accuracy_table(r)
    for plot in plots:
        lines += ["", f"![{plot}]({plot})"]
    if r.get("probes"):
        lines += ["", "## Search probes", "",
                  "| # | channels pruned | δ | prune ratio | params | FLOPs | LFA⁺ | signed LFA |",
                  "|---|---|---|---|---|---|---|---|"]
        for k, p in enumerate(r["probes"], 1):
            delta = "∞" if p["threshold"] is None else f"{p['threshold']:.4g}"
            signed = "–" if p["lfa_signed"] is None else f"{100 * p['lfa_signed']:+.3f} %"
            cached = " (cached)" if p.get("reused") else ""
            lines.append(f"| {k} | {p['count']} | {delta} | {_pct(p['prune_ratio'])} | "
                         f"{_fmt_count(p['params'])} | {_fmt_count(p['flops'])} | "
                         f"{_pct(p['lfa_plus'], 3)} | {signed}{cached} |")
    if r.get("latency_probes"):
        lines += ["", "## Latency probes", "",
                  "| # | channels pruned | prune ratio | FLOPs | ms | baseline ms | × baseline "
                  "| rounds |", "|---|---|---|---|---|---|---|---|"]
        for k, p in enumerate(r["latency_probes"], 1):
            lines.append(f"| {k} | {p['count']} | {_pct(p['prune_ratio'])} | "
                         f"{_fmt_count(p['flops'])} | {p['ms']:.2f} | {p['baseline_ms']:.2f} | "
                         f"{p['latency_ratio']:.3f} | {p['rounds']}"
                         f"{' (re-measured)' if p['final'] else ''} |")
    pinned = r.get("pinned") or {}
    if pinned:
        lines += ["", "## Pinned layers", ""]
        lines += [f"- `{name}`: {why}" for name, why in list(pinned.items())[:40]]
        if len(pinned) > 40:
            lines.append(f"- … and {len(pinned) - 40} more (report.json)")
    if r.get("warnings"):
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in r["warnings"]]
    lines += ["", "## Artifacts", ""] + [f"- `{a}`" for a in r.get("artifacts", [])]
    return "\n".join(lines) + "\n"


__all__ = ["accuracy_rows", "accuracy_table", "fold_sentence", "markdown", "plot_attention", "plot_latency", "plot_search"]
