"""NWPU VHR-10 (Cheng et al., 2014): its native ground truth, and conversion to YOLO format.

The release holds ``positive image set/NNN.jpg`` and ``ground truth/NNN.txt`` (folder names
also seen with underscores).  Each ground-truth line is ``(x1,y1),(x2,y2),a``: the top-left and
bottom-right pixel corners and the 1-based class ``a`` (1 airplane … 10 vehicle, the readme's
order).  The files are hand-made: numbers are often space-padded (``( 68,316),(111,354),1``),
lines may end in spaces or CRLF, and some files lack a final newline — all accepted here.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..errors import GraphpruneError
from .config import ConversionReport, Sample, annotated_sample, is_image, write_split_dataset
from .labels import clip_pixel_box, parse_lines

NWPU_NAMES = ["airplane", "ship", "storage tank", "baseball diamond", "tennis court",
              "basketball court", "ground track field", "harbor", "bridge", "vehicle"]

_NUMBER = r"\s*(-?\d+(?:\.\d*)?)\s*"
_LINE = re.compile(rf"\({_NUMBER},{_NUMBER}\)\s*,\s*\({_NUMBER},{_NUMBER}\)\s*,{_NUMBER}")


def parse_nwpu_labels(text: str | bytes, width: int, height: int) -> tuple[np.ndarray, list[str]]:
    """``([n, 5] float32 = class (0-based), x1, y1, x2, y2 pixels, problems)`` of one NWPU
    ground-truth text; boxes are clipped to the ``width`` × ``height`` image.

    Lines that do not match ``(x1,y1),(x2,y2),class``, classes outside 1–10 and boxes with no
    area inside the image are skipped and described in ``problems``; never raises.
    """
    return parse_lines(text, lambda line: _parse_line(line, width, height))


def _parse_line(line: str, width: int, height: int) -> tuple[list[float] | None, str | None]:
    match = _LINE.fullmatch(line)
    if match is None:
        return None, f"not '(x1,y1),(x2,y2),class': {line[:60]!r}"
    x1, y1, x2, y2, cls = (float(v) for v in match.groups())
    if cls != int(cls) or not 1 <= cls <= len(NWPU_NAMES):
        return None, f"class {match.group(5)} is not in 1..{len(NWPU_NAMES)}"
    box, note = clip_pixel_box(x1, y1, x2, y2, width, height)
    return ([cls - 1, *box] if box else None), note


def find_nwpu_folders(src: str | Path) -> tuple[Path, Path]:
    """(image folder, ground-truth folder) of an NWPU VHR-10 release at ``src``."""
    src = Path(src)
    found = [next((src / n for n in names if (src / n).is_dir()), None)
             for names in (("positive_image_set", "positive image set"),
                           ("ground_truth", "ground truth"))]
    if None in found:
        missing = "positive_image_set" if found[0] is None else "ground_truth"
        raise GraphpruneError(f"{str(src)!r} has no {missing} folder: not an NWPU VHR-10 "
                              "release", hint="pass the folder that holds positive_image_set "
                                              "and ground_truth (or their spaced names)")
    return found[0], found[1]


def nwpu_samples(src: str | Path) -> tuple[list[Sample], list[str]]:
    """Every annotated image of the release as a :class:`Sample`, and the problems met."""
    image_dir, truth_dir = find_nwpu_folders(src)
    images = {p.stem: p for p in sorted(image_dir.iterdir()) if is_image(p)}
    samples, problems = [], []
    for truth in sorted(truth_dir.glob("*.txt")):
        sample = annotated_sample(truth.stem, images.get(truth.stem), truth,
                                  f"{truth_dir.name}/{truth.name}", parse_nwpu_labels, problems)
        samples += [sample] if sample else []
    return samples, problems


def convert_nwpu(src: str | Path, out: str | Path, val_fraction: float = 0.2, seed: int = 0,
                 overwrite: bool = False) -> ConversionReport:
    """Convert an NWPU VHR-10 release to a YOLO dataset at ``out`` (seeded train/val split;
    images hard-linked or copied, never re-encoded)."""
    samples, problems = nwpu_samples(src)
    return write_split_dataset(out, samples, NWPU_NAMES, val_fraction, seed, overwrite,
                               problems, inputs=[src])

