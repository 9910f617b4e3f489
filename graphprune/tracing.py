"""torch.fx tracing that works on models we did not write.

``trace`` symbolically traces a model's inference path.  Two things differ from a plain
``torch.fx.symbolic_trace``:

* A submodule whose ``forward`` cannot be traced (Python control flow on a shape, a detection
  head that caches its decoding grid, list routing that iterates a Proxy, ...) is kept whole as
  a *leaf*: the trace is repeated with that module as a ``call_module`` node, innermost failing
  module first.  The channel analysis later looks inside leaves to slim the convolutions that
  consume pruned tensors.  Only the root itself failing is an error.
* A root ``forward(self, x, *args, **kwargs)`` is traced with its required arguments only.
* ``chunk``/``split``/``unbind`` with a number of pieces known at trace time return Proxies that
  can be iterated (``list(x.chunk(2, 1))``, ``for y in x.split(...)``), so blocks such as C2f
  stay traceable and their residuals can be reconstructed instead of pinned.
"""

from __future__ import annotations

import copy
import inspect
import operator
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch
import torch.fx
import torch.nn as nn
from torch.fx.immutable_collections import immutable_dict, immutable_list
from torch.fx.proxy import Proxy

from .errors import GraphpruneError, TraceFailure, summary
from .masks import NORMS

MAX_LEAF_RETRIES = 64


def _known_length(node: torch.fx.Node) -> int | None:
    """The number of outputs of a chunk/split/unbind node when it is fixed at trace time."""
    target, args, kwargs = node.target, node.args, node.kwargs
    name = target if node.op == "call_method" else getattr(target, "__name__", None)
    if name == "chunk" and node.op in ("call_method", "call_function"):
        chunks = args[1] if len(args) > 1 else kwargs.get("chunks")
        return chunks if isinstance(chunks, int) else None
    if name == "split" and node.op in ("call_method", "call_function"):
        sizes = args[1] if len(args) > 1 else kwargs.get("split_size_or_sections",
                                                         kwargs.get("split_size"))
        if isinstance(sizes, (list, tuple)) and all(isinstance(s, int) for s in sizes):
            return len(sizes)
    return None


class _SplitProxy(Proxy):
    """Proxy of a chunk/split whose number of pieces is known: it has a length and iterates."""

    def __len__(self) -> int:
        return _known_length(self.node)

    def __iter__(self):
        return iter([self[i] for i in range(len(self))])


class GraphpruneTracer(torch.fx.Tracer):
    """An ``fx.Tracer`` that records which module was being traced when tracing failed."""

    def __init__(self, leaves: Iterable[str] = ()):
        super().__init__()
        self.leaves = set(leaves)
        self.failed_module: str | None = None
        self.failure: BaseException | None = None

    def is_leaf_module(self, m: nn.Module, qualified_name: str) -> bool:
        # a norm layer subclass (timm's BatchNormAct2d, LayerNorm2d, ...) stays one call_module
        # node, which its norm rule prunes, instead of dissolving into F.batch_norm /
        # F.layer_norm and its extras (permutes, a fused activation)
        return qualified_name in self.leaves or isinstance(m, NORMS) or \
            super().is_leaf_module(m, qualified_name)

    def call_module(self, m: nn.Module, forward, args, kwargs):
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception as exc:
            if self.failure is None:  # innermost module first: it is the one that failed
                self.failure = exc
                self.failed_module = self.path_of_module(m)
            raise

    def create_args_for_root(self, root_fn, is_module, concrete_args=None):
        """A root ``forward(self, x, *args, **kwargs)`` (ultralytics' models) is traced through
        a shim that passes only the required named arguments, so that fx does not hand the
        body a ``*args`` Proxy it would try to unpack."""
        fn = inspect.unwrap(root_fn)
        flags = fn.__code__.co_flags
        if is_module and concrete_args is None and flags & (inspect.CO_VARARGS |
                                                            inspect.CO_VARKEYWORDS):
            named = [p.name for p in inspect.signature(fn).parameters.values()
                     if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                     and p.default is p.empty]
            if named and all(n.isidentifier() and n != "_traced_fn" for n in named):
                scope = {"_traced_fn": root_fn}
                arguments = ", ".join(named)
                exec(f"def forward({arguments}):\n    return _traced_fn({arguments})\n", scope)
                root_fn = scope["forward"]
        return super().create_args_for_root(root_fn, is_module, concrete_args)

    def proxy(self, node: torch.fx.Node) -> Proxy:
        if _known_length(node) is not None:
            return _SplitProxy(node, self)
        return super().proxy(node)


@dataclass
class TraceResult:
    graph_module: torch.fx.GraphModule
    leaves: dict[str, str] = field(default_factory=dict)  # auto leaf -> why it could not trace


def _short(exc: BaseException) -> str:
    return summary(exc, 160)


def trace(model: nn.Module, leaves: Iterable[str] = ()) -> TraceResult:
    """Trace ``model`` (in its current train/eval mode) into a GraphModule.

    ``leaves`` names submodules to keep whole from the start.  Submodules that fail to trace are
    added automatically and reported in ``TraceResult.leaves``.
    """
    wanted = set(leaves)
    auto: dict[str, str] = {}
    for _ in range(MAX_LEAF_RETRIES):
        tracer = GraphpruneTracer(wanted | set(auto))
        try:
            graph = tracer.trace(model)
        except Exception as exc:
            failed = tracer.failed_module
            if failed is None or failed == "":
                raise TraceFailure(
                    f"torch.fx cannot trace the forward of {type(model).__name__} itself "
                    f"({_short(tracer.failure or exc)})",
                    hint="make the top-level forward traceable, or wrap the model so that its "
                         "forward only calls submodules") from exc
            if failed in auto or failed in wanted:
                raise TraceFailure(f"tracing failed again at leaf {failed!r}: {_short(exc)}") \
                    from exc
            auto[failed] = _short(tracer.failure or exc)
            continue
        name = type(model).__name__
        out_of_place(graph)
        gm = torch.fx.GraphModule(tracer.root, graph, name)
        return TraceResult(gm, auto)
    raise TraceFailure(f"gave up after {MAX_LEAF_RETRIES} untraceable submodules",
                       hint="name the untraceable blocks with leaves=[...]")


# in-place methods whose name without the underscore is not the same op out of place
_NOT_TWINS = {"resize", "requires_grad", "set", "share_memory"}
# ops whose result may share memory with their input (a view, or the input itself): a mutation
# through one of them reaches the other, which the graph's edges do not show
_ALIASING_METHODS = {"view", "view_as", "reshape", "reshape_as", "narrow", "select", "permute",
                     "transpose", "t", "expand", "expand_as", "squeeze", "unsqueeze", "flatten",
                     "unflatten", "contiguous", "float", "half", "double", "bfloat16", "to",
                     "type", "type_as", "detach", "chunk", "split", "unbind", "movedim",
                     "as_strided", "diagonal", "real", "imag", "__getitem__"}
_ALIASING_FUNCTIONS = {operator.getitem, torch.narrow, torch.select, torch.permute,
                       torch.transpose, torch.reshape, torch.squeeze, torch.unsqueeze,
                       torch.flatten, torch.chunk, torch.split, torch.unbind, torch.movedim,
                       torch.t, torch.diagonal, torch.detach}


def is_in_place(node: torch.fx.Node) -> bool:
    """Whether ``node`` calls an in-place op (PyTorch's trailing-underscore names: ``mul_``,
    ``torch.relu_`` ...) or an augmented operator (``x += y`` as ``operator.iadd``)."""
    if node.op == "call_function" and node.target in _IN_PLACE_OPERATORS:
        return True
    name = node.target if node.op == "call_method" else \
        getattr(node.target, "__name__", "") if node.op == "call_function" else ""
    return isinstance(name, str) and name.endswith("_") and not name.endswith("__")


def _may_alias(node: torch.fx.Node) -> bool:
    """Whether ``node``'s value may share memory with one of its inputs (a view, or a module
    call, which may hand its input back)."""
    if node.op == "call_method":
        return node.target in _ALIASING_METHODS
    if node.op == "call_function":
        return node.target in _ALIASING_FUNCTIONS
    return node.op == "call_module"
# in-place operator functions and their out-of-place twins (``x += y`` traces to iadd)
_IN_PLACE_OPERATORS = {operator.iadd: operator.add, operator.isub: operator.sub,
                       operator.imul: operator.mul, operator.itruediv: operator.truediv}


def _out_of_place_target(node: torch.fx.Node) -> Any:
    """The out-of-place twin of an in-place op on a traced value (``x.mul_(g)`` → ``mul``,
    ``torch.relu_`` → ``torch.relu``, ``x += y`` → ``operator.add``), or None.  A mutation of
    the model's own state (a parameter or buffer read by ``get_attr``) is left as it is."""
    if not is_in_place(node) or not node.args or not isinstance(node.args[0], torch.fx.Node) \
            or node.args[0].op == "get_attr":
        return None
    if node.op == "call_method":
        name = node.target
        twin = name[:-1]
        if name.endswith("_") and not name.endswith("__") and twin not in _NOT_TWINS and \
                callable(getattr(torch.Tensor, twin, None)):
            return twin
        return None
    if node.op != "call_function":
        return None
    if node.target in _IN_PLACE_OPERATORS:
        return _IN_PLACE_OPERATORS[node.target]
    name = getattr(node.target, "__name__", "")
    if name.endswith("_") and not name.endswith("__"):
        for namespace in (torch, torch.nn.functional):
            if getattr(namespace, name, None) is node.target:
                return getattr(namespace, name[:-1], None)
    return None


def _alias_read_later(value: torch.fx.Node, node: torch.fx.Node,
                      position: dict[torch.fx.Node, int]) -> bool:
    """Whether a value that may share memory with ``value`` — what ``value`` is a view of (or a
    module handed back), or a view of ``value`` taken before ``node`` — is read after ``node``,
    the op that mutates ``value``."""
    later = lambda n: any(position[u] > position[node] for u in n.users)  # noqa: E731
    if _may_alias(value) and any(isinstance(a, torch.fx.Node) and a.op != "get_attr" and
                                 later(a) for a in value.all_input_nodes):
        return True
    return any(user is not node and position[user] < position[node] and _may_alias(user) and
               later(user) for user in value.users)


def out_of_place(graph: torch.fx.Graph) -> int:
    """Rewrite every in-place op on a traced value as its out-of-place twin, with the uses of
    the mutated value after it reading the op's result instead (an in-place op returns the
    value it changed): the graph then says by its edges what the mutation did by aliasing
    (NFNet's ``out.mul_(gain)``, whose result nothing reads), and the channel analysis and
    the slim graph, which may copy or reorder a value, stay right.  Aliases of the mutated
    value (a view taken before it, or the value being a view itself) would not see the
    rewrite, so there the op stays in place; the compile's check against the eager model
    refuses a model where that still goes wrong.  Returns the number of ops rewritten."""
    position = {n: i for i, n in enumerate(graph.nodes)}
    count = 0
    for node in list(graph.nodes):
        target = _out_of_place_target(node)
        if target is None:
            continue
        value = node.args[0]
        if _alias_read_later(value, node, position):
            # the mutation reaches memory another value shares and something reads later: the
            # op stays in place (dead-code elimination keeps it, passes/slim_layers.py)
            continue
        for user in list(value.users):
            if user is not node and position[user] > position[node]:
                user.replace_input_with(value, node)
        node.target = target
        count += 1
    return count


def _mutable(value: Any) -> Any:
    """fx's immutable list/dict arguments as plain ones (generated code passes plain lists,
    and modules kept whole may mutate them, as YOLO heads do)."""
    if isinstance(value, immutable_list) or type(value) is list:
        return [_mutable(v) for v in value]
    if isinstance(value, immutable_dict) or type(value) is dict:
        return {k: _mutable(v) for k, v in value.items()}
    if type(value) is tuple:
        return tuple(_mutable(v) for v in value)
    return value


class Interpreter(torch.fx.Interpreter):
    """``fx.Interpreter`` that hands modules plain (mutable) argument lists, like the
    ``GraphModule``'s own generated code does."""

    def call_module(self, target, args, kwargs):
        return super().call_module(target, _mutable(args), _mutable(kwargs))


def module_call_counts(gm: torch.fx.GraphModule) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            counts[node.target] = counts.get(node.target, 0) + 1
    return counts


def flat_tensor_args(node: torch.fx.Node) -> list[torch.fx.Node]:
    """Input nodes of ``node`` in the order ``torch.fx`` would visit them (duplicates kept)."""
    found: list[torch.fx.Node] = []
    torch.fx.node.map_arg((node.args, node.kwargs), lambda n: found.append(n) or n)
    return found


def as_inputs(example_inputs: Any) -> tuple[Any, ...]:
    """The example inputs as a tuple (a single tensor becomes a 1-tuple)."""
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs)
    raise GraphpruneError(f"example_inputs must be a tensor or a tuple of them, got "
                          f"{type(example_inputs).__name__}",
                          hint="e.g. torch.zeros(1, 3, 640, 640)")


def working_copy(model: nn.Module, inputs: tuple[Any, ...]) -> nn.Module:
    """A private eval-mode copy of ``model`` on the device of the example inputs (a CUDA
    model with CPU inputs is compiled on the CPU; the caller's model stays where it is)."""
    work = copy.deepcopy(model).eval()
    device = next((t.device for t in inputs if isinstance(t, torch.Tensor)), None)
    return work if device is None else work.to(device)


__all__ = ["GraphpruneTracer", "Interpreter", "TraceResult", "as_inputs", "flat_tensor_args",
           "module_call_counts", "trace", "working_copy"]
