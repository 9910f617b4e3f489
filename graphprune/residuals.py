"""Residual groups and channel orders: what lets the branches of a residual add keep
different channels (run by the ``reconstruct_residuals`` pass).

With independent masks the two branches of a residual add ``y = a + b`` hold different channels
(paper §3.2, Fig. 5, Eq. 13-14): channels both keep are added, channels one keeps are copied,
channels neither keeps are dropped (OCR); consumers of ``y`` gather their input columns in
``y``'s order (ICR).  The channel rules do the bookkeeping; this module chooses the orders.

A *residual group* is a set of adds joined through their operands (a C3 bottleneck chain, a
ResNet stage).  Its *sources* are the values its adds are built from (walking back through
activations and scalings).  A source made by a Conv -> BatchNorm pair is *free*: permuting the
convolution's output rows (and its BatchNorm) costs nothing.  A free source whose partner in an
add (the other operand, usually the trunk) is ordered first takes the partner's order: the
channels it shares with the partner first, in the partner's order, then its own channels.  Every
other free source of the group is ordered by one key — membership in each source of the group
in graph order, then the channel index.  So the first add of a chain is
``cat(a[:k] + b[:k], a[k:], b[k:])``, and in every later add the branch needs no gather; where
the shared channels are scattered over the trunk in many runs the plan switches from slice-adds
to one gather of the trunk (``adds.plan_add``, cut-over measured by
``benchmarks/residual_ops.py``).  Producers outside residual groups keep their kept channels in
ascending order.
"""

from __future__ import annotations

import numpy as np
import torch.fx

from . import channels as ch
from . import specs
from .analysis import PRODUCER_RULES, ChannelAnalysis
from .groups import CouplingSet

# Rules a residual operand is walked back through: one tensor in, same channels out.
_TRANSPARENT = {"passthrough", "scale"}


class _UnionFind:
    def __init__(self):
        self.parent: dict = {}

    def find(self, x):
        self.parent.setdefault(x, x)
        while self.parent[x] is not x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a, b):
        ra, rb = self.find(a), self.find(b)
        if ra is not rb:
            self.parent[rb] = ra


def _source(A: ChannelAnalysis, operand: torch.fx.Node) -> torch.fx.Node:
    """Walk an add operand back through activations and scalings to the value it comes from."""
    while A.rules[operand].name in _TRANSPARENT:
        operand = A.rules[operand].tensor_input(operand)
    return operand


def residual_groups(A: ChannelAnalysis) -> list[tuple[list[torch.fx.Node], list[torch.fx.Node]]]:
    """[(adds, sources)] per residual group, both in graph order."""
    position = {n: i for i, n in enumerate(A.nodes)}
    uf = _UnionFind()
    sources_of: dict[torch.fx.Node, torch.fx.Node] = {}
    adds = [n for n in A.nodes if A.rules[n].name == "add"]
    for add in adds:
        uf.find(add)
        for operand in add.args:
            src = _source(A, operand)
            uf.union(add, src)
            sources_of.setdefault(src, src)
    members: dict = {}
    for n in list(adds) + list(sources_of):
        members.setdefault(uf.find(n), set()).add(n)
    groups = []
    for nodes in members.values():
        group_adds = sorted((n for n in nodes if A.rules[n].name == "add"), key=position.get)
        srcs = sorted((n for n in nodes if A.rules[n].name != "add"), key=position.get)
        if group_adds:
            groups.append((group_adds, srcs))
    return groups


def _source_channels(A: ChannelAnalysis, operand: torch.fx.Node) -> tuple[torch.fx.Node, int]:
    """(value, offset): channel c of ``operand`` is channel offset + c of ``value``, walking
    back through activations, scalings, chunk/split pieces and channel slices."""
    offset = 0
    while True:
        rule = A.rules[operand]
        if rule.name in _TRANSPARENT:
            operand = rule.tensor_input(operand)
        elif rule.name == "getitem" and A.rules[operand.args[0]].name == "split":
            split, piece = operand.args
            offset += ch.split_segments(split)[piece][0]
            operand = split.args[0]
        elif rule.name == "getitem" and not isinstance(specs.spec_of(operand.args[0]), tuple):
            offset += rule.channel_slice(operand)[0]
            operand = operand.args[0]
        else:
            return operand, offset


def residual_sets(A: ChannelAnalysis) -> list[CouplingSet]:
    """The conventional coupling of residual adds, from the channel analysis: per residual
    group, every BatchNorm whose channels reach one of its adds, mapped channel by channel
    (through chunk pieces and slices too, as in C2f blocks).  A value that is not a BatchNorm
    (an input, an op without a rule) joins as a member that keeps every channel."""
    uf = _UnionFind()
    adds = [n for n in A.nodes if A.rules[n].name == "add"]
    feeds: dict[torch.fx.Node, list[tuple[torch.fx.Node, int]]] = {}
    for add in adds:
        uf.find(add)
        feeds[add] = []
        for operand in add.args:
            src, offset = _source_channels(A, operand)
            if A.rules[src].name == "add":
                uf.union(add, src)
            else:
                feeds[add].append((src, offset))
    members: dict = {}
    for add in adds:
        width = specs.channels(add)
        root = np.arange(width)
        for src, offset in feeds[add]:
            name = A.name_of(src) if A.is_prunable_node(src) and \
                A.rules[src].name in PRODUCER_RULES else f"<{src.name}>"
            members.setdefault(uf.find(add), []).append((name, offset + root, root))
    return [CouplingSet("residual", m) for m in members.values()
            if len({name for name, _, _ in m}) >= 2]


def free_source_conv(A: ChannelAnalysis, source: torch.fx.Node) -> torch.fx.Node | None:
    """The convolution whose rows may be permuted to order ``source``, if any: the convolution
    before a BatchNorm source, or a source that is a masked convolution itself."""
    if A.producers.get(source) is source:
        return source
    if A.rules[source].name != "batchnorm":
        return None
    conv = source.args[0]
    return conv if A.producers.get(conv) is source else None


def group_rank(A: ChannelAnalysis, sources: list[torch.fx.Node], channels: int) -> np.ndarray:
    """rank[c]: position of channel c in the group's common order."""
    keys = [np.arange(channels)]
    for src in reversed(sources):           # np.lexsort: the last key is the primary one
        live = A.live(src)
        keys.append(~live if live is not None else np.zeros(channels, dtype=bool))
    order = np.lexsort(keys)
    rank = np.empty(channels, dtype=np.int64)
    rank[order] = np.arange(channels)
    return rank


def plan_orders(A: ChannelAnalysis) -> list[tuple[list[torch.fx.Node], list[torch.fx.Node]]]:
    """Channel orders of every value and plans of every add for the current masks; returns
    the residual groups."""
    A.compute_lives()
    A.producer_orders, A.ranks, A.producer_partners = {}, {}, {}
    for conv, bn in A.producers.items():
        keep = A.mask(A.name_of(bn))
        if not keep.all():
            A.producer_orders[conv] = np.flatnonzero(keep)
    groups = residual_groups(A)
    for adds, sources in groups:
        channels = len(A.live(adds[0]))
        rank = group_rank(A, sources, channels)
        for add in adds:
            A.ranks[add] = rank
        for add in adds:
            for src, other in ((_source(A, add.args[0]), add.args[1]),
                               (_source(A, add.args[1]), add.args[0])):
                conv = free_source_conv(A, src)
                if conv is not None and conv not in A.producer_partners:
                    A.producer_partners[conv] = (rank, other)
        for src in sources:
            conv = free_source_conv(A, src)
            if conv is not None:
                kept = np.flatnonzero(A.mask(A.name_of(src)))
                order = kept[np.argsort(rank[kept], kind="stable")]
                if len(order) < channels or not np.array_equal(order, kept):
                    A.producer_orders[conv] = order
    A.compute_orders()
    return groups


__all__ = ["free_source_conv", "group_rank", "plan_orders", "residual_groups", "residual_sets"]
