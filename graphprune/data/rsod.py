"""RSOD (Long et al., 2017): Pascal-VOC-style XML annotations, and conversion to YOLO format.

The common release has one folder per class, ``<class>/Annotation/xml/*.xml`` beside
``<class>/JPEGImages/*.jpg`` (aircraft, oiltank, overpass, playground); a flat VOC pair
``Annotations/`` + ``JPEGImages/`` is accepted too.  Each ``<object>`` holds ``<name>`` and
``<bndbox>`` with ``xmin ymin xmax ymax`` in pixels, read here as corner coordinates.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from functools import partial
from pathlib import Path

import numpy as np

from ..errors import GraphpruneError
from .config import ConversionReport, Sample, annotated_sample, is_image, write_split_dataset
from .labels import clip_pixel_box

RSOD_NAMES = ["aircraft", "oiltank", "overpass", "playground"]
_CORNERS = ("xmin", "ymin", "xmax", "ymax")


def parse_voc_xml(text: str | bytes, width: int, height: int, names: list[str] = RSOD_NAMES
                  ) -> tuple[np.ndarray, list[str]]:
    """``([n, 5] float32 = class, x1, y1, x2, y2 pixels, problems)`` of one VOC XML file,
    boxes clipped to the ``width`` × ``height`` image.

    Malformed XML, objects with an unknown class name or a missing or non-numeric corner, and
    boxes with no area inside the image are skipped and described in ``problems``; never
    raises.
    """
    try:
        root = ET.fromstring(text)
    except (ET.ParseError, ValueError, TypeError) as exc:
        return np.zeros((0, 5), np.float32), [f"not valid XML ({exc})"]
    lookup = {name.lower(): i for i, name in enumerate(names)}
    rows, problems = [], []
    for number, obj in enumerate(root.iter("object"), start=1):
        row, note = _parse_object(obj, lookup, width, height)
        if note:
            problems.append(f"object {number}: {note}")
        if row:
            rows.append(row)
    return np.array(rows, dtype=np.float32).reshape(-1, 5), problems


def _parse_object(obj: ET.Element, lookup: dict[str, int], width: int, height: int
                  ) -> tuple[list[float] | None, str | None]:
    name = (obj.findtext("name") or "").strip()
    if name.lower() not in lookup:
        return None, f"unknown class {name!r} (expected one of {', '.join(lookup)})"
    try:
        corners = [float(obj.findtext(f"bndbox/{key}") or "") for key in _CORNERS]
    except ValueError:
        return None, "bndbox lacks a numeric xmin, ymin, xmax or ymax"
    box, note = clip_pixel_box(*corners, width, height)
    return ([lookup[name.lower()], *box] if box else None), note


def find_rsod_folders(src: str | Path) -> list[tuple[Path, Path]]:
    """(annotation folder, image folder) pairs of an RSOD release: ``src`` itself or its
    class folders, each with ``Annotation/xml`` (or ``Annotations``) and ``JPEGImages``."""
    src = Path(src)
    if not src.is_dir():
        raise GraphpruneError(f"RSOD folder {str(src)!r} does not exist", hint="check the path")
    candidates = [src, *sorted(p for p in src.iterdir() if p.is_dir())]
    pairs = [pair for folder in candidates if (pair := _annotation_pair(folder))]
    if not pairs:
        raise GraphpruneError(f"{str(src)!r} holds no RSOD annotations",
                              hint="expected <class>/Annotation/xml/*.xml with "
                                   "<class>/JPEGImages, or Annotations/ with JPEGImages/")
    return pairs


def _annotation_pair(folder: Path) -> tuple[Path, Path] | None:
    images = folder / "JPEGImages"
    for xml in (folder / "Annotation" / "xml", folder / "Annotations", folder / "Annotation"):
        if xml.is_dir() and images.is_dir() and any(xml.glob("*.xml")):
            return xml, images
    return None


def rsod_samples(src: str | Path, names: list[str] = RSOD_NAMES
                 ) -> tuple[list[Sample], list[str]]:
    """Every annotated image of the release as a :class:`Sample`, and the problems met.
    Images of the same name in two class folders are told apart by the folder's name."""
    src, parse = Path(src), partial(parse_voc_xml, names=names)
    samples, problems, used = [], [], set()
    for xml_dir, image_dir in find_rsod_folders(src):
        images = {p.stem: p for p in sorted(image_dir.iterdir()) if is_image(p)}
        for xml in sorted(xml_dir.glob("*.xml")):
            name = xml.stem if xml.stem not in used else f"{image_dir.parent.name}_{xml.stem}"
            sample = annotated_sample(name, images.get(xml.stem), xml,
                                      str(xml.relative_to(src)), parse, problems)
            used.add(name)
            samples += [sample] if sample else []
    return samples, problems


def convert_rsod(src: str | Path, out: str | Path, val_fraction: float = 0.2, seed: int = 0,
                 overwrite: bool = False) -> ConversionReport:
    """Convert an RSOD release to a YOLO dataset at ``out`` (seeded train/val split; images
    hard-linked or copied, never re-encoded)."""
    samples, problems = rsod_samples(src)
    return write_split_dataset(out, samples, RSOD_NAMES, val_fraction, seed, overwrite,
                               problems, inputs=[src])
