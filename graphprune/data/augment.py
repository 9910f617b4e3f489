"""Image and box transforms for detection training: letterbox, scale/translate, mosaic, HSV
jitter and flips.

Images are ``uint8 [H, W, 3]`` RGB arrays; boxes are ``[n, 5]`` float arrays of class, x1, y1,
x2, y2 in pixels, where pixel ``i`` covers ``[i, i + 1)``.  Every geometric transform moves the
boxes with the pixels, clips them to the output and drops those that lose most of their area.
All randomness comes from the ``np.random.Generator`` passed in, so a caller that seeds it per
image gets the same augmentation for the same image whatever process runs it.

The hyperparameter names and defaults follow YOLOv5's ``hyp.scratch-low.yaml``, except
``flipud``: overhead imagery has no "up", so vertical flips are as valid as horizontal ones.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

DEFAULT_HYP: dict[str, float] = {
    "hsv_h": 0.015,      # hue gain (fraction of the hue circle)
    "hsv_s": 0.7,        # saturation gain
    "hsv_v": 0.4,        # value gain
    "translate": 0.1,    # ± fraction of the image size
    "scale": 0.5,        # ± scale gain
    "fliplr": 0.5,       # probability of a left-right flip
    "flipud": 0.5,       # probability of an up-down flip
    "mosaic": 1.0,       # probability of a 4-image mosaic (when the dataset enables mosaic)
}
MIN_AREA_KEPT = 0.25     # a transformed box keeping less of its area than this is dropped
MIN_SIDE = 2.0           # ... and so is one narrower or lower than this many pixels


def letterbox(img: np.ndarray, size: int, color: int = 114
              ) -> tuple[np.ndarray, float, tuple[int, int]]:
    """Resize ``img`` to fit ``size`` × ``size`` keeping its aspect ratio, and pad the rest with
    grey ``color`` evenly on both sides.  Returns ``(image, ratio, (padw, padh))``: a point
    ``(x, y)`` of ``img`` lands at ``(x · ratio + padw, y · ratio + padh)``."""
    height, width = img.shape[:2]
    ratio = min(size / height, size / width)
    new_w, new_h = min(size, round(width * ratio)), min(size, round(height * ratio))
    if (new_w, new_h) != (width, height):
        img = np.asarray(Image.fromarray(img).resize((new_w, new_h), Image.Resampling.BILINEAR))
    padw, padh = (size - new_w) // 2, (size - new_h) // 2
    out = np.full((size, size, 3), color, dtype=np.uint8)
    out[padh:padh + new_h, padw:padw + new_w] = img
    return out, ratio, (padw, padh)


def move_boxes(boxes: np.ndarray, ratio: float, pad: tuple[float, float]) -> np.ndarray:
    """Boxes under ``x · ratio + pad`` (what :func:`letterbox` does to the pixels)."""
    out = np.array(boxes, dtype=np.float32).reshape(-1, 5)
    out[:, 1:] = out[:, 1:] * ratio + np.tile(np.asarray(pad, dtype=np.float32), 2)
    return out


def clip_and_filter(moved: np.ndarray, width: float, height: float) -> np.ndarray:
    """Clip transformed boxes to the image; drop those keeping under ``MIN_AREA_KEPT`` of their
    area or narrower than ``MIN_SIDE`` px (YOLOv5 calls these box candidates)."""
    clipped = moved.copy()
    clipped[:, [1, 3]] = clipped[:, [1, 3]].clip(0, width)
    clipped[:, [2, 4]] = clipped[:, [2, 4]].clip(0, height)
    side = clipped[:, 3:5] - clipped[:, 1:3]
    area = (moved[:, 3:5] - moved[:, 1:3]).prod(1)
    keep = (side.min(1) >= MIN_SIDE) & (side.prod(1) >= MIN_AREA_KEPT * area)
    return clipped[keep]


def flip_lr(img: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror left-right: x → W − x."""
    out = boxes.copy()
    out[:, [1, 3]] = img.shape[1] - boxes[:, [3, 1]]
    return np.ascontiguousarray(img[:, ::-1]), out


def flip_ud(img: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror up-down: y → H − y."""
    out = boxes.copy()
    out[:, [2, 4]] = img.shape[0] - boxes[:, [4, 2]]
    return np.ascontiguousarray(img[::-1]), out


def hsv_jitter(img: np.ndarray, rng: np.random.Generator, hgain: float = 0.015,
               sgain: float = 0.7, vgain: float = 0.4) -> np.ndarray:
    """Scale hue, saturation and value by random gains in ``1 ± gain`` (hue wraps around),
    through lookup tables on Pillow's 8-bit HSV."""
    gains = rng.uniform(-1, 1, 3) * [hgain, sgain, vgain] + 1
    levels = np.arange(256, dtype=np.float32)
    tables = np.stack([(levels * gains[0]) % 256, (levels * gains[1]).clip(0, 255),
                       (levels * gains[2]).clip(0, 255)]).astype(np.uint8)
    hsv = np.asarray(Image.fromarray(img).convert("HSV"))
    jittered = np.stack([tables[c][hsv[..., c]] for c in range(3)], axis=-1)
    size = (img.shape[1], img.shape[0])
    return np.asarray(Image.frombytes("HSV", size, jittered.tobytes()).convert("RGB"))


def random_affine(img: np.ndarray, boxes: np.ndarray, rng: np.random.Generator, size: int,
                  scale: float = 0.5, translate: float = 0.1, color: int = 114
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Scale ``img`` about its centre by a gain in ``1 ± scale``, shift it by up to
    ``± translate · size`` and crop the middle ``size`` × ``size``."""
    gain = rng.uniform(1 - scale, 1 + scale)
    shift = rng.uniform(-translate, translate, 2) * size
    height, width = img.shape[:2]
    # output = gain · (input − input centre) + output centre + shift; PIL wants the inverse.
    offset = np.array([width, height]) / 2 - (size / 2 + shift) / gain
    data = (1 / gain, 0, offset[0], 0, 1 / gain, offset[1])
    out = Image.fromarray(img).transform((size, size), Image.Transform.AFFINE, data,
                                         Image.Resampling.BILINEAR, fillcolor=(color,) * 3)
    moved = move_boxes(boxes, gain, -offset * gain)
    return np.asarray(out), clip_and_filter(moved, size, size)


def mosaic(items: list[tuple[np.ndarray, np.ndarray]], rng: np.random.Generator, size: int,
           scale: float = 0.5, translate: float = 0.1, color: int = 114
           ) -> tuple[np.ndarray, np.ndarray]:
    """Four images (each at most ``size`` a side) and their boxes around a random centre of a
    ``2·size`` canvas — top-left, top-right, bottom-left, bottom-right — then
    :func:`random_affine` down to one ``size`` × ``size`` image."""
    canvas = Image.new("RGB", (2 * size, 2 * size), (color,) * 3)
    cx, cy = rng.uniform(size / 2, 3 * size / 2, 2)
    placed = []
    for k, (img, boxes) in enumerate(items[:4]):
        height, width = img.shape[:2]
        corner = (cx - width * (1 - k % 2), cy - height * (1 - k // 2))
        corner = (int(round(corner[0])), int(round(corner[1])))
        canvas.paste(Image.fromarray(img), corner)
        placed.append(clip_and_filter(move_boxes(boxes, 1.0, corner), 2 * size, 2 * size))
    return random_affine(np.asarray(canvas), np.concatenate(placed), rng, size, scale,
                         translate, color)


def jitter(img: np.ndarray, boxes: np.ndarray, rng: np.random.Generator,
           hyp: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The photometric and flip part of training augmentation: HSV jitter, then each flip
    with its probability."""
    img = hsv_jitter(img, rng, hyp["hsv_h"], hyp["hsv_s"], hyp["hsv_v"])
    if rng.random() < hyp["fliplr"]:
        img, boxes = flip_lr(img, boxes)
    if rng.random() < hyp["flipud"]:
        img, boxes = flip_ud(img, boxes)
    return img, boxes
