"""The residual-add planner (``graphprune.adds.plan_add``) and the channel selection of the
emitter (``graphprune.emit.selection_plan``), tested directly: a plan is run by a small numpy
interpreter of its pieces and must give, for every channel either operand holds, the zero-masked
sum a + b, with channels neither holds left out."""

from __future__ import annotations

import numpy as np
import pytest

from graphprune import adds
from graphprune.adds import AddPlan, plan_add
from graphprune.emit import runs, selection_plan


def run_plan(plan: AddPlan, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """What ``Add.emit`` computes for ``plan`` on physical operands ``a`` and ``b``."""
    if plan.a_take is not None:
        a = a[plan.a_take]
    if plan.b_take is not None:
        b = b[plan.b_take]
    out = []
    for kind, i, j, n in plan.pieces:
        if kind == "ab":
            out.append(a[i:i + n] + b[j:j + n])
        elif kind == "a":
            out.append(a[i:i + n])
        else:
            out.append(b[j:j + n])
    return np.concatenate(out) if out else np.zeros(0)


def check(oa, ob, rank=None) -> AddPlan:
    oa, ob = np.asarray(oa, dtype=np.int64), np.asarray(ob, dtype=np.int64)
    channels = int(max([*oa, *ob], default=-1)) + 1
    rng = np.random.default_rng(len(oa) * 31 + len(ob))
    full_a, full_b = rng.normal(size=channels), rng.normal(size=channels)
    dense_a = np.zeros(channels)
    dense_a[oa] = full_a[oa]                       # the zero-masked operands
    dense_b = np.zeros(channels)
    dense_b[ob] = full_b[ob]
    plan = plan_add(oa, ob, rank)
    got = run_plan(plan, full_a[oa], full_b[ob])
    assert sorted(plan.order.tolist()) == sorted(set(oa.tolist()) | set(ob.tolist()))
    np.testing.assert_allclose(got, (dense_a + dense_b)[plan.order])
    return plan


def test_equal_orders_add_in_one_piece_without_any_node_but_the_add():
    plan = check([0, 2, 5], [0, 2, 5])
    assert plan.pieces == [("ab", 0, 0, 3)] and plan.a_take is None and plan.b_take is None
    assert plan.nodes(3, 3) == 1


def test_channels_one_branch_keeps_are_copied_in_rank_order():
    rank = np.arange(6)
    plan = check([0, 1, 4], [1, 2, 3], rank)
    assert plan.order.tolist() == [0, 1, 2, 3, 4]
    assert plan.pieces == [("a", 0, -1, 1), ("ab", 1, 0, 1), ("b", -1, 1, 2), ("a", 2, -1, 1)]
    # the rank decides between channels only one operand holds
    plan = check([5], [0], np.array([3, 0, 0, 0, 0, 1]))
    assert plan.order.tolist() == [5, 0]


def test_disjoint_operands_are_concatenated():
    plan = check([0, 1], [2, 3], np.arange(4))
    assert plan.pieces == [("a", 0, -1, 2), ("b", -1, 0, 2)]


def test_many_pieces_switch_to_the_gather_form(monkeypatch):
    oa, ob = list(range(0, 20, 2)) + [1], list(range(0, 20, 4)) + [3]     # alternating pieces
    monkeypatch.setattr(adds, "PIECES_BEFORE_GATHER", 10 ** 6)
    slices = check(oa, ob, np.arange(20))
    assert slices.a_take is None and len(slices.pieces) > 3
    monkeypatch.setattr(adds, "PIECES_BEFORE_GATHER", 0)
    gather = check(oa, ob, np.arange(20))
    assert len(gather.pieces) <= 3 and gather.pieces[0][0] == "ab"
    assert gather.a_take is not None or gather.b_take is not None


def test_shared_channels_in_different_orders_gather():
    """When the operands hold their shared channels in different orders no slice plan can
    line them up: the planner gathers (shared first), whatever the piece budget."""
    plan = check([0, 1, 2], [2, 1, 0])
    assert plan.pieces == [("ab", 0, 0, 3)] and plan.b_take == [2, 1, 0]


@pytest.mark.parametrize("seed", range(40))
def test_random_orders_give_the_zero_masked_sum(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 24))
    keep_a, keep_b = rng.random(n) < rng.random(), rng.random(n) < rng.random()
    if not (keep_a.any() or keep_b.any()):
        keep_a[0] = True
    oa, ob = np.flatnonzero(keep_a), np.flatnonzero(keep_b)
    if seed % 3 == 0:                       # a permuted operand, as a reordered producer holds
        ob = rng.permutation(ob)
    check(oa, ob, rng.permutation(n) if seed % 2 else None)


def test_runs_and_selection_plan():
    assert runs([0, 1, 2, 5, 6, 9]) == [(0, 3), (5, 2), (9, 1)]
    assert runs([3, 2]) == [(3, 1), (2, 1)]                 # descending is not one run
    assert selection_plan(range(6), 6) == ("all", None)
    assert selection_plan([1, 2, 3], 6) == ("slices", [(1, 3)])
    assert selection_plan([4, 0], 6) == ("gather", [4, 0])


def test_selection_plan_slices_up_to_the_cut_over_then_gathers(monkeypatch):
    from graphprune import emit
    monkeypatch.setattr(emit, "MAX_SLICE_RUNS", 3)
    assert selection_plan([0, 2, 4], 6) == ("slices", [(0, 1), (2, 1), (4, 1)])
    assert selection_plan([0, 2, 4, 5], 8) == ("slices", [(0, 1), (2, 1), (4, 2)])
    assert selection_plan([0, 2, 4, 6], 8) == ("gather", [0, 2, 4, 6])
    monkeypatch.setattr(emit, "MAX_SLICE_RUNS", 1)
    assert selection_plan([0, 2, 4], 6) == ("gather", [0, 2, 4])
