"""Feature attention and the feature attention loss (L1RR paper Eq. 1–2).

    FA(D)  = 1/k · Σ_images sum(F ⊙ M)                       (Eq. 1, per detection level)
    LFA    = 1/c · Σ_levels (1 − FA_pruned / FA_sparse)        (Eq. 2, signed)
    LFA⁺   = 1/c · Σ_levels max(0, 1 − FA_pruned / FA_sparse)  (the cut-off)

* **F**, per detection level and grid cell (``mode="confidence"``, the default): the detector's
  target confidence, sigmoid(objectness) × max over classes of sigmoid(class), summed over
  anchors; an anchor-free head (one with ``reg_max``) gives the max class score.  The box
  channels are left out: they sit near 0.5 whatever the image holds and would dilute the
  signal.  ultralytics' Detect returns its class logits flattened over the levels
  (``{"boxes", "scores", "feats"}``, ``feats`` being the maps that entered the head); they are
  split back into the levels' grids.  ``mode="features"`` uses the feature maps entering the
  detection head instead, summed over channels.  ``layers`` names the modules whose outputs are
  read, one per level (their outputs are raw head maps in confidence mode, any feature maps in
  features mode).
* **M**: a cell is 1 when its centre lies inside a ground-truth box (letterboxed pixels), and
  the cell holding each box centre is always 1, so a target smaller than the stride still
  counts.  For an oriented-box detector (a head with an angle branch, ultralytics' OBB) the
  boxes are rotated rectangles: each label's corners (DOTA-style ``class x1 y1 ... x4 y4``)
  are replaced by the smallest rectangle around them, as ultralytics does before training, and
  a cell counts when its centre lies inside that rectangle.  Polygon labels (segmentation)
  and keypoint labels (pose) give their boxes.
* **c**: the levels whose FA on the sparse model is > 0; the others are left out and named.

The maps are read with forward hooks (or from the model's outputs), so the same probe measures
the sparse model, its zero-masked copies and the slim ``GraphModule`` alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
import torch.nn as nn

from .data.labels import min_area_rectangle, targets_per_image
from .errors import GraphpruneError

LFA_MODES = ("confidence", "features")
# what the search's cut-off counts: LFA⁺ (losses of feature attention only) or LFA± (any change:
# a pruned model that grows confident in the boxes has drifted as well, and usually grew
# confident outside them too, which the in-box FA does not see)
LFA_CRITERIA = ("plus", "two-sided")


# -- calibration data ------------------------------------------------------------------------
@dataclass
class CalibrationSet:
    """Letterboxed images (float ``[B, 3, S, S]`` batches in [0, 1]) with their ground-truth
    boxes (per image ``[n, 4]`` x1, y1, x2, y2 in input pixels), kept in memory so that every
    probe of a threshold search sees the same batch.  ``rotated``, for an oriented-box
    detector, holds each box as a rotated rectangle (per image ``[n, 4, 2]`` corners in input
    pixels; ``boxes`` are then their bounds), and M is drawn from those."""

    batches: list[torch.Tensor]
    boxes: list[list[np.ndarray]]
    paths: list[str] = field(default_factory=list)
    rotated: list[list[np.ndarray]] | None = None
    _masks: dict[tuple[int, int, tuple[int, int]], torch.Tensor] = field(
        default_factory=dict, repr=False)            # M per (batch, image, grid), computed once

    def mask(self, batch: int, image: int, grid: tuple[int, int]) -> torch.Tensor:
        key = (batch, image, grid)
        if key not in self._masks:
            shapes = self.rotated if self.rotated is not None else self.boxes
            self._masks[key] = target_mask(shapes[batch][image], grid, self.image_size)
        return self._masks[key]

    def __len__(self) -> int:
        return sum(len(b) for b in self.batches)

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.batches[0].shape[2:]) if self.batches else (0, 0)

    def __iter__(self):
        return iter(zip(self.batches, self.boxes))

    def _locate(self, index: int) -> tuple[int, int]:
        for b, batch in enumerate(self.batches):
            if index < len(batch):
                return b, index
            index -= len(batch)
        raise IndexError(index)

    def image(self, index: int) -> np.ndarray:
        """Image ``index`` as ``uint8 [H, W, 3]`` (for plots)."""
        b, i = self._locate(index)
        return (self.batches[b][i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)

    def boxes_of(self, index: int) -> np.ndarray:
        b, i = self._locate(index)
        return self.boxes[b][i]

    @classmethod
    def from_images(cls, images: torch.Tensor, boxes: Sequence[np.ndarray] | None,
                    batch_size: int = 16, rotated: Sequence[np.ndarray] | None = None
                    ) -> "CalibrationSet":
        """From ``images`` (``[N, 3, S, S]``, uint8 or float in [0, 1]) with, per image, boxes
        (``[n, 4]`` xyxy input pixels) or ``rotated`` rectangles (``[n, 4, 2]`` corners in
        input pixels, in order around the rectangle; ``boxes`` may then be ``None``)."""
        if images.dtype == torch.uint8:
            images = images.float() / 255.0
        if rotated is not None:
            rotated = [np.asarray(r, dtype=np.float32).reshape(-1, 4, 2) for r in rotated]
            if boxes is None:
                boxes = [np.concatenate([r.min(1), r.max(1)], 1) for r in rotated]
            if len(rotated) != len(images):
                raise GraphpruneError(f"{len(images)} calibration images but {len(rotated)} "
                                      "rotated box lists")
        if boxes is None:
            raise GraphpruneError("calibration images need their boxes or rotated boxes")
        boxes = [np.asarray(b, dtype=np.float32).reshape(-1, 4) for b in boxes]
        if len(boxes) != len(images):
            raise GraphpruneError(f"{len(images)} calibration images but {len(boxes)} box lists")
        starts = range(0, len(images), batch_size)
        return cls([images[i:i + batch_size] for i in starts],
                   [boxes[i:i + batch_size] for i in starts],
                   rotated=None if rotated is None else [rotated[i:i + batch_size]
                                                         for i in starts])

    @classmethod
    def from_dataset(cls, dataset, count: int = 64, batch_size: int = 16,
                     rotated: bool = False) -> "CalibrationSet":
        """``count`` images spread evenly over a ``graphprune.data.DetectionDataset`` (without
        augmentation), in file order, so the set does not depend on a seed.  ``rotated``: the
        boxes are oriented (an OBB detector's), read from the labels' corners (see
        :func:`label_rectangles`)."""
        total = len(dataset)
        if total == 0:
            raise GraphpruneError("the calibration split holds no images",
                                  hint="check the val entry of data.yaml")
        picks = np.unique(np.linspace(0, total - 1, min(count, total)).round().astype(int))
        images, boxes, rectangles, paths = [], [], [], []
        index = {p: k for k, p in enumerate(dataset.images)} if rotated else {}
        for i in picks:
            image, targets, path, meta = dataset[int(i)]
            s_h, s_w = image.shape[1:]
            t = targets.numpy()
            cx, cy, w, h = t[:, 2] * s_w, t[:, 3] * s_h, t[:, 4] * s_w, t[:, 5] * s_h
            images.append(image)
            boxes.append(np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
                         .astype(np.float32))
            if rotated:
                if meta["ratio"] is None:
                    raise GraphpruneError("rotated calibration boxes need a dataset without "
                                          "augmentation", hint="build it with augment=False")
                j = index.get(Path(path), int(i))       # the image loaded
                corners = label_rectangles(dataset.labels[j], dataset.outlines[j], meta["orig"])
                rectangles.append(corners * meta["ratio"] + np.asarray(meta["pad"]))
            paths.append(str(path))
        out = cls.from_images(torch.stack(images), None if rotated else boxes, batch_size,
                              rotated=rectangles if rotated else None)
        out.paths = paths
        return out


def _as_calibration(data: Any) -> Iterable[tuple[torch.Tensor, list[np.ndarray]]]:
    """Accept a CalibrationSet, a graphprune loader (images, labels, paths, meta) or pairs of
    (images, per-image boxes)."""
    if isinstance(data, CalibrationSet):
        yield from data
        return
    for batch in data:
        images, second = batch[0], batch[1]
        if images.dtype == torch.uint8:
            images = images.float() / 255.0
        if isinstance(second, torch.Tensor) and second.ndim == 2 and second.shape[-1] == 6:
            second = [t[:, 1:5] for t in targets_per_image(second, len(images),
                                                           images.shape[2:])]
        yield images, [np.asarray(b, dtype=np.float32).reshape(-1, 4) for b in second]


# -- the mask M ------------------------------------------------------------------------------
def is_oriented_head(model: nn.Module) -> bool:
    """Whether the model's detection head predicts rotated boxes: it has an angle branch
    (ultralytics' OBB heads keep its width in ``ne``)."""
    head = find_head(model)
    ne = getattr(head[1], "ne", None) if head else None
    return isinstance(ne, int) and not isinstance(ne, bool) and ne > 0


def label_rectangles(labels: np.ndarray, outlines: Sequence[np.ndarray | None],
                     size: tuple[int, int]) -> np.ndarray:
    """Rotated rectangles (``[n, 4, 2]`` corners, pixels of the ``size`` = (h, w) image) of
    one image's labels: the smallest rectangle around each polygon outline, or the box's own
    corners for a plain ``class cx cy w h`` line.  The rectangle is fitted in pixels, so that
    a non-square image does not skew its angles."""
    h, w = size
    out = []
    for label, outline in zip(np.asarray(labels, dtype=np.float64).reshape(-1, 5), outlines):
        if outline is None:
            _, cx, cy, bw, bh = label
            corners = np.array([[cx - bw / 2, cy - bh / 2], [cx + bw / 2, cy - bh / 2],
                                [cx + bw / 2, cy + bh / 2], [cx - bw / 2, cy + bh / 2]])
            out.append(corners * (w, h))
        else:
            out.append(min_area_rectangle(np.asarray(outline, dtype=np.float64) * (w, h)))
    return np.array(out, dtype=np.float64).reshape(-1, 4, 2)


def _centre_cell(x: float, y: float, sx: float, sy: float, gh: int, gw: int) -> tuple[int, int]:
    return (int(np.clip(np.floor(y / sy), 0, gh - 1)), int(np.clip(np.floor(x / sx), 0, gw - 1)))


def target_mask(boxes: np.ndarray, grid: tuple[int, int], image_size: tuple[int, int]
                ) -> torch.Tensor:
    """M for one image and level: bool ``[H, W]``; ``boxes`` ``[n, 4]`` xyxy input pixels, or
    rotated rectangles ``[n, 4, 2]`` (corners in input pixels, in order around each one)."""
    gh, gw = grid
    sy, sx = image_size[0] / gh, image_size[1] / gw
    mask = np.zeros((gh, gw), dtype=bool)
    cy = (np.arange(gh) + 0.5) * sy
    cx = (np.arange(gw) + 0.5) * sx
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.ndim == 3:
        return _rotated_mask(boxes, mask, cx, cy, sx, sy)
    for x1, y1, x2, y2 in boxes.reshape(-1, 4):
        rows = (cy >= y1) & (cy <= y2)
        cols = (cx >= x1) & (cx <= x2)
        mask |= rows[:, None] & cols[None, :]
        # the cell holding the box centre, so a target smaller than the stride still counts
        mask[_centre_cell((x1 + x2) / 2, (y1 + y2) / 2, sx, sy, gh, gw)] = True
    return torch.from_numpy(mask)


def _rotated_mask(rectangles: np.ndarray, mask: np.ndarray, cx: np.ndarray, cy: np.ndarray,
                  sx: float, sy: float) -> torch.Tensor:
    """``mask`` with the cells whose centre lies inside (or on the edge of) a convex
    quadrilateral set, and each quadrilateral's centre cell."""
    gh, gw = mask.shape
    x, y = np.meshgrid(cx, cy)
    for quad in rectangles.reshape(-1, 4, 2):
        centre = quad.mean(0)
        mask[_centre_cell(centre[0], centre[1], sx, sy, gh, gw)] = True
        edges = np.roll(quad, -1, axis=0) - quad
        area = 0.5 * abs(float(np.sum(quad[:, 0] * np.roll(quad[:, 1], -1)
                                      - np.roll(quad[:, 0], -1) * quad[:, 1])))
        if area <= 1e-9 * max(1.0, float((edges ** 2).sum())):
            continue          # a flat rectangle (a line or a point): its centre cell only
        # the cross product of each side with the way to the point: one sign all round inside,
        # whichever way the corners turn
        cross = [(b[0] - a[0]) * (y - a[1]) - (b[1] - a[1]) * (x - a[0])
                 for a, b in zip(quad, np.roll(quad, -1, axis=0))]
        scale = 1e-9 * max(1.0, float(np.abs(quad).max()) ** 2)
        mask |= np.all([c >= -scale for c in cross], 0) | np.all([c <= scale for c in cross], 0)
    return torch.from_numpy(mask)


# -- reading F -------------------------------------------------------------------------------
def find_head(model: nn.Module) -> tuple[str, nn.Module] | None:
    """The detection head: the last module with an integer ``nc`` and either anchors
    (``na``, ``no``) or an anchor-free ``reg_max``."""
    found = None
    for name, m in model.named_modules():
        if isinstance(getattr(m, "nc", None), int) and (
                isinstance(getattr(m, "na", None), int) and isinstance(getattr(m, "no", None), int)
                or hasattr(m, "reg_max")):
            found = (name, m)
    return found


def confidence_map(raw: torch.Tensor, head: nn.Module | None = None) -> torch.Tensor:
    """F of one level from the head's raw output: ``[B, H, W]``.

    ``raw`` is ``[B, na, H, W, no]`` (YOLOv5 layout: x, y, w, h, objectness, classes...) or a
    ``[B, C, H, W]`` map, read with the head's ``na``/``no`` (anchor-based) or as its last
    ``nc`` channels (anchor-free, ``reg_max``)."""
    raw = raw.float()
    if raw.ndim == 4:
        if head is None:
            raise GraphpruneError(f"a {tuple(raw.shape)} head map needs the detection head's "
                                  "layout, and no module with nc/na/no or reg_max was found",
                                  hint="use --lfa-mode features")
        if hasattr(head, "reg_max"):
            return raw[:, -head.nc:].sigmoid().amax(1)
        b, c, h, w = raw.shape
        if c != head.na * head.no:
            raise GraphpruneError(f"a head map with {c} channels is not {head.na} anchors × "
                                  f"{head.no} outputs", hint="use --lfa-mode features, or "
                                  "name the head's output convolutions with --lfa-layers")
        raw = raw.view(b, head.na, head.no, h, w).permute(0, 1, 3, 4, 2)
    if raw.ndim != 5 or raw.shape[-1] < 5:
        raise GraphpruneError(f"cannot read target confidence from a {tuple(raw.shape)} output",
                              hint="use --lfa-mode features")
    conf = raw[..., 4].sigmoid()
    if raw.shape[-1] > 5:
        conf = conf * raw[..., 5:].sigmoid().amax(-1)
    return conf.sum(1)


def _first_dict(output: Any, keys: tuple[str, ...]) -> dict | None:
    """The first dict in ``output`` (depth first) that has every one of ``keys``."""
    if isinstance(output, dict):
        if all(k in output for k in keys):
            return output
        items = list(output.values())
    elif isinstance(output, (list, tuple)):
        items = list(output)
    else:
        return None
    for item in items:
        found = _first_dict(item, keys)
        if found is not None:
            return found
    return None


def _flattened_levels(output: Any, head: nn.Module | None) -> list[torch.Tensor]:
    """Per-level class logits ``[B, nc, H, W]`` from an ultralytics Detect output: ``(y,
    {"boxes": [B, 4·reg_max, N], "scores": [B, nc, N], "feats": [maps]})``, or for a head with
    a one-to-one branch ``(y, {"one2many": {...}, "one2one": {...}})``, read from the branch the
    head infers with.  The levels are ``scores`` split by the grids of ``feats``."""
    if head is None or not hasattr(head, "reg_max"):
        return []
    branches = _first_dict(output, ("one2many", "one2one"))
    if branches is not None:
        output = branches["one2one" if getattr(head, "end2end", False) else "one2many"]
    preds = _first_dict(output, ("scores", "feats"))
    if preds is None:
        return []
    scores, feats = preds["scores"], preds["feats"]
    if not (isinstance(scores, torch.Tensor) and scores.ndim == 3
            and isinstance(feats, (list, tuple))
            and all(isinstance(f, torch.Tensor) and f.ndim == 4 for f in feats)):
        return []
    sizes = [f.shape[-2] * f.shape[-1] for f in feats]
    if sum(sizes) != scores.shape[-1]:
        raise GraphpruneError(f"the head's scores cover {scores.shape[-1]} cells but its "
                              f"levels {[tuple(f.shape[-2:]) for f in feats]} hold {sum(sizes)}",
                              hint="use --lfa-mode features")
    return [s.reshape(s.shape[0], s.shape[1], *f.shape[-2:])
            for s, f in zip(scores.split(sizes, dim=-1), feats)]


def _head_maps_from_outputs(output: Any, head: nn.Module | None = None) -> list[torch.Tensor]:
    """The per-level raw maps in a detector's eval output: ultralytics' flattened scores (see
    :func:`_flattened_levels`), else YOLOv5-style ``(pred, [maps])`` (older ultralytics heads
    return the same); the first list of ≥ 4-D tensors found."""
    levels = _flattened_levels(output, head)
    if levels:
        return levels
    if isinstance(output, (list, tuple)):
        if output and all(isinstance(t, torch.Tensor) and t.ndim >= 4 for t in output):
            return list(output)
        for item in output:
            found = _head_maps_from_outputs(item)
            if found:
                return found
    if isinstance(output, dict):
        for item in output.values():
            found = _head_maps_from_outputs(item)
            if found:
                return found
    return []


class AttentionReader:
    """Reads F per level from a model: ``reader(model, images) -> [F_level [B, H, W], ...]``."""

    def __init__(self, mode: str = "confidence", layers: Sequence[str] | None = None):
        if mode not in LFA_MODES:
            raise GraphpruneError(f"lfa mode must be one of {', '.join(LFA_MODES)}, got {mode!r}")
        self.mode = mode
        self.layers = list(layers) if layers else None

    def describe(self) -> str:
        where = ", ".join(self.layers) if self.layers else (
            "the head's outputs" if self.mode == "confidence" else "the head's inputs")
        return f"{self.mode} from {where}"

    @torch.no_grad()
    def __call__(self, model: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
        head = find_head(model)
        head_module = head[1] if head else None
        captured: list[Any] = []
        handles = []
        modules = dict(model.named_modules())
        try:
            if self.layers:
                for name in self.layers:
                    if name not in modules:
                        raise GraphpruneError(f"--lfa-layers names {name!r}, which the model "
                                              "does not have",
                                              hint="give module names as in "
                                                   "model.named_modules()")
                    handles.append(modules[name].register_forward_hook(
                        lambda _m, _i, out: captured.append(out)))
            elif self.mode == "features":
                if head_module is None:
                    raise GraphpruneError("no detection head found to read its input features",
                                          hint="name the feature layers with --lfa-layers")
                # a copy of the list: heads such as YOLOv5's Detect overwrite it in place
                handles.append(head_module.register_forward_pre_hook(
                    lambda _m, args: captured.append(
                        list(args[0]) if isinstance(args[0], (list, tuple)) else args[0])))
            output = model(images)
        finally:
            for h in handles:
                h.remove()
        if self.layers:
            maps = [c[0] if isinstance(c, (list, tuple)) else c for c in captured]
        elif self.mode == "features":
            maps = list(captured[0]) if isinstance(captured[0], (list, tuple)) else [captured[0]]
        else:
            maps = _head_maps_from_outputs(output, head_module)
            if not maps:
                raise GraphpruneError("the model's outputs hold no per-level detection maps",
                                      hint="name the head's output layers with --lfa-layers, "
                                           "or use --lfa-mode features")
        if self.mode == "features":
            return [m.float().sum(1) for m in maps]
        return [confidence_map(m, head_module) for m in maps]


# -- Eq. 1 and 2 -----------------------------------------------------------------------------
@dataclass
class FeatureAttention:
    """FA per detection level (Eq. 1), and the first few images' F maps for the heatmaps."""

    levels: list[float]
    images: int
    maps: list[list[np.ndarray]] = field(default_factory=list)    # [image][level] -> [H, W]


def feature_attention(model: nn.Module, data: Any, layers: Sequence[str] | None = None, *,
                      mode: str = "confidence", reader: AttentionReader | None = None,
                      keep_maps: int = 0, device: torch.device | str | None = None
                      ) -> FeatureAttention:
    """FA per detection level (Eq. 1): the mean over images of sum(F ⊙ M).

    ``data``: a :class:`CalibrationSet`, a graphprune loader, or pairs of (images, per-image
    xyxy boxes).  ``keep_maps`` keeps the F maps of the first images (for heatmaps)."""
    reader = reader or AttentionReader(mode, layers)
    device = torch.device(device) if device is not None else \
        next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    sums: list[float] | None = None
    count, kept = 0, []
    cached = data if isinstance(data, CalibrationSet) else None
    try:
        for b, (images, boxes) in enumerate(_as_calibration(data)):
            maps = reader(model, images.to(device))
            if sums is None:
                sums = [0.0] * len(maps)
            elif len(maps) != len(sums):
                raise GraphpruneError(f"the model gave {len(maps)} levels, earlier {len(sums)}")
            size = tuple(images.shape[2:])
            for level, f in enumerate(maps):
                f = f.detach().cpu().double()
                grid = tuple(f.shape[1:])
                for i in range(len(images)):
                    m = cached.mask(b, i, grid) if cached is not None else \
                        target_mask(boxes[i], grid, size)
                    sums[level] += float((f[i] * m).sum())
            for i in range(len(images)):
                if len(kept) < keep_maps:
                    kept.append([f[i].detach().cpu().float().numpy() for f in maps])
            count += len(images)
    finally:
        model.train(was_training)
    if not count:
        raise GraphpruneError("no calibration images to measure feature attention on")
    return FeatureAttention([s / count for s in sums], count, kept)


@dataclass
class LFA:
    """The feature attention loss between a pruned and the sparse model (Eq. 2)."""

    per_level: list[float | None]        # 1 − FA_p / FA_s; None where FA_s = 0 (left out)
    signed: float                        # Eq. 2 over the levels kept
    plus: float                          # LFA⁺: losses only, the default cut-off
    skipped: list[int]                   # levels left out because FA_sparse = 0
    two_sided: float = 0.0               # LFA±: |1 − FA_p / FA_s|, gains count as changes too

    def value(self, criterion: str = "plus") -> float:
        """The figure a threshold search compares with its target: LFA⁺ (``"plus"``) or LFA±
        (``"two-sided"``)."""
        if criterion not in LFA_CRITERIA:
            raise GraphpruneError(f"the LFA criterion must be one of {', '.join(LFA_CRITERIA)}"
                                  f", got {criterion!r}")
        return self.plus if criterion == "plus" else self.two_sided

    def as_dict(self) -> dict[str, Any]:
        return {"lfa_plus": self.plus, "lfa_signed": self.signed, "lfa_two_sided": self.two_sided,
                "per_level": self.per_level, "levels_skipped": self.skipped}


def lfa(fa_pruned: FeatureAttention | Sequence[float],
        fa_sparse: FeatureAttention | Sequence[float]) -> LFA:
    """Eq. 2, signed and as LFA⁺ (which the threshold search compares with the target)."""
    p = fa_pruned.levels if isinstance(fa_pruned, FeatureAttention) else list(fa_pruned)
    s = fa_sparse.levels if isinstance(fa_sparse, FeatureAttention) else list(fa_sparse)
    if len(p) != len(s):
        raise GraphpruneError(f"the pruned model has {len(p)} detection levels, the sparse "
                              f"model {len(s)}")
    per_level: list[float | None] = []
    skipped = []
    for k, (fp, fs) in enumerate(zip(p, s)):
        if fs > 0:
            per_level.append(1.0 - fp / fs)
        else:
            per_level.append(None)
            skipped.append(k)
    used = [v for v in per_level if v is not None]
    if not used:
        raise GraphpruneError("the sparse model has no feature attention on any level "
                              "(FA = 0): no box of the calibration images is seen",
                              hint="check the calibration labels, or use --lfa-mode features")
    return LFA(per_level, float(np.mean(used)), float(np.mean([max(0.0, v) for v in used])),
               skipped, float(np.mean([abs(v) for v in used])))


__all__ = ["LFA", "LFA_CRITERIA", "LFA_MODES", "AttentionReader", "CalibrationSet", "FeatureAttention",
           "confidence_map", "feature_attention", "find_head", "is_oriented_head",
           "label_rectangles", "lfa", "target_mask"]
