"""Writing artifacts: the graphprune checkpoint, ``slim.pt2`` (torch.export) and ``slim.onnx``.

* The checkpoint holds only tensors and plain data — ``{"format", "version", "recipe" (a JSON
  string), "state_dict"}`` — so it loads with ``torch.load(weights_only=True)``.  The recipe names
  a built-in builder and its arguments, the applied masks and the example input shapes;
  ``graphprune.checkpoint`` reads it back (``graphprune.load``).
* ``slim.pt2``: ``torch.export`` program (pickle-free); ``torch.export.load(p).module()`` runs it.
* ``slim.onnx``: TorchScript-based exporter (``dynamo=False``: an order of magnitude faster than
  the dynamo exporter here, see DESIGN.md), opset ``ONNX_OPSET``, dynamic batch axis, checked
  with ``onnx.checker`` and against onnxruntime before it is moved into place.

Every file is written to a temporary name beside its destination and renamed when complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import onnxruntime as ort
import torch
import torch.nn as nn
from torch.utils._pytree import tree_flatten

from .context import ATOL, RTOL
from .errors import GraphpruneError, VerificationError

FORMAT = "graphprune"
VERSION = 1
ONNX_OPSET = 17


@contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def refuse_existing_output(path: str | Path, overwrite: bool,
                           hint: str = "choose another --out or pass --overwrite") -> None:
    """The one check every command that writes an output directory makes first."""
    if Path(path).exists() and not overwrite:
        raise GraphpruneError(f"output directory {str(path)!r} already exists", hint=hint)


@contextmanager
def atomic_directory(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temporary directory beside ``path``; when the block succeeds it becomes
    ``path`` (replacing an existing one only with ``overwrite``).  On failure nothing changes."""
    path = Path(path)
    refuse_existing_output(path, overwrite, "choose another output directory or pass --overwrite")
    if path.exists() and not path.is_dir():
        raise GraphpruneError(f"{str(path)!r} exists and is not a directory",
                              hint="choose another output directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old",
                                        dir=path.parent))
            os.replace(path, old / path.name)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def save_checkpoint(module: nn.Module, recipe: dict[str, Any], path: str | Path) -> Path:
    state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
    payload = {"format": FORMAT, "version": VERSION, "recipe": json.dumps(recipe),
               "state_dict": state}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


class _Exportable(nn.Module):
    """Wraps a GraphModule so torch.export traces its generated code rather than replaying
    its graph in an ``fx.Interpreter`` (whose immutable argument lists kept-whole modules such
    as YOLO heads cannot mutate)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, *inputs):
        return self.module(*inputs)


def _batch_of_two(x: Any) -> Any:
    """An example with batch 2: torch.export specialises a batch of 1 to a constant."""
    if isinstance(x, torch.Tensor) and x.dim() >= 1 and x.shape[0] == 1:
        return torch.cat([x, x])
    return x


def export_pt2(module: nn.Module, example_inputs: tuple[Any, ...], path: str | Path,
               dynamic_batch: bool = True) -> Path:
    """Save ``module`` as a torch.export program; the batch axis is dynamic when possible."""
    wrapper = _Exportable(module).eval()
    inputs = tuple(example_inputs)
    program, error = None, None
    if dynamic_batch and all(isinstance(x, torch.Tensor) and x.dim() >= 1 for x in inputs):
        batch = torch.export.Dim("batch")
        try:
            program = torch.export.export(wrapper, tuple(_batch_of_two(x) for x in inputs),
                                          dynamic_shapes=(tuple({0: batch} for _ in inputs),))
        except Exception as exc:   # a model that fixes its batch size: export it static
            error = exc
    if program is None:
        try:
            program = torch.export.export(wrapper, inputs)
        except Exception as exc:
            exc = error or exc
            raise GraphpruneError(f"torch.export could not export the slim model "
                                  f"({type(exc).__name__}: {str(exc).splitlines()[0][:160]})",
                                  hint="the ONNX file and the graphprune checkpoint are "
                                       "unaffected") from None
    with atomic_path(path, ".pt2") as tmp, warnings.catch_warnings():
        # Constants that are expanded views (a detection head's cached grid) make torch warn
        # that it stores "the first" tensor of their storage group; the loaded program is
        # checked equal in the tests.
        warnings.filterwarnings("ignore", message="No complete tensor found in the group")
        torch.export.save(program, tmp)
    return Path(path)


def _flat_outputs(out: Any) -> list[torch.Tensor]:
    return [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]


def export_onnx(module: nn.Module, example_inputs: tuple[Any, ...], path: str | Path, *,
                opset: int = ONNX_OPSET, dynamic_batch: bool = True, check: bool = True,
                atol: float = ATOL, rtol: float = RTOL) -> Path:
    """Export to ONNX, check the file and compare onnxruntime with the module."""
    import onnx  # deferred: ~0.7 s to import, and only ONNX export needs it

    module = module.eval()
    inputs = tuple(example_inputs)
    with torch.no_grad():
        expected = _flat_outputs(module(*inputs))
    input_names = ["images"] if len(inputs) == 1 else [f"input{i}" for i in range(len(inputs))]
    output_names = [f"output{i}" for i in range(len(expected))]
    axes = {n: {0: "batch"} for n in input_names + output_names} if dynamic_batch else None
    with atomic_path(path, ".onnx") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(module, inputs, str(tmp), dynamo=False, opset_version=opset,
                              input_names=input_names, output_names=output_names,
                              dynamic_axes=axes, do_constant_folding=True)
        except Exception as exc:
            raise GraphpruneError(f"ONNX export failed ({type(exc).__name__}: "
                                  f"{str(exc).splitlines()[0][:160]})",
                                  hint="the graphprune checkpoint is unaffected") from None
        onnx.checker.check_model(str(tmp))
        if check:
            worst = onnx_parity(tmp, inputs, expected, atol, rtol)
            if worst is not None:
                raise VerificationError(f"onnxruntime disagrees with the slim module: {worst}",
                                        hint="please report this model")
    return Path(path)


def onnx_parity(path: str | Path, inputs: tuple[Any, ...], expected: list[torch.Tensor],
                atol: float = ATOL, rtol: float = RTOL) -> str | None:
    """Run ``path`` in onnxruntime; None if every output matches, else what differs."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {i.name: x.detach().cpu().numpy() for i, x in zip(session.get_inputs(), inputs)}
    got = session.run(None, feed)
    if len(got) != len(expected):
        return f"{len(got)} outputs instead of {len(expected)}"
    for k, (g, e) in enumerate(zip(got, expected)):
        e = e.detach().cpu().numpy()
        if g.shape != e.shape:
            return f"output {k} has shape {g.shape} instead of {e.shape}"
        bad = ~(np.abs(g - e) <= atol + rtol * np.abs(e))
        if bad.any():
            return f"output {k}: max |diff| {float(np.abs(g - e).max()):.3g}"
    return None


__all__ = ["FORMAT", "ONNX_OPSET", "VERSION", "atomic_directory", "atomic_path", "export_onnx",
           "export_pt2", "onnx_parity", "refuse_existing_output", "save_checkpoint"]
