"""Pass 5 — slim layers: write the slim graph and its physically smaller layers.

Each node of the traced graph is emitted by its channel rule (``graphprune.channels``): convolutions
and BatchNorms become copies holding only the kept rows (in the chosen order) and input columns,
residual adds become split/add/concat pieces, kept-whole modules get their sealed blocks compiled
on their own (``graphprune.inner``) and their inner convolutions' input columns gathered.  The result is a new ``GraphModule``: the original model is untouched.
"""

from __future__ import annotations

import torch
import torch.fx
import torch.nn as nn
from torch.fx.passes.infra.pass_base import PassResult

from graphprune.context import CompileContext
from graphprune.emit import Emitter
from graphprune.tracing import is_in_place


def _install(root: nn.Module, target: str, obj) -> None:
    """Put ``obj`` at the dotted path ``target`` under ``root``, creating empty parents."""
    *parents, leaf = target.split(".")
    here = root
    for part in parents:
        nxt = getattr(here, part, None)
        if nxt is None:
            nxt = nn.Module()
            setattr(here, part, nxt)
        here = nxt
    if isinstance(obj, torch.Tensor) and not isinstance(obj, nn.Parameter):
        here.register_buffer(leaf, obj)
    else:
        setattr(here, leaf, obj)


def _impure(node: torch.fx.Node) -> bool:
    """Whether dead-code elimination must keep ``node``: what torch.fx itself counts as impure
    (the graph's inputs and output, ``x[i] = v`` ...), and in-place ops left in place (on a
    view, or on the model's own state)."""
    if node.op == "call_module":          # a module's purity needs an owning module; the
        return False                      # slim graph has none yet (eval mode: pure)
    return node.is_impure() or is_in_place(node)


def record_inner(ctx: CompileContext, results: dict) -> None:
    """What the sealed blocks' own compiles applied, under the model's names: their masks,
    requests and pins, and their warnings."""
    for name, result in results.items():
        block = ctx.inner[name]
        for inner, mask in result.masks.items():
            full = block.full(inner)
            ctx.masks[full] = mask.numpy().astype(bool)
            ctx.requested.setdefault(full, result.requested[inner].numpy().astype(bool))
            if inner in result.pinned:      # its names are the block's own
                ctx.pinned[full] = f"{result.pinned[inner]} (inside {name!r})"
        ctx.warnings.extend(f"inside {name!r}: {w}" for w in result.warnings)


def slim_layers(gm: torch.fx.GraphModule, ctx: CompileContext) -> PassResult:
    with ctx.timed("slim_layers"):
        A = ctx.analysis
        E = Emitter(gm)
        for node in A.nodes:
            E.env[node] = A.rules[node].emit(node, E, A)
        # Pieces no one reads (an unused split output) go; an in-place op (``out.mul_(g)``, its
        # result unused: the effect is the mutation) stays.
        E.graph.eliminate_dead_code(is_impure_node=_impure)
        root = nn.Module()
        for node in E.graph.nodes:
            if node.op not in ("call_module", "get_attr"):
                continue
            if node.target in E.attrs:
                obj = E.attrs[node.target]
            elif node.op == "call_module":
                obj = gm.get_submodule(node.target)
            else:
                *path, name = node.target.split(".")
                obj = getattr(gm.get_submodule(".".join(path)) if path else gm, name)
            _install(root, node.target, obj)
        E.graph.lint()
        slim = torch.fx.GraphModule(root, E.graph, class_name=f"Slim{type(ctx.model).__name__}")
        slim.eval()
        record_inner(ctx, A.inner_results)
        ctx.slim = slim
        ctx.slim_env = E.env
        ctx.emit_stats = dict(E.stats)
    return PassResult(slim, True)


__all__ = ["slim_layers"]
