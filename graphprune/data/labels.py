"""YOLO label files: parsing that never raises, writing, and box-format conversions.

A YOLO label file has one object a line, ``class cx cy w h``: a 0-based integer class and the
box centre and size normalised by the image width and height (the darknet / ultralytics
convention).  Real label files carry mistakes; :func:`parse_yolo_labels` keeps every valid line
and describes every line it skips, so one bad annotation costs one box, never the run.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

TOLERANCE = 1e-3     # normalised coordinates this far outside [0, 1] are clipped, not rejected


def parse_yolo_labels(text: str | bytes, num_classes: int) -> tuple[np.ndarray, list[str]]:
    """``([n, 5] float32 = class, cx, cy, w, h normalised, problems)`` of a YOLO label text.

    Lines with the wrong number of fields, non-numbers, nan/inf, a class that is not an integer
    in ``[0, num_classes)``, a non-positive width or height, or a box reaching more than
    ``TOLERANCE`` outside the image are skipped and described in ``problems``; boxes within the
    tolerance are clipped to the image.  Blank lines are ignored.
    """
    return parse_lines(text, lambda line: _parse_yolo_line(line, num_classes))


LineParser = Callable[[str], tuple[list[float] | None, str | None]]


def parse_lines(text: str | bytes, parse_line: LineParser) -> tuple[np.ndarray, list[str]]:
    """``([n, 5] float32 rows, problems)``: ``parse_line`` of every non-blank, stripped line of
    ``text``; it returns ``(row or None to skip, note or None)`` and each note is kept with its
    line number.  Bytes are decoded as UTF-8, undecodable bytes replaced."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    rows, problems = [], []
    for number, line in enumerate(str(text).splitlines(), start=1):
        if not line.strip():
            continue
        row, note = parse_line(line.strip())
        if note:
            problems.append(f"line {number}: {note}")
        if row:
            rows.append(row)
    return np.array(rows, dtype=np.float32).reshape(-1, 5), problems


def _parse_yolo_line(line: str, num_classes: int) -> tuple[list[float] | None, str | None]:
    fields = line.split()
    if len(fields) != 5:
        return None, f"{len(fields)} fields, expected 5 (class cx cy w h): {line[:60]!r}"
    try:
        values = [float(f) for f in fields]
    except ValueError:
        return None, f"not a number: {line[:60]!r}"
    if not all(math.isfinite(v) for v in values):
        return None, f"nan or inf: {line[:60]!r}"
    cls, cx, cy, w, h = values
    if cls != int(cls) or not 0 <= cls < num_classes:
        return None, f"class {fields[0]} is not an integer in [0, {num_classes})"
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


def read_yolo_labels(path: str | Path, num_classes: int) -> tuple[np.ndarray, list[str]]:
    """:func:`parse_yolo_labels` of a file; a missing or empty file is an image without
    objects, an unreadable one a problem."""
    path = Path(path)
    empty = np.zeros((0, 5), np.float32)
    try:
        if not path.exists():
            return empty, []
        if not path.is_file():                # a FIFO or a device would block or never end
            return empty, ["not a regular file; its labels are left out"]
        if path.stat().st_size > MAX_LABEL_BYTES:
            return empty, [f"larger than {MAX_LABEL_BYTES // 2**20} MiB; its labels are left "
                           f"out"]
        data = path.read_bytes()
    except OSError as exc:
        return empty, [f"cannot read the label file ({exc.strerror})"]
    return parse_yolo_labels(data, num_classes)


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
