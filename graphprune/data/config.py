"""YOLO-format datasets on disk: reading a ``data.yaml`` and writing a converted dataset.

The layout follows the ultralytics convention:

* ``data.yaml`` has ``train``, ``val`` (optional ``test``) and ``names`` (a list, or a
  ``{index: name}`` mapping), optional ``nc`` and optional ``path``, the dataset root.  A
  relative ``path`` is taken relative to the yaml's folder, or where that does not exist, as
  ultralytics takes it (the working directory, then its ``datasets_dir``); without ``path`` the
  yaml's folder is the root.  Each split is a folder of images, a ``.txt`` list of image paths,
  a single image, or a list of those, relative to the root.
* An image's labels live at the same path with the last ``images`` folder replaced by
  ``labels`` and the suffix by ``.txt``: ``d/images/train/a.jpg`` → ``d/labels/train/a.txt``.

Converters (NWPU VHR-10, RSOD, the synthetic generator) write ``OUT/data.yaml``,
``OUT/images/{train,val}`` and ``OUT/labels/{train,val}`` through :func:`write_yolo_dataset`,
which builds the dataset in a temporary folder beside ``OUT`` and renames it when complete.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import yaml
from PIL import Image

from ..errors import GraphpruneError, first_line
from ..export import atomic_directory
from .labels import write_yolo_labels, xyxy_to_cxcywh

IMAGE_SUFFIXES = frozenset({".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp"})
_EXIF_ORIENTATION = 0x0112


@dataclass
class DataConfig:
    """A resolved ``data.yaml``: the root, the image files of each split and the class names."""

    root: Path
    train: list[Path]
    val: list[Path]
    names: list[str]
    test: list[Path] = field(default_factory=list)
    # (keypoints, values each) of a pose dataset (ultralytics' kpt_shape); its label lines
    # carry the keypoints after the box
    kpt_shape: tuple[int, int] | None = None

    @property
    def nc(self) -> int:
        return len(self.names)


def label_path(image: str | Path) -> Path:
    """Where the label file of ``image`` lives (ultralytics: last ``images`` → ``labels``)."""
    parts = list(Path(image).with_suffix(".txt").parts)
    folders = [i for i, part in enumerate(parts[:-1]) if part == "images"]
    if folders:
        parts[folders[-1]] = "labels"
    return Path(*parts)


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) of an image as displayed — EXIF orientations 5–8 swap the stored sides
    — read from its header only; ``None`` when the file is not a readable image."""
    try:
        if not path.is_file():                # a FIFO or a device would block or never end
            return None
        with Image.open(path) as img:
            width, height = img.size
            transposed = img.getexif().get(_EXIF_ORIENTATION, 1) in (5, 6, 7, 8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None
    return (height, width) if transposed else (width, height)


def load_data_config(path: str | Path) -> DataConfig:
    """Read and resolve a ``data.yaml`` (a folder means its ``data.yaml``)."""
    path = Path(path)
    if path.is_dir():
        path = path / "data.yaml"
    data = _read_yaml(path)
    names = _names(data, path)
    root = _root(data.get("path"), path)
    splits = {key: _split_images(data[key], root, key, path) for key in ("train", "val")}
    test = _split_images(data["test"], root, "test", path) if data.get("test") else []
    return DataConfig(root=root, names=names, test=test, kpt_shape=_kpt_shape(data, path),
                      **splits)


def _kpt_shape(data: dict[str, Any], path: Path) -> tuple[int, int] | None:
    """``kpt_shape: [k, d]`` of a pose dataset: k ≥ 1 keypoints of d = 2 (x, y) or 3 (x, y,
    visibility) values."""
    shape = data.get("kpt_shape")
    if shape is None:
        return None
    if not (isinstance(shape, (list, tuple)) and len(shape) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in shape)
            and shape[0] >= 1 and shape[1] in (2, 3)):
        raise GraphpruneError(f"{str(path)!r}: kpt_shape {shape!r} is not [keypoints, 2 or 3]",
                              hint="e.g. kpt_shape: [17, 3] (x, y, visibility each)")
    return int(shape[0]), int(shape[1])


def _root(entry: Any, path: Path) -> Path:
    """The dataset root: ``path`` relative to the yaml's folder; failing that, as ultralytics
    reads it, relative to the working directory or to ultralytics' ``datasets_dir``."""
    if not entry:
        return path.parent
    root = path.parent / str(entry)
    if root.exists() or Path(str(entry)).is_absolute():
        return root
    if Path(str(entry)).exists():
        return Path(str(entry))
    try:
        from ultralytics.utils import SETTINGS  # deferred: ultralytics is optional
        shared = Path(SETTINGS["datasets_dir"]) / str(entry)
    except Exception:
        return root
    return shared if shared.exists() else root


# a data.yaml names a few folders and the classes; anything this large is not one
MAX_YAML_BYTES = 4 * 2**20


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise GraphpruneError(f"dataset config {str(path)!r} does not exist",
                              hint="pass a data.yaml, or a folder that holds one")
    if not path.is_file():
        raise GraphpruneError(f"dataset config {str(path)!r} is not a regular file",
                              hint="pass a data.yaml, or a folder that holds one")
    if path.stat().st_size > MAX_YAML_BYTES:
        raise GraphpruneError(f"dataset config {str(path)!r} is larger than "
                              f"{MAX_YAML_BYTES // 2**20} MiB", hint="a data.yaml names folders "
                                                                     "and classes; check the file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as exc:
        first = first_line(exc) or type(exc).__name__
        raise GraphpruneError(f"{str(path)!r} is not valid YAML ({first})",
                              hint="fix the file; see the ultralytics data.yaml format") from None
    if not isinstance(data, dict):
        raise GraphpruneError(f"{str(path)!r} is not a YAML mapping",
                              hint="a data.yaml maps train, val and names to values")
    for key in ("train", "val", "names"):
        if not data.get(key):
            raise GraphpruneError(f"{str(path)!r} has no {key!r} key",
                                  hint="a data.yaml needs train, val and names")
    return data


def _names(data: dict[str, Any], path: Path) -> list[str]:
    """Class names from a list or an ``{index: name}`` mapping, checked against ``nc``."""
    names = data["names"]
    if isinstance(names, dict):
        if sorted(names) != list(range(len(names))):
            raise GraphpruneError(f"{str(path)!r}: names keys {sorted(names, key=str)} are not "
                                  f"0..{len(names) - 1}",
                                  hint="number the classes 0, 1, 2, ... without gaps")
        names = [names[i] for i in range(len(names))]
    if not isinstance(names, list):
        raise GraphpruneError(f"{str(path)!r}: names must be a list or a mapping",
                              hint="e.g. names: [airplane, ship]")
    nc = data.get("nc")
    if nc is not None and nc != len(names):
        raise GraphpruneError(f"{str(path)!r}: nc is {nc} but names lists {len(names)} classes",
                              hint="make nc match names, or drop nc")
    return [str(n) for n in names]


def _split_images(entry: Any, root: Path, key: str, path: Path) -> list[Path]:
    """The image files one split names: folders (searched recursively), lists, images."""
    entries = entry if isinstance(entry, list) else [entry]
    images: list[Path] = []
    for item in entries:
        source = root / str(item)
        if source.is_dir():
            images += sorted(p for p in source.rglob("*") if is_image(p))
        elif source.suffix == ".txt" and source.is_file():
            images += _image_list(source)
        elif source.is_file() and is_image(source):
            images.append(source)
        else:
            raise GraphpruneError(f"{str(path)!r}: {key} entry {str(item)!r} ({str(source)!r}) "
                                  "is not a folder, an image list or an image",
                                  hint="paths are relative to the dataset root (path:)")
    if not images:
        raise GraphpruneError(f"{str(path)!r}: no images found for {key} ({entry!r})",
                              hint=f"image suffixes: {', '.join(sorted(IMAGE_SUFFIXES))}")
    return images


def _image_list(listing: Path) -> list[Path]:
    """Paths from a ``.txt`` image list; relative ones are relative to the list's folder."""
    lines = listing.read_text(encoding="utf-8", errors="replace").splitlines()
    return [listing.parent / line.strip() for line in lines if line.strip()]


# -- writing --------------------------------------------------------------------------------
@dataclass
class Sample:
    """One image to write: its file (linked or copied) or its pixels, and its boxes.

    ``boxes`` is ``[n, 5]``: class (0-based), x1, y1, x2, y2 in pixels of the ``width`` ×
    ``height`` image.  ``label_text``, when given, is written as the label file instead of the
    boxes (the polygon and keypoint lines of the other ultralytics tasks).
    """

    name: str
    boxes: np.ndarray
    width: int
    height: int
    source: Path | None = None
    pixels: np.ndarray | None = None
    label_text: str | None = None


@dataclass
class ConversionReport:
    """What a converter wrote: images and boxes per split, and every problem it handled."""

    out: Path
    names: list[str]
    images: dict[str, int]
    boxes: dict[str, int]
    problems: list[str] = field(default_factory=list)

    @property
    def data_yaml(self) -> Path:
        return self.out / "data.yaml"


def annotated_sample(name: str, image: Path | None, annotation: Path, where: str,
                     parse: Callable[[bytes, int, int], tuple[np.ndarray, list[str]]],
                     problems: list[str]) -> Sample | None:
    """The :class:`Sample` of ``image`` with the boxes ``parse(annotation bytes, width,
    height)`` finds.  ``None`` when the image is missing or unreadable, or when the annotation
    had problems and no valid box: such an image is left out rather than written as one
    without objects.  Problems are appended to ``problems``, prefixed with ``where``."""
    size = image_size(image) if image is not None else None
    if size is None:
        problems.append(f"{where}: no readable image {Path(where).stem}.* for it; left out")
        return None
    boxes, found = parse(annotation.read_bytes(), *size)
    problems += [f"{where} {p}" for p in found]
    if found and not len(boxes):
        problems.append(f"{where}: no valid box left; image left out")
        return None
    return Sample(name, boxes, *size, source=image)


def split_names(names: Iterable[str], val_fraction: float, seed: int) -> dict[str, str]:
    """Assign each name to ``train`` or ``val``: a seeded permutation of the sorted names, the
    first ``round(n · val_fraction)`` of it to val — the same split for the same seed."""
    names = sorted(names)
    if not 0 < val_fraction < 1:
        raise GraphpruneError(f"val fraction {val_fraction} is outside (0, 1)",
                              hint="e.g. 0.2 keeps a fifth of the images for validation")
    n_val = int(round(len(names) * val_fraction))
    if not 0 < n_val < len(names):
        raise GraphpruneError(f"{len(names)} images cannot be split with val fraction "
                              f"{val_fraction} (train and val both need images)",
                              hint="use more images or another --val-fraction")
    order = np.random.default_rng(seed).permutation(len(names))
    val = {names[i] for i in order[:n_val]}
    return {name: "val" if name in val else "train" for name in names}


def write_split_dataset(out: str | Path, samples: list[Sample], names: list[str],
                        val_fraction: float, seed: int, overwrite: bool,
                        problems: list[str], inputs: Iterable[str | Path] = ()
                        ) -> ConversionReport:
    """Split ``samples`` into train and val by :func:`split_names` and write them."""
    if not samples:
        first = f"; first problem: {problems[0]}" if problems else ""
        raise GraphpruneError(f"found no annotated image to write to {str(out)!r}{first}",
                              hint="check the source folder's layout")
    split = split_names([s.name for s in samples], val_fraction, seed)
    splits = {part: [s for s in samples if split[s.name] == part] for part in ("train", "val")}
    return write_yolo_dataset(out, splits, names, overwrite, problems, inputs)


def write_yolo_dataset(out: str | Path, splits: dict[str, Iterable[Sample]], names: list[str],
                       overwrite: bool = False, problems: list[str] | None = None,
                       inputs: Iterable[str | Path] = (), yaml_extra: dict[str, Any] | None = None
                       ) -> ConversionReport:
    """Write ``splits`` as a YOLO dataset at ``out`` atomically (built beside it, then renamed);
    refuses an existing ``out`` unless ``overwrite``, and an ``out`` overlapping ``inputs``
    (the source being converted).  ``yaml_extra`` goes into data.yaml too (``kpt_shape``)."""
    out = Path(out)
    report = ConversionReport(out=out, names=list(names), images={}, boxes={},
                              problems=list(problems or []))
    with atomic_directory(out, overwrite=overwrite, inputs=inputs) as tmp:
        for split, samples in splits.items():
            images, labels = tmp / "images" / split, tmp / "labels" / split
            images.mkdir(parents=True)
            labels.mkdir(parents=True)
            report.images[split] = report.boxes[split] = 0
            for sample in samples:
                _write_sample(sample, images, labels)
                report.images[split] += 1
                report.boxes[split] += len(sample.boxes)
        empty = [split for split in splits if not report.images[split]]
        if empty:                       # load_data_config (and ultralytics) could not read it
            raise GraphpruneError(f"the {' and '.join(empty)} split of {str(out)!r} would hold "
                                  "no images; nothing was written",
                                  hint="give it at least one image (--val, --val-fraction)")
        _write_data_yaml(tmp / "data.yaml", names, list(splits), yaml_extra)
    return report


def _write_sample(sample: Sample, images: Path, labels: Path) -> None:
    if sample.source is not None:
        link_or_copy(sample.source, images / f"{sample.name}{sample.source.suffix.lower()}")
    else:
        # 4:4:4 chroma and quality 95: small targets keep their colour edges.
        Image.fromarray(sample.pixels).save(images / f"{sample.name}.jpg", quality=95,
                                            subsampling=0)
    if sample.label_text is not None:
        (labels / f"{sample.name}.txt").write_text(sample.label_text, encoding="utf-8")
    else:
        write_yolo_labels(labels / f"{sample.name}.txt",
                          xyxy_to_cxcywh(sample.boxes, sample.width, sample.height))


def link_or_copy(source: Path, dest: Path) -> None:
    """Hard-link ``source`` to ``dest`` (no bytes copied, no re-encoding); copy where the
    filesystem refuses a link."""
    try:
        os.link(source, dest)
    except OSError:
        shutil.copyfile(source, dest)


def _write_data_yaml(path: Path, names: list[str], splits: list[str],
                     extra: dict[str, Any] | None = None) -> None:
    # No ``path`` key: ultralytics and load_data_config then both take the yaml's own folder as
    # the root, so the dataset can be moved as a whole.
    data = {split: f"images/{split}" for split in splits}
    data.update(nc=len(names), names=list(names), **(extra or {}))
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
