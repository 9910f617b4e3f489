"""Reading checkpoints: the graphprune checkpoint and the MODEL a user names on the command line.

* A graphprune checkpoint (``graphprune.export.save_checkpoint``) holds tensors and a JSON recipe
  only, so it is read with ``torch.load(weights_only=True)``.  The recipe names a built-in builder
  and its arguments, the applied masks and the example input shapes; ``load`` rebuilds the slim
  module from it deterministically (compiling the base model again with the recorded masks),
  then loads the weights.  A model graphprune did not build is rebuilt from an instance the
  caller passes.
* ``open_model`` takes what a user gives the CLI as MODEL: a built-in architecture name (built
  with random weights), a graphprune checkpoint, or a pickled ``nn.Module`` / a checkpoint dict
  holding one (``{"model": module}``, the ultralytics layout).  Unpickling can run arbitrary
  code, so that needs ``trust=True`` (``--trust-checkpoint``); without it graphprune refuses and
  explains why.
"""

from __future__ import annotations

import inspect
import json
import math
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from . import models
from .argtypes import MAX_CLASSES
from .errors import CheckpointError, first_line, summary
from .export import FORMAT, VERSION
from .pipeline import compile as gp_compile


def read_checkpoint(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(recipe, state_dict) of a graphprune checkpoint, read without executing any pickle."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist",
                              hint="check the path")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{str(path)!r} is not a graphprune checkpoint "
                              f"({summary(exc, 120)})",
                              hint="graphprune checkpoints are written by `graphprune compile` "
                                   "or CompileResult.save") from None
    return parse_checkpoint(payload, path)


def parse_checkpoint(payload: Any, path: str | Path
                     ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(recipe, state_dict) of an already-loaded checkpoint payload."""
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is a torch file but not a graphprune checkpoint",
                              hint="graphprune checkpoints are written by `graphprune compile` "
                                   "or CompileResult.save")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"{str(path)!r} has checkpoint version {payload.get('version')}, "
                              f"this graphprune reads version {VERSION}",
                              hint="upgrade graphprune")
    try:
        recipe = json.loads(payload["recipe"])
        state = dict(payload["state_dict"])
    except (KeyError, TypeError, ValueError, RecursionError) as exc:
        raise CheckpointError(f"{str(path)!r} has a damaged recipe "
                              f"({type(exc).__name__}: {str(exc)[:120]})") from None
    check_recipe(recipe, path)
    return recipe, state


# bounds of what a recipe may ask for: a checkpoint is data, and data may be hostile
MAX_PARENTS = 32                 # compiles of compiles
MAX_INPUT_ELEMENTS = 2 ** 28     # elements of one example input (1 GiB of float32)
MAX_NUMBER = 10 ** 6             # any number among a builder's arguments
# the built-in builders' size arguments, bounded so a recipe cannot ask for a model that does
# not fit in memory
KWARG_BOUNDS = {"num_classes": (1, MAX_CLASSES), "width_multiple": (0.01, 4.0),
                "depth_multiple": (0.01, 4.0), "width": (1, 4096), "in_channels": (1, 64)}
DTYPES = ("float32", "float16", "bfloat16", "float64", "int64", "int32", "uint8", "bool")


def _sane_value(value: Any, depth: int = 0) -> bool:
    """A builder argument: a bounded finite number, a short string, a bool, None, or a small
    list of those (anchors)."""
    if value is None or isinstance(value, bool):
        return True
    if isinstance(value, str):
        return len(value) <= 256
    if isinstance(value, (int, float)):
        return math.isfinite(value) and abs(value) <= MAX_NUMBER
    if isinstance(value, list):
        return depth < 3 and len(value) <= 64 and all(_sane_value(v, depth + 1) for v in value)
    return False


def check_recipe(recipe: Any, path: str | Path, depth: int = 0) -> None:
    """Refuse a recipe whose fields have the wrong type or an absurd size before anything is
    built from it: the builder and its arguments, the masks, the example inputs, the leaves,
    and each compile it was made from (``parent``)."""
    def bad(field: str, why: str) -> CheckpointError:
        return CheckpointError(f"{str(path)!r} has a damaged recipe: {field} {why}",
                               hint="re-create the checkpoint with graphprune compile")
    if not isinstance(recipe, dict):
        raise bad("the recipe", "is not a JSON object")
    if depth > MAX_PARENTS:
        raise bad("parent", f"nests more than {MAX_PARENTS} compiles")
    builder = recipe.get("builder")
    if builder is not None and builder not in models.BUILDERS:
        raise bad("builder", f"{str(builder)[:40]!r} is not a built-in model")
    kwargs = recipe.get("kwargs", {})
    if not isinstance(kwargs, dict):
        raise bad("kwargs", "is not a JSON object")
    if builder is not None:
        params = inspect.signature(models.BUILDERS[builder]).parameters
        open_ended = any(p.kind is p.VAR_KEYWORD for p in params.values())
        for key, value in kwargs.items():
            if not open_ended and key not in params:
                raise bad("kwargs", f"name {str(key)[:40]!r}, which {builder} does not take")
            lo, hi = KWARG_BOUNDS.get(key, (-MAX_NUMBER, MAX_NUMBER))
            if not _sane_value(value) or (isinstance(value, (int, float)) and
                                          not isinstance(value, bool) and
                                          not lo <= value <= hi):
                raise bad(f"kwargs[{str(key)[:40]!r}]", f"= {str(value)[:40]} is out of range")
    masks = recipe.get("masks")
    if masks is not None:
        if not isinstance(masks, dict) or not all(
                isinstance(k, str) and isinstance(v, str) and set(v) <= {"0", "1"}
                for k, v in masks.items()):
            raise bad("masks", "are not strings of 0 and 1 by layer name")
    inputs = recipe.get("inputs", [])
    if not isinstance(inputs, list) or len(inputs) > 64:
        raise bad("inputs", "is not a list of input specs")
    for k, spec in enumerate(inputs):
        shape = spec.get("shape") if isinstance(spec, dict) else None
        if not isinstance(shape, list) or not all(
                isinstance(d, int) and not isinstance(d, bool) and 0 < d <= MAX_INPUT_ELEMENTS
                for d in shape) or math.prod(shape) > MAX_INPUT_ELEMENTS:
            raise bad(f"inputs[{k}].shape", f"= {str(shape)[:60]} is not a sane shape")
        if spec.get("dtype") not in DTYPES:
            raise bad(f"inputs[{k}].dtype", f"= {str(spec.get('dtype'))[:40]!r} is not one of "
                                            f"{', '.join(DTYPES)}")
    leaves = recipe.get("leaves", [])
    if not isinstance(leaves, list) or not all(isinstance(x, str) for x in leaves):
        raise bad("leaves", "is not a list of module names")
    if recipe.get("parent") is not None:
        check_recipe(recipe["parent"], path, depth + 1)


def decode_masks(recipe: dict[str, Any]) -> dict[str, np.ndarray] | None:
    masks = recipe.get("masks")
    if masks is None:
        return None
    return {n: np.frombuffer(s.encode(), dtype=np.uint8) == ord("1") for n, s in masks.items()}


def example_inputs_of(recipe: dict[str, Any]) -> tuple[torch.Tensor, ...]:
    return tuple(torch.zeros(spec["shape"], dtype=getattr(torch, spec["dtype"]))
                 for spec in recipe.get("inputs", []))


def load(path: str | Path, model: nn.Module | None = None) -> nn.Module:
    """Rebuild the module a graphprune checkpoint describes and load its weights.

    ``model``: an instance of the original architecture, needed when the checkpoint was made
    from a model graphprune cannot build itself (its recipe names no builder)."""
    recipe, state = read_checkpoint(path)
    return rebuild(recipe, state, path, model)


def build_structure(recipe: dict[str, Any], path: str | Path, model: nn.Module | None) -> nn.Module:
    """The (untrained) module a recipe describes: the base model, then each compile in turn
    (a slim model compiled again records the earlier recipe as its ``parent``)."""
    if recipe.get("parent") is not None:
        model = build_structure(recipe["parent"], path, model)
    elif model is None:
        builder = recipe.get("builder")
        if builder is None:
            raise CheckpointError(
                f"{str(path)!r} was compiled from {recipe.get('model_class', 'a custom model')}, "
                "which graphprune cannot build by itself",
                hint="pass an instance of that architecture: graphprune.load(path, model=...)")
        try:
            model = models.build(builder, **recipe.get("kwargs", {}))
        except (ValueError, TypeError) as exc:
            raise CheckpointError(f"{str(path)!r} names a model graphprune cannot build: {exc}") \
                from None
    masks = decode_masks(recipe)
    if masks is None:
        return model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return gp_compile(model, example_inputs_of(recipe), masks=masks,
                          leaves=recipe.get("leaves", []), verify=False,
                          dependency_groups=False).module


def rebuild(recipe: dict[str, Any], state: dict[str, torch.Tensor], path: str | Path,
            model: nn.Module | None = None) -> nn.Module:
    """The module a checkpoint's recipe describes, with its weights loaded."""
    module = build_structure(recipe, path, model)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"the weights in {str(path)!r} do not fit the rebuilt model: "
                              f"{first_line(exc)}",
                              hint="was it saved by another graphprune version, or is `model` "
                                   "a different architecture?") from None
    module.graphprune_recipe = recipe
    return module.eval()


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
                              f"({summary(exc, 120)})",
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
                                  f"({first_line(exc, 120)})",
                                  hint="is the file complete?") from None
        if not trust:
            raise CheckpointError(
                f"{spec!r} contains pickled Python objects; loading it could run arbitrary code",
                hint="if you trust its source, pass --trust-checkpoint") from None
        return _pickled_module(path)
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as exc:
        raise CheckpointError(f"{spec!r} is not a readable checkpoint "
                              f"({summary(exc, 120)})",
                              hint="is the file complete?") from None
    if isinstance(payload, dict) and payload.get("format") == FORMAT:
        return rebuild(*parse_checkpoint(payload, path), path)
    what = "only tensors (a state_dict?)" if isinstance(payload, dict) else \
        f"a {type(payload).__name__} of plain data"
    raise CheckpointError(f"{spec!r} holds {what}, not a model",
                          hint="build the architecture in Python and call graphprune.compile, "
                               "or save a graphprune checkpoint")


__all__ = ["build_structure", "decode_masks", "example_inputs_of", "load", "open_model",
           "parse_checkpoint", "read_checkpoint", "rebuild"]
