"""A synthetic remote-sensing detection task: small top-view targets on cluttered ground.

Three classes told apart by shape alone (their colours are random): an aircraft (fuselage,
swept wings, tail plane), a ship (long hull with a pointed bow, a bridge, sometimes a wake) and
a storage tank (a ringed disc).  Targets are 10–48 px on 256 × 256 images, 3–12 an image, at
any rotation, some touching or partly covering one another, with shadows from one sun direction.
The ground has smooth colour variation, fields, roads, tree clumps and buildings (unlabelled
blocks of any colour with two-tone roofs and shadows) and pixel noise.  Every target contrasts
with the ground around it, so the task is learnable by a small detector in minutes, yet the
clutter makes "bright blob" not enough.

Boxes are the axis-aligned bounds of each target's drawn outline (shadows and wakes excluded).
Everything follows from the seed: image ``i`` of a split uses ``default_rng([seed, split, i])``,
so a split's images do not depend on the other split's size.

The same images label every ultralytics task (``task``): ``detect`` (boxes), ``obb`` (the
smallest rotated rectangle around each outline, as DOTA-style corners ``class x1 y1 ... x4
y4``), ``segment`` (the outline's convex hull as a polygon) and ``pose`` (the box and three
keypoints along the target's long axis, nose, centre and tail, each ``x y 2``; data.yaml gets
``kpt_shape: [3, 3]``).  The images do not depend on the task.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..errors import GraphpruneError
from .config import ConversionReport, Sample, write_yolo_dataset
from .labels import convex_hull, min_area_rectangle

SYNTHETIC_NAMES = ["aircraft", "ship", "storage_tank"]
EXTENT = {0: (18, 48), 1: (18, 48), 2: (10, 32)}   # px across the target's outline, per class
SHADOW = {0: 0.10, 1: 0.06, 2: 0.22}               # shadow length as a fraction of the extent
MAX_COVERED = 0.3    # a new target may cover at most this share of an earlier one's box
TASKS = ("detect", "obb", "segment", "pose")
# nose, centre and tail on the target's long axis, in shape units (outlines span about 1)
KEYPOINTS = np.array([(0.5, 0.0), (0.0, 0.0), (-0.5, 0.0)])
POSE_YAML = {"kpt_shape": [len(KEYPOINTS), 3], "flip_idx": list(range(len(KEYPOINTS)))}


def render_image(rng: np.random.Generator | int, size: int = 256
                 ) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic image: ``(uint8 [size, size, 3] RGB, [n, 5] float32 = class, x1, y1, x2,
    y2 pixels)``.  ``rng`` is a generator or a seed."""
    pixels, labels, _ = render_scene(rng, size)
    return pixels, labels


def render_scene(rng: np.random.Generator | int, size: int = 256
                 ) -> tuple[np.ndarray, np.ndarray, list["_Target"]]:
    """:func:`render_image` with the targets drawn (their posed outlines and keypoints)."""
    rng = np.random.default_rng(rng)
    scale = size / 256
    sun = rng.uniform(0, 2 * math.pi)
    targets = _place_targets(rng, size, scale)
    img = _ground(rng, size)
    draw = ImageDraw.Draw(img)
    _roads(draw, rng, size, scale)
    boxes = np.array([t.box for t in targets], dtype=np.float32).reshape(-1, 4)
    _clutter(draw, rng, size, scale, boxes, sun)
    ground = np.asarray(img)
    for target in targets:
        _draw_target(draw, rng, ground, target, sun)
    img = img.filter(ImageFilter.GaussianBlur(0.5))
    noisy = np.asarray(img, np.float32) + rng.uniform(2, 7) * rng.standard_normal(
        (size, size, 3), dtype=np.float32)
    labels = np.column_stack([[t.cls for t in targets], boxes]).astype(np.float32)
    return np.clip(noisy, 0, 255).astype(np.uint8), labels.reshape(-1, 5), targets


# -- target shapes, in units where the outline spans about 1 -------------------------------
# Each shape is a list of (polygon, tier): tier 0 is the outline, drawn in the target's colour
# and casting the shadow; tier k is drawn k shades darker or lighter (a ship's bridge, a tank's
# roof rings).
Shape = list[tuple[np.ndarray, int]]


def _aircraft(rng: np.random.Generator) -> Shape:
    body = rng.uniform(0.035, 0.06)                       # half the fuselage width
    span = rng.uniform(0.38, 0.48)                        # half the wingspan
    root = rng.uniform(0.0, 0.12)                         # wing root's leading edge
    sweep = span * math.tan(math.radians(rng.uniform(12, 35)))
    chord = rng.uniform(0.14, 0.22)
    tail = span * rng.uniform(0.3, 0.45)
    fuselage = [(0.5, 0), (0.43, body), (-0.45, body * 0.7), (-0.5, 0),
                (-0.45, -body * 0.7), (0.43, -body)]
    wing = [(root, body), (root - sweep, span), (root - sweep - chord * 0.4, span),
            (root - chord, body)]
    plane = [(-0.33, body), (-0.44, tail), (-0.5, tail), (-0.47, body)]
    return [(np.array(fuselage), 0), *_mirrored(wing), *_mirrored(plane)]


def _ship(rng: np.random.Generator) -> Shape:
    half = rng.uniform(0.09, 0.13)                        # half the beam: 4–5.5 : 1 hulls
    bow = rng.uniform(0.22, 0.32)                         # length of the pointed bow
    hull = [(0.5, 0), (0.5 - bow, half), (-0.46, half), (-0.5, half * 0.5),
            (-0.5, -half * 0.5), (-0.46, -half), (0.5 - bow, -half)]
    bridge = _rectangle(-0.4, -0.22, half * 0.65)
    return [(np.array(hull), 0), (bridge, 1)]


def _tank(rng: np.random.Generator) -> Shape:
    roof = rng.uniform(0.3, 0.4)
    return [(_circle(0.5), 0), (_circle(roof), 1), (_circle(roof * rng.uniform(0.15, 0.3)), 2)]


SHAPES = {0: _aircraft, 1: _ship, 2: _tank}


def _mirrored(points: list[tuple[float, float]]) -> Shape:
    half = np.array(points, dtype=np.float64)
    return [(half, 0), (half * [1, -1], 0)]


def _rectangle(x1: float, x2: float, half_height: float) -> np.ndarray:
    return np.array([(x1, -half_height), (x2, -half_height), (x2, half_height),
                     (x1, half_height)])


def _circle(radius: float, vertices: int = 24) -> np.ndarray:
    angle = np.linspace(0, 2 * math.pi, vertices, endpoint=False)
    return radius * np.column_stack([np.cos(angle), np.sin(angle)])


def _pose(parts: list[np.ndarray], extent: float, angle: float, centre: np.ndarray,
          points: np.ndarray | None = None) -> list[np.ndarray]:
    """Scale ``parts`` so the outline spans ``extent`` px, rotate by ``angle``, move to
    ``centre``; ``points`` (``[k, 2]``, shape units), when given, are moved with them and
    returned last."""
    radius = max(float(np.hypot(*p.T).max()) for p in parts)
    c, s = math.cos(angle), math.sin(angle)
    turn = np.array([[c, s], [-s, c]]) * (extent / (2 * radius))
    return [p @ turn + centre for p in parts + ([] if points is None else [points])]


def _bounds(parts: list[np.ndarray]) -> np.ndarray:
    points = np.concatenate(parts)
    return np.concatenate([points.min(0), points.max(0)])


# -- placement ----------------------------------------------------------------------------
@dataclass
class _Target:
    cls: int
    parts: list[np.ndarray]      # posed polygons, in pixels
    tiers: list[int]
    box: np.ndarray              # x1, y1, x2, y2 of the parts
    keypoints: np.ndarray        # [3, 2] nose, centre, tail in pixels

    @property
    def outline(self) -> list[np.ndarray]:
        return [p for p, tier in zip(self.parts, self.tiers) if tier == 0]


def _place_targets(rng: np.random.Generator, size: int, scale: float) -> list[_Target]:
    """3–12 posed targets inside the image; some touch an earlier one and none covers more
    than ``MAX_COVERED`` of an earlier one's box."""
    wanted, targets = int(rng.integers(3, 13)), []
    for _ in range(wanted * 20):
        if len(targets) == wanted:
            break
        cls = int(rng.integers(len(SHAPES)))
        extent = rng.uniform(*EXTENT[cls]) * scale
        near = targets[int(rng.integers(len(targets)))].box \
            if targets and rng.random() < 0.3 else None
        polygons, tiers = zip(*SHAPES[cls](rng))
        *parts, keypoints = _pose(list(polygons), extent, rng.uniform(0, 2 * math.pi),
                                  _centre(rng, size, extent, near), KEYPOINTS)
        box = _bounds(parts)
        if box.min() >= 1 and box.max() <= size - 1 and _fits(box, [t.box for t in targets]):
            targets.append(_Target(cls, parts, list(tiers), box, keypoints))
    return targets


def _centre(rng: np.random.Generator, size: int, extent: float, near: np.ndarray | None
            ) -> np.ndarray:
    """A random centre: anywhere, or just touching the box ``near``."""
    if near is None:
        return rng.uniform(extent / 2, size - extent / 2, 2)
    direction = rng.uniform(0, 2 * math.pi)
    reach = (max(near[2:] - near[:2]) + extent) / 2 * rng.uniform(0.7, 0.95)
    return (near[:2] + near[2:]) / 2 + reach * np.array([math.cos(direction),
                                                        math.sin(direction)])


def _fits(box: np.ndarray, others: list[np.ndarray]) -> bool:
    for other in others:
        inter = np.clip(np.minimum(box[2:], other[2:]) - np.maximum(box[:2], other[:2]), 0,
                        None).prod()
        if inter > MAX_COVERED * min(_area(other), _area(box)):
            return False
    return True


def _area(box: np.ndarray) -> float:
    return float((box[2:] - box[:2]).prod())


# -- drawing ------------------------------------------------------------------------------
def _ground(rng: np.random.Generator, size: int) -> Image.Image:
    """Base colour, smooth large-scale variation and a few fields of other tones."""
    base = np.array(colorsys.hsv_to_rgb(rng.uniform(0.05, 0.4), rng.uniform(0.1, 0.5),
                                        rng.uniform(0.25, 0.75))) * 255
    # brightness varies more than hue, as on real ground
    coarse = base + rng.uniform(-30, 30, (6, 6, 1)) + rng.uniform(-8, 8, (6, 6, 3))
    img = Image.fromarray(np.clip(coarse, 0, 255).astype(np.uint8)).resize(
        (size, size), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(1, 6))):
        corner = rng.uniform(-size / 4, size, 2)
        field = corner + rng.uniform(size / 6, size / 2, (4, 2)) * [[0, 0], [1, 0], [1, 1],
                                                                     [0, 1]]
        tone = np.clip(base + rng.uniform(-35, 35, 3), 0, 255)
        draw.polygon([tuple(p) for p in field], fill=tuple(int(v) for v in tone))
    return img


def _roads(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int, scale: float
           ) -> None:
    for _ in range(int(rng.integers(0, 4))):
        ends = rng.uniform(0, size, (2, 2))
        ends[:, int(rng.integers(2))] = [0, size]        # run edge to edge
        grey = int(rng.uniform(80, 170))
        draw.line([tuple(p) for p in ends], fill=(grey,) * 3,
                  width=max(2, int(rng.uniform(3, 9) * scale)))


def _clutter(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int, scale: float,
             targets: np.ndarray, sun: float) -> None:
    """Unlabelled buildings and tree clumps, kept clear of the targets' boxes."""
    keep_clear = np.concatenate([targets[:, :2] - 3, targets[:, 2:] + 3], axis=1)
    grid = rng.uniform(0, math.pi / 2)               # buildings share the street grid's angle
    for _ in range(int(rng.integers(3, 14))):
        _building(draw, rng, size, scale, keep_clear, grid, sun)
    for _ in range(int(rng.integers(0, 6))):
        _trees(draw, rng, size, scale, keep_clear)


def _building(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int, scale: float,
              keep_clear: np.ndarray, grid: float, sun: float) -> None:
    """A squarish block with a two-tone gable roof and a shadow: as large and as bright as a
    target, but of another shape."""
    extent = rng.uniform(10, 40) * scale
    half = rng.uniform(0.3, 0.5)
    roof = [_rectangle(-0.5, 0.5, half), np.array([(-0.5, 0), (0.5, 0), (0.5, half),
                                                   (-0.5, half)])]
    parts = _pose(roof, extent, grid + rng.choice([0, math.pi / 2]), rng.uniform(0, size, 2))
    if _clear(_bounds(parts), keep_clear):
        colour = np.array(colorsys.hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0, 0.6),
                                              rng.uniform(0.15, 0.95))) * 255
        _polygons(draw, _shifted(parts[:1], sun, 0.15 * extent), colour * 0.3)
        _polygons(draw, parts[:1], colour)
        _polygons(draw, parts[1:], colour * 0.75)


def _trees(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int, scale: float,
           keep_clear: np.ndarray) -> None:
    """A clump of small dark-green discs."""
    blobs = rng.uniform(0, size, 2) + rng.normal(0, 4 * scale, (int(rng.integers(3, 9)), 2))
    radius = 2.5 * scale
    if _clear(np.concatenate([blobs.min(0) - radius, blobs.max(0) + radius]), keep_clear):
        green = (int(rng.uniform(20, 60)), int(rng.uniform(50, 100)), int(rng.uniform(20, 50)))
        for x, y in blobs:
            r = radius * rng.uniform(0.6, 1.2)
            draw.ellipse([x - r, y - r, x + r, y + r], fill=green)


def _clear(box: np.ndarray, others: np.ndarray) -> bool:
    return not ((box[:2] < others[:, 2:]) & (box[2:] > others[:, :2])).all(1).any()


def _draw_target(draw: ImageDraw.ImageDraw, rng: np.random.Generator, ground: np.ndarray,
                 target: _Target, sun: float) -> None:
    """Shadow, wake (ships, sometimes), then the parts in a colour that contrasts with the
    ground under the box, each tier a shade darker or lighter."""
    x1, y1, x2, y2 = target.box.astype(int)
    under = ground[y1:y2 + 1, x1:x2 + 1].reshape(-1, 3).mean(0)
    extent = max(target.box[2:] - target.box[:2])
    _polygons(draw, _shifted(target.outline, sun, SHADOW[target.cls] * extent), under * 0.45)
    if target.cls == 1 and rng.random() < 0.7:
        _polygons(draw, [_wake(target.parts[0], rng.uniform(0.3, 0.7))],
                  np.minimum(under + 25, 255))
    colour = _contrasting(rng, float(under.mean()))
    shade = rng.choice([0.7, 1.3])
    for part, tier in zip(target.parts, target.tiers):
        _polygons(draw, [part], np.clip(colour * shade ** tier, 0, 255))


def _wake(hull: np.ndarray, length: float) -> np.ndarray:
    """A widening trail behind a posed hull (stern corners are vertices 3 and 4)."""
    stern_a, stern_b, bow = hull[3], hull[4], hull[0]
    back = ((stern_a + stern_b) / 2 - bow) * length
    spread = (stern_a - stern_b) * 0.4
    return np.array([stern_a, stern_b, stern_b + back - spread, stern_a + back + spread])


def _contrasting(rng: np.random.Generator, ground: float) -> np.ndarray:
    """A random hue whose brightness differs from ``ground`` (0–255) by 70–140."""
    value = ground + (1 if ground < 128 else -1) * rng.uniform(70, 140)
    rgb = colorsys.hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0, 0.6),
                              float(np.clip(value, 0, 255)) / 255)
    return np.array(rgb) * 255


def _shifted(parts: list[np.ndarray], sun: float, length: float) -> list[np.ndarray]:
    return [p + length * np.array([math.cos(sun), math.sin(sun)]) for p in parts]


def _polygons(draw: ImageDraw.ImageDraw, parts: list[np.ndarray], colour: np.ndarray) -> None:
    fill = tuple(int(v) for v in colour)
    for part in parts:
        draw.polygon([tuple(p) for p in part], fill=fill)


# -- dataset ------------------------------------------------------------------------------
def label_text(targets: list[_Target], task: str, size: int) -> str | None:
    """The label file of one image's targets for ``task`` (``None`` for ``detect``: boxes are
    written as usual)."""
    if task == "detect":
        return None
    lines = []
    for t in targets:
        outline = np.concatenate(t.outline)
        if task == "obb":
            values = min_area_rectangle(outline).ravel()
        elif task == "segment":
            values = convex_hull(outline).ravel()
        else:
            x1, y1, x2, y2 = t.box
            keypoints = np.column_stack([t.keypoints, np.zeros(len(t.keypoints))])
            values = np.concatenate([[(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1],
                                     keypoints.ravel()])
        normalised = np.clip(np.asarray(values) / size, 0.0, 1.0)
        if task == "pose":
            normalised[6::3] = 2          # visibility: labelled and visible
        lines.append(f"{t.cls} " + " ".join(f"{v:.6f}" for v in normalised) + "\n")
    return "".join(lines)


def _samples(seed: int, split: int, count: int, size: int, prefix: str, task: str = "detect"
             ) -> Iterator[Sample]:
    for i in range(count):
        pixels, boxes, targets = render_scene(np.random.default_rng([seed, split, i]), size)
        yield Sample(f"{prefix}_{i:05d}", boxes, size, size, pixels=pixels,
                     label_text=label_text(targets, task, size))


def write_synthetic_dataset(out: str | Path, n_train: int = 400, n_val: int = 100,
                            seed: int = 0, size: int = 256, overwrite: bool = False,
                            task: str = "detect") -> ConversionReport:
    """Render and write a YOLO-format synthetic dataset at ``out`` (atomically), labelled
    for ``task`` (one of :data:`TASKS`)."""
    if task not in TASKS:
        raise GraphpruneError(f"unknown task {task!r}", hint=f"one of {', '.join(TASKS)}")
    splits = {"train": _samples(seed, 0, n_train, size, "train", task),
              "val": _samples(seed, 1, n_val, size, "val", task)}
    return write_yolo_dataset(out, splits, SYNTHETIC_NAMES, overwrite,
                              yaml_extra=POSE_YAML if task == "pose" else None)


def make_synthetic_dataset(out: str | Path, n_train: int = 400, n_val: int = 100,
                           seed: int = 0, size: int = 256, overwrite: bool = False,
                           task: str = "detect") -> Path:
    """Render and write a synthetic dataset; returns the path of its ``data.yaml``."""
    return write_synthetic_dataset(out, n_train, n_val, seed, size, overwrite, task).data_yaml
