"""The channel analysis: liveness forward, requirements backward, orders, consistency.

``ChannelAnalysis`` owns the per-node state the passes share.  The rules in
``graphprune.channels`` read and write it through the small interface below (``live``,
``need``, ``grow``, ``order`` ...).  The passes store its results on the nodes as
``node.meta["graphprune.live"]`` and ``node.meta["graphprune.order"]`` for inspection.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.fx
import torch.nn as nn

from . import channels as ch
from . import specs
from .emit import Emitter
from .tracing import module_call_counts

# the rules of the layers a mask may name
PRODUCER_RULES = ("batchnorm", "groupnorm", "layernorm", "conv")


@dataclass
class Solution:
    """What ``ChannelAnalysis.solve_for`` finds: the grown masks, why each grew (BatchNorm →
    reasons), the channels live at every node under them, and the rounds it took."""

    masks: dict[str, np.ndarray]
    reasons: dict[str, list[str]]
    lives: dict[torch.fx.Node, Any]
    rounds: int


class ChannelAnalysis:
    def __init__(self, gm: torch.fx.GraphModule, masks: dict[str, np.ndarray]):
        self.gm = gm
        self.nodes = list(gm.graph.nodes)
        self.modules = dict(gm.named_modules())
        self.counts = module_call_counts(gm)
        self.masks = masks                       # producer name -> bool array, grown in place
        # sealed blocks of leaves to compile on their own: block name -> (InnerBlock, masks),
        # the options their compiles inherit, and what each compile returned
        self.inner: dict[str, tuple] = {}
        self.inner_options: dict = {}
        self.inner_compile = None                # pipeline.compile, handed down by the pipeline
        self.inner_results: dict = {}
        self.reasons: dict[str, list[str]] = {}  # producer name -> why it grew
        self.structural_only = False
        self.changed = False
        self.lives: dict[torch.fx.Node, Any] = {}
        self.requirements: dict[torch.fx.Node, Any] = {}
        self.orders: dict[torch.fx.Node, Any] = {}
        self.plans: dict[torch.fx.Node, Any] = {}
        self.producer_orders: dict[torch.fx.Node, np.ndarray] = {}
        # conv -> (rank, partner): order the conv's kept rows like the other operand of the
        # residual add it feeds, when that operand's order is known first (see
        # graphprune/residuals.py)
        self.producer_partners: dict[torch.fx.Node, tuple[np.ndarray, torch.fx.Node]] = {}
        self.ranks: dict[torch.fx.Node, np.ndarray] = {}
        self.rules = {n: ch.rule_for(n, self) for n in self.nodes}
        for n, rule in self.rules.items():
            n.meta[specs.RULE] = rule.name
        self.producers = self._find_producers()

    # -- facts about nodes -----------------------------------------------------------------
    def module_of(self, node: torch.fx.Node) -> nn.Module | None:
        return self.modules.get(node.target) if node.op == "call_module" else None

    def call_count(self, node: torch.fx.Node) -> int:
        return self.counts.get(node.target, 0)

    def name_of(self, node: torch.fx.Node) -> str | None:
        """The name a mask would give the layer ``node`` calls: a module's name, or the weight
        of a functional batch norm (``channels.functional_batchnorm``); None for other ops."""
        if node.op == "call_module":
            return node.target
        bound = ch.functional_batchnorm(node)
        return bound["weight"].target if bound is not None else None

    def is_prunable_node(self, node: torch.fx.Node) -> bool:
        """Whether ``node`` is the one call of a layer a mask names, on one tensor, with as
        many output channels as the mask."""
        name = self.name_of(node)
        if name is None or name not in self.masks or not node.args or \
                not specs.is_tensor(node.args[0]) or \
                specs.channels(node) != len(self.masks[name]):
            return False
        return node.op != "call_module" or (self.call_count(node) == 1 and
                                            len(node.args) == 1 and not node.kwargs)

    def _find_producers(self) -> dict[torch.fx.Node, torch.fx.Node]:
        """Conv/Linear nodes whose output rows a mask decides: conv -> the prunable BatchNorm
        or GroupNorm that is its only user, or conv -> itself when a mask names the conv."""
        out = {}
        for n in self.nodes:
            if self.rules[n].name != "conv":
                continue
            if self.is_prunable_node(n):
                out[n] = n
            elif len(n.users) == 1:
                (user,) = n.users
                if self.rules[user].name in ("batchnorm", "groupnorm"):
                    out[n] = user
        return out

    def bn_nodes(self) -> dict[str, torch.fx.Node]:
        return {self.name_of(n): n for n in self.nodes if self.rules[n].name == "batchnorm"}

    def mask_nodes(self) -> dict[str, torch.fx.Node]:
        """{name: node} of every layer whose mask the analysis applies, in graph order."""
        return {self.name_of(n): n for n in self.nodes
                if self.rules[n].name in PRODUCER_RULES and self.is_prunable_node(n)}

    # -- liveness ----------------------------------------------------------------------------
    def live(self, node: Any) -> Any:
        return self.lives[node]

    def mask(self, name: str) -> np.ndarray:
        return self.masks[name]

    def compute_lives(self) -> None:
        self.lives = {}
        for n in self.nodes:
            self.lives[n] = self.rules[n].live(n, self)
            n.meta[specs.LIVE] = self.lives[n]

    # -- requirements ------------------------------------------------------------------------
    def required(self, node: torch.fx.Node):
        """(bool array, reason) of channels consumers need physically present, or None."""
        return self.requirements.get(node)

    def required_elements(self, node: torch.fx.Node) -> list:
        req = self.requirements.get(node)
        n = len(specs.spec_of(node))
        return list(req) if isinstance(req, list) else [None] * n

    def need(self, node: Any, channels: np.ndarray, reason: str, element: int | None = None):
        if not isinstance(node, torch.fx.Node) or not channels.any():
            return
        if element is not None:
            slots = self.requirements.setdefault(node, [None] * len(specs.spec_of(node)))
            old = slots[element]
            slots[element] = (channels.copy(), reason) if old is None else \
                (old[0] | channels, old[1])
            return
        old = self.requirements.get(node)
        self.requirements[node] = (channels.copy(), reason) if old is None else \
            (old[0] | channels, old[1])

    def need_full(self, node: Any, reason: str) -> None:
        """Require every channel of a tensor (or of each tensor in a tuple-valued node)."""
        if not isinstance(node, torch.fx.Node):
            return
        s = specs.spec_of(node)
        if isinstance(s, specs.TensorSpec) and s.channels is not None:
            self.need(node, np.ones(s.channels, dtype=bool), reason)
        elif isinstance(s, tuple):
            for k, e in enumerate(s):
                if isinstance(e, specs.TensorSpec) and e.channels is not None:
                    self.need(node, np.ones(e.channels, dtype=bool), reason, element=k)

    def grow(self, name: str, channels: np.ndarray, reason: str) -> None:
        mask = self.masks[name]
        add = channels & ~mask
        if add.any():
            mask |= add
            self.reasons.setdefault(name, [])
            if reason not in self.reasons[name]:
                self.reasons[name].append(reason)
            self.changed = True

    def propagate_requirements(self, structural_only: bool = False) -> None:
        """One backward sweep: consumers' requirements reach producers; BatchNorms grow."""
        self.structural_only = structural_only
        self.requirements = {}
        for n in reversed(self.nodes):
            if not structural_only and n.users:
                live = self.lives.get(n)
                if isinstance(live, np.ndarray) and len(live) and not live.any():
                    one = np.zeros(len(live), dtype=bool)
                    one[0] = True
                    self.need(n, one, f"{n.name} may not lose all of its channels")
            self.rules[n].backward(n, self)
        self.structural_only = False

    def adopt(self, masks: dict[str, np.ndarray]) -> None:
        """Work on ``masks`` from now on: ``solve`` grows them in place, and the passes after
        the planning read them from here."""
        self.masks, self.reasons = masks, {}

    def solve_for(self, masks: dict[str, np.ndarray], structural_only: bool = False
                  ) -> Solution:
        """The fixed point of the channel requirements from a copy of ``masks``, found without
        changing this analysis' own masks, reasons, lives or requirements."""
        state = (self.masks, self.reasons, self.lives, self.requirements)
        self.masks, self.reasons = {n: m.copy() for n, m in masks.items()}, {}
        try:
            rounds = self.solve(structural_only)
            return Solution(self.masks, self.reasons, self.lives, rounds)
        finally:
            self.masks, self.reasons, self.lives, self.requirements = state

    def solve(self, structural_only: bool = False, max_rounds: int = 1000) -> int:
        """Grow the masks until every requirement is met (a fixed point).  Returns the number
        of rounds.  Masks only grow, so this terminates."""
        for rounds in range(1, max_rounds + 1):
            self.changed = False
            self.compute_lives()
            self.propagate_requirements(structural_only)
            if not self.changed:
                return rounds
        raise RuntimeError(f"channel requirements did not settle in {max_rounds} rounds")

    # -- orders ------------------------------------------------------------------------------
    def order(self, node: Any) -> Any:
        return self.orders.get(node) if isinstance(node, torch.fx.Node) else None

    def physical(self, node: torch.fx.Node) -> int:
        o = self.orders.get(node)
        return specs.channels(node) if o is None else len(o)

    def producer_order(self, conv: torch.fx.Node) -> np.ndarray | None:
        """Physical order of a producer convolution's output rows (its kept channels)."""
        partner = self.producer_partners.get(conv)
        if partner is None or partner[1] not in self.orders:
            return self.producer_orders.get(conv)
        rank, other = partner
        keep = self.masks[self.name_of(self.producers[conv])]
        have = self.orders[other]
        have = np.arange(len(keep)) if have is None else np.asarray(have)
        shared = have[keep[have]]
        rest = np.flatnonzero(keep & ~np.isin(np.arange(len(keep)), have))
        order = np.concatenate([shared, rest[np.argsort(rank[rest], kind="stable")]])
        return None if len(order) == len(keep) and np.array_equal(order, np.arange(len(keep))) \
            else order.astype(np.int64)

    def rank(self, node: torch.fx.Node) -> np.ndarray | None:
        return self.ranks.get(node)

    def compute_orders(self) -> None:
        self.orders, self.plans = {}, {}
        for n in self.nodes:
            o = self.rules[n].order(n, self)
            self.orders[n] = o
            n.meta[specs.ORDER] = o

    def emit_full(self, E: Emitter, node: torch.fx.Node):
        """The slim value of ``node`` in its original, complete layout."""
        value, order = E.env[node], self.orders.get(node)
        if order is None:
            return value
        if isinstance(order, tuple):
            return tuple(v if o is None else E.reorder(v, o, None, len(o)) for v, o in
                         zip(value if isinstance(value, tuple) else
                             [value[i] for i in range(len(order))], order))
        return E.reorder(value, order, None, specs.channels(node))

    def check_consistency(self) -> list[str]:
        """Each value's physical channels must be exactly its live channels (producer convs
        excepted: only their BatchNorm sees them).  Returns the violations."""
        bad = []
        for n in self.nodes:
            live, order = self.lives.get(n), self.orders.get(n)
            if self.producers.get(n, n) is not n or not isinstance(live, np.ndarray):
                continue
            have = np.arange(len(live)) if order is None else np.asarray(order)
            if isinstance(order, tuple):
                continue
            if sorted(have.tolist()) != np.flatnonzero(live).tolist():
                bad.append(n.name)
        return bad
