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

import contextlib
import copy
import io
import json
import os
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import onnxruntime as ort
import torch
import torch.nn as nn
from torch.utils._pytree import tree_flatten

from .context import ATOL, RTOL
from .errors import GraphpruneError, VerificationError, summary

FORMAT = "graphprune"
VERSION = 1
ONNX_OPSET = 17


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _as_created(path: Path, directory: bool) -> None:
    """Give a temporary file or directory (created 0600 / 0700) the mode a plain create would
    have had under the umask, since it becomes the output."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


@contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".tmp", dir=path.parent)
    os.close(fd)
    _as_created(Path(tmp), directory=False)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def refuse_file_ancestor(path: str | Path) -> None:
    """An output cannot be made below an existing file: say so before any work (the operating
    system would only say so at the end, as 'File exists' or 'Not a directory')."""
    for parent in Path(path).absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise GraphpruneError(f"cannot write {str(path)!r}: {str(parent)!r} is a file, "
                                      "not a folder", hint="choose an output path under a folder")
            return


def refuse_output_file(path: str | Path, what: str) -> None:
    """The up-front check for a single output file (``what`` names its option): not a
    directory, not below a file."""
    refuse_file_ancestor(path)
    if Path(path).is_dir():
        raise GraphpruneError(f"{what} {str(path)!r} is a directory",
                              hint="give a file name, e.g. metrics.json")


def refuse_existing_output(path: str | Path, overwrite: bool,
                           hint: str = "choose another --out or pass --overwrite",
                           inputs: Iterable[str | Path | None] = ()) -> None:
    """The one check every command that writes an output directory makes before any work: an
    existing ``path`` needs ``overwrite`` and must be a directory; ``path`` may not be the
    current directory (or hold it), and may not be, hold or lie inside any of ``inputs`` (an
    overwrite would delete them, or the output would land among them)."""
    path = Path(path)
    refuse_file_ancestor(path)
    if path.exists() and not overwrite:
        raise GraphpruneError(f"output directory {str(path)!r} already exists", hint=hint)
    if path.exists() and not path.is_dir():
        raise GraphpruneError(f"{str(path)!r} exists and is not a directory",
                              hint="choose another output directory")
    target = path.resolve()
    here = Path.cwd().resolve()
    if target == here or target in here.parents:
        raise GraphpruneError(f"output directory {str(path)!r} is the current directory or "
                              f"holds it", hint="choose a new folder, e.g. runs/NAME")
    for item in inputs:
        if item is None or str(item) == "":
            continue
        source = Path(item).resolve()
        if source == target or target in source.parents or source in target.parents:
            relation = ("is" if source == target else "holds" if target in source.parents
                        else "lies inside")
            raise GraphpruneError(f"output directory {str(path)!r} {relation} the input "
                                  f"{str(item)!r}", hint="write the output somewhere else; "
                                                         "inputs are only read")


class OutputRace(GraphpruneError):
    """Another process created the output directory while this one was building it."""

    @classmethod
    def at(cls, path: Path) -> "OutputRace":
        return cls(f"output directory {str(path)!r} was created by another process while this "
                   f"one ran; this run's output was not kept", hint="give each run its own --out")


@contextmanager
def atomic_directory(path: str | Path, overwrite: bool = False,
                     inputs: Iterable[str | Path | None] = ()) -> Iterator[Path]:
    """Yield an empty temporary directory beside ``path``; when the block succeeds it becomes
    ``path`` (replacing an existing one only with ``overwrite``, and the old one only once the
    new one is complete).  On failure, or when another process created ``path`` meanwhile
    without ``overwrite``, nothing of this run is kept and nothing else changes."""
    path = Path(path)
    refuse_existing_output(path, overwrite, "choose another output directory or pass "
                                            "--overwrite", inputs)
    path = path.resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    _as_created(tmp, directory=True)
    try:
        yield tmp
        old = None
        if path.exists() and overwrite:
            old = _move_aside(path)
        elif path.exists():
            raise OutputRace.at(path)
        try:
            # rename refuses a non-empty target: a writer that won the race keeps its output
            os.rename(tmp, path)
        except OSError:
            raise OutputRace.at(path) from None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _move_aside(path: Path) -> Path:
    """Move an existing output into a hidden ``.NAME.*.old`` folder beside it; that folder."""
    aside = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
    os.replace(path, aside / path.name)
    return aside


def _put_back(aside: Path | None, path: Path) -> None:
    """Undo ``_move_aside`` (nothing when nothing was moved)."""
    if aside is not None:
        os.replace(aside / path.name, path)
        shutil.rmtree(aside, ignore_errors=True)


@contextmanager
def staged_directory(path: str | Path, overwrite: bool = False,
                     inputs: Iterable[str | Path | None] = (),
                     keep_partial: bool = False) -> Iterator[Path]:
    """For commands that write into their output as they go (training, the demo): ``path`` is
    created here, exclusively (a concurrent run on the same ``path`` is refused).  With
    ``overwrite`` an existing ``path`` is first moved aside, and deleted only when the block
    succeeds.  On failure the partial ``path`` is removed and the old one put back; with
    ``keep_partial`` (a training run, which can be resumed) a partial run that wrote anything
    stays and the old one is kept aside, and a note on the exception says where; an empty one
    is removed like any other."""
    given = Path(path)
    refuse_existing_output(given, overwrite, "choose another --out or pass --overwrite", inputs)
    path = given.resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    aside = None
    if path.exists() and overwrite:         # keep it until the new run is done
        aside = _move_aside(path)
    try:
        path.mkdir()
    except FileExistsError:
        _put_back(aside, path)
        raise OutputRace.at(path) from None
    try:
        yield given
    except BaseException as exc:
        if keep_partial and any(path.iterdir()):
            exc.add_note(f"the partial run stays at {str(path)!r}" + (
                f", the previous one at {str(aside / path.name)!r}" if aside is not None else ""))
            raise
        shutil.rmtree(path, ignore_errors=True)
        _put_back(aside, path)
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


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
                                  f"({summary(exc)})",
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


# the opset the dynamo exporter writes (its lowest supported), used when the TorchScript one fails
DYNAMO_OPSET = 18


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
            # the TorchScript-based exporter (fast) lacks some ops, e.g. an adaptive pooling
            # whose output size does not divide its input; the dynamo exporter (slower) has them
            first = summary(exc)
            try:
                with contextlib.redirect_stdout(io.StringIO()):     # its progress lines
                    torch.onnx.export(module, inputs, str(tmp), dynamo=True,
                                      opset_version=max(opset, DYNAMO_OPSET),
                                      input_names=input_names, output_names=output_names,
                                      dynamic_axes=axes, verbose=False,
                                      external_data=False)   # one file, renamed whole
            except Exception as second:
                raise GraphpruneError(f"ONNX export failed ({first}; the dynamo exporter: "
                                      f"{summary(second, 120)})",
                                      hint="the graphprune checkpoint is unaffected") from None
        onnx.checker.check_model(str(tmp))
        if check:
            worst = onnx_parity(tmp, inputs, expected, atol, rtol)
            if worst is not None:
                spread = float32_spread(module, inputs, expected, atol, rtol)
                if spread is not None:
                    raise VerificationError(
                        f"onnxruntime disagrees with the slim module ({worst}), and so does "
                        f"the module with itself in float64 ({spread}): its outputs hinge on "
                        "near-ties (a top-k, sort or argmax, e.g. RT-DETR's query selection) "
                        "that float32 rounding decides either way, so no float32 runtime can "
                        "be checked against them; the file is not written",
                        hint="use the PyTorch outputs (slim.graphprune.pt, slim.pt2), or pass "
                             "--no-onnx; if the model has no such selection, please report it")
                raise VerificationError(f"onnxruntime disagrees with the slim module: {worst}",
                                        hint="please report this model")
    return Path(path)


def float32_spread(module: nn.Module, inputs: tuple[Any, ...], expected: list[torch.Tensor],
                   atol: float = ATOL, rtol: float = RTOL) -> str | None:
    """Where ``module``'s float32 outputs ``expected`` differ from its own outputs in float64
    beyond the tolerance (outputs that float32 rounding decides), else None (also when the
    module cannot run in float64; it is copied, not changed)."""
    try:
        double = copy.deepcopy(module).double()
        xs = tuple(x.double() if isinstance(x, torch.Tensor) and x.is_floating_point() else x
                   for x in inputs)
        with torch.no_grad():
            reference = _flat_outputs(double(*xs))
    except (RuntimeError, TypeError, ValueError, AttributeError, AssertionError, IndexError,
            KeyError):
        return None
    if len(reference) != len(expected):
        return f"{len(reference)} outputs in float64, {len(expected)} in float32"
    for k, (e, r) in enumerate(zip(expected, reference)):
        if e.shape != r.shape:
            return f"output {k} has shape {tuple(r.shape)} in float64, {tuple(e.shape)} in float32"
        e, r = e.detach().double(), r.detach().double()
        diff = (e - r).abs()
        if not bool((diff <= atol + rtol * r.abs()).all()):
            return f"output {k}: max |diff| {float(diff.max()):.3g}"
    return None


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


__all__ = ["FORMAT", "ONNX_OPSET", "VERSION", "OutputRace", "atomic_directory", "atomic_path",
           "export_onnx", "export_pt2", "float32_spread", "onnx_parity", "refuse_existing_output",
           "refuse_file_ancestor",
           "refuse_output_file", "save_checkpoint", "staged_directory"]
