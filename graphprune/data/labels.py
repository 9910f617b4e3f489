"""YOLO label files: parsing that never raises, writing, and box-format conversions.

A YOLO label file has one object a line, ``class cx cy w h``: a 0-based integer class and the
box centre and size normalised by the image width and height (the darknet / ultralytics
convention).  The other ultralytics tasks write other lines, all read here:

* a polygon, ``class x1 y1 x2 y2 ... xn yn`` (n ≥ 3): segmentation outlines, and with n = 4 the
  DOTA-style corners of an oriented box (OBB datasets); the box is the polygon's bounds and the
  points are kept as the object's outline;
* keypoints, ``class cx cy w h`` followed by k × d keypoint values, when the dataset declares
  ``kpt_shape: [k, d]`` (pose datasets); the box is the first four numbers.

Real label files carry mistakes; :func:`parse_yolo_labels` keeps every valid line and
describes every line it skips, so one bad annotation costs one box, never the run.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

TOLERANCE = 1e-3     # normalised coordinates this far outside [0, 1] are clipped, not rejected


KptShape = tuple[int, int] | None      # (keypoints, values per keypoint) of a pose dataset


def parse_yolo_labels(text: str | bytes, num_classes: int, kpt_shape: KptShape = None
                      ) -> tuple[np.ndarray, list[str]]:
    """``([n, 5] float32 = class, cx, cy, w, h normalised, problems)`` of a YOLO label text
    (boxes, polygons or keypoint lines, see the module's docstring).

    Lines with the wrong number of fields, non-numbers, nan/inf, a class that is not an integer
    in ``[0, num_classes)``, a non-positive width or height, or a box or polygon reaching more
    than ``TOLERANCE`` outside the image are skipped and described in ``problems``; boxes and
    points within the tolerance are clipped to the image.  Blank lines are ignored.
    """
    boxes, _, problems = parse_yolo_shapes(text, num_classes, kpt_shape)
    return boxes, problems


def parse_yolo_shapes(text: str | bytes, num_classes: int, kpt_shape: KptShape = None
                      ) -> tuple[np.ndarray, list[np.ndarray | None], list[str]]:
    """:func:`parse_yolo_labels`, with each kept object's outline: ``[k, 2]`` float32
    normalised points for a polygon line (clipped to the image), ``None`` for a box."""
    boxes, outlines, problems = [], [], []
    for number, line in _numbered_lines(text):
        row, note = _parse_yolo_line(line, num_classes, kpt_shape)
        if note:
            problems.append(f"line {number}: {note}")
        if row:
            boxes.append(row[0])
            outlines.append(row[1])
    return np.array(boxes, dtype=np.float32).reshape(-1, 5), outlines, problems


LineParser = Callable[[str], tuple[list[float] | None, str | None]]


def _numbered_lines(text: str | bytes):
    """``(number, stripped line)`` of every non-blank line; bytes are decoded as UTF-8,
    undecodable bytes replaced."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    for number, line in enumerate(str(text).splitlines(), start=1):
        if line.strip():
            yield number, line.strip()


def parse_lines(text: str | bytes, parse_line: LineParser) -> tuple[np.ndarray, list[str]]:
    """``([n, 5] float32 rows, problems)``: ``parse_line`` of every non-blank, stripped line of
    ``text``; it returns ``(row or None to skip, note or None)`` and each note is kept with its
    line number.  Bytes are decoded as UTF-8, undecodable bytes replaced."""
    rows, problems = [], []
    for number, line in _numbered_lines(text):
        row, note = parse_line(line)
        if note:
            problems.append(f"line {number}: {note}")
        if row:
            rows.append(row)
    return np.array(rows, dtype=np.float32).reshape(-1, 5), problems


def _expected_fields(kpt_shape: KptShape) -> str:
    keypoints = f", 5 + {kpt_shape[0]}·{kpt_shape[1]} (class cx cy w h and the keypoints)" \
        if kpt_shape else ""
    return f"expected 5 (class cx cy w h), 1 + 2n with n ≥ 3 (class and a polygon){keypoints}"


def _parse_yolo_line(line: str, num_classes: int, kpt_shape: KptShape = None
                     ) -> tuple[tuple[list[float], np.ndarray | None] | None, str | None]:
    """``((box, outline or None) or None to skip, note or None)`` of one label line."""
    fields = line.split()
    n = len(fields)
    keypoints = kpt_shape is not None and n == 5 + kpt_shape[0] * kpt_shape[1]
    # a pose dataset's lines are keypoint lines (a value missing is an error, not a polygon)
    polygon = kpt_shape is None and n >= 7 and n % 2 == 1
    if n != 5 and not keypoints and not polygon:
        return None, f"{n} fields, {_expected_fields(kpt_shape)}: {line[:60]!r}"
    try:
        values = [float(f) for f in fields]
    except ValueError:
        return None, f"not a number: {line[:60]!r}"
    if not all(math.isfinite(v) for v in values):
        return None, f"nan or inf: {line[:60]!r}"
    cls = values[0]
    if cls != int(cls) or not 0 <= cls < num_classes:
        return None, f"class {fields[0]} is not an integer in [0, {num_classes})"
    if polygon:
        return _polygon_box(cls, np.array(values[1:], dtype=np.float64).reshape(-1, 2), line)
    box, note = _box(cls, *values[1:5], line)
    return ((box, None) if box else None), note


def _polygon_box(cls: float, points: np.ndarray, line: str
                 ) -> tuple[tuple[list[float], np.ndarray] | None, str | None]:
    if points.min() < -TOLERANCE or points.max() > 1 + TOLERANCE:
        return None, f"polygon reaches outside the image: {line[:60]!r}"
    points = np.clip(points, 0.0, 1.0)
    (x1, y1), (x2, y2) = points.min(0), points.max(0)
    box = np.array([cls, (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dtype=np.float32)
    if not (box[3] > 0 and box[4] > 0):
        return None, f"polygon has no area inside the image: {line[:60]!r}"
    return (box.tolist(), points.astype(np.float32)), None


def _box(cls: float, cx: float, cy: float, w: float, h: float, line: str
         ) -> tuple[list[float] | None, str | None]:
    if w <= 0 or h <= 0:
        return None, f"width or height is not positive: {line[:60]!r}"
    corners = np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
    if corners.min() < -TOLERANCE or corners.max() > 1 + TOLERANCE:
        return None, f"box reaches outside the image: {line[:60]!r}"
    x1, y1, x2, y2 = np.clip(corners, 0.0, 1.0)
    box = np.array([cls, (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dtype=np.float32)
    if not (box[3] > 0 and box[4] > 0):       # as stored: float32, after clipping
        return None, f"box has no area inside the image: {line[:60]!r}"
    return box.tolist(), None


# a label file this large is not a list of boxes (100,000 boxes take about 4 MiB)
MAX_LABEL_BYTES = 16 * 2**20


def read_yolo_labels(path: str | Path, num_classes: int, kpt_shape: KptShape = None
                     ) -> tuple[np.ndarray, list[str]]:
    """:func:`parse_yolo_labels` of a file; a missing or empty file is an image without
    objects, an unreadable one a problem."""
    boxes, _, problems = read_yolo_shapes(path, num_classes, kpt_shape)
    return boxes, problems


def read_yolo_shapes(path: str | Path, num_classes: int, kpt_shape: KptShape = None
                     ) -> tuple[np.ndarray, list[np.ndarray | None], list[str]]:
    """:func:`parse_yolo_shapes` of a file, read as :func:`read_yolo_labels` reads it."""
    path = Path(path)
    empty = np.zeros((0, 5), np.float32)
    try:
        if not path.exists():
            return empty, [], []
        if not path.is_file():                # a FIFO or a device would block or never end
            return empty, [], ["not a regular file; its labels are left out"]
        if path.stat().st_size > MAX_LABEL_BYTES:
            return empty, [], [f"larger than {MAX_LABEL_BYTES // 2**20} MiB; its labels are "
                               f"left out"]
        data = path.read_bytes()
    except OSError as exc:
        return empty, [], [f"cannot read the label file ({exc.strerror})"]
    return parse_yolo_shapes(data, num_classes, kpt_shape)


def write_yolo_labels(path: str | Path, labels: np.ndarray) -> None:
    """Write ``[n, 5]`` class, cx, cy, w, h rows as a YOLO label file (empty for no objects)."""
    lines = [f"{int(c)} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}\n" for c, cx, cy, w, h in labels]
    Path(path).write_text("".join(lines), encoding="utf-8")


def clip_pixel_box(x1: float, y1: float, x2: float, y2: float, width: float, height: float
                   ) -> tuple[list[float] | None, str | None]:
    """``(box, note)``: the corners ordered and clipped to the ``width`` × ``height`` image, or
    ``None`` when no area is left; ``note`` says what was changed (``None`` when nothing)."""
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        return None, "a corner is nan or inf, skipped"
    notes = ["corners reversed, reordered"] if x2 < x1 or y2 < y1 else []
    (x1, x2), (y1, y2) = sorted((x1, x2)), sorted((y1, y2))
    box = [min(max(x1, 0.0), width), min(max(y1, 0.0), height),
           min(max(x2, 0.0), width), min(max(y2, 0.0), height)]
    if box[2] <= box[0] or box[3] <= box[1]:
        return None, "; ".join(notes + [f"no area inside the {width}x{height} image, skipped"])
    if box != [x1, y1, x2, y2]:
        notes.append(f"reaches outside the {width}x{height} image, clipped")
    return box, "; ".join(notes) or None


def xyxy_to_cxcywh(boxes: np.ndarray, width: float, height: float) -> np.ndarray:
    """``[n, 5]`` class, x1, y1, x2, y2 pixels → class, cx, cy, w, h normalised."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 5)
    scale = np.array([width, height])
    out = np.empty_like(boxes)
    out[:, 0] = boxes[:, 0]
    out[:, 1:3] = (boxes[:, 1:3] + boxes[:, 3:5]) / 2 / scale
    out[:, 3:5] = (boxes[:, 3:5] - boxes[:, 1:3]) / scale
    return out


def cxcywh_to_xyxy(labels: np.ndarray, width: float, height: float) -> np.ndarray:
    """``[n, 5]`` class, cx, cy, w, h normalised → class, x1, y1, x2, y2 pixels."""
    labels = np.asarray(labels, dtype=np.float64).reshape(-1, 5)
    scale = np.array([width, height])
    out = np.empty_like(labels)
    out[:, 0] = labels[:, 0]
    out[:, 1:3] = (labels[:, 1:3] - labels[:, 3:5] / 2) * scale
    out[:, 3:5] = (labels[:, 1:3] + labels[:, 3:5] / 2) * scale
    return out


def convex_hull(points: np.ndarray) -> np.ndarray:
    """The convex hull of ``[k, 2]`` points, counter-clockwise (monotone chain); collinear
    points give the two ends."""
    pts = sorted(set(map(tuple, np.asarray(points, dtype=np.float64).reshape(-1, 2))))
    if len(pts) <= 2:
        return np.array(pts, dtype=np.float64).reshape(-1, 2)

    def half(seq):
        chain: list[tuple[float, float]] = []
        for p in seq:
            while len(chain) >= 2 and (
                    (chain[-1][0] - chain[-2][0]) * (p[1] - chain[-2][1])
                    - (chain[-1][1] - chain[-2][1]) * (p[0] - chain[-2][0])) <= 0:
                chain.pop()
            chain.append(p)
        return chain[:-1]

    return np.array(half(pts) + half(pts[::-1]), dtype=np.float64)


def min_area_rectangle(points: np.ndarray) -> np.ndarray:
    """The four corners (``[4, 2]``, in order around it) of the smallest-area rectangle that
    holds ``points`` (``[k, 2]``, pixels): one of its sides lies along an edge of their convex
    hull.  This is the rectangle ultralytics trains an OBB model on (it converts DOTA corners
    with OpenCV's ``minAreaRect``); four corners of a rectangle give that rectangle back."""
    hull = convex_hull(points)
    if len(hull) == 1:
        return np.repeat(hull, 4, axis=0)
    best = None
    for k in range(len(hull)):
        edge = hull[(k + 1) % len(hull)] - hull[k]
        u = edge / np.hypot(*edge)
        v = np.array([-u[1], u[0]])
        a, b = hull @ u, hull @ v
        area = (a.max() - a.min()) * (b.max() - b.min())
        if best is None or area < best[0] - 1e-9 * max(1.0, best[0]):
            best = (area, u, v, a.min(), a.max(), b.min(), b.max())
    _, u, v, a0, a1, b0, b1 = best
    return np.array([a * u + b * v for a, b in ((a0, b0), (a1, b0), (a1, b1), (a0, b1))])


def targets_per_image(labels: torch.Tensor, batch: int, size: Sequence[int]) -> list[np.ndarray]:
    """Batch labels ``[M, 6]`` (image, cls, cx, cy, w, h normalised) as per-image
    ``[n, 5]`` (cls, x1, y1, x2, y2) in input pixels; ``size`` = (height, width)."""
    h, w = size
    labels = labels.detach().cpu().numpy()
    out = []
    for i in range(batch):
        t = labels[labels[:, 0] == i]
        cx, cy, bw, bh = t[:, 2] * w, t[:, 3] * h, t[:, 4] * w, t[:, 5] * h
        out.append(np.stack([t[:, 1], cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1)
                   .astype(np.float32))
    return out
