"""Sparse training of BatchNorm scaling factors γ: L1RR's dynamic and self-adaptive sparsity.

Each optimizer step, the gradient of every regularised γ gets (paper Eq. 7)

    g(γⱼ) += θ · λᵢ · αⱼ · sign(γⱼ)          (channel j of layer i)

* **DSM**, the dynamic sparse module (Eq. 3–4): αⱼ = 1 / (|γⱼ| + ε), recomputed at the start of
  every phase.  α⁽⁰⁾ = 0, so the first phase is ordinary training; after it, channels with a
  small γ (background) get a large sparsity stride and channels with a large γ (targets) a
  small one.  At most ``max_phases`` updates.
* **SASM**, the self-adaptive sparse module (Eq. 5–6): λᵢ = 2^(a·(ρ − pᵢ) − sᵢ), where ρ is the
  share of all regularised channels with |γ| < ``near_zero``, pᵢ that share in layer i, and sᵢ
  counts the updates at which layer i was *saturated*: it already had near-zero channels and
  its share grew by less than ``saturation_tol`` since the previous update.  Layers sparser
  than the model are pushed less, denser ones more, and a layer whose sparsity has stopped
  growing is pushed half as hard at each update (λ-decay) so that it is not over-sparsified.
  λ⁽⁰⁾ = 1.
* ``mode="dsm"`` uses α with λ = 1 (the ablation's middle row); ``mode="ns"`` is network
  slimming, the baseline: g(γ) += θ · sign(γ) from the first step.

Defaults, and why: θ = 1e-3 (the usual network-slimming strength for YOLOv5 sparse training);
ε = 0.01, the same value as ``near_zero``, so a channel at the pruning level gets α ≈ 50 and
one at |γ| = 1 gets α ≈ 1; a = 1, so a layer 10 points sparser than the model is pushed
2^-0.1 ≈ 7 % less; ``saturation_tol`` = 0.01, one percentage point of a layer's channels;
``phase_epochs`` = 40 with ``max_phases`` = 10, seven updates in a 300-epoch run (the paper's
protocol), and ``phase_steps`` for loops that do not count epochs.

The regulariser must act once per optimizer step on the true gradients: call :meth:`apply`
after ``loss.backward()`` (after ``GradScaler.unscale_`` under AMP, or pass ``scale=`` the
scaler's scale when gradients are still scaled), once per accumulated step, before
``optimizer.step()``; keep weight decay off for γ.  Under DDP, γ and so α and λ are identical on
every rank, so every rank adds the same term after the gradient all-reduce.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
import torch.nn as nn

from .errors import GraphpruneError, GraphpruneWarning

MODES = ("l1rr", "dsm", "ns")
# |γ| histogram bins of the per-epoch log (log-spaced; the last bin is open)
HISTOGRAM_EDGES = (0.0, 1e-4, 1e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, math.inf)


def prunable_batchnorms(model: nn.Module, example_inputs: Any) -> list[str]:
    """The BatchNorms the compiler could actually shrink (not those reaching the outputs or
    consumed by ops it keeps whole), found by graphprune's own analysis."""
    from .pipeline import analyze

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GraphpruneWarning)
        report = analyze(model, example_inputs)
    return [name for name, st in report.statistics.items()
            if report.pinned_channels[name] < st.channels]


class SparsityRegularizer:
    """Adds L1RR (or network-slimming) sparsity gradients to BatchNorm γ; see the module doc.

    ``example_inputs`` (or ``layers``, BatchNorm names) chooses the regularised layers; with
    neither, every affine BatchNorm is regularised (and a warning says so)."""

    def __init__(self, model: nn.Module, example_inputs: Any = None, *, mode: str = "l1rr",
                 theta: float = 1e-3, phase_epochs: int = 40, phase_steps: int | None = None,
                 max_phases: int = 10, a: float = 1.0, eps: float = 0.01,
                 near_zero: float = 0.01, saturation_tol: float = 0.01,
                 layers: Iterable[str] | None = None):
        if mode not in MODES:
            raise GraphpruneError(f"sparsity mode must be one of {', '.join(MODES)}, got {mode!r}")
        for name, value in (("theta", theta), ("eps", eps), ("near_zero", near_zero)):
            if not (math.isfinite(value) and value > 0):
                raise GraphpruneError(f"{name} must be a positive number, got {value!r}")
        if phase_steps is None and phase_epochs < 1 or phase_steps is not None and phase_steps < 1:
            raise GraphpruneError("phases must last at least one epoch (or step)")
        if not 1 <= max_phases <= 10:
            raise GraphpruneError(f"max_phases must be in 1..10 (L1RR updates α at most ten "
                                  f"times), got {max_phases}")
        self.mode, self.theta, self.a, self.eps = mode, float(theta), float(a), float(eps)
        self.near_zero, self.saturation_tol = float(near_zero), float(saturation_tol)
        self.phase_epochs, self.phase_steps, self.max_phases = phase_epochs, phase_steps, max_phases
        modules = dict(model.named_modules())
        if layers is not None:
            names = list(layers)
        elif example_inputs is not None:
            names = prunable_batchnorms(model, example_inputs)
        else:
            names = [n for n, m in modules.items()
                     if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine]
            warnings.warn("SparsityRegularizer: no example_inputs, so every affine BatchNorm is "
                          "regularised, the detection head's too; pass example_inputs to limit "
                          "it to the layers the compiler can prune", GraphpruneWarning,
                          stacklevel=2)
        missing = [n for n in names if not isinstance(modules.get(n),
                                                      nn.modules.batchnorm._BatchNorm)]
        if missing:
            raise GraphpruneError(f"{missing[0]!r} is not a BatchNorm of the model",
                                  hint="layers names BatchNorm modules, e.g. 'model.2.cv1.bn'")
        if not names:
            raise GraphpruneError("the model has no prunable BatchNorm to regularise")
        self.names = names
        self.gammas: list[nn.Parameter] = [modules[n].weight for n in names]
        zeros = [torch.zeros_like(g, memory_format=torch.contiguous_format).detach()
                 for g in self.gammas]
        self.alpha: list[torch.Tensor] = zeros                  # α⁽⁰⁾ = 0
        self.lam = [1.0] * len(names)                           # λ⁽⁰⁾ = 1
        self.saturated = [0] * len(names)
        self.shares: list[float | None] = [None] * len(names)
        self.phase = 0          # α/λ updates done
        self.steps = 0          # optimizer steps regularised
        self.epoch = 0

    # -- phases --------------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Call at the start of every epoch (phases counted in epochs)."""
        self.epoch = epoch
        if self.phase_steps is None:
            self._advance(epoch // self.phase_epochs)

    def _advance(self, target: int) -> None:
        target = min(target, self.max_phases)
        if self.mode != "ns" and self.phase < target:
            self.update()
            self.phase = target

    @torch.no_grad()
    def sparsity(self) -> tuple[float, list[float]]:
        """(ρ, [pᵢ]): the share of near-zero γ overall and per layer."""
        counts = [int((g.detach().abs() < self.near_zero).sum()) for g in self.gammas]
        sizes = [g.numel() for g in self.gammas]
        return sum(counts) / sum(sizes), [c / s for c, s in zip(counts, sizes)]

    @torch.no_grad()
    def update(self) -> None:
        """Recompute α (Eq. 3–4) and, in l1rr mode, λ with its decay (Eq. 5–6)."""
        rho, shares = self.sparsity()
        for i, g in enumerate(self.gammas):
            self.alpha[i] = 1.0 / (g.detach().abs() + self.eps)
            if self.mode != "l1rr":
                continue
            previous = self.shares[i]
            if previous is not None and shares[i] > 0 and \
                    shares[i] - previous < self.saturation_tol:
                self.saturated[i] += 1
            self.lam[i] = 2.0 ** (self.a * (rho - shares[i]) - self.saturated[i])
            self.shares[i] = shares[i]

    # -- the gradient ----------------------------------------------------------------------------
    @torch.no_grad()
    def apply(self, scale: float = 1.0) -> None:
        """Add θ·λ·α·sign(γ) (× ``scale``, for gradients not yet unscaled) to γ's gradient.
        Call once per optimizer step, after backward, before ``optimizer.step()``."""
        if self.phase_steps is not None:
            self._advance(self.steps // self.phase_steps)
        self.steps += 1
        for i, g in enumerate(self.gammas):
            if self.mode == "ns":
                term = torch.sign(g) * (self.theta * scale)
            else:
                if self.phase == 0:
                    continue                                     # α⁽⁰⁾ = 0
                term = torch.sign(g) * self.alpha[i] * (self.theta * self.lam[i] * scale)
            if g.grad is None:
                g.grad = term.to(g.dtype)
            else:
                g.grad.add_(term.to(g.grad.dtype))

    # -- observability -----------------------------------------------------------------------
    @torch.no_grad()
    def summary(self) -> dict[str, Any]:
        """Plain data for the per-epoch log: ρ, the |γ| histogram, per-layer share and λ."""
        rho, shares = self.sparsity()
        values = torch.cat([g.detach().abs().flatten().float().cpu() for g in self.gammas])
        hist, _ = np.histogram(values.numpy(), bins=np.array(HISTOGRAM_EDGES))
        return {"epoch": self.epoch, "phase": self.phase, "steps": self.steps,
                "mode": self.mode, "rho": rho,
                "histogram": {"edges": [e if math.isfinite(e) else None
                                        for e in HISTOGRAM_EDGES],
                              "counts": hist.tolist()},
                "layers": {n: {"share": s, "lambda": lam, "saturated": sat}
                           for n, s, lam, sat in zip(self.names, shares, self.lam,
                                                     self.saturated)}}

    # -- checkpoints ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "phase": self.phase, "steps": self.steps,
                "epoch": self.epoch, "names": list(self.names),
                "alpha": [a.detach().cpu().clone() for a in self.alpha],
                "lam": list(self.lam), "saturated": list(self.saturated),
                "shares": [-1.0 if s is None else s for s in self.shares]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["names"] != self.names or state["mode"] != self.mode:
            raise GraphpruneError("the saved sparsity state belongs to another model or mode",
                                  hint="resume with the same model and --sparsity mode")
        self.phase, self.steps, self.epoch = int(state["phase"]), int(state["steps"]), \
            int(state["epoch"])
        self.alpha = [a.to(g.device, g.dtype) for a, g in zip(state["alpha"], self.gammas)]
        self.lam = [float(x) for x in state["lam"]]
        self.saturated = [int(x) for x in state["saturated"]]
        self.shares = [None if s < 0 else float(s) for s in state["shares"]]

    # -- graphprune's trainer (graphprune.detect.train.Trainer callbacks) -------------------------
    def on_epoch_start(self, trainer, epoch: int) -> None:
        self.set_epoch(epoch)

    def before_optimizer_step(self, trainer) -> None:
        self.apply()

    def on_epoch_end(self, trainer, record) -> None:
        """Append this epoch's summary to ``sparsity.jsonl`` and redraw the plots."""
        log = Path(trainer.out) / "sparsity.jsonl"
        with open(log, "a") as f:
            f.write(json.dumps(self.summary()) + "\n")
        plot_sparsity(log, Path(trainer.out))


def read_log(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def plot_sparsity(log: str | Path, out: str | Path) -> list[Path]:
    """Draw ``gamma_distribution.png`` (the |γ| histogram, epoch by epoch) and
    ``layer_sparsity.png`` (each layer's near-zero share, epoch by epoch) from a sparsity log."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .export import atomic_path

    rows = read_log(log)
    if not rows:
        return []
    epochs = [r["epoch"] + 1 for r in rows]
    out = Path(out)
    written = []
    counts = np.array([r["histogram"]["counts"] for r in rows], dtype=float).T
    counts /= np.maximum(counts.sum(0, keepdims=True), 1)
    edges = rows[0]["histogram"]["edges"]
    labels = [f"< {edges[1]:g}"] + [f"{lo:g}–{hi:g}" for lo, hi in zip(edges[1:-2], edges[2:-1])] \
        + [f"≥ {edges[-2]:g}"]
    names = list(rows[-1]["layers"])
    shares = np.array([[r["layers"][n]["share"] for r in rows] for n in names])
    for filename, data, ylabels, title, cmap in (
            ("gamma_distribution.png", counts, labels,
             "share of regularised channels by |γ|", "viridis"),
            ("layer_sparsity.png", shares, names,
             f"share of |γ| < near_zero per layer (ρ at the end: {rows[-1]['rho']:.3f})",
             "magma")):
        height = max(3.0, 0.18 * len(ylabels) + 1.5)
        fig, ax = plt.subplots(figsize=(max(6.0, 0.12 * len(epochs) + 4), height))
        image = ax.imshow(data, aspect="auto", interpolation="nearest", cmap=cmap, vmin=0,
                          vmax=1, extent=(epochs[0] - 0.5, epochs[-1] + 0.5, len(ylabels) - 0.5,
                                          -0.5))
        ax.set_yticks(range(len(ylabels)), ylabels, fontsize=6 if len(ylabels) > 20 else 8)
        ax.set_xlabel("epoch")
        ax.set_title(title, fontsize=9)
        fig.colorbar(image, ax=ax)
        fig.tight_layout()
        with atomic_path(out / filename, ".png") as tmp:
            fig.savefig(tmp, dpi=100, format="png")
        plt.close(fig)
        written.append(out / filename)
    return written


__all__ = ["HISTOGRAM_EDGES", "MODES", "SparsityRegularizer", "plot_sparsity",
           "prunable_batchnorms", "read_log"]
