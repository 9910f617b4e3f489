"""Per-op channel rules: the registry the analysis and the slimming pass dispatch on.

For every node of the traced graph one rule answers four questions about the channel dimension
(dim 1) of the values it touches:

``live``      forward: which output channels can be non-zero in the zero-masked model, given
              which input channels can.  A channel that is not live is exactly zero there.
``backward``  which input channels must be physically present for the slim op to compute the
              same thing (requirements flow back to the BatchNorms, which then keep them: a pin).
``order``     the original channel indices the slim output holds, in physical order (``None``:
              the original layout, untouched).
``emit``      the slim op(s) in the new graph.

The invariant every rule keeps: for each value, the slim tensor equals the zero-masked tensor
restricted to the value's order, and every channel outside the order is zero in the zero-masked
model.  An op without a rule is *unknown*: its tensor inputs are required whole, so it computes
on exactly the original tensors; it never guesses.  New rules register with
``register_module_rule``, ``register_function_rule`` and ``register_method_rule``.
"""

from __future__ import annotations

import copy
import operator
from typing import TYPE_CHECKING, Any, Callable, Iterable

import numpy as np
import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

from . import adds
from .adds import AddPlan
from .emit import Emitter, slice_tensor, slim_batchnorm, slim_conv, slim_groupnorm, slim_linear
from .inner import compile_block
from .masks import (BATCHNORMS, CONVS, GROUPNORMS, LAYERNORMS, bias_pair, group_size,
                    tensor_norm_pair, whole_groups)
from .specs import (LEAF_USAGE, LeafUsage, TensorSpec, channels, describe, full_like_spec,
                    is_tensor, spec_of)
from .tracing import flat_tensor_args

if TYPE_CHECKING:     # annotations only: analysis builds on this module
    from .analysis import ChannelAnalysis


def _arg(node: torch.fx.Node, index: int, name: str, default: Any = None) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def get_attribute(root: nn.Module, target: str) -> Any:
    """The module, parameter or buffer a ``get_attr`` target names."""
    obj: Any = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _dim(dim: Any, ndim: int) -> int | None:
    if not isinstance(dim, int):
        return None
    return dim + ndim if dim < 0 else dim


# the argument names of a batch norm written as a function call, by target
_FUNCTIONAL_BN = {
    F.batch_norm: ("input", "running_mean", "running_var", "weight", "bias", "training",
                   "momentum", "eps"),
    torch.batch_norm: ("input", "weight", "bias", "running_mean", "running_var", "training",
                       "momentum", "eps", "cudnn_enabled"),
}
FUNCTIONAL_BN_TENSORS = ("weight", "bias", "running_mean", "running_var")
FUNCTIONAL_BN_META = "graphprune.functional_batchnorm"


def functional_batchnorm(node: torch.fx.Node) -> dict[str, Any] | None:
    """The arguments, by name, of ``F.batch_norm`` / ``torch.batch_norm`` called on a traced
    value with a weight and bias a functional batch norm may use (``masks.tensor_norm_pair``:
    one module's, the bias named as the weight's pair) and its running statistics read from
    the model, each tensor read by this one node of the graph; else None.  Such a call is a
    producer, named by its weight.  (Found once per node, kept in its meta.)"""
    if node.op != "call_function" or node.target not in _FUNCTIONAL_BN:
        return None
    if FUNCTIONAL_BN_META not in node.meta:
        node.meta[FUNCTIONAL_BN_META] = _bind_functional_batchnorm(node)
    return node.meta[FUNCTIONAL_BN_META]


def _bind_functional_batchnorm(node: torch.fx.Node) -> dict[str, Any] | None:
    names = _FUNCTIONAL_BN[node.target]
    if len(node.args) > len(names):
        return None
    bound = {**dict(zip(names, node.args)), **node.kwargs}
    weight, bias = bound.get("weight"), bound.get("bias")
    if not is_tensor(bound.get("input")):
        return None
    tensors = [weight, bias] + [bound.get(k) for k in ("running_mean", "running_var")
                                if bound.get(k) is not None]
    if not all(isinstance(t, torch.fx.Node) and t.op == "get_attr" and len(t.users) == 1
               for t in tensors):
        return None
    root = node.graph.owning_module
    if root is None or bias.target != bias_pair(weight.target) or \
            tensor_norm_pair(root, weight.target) is None:
        return None
    reads = sum(1 for n in node.graph.nodes if n.op == "get_attr" and
                n.target in {t.target for t in tensors})
    return bound if reads == len(tensors) else None     # one read of each: one call


# -- base rules -------------------------------------------------------------------------------
class Rule:
    """The rule of an op graphprune does not know: every tensor input is required whole."""

    name = "unknown"

    def accepts(self, node: torch.fx.Node, A: ChannelAnalysis) -> bool:
        return True

    def live(self, node: torch.fx.Node, A: ChannelAnalysis):
        return full_like_spec(spec_of(node))

    def backward(self, node: torch.fx.Node, A: ChannelAnalysis) -> None:
        reason = f"consumed by {describe(node, A.module_of(node))}, which is not prunable"
        for n in flat_tensor_args(node):
            A.need_full(n, reason)

    def order(self, node: torch.fx.Node, A: ChannelAnalysis):
        return None

    def emit_as_is(self, node: torch.fx.Node, E: Emitter, A: ChannelAnalysis):
        """The node copied unchanged: its inputs already hold what it computes on (the
        ``emit`` of every rule whose op needs no rewriting)."""
        return E.copy_node(node)

    def emit(self, node: torch.fx.Node, E: Emitter, A: ChannelAnalysis):
        args = torch.fx.node.map_arg(node.args, lambda n: A.emit_full(E, n))
        kwargs = torch.fx.node.map_arg(node.kwargs, lambda n: A.emit_full(E, n))
        return E.copy_node(node, args, kwargs)


class Placeholder(Rule):
    name = "placeholder"

    def backward(self, node: torch.fx.Node, A: ChannelAnalysis) -> None:
        pass

    emit = Rule.emit_as_is


class GetAttr(Rule):
    name = "get_attr"

    def backward(self, node: torch.fx.Node, A: ChannelAnalysis) -> None:
        pass

    def emit(self, node: torch.fx.Node, E: Emitter, A: ChannelAnalysis):
        E.attrs[node.target] = get_attribute(A.gm, node.target)
        return E.copy_node(node)


class Output(Rule):
    name = "output"

    def backward(self, node: torch.fx.Node, A: ChannelAnalysis) -> None:
        for n in flat_tensor_args(node):
            A.need_full(n, "reaches the model output")


class Passthrough(Rule):
    """Channel-wise ops that map 0 to 0: activations, pooling, resizing, dropout, scaling."""

    name = "passthrough"

    def tensor_input(self, node):
        return node.args[0] if node.args else None

    def accepts(self, node: torch.fx.Node, A: ChannelAnalysis) -> bool:
        x = self.tensor_input(node)
        if not is_tensor(x) or channels(x) is None or not is_tensor(node):
            return False
        if channels(node) != channels(x):
            return False
        others = [n for n in flat_tensor_args(node) if n is not x]
        return not any(is_tensor(n) for n in others)

    def live(self, node: torch.fx.Node, A: ChannelAnalysis):
        return A.live(self.tensor_input(node))

    def backward(self, node: torch.fx.Node, A: ChannelAnalysis) -> None:
        req = A.required(node)
        if req is not None:
            A.need(self.tensor_input(node), req[0], req[1])

    def order(self, node: torch.fx.Node, A: ChannelAnalysis):
        return A.order(self.tensor_input(node))

    emit = Rule.emit_as_is


class ZeroPreservingModule(Passthrough):
    name = "passthrough"

    def accepts(self, node: torch.fx.Node, A: ChannelAnalysis) -> bool:
        m = A.module_of(node)
        if isinstance(m, nn.Hardtanh) and not (m.min_val <= 0 <= m.max_val):
            return False
        if isinstance(m, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)) and m.return_indices:
            return False
        if isinstance(m, (nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)) \
                and m.return_indices:
            return False
        return super().accepts(node, A)


class ScaleByConstant(Passthrough):
    """``x * c``, ``c * x``, ``x / c`` with ``c`` not a tensor."""

    name = "scale"

    def tensor_input(self, node):
        tensors = [a for a in node.args[:2] if is_tensor(a)]
        return tensors[0] if len(tensors) == 1 else None

    def accepts(self, node: torch.fx.Node, A: ChannelAnalysis) -> bool:
        if node.kwargs or len(node.args) != 2:
            return False
        if node.target in (operator.truediv, torch.div, "div") and not is_tensor(node.args[0]):
            return False
        return super().accepts(node, A)


class ReduceSpatial(Passthrough):
    """``x.mean((2, 3))``, ``x.sum(-1, keepdim=True)``, ``x.amax(...)``: channels kept apart."""

    name = "reduce"

    def accepts(self, node: torch.fx.Node, A: ChannelAnalysis) -> bool:
        x = self.tensor_input(node)
        if not is_tensor(x) or channels(x) is None:
            return False
        ndim = len(spec_of(x).shape)
        dims = _arg(node, 1, "dim")
        dims = [dims] if isinstance(dims, int) else dims
        if not isinstance(dims, (list, tuple)) or not dims:
            return False
        norm = [_dim(d, ndim) for d in dims]
        if any(d is None or d < 2 for d in norm):
            return False
        out = spec_of(node)
        return isinstance(out, TensorSpec) and out.channels == channels(x) and \
            not any(is_tensor(n) for n in flat_tensor_args(node) if n is not x)


class ShapeQuery(Rule):
    """``x.shape``, ``x.size(d)``, ``x.dim()``: the channel count is only exposed when asked for."""

    name = "shape"

    def accepts(self, node: torch.fx.Node, A: ChannelAnalysis) -> bool:
        return bool(node.args) and is_tensor(node.args[0])

    def _reads_channels(self, node) -> bool:
        x = node.args[0]
        ndim = len(spec_of(x).shape)
        if node.op == "call_method" and node.target in ("dim", "ndimension"):
            return False
        if node.op == "call_function" and node.target is getattr:
            attr = node.args[1]
            if attr in ("ndim", "dtype", "device", "is_cuda"):
                return False
        elif node.op == "call_method" and node.target == "size" and len(node.args) > 1:
            return _dim(node.args[1], ndim) == 1
        # a whole shape: it exposes dim 1 unless every use indexes another dim
        for user in node.users:
            if user.op == "call_function" and user.target is operator.getitem and \
                    isinstance(user.args[1], int) and _dim(user.args[1], ndim) != 1:
                continue
            return True
        return False

    def backward(self, node: torch.fx.Node, A: ChannelAnalysis) -> None:
        if self._reads_channels(node):
            A.need_full(node.args[0], f"its channel count is read by {describe(node)}")

    def live(self, node: torch.fx.Node, A: ChannelAnalysis):
        return None

    emit = Rule.emit_as_is


# -- layers -------------------------------------------------------------------------------------


class Convolution(Rule):
    """Conv (groups=1) or Linear: any input columns can go; output rows go with its BatchNorm,
    or, for a layer a mask names itself (a producer with no BatchNorm after it), with that
    mask: a pruned row has zero weights and bias, so its output channel is exactly 0."""

    name = "conv"

    def accepts(self, node: torch.fx.Node, A: ChannelAnalysis) -> bool:
        m = A.module_of(node)
        if A.call_count(node) != 1 or len(node.args) != 1 or node.kwargs:
            return False
        x = node.args[0]
        if not is_tensor(x):
            return False
        if isinstance(m, CONVS):
            return m.groups == 1
        if isinstance(m, nn.Linear):
            return len(spec_of(x).shape) == 2
        return False

    def live(self, node: torch.fx.Node, A: ChannelAnalysis):
        if A.is_prunable_node(node):
            return A.mask(node.target).copy()
        return full_like_spec(spec_of(node))

    def backward(self, node: torch.fx.Node, A: ChannelAnalysis) -> None:
        req = A.required(node)
        if req is not None and A.is_prunable_node(node):
            A.grow(node.target, req[0], req[1])

    def order(self, node: torch.fx.Node, A: ChannelAnalysis):
        return A.producer_order(node)

    def emit(self, node: torch.fx.Node, E: Emitter, A: ChannelAnalysis):
        m = A.module_of(node)
        x = node.args[0]
        in_order, out_order = A.order(x), A.order(node)
        if in_order is None and out_order is None:
            return E.copy_node(node)
        new = slim_linear(m, in_order, out_order) if isinstance(m, nn.Linear) else \
            slim_conv(m, in_order, out_order)
        E.add_module(node.target, new)
        return E.copy_node(node)


class DepthwiseConvolution(Rule):
    """Depthwise conv without bias: output channel c sees only input channel c."""

    name = "depthwise"

    def accepts(self, node: torch.fx.Node, A: ChannelAnalysis) -> bool:
        m = A.module_of(node)
        return isinstance(m, CONVS) and A.call_count(node) == 1 and len(node.args) == 1 \
            and not node.kwargs and m.groups > 1 and m.groups == m.in_channels == \
            m.out_channels and m.bias is None and is_tensor(node.args[0])

    def live(self, node: torch.fx.Node, A: ChannelAnalysis):
        return A.live(node.args[0])

    def backward(self, node: torch.fx.Node, A: ChannelAnalysis) -> None:
        req = A.required(node)
        if req is not None:
            A.need(node.args[0], req[0], f"{req[1]} (through depthwise {node.target!r})")

    def order(self, node: torch.fx.Node, A: ChannelAnalysis):
        return A.order(node.args[0])

    def emit(self, node: torch.fx.Node, E: Emitter, A: ChannelAnalysis):
        order = A.order(node.args[0])
        if order is None:
            return E.copy_node(node)
        E.add_module(node.target, slim_conv(A.module_of(node), order, order, depthwise=True))
        return E.copy_node(node)


class MaskedNorm(Rule):
    """A prunable norm layer: its mask decides which output channels stay live (γ = β = 0 sends
    a channel to 0) and consumers' requirements grow it; by default its output holds the kept
    channels in ascending order."""

    types: tuple[type, ...] = ()

    def accepts(self, node: torch.fx.Node, A: ChannelAnalysis) -> bool:
        return isinstance(A.module_of(node), self.types) and A.is_prunable_node(node)

    def live(self, node: torch.fx.Node, A: ChannelAnalysis):
        return A.mask(A.name_of(node)).copy()

    def backward(self, node: torch.fx.Node, A: ChannelAnalysis) -> None:
        req = A.required(node)
        if req is not None:
            A.grow(A.name_of(node), req[0], req[1])

    def order(self, node: torch.fx.Node, A: ChannelAnalysis):
        keep = A.mask(A.name_of(node))
        return None if keep.all() else np.flatnonzero(keep)

    # (module, order) -> the slimmed copy keeping those channels
    slim: Callable[[nn.Module, np.ndarray], nn.Module]

    def slice_layer(self, node: torch.fx.Node, E: Emitter, A: ChannelAnalysis,
                    order: np.ndarray) -> None:
        """Give the slim graph the layer keeping the channels ``order`` lists."""
        E.add_module(node.target, self.slim(A.module_of(node), order))

    def emit(self, node: torch.fx.Node, E: Emitter, A: ChannelAnalysis):
        """A norm that computes channel by channel (or group by group): its input taken in its
        own order, the layer sliced to it."""
        x = node.args[0]
        order = A.order(node)
        if order is None and A.order(x) is None:
            return E.copy_node(node)
        slim_in = E.reorder(E.env[x], A.order(x), order, channels(x))
        if order is not None:
            self.slice_layer(node, E, A, order)
        return E.copy_node(node, (slim_in, *E.value(node.args[1:])), E.value(node.kwargs))


class BatchNorm(MaskedNorm):
    """A prunable BatchNorm: its mask decides which channels stay live (zero-mask semantics)."""

    name, types = "batchnorm", BATCHNORMS

    def backward(self, node: torch.fx.Node, A: ChannelAnalysis) -> None:
        super().backward(node, A)
        if not A.structural_only:
            # a kept channel whose input is zero would still be BN(0) != 0: its input must stay
            A.need(node.args[0], A.mask(A.name_of(node)),
                   f"BatchNorm {A.name_of(node)!r} keeps channels its input would lose")

    def order(self, node: torch.fx.Node, A: ChannelAnalysis):
        x = node.args[0]
        have = A.order(x)
        have = np.arange(channels(x)) if have is None else have
        keep = A.mask(A.name_of(node))
        out = have[keep[have]]
        return None if len(out) == len(keep) and np.array_equal(out, np.arange(len(keep))) \
            else out

    slim = staticmethod(slim_batchnorm)


class FunctionalBatchNorm(BatchNorm):
    """``F.batch_norm`` / ``torch.batch_norm`` on tensors a module holds
    (:func:`functional_batchnorm`): a BatchNorm named by its weight, emitted as the same call on
    sliced copies of its weight, bias and running statistics."""

    def accepts(self, node: torch.fx.Node, A: ChannelAnalysis) -> bool:
        return A.is_prunable_node(node)

    def slice_layer(self, node: torch.fx.Node, E: Emitter, A: ChannelAnalysis,
                    order: np.ndarray) -> None:
        index = torch.as_tensor(np.asarray(order), dtype=torch.long)
        bound = functional_batchnorm(node)
        for key in FUNCTIONAL_BN_TENSORS:
            attr = bound.get(key)
            if attr is None:
                continue
            E.attrs[attr.target] = slice_tensor(get_attribute(A.gm, attr.target), index)


class GroupNorm(MaskedNorm):
    """A prunable GroupNorm: whole groups are kept or pruned (a group's statistics are its own),
    and a kept group needs every one of its input channels."""

    name, types = "groupnorm", GROUPNORMS

    def backward(self, node: torch.fx.Node, A: ChannelAnalysis) -> None:
        super().backward(node, A)
        size = group_size(A.module_of(node))
        A.grow(node.target, whole_groups(A.mask(node.target), size),
               f"GroupNorm {node.target!r} keeps or prunes whole groups of {size} channels")
        if not A.structural_only:
            A.need(node.args[0], A.mask(node.target),
                   f"GroupNorm {node.target!r} normalises each kept group over all its channels")

    slim = staticmethod(slim_groupnorm)


class LayerNorm(MaskedNorm):
    """A prunable LayerNorm over the channel dimension: every output channel depends on all
    input channels (their mean and variance), so its input stays whole; a pruned output channel
    (γ = β = 0) is dropped after it."""

    name, types = "layernorm", LAYERNORMS

    def backward(self, node: torch.fx.Node, A: ChannelAnalysis) -> None:
        super().backward(node, A)
        A.need_full(node.args[0], f"LayerNorm {node.target!r} normalises over all channels")

    def emit(self, node: torch.fx.Node, E: Emitter, A: ChannelAnalysis):
        out = E.copy_node(node, (A.emit_full(E, node.args[0]),), {})
        order = A.order(node)
        return out if order is None else E.take(out, order, channels(node))


class Leaf(Rule):
    """A module kept whole.  Inputs consumed only by its inner Conv/Linear layers (and shape
    queries) may arrive slim: those layers get their input columns gathered.  Inputs used any
    other way are required whole."""

    name = "leaf"

    def backward(self, node: torch.fx.Node, A: ChannelAnalysis) -> None:
        usage: LeafUsage = node.meta.get(LEAF_USAGE) or LeafUsage()
        for n in dict.fromkeys(flat_tensor_args(node)):
            if A.call_count(node) != 1:
                A.need_full(n, f"consumed by {node.target!r}, which is called more than once")
            elif usage.others.get(n):
                A.need_full(n, f"used inside {node.target!r} by {usage.others[n][0]}")
            elif not usage.consumers.get(n):
                A.need_full(n, f"consumed by {describe(node, A.module_of(node))}, which is "
                               "kept whole")

    def emit(self, node: torch.fx.Node, E: Emitter, A: ChannelAnalysis):
        usage: LeafUsage = node.meta.get(LEAF_USAGE) or LeafUsage()
        slim_inputs = {n: A.order(n) for n in dict.fromkeys(flat_tensor_args(node))
                       if A.order(n) is not None and A.call_count(node) == 1
                       and usage.consumers.get(n) and not usage.others.get(n)}
        blocks = {name: job for name, job in A.inner.items()
                  if job[0].leaf == node.target}
        if not slim_inputs and not blocks:
            return Rule.emit(self, node, E, A)
        module = copy.deepcopy(A.module_of(node))
        # its sealed blocks first, each compiled on its own (their inputs stay whole there);
        # the paths of their layers are kept, so the input columns are gathered after
        for name, (block, masks) in blocks.items():
            A.inner_results[name] = compile_block(module, block, masks, A.inner_compile,
                                                  A.inner_options)
        for n, order in slim_inputs.items():
            for inner in usage.consumers.get(n, []):
                layer = module.get_submodule(inner)
                new = slim_linear(layer, order, None) if isinstance(layer, nn.Linear) else \
                    slim_conv(layer, order, None)
                parent, _, leaf_name = inner.rpartition(".")
                setattr(module.get_submodule(parent) if parent else module, leaf_name, new)
        E.add_module(node.target, module)
        pick = (lambda n: E.env[n] if n in slim_inputs else A.emit_full(E, n))
        return E.copy_node(node, torch.fx.node.map_arg(node.args, pick),
                           torch.fx.node.map_arg(node.kwargs, pick))


# -- channel plumbing ---------------------------------------------------------------------------
class Concat(Rule):
    """``torch.cat`` along channels: offsets travel with each part."""

    name = "cat"

    def parts(self, node):
        return list(_arg(node, 0, "tensors"))

    def accepts(self, node: torch.fx.Node, A: ChannelAnalysis) -> bool:
        parts = _arg(node, 0, "tensors")
        if not isinstance(parts, (list, tuple)) or not parts or \
                not all(is_tensor(p) and channels(p) for p in parts):
            return False
        return _dim(_arg(node, 1, "dim", 0), len(spec_of(parts[0]).shape)) == 1

    def live(self, node: torch.fx.Node, A: ChannelAnalysis):
        return np.concatenate([A.live(p) for p in self.parts(node)])

    def backward(self, node: torch.fx.Node, A: ChannelAnalysis) -> None:
        req = A.required(node)
        if req is None:
            return
        start = 0
        for p in self.parts(node):
            c = channels(p)
            A.need(p, req[0][start:start + c], req[1])
            start += c

    def order(self, node: torch.fx.Node, A: ChannelAnalysis):
        if all(A.order(p) is None for p in self.parts(node)):
            return None
        out, start = [], 0
        for p in self.parts(node):
            c = channels(p)
            o = A.order(p)
            out.append(np.arange(c) + start if o is None else o + start)
            start += c
        return np.concatenate(out)

    def emit(self, node: torch.fx.Node, E: Emitter, A: ChannelAnalysis):
        if self.order(node, A) is None:
            return E.copy_node(node)
        parts = [E.env[p] for p in self.parts(node) if A.physical(p) > 0]
        return E.call(torch.cat, parts, 1)


def split_segments(node) -> list[tuple[int, int]]:
    """(start, size) of each output of a chunk/split along channels."""
    out, start = [], 0
    for s in spec_of(node):
        out.append((start, s.channels))
        start += s.channels
    return out


class Split(Rule):
    """``chunk``/``split`` along channels: each piece keeps its share of the input's channels."""

    name = "split"

    def accepts(self, node: torch.fx.Node, A: ChannelAnalysis) -> bool:
        x = node.args[0] if node.args else None
        out = spec_of(node)
        if not is_tensor(x) or channels(x) is None or not isinstance(out, tuple) or not out:
            return False
        if not all(isinstance(s, TensorSpec) and s.channels is not None for s in out):
            return False
        dim = _arg(node, 2, "dim", 0)
        if _dim(dim, len(spec_of(x).shape)) != 1:
            return False
        return sum(s.channels for s in out) == channels(x)

    def live(self, node: torch.fx.Node, A: ChannelAnalysis):
        live = A.live(node.args[0])
        return tuple(live[s:s + n] for s, n in split_segments(node))

    def backward(self, node: torch.fx.Node, A: ChannelAnalysis) -> None:
        x = node.args[0]
        reqs = A.required_elements(node)
        live = A.live(x)
        for (s, n), req in zip(split_segments(node), reqs):
            if req is not None:
                full = np.zeros(channels(x), dtype=bool)
                full[s:s + n] = req[0]
                A.need(x, full, req[1])
            if not A.structural_only and not live[s:s + n].any():
                one = np.zeros(channels(x), dtype=bool)
                one[s] = True
                A.need(x, one, f"piece {node.name}[{s}:{s + n}] may not lose all channels")

    def order(self, node: torch.fx.Node, A: ChannelAnalysis):
        have = A.order(node.args[0])
        if have is None:
            return None
        return tuple(have[(have >= s) & (have < s + n)] - s for s, n in split_segments(node))

    def emit(self, node: torch.fx.Node, E: Emitter, A: ChannelAnalysis):
        x = node.args[0]
        have = A.order(x)
        if have is None:
            return E.copy_node(node)
        sizes, contiguous, pos = [], True, 0
        for s, n in split_segments(node):
            where = np.flatnonzero((have >= s) & (have < s + n))
            sizes.append(len(where))
            contiguous &= bool(np.array_equal(where, np.arange(pos, pos + len(where))))
            pos += len(where)
        if contiguous and all(sizes):
            return E.call(torch.split, E.env[x], sizes, 1)
        pieces = []
        for s, n in split_segments(node):
            where = np.flatnonzero((have >= s) & (have < s + n))
            pieces.append(E.take(E.env[x], where, len(have)))
        return tuple(pieces)


class GetItem(Rule):
    """``pieces[k]`` of a split, or ``x[:, a:b]`` (a channel slice) of a tensor."""

    name = "getitem"

    def channel_slice(self, node) -> tuple[int, int] | None:
        x, idx = node.args
        if not is_tensor(x) or channels(x) is None or not isinstance(idx, tuple) or len(idx) < 2:
            return None
        if idx[0] != slice(None) or not isinstance(idx[1], slice) or idx[1].step not in (None, 1):
            return None
        if any(not isinstance(i, (slice, int)) for i in idx[2:]):
            return None
        start, stop, _ = idx[1].indices(channels(x))
        return (start, max(stop - start, 0)) if channels(node) == max(stop - start, 0) else None

    def accepts(self, node: torch.fx.Node, A: ChannelAnalysis) -> bool:
        if len(node.args) != 2 or node.kwargs:
            return False
        x, idx = node.args
        if isinstance(spec_of(x), tuple):
            return isinstance(idx, int)
        return self.channel_slice(node) is not None

    def live(self, node: torch.fx.Node, A: ChannelAnalysis):
        x, idx = node.args
        if isinstance(spec_of(x), tuple):
            return A.live(x)[idx]
        s, n = self.channel_slice(node)
        return A.live(x)[s:s + n]

    def backward(self, node: torch.fx.Node, A: ChannelAnalysis) -> None:
        req = A.required(node)
        if req is None:
            return
        x, idx = node.args
        if isinstance(spec_of(x), tuple):
            A.need(x, req[0], req[1], element=idx)
            return
        s, n = self.channel_slice(node)
        full = np.zeros(channels(x), dtype=bool)
        full[s:s + n] = req[0]
        A.need(x, full, req[1])

    def order(self, node: torch.fx.Node, A: ChannelAnalysis):
        x, idx = node.args
        have = A.order(x)
        if isinstance(spec_of(x), tuple):
            return None if have is None else have[idx]
        if have is None:
            return None
        s, n = self.channel_slice(node)
        return have[(have >= s) & (have < s + n)] - s

    def emit(self, node: torch.fx.Node, E: Emitter, A: ChannelAnalysis):
        x, idx = node.args
        value = E.env[x]
        if isinstance(value, tuple):
            return value[idx]
        if isinstance(spec_of(x), tuple) or A.order(x) is None:
            return E.copy_node(node)
        have = A.order(x)
        s, n = self.channel_slice(node)
        where = np.flatnonzero((have >= s) & (have < s + n))
        picked = E.take(value, where, len(have))
        rest = idx[2:]
        if all(r == slice(None) for r in rest):
            return picked
        return E.call(operator.getitem, picked, (slice(None), slice(None), *rest))


class Flatten(Rule):
    """``flatten(x, 1)`` of ``[N, C, *S]``: channel c becomes columns ``c*prod(S) ...``."""

    name = "flatten"

    def _start_end(self, node: torch.fx.Node, A: ChannelAnalysis):
        if node.op == "call_module":
            m = A.module_of(node)
            return m.start_dim, m.end_dim
        return _arg(node, 1, "start_dim", 0), _arg(node, 2, "end_dim", -1)

    def accepts(self, node: torch.fx.Node, A: ChannelAnalysis) -> bool:
        x = node.args[0] if node.args else None
        if not is_tensor(x) or channels(x) is None or not is_tensor(node):
            return False
        ndim = len(spec_of(x).shape)
        start, end = self._start_end(node, A)
        return _dim(start, ndim) == 1 and _dim(end, ndim) == ndim - 1

    def _inner(self, node) -> int:
        return int(np.prod(spec_of(node.args[0]).shape[2:], dtype=np.int64))

    def live(self, node: torch.fx.Node, A: ChannelAnalysis):
        return np.repeat(A.live(node.args[0]), self._inner(node))

    def backward(self, node: torch.fx.Node, A: ChannelAnalysis) -> None:
        req = A.required(node)
        if req is not None:
            x = node.args[0]
            A.need(x, req[0].reshape(channels(x), -1).any(1), req[1])

    def order(self, node: torch.fx.Node, A: ChannelAnalysis):
        have = A.order(node.args[0])
        if have is None:
            return None
        inner = self._inner(node)
        return (have[:, None] * inner + np.arange(inner)[None, :]).reshape(-1)

    emit = Rule.emit_as_is


class Multiply(Rule):
    """``a * b`` of two channel tensors: a channel is live only where both are."""

    name = "mul"

    def accepts(self, node: torch.fx.Node, A: ChannelAnalysis) -> bool:
        if node.kwargs or len(node.args) != 2:
            return False
        a, b = node.args
        if not (is_tensor(a) and is_tensor(b)) or channels(a) is None or channels(b) is None:
            return False
        return channels(a) == channels(b) == channels(node) and channels(a) > 1

    def live(self, node: torch.fx.Node, A: ChannelAnalysis):
        a, b = node.args
        return A.live(a) & A.live(b)

    def backward(self, node: torch.fx.Node, A: ChannelAnalysis) -> None:
        req = A.required(node)
        if req is not None:
            for n in node.args:
                A.need(n, req[0], req[1])

    def order(self, node: torch.fx.Node, A: ChannelAnalysis):
        a, b = node.args
        oa, ob = A.order(a), A.order(b)
        if oa is None and ob is None:
            return None
        oa = np.arange(channels(a)) if oa is None else oa
        ob = np.arange(channels(b)) if ob is None else ob
        return oa[np.isin(oa, ob)]

    def emit(self, node: torch.fx.Node, E: Emitter, A: ChannelAnalysis):
        a, b = node.args
        out = A.order(node)
        if out is None:
            return E.copy_node(node)
        va = E.reorder(E.env[a], A.order(a), out, channels(a))
        vb = E.reorder(E.env[b], A.order(b), out, channels(b))
        return E.copy_node(node, (va, vb), {})


class BroadcastMultiply(Passthrough):
    """``x * g`` with ``g`` a single-channel map (spatial attention): ``g`` is required whole."""

    name = "mul_broadcast"

    def tensor_input(self, node):
        a, b = node.args
        return a if channels(b) == 1 else b

    def accepts(self, node: torch.fx.Node, A: ChannelAnalysis) -> bool:
        if node.kwargs or len(node.args) != 2 or not all(is_tensor(n) for n in node.args):
            return False
        a, b = node.args
        ca, cb = channels(a), channels(b)
        if ca is None or cb is None or (ca == 1) == (cb == 1):
            return False
        return channels(node) == max(ca, cb)

    def backward(self, node: torch.fx.Node, A: ChannelAnalysis) -> None:
        super().backward(node, A)
        other = [n for n in node.args if n is not self.tensor_input(node)][0]
        A.need_full(other, f"single-channel factor of {describe(node)}")

    def emit(self, node: torch.fx.Node, E: Emitter, A: ChannelAnalysis):
        x = self.tensor_input(node)
        args = tuple(E.env[n] if n is x else A.emit_full(E, n) for n in node.args)
        return E.copy_node(node, args, {})


class Add(Rule):
    """Residual add with independent masks (paper §3.2): shared channels are added, channels
    only one branch keeps are copied, channels neither keeps are dropped."""

    name = "add"

    def accepts(self, node: torch.fx.Node, A: ChannelAnalysis) -> bool:
        if len(node.args) != 2 or any(k != "alpha" for k in node.kwargs) or \
                node.kwargs.get("alpha", 1) != 1:
            return False
        a, b = node.args
        if not (is_tensor(a) and is_tensor(b)) or channels(a) is None:
            return False
        return spec_of(a).shape == spec_of(b).shape == spec_of(node).shape

    def live(self, node: torch.fx.Node, A: ChannelAnalysis):
        a, b = node.args
        return A.live(a) | A.live(b)

    def backward(self, node: torch.fx.Node, A: ChannelAnalysis) -> None:
        # An output channel is present when either operand holds it; only channels that
        # neither operand holds make both grow.
        req = A.required(node)
        if req is not None:
            a, b = node.args
            A.need(a, req[0] & ~A.live(b), req[1])
            A.need(b, req[0] & ~A.live(a), req[1])

    def order(self, node: torch.fx.Node, A: ChannelAnalysis):
        a, b = node.args
        oa, ob = A.order(a), A.order(b)
        if oa is None and ob is None:
            A.plans.pop(node, None)
            return None
        c = channels(a)
        oa = np.arange(c) if oa is None else oa
        ob = np.arange(c) if ob is None else ob
        plan = adds.plan_add(oa, ob, A.rank(node))
        A.plans[node] = plan
        if len(plan.order) == c and np.array_equal(plan.order, np.arange(c)):
            return None
        return plan.order

    def emit(self, node: torch.fx.Node, E: Emitter, A: ChannelAnalysis):
        plan: AddPlan | None = A.plans.get(node)
        if plan is None:
            return E.copy_node(node)
        a, b = node.args
        va, vb = E.env[a], E.env[b]
        if plan.a_take is not None:
            va = E.take(va, plan.a_take, A.physical(a))
        if plan.b_take is not None:
            vb = E.take(vb, plan.b_take, A.physical(b))
        na, nb = A.physical(a), A.physical(b)
        parts = []
        for kind, i, j, n in plan.pieces:
            pa = None if kind == "b" else (va if (i, n) == (0, na) else E.narrow(va, i, n))
            pb = None if kind == "a" else (vb if (j, n) == (0, nb) else E.narrow(vb, j, n))
            parts.append(pa if pb is None else pb if pa is None else
                         E.call(operator.add, pa, pb))
        E.stats["residual_pieces"] += len(parts)
        return parts[0] if len(parts) == 1 else E.call(torch.cat, parts, 1)


# -- registry -----------------------------------------------------------------------------------
UNKNOWN = Rule()
PLACEHOLDER, GET_ATTR, OUTPUT, LEAF = Placeholder(), GetAttr(), Output(), Leaf()

_POINTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.SiLU, nn.LeakyReLU, nn.Hardswish, nn.GELU, nn.Mish, nn.ELU, nn.CELU,
    nn.SELU, nn.Tanh, nn.Softsign, nn.Hardtanh, nn.Tanhshrink, nn.Hardshrink, nn.Softshrink,
    nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
    nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d,
)
_passthrough, _flatten, _scale, _reduce = Passthrough(), Flatten(), ScaleByConstant(), ReduceSpatial()
_mul, _bmul, _add, _split, _shape = Multiply(), BroadcastMultiply(), Add(), Split(), ShapeQuery()

# The built-in rules, read top-down: a node goes to the first rule of its table that matches
# its module type (or call target, or method name) and accepts it.  So within a target the
# specific rules come before the general ones (a depthwise convolution before a convolution, a
# product of two live tensors before a broadcast scaling before a scaling by a constant).
MODULE_TABLE: list[tuple[tuple[type, ...], Rule]] = [
    (BATCHNORMS, BatchNorm()),
    (GROUPNORMS, GroupNorm()),
    (LAYERNORMS, LayerNorm()),
    (CONVS, DepthwiseConvolution()),
    (CONVS + (nn.Linear,), Convolution()),
    ((nn.Flatten,), _flatten),
    (_POINTWISE_MODULES, ZeroPreservingModule()),
]
FUNCTION_TABLE: list[tuple[tuple[Any, ...], Rule]] = [
    ((F.relu, torch.relu, F.relu_, torch.relu_, F.relu6, F.silu, F.leaky_relu, F.hardswish,
      F.gelu, F.mish, F.elu, F.celu, F.selu, torch.tanh, F.tanh, F.hardtanh, torch.neg,
      operator.neg, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d,
      F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
      F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.interpolate,
      torch.clone), _passthrough),
    ((torch.mean, torch.sum, torch.amax), _reduce),
    ((operator.mul, torch.mul), _mul),
    ((operator.mul, torch.mul), _bmul),
    ((operator.mul, torch.mul, operator.truediv, torch.div), _scale),
    ((operator.add, torch.add, operator.iadd), _add),
    ((torch.cat, torch.concat, torch.concatenate), Concat()),
    ((torch.chunk, torch.split, torch.tensor_split), _split),
    (tuple(_FUNCTIONAL_BN), FunctionalBatchNorm()),
    ((operator.getitem,), GetItem()),
    ((torch.flatten,), _flatten),
    ((getattr,), _shape),
]
METHOD_TABLE: list[tuple[tuple[str, ...], Rule]] = [
    (("relu", "relu_", "tanh", "neg", "contiguous", "clone", "detach", "float", "half", "double",
      "bfloat16"), _passthrough),
    (("mean", "sum", "amax"), _reduce),
    (("mul",), _mul),
    (("mul",), _bmul),
    (("mul", "div"), _scale),
    (("add",), _add),
    (("chunk", "split", "tensor_split"), _split),
    (("flatten",), _flatten),
    (("size", "dim", "ndimension"), _shape),
]

# What ``rule_for`` searches: rules registered at run time first (the latest first), then the
# tables above in their order.
_MODULE_RULES: list[tuple[tuple[type, ...], Rule]] = list(MODULE_TABLE)
_FUNCTION_RULES: dict[Any, list[Rule]] = {}
_METHOD_RULES: dict[str, list[Rule]] = {}
for _targets, _rule in FUNCTION_TABLE:
    for _t in _targets:
        _FUNCTION_RULES.setdefault(_t, []).append(_rule)
for _names, _rule in METHOD_TABLE:
    for _n in _names:
        _METHOD_RULES.setdefault(_n, []).append(_rule)


def register_module_rule(types: Iterable[type], rule: Rule) -> None:
    """Dispatch ``call_module`` nodes of these module types to ``rule``, checked before every
    rule registered earlier and every built-in one."""
    _MODULE_RULES.insert(0, (tuple(types), rule))


def register_function_rule(targets: Iterable[Callable], rule: Rule) -> None:
    """``call_function`` nodes of these targets go to ``rule`` first (see
    ``register_module_rule``)."""
    for t in targets:
        _FUNCTION_RULES.setdefault(t, []).insert(0, rule)


def register_method_rule(names: Iterable[str], rule: Rule) -> None:
    """``call_method`` nodes of these method names go to ``rule`` first (see
    ``register_module_rule``)."""
    for n in names:
        _METHOD_RULES.setdefault(n, []).insert(0, rule)


def rule_for(node: torch.fx.Node, A: ChannelAnalysis) -> Rule:
    """The rule ``node`` dispatches to: the first that matches and accepts it, else ``UNKNOWN``
    (a module without a rule is a ``LEAF``: kept whole)."""
    if node.op == "placeholder":
        return PLACEHOLDER
    if node.op == "get_attr":
        return GET_ATTR
    if node.op == "output":
        return OUTPUT
    if node.op == "call_module":
        m = A.module_of(node)
        for types, rule in _MODULE_RULES:
            if isinstance(m, types) and rule.accepts(node, A):
                return rule
        return LEAF
    table = _FUNCTION_RULES.get(node.target, []) if node.op == "call_function" else \
        _METHOD_RULES.get(node.target, [])
    for rule in table:
        if rule.accepts(node, A):
            return rule
    return UNKNOWN


__all__ = ["FUNCTIONAL_BN_TENSORS", "FUNCTION_TABLE", "functional_batchnorm", "get_attribute", "METHOD_TABLE", "MODULE_TABLE", "Rule", "register_function_rule",
           "register_method_rule", "register_module_rule", "rule_for", "split_segments"]
