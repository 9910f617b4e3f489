"""Opening the MODEL a user names on the command line, safely.

MODEL is one of:
* a built-in architecture name (``yolov5s``, ``tiny_resnet``, ...), built with random weights;
* a graphprune checkpoint (tensors + JSON recipe; read with ``torch.load(weights_only=True)``);
* a pickled ``nn.Module`` or a checkpoint dict holding one (``{"model": module}``, the
  ultralytics layout) — unpickling can run arbitrary code, so this needs ``trust=True``
  (``--trust-checkpoint``); without it graphprune refuses and explains why.
"""

from __future__ import annotations

import pickle
import warnings
import zipfile
from pathlib import Path

import torch
import torch.nn as nn

from . import models
from .errors import CheckpointError
from .export import FORMAT, parse_checkpoint, rebuild


def _pickled_module(path: Path) -> nn.Module:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=False)
    except (ModuleNotFoundError, AttributeError) as exc:
        raise CheckpointError(f"{str(path)!r} pickles classes that cannot be imported here "
                              f"({exc})",
                              hint="install the package that defines the model, or export it "
                                   "as a graphprune checkpoint") from None
    except Exception as exc:
        raise CheckpointError(f"{str(path)!r} cannot be read as a torch checkpoint "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0][:120]})",
                              hint="is the file complete?") from None
    if isinstance(obj, dict):
        for key in ("ema", "model"):
            if isinstance(obj.get(key), nn.Module):
                obj = obj[key]
                break
    if not isinstance(obj, nn.Module):
        raise CheckpointError(f"{str(path)!r} holds a {type(obj).__name__}, not a model",
                              hint="a state_dict alone cannot be pruned: save the nn.Module, or "
                                   "build the architecture in Python and call graphprune.compile")
    return obj.float().eval()


def _looks_pickled(path: Path) -> bool:
    """A torch zip archive, or a raw pickle (protocol 2+ starts with the PROTO opcode)."""
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as f:
        head = f.read(2)
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def open_model(spec: str, *, trust: bool = False, num_classes: int | None = None) -> nn.Module:
    """The model ``spec`` names (see the module docstring)."""
    path = Path(spec)
    if not path.exists():
        if spec in models.BUILDERS:
            kwargs = {} if num_classes is None else {"num_classes": num_classes}
            return models.build(spec, **kwargs)
        raise CheckpointError(f"{spec!r} is neither a file nor a built-in model",
                              hint=f"built-in models: {', '.join(sorted(models.BUILDERS))}")
    if path.is_dir():
        raise CheckpointError(f"{spec!r} is a directory", hint="give a checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{spec!r} is empty", hint="is the file complete?")
    try:
        with warnings.catch_warnings():      # torch's own notes about pickle protocols
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not _looks_pickled(path):
            raise CheckpointError(f"{spec!r} is not a checkpoint: neither a torch archive nor "
                                  "a pickle", hint="is the file complete, and the right "
                                                   "file?") from None
        if "weights_only" not in str(exc) and "GLOBAL" not in str(exc):
            raise CheckpointError(f"{spec!r} is not a readable checkpoint "
                                  f"({str(exc).splitlines()[0][:120]})",
                                  hint="is the file complete?") from None
        if not trust:
            raise CheckpointError(
                f"{spec!r} contains pickled Python objects; loading it could run arbitrary code",
                hint="if you trust its source, pass --trust-checkpoint") from None
        return _pickled_module(path)
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as exc:
        raise CheckpointError(f"{spec!r} is not a readable checkpoint "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0][:120]})",
                              hint="is the file complete?") from None
    if isinstance(payload, dict) and payload.get("format") == FORMAT:
        return rebuild(*parse_checkpoint(payload, path), path)
    what = "only tensors (a state_dict?)" if isinstance(payload, dict) else \
        f"a {type(payload).__name__} of plain data"
    raise CheckpointError(f"{spec!r} holds {what}, not a model",
                          hint="build the architecture in Python and call graphprune.compile, "
                               "or save a graphprune checkpoint")


__all__ = ["open_model"]
