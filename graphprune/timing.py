"""Timing on a deployment runtime: onnxruntime's execution providers (``RUNTIMES``), the
one-line refusal of a provider that is not installed (``check_runtime``), and ``OrtTimer``,
which runs sessions interleaved — what ``--latency-target`` (``graphprune.latency``) and the
runtime-aware widths (``graphprune.widths``) time with."""

from __future__ import annotations

import copy
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np
import onnxruntime as ort
import torch
import torch.nn as nn

from .errors import GraphpruneError
from .export import export_onnx

# runtime → (onnxruntime execution provider, how to get it)
RUNTIMES = {
    "ort-cpu": ("CPUExecutionProvider", "pip install onnxruntime"),
    "ort-cuda": ("CUDAExecutionProvider", "pip install onnxruntime-gpu, on a machine with a "
                                          "CUDA GPU and driver"),
    "tensorrt": ("TensorrtExecutionProvider", "pip install onnxruntime-gpu and install "
                                              "TensorRT"),
    "openvino": ("OpenVINOExecutionProvider", "pip install onnxruntime-openvino"),
}


def check_runtime(runtime: str) -> str:
    """The execution provider of ``runtime``, or a one-line refusal saying how to get it."""
    if runtime not in RUNTIMES:
        raise GraphpruneError(f"unknown runtime {runtime!r}",
                              hint=f"one of {', '.join(RUNTIMES)}")
    provider, install = RUNTIMES[runtime]
    if provider not in ort.get_available_providers():
        raise GraphpruneError(f"the {runtime} runtime needs onnxruntime's {provider}, which is "
                              f"not installed here", hint=install)
    return provider


class Timer(Protocol):
    """What :func:`prune_to_latency` times with: ``prepare`` a module under a name, ``measure``
    named modules interleaved (the milliseconds of each call, one per round), ``drop`` a
    name."""

    @property
    def dir(self) -> Path:
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="graphprune-latency-"))
        return self._dir

    def prepare(self, name: str, module: nn.Module, example: tuple[Any, ...]) -> None: ...

    def measure(self, names: Sequence[str], rounds: int) -> dict[str, list[float]]: ...

    def drop(self, name: str) -> None: ...


class OrtTimer:
    """Times modules in onnxruntime: each is exported to ONNX (a float32 CPU copy; its own
    compile verified it, so the file's parity check is skipped), run by one session with
    ``threads`` intra-op threads on ``batch`` copies of the example input; ``measure`` calls
    them interleaved, a shuffled order each round, after warming each up (at least ``warmup``
    calls and ``warmup_s`` seconds: a new session's first calls, and the CPU just after a
    compile, run slow)."""

    def __init__(self, runtime: str = "ort-cpu", threads: int = 2, batch: int = 1,
                 warmup: int = 3, warmup_s: float = 0.5, seed: int = 0, spin: bool = False):
        self.provider = check_runtime(runtime)
        self.spin = spin
        self.runtime, self.threads, self.batch, self.warmup = runtime, threads, batch, warmup
        self.warmup_s = warmup_s
        self.rng = random.Random(seed)
        self._dir: Path | None = None       # made on the first export (ONNX bytes need none)
        self.sessions: dict[str, tuple[Any, dict[str, np.ndarray]]] = {}
        self.paths: dict[str, Path] = {}

    @property
    def dir(self) -> Path:
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="graphprune-latency-"))
        return self._dir

    def prepare(self, name: str, module: nn.Module, example: tuple[Any, ...]) -> None:
        inputs = tuple(x.detach().cpu().float() if isinstance(x, torch.Tensor) else x
                       for x in example)
        path = export_onnx(copy.deepcopy(module).cpu().float().eval(), inputs,
                           self.dir / f"{len(self.sessions)}-{abs(hash(name))}.onnx",
                           check=False)
        tensors = [x.numpy() for x in inputs if isinstance(x, torch.Tensor)]
        self.prepare_onnx(name, path, tensors)
        self.paths[name] = path

    def prepare_onnx(self, name: str, model: str | Path | bytes,
                     inputs: Sequence[np.ndarray]) -> None:
        """A session for an ONNX file (or its bytes) under ``name``, fed ``batch`` copies of
        ``inputs`` (one array a graph input, batch first)."""
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        if not self.spin:
            # a session's idle threads spin-wait for work by default, taking the cores from
            # the other session timed right after it (interleaved timing runs two)
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(model if isinstance(model, bytes) else str(model),
                                       options, providers=[self.provider])
        if session.get_providers()[0] != self.provider:
            # onnxruntime falls back to the CPU when a provider's libraries do not load
            raise GraphpruneError(f"the {self.runtime} runtime's {self.provider} did not load "
                                  f"(onnxruntime fell back to {session.get_providers()[0]})",
                                  hint=RUNTIMES[self.runtime][1])
        feed = {i.name: np.repeat(x, self.batch, axis=0)
                for i, x in zip(session.get_inputs(), inputs)}
        self.sessions[name] = (session, feed)

    def measure(self, names: Sequence[str], rounds: int) -> dict[str, list[float]]:
        samples: dict[str, list[float]] = {n: [] for n in names}
        order = list(names)
        start, calls = time.perf_counter(), 0
        while calls < self.warmup or time.perf_counter() - start < self.warmup_s:
            for name in order:
                session, feed = self.sessions[name]
                session.run(None, feed)
            calls += 1
        for _ in range(rounds):
            self.rng.shuffle(order)
            for name in order:
                session, feed = self.sessions[name]
                start = time.perf_counter()
                session.run(None, feed)
                samples[name].append(1000 * (time.perf_counter() - start))
        return samples

    def drop(self, name: str) -> None:
        self.sessions.pop(name, None)
        path = self.paths.pop(name, None)
        if path is not None:
            path.unlink(missing_ok=True)

    def close(self) -> None:
        self.sessions.clear()
        self.paths.clear()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> "OrtTimer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["OrtTimer", "RUNTIMES", "Timer", "check_runtime"]
