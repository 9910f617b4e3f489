"""The detection dataset and its loader.

``DetectionDataset`` reads every label file once, when it is built, and reports the problems
it handled (one warning, with a count and the first examples).  Items are letterboxed
``S`` × ``S`` images with their boxes as YOLO targets.  Augmentation is a pure function of
``(seed, epoch, index)`` — each item seeds ``np.random.default_rng([seed, epoch, index])`` — so
an item looks the same whichever worker process makes it, and a resumed run sees the same
augmentations as an uninterrupted one.

``make_loader`` shuffles with a ``torch.Generator`` seeded by ``seed + epoch`` and sends the
epoch to the workers together with each index, so ``loader.set_epoch(e)`` takes effect however
the workers are started.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import DataLoader, Dataset, Sampler

from ..errors import GraphpruneError, GraphpruneWarning
from .augment import DEFAULT_HYP, jitter, letterbox, mosaic, move_boxes, random_affine
from .config import image_size, label_path
from .labels import KptShape, cxcywh_to_xyxy, read_yolo_shapes, xyxy_to_cxcywh

FILL = 114               # letterbox grey, as in YOLOv5
EXAMPLES = 3             # problems quoted in the construction warning


class DetectionDataset(Dataset):
    """YOLO-format images and labels as ``(image, targets, path, meta)`` items.

    * ``image``: ``uint8 [3, S, S]`` RGB tensor, ``S = imgsz``.
    * ``targets``: ``float32 [n, 6]`` = (0, class, cx, cy, w, h), normalised to the ``S`` × ``S``
      image (``collate`` writes the image's index in the batch into column 0).
    * ``meta``: ``orig`` (h, w) of the file, and ``ratio`` and ``pad`` (padw, padh) with which
      a point of the original maps to ``point · ratio + pad`` (both ``None`` when ``augment``
      has moved it at random).

    With ``augment``: random scale/translate, HSV jitter and flips per ``hyp`` (defaults
    :data:`~graphprune.data.augment.DEFAULT_HYP`), and with ``mosaic`` also 4-image mosaics.
    ``cache`` decodes every image once, at construction, and keeps it in memory (resized so its
    longer side is ``S``); it also finds corrupt files up front.

    Polygon labels (segmentation outlines, OBB corners) train as their bounds and keep their
    points in ``outlines`` (per image, per box: ``[k, 2]`` normalised, or ``None``); the
    keypoints of a pose dataset (``kpt_shape``) are read past.
    """

    def __init__(self, images: Sequence[str | Path], names: Sequence[str], imgsz: int = 640,
                 augment: bool = False, hyp: dict[str, float] | None = None,
                 mosaic: bool = False, cache: bool = False, seed: int = 0,
                 kpt_shape: KptShape = None):
        self.names, self.imgsz, self.augment, self.mosaic = list(names), imgsz, augment, mosaic
        self.hyp = {**DEFAULT_HYP, **(hyp or {})}
        self.seed, self.epoch, self.kpt_shape = seed, 0, kpt_shape
        self.images: list[Path] = []
        self.labels: list[np.ndarray] = []
        self.outlines: list[list[np.ndarray | None]] = []
        self.shapes: list[tuple[int, int]] = []          # (h, w) of each file, as displayed
        self.problems: list[str] = []
        self.unreadable: set[int] = set()                # found undecodable while running
        self._cache: list[tuple[np.ndarray, tuple[int, int]]] | None = [] if cache else None
        for path in map(Path, images):
            self._add(path)
        if not self.images:
            raise GraphpruneError(f"none of the {len(images)} images could be read"
                                  + (f" (first: {self.problems[0]})" if self.problems else ""),
                                  hint="check the dataset's image paths and files")
        if self.problems:
            warnings.warn(f"{len(self.problems)} dataset problems handled (bad label lines "
                          f"skipped, unreadable images left out), e.g. "
                          + "; ".join(self.problems[:EXAMPLES]), GraphpruneWarning,
                          stacklevel=2)

    def _add(self, path: Path) -> None:
        """Check one image (decode it when caching) and read its labels."""
        if not path.is_file():                # a FIFO or a device would block or never end
            self.problems.append(f"{path}: not a regular file; left out")
            return
        try:
            cached = _decode(path, self.imgsz) if self._cache is not None else None
        except GraphpruneError as exc:
            self.problems.append(f"{exc.message}; left out")
            return
        size = image_size(path) if cached is None else cached[1][::-1]
        if size is None:
            self.problems.append(f"{path}: not a readable image; left out")
            return
        labels, outlines, problems = read_yolo_shapes(label_path(path), len(self.names),
                                                      self.kpt_shape)
        self.problems += [f"{label_path(path)}: {p}" for p in problems]
        self.images.append(path)
        self.labels.append(labels)
        self.outlines.append(outlines)
        self.shapes.append(size[::-1])
        if cached is not None:
            self._cache.append(cached)

    def __len__(self) -> int:
        return len(self.images)

    def box_sizes(self, imgsz: int | None = None) -> np.ndarray:
        """``[n, 2]`` width and height in pixels of every labelled box once its image is
        resized so its longer side is ``imgsz`` (default the dataset's): what anchors are
        fitted to."""
        size = imgsz or self.imgsz
        sizes = [labels[:, 3:5] * np.array(shape[::-1]) * size / max(shape)
                 for labels, shape in zip(self.labels, self.shapes)]
        return np.concatenate([np.zeros((0, 2)), *sizes]).astype(np.float32)

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose augmentations plain integer indexing produces."""
        self.epoch = epoch

    def __getitem__(self, index: int | tuple[int, int]
                    ) -> tuple[torch.Tensor, torch.Tensor, str, dict[str, Any]]:
        """Item ``index``, or ``(index, epoch)`` as :func:`make_loader`'s sampler sends it."""
        i, epoch = index if isinstance(index, tuple) else (index, self.epoch)
        rng = np.random.default_rng([self.seed, epoch, i])
        i, (img, orig) = self._readable(i)
        boxes = self._boxes(i, img)
        if self.augment and self.mosaic and rng.random() < self.hyp["mosaic"]:
            others = [int(j) for j in rng.integers(len(self), size=3)]
            img, boxes = mosaic([(img, boxes), *map(self._with_boxes, others)], rng,
                                self.imgsz, self.hyp["scale"], self.hyp["translate"], FILL)
            meta = {"orig": orig, "ratio": None, "pad": None}
        else:
            img, ratio, pad = letterbox(img, self.imgsz, FILL)
            boxes = move_boxes(boxes, ratio, pad)
            # the file was resized by imgsz / its longer side in _decode, then by ``ratio``
            meta = {"orig": orig, "ratio": ratio * self.imgsz / max(orig), "pad": pad}
            if self.augment:
                img, boxes = random_affine(img, boxes, rng, self.imgsz, self.hyp["scale"],
                                           self.hyp["translate"], FILL)
                meta.update(ratio=None, pad=None)          # the geometry is now random
        if self.augment:
            img, boxes = jitter(img, boxes, rng, self.hyp)
        return _as_item(img, boxes, self.imgsz, str(self.images[i]), meta)

    def _readable(self, i: int) -> tuple[int, tuple[np.ndarray, tuple[int, int]]]:
        """``(index, image)`` of image ``i``, or — when its file turns out unreadable only now
        (a truncated body behind a valid header) — of the next image that loads, the file
        reported once and not read again.  A run is not aborted by one bad file."""
        for step in range(len(self)):
            j = (i + step) % len(self)
            if j in self.unreadable:
                continue
            try:
                return j, self._load(j)
            except GraphpruneError as exc:
                self.unreadable.add(j)
                self.problems.append(f"{exc.message}; replaced by the next readable image")
                warnings.warn(f"{exc.message}; replaced by the next readable image for the "
                              f"rest of this run", GraphpruneWarning, stacklevel=3)
        raise GraphpruneError("none of the dataset's images can be decoded",
                              hint="check the image files")

    def _load(self, i: int) -> tuple[np.ndarray, tuple[int, int]]:
        """(image resized so its longer side is ``imgsz``, original (h, w))."""
        return self._cache[i] if self._cache is not None else _decode(self.images[i],
                                                                       self.imgsz)

    def _boxes(self, i: int, img: np.ndarray) -> np.ndarray:
        """Image ``i``'s labels as class, x1, y1, x2, y2 pixels of ``img``."""
        return cxcywh_to_xyxy(self.labels[i], img.shape[1], img.shape[0]).astype(np.float32)

    def _with_boxes(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        i, (img, _) = self._readable(i)
        return img, self._boxes(i, img)


def _to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB of any image mode. PIL's own conversion saturates 16-bit and float images
    (a 16-bit satellite tile turns white); those are scaled instead: 16-bit by 255/65535 (as
    OpenCV reads them), float in [0, 1] by 255, any other range stretched from its minimum to
    its maximum."""
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        pixels = np.asarray(img, dtype=np.float64)
        if img.mode.startswith("I;16"):
            pixels = pixels * (255 / 65535)
        else:
            finite = pixels[np.isfinite(pixels)]
            low, high = (float(finite.min()), float(finite.max())) if finite.size else (0, 0)
            if 0 <= low and high <= 1:
                pixels = pixels * 255
            elif high > low:
                pixels = (pixels - low) * (255 / (high - low))
            else:
                pixels = np.zeros_like(pixels)
        pixels = np.nan_to_num(pixels, nan=0.0, posinf=255.0, neginf=0.0)
        img = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "L")
    return img.convert("RGB")


def _decode(path: Path, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """(RGB image as displayed — EXIF orientation applied — resized so its longer side is
    ``size``, its original (h, w)).  A corrupt file raises :class:`GraphpruneError`."""
    try:
        with Image.open(path) as opened:
            img = _to_rgb(ImageOps.exif_transpose(opened))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise GraphpruneError(f"{path}: cannot decode the image ({exc})",
                              hint="replace or remove the file") from None
    orig = (img.height, img.width)
    ratio = size / max(orig)
    if ratio != 1:
        img = img.resize((max(1, round(img.width * ratio)), max(1, round(img.height * ratio))),
                         Image.Resampling.BILINEAR)
    return np.asarray(img), orig


def _as_item(img: np.ndarray, boxes: np.ndarray, size: int, path: str, meta: dict[str, Any]
             ) -> tuple[torch.Tensor, torch.Tensor, str, dict[str, Any]]:
    targets = np.zeros((len(boxes), 6), dtype=np.float32)
    targets[:, 1:] = xyxy_to_cxcywh(boxes, size, size)
    image = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))
    return image, torch.from_numpy(targets), path, meta


def collate(batch: list[tuple[torch.Tensor, torch.Tensor, str, dict[str, Any]]]
            ) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...], tuple[dict[str, Any], ...]]:
    """Stack the images; concatenate the targets with each one's image index in column 0."""
    images, targets, paths, metas = zip(*batch)
    numbered = [t.clone() for t in targets]
    for k, t in enumerate(numbered):
        t[:, 0] = k
    return torch.stack(images), torch.cat(numbered), paths, metas


class EpochSampler(Sampler):
    """Yields ``(index, epoch)``: the dataset order (or a permutation from a generator seeded
    by ``seed + epoch``), each index paired with the epoch it belongs to."""

    def __init__(self, size: int, shuffle: bool, seed: int, epoch: int = 0):
        self.size, self.shuffle, self.seed, self.epoch = size, shuffle, seed, epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(
            self.seed + self.epoch)).tolist() if self.shuffle else range(self.size)
        return ((int(i), self.epoch) for i in order)

    def __len__(self) -> int:
        return self.size


class DetectionLoader(DataLoader):
    """A ``DataLoader`` over a :class:`DetectionDataset` with ``set_epoch``."""

    def set_epoch(self, epoch: int) -> None:
        """Shuffle order and augmentations of epoch ``epoch`` from the next iteration on."""
        self.sampler.set_epoch(epoch)
        self.dataset.set_epoch(epoch)


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)      # workers decode and augment; threads would only contend


def make_loader(dataset: DetectionDataset, batch_size: int, shuffle: bool = False,
                workers: int = 0, epoch_seed: int | None = None) -> DetectionLoader:
    """A loader of ``collate``d batches.  ``epoch_seed`` (default: the dataset's seed) seeds
    the shuffle order: epoch ``e`` uses ``epoch_seed + e``.  Batches are the same for any
    number of ``workers``."""
    seed = dataset.seed if epoch_seed is None else epoch_seed
    return DetectionLoader(
        dataset, batch_size=batch_size, sampler=EpochSampler(len(dataset), shuffle, seed,
                                                             dataset.epoch),
        num_workers=workers, collate_fn=collate, worker_init_fn=_worker_init,
        persistent_workers=False, generator=torch.Generator().manual_seed(seed))
