"""Anchors fitted to a dataset's boxes (the L1RR paper customises them to remote-sensing
targets, Table 1).

The measure is YOLOv5's: a box and an anchor fit when neither's width nor height exceeds the
other's by more than ``anchor_t`` (4×); the *best possible recall* (BPR) is the share of boxes
that fit at least one anchor.  Fitting runs k-means on the box sizes (k-means++ start, Lloyd
iterations in log space, so that small and large boxes count alike), then refines the anchors
by random multiplicative mutations that keep improving the mean best-anchor match of the boxes
above the ``1/anchor_t`` threshold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _match(wh: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """[n, k]: for each box and anchor, min over w and h of min(ratio, 1/ratio) (1 = same)."""
    r = wh[:, None, :] / anchors[None, :, :]
    return np.minimum(r, 1 / r).min(2)


def best_possible_recall(wh: np.ndarray, anchors: np.ndarray, anchor_t: float = 4.0) -> float:
    if len(wh) == 0:
        return 1.0
    return float((_match(wh, anchors).max(1) > 1 / anchor_t).mean())


def _fitness(wh: np.ndarray, anchors: np.ndarray, anchor_t: float) -> float:
    best = _match(wh, anchors).max(1)
    return float((best * (best > 1 / anchor_t)).mean())


def kmeans_anchors(wh: np.ndarray, k: int = 9, seed: int = 0, iterations: int = 50
                   ) -> np.ndarray:
    """k-means++ then Lloyd on log(wh); returns ``[k, 2]`` sorted by area."""
    rng = np.random.default_rng(seed)
    x = np.log(np.clip(wh, 1.0, None))
    k = min(k, len(np.unique(x, axis=0)))
    centres = [x[rng.integers(len(x))]]
    for _ in range(1, k):
        d2 = ((x[:, None] - np.array(centres)[None]) ** 2).sum(2).min(1)
        centres.append(x[rng.choice(len(x), p=d2 / d2.sum())] if d2.sum() > 0
                       else x[rng.integers(len(x))])
    c = np.array(centres)
    for _ in range(iterations):
        assign = ((x[:, None] - c[None]) ** 2).sum(2).argmin(1)
        new = np.array([x[assign == j].mean(0) if (assign == j).any() else c[j]
                        for j in range(len(c))])
        if np.allclose(new, c):
            break
        c = new
    anchors = np.exp(c)
    return anchors[np.argsort(anchors.prod(1))]


def evolve_anchors(wh: np.ndarray, anchors: np.ndarray, anchor_t: float = 4.0,
                   generations: int = 300, seed: int = 0) -> np.ndarray:
    """Keep random multiplicative mutations (±10 % scale noise) that raise the fitness."""
    rng = np.random.default_rng(seed)
    best, best_fit = anchors.copy(), _fitness(wh, anchors, anchor_t)
    for _ in range(generations):
        mutation = np.ones_like(best)
        while np.all(mutation == 1):
            mutation = np.where(rng.random(best.shape) < 0.9,
                                np.clip(1 + rng.standard_normal(best.shape) * 0.1, 0.3, 3.0),
                                1.0)
        candidate = np.clip(best * mutation, 2.0, None)
        fit = _fitness(wh, candidate, anchor_t)
        if fit > best_fit:
            best, best_fit = candidate, fit
    return best[np.argsort(best.prod(1))]


@dataclass
class AnchorFit:
    anchors: tuple[tuple[float, ...], ...]     # per level: (w0, h0, w1, h1, w2, h2) in pixels
    bpr_before: float
    bpr_after: float
    boxes: int


def fit_anchors(wh: np.ndarray, current: tuple[tuple[float, ...], ...], anchor_t: float = 4.0,
                seed: int = 0) -> AnchorFit:
    """Anchors for boxes of sizes ``wh`` (pixels at the training image size), as many per level
    as ``current`` has.  Returns ``current`` unchanged when the fit is not better."""
    wh = np.asarray(wh, dtype=np.float64).reshape(-1, 2)
    wh = wh[(wh >= 2.0).all(1)]                    # sub-2-px boxes say nothing about shape
    levels, per_level = len(current), len(current[0]) // 2
    old = np.array(current, dtype=np.float64).reshape(-1, 2)
    before = best_possible_recall(wh, old, anchor_t)
    if len(wh) < levels * per_level:
        return AnchorFit(tuple(tuple(map(float, a)) for a in current), before, before, len(wh))
    new = evolve_anchors(wh, kmeans_anchors(wh, levels * per_level, seed), anchor_t, seed=seed)
    if _fitness(wh, new, anchor_t) <= _fitness(wh, old, anchor_t):
        new = old
    after = best_possible_recall(wh, new, anchor_t)
    rounded = np.round(new, 1).reshape(levels, per_level * 2)
    return AnchorFit(tuple(tuple(float(v) for v in row) for row in rounded), before, after,
                     len(wh))


__all__ = ["AnchorFit", "best_possible_recall", "evolve_anchors", "fit_anchors",
           "kmeans_anchors"]
