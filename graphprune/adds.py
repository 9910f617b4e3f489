"""Rebuilding a residual add whose operands hold different channels (paper §3.2, Eq. 13-14):
``plan_add`` turns the two operands' channel orders into pieces — shared channels added, the
others copied — or, past ``PIECES_BEFORE_GATHER`` pieces, into one gather of each operand."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class AddPlan:
    """How a residual add with different operand masks is rebuilt (paper Eq. 13-14).

    ``pieces``: ("ab", i, j, n) adds a[i:i+n] + b[j:j+n]; ("a", i, -1, n) and ("b", -1, j, n)
    copy one operand; the output is their concatenation.  ``a_take``/``b_take`` optionally
    gather an operand first (its positions), used when that is cheaper than many slices.
    """

    pieces: list[tuple[str, int, int, int]]
    order: np.ndarray
    a_take: list[int] | None = None
    b_take: list[int] | None = None

    def nodes(self, na: int, nb: int) -> int:
        """Nodes ``Add.emit`` writes for this plan (operands of ``na``, ``nb`` physical
        channels): gathers, slices, partial adds and the concatenation."""
        count = (self.a_take is not None) + (self.b_take is not None)
        for kind, i, j, n in self.pieces:
            count += kind != "b" and (i, n) != (0, na)
            count += kind != "a" and (j, n) != (0, nb)
            count += kind == "ab"
        return count + (len(self.pieces) > 1)


def _merge_pieces(oa: np.ndarray, ob: np.ndarray, rank: np.ndarray | None):
    """Merge two orders whose shared channels appear in the same relative order."""
    in_a, in_b = set(oa.tolist()), set(ob.tolist())
    i = j = 0
    steps: list[tuple[str, int, int]] = []
    out: list[int] = []
    while i < len(oa) or j < len(ob):
        a_only = i < len(oa) and oa[i] not in in_b
        b_only = j < len(ob) and ob[j] not in in_a
        if a_only and b_only:
            pick_a = rank is None or rank[oa[i]] <= rank[ob[j]]
            a_only, b_only = pick_a, not pick_a
        if a_only:
            steps.append(("a", i, -1)), out.append(int(oa[i]))
            i += 1
        elif b_only:
            steps.append(("b", -1, j)), out.append(int(ob[j]))
            j += 1
        else:
            steps.append(("ab", i, j)), out.append(int(oa[i]))
            i += 1
            j += 1
    pieces: list[tuple[str, int, int, int]] = []
    for kind, i, j in steps:
        if pieces:
            pk, pi, pj, pn = pieces[-1]
            if pk == kind and (kind == "b" or pi + pn == i) and (kind == "a" or pj + pn == j):
                pieces[-1] = (pk, pi, pj, pn + 1)
                continue
        pieces.append((kind, i, j, 1))
    return pieces, np.asarray(out, dtype=np.int64)


def plan_add(oa: np.ndarray, ob: np.ndarray, rank: np.ndarray | None) -> AddPlan:
    """Pieces for ``a + b`` where ``a`` holds channels ``oa`` and ``b`` holds ``ob``."""
    in_a, in_b = set(oa.tolist()), set(ob.tolist())
    shared_a = [int(c) for c in oa if c in in_b]
    shared_b = [int(c) for c in ob if c in in_a]
    if shared_a == shared_b:
        pieces, out = _merge_pieces(oa, ob, rank)
        if len(pieces) <= PIECES_BEFORE_GATHER:
            return AddPlan(pieces, out)
    # Gather form: shared channels first in both operands, then what only one of them has.
    pos_a = {int(c): i for i, c in enumerate(oa)}
    pos_b = {int(c): i for i, c in enumerate(ob)}
    only_a = [int(c) for c in oa if c not in in_b]
    only_b = [int(c) for c in ob if c not in in_a]
    a_take = [pos_a[c] for c in shared_a + only_a]
    b_take = [pos_b[c] for c in shared_a + only_b]
    k = len(shared_a)
    pieces = [p for p in (("ab", 0, 0, k), ("a", k, -1, len(only_a)), ("b", -1, k, len(only_b)))
              if p[3] > 0]
    return AddPlan(pieces, np.asarray(shared_a + only_a + only_b, dtype=np.int64),
                   None if a_take == list(range(len(oa))) else a_take,
                   None if b_take == list(range(len(ob))) else b_take)


# Above this many pieces a residual add gathers its operands into shared-first order instead
# (at most two gathers, three pieces).  benchmarks/residual_ops.py on these 2 cores: P slice-adds
# cost 0.8-0.97x the gather form in onnxruntime up to P = 9, and more from P = 13 on.
PIECES_BEFORE_GATHER = 9


__all__ = ["PIECES_BEFORE_GATHER", "AddPlan", "plan_add"]
