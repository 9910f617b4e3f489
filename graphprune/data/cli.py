"""``graphprune data``: convert datasets to YOLO format, or render the synthetic one.

    graphprune data nwpu SRC OUT [--val-fraction 0.2] [--seed 0] [--overwrite]
    graphprune data rsod SRC OUT [--val-fraction 0.2] [--seed 0] [--overwrite]
    graphprune data synthetic OUT [--train 400] [--val 100] [--seed 0] [--size 256]
                              [--task detect|obb|segment|pose] [--overwrite]

Each prints what it wrote (images and boxes per split) and the problems it handled; failures
are raised as ``GraphpruneError`` for the main command line to print as one line.
"""

from __future__ import annotations

import argparse
from typing import Callable

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..argtypes import IMAGE_SIDE, non_negative, positive, real, whole
from .config import ConversionReport
from .nwpu import convert_nwpu
from .rsod import convert_rsod
from .synthetic import TASKS, write_synthetic_dataset

console = Console(highlight=False)
SHOWN_PROBLEMS = 5


VAL_FRACTION = real(lambda v: 0 < v < 1, "{} is outside (0, 1): 0.2 keeps a fifth for validation")


def add_data_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``data`` with its ``nwpu``, ``rsod`` and ``synthetic`` commands to ``subparsers``."""
    data = subparsers.add_parser("data", help="convert NWPU VHR-10 or RSOD to YOLO format, or "
                                              "make the synthetic dataset")
    sub = data.add_subparsers(dest="data_command", required=True, metavar="DATASET")
    for name, convert, what in (("nwpu", convert_nwpu, "an NWPU VHR-10 release"),
                                ("rsod", convert_rsod, "an RSOD release")):
        p = sub.add_parser(name, help=f"convert {what} to a YOLO dataset")
        p.add_argument("src", metavar="SRC", help=f"the folder of {what}")
        p.add_argument("out", metavar="OUT", help="the YOLO dataset folder to write")
        p.add_argument("--val-fraction", type=VAL_FRACTION, default=0.2,
                       help="share of the images for validation (default 0.2)")
        _common(p, _converter(convert))
    s = sub.add_parser("synthetic", help="render the synthetic aircraft/ship/tank dataset")
    s.add_argument("out", metavar="OUT", help="the YOLO dataset folder to write")
    s.add_argument("--train", type=positive, default=400, help="training images (default 400)")
    s.add_argument("--val", type=positive, default=100, help="validation images (default 100)")
    s.add_argument("--size", type=whole(*IMAGE_SIDE, what="the image side"), default=256,
                   help="image side in pixels (default 256)")
    s.add_argument("--task", choices=TASKS, default="detect",
                   help="the labels to write: detect (boxes, default), obb (rotated "
                        "rectangles as DOTA corners), segment (polygons) or pose (boxes and "
                        "three keypoints); the images are the same")
    _common(s, cmd_synthetic)
    return data


def _common(p: argparse.ArgumentParser, func: Callable[[argparse.Namespace], int]) -> None:
    p.add_argument("--seed", type=non_negative, default=0, help="seed of the split / rendering")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    p.set_defaults(func=func)


def _converter(convert: Callable[..., ConversionReport]
               ) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        print_report(convert(args.src, args.out, val_fraction=args.val_fraction,
                             seed=args.seed, overwrite=args.overwrite))
        return 0
    return run


def cmd_synthetic(args: argparse.Namespace) -> int:
    print_report(write_synthetic_dataset(args.out, args.train, args.val, seed=args.seed,
                                         size=args.size, overwrite=args.overwrite,
                                         task=args.task))
    return 0


def print_report(report: ConversionReport) -> None:
    """Images and boxes per split, the first problems, and where the data.yaml is."""
    table = Table(title=f"{len(report.names)} classes: {escape(', '.join(report.names))}",
                  show_edge=False)
    for col, justify in (("split", "left"), ("images", "right"), ("boxes", "right")):
        table.add_column(col, justify=justify)
    for split, images in report.images.items():
        table.add_row(split, str(images), str(report.boxes[split]))
    console.print(table)
    lines = [f"problems handled: {len(report.problems)}",
             *(f"  {problem}" for problem in report.problems[:SHOWN_PROBLEMS]),
             f"wrote {report.data_yaml}"]
    for line in lines:             # paths stay whole: no wrapping, no markup
        console.print(line, markup=False, soft_wrap=True)
