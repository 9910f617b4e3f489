"""Runtime-aware widths: ``round_to=WidthTable(...)`` (``graphprune compile --round-to
runtime``) rounds each layer's kept channels to a width that is fast *on the runtime*, measured,
instead of one global multiple.

A convolution's time is a staircase of its output width, not a line: onnxruntime's CPU kernels
work on blocks of output channels (16 with AVX-512 on x86), and the next convolution reads the
width as its inner dimension, faster at multiples of 4.  A 3x3 convolution of 64 channels at
80x80 with a 1x1 one after it measured 1.79 ms at 32 channels, 2.56 ms at 33 and 2.32 ms at 48
(2 threads, x86_64): one channel past a step costs 43 %, and 15 more are free.  A single global
``round_to`` cannot know where a runtime's steps are; this table measures them (the idea of
HALP, Shen et al., NeurIPS 2022: a per-layer latency lookup table, used here for rounding
within an exact compiler).

For every prunable convolution the table times a stand-in of its neighbourhood on the chosen
runtime: the convolution itself (its input channels, kernel, stride, padding, dilation and
input size as traced, full input width) followed by a SiLU, and — when its output goes straight
(through same-shape ops: BatchNorm, activations, residual adds) into another convolution — that
consumer too, which reads the width as its input channels.  Given the channels the mask keeps,
k, the candidate widths are k, the multiples of 4 above k up to ``k + span``, and the full
width when it lies in that range; they are timed together, interleaved (a shuffled order each
round, the median of ``rounds``), and the layer keeps the *widest* candidate whose time is
within ``tolerance`` of the fastest — the extra channels come free, taken by importance (|γ|)
as ``round_to`` takes them.  Layers the table cannot time (depthwise and grouped convolutions,
linear layers, norms without a convolution before them) are rounded to a multiple of
``fallback``.

Times are cached on disk per runtime, thread count and machine (CPU model, core count,
onnxruntime version) — the input size and batch are part of each layer's key — in
``$GRAPHPRUNE_CACHE_DIR`` or ``$XDG_CACHE_HOME/graphprune`` (default ``~/.cache/graphprune``),
and so is each choice, so that a later compile of the same layer rounds it the same way without
timing anything.  ``refresh=True`` times again.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import onnxruntime as ort
import torch.nn as nn
from onnx import TensorProto, helper, numpy_helper

from . import specs
from .errors import GraphpruneError
from .export import atomic_path
from .masks import CONVS, round_up_count
from .timing import OrtTimer, check_runtime

if TYPE_CHECKING:
    from .analysis import ChannelAnalysis

CACHE_VERSION = 1


def cache_dir() -> Path:
    """Where graphprune keeps what it measured: ``$GRAPHPRUNE_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/graphprune``, else ``~/.cache/graphprune``."""
    if os.environ.get("GRAPHPRUNE_CACHE_DIR"):
        return Path(os.environ["GRAPHPRUNE_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "graphprune"


def machine_id() -> dict[str, Any]:
    """What a measured time depends on besides the layer: CPU model, cores, onnxruntime."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "onnxruntime": ort.__version__,
            "system": platform.system()}


@dataclass(frozen=True)
class ConvShape:
    """The neighbourhood of one prunable convolution that the table times."""

    in_channels: int
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    height: int                               # input size
    width: int
    consumer: tuple[int, int, int, int] | None  # (out channels, kernel, stride, padding)

    def key(self, batch: int) -> str:
        c = self.consumer
        then = f"+{c[0]}k{c[1]}s{c[2]}p{c[3]}" if c else ""
        return (f"b{batch}:{self.in_channels}x{self.height}x{self.width}"
                f"->{self.out_channels}k{self.kernel[0]}x{self.kernel[1]}"
                f"s{self.stride[0]}x{self.stride[1]}p{self.padding[0]}x{self.padding[1]}"
                f"d{self.dilation[0]}x{self.dilation[1]}{then}")


def _pair(v: Any) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


def _plain_conv2d(m: Any) -> bool:
    return (isinstance(m, nn.Conv2d) and m.groups == 1 and isinstance(m.padding, tuple)
            and m.padding_mode == "zeros")


def _consumer(A: ChannelAnalysis, start: Any, channels: int, depth: int = 4):
    """The first plain 2-D convolution reading ``start``'s output as its input channels, through
    at most ``depth`` same-shape ops; None when the output goes anywhere else first."""
    frontier, shape = [start], tuple(specs.spec_of(start).shape)
    for _ in range(depth):
        following = []
        for node in frontier:
            for user in node.users:
                m = A.module_of(user)
                if isinstance(m, CONVS):
                    if _plain_conv2d(m) and m.in_channels == channels and user.args[0] is node:
                        return (m.out_channels, _pair(m.kernel_size)[0], _pair(m.stride)[0],
                                _pair(m.padding)[0])
                    return None
                spec = specs.spec_of(user)
                if not isinstance(spec, specs.TensorSpec) or tuple(spec.shape) != shape:
                    return None
                following.append(user)
        frontier = following
        if not frontier:
            return None
    return None


def layer_shapes(A: ChannelAnalysis) -> dict[str, ConvShape]:
    """{producer name: ConvShape} for every prunable layer the table can time: a plain 2-D
    convolution (groups 1, zero padding, traced shapes known), or the BatchNorm after one."""
    out: dict[str, ConvShape] = {}
    for conv, producer in A.producers.items():
        name = A.name_of(producer)
        m = A.module_of(conv)
        if name not in A.masks or not _plain_conv2d(m) or A.call_count(conv) != 1:
            continue
        spec_in, spec_out = specs.spec_of(conv.args[0]), specs.spec_of(producer)
        if not isinstance(spec_in, specs.TensorSpec) or not isinstance(spec_out, specs.TensorSpec) \
                or len(spec_in.shape) != 4 or m.out_channels != len(A.masks[name]):
            continue
        out[name] = ConvShape(m.in_channels, m.out_channels, _pair(m.kernel_size),
                              _pair(m.stride), _pair(m.padding), _pair(m.dilation),
                              int(spec_in.shape[2]), int(spec_in.shape[3]),
                              _consumer(A, producer, m.out_channels))
    return out


def stand_in(shape: ConvShape, width: int, batch: int, seed: int = 0) -> bytes:
    """An ONNX model of ``shape``'s neighbourhood with ``width`` output channels: the
    convolution, a SiLU, and the consumer convolution with its SiLU when there is one."""
    rng = np.random.default_rng(seed)
    kh, kw = shape.kernel

    def tensor(name: str, dims: tuple[int, ...]) -> TensorProto:
        return numpy_helper.from_array(rng.standard_normal(dims).astype(np.float32) * 0.05, name)

    inits = [tensor("w1", (width, shape.in_channels, kh, kw)), tensor("b1", (width,))]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], kernel_shape=[kh, kw],
                              strides=list(shape.stride), dilations=list(shape.dilation),
                              pads=[shape.padding[0], shape.padding[1]] * 2),
             helper.make_node("Sigmoid", ["c1"], ["s1"]), helper.make_node("Mul", ["c1", "s1"], ["y1"])]
    out = "y1"
    if shape.consumer is not None:
        c_out, k, s, p = shape.consumer
        inits += [tensor("w2", (c_out, width, k, k)), tensor("b2", (c_out,))]
        nodes += [helper.make_node("Conv", ["y1", "w2", "b2"], ["c2"], kernel_shape=[k, k],
                                   strides=[s, s], pads=[p] * 4),
                  helper.make_node("Sigmoid", ["c2"], ["s2"]),
                  helper.make_node("Mul", ["c2", "s2"], ["y2"])]
        out = "y2"
    graph = helper.make_graph(
        nodes, "width_probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                       [batch, shape.in_channels, shape.height, shape.width])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, 8)
    return model.SerializeToString()


def candidates(kept: int, total: int, span: int) -> list[int]:
    """The widths a layer keeping ``kept`` of ``total`` channels may round to: ``kept``, the
    multiples of 4 above it up to ``kept + span``, and ``total`` when it lies in that range."""
    if kept >= total:
        return [total]
    top = min(total, kept + span)
    found = {kept, *range(-(-kept // 4) * 4, top + 1, 4)}
    if total <= top:
        found.add(total)
    return sorted(w for w in found if kept <= w <= total)


def widest_fast(times: dict[int, float], tolerance: float) -> int:
    """The widest width whose time is within ``tolerance`` of the fastest."""
    best = min(times.values())
    return max(w for w, t in times.items() if t <= best * (1 + tolerance))


class WidthTable:
    """Per-layer latency lookup for runtime-aware rounding (module docstring).  Pass as
    ``round_to`` to :func:`graphprune.compile` (and everything that takes ``round_to``).

    ``timer``: what times the stand-ins — by default a :class:`graphprune.timing.OrtTimer`
    on ``runtime`` with ``threads`` and ``batch``; tests pass a fake one (any object with
    ``prepare_onnx``, ``measure`` and ``drop``).  ``cache``: the cache file, or None to keep
    nothing on disk; by default one per runtime, thread count and machine under
    :func:`cache_dir`."""

    def __init__(self, runtime: str = "ort-cpu", *, threads: int = 2, batch: int = 1,
                 rounds: int = 15, tolerance: float = 0.02, span: int = 32, fallback: int = 8,
                 cache: str | Path | None | bool = True, refresh: bool = False,
                 timer: Any = None, progress: Callable[[str], None] | None = None):
        for option, value, low in (("threads", threads, 1), ("batch", batch, 1),
                                   ("rounds", rounds, 3), ("span", span, 4),
                                   ("fallback", fallback, 1)):
            if not isinstance(value, int) or value < low:
                raise GraphpruneError(f"the width table's {option} must be an integer >= {low}, "
                                      f"got {value!r}")
        if not (isinstance(tolerance, (int, float)) and 0 <= tolerance < 1):
            raise GraphpruneError(f"the width table's tolerance must be in [0, 1), got "
                                  f"{tolerance!r}", hint="0.02 treats times within 2 % as equal")
        if timer is None:
            check_runtime(runtime)
        self.runtime, self.threads, self.batch, self.rounds = runtime, threads, batch, rounds
        self.tolerance, self.span, self.fallback = float(tolerance), span, fallback
        self._timer = timer
        self.progress = progress
        self.machine = machine_id()
        tag = hashlib.sha1(json.dumps(self.machine, sort_keys=True).encode()).hexdigest()[:10]
        if cache is True:
            cache = cache_dir() / f"widths-{runtime}-{threads}t-{tag}.json"
        self.cache_path = Path(cache) if cache else None
        self.times: dict[str, dict[int, float]] = {}
        self.choices: dict[str, dict[int, int]] = {}
        self.timed = 0                        # stand-ins timed by this table (not cached)
        if self.cache_path is not None and not refresh:
            self._load()
        self._shapes: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def __repr__(self) -> str:
        return f"WidthTable({self.runtime!r}, threads={self.threads}, batch={self.batch})"

    def describe(self) -> str:
        return f"runtime:{self.runtime}"

    # -- the cache ---------------------------------------------------------------------------
    def _load(self) -> None:
        try:
            data = json.loads(self.cache_path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as e:
            print(f"graphprune: ignoring the unreadable width cache {self.cache_path} ({e}); "
                  "widths are timed again", file=sys.stderr)
            return
        if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
            return
        try:
            self.times = {k: {int(w): float(t) for w, t in v.items()}
                          for k, v in data.get("times", {}).items()}
            self.choices = {k: {int(w): int(c) for w, c in v.items()}
                            for k, v in data.get("choices", {}).items()}
        except (AttributeError, TypeError, ValueError):
            self.times, self.choices = {}, {}

    def save(self) -> None:
        """Write the cache (whole or not at all)."""
        if self.cache_path is None:
            return
        data = {"version": CACHE_VERSION, "runtime": self.runtime, "threads": self.threads,
                "machine": self.machine,
                "times": {k: {str(w): round(t, 5) for w, t in v.items()}
                          for k, v in self.times.items()},
                "choices": {k: {str(w): c for w, c in v.items()} for k, v in self.choices.items()}}
        try:
            with atomic_path(self.cache_path) as tmp:
                tmp.write_text(json.dumps(data, indent=0))
        except OSError as e:
            print(f"graphprune: could not write the width cache {self.cache_path} ({e}); "
                  "the widths chosen are used, not kept", file=sys.stderr)

    # -- timing ------------------------------------------------------------------------------
    def measure(self, shape: ConvShape, widths: list[int]) -> dict[int, float]:
        """Median ms of ``shape``'s stand-in at each of ``widths``, timed together (not
        stored: :meth:`times_at` does that)."""
        if self._timer is None:
            # a stand-in is one or two convolutions: two calls warm it up (a whole model's
            # half second of warm-up would dominate the table's cost)
            self._timer = OrtTimer(self.runtime, threads=self.threads, batch=self.batch,
                                   warmup=2, warmup_s=0.0)
        key = shape.key(self.batch)
        if self.progress is not None:
            self.progress(f"timing {key} at {len(widths)} widths")
        x = np.random.default_rng(0).random((1, shape.in_channels, shape.height, shape.width),
                                            dtype=np.float32)
        names = [f"{key}@{w}" for w in widths]
        try:
            for name, w in zip(names, widths):
                self._timer.prepare_onnx(name, stand_in(shape, w, self.batch), [x])
            samples = self._timer.measure(names, self.rounds)
        finally:
            for name in names:
                self._timer.drop(name)
        self.timed += len(widths)
        return {w: float(np.median(samples[n])) for n, w in zip(names, widths)}

    def times_at(self, shape: ConvShape, widths: list[int]) -> dict[int, float]:
        """``shape``'s times at ``widths``: the known ones from the table; the others timed
        together with one known width (the nearest), and scaled by that width's known time over
        its new one, so that times taken at different moments compare."""
        key = shape.key(self.batch)
        known = self.times.setdefault(key, {})
        missing = [w for w in widths if w not in known]
        if missing:
            anchor = min((w for w in known), key=lambda w: abs(w - missing[0]), default=None)
            found = self.measure(shape, missing + ([anchor] if anchor is not None else []))
            if anchor is not None:
                scale = known[anchor] / max(found.pop(anchor), 1e-9)
                found = {w: t * scale for w, t in found.items()}
            known.update(found)
        return {w: known[w] for w in widths}

    def choose(self, shape: ConvShape, kept: int) -> int:
        """The width a layer of ``shape`` keeping ``kept`` channels rounds to (cached)."""
        total = shape.out_channels
        if kept >= total:
            return total
        key = shape.key(self.batch)
        known = self.choices.get(key, {})
        if kept in known and kept <= known[kept] <= total:
            return known[kept]
        widths = candidates(kept, total, self.span)
        timed = self.timed
        times = self.times_at(shape, widths) if len(widths) > 1 else {kept: 0.0}
        chosen = widest_fast(times, self.tolerance)
        self.choices.setdefault(key, {})[kept] = chosen
        if self.timed != timed:     # new times are worth keeping; a choice made from known
            self.save()             # ones is not worth rewriting the whole file for
        return chosen

    def shapes(self, A: ChannelAnalysis) -> dict[str, ConvShape]:
        if A not in self._shapes:
            self._shapes[A] = layer_shapes(A)
        return self._shapes[A]

    def rounder(self, A: ChannelAnalysis) -> Callable[[str, int, int], int]:
        """(layer name, kept, total) -> the width to keep, for the layers of ``A``."""
        shapes = self.shapes(A)

        def target(name: str, kept: int, total: int) -> int:
            shape = shapes.get(name)
            if shape is None or shape.out_channels != total:
                return round_up_count(kept, total, self.fallback)
            return self.choose(shape, kept)
        return target

    def close(self) -> None:
        if self._timer is not None and hasattr(self._timer, "close"):
            self._timer.close()
        self._timer = None

    def __getstate__(self) -> dict[str, Any]:      # copies and pickles hold no sessions
        state = dict(self.__dict__)
        state["_timer"] = None
        state["_shapes"] = None
        state["progress"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._shapes = weakref.WeakKeyDictionary()

    def __deepcopy__(self, memo: dict) -> "WidthTable":
        return self                                   # one table: its cache is shared


def rounding_name(round_to: Any) -> Any:
    """``round_to`` as a report shows it: the integer, or the table's description."""
    if isinstance(round_to, int):
        return round_to
    return round_to.describe() if hasattr(round_to, "describe") else repr(round_to)


def is_width_table(value: Any) -> bool:
    return callable(getattr(value, "rounder", None))


__all__ = ["ConvShape", "WidthTable", "cache_dir", "candidates", "is_width_table",
           "layer_shapes", "machine_id", "rounding_name", "stand_in", "widest_fast"]
