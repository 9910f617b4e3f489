"""Pass 1 — propagate shapes: run the traced model once on the example inputs.

An ``fx.Interpreter`` (in the style of ``torch/fx/passes/shape_prop.py``) records on every node
the shape of the value it produced (``node.meta["graphprune.spec"]``: a ``TensorSpec``, a tuple
of them, or ``None``).  For every module kept whole (a leaf), it also records how the module used
each of its tensor inputs (``node.meta["graphprune.leaf"]``): which inner Conv/Linear layers
consumed the input directly, and which other operations touched it.  The channel rules use that
to slim the input columns of those inner layers without looking at the leaf's code.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.passes.infra.pass_base import PassResult
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from graphprune.context import CompileContext
from graphprune.inner import CallRecorder
from graphprune.masks import BATCHNORMS, CONVS
from graphprune.specs import INNER_CALLS, LEAF_USAGE, SPEC, LeafUsage, TensorSpec
from graphprune.tracing import Interpreter, flat_tensor_args

_CONV_FUNCTIONS = {F.conv1d: nn.Conv1d, F.conv2d: nn.Conv2d, F.conv3d: nn.Conv3d,
                   F.linear: nn.Linear}
_LAYER_TYPES = CONVS + (nn.Linear,)


def spec_of_value(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return TensorSpec(tuple(value.shape), value.dtype)
    if isinstance(value, (tuple, list)) and value and \
            all(isinstance(v, torch.Tensor) for v in value):
        return tuple(TensorSpec(tuple(v.shape), v.dtype) for v in value)
    return None


def _describe_function(func: Any) -> str:
    name = getattr(func, "__name__", None) or str(func)
    return f"{name}()"


class _WatchedSize(tuple):
    """Stands in for ``x.shape`` of a leaf's input and notes whether the channel count (dim 1)
    is read: indexing other dims, ``len`` and ``ndim`` are harmless; iterating, comparing or
    multiplying out the whole shape reads the channels too."""

    def __new__(cls, size: torch.Size, on_channel_read):
        obj = super().__new__(cls, tuple(size))
        obj._read = on_channel_read
        return obj

    def __reduce__(self):
        # a leaf may keep the shape it saw (ultralytics' Detect caches it): a copy or a pickle
        # of the model then holds a plain torch.Size, without the watcher
        return torch.Size, (tuple(tuple.__iter__(self)),)

    def __getitem__(self, index):
        if isinstance(index, int):
            if range(len(self))[index] == 1:
                self._read()
        elif isinstance(index, slice):
            if 1 in range(len(self))[index]:
                self._read()
        else:
            self._read()
        return tuple.__getitem__(self, index)

    def __iter__(self):
        self._read()
        return tuple.__iter__(self)

    def __eq__(self, other):
        self._read()
        return tuple.__eq__(self, tuple(other) if isinstance(other, tuple) else other)

    def __ne__(self, other):
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    __hash__ = tuple.__hash__

    def numel(self) -> int:
        self._read()
        return int(torch.Size(self).numel())


_SHAPE_GET = torch.Tensor.shape.__get__
_HARMLESS = (torch.Tensor.dim, torch.Tensor.ndim.__get__, torch.Tensor.dtype.__get__,
             torch.Tensor.device.__get__, torch.Tensor.is_cuda.__get__)


class _LeafRecorder(TorchFunctionMode):
    """Records, while a leaf module runs, every torch call that touches one of its inputs."""

    def __init__(self, module: nn.Module, inputs: dict[int, torch.fx.Node],
                 watch_shapes: bool = True):
        super().__init__()
        self.inputs = inputs                 # id(tensor) -> graph node that produced it
        self.watch_shapes = watch_shapes
        self.usage = LeafUsage()
        self.stack: list[tuple[str, nn.Module]] = []
        self.handles = []
        for name, sub in module.named_modules():
            if sub is module:
                continue
            self.handles.append(sub.register_forward_pre_hook(self._enter(name, sub)))
            self.handles.append(sub.register_forward_hook(self._leave))

    def _enter(self, name: str, sub: nn.Module):
        def hook(_module, _args):
            self.stack.append((name, sub))
        return hook

    def _leave(self, _module, _args, _out):
        self.stack.pop()

    def close(self) -> None:
        for h in self.handles:
            h.remove()

    def _consumer(self, func, args) -> str | None:
        """The inner layer that consumes ``args[0]`` with this call, if it is a plain one."""
        if not self.stack or func not in _CONV_FUNCTIONS:
            return None
        name, layer = self.stack[-1]
        if type(layer) is not _CONV_FUNCTIONS[func] or not args:
            return None
        if isinstance(layer, CONVS):
            if layer.groups != 1 or layer.padding_mode != "zeros":
                return None
        elif args[0].dim() != 2:          # Linear on [N, C] only: channels are the last dim
            return None
        return name

    def _other(self, node: torch.fx.Node, what: str) -> None:
        where = self.stack[-1][0] if self.stack else "its forward"
        self.usage.others.setdefault(node, []).append(f"{what} in {where}")

    def _shape_query(self, func, args, node):
        """``x.shape``/``x.size()``/``x.dim()`` of an input: harmless unless it reads dim 1."""
        if any(func == h for h in _HARMLESS):
            return func(*args)
        if not self.watch_shapes:
            return None
        if func == _SHAPE_GET or (func is torch.Tensor.size and len(args) == 1):
            return _WatchedSize(func(*args), lambda: self._other(node, "its channel count read"))
        if func is torch.Tensor.size and len(args) == 2 and isinstance(args[1], int):
            if range(args[0].dim())[args[1]] == 1:
                self._other(node, "its channel count read")
            return func(*args)
        return None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if args and not kwargs and isinstance(args[0], torch.Tensor):
            node = self.inputs.get(id(args[0]))
            if node is not None:
                answer = self._shape_query(func, args, node)
                if answer is not None:
                    return answer
        flat, _ = tree_flatten((args, kwargs))
        for k, value in enumerate(flat):
            node = self.inputs.get(id(value)) if isinstance(value, torch.Tensor) else None
            if node is None:
                continue
            consumer = self._consumer(func, args) if k == 0 else None
            if consumer is not None:
                self.usage.consumers.setdefault(node, []).append(consumer)
            else:
                self._other(node, _describe_function(func))
        return func(*args, **kwargs)


class _ShapeInterpreter(Interpreter):
    def __init__(self, gm: torch.fx.GraphModule, leaf_types: tuple[type, ...]):
        super().__init__(gm)
        self.leaf_types = leaf_types

    def run_node(self, n: torch.fx.Node) -> Any:
        self._current = n
        value = super().run_node(n)
        n.meta[SPEC] = spec_of_value(value)
        return value

    def call_module(self, target, args, kwargs):
        module = self.fetch_attr(target)
        if isinstance(module, self.leaf_types) or not any(
                isinstance(m, _LAYER_TYPES) for m in module.modules()):
            return super().call_module(target, args, kwargs)
        # a module kept whole that holds layers: watch how it uses its inputs
        node = self._current
        inputs: dict[int, torch.fx.Node] = {}
        for arg_node in flat_tensor_args(node):
            value = self.env.get(arg_node)
            flat, _ = tree_flatten(value)
            for v in flat:
                if isinstance(v, torch.Tensor):
                    inputs.setdefault(id(v), arg_node)
        # Shapes of the inputs are handed out as _WatchedSize; a module that cannot work with
        # that stand-in is run again with every shape read counted as a channel read.  The
        # calls of its submodules are noted too (its sealed blocks: graphprune.inner).
        calls = CallRecorder(module)       # (closed before its copies are made)
        try:
            for watch in (True, False):
                recorder = _LeafRecorder(module, inputs, watch_shapes=watch)
                calls.reset()
                try:
                    with recorder:
                        out = super().call_module(target, args, kwargs)
                    break
                except Exception:
                    if not watch:
                        raise
                finally:
                    recorder.close()
        finally:
            calls.close()
        node.meta[INNER_CALLS] = calls.calls
        # An input handed back unchanged (ultralytics' Detect returns its input maps as
        # "feats") leaves through the output without any torch call: it must stay whole.
        for value in tree_flatten(out)[0]:
            source = inputs.get(id(value)) if isinstance(value, torch.Tensor) else None
            if source is not None:
                recorder.usage.others.setdefault(source, []).append("returned in its output")
        node.meta[LEAF_USAGE] = recorder.usage
        return out


# Modules whose own rules the registry knows: no need to watch their inputs.
_KNOWN = CONVS + (nn.Linear,) + BATCHNORMS


def propagate_shapes(gm: torch.fx.GraphModule, ctx: CompileContext) -> PassResult:
    with ctx.timed("propagate_shapes"), torch.no_grad():
        _ShapeInterpreter(gm, _KNOWN).run(*ctx.example_inputs)
    return PassResult(gm, False)


__all__ = ["propagate_shapes", "spec_of_value"]
