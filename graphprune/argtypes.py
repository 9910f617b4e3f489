"""argparse types for every number the command line takes: a value outside its range is a
usage error (exit 2, one line naming the option) before any work starts, never a traceback or
a silent default later."""

from __future__ import annotations

import argparse
import math
from typing import Callable

# image sides the models take (strides up to 32) and that fit in memory on any machine
IMAGE_SIDE = (32, 8192)
IMAGE_STRIDE = 32
MAX_CLASSES = 100_000


def whole(minimum: int, maximum: int | None = None, what: str = "") -> Callable[[str], int]:
    """A whole number in [minimum, maximum]; ``what`` says what it counts."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum or (maximum is not None and value > maximum):
            span = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
            raise argparse.ArgumentTypeError(f"{text}: {what + ' ' if what else ''}must be "
                                             f"{span}")
        return value
    return parse


def real(ok: Callable[[float], bool], problem: str) -> Callable[[str], float]:
    """A finite number for which ``ok`` holds, else ``problem`` (``{}`` = the text given)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not (math.isfinite(value) and ok(value)):
            raise argparse.ArgumentTypeError(problem.format(text))
        return value
    return parse


def image_side(text: str) -> int:
    """An input image side: a multiple of ``IMAGE_STRIDE`` within ``IMAGE_SIDE``."""
    value = whole(*IMAGE_SIDE, what="the image side")(text)
    if value % IMAGE_STRIDE:
        raise argparse.ArgumentTypeError(f"{text}: the image side must be a multiple of "
                                         f"{IMAGE_STRIDE}")
    return value


positive = whole(1)
non_negative = whole(0)
positive_real = real(lambda v: v > 0, "{}: must be a finite number > 0")
non_negative_real = real(lambda v: v >= 0, "{}: must be a finite number >= 0")
unit_interval = real(lambda v: 0 <= v <= 1, "{}: must be in [0, 1]")
classes = whole(1, MAX_CLASSES, what="the number of classes")


__all__ = ["IMAGE_SIDE", "IMAGE_STRIDE", "MAX_CLASSES", "classes", "image_side", "non_negative", "non_negative_real", "positive",
           "positive_real", "real", "unit_interval", "whole"]
