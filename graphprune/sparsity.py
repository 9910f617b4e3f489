"""Sparse training of BatchNorm scaling factors γ: L1RR's dynamic and self-adaptive sparsity,
and the scale-aware modes that keep short runs from collapsing.

**L1RR** (``mode="l1rr"``, the paper's Eq. 3–7 unchanged).  Each optimizer step, the gradient of
every regularised γ gets (Eq. 7)

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

**Why short runs collapse.**  The next BatchNorm renormalises, so the loss hardly resists a
uniform shrink of a whole layer's γ and β; an L1 term rewards exactly that, and the absolute
yardsticks (``near_zero``, ε, the compiler's global δ) then see whole layers at once.  The
other modes measure or act relative to each layer's scale:

* ``mode="si"`` (scale-invariant L1RR): with sᵢ = ‖γᵢ‖₂/√nᵢ the layer's RMS, DSM's α and SASM's
  near-zero share are measured on |γⱼ|/sᵢ, and the term is the reweighted L1 direction with its
  component along γᵢ projected out,

      g(γᵢ) += θ · λᵢ · sᵢ · (vᵢ − (⟨vᵢ, γᵢ⟩ / ‖γᵢ‖²) · γᵢ),   vᵢ = αᵢ ⊙ sign(γᵢ),

  so ⟨g, γᵢ⟩ = 0: it moves magnitude from a layer's small channels to its large ones and never
  shrinks (or grows) the layer as a whole.
* ``mode="hoyer"``: θ·∇ of the Hoyer-square ratio (Σ|γᵢ|)² / Σγᵢ² per layer (DeepHoyer, Yang et
  al., ICLR 2020), from the first step: 2·S₁/S₂·(sign γ − S₁/S₂·γ), also orthogonal to γᵢ.
* ``mode="polar"``: θ·∇ of the polarization regulariser t·‖γ‖₁ − ‖γ − γ̄‖₁ over all regularised
  channels (Zhuang et al., NeurIPS 2020), γ̄ their mean, with γ clamped to [0, 1] after each
  step (:meth:`after_step`); t = 1.2.
* ``mode="progressive"``: gradual pruning inside sparse training.  At update k of K
  (= ``max_phases``; the first phase is ordinary training) the chosen share of all regularised
  channels grows to

      q_k = target · (1 − (1 − k/K)³)            (the cubic schedule of Zhu & Gupta, 2017),

  the channels added being the least important ones not yet chosen — by the Taylor estimate
  Iⱼ = Σ_steps (γⱼ·∂L/∂γⱼ + βⱼ·∂L/∂βⱼ)² over the phase (Molchanov et al., CVPR 2019: the
  first-order change of the loss when the channel's output is removed, comparable across layers
  whatever their scale), or ``importance="gamma"``: |γⱼ|/sᵢ — with no layer giving up more than
  ``max_layer_share`` of its channels.  A chosen channel's task gradient is zeroed and its γ and
  β are set, after every step, to their values when chosen times r = max(0, 1 − t/T), t the
  steps since then and T one phase: it fades out smoothly while the rest of the network adapts,
  and ends exactly zero, so the zero-masked model *is* the trained model and the compiler's cut
  at those channels costs nothing.  θ is not used.

Defaults, and why: θ = 1e-3 (the usual network-slimming strength for YOLOv5 sparse training);
ε = 0.01, the same value as ``near_zero``, so a channel at the pruning level gets α ≈ 50 and
one at |γ| = 1 gets α ≈ 1; a = 1, so a layer 10 points sparser than the model is pushed
2^-0.1 ≈ 7 % less; ``saturation_tol`` = 0.01, one percentage point of a layer's channels;
``phase_epochs`` = 40 with ``max_phases`` = 10, seven updates in a 300-epoch run (the paper's
protocol), and ``phase_steps`` for loops that do not count epochs.  Progressive: ``target`` =
0.5, ``max_layer_share`` = 0.9 (a layer keeps at least a tenth of its channels, so no path of
the network is cut), Taylor importance.

The regulariser must act once per optimizer step on the true gradients: call :meth:`apply`
after ``loss.backward()`` and gradient clipping (after ``GradScaler.unscale_`` under AMP, or
pass ``scale=`` the scaler's scale when gradients are still scaled), once per accumulated step,
before ``optimizer.step()``, and :meth:`after_step` after it; keep weight decay off for γ.
Under DDP, γ and so α and λ (and the Taylor sums, which use the all-reduced gradients) are
identical on every rank, so every rank adds the same term after the gradient all-reduce.
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
from .export import atomic_path
from .pipeline import analyze
from .report import pyplot
from .search import MaskPlanner

MODES = ("l1rr", "dsm", "ns", "si", "polar", "hoyer", "progressive")
# modes that follow L1RR's phases (the first phase is ordinary training)
PHASED = ("l1rr", "dsm", "si", "progressive")
IMPORTANCES = ("taylor", "gamma")
UNITS = ("flops", "channels")          # what mode progressive's target is a share of
# |γ| histogram bins of the per-epoch log (log-spaced; the last bin is open)
HISTOGRAM_EDGES = (0.0, 1e-4, 1e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, math.inf)


def default_phases(mode: str, epochs: int) -> tuple[int, int]:
    """(phase_epochs, max_phases) for a sparse run of ``epochs`` epochs: L1RR's 40-epoch phases
    and ten updates (the paper's 300-epoch protocol); progressive a tenth of the run per phase
    and one update per phase after the first, so the last channels chosen still have a phase
    to fade out."""
    if mode != "progressive":
        return 40, 10
    phase = max(epochs // 10, 1)
    return phase, min(max(epochs // phase - 1, 1), 10)


def prunable_batchnorms(model: nn.Module, example_inputs: Any) -> list[str]:
    """The BatchNorms the compiler could actually shrink (not those reaching the outputs or
    consumed by ops it keeps whole), found by graphprune's own analysis."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GraphpruneWarning)
        report = analyze(model, example_inputs)
    modules = dict(model.named_modules())       # a functional batch norm is not regularised
    return [name for name, st in report.statistics.items()
            if st.kind == "batchnorm" and name in modules and
            report.pinned_channels.get(name, 0) < st.channels]


class SparsityRegularizer:
    """Sparse training of BatchNorm γ in one of :data:`MODES` (L1RR by default); see the module
    doc for each mode's equation.

    ``example_inputs`` (or ``layers``, BatchNorm names) chooses the regularised layers; with
    neither, every affine BatchNorm is regularised (and a warning says so).  Mode progressive
    with ``unit="flops"`` also needs ``example_inputs``, to count what each channel costs."""

    def __init__(self, model: nn.Module, example_inputs: Any = None, *, mode: str = "l1rr",
                 theta: float = 1e-3, phase_epochs: int = 40, phase_steps: int | None = None,
                 max_phases: int = 10, a: float = 1.0, eps: float = 0.01,
                 near_zero: float = 0.01, saturation_tol: float = 0.01, t: float = 1.2,
                 target: float = 0.5, unit: str = "flops", importance: str = "taylor",
                 max_layer_share: float = 0.9, layers: Iterable[str] | None = None):
        if mode not in MODES:
            raise GraphpruneError(f"sparsity mode must be one of {', '.join(MODES)}, got {mode!r}")
        for name, value in (("theta", theta), ("eps", eps), ("near_zero", near_zero), ("t", t)):
            if not (math.isfinite(value) and value > 0):
                raise GraphpruneError(f"{name} must be a positive number, got {value!r}")
        if phase_steps is None and phase_epochs < 1 or phase_steps is not None and phase_steps < 1:
            raise GraphpruneError("phases must last at least one epoch (or step)")
        if not 0 < target < 1:
            raise GraphpruneError(f"target (the share of FLOPs or channels to remove) must be "
                                  f"in (0, 1), got {target!r}")
        if not 0 < max_layer_share <= 1:
            raise GraphpruneError(f"max_layer_share must be in (0, 1], got {max_layer_share!r}")
        if unit not in UNITS:
            raise GraphpruneError(f"unit must be one of {', '.join(UNITS)}, got {unit!r}")
        if importance not in IMPORTANCES:
            raise GraphpruneError(f"importance must be one of {', '.join(IMPORTANCES)}, got "
                                  f"{importance!r}")
        if not 1 <= max_phases <= 10:
            raise GraphpruneError(f"max_phases must be in 1..10 (L1RR updates α at most ten "
                                  f"times), got {max_phases}")
        self.mode, self.theta, self.a, self.eps = mode, float(theta), float(a), float(eps)
        self.near_zero, self.saturation_tol = float(near_zero), float(saturation_tol)
        self.t = float(t)
        self.target, self.importance, self.unit = float(target), importance, unit
        self.max_layer_share = float(max_layer_share)
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
        # mode "progressive": the channels chosen so far, when, and their γ/β at that step
        self.betas: list[nn.Parameter] = [modules[n].bias for n in names]
        self.chosen = [torch.zeros(g.numel(), dtype=torch.bool, device=g.device)
                       for g in self.gammas]
        self.chosen_at = [torch.full((g.numel(),), -1, dtype=torch.long, device=g.device)
                          for g in self.gammas]
        self.start_gamma = [z.clone() for z in zeros]
        self.start_beta = [z.clone() for z in zeros]
        self.scores = [z.clone() for z in zeros]            # Taylor importance of this phase
        self.steps_per_epoch: int | None = None
        self._epoch_step: int | None = None
        self.planner = None
        if mode == "progressive" and unit == "flops":
            if example_inputs is None:
                raise GraphpruneError("a FLOPs target needs the model's example inputs (to "
                                      "count what each channel costs)",
                                      hint="pass example_inputs, or unit='channels'")
            self._plan_costs(model, example_inputs)

    # -- phases --------------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Call at the start of every epoch (phases counted in epochs)."""
        if self._epoch_step is not None and self.steps_per_epoch is None and \
                self.steps > self._epoch_step:
            self.steps_per_epoch = self.steps - self._epoch_step
        self._epoch_step = self.steps
        self.epoch = epoch
        if self.phase_steps is None:
            self._advance(epoch // self.phase_epochs)

    def _advance(self, target: int) -> None:
        target = min(target, self.max_phases)
        if self.mode in PHASED and self.phase < target:
            self.phase = target
            self.update()

    @torch.no_grad()
    def scales(self) -> list[torch.Tensor]:
        """Each layer's scale sᵢ = ‖γᵢ‖₂ / √nᵢ (the RMS of its γ), the yardstick of mode "si"."""
        return [g.detach().float().pow(2).mean().sqrt() for g in self.gammas]

    @torch.no_grad()
    def magnitudes(self) -> list[torch.Tensor]:
        """|γ| as this mode measures it: relative to the layer's scale in mode "si" (|γ| / sᵢ),
        absolute otherwise."""
        if self.mode != "si":
            return [g.detach().abs() for g in self.gammas]
        return [g.detach().abs() / s.clamp_min(1e-12) for g, s in zip(self.gammas, self.scales())]

    @torch.no_grad()
    def sparsity(self, relative: bool | None = None) -> tuple[float, list[float]]:
        """(ρ, [pᵢ]): the share of near-zero γ overall and per layer, measured the way this
        mode's SASM measures it (``relative=None``), or absolutely / relative to sᵢ."""
        if relative is None:
            relative = self.mode == "si"
        if relative:
            values = [g.detach().abs() / s.clamp_min(1e-12)
                      for g, s in zip(self.gammas, self.scales())]
        else:
            values = [g.detach().abs() for g in self.gammas]
        counts = [int((v < self.near_zero).sum()) for v in values]
        sizes = [g.numel() for g in self.gammas]
        return sum(counts) / sum(sizes), [c / s for c, s in zip(counts, sizes)]

    @torch.no_grad()
    def update(self) -> None:
        """Recompute α (Eq. 3–4) and, in l1rr and si mode, λ with its decay (Eq. 5–6); in
        progressive mode, choose the next channels to fade out."""
        if self.mode == "progressive":
            self._choose()
            return
        rho, shares = self.sparsity()
        for i, m in enumerate(self.magnitudes()):
            self.alpha[i] = 1.0 / (m + self.eps)
            if self.mode not in ("l1rr", "si"):
                continue
            previous = self.shares[i]
            if previous is not None and shares[i] > 0 and \
                    shares[i] - previous < self.saturation_tol:
                self.saturated[i] += 1
            self.lam[i] = 2.0 ** (self.a * (rho - shares[i]) - self.saturated[i])
            self.shares[i] = shares[i]

    # -- mode "progressive" ----------------------------------------------------------------------
    def schedule(self, phase: int) -> float:
        """The share of channels chosen by update ``phase``: target · (1 − (1 − k/K)³), the
        cubic schedule of gradual pruning (Zhu & Gupta 2017), K = ``max_phases``."""
        k = min(max(phase, 0), self.max_phases) / self.max_phases
        return self.target * (1 - (1 - k) ** 3)

    def fade_steps(self) -> int:
        """Steps over which a chosen channel's γ and β go linearly to zero: one phase."""
        if self.phase_steps is not None:
            return self.phase_steps
        return max(self.phase_epochs * (self.steps_per_epoch or 1), 1)

    def channel_scores(self) -> list[torch.Tensor]:
        """Importance of every channel: the Taylor estimate Σ (γ·∂L/∂γ + β·∂L/∂β)² summed over
        the phase (Molchanov et al., CVPR 2019; the first-order change of the loss when the
        channel is removed), or |γ| relative to the layer's RMS."""
        if self.importance == "gamma" or not any(bool(s.any()) for s in self.scores):
            return [g.detach().abs() / s.clamp_min(1e-12)
                    for g, s in zip(self.gammas, self.scales())]
        return [s.clone() for s in self.scores]

    def _plan_costs(self, model: nn.Module, example_inputs: Any) -> None:
        """The compiler's mask planner for this model (what a set of removed channels leaves of
        the FLOPs, as compile would prune it) and each layer's FLOPs per channel: the FLOPs one
        removed channel of the layer saves on its own."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", GraphpruneWarning)
            self.planner = MaskPlanner(model, example_inputs)
        full = self.planner.flops_before
        self.layer_flops = []
        for name, g in zip(self.names, self.gammas):
            keep = np.ones(g.numel(), dtype=bool)
            keep[0] = False
            saved = full - self.planner.cost({name: keep})[1]
            self.layer_flops.append(max(float(saved), 1.0))

    def removed(self, chosen: list[torch.Tensor] | None = None) -> float:
        """The share of what the target counts (FLOPs or regularised channels) that the chosen
        channels remove."""
        chosen = self.chosen if chosen is None else chosen
        if self.unit == "channels" or self.planner is None:
            return sum(int(c.sum()) for c in chosen) / sum(g.numel() for g in self.gammas)
        keep = {n: (~c).cpu().numpy() for n, c in zip(self.names, chosen)}
        return 1.0 - self.planner.cost(keep)[1] / self.planner.flops_before

    def _choose(self) -> None:
        """Add the least important channels (per FLOP they cost, for a FLOPs target) to the
        chosen set until it removes the schedule's share; no layer gives up more than
        ``max_layer_share`` of its channels (and each keeps one)."""
        goal = self.schedule(self.phase)
        scores = self.channel_scores()
        cost = self.layer_flops if self.unit == "flops" and self.planner is not None else \
            [1.0] * len(self.gammas)
        room = [max(min(int(self.max_layer_share * g.numel()), g.numel() - 1) - int(c.sum()), 0)
                for g, c in zip(self.gammas, self.chosen)]
        ranked = sorted((float(v) / cost[i], i, j)
                        for i, (sc, c) in enumerate(zip(scores, self.chosen))
                        for j, v in enumerate(sc.float().cpu().tolist()) if not c[j])
        order = []                               # the candidates, in order, within each cap
        for _, i, j in ranked:
            if room[i] > 0:
                room[i] -= 1
                order.append((i, j))

        def with_first(n: int) -> list[torch.Tensor]:
            chosen = [c.clone() for c in self.chosen]
            for i, j in order[:n]:
                chosen[i][j] = True
            return chosen

        lo, hi = 0, len(order)                   # the fewest candidates reaching the goal
        if self.removed(with_first(hi)) >= goal:
            while lo < hi:
                mid = (lo + hi) // 2
                if self.removed(with_first(mid)) >= goal:
                    hi = mid
                else:
                    lo = mid + 1
        for i, j in order[:hi]:
            self.chosen[i][j] = True
            self.chosen_at[i][j] = self.steps
            self.start_gamma[i][j] = self.gammas[i].detach()[j]
            self.start_beta[i][j] = self.betas[i].detach()[j] if self.betas[i] is not None \
                else 0.0
        for sc in self.scores:
            sc.zero_()

    @torch.no_grad()
    def _accumulate_and_hold(self, scale: float = 1.0) -> None:
        """Before the step: add this step's Taylor terms (of gradients still multiplied by
        ``scale``), and zero the task's gradient of the chosen channels so that only their fade
        moves them."""
        for i, (g, b) in enumerate(zip(self.gammas, self.betas)):
            if g.grad is None:
                continue
            contribution = g.detach() * g.grad
            if b is not None and b.grad is not None:
                contribution = contribution + b.detach() * b.grad
            self.scores[i] += (contribution.float() / scale).pow(2)
            held = self.chosen[i]
            if bool(held.any()):
                g.grad[held] = 0
                if b is not None and b.grad is not None:
                    b.grad[held] = 0

    @torch.no_grad()
    def _fade(self) -> None:
        """After the step: each chosen channel's γ and β are set to their values when it was
        chosen times r = max(0, 1 − (steps since chosen) / fade_steps), so it leaves the network
        smoothly and ends exactly zero (the zero-masked model is then the trained one)."""
        span = self.fade_steps()
        for i, (g, b) in enumerate(zip(self.gammas, self.betas)):
            held = self.chosen[i]
            if not bool(held.any()):
                continue
            r = (1 - (self.steps - self.chosen_at[i][held]).float() / span).clamp(0, 1)
            g[held] = (self.start_gamma[i][held] * r).to(g.dtype)
            if b is not None:
                b[held] = (self.start_beta[i][held] * r).to(b.dtype)

    # -- the gradient ----------------------------------------------------------------------------
    @torch.no_grad()
    def terms(self) -> list[torch.Tensor | None]:
        """The gradient each regularised γ gets now (None: nothing this step)."""
        if self.mode == "polar":
            return self._polarization()
        if self.mode == "progressive":
            return [None] * len(self.gammas)
        out: list[torch.Tensor | None] = []
        for i, g in enumerate(self.gammas):
            sign = torch.sign(g)
            if self.mode == "ns":
                out.append(sign * self.theta)
            elif self.mode == "hoyer":
                out.append(self._hoyer(g))
            elif self.phase == 0:
                out.append(None)                                 # α⁽⁰⁾ = 0
            elif self.mode == "si":
                out.append(self._scale_invariant(g, self.alpha[i]) * (self.theta * self.lam[i]))
            else:
                out.append(sign * self.alpha[i] * (self.theta * self.lam[i]))
        return out

    @staticmethod
    def _scale_invariant(g: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """sᵢ · P⊥(α ⊙ sign γ): the reweighted L1 direction with its component along γ (the one
        that shrinks or grows the whole layer) projected out, times the layer's scale."""
        norm2 = g.pow(2).sum()
        if norm2 <= 0:
            return torch.zeros_like(g)
        v = alpha * torch.sign(g)
        scale = (norm2 / g.numel()).sqrt()
        return (v - (v * g).sum() / norm2 * g) * scale

    def _hoyer(self, g: torch.Tensor) -> torch.Tensor:
        """θ · ∂/∂γ of the Hoyer-square ratio (Σ|γ|)² / Σγ² (DeepHoyer): 2·S₁/S₂ · (sign γ −
        S₁/S₂ · γ), zero along γ, so a uniform shrink of the layer is never rewarded."""
        s1, s2 = g.abs().sum(), g.pow(2).sum()
        if s2 <= 0:
            return torch.zeros_like(g)
        return (2 * s1 / s2) * (torch.sign(g) - (s1 / s2) * g) * self.theta

    def _polarization(self) -> list[torch.Tensor]:
        """θ · ∂/∂γ of t‖γ‖₁ − ‖γ − γ̄‖₁ over all regularised channels (Zhuang et al. 2020);
        γ̄ is their mean, so its derivative adds the mean of sign(γ − γ̄) to every channel."""
        flat = torch.cat([g.detach().flatten() for g in self.gammas])
        mean = flat.mean()
        correction = torch.sign(flat - mean).mean()
        return [(self.t * torch.sign(g) - torch.sign(g - mean) + correction) * self.theta
                for g in self.gammas]

    @torch.no_grad()
    def apply(self, scale: float = 1.0) -> None:
        """Add this mode's term (× ``scale``, for gradients not yet unscaled) to γ's gradient.
        Call once per optimizer step, after backward and after gradient clipping (the term is
        not the task's gradient and must not shrink it), before ``optimizer.step()``."""
        if self.phase_steps is not None:
            self._advance(self.steps // self.phase_steps)
        if self.mode == "progressive":
            self._accumulate_and_hold(scale)
        self.steps += 1
        for g, term in zip(self.gammas, self.terms()):
            if term is None:
                continue
            term = term * scale
            if g.grad is None:
                g.grad = term.to(g.dtype)
            else:
                g.grad.add_(term.to(g.grad.dtype))

    @torch.no_grad()
    def after_step(self) -> None:
        """Call after ``optimizer.step()``: polarization keeps γ in [0, 1], progressive fades
        the chosen channels; other modes do nothing."""
        if self.mode == "progressive":
            self._fade()
        if self.mode == "polar":
            for g in self.gammas:
                g.clamp_(0.0, 1.0)

    # -- observability -----------------------------------------------------------------------
    @torch.no_grad()
    def summary(self) -> dict[str, Any]:
        """Plain data for the per-epoch log: ρ, the |γ| histogram, per-layer share and λ."""
        rho, shares = self.sparsity(relative=False)
        values = torch.cat([g.detach().abs().flatten().float().cpu() for g in self.gammas])
        hist, _ = np.histogram(values.numpy(), bins=np.array(HISTOGRAM_EDGES))
        return {"epoch": self.epoch, "phase": self.phase, "steps": self.steps,
                "mode": self.mode, "rho": rho,
                "rho_relative": self.sparsity(relative=True)[0],
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
                "shares": [-1.0 if s is None else s for s in self.shares],
                "chosen": [c.cpu().clone() for c in self.chosen],
                "chosen_at": [c.cpu().clone() for c in self.chosen_at],
                "start_gamma": [v.cpu().clone() for v in self.start_gamma],
                "start_beta": [v.cpu().clone() for v in self.start_beta],
                "scores": [v.cpu().clone() for v in self.scores],
                "steps_per_epoch": -1 if self.steps_per_epoch is None else self.steps_per_epoch,
                "epoch_step": -1 if self._epoch_step is None else self._epoch_step}

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
        if "chosen" in state:                      # states written before mode progressive
            def on(values, like):
                return [v.to(g.device, like(g)) for v, g in zip(values, self.gammas)]
            self.chosen = on(state["chosen"], lambda g: torch.bool)
            self.chosen_at = on(state["chosen_at"], lambda g: torch.long)
            self.start_gamma = on(state["start_gamma"], lambda g: g.dtype)
            self.start_beta = on(state["start_beta"], lambda g: g.dtype)
            self.scores = on(state["scores"], lambda g: g.dtype)
            spe, es = int(state["steps_per_epoch"]), int(state["epoch_step"])
            self.steps_per_epoch, self._epoch_step = (None if spe < 0 else spe,
                                                      None if es < 0 else es)

    # -- graphprune's trainer (graphprune.detect.train.Trainer callbacks) -------------------------
    def on_epoch_start(self, trainer, epoch: int) -> None:
        self.set_epoch(epoch)

    def before_optimizer_step(self, trainer) -> None:
        self.apply()

    def after_optimizer_step(self, trainer) -> None:
        self.after_step()

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
    plt = pyplot()
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


__all__ = ["HISTOGRAM_EDGES", "IMPORTANCES", "MODES", "default_phases", "SparsityRegularizer", "plot_sparsity",
           "prunable_batchnorms", "read_log"]
