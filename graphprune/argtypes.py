"""argparse types for every number the command line takes: a value outside its range is a
usage error (exit 2, one line naming the option) before any work starts, never a traceback or
a silent default later; and the one bound that depends on the machine, the memory a batch of
images needs (``refuse_oversized``)."""

from __future__ import annotations

import argparse
import math
import os
from typing import Callable

from .errors import GraphpruneError

# image sides the models take (strides up to 32) and that fit in memory on any machine
IMAGE_SIDE = (32, 8192)
IMAGE_STRIDE = 32
MAX_CLASSES = 100_000
# loader processes: more than a few per core only competes for the cores (and a typo such as
# 1000 would start a thousand processes)
MAX_WORKERS = max(8, 4 * (os.cpu_count() or 1))


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
workers = whole(0, MAX_WORKERS, what="the number of loader processes")


def round_to(text: str) -> int | str:
    """``--round-to``: a whole number >= 1, or ``runtime`` (widths measured on the runtime)."""
    if text.strip().lower() == "runtime":
        return "runtime"
    try:
        return positive(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number >= 1 (8 keeps a "
                                         "multiple of 8 channels per layer) or 'runtime'") from None


# Lower bounds on the memory a network needs per element of its input batch (float32 bytes
# times a factor): inference keeps a few feature maps alive at once; training keeps every
# activation for the backward pass. The bounds only refuse what can never fit (a typo such as
# --batch 100000 or an example of 100000 x 100000 px) before anything is allocated; a value that
# passes may still be tight.
INFERENCE_FACTOR = 64
TRAINING_FACTOR = 16
EVALUATION_FACTOR = 4


def free_memory() -> int | None:
    """Bytes of memory available now (Linux's MemAvailable, which counts the page cache the
    kernel would give back; elsewhere the free pages), or None where the system does not say."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def refuse_oversized(shape: tuple[int, ...], factor: int, what: str, hint: str) -> None:
    """Raise a one-line GraphpruneError when a float32 input batch of ``shape`` would need more
    than the free memory at ``factor`` bytes-per-byte of input; ``what`` names the batch."""
    need = 4 * math.prod(shape) * factor
    free = free_memory()
    if free is not None and need > free:
        raise GraphpruneError(f"{what} of shape {','.join(map(str, shape))} needs at least about "
                              f"{need / 2**30:,.1f} GiB, more than the {free / 2**30:,.1f} GiB "
                              "free here", hint=hint)


__all__ = ["EVALUATION_FACTOR", "IMAGE_SIDE", "IMAGE_STRIDE", "INFERENCE_FACTOR", "MAX_CLASSES",
           "MAX_WORKERS", "TRAINING_FACTOR", "classes", "free_memory", "image_side", "non_negative",
           "non_negative_real", "positive", "positive_real", "real", "refuse_oversized",
           "unit_interval", "whole", "workers"]
