"""Tests of gradc.planner: matrix chain ordering and optimal Jacobian chaining.

The dynamic programme is checked against an exhaustive recursive search written
independently from the cost model (no shared tables), against a full enumeration of
plans for short chains, and by executing the returned move tree on random matrices.
"""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from gradc.planner import ChainPlan, Piece, Step, chain_order, jacobian_chain

try:
    from gradc.errors import GradcError
except ImportError:  # gradc.errors not there yet: the planner falls back to ValueError
    GradcError = ValueError


# --------------------------------------------------------------------------- helpers


def _diag(pieces, i, j):
    return all(p.structure == "diagonal" for p in pieces[i:j + 1])


def _fits(tape, memory):
    return memory is None or tape <= memory


def _brute_force(pieces, memory=None):
    """Minimal plan cost by exhaustive recursion over every split and move (no memo).

    Sub-chains are 0-based inclusive ranges ``i..j``.  Every node tries: the single
    piece on its own (i == j), tangent / adjoint from the identity, a tangent split,
    an adjoint split and a product split at every k.  Costs of children are
    recomputed from scratch at every node.
    """

    def best(i, j):
        rows, cols = pieces[j].n_out, pieces[i].n_in
        dg = _diag(pieces, i, j)
        sw_t, sw_a = (1, 1) if dg else (cols, rows)
        t = [p.tangent_cost for p in pieces]
        a = [p.adjoint_cost for p in pieces]
        if i == j:
            p = pieces[i]
            options = [sw_t * p.tangent_cost]
            if p.explicit:
                options.append(0)
            if _fits(p.tape, memory):
                options.append(sw_a * p.adjoint_cost)
            return min(options)
        options = [sw_t * sum(t[i:j + 1])]
        if _fits(sum(p.tape for p in pieces[i:j + 1]), memory):
            options.append(sw_a * sum(a[i:j + 1]))
        for k in range(i, j):
            inner, outer = best(i, k), best(k + 1, j)
            options.append(inner + sw_t * sum(t[k + 1:j + 1]))
            if _fits(sum(p.tape for p in pieces[i:k + 1]), memory):
                options.append(outer + sw_a * sum(a[i:k + 1]))
            mid = pieces[k].n_out
            od, idg = _diag(pieces, k + 1, j), _diag(pieces, i, k)
            prod = mid if od and idg else mid * cols if od else rows * mid if idg else rows * mid * cols
            options.append(inner + outer + prod)
        return min(options)

    return best(0, len(pieces) - 1)


def _all_plans(pieces, memory, i, j):
    """Yield ``(cost, bracketing)`` for every plan of sub-chain ``i..j`` (0-based)."""
    rows, cols = pieces[j].n_out, pieces[i].n_in
    dg = _diag(pieces, i, j)
    sw_t, sw_a = (1, 1) if dg else (cols, rows)
    rng = lambda lo, hi: f"F{hi + 1}" if lo == hi else f"F{hi + 1}..F{lo + 1}"
    tsum = lambda lo, hi: sum(p.tangent_cost for p in pieces[lo:hi + 1])
    asum = lambda lo, hi: sum(p.adjoint_cost for p in pieces[lo:hi + 1])
    esum = lambda lo, hi: sum(p.tape for p in pieces[lo:hi + 1])
    if i == j and pieces[i].explicit:
        yield 0, f"F{i + 1}"
    yield sw_t * tsum(i, j), f"TAN({rng(i, j)})"
    if _fits(esum(i, j), memory):
        yield sw_a * asum(i, j), f"ADJ({rng(i, j)})"
    for k in range(i, j):
        for c, s in _all_plans(pieces, memory, i, k):
            yield c + sw_t * tsum(k + 1, j), f"TAN({rng(k + 1, j)}, {s})"
        if _fits(esum(i, k), memory):
            for c, s in _all_plans(pieces, memory, k + 1, j):
                yield c + sw_a * asum(i, k), f"ADJ({s}, {rng(i, k)})"
        mid = pieces[k].n_out
        od, idg = _diag(pieces, k + 1, j), _diag(pieces, i, k)
        prod = mid if od and idg else mid * cols if od else rows * mid if idg else rows * mid * cols
        outer = list(_all_plans(pieces, memory, k + 1, j))
        for c1, s1 in outer:
            for c2, s2 in _all_plans(pieces, memory, i, k):
                yield c1 + c2 + prod, f"MUL({s1}, {s2})"


def _check_steps(plan: ChainPlan, memory):
    """Recompute every step's cost, shape, structure and tape from the pieces."""
    pieces = plan.pieces
    peak = 0
    for s in plan.steps.postorder():
        i, j = s.first - 1, s.last - 1
        assert 0 <= i <= j < len(pieces)
        assert s.kind in ("ACC", "MUL", "TAN", "ADJ")
        assert s.shape == (pieces[j].n_out, pieces[i].n_in)
        assert s.diagonal == _diag(pieces, i, j)
        expected_tape = 0
        if s.kind == "MUL":
            outer, inner = s.children
            assert (outer.first, outer.last) == (s.split + 1, s.last)
            assert (inner.first, inner.last) == (s.first, s.split)
            assert s.sweeps == 0 and s.swept is None and s.method == "product"
            rows, mid, cols = s.shape[0], inner.shape[0], s.shape[1]
            own = (mid if outer.diagonal and inner.diagonal else mid * cols if outer.diagonal
                   else rows * mid if inner.diagonal else rows * mid * cols)
        elif s.kind == "ACC" and s.method == "explicit":
            assert i == j and pieces[i].explicit and s.children == ()
            assert s.sweeps == 0 and s.swept is None
            own = 0
        else:
            if s.kind == "ACC":
                assert i == j and s.children == () and s.swept == (s.first, s.last)
            elif not s.children:
                assert s.swept == (s.first, s.last) and s.split is None
            elif s.kind == "TAN":
                (seed,) = s.children
                assert (seed.first, seed.last) == (s.first, s.split)
                assert s.swept == (s.split + 1, s.last) and s.method == "tangent"
            else:
                (seed,) = s.children
                assert (seed.first, seed.last) == (s.split + 1, s.last)
                assert s.swept == (s.first, s.split) and s.method == "adjoint"
            lo, hi = s.swept[0] - 1, s.swept[1] - 1
            if s.method == "tangent":
                assert s.sweeps == (1 if s.diagonal else s.shape[1])
                own = s.sweeps * sum(p.tangent_cost for p in pieces[lo:hi + 1])
            else:
                assert s.method == "adjoint"
                assert s.sweeps == (1 if s.diagonal else s.shape[0])
                own = s.sweeps * sum(p.adjoint_cost for p in pieces[lo:hi + 1])
                expected_tape = sum(p.tape for p in pieces[lo:hi + 1])
                assert _fits(expected_tape, memory), "adjoint move over the memory limit"
        assert s.own_cost == own
        assert s.tape == expected_tape
        assert s.cost == own + sum(c.cost for c in s.children)
        peak = max(peak, s.tape)
    assert plan.peak_tape == peak
    assert plan.cost == plan.steps.cost
    assert (plan.steps.first, plan.steps.last) == (1, len(pieces))


def _execute(plan: ChainPlan, rng) -> None:
    """Follow the move tree on random matrices and compare with the full product."""
    mats = []
    for p in plan.pieces:
        if p.structure == "diagonal":
            mats.append(np.diag(rng.standard_normal(p.n_in)))
        else:
            mats.append(rng.standard_normal((p.n_out, p.n_in)))
    value = {}
    for s in plan.steps.postorder():
        if s.kind == "ACC":
            out = mats[s.first - 1].copy()
        elif s.kind == "MUL":
            out = value.pop(id(s.children[0])) @ value.pop(id(s.children[1]))
        else:
            lo, hi = s.swept
            if s.kind == "TAN":
                x = value.pop(id(s.children[0])) if s.children else np.eye(s.shape[1])
                assert s.sweeps == (1 if s.diagonal else x.shape[1])
                for l in range(lo, hi + 1):
                    x = mats[l - 1] @ x
            else:
                x = value.pop(id(s.children[0])) if s.children else np.eye(s.shape[0])
                assert s.sweeps == (1 if s.diagonal else x.shape[0])
                for l in range(hi, lo - 1, -1):
                    x = x @ mats[l - 1]
            out = x
        assert out.shape == s.shape
        value[id(s)] = out
    full = np.eye(plan.pieces[0].n_in)
    for mat in mats:
        full = mat @ full
    np.testing.assert_allclose(value[id(plan.steps)], full, rtol=1e-9, atol=1e-9)


@st.composite
def chains(draw, max_pieces=7, max_dim=50, float_costs=False):
    q = draw(st.integers(1, max_pieces))
    dim = draw(st.integers(1, max_dim))
    pieces = []
    for _ in range(q):
        diagonal = draw(st.booleans())
        n_out = dim if diagonal else draw(st.integers(1, max_dim))
        kwargs = {}
        if draw(st.booleans()):
            cost = (st.floats(0, 1e4, allow_nan=False) if float_costs
                    else st.integers(0, 5000))
            kwargs = {"tangent_cost": draw(cost), "adjoint_cost": draw(cost)}
        pieces.append(Piece(dim, n_out, structure="diagonal" if diagonal else "dense",
                            explicit=draw(st.booleans()), tape=draw(st.integers(0, 100)),
                            **kwargs))
        dim = n_out
    memory = draw(st.one_of(st.none(), st.integers(0, 400)))
    return pieces, memory


# ---------------------------------------------------------------- matrix chain order


def _bracketings(dims, i, j):
    """Yield ``(cost, string)`` for every parenthesisation of ``A(i+1)..A(j+1)``."""
    if i == j:
        yield 0, f"A{i + 1}"
        return
    for k in range(i, j):
        for c1, s1 in _bracketings(dims, i, k):
            for c2, s2 in _bracketings(dims, k + 1, j):
                yield c1 + c2 + dims[i] * dims[k + 1] * dims[j + 1], f"({s1}{s2})"


@pytest.mark.parametrize("dims, cost, bracketing", [
    ([30, 35, 15, 5, 10, 20, 25], 15125, "((A1(A2A3))((A4A5)A6))"),  # CLRS 15.2
    ([10, 100, 5, 50], 7500, "((A1A2)A3)"),
    ([40, 20, 30, 10, 30], 26000, "((A1(A2A3))A4)"),
    ([10, 20, 30, 40, 30], 30000, "(((A1A2)A3)A4)"),
    ([5, 10, 3], 150, "(A1A2)"),
    ([4, 7], 0, "A1"),
    ([2, 2, 2, 2], 16, "(A1(A2A3))"),  # tie: the smallest split wins
])
def test_chain_order_hand_checked(dims, cost, bracketing):
    assert chain_order(dims) == (cost, bracketing)
    assert chain_order(tuple(np.array(dims))) == (cost, bracketing)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(1, 60), min_size=2, max_size=8))
def test_chain_order_matches_enumeration(dims):
    cost, bracketing = chain_order(dims)
    assert isinstance(cost, int)
    options = dict((s, c) for c, s in _bracketings(dims, 0, len(dims) - 2))
    assert cost == min(options.values())
    assert options[bracketing] == cost
    assert chain_order(dims) == (cost, bracketing)


@pytest.mark.parametrize("dims, fragment", [
    ([], "at least 2"), ([5], "at least 2"), ([3, 0, 2], "dims[1] = 0"),
    ([3, -4], "dims[1] = -4"), ([3, 2.5], "dims[1] = 2.5"), ([True, 3], "dims[0] = True"),
    ("ab", "dims[0] = 'a'"), (7, "not a sequence"),
])
def test_chain_order_validation(dims, fragment):
    with pytest.raises(GradcError, match=None) as info:
        chain_order(dims)
    assert isinstance(info.value, ValueError)
    assert fragment in str(info.value)


# ------------------------------------------------------------------------- Piece


def test_piece_defaults_and_normalisation():
    p = Piece(3, 4)
    assert (p.tangent_cost, p.adjoint_cost, p.tape, p.structure, p.explicit) == (12, 12, 0, "dense", False)
    d = Piece(np.int64(6), 6, structure="diagonal")
    assert (d.n_in, d.tangent_cost, d.adjoint_cost, d.diagonal) == (6, 6, 6, True)
    assert type(d.n_in) is int
    assert Piece(2, 2, tangent_cost=1.5, adjoint_cost=0, tape=3).tangent_cost == 1.5
    with pytest.raises(AttributeError):
        p.n_in = 5  # frozen
    assert Piece(3, 4) == Piece(3, 4, 12, 12)


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(n_in=0, n_out=2), "Piece.n_in = 0"),
    (dict(n_in=2, n_out=2.0), "Piece.n_out = 2.0"),
    (dict(n_in=2, n_out=3, structure="diagonal"), "n_in == n_out"),
    (dict(n_in=2, n_out=2, structure="sparse"), "Piece.structure = 'sparse'"),
    (dict(n_in=2, n_out=2, tangent_cost=-1), "Piece.tangent_cost = -1"),
    (dict(n_in=2, n_out=2, adjoint_cost=float("nan")), "Piece.adjoint_cost"),
    (dict(n_in=2, n_out=2, tape=float("inf")), "Piece.tape"),
    (dict(n_in=2, n_out=2, tape="3"), "Piece.tape = '3'"),
    (dict(n_in=2, n_out=2, explicit=1), "Piece.explicit = 1"),
])
def test_piece_validation(kwargs, fragment):
    with pytest.raises(GradcError) as info:
        Piece(**kwargs)
    assert fragment in str(info.value)


# ---------------------------------------------------------------- jacobian_chain


@settings(max_examples=200, deadline=None)
@given(chains())
def test_dp_matches_brute_force(case):
    pieces, memory = case
    plan = jacobian_chain(pieces, memory=memory)
    assert plan.cost == _brute_force(pieces, memory)
    assert plan.cost <= plan.forward_cost
    if plan.reverse_cost is not None:
        assert plan.cost <= plan.reverse_cost
    assert (plan.reverse_cost is None) == (memory is not None and sum(p.tape for p in pieces) > memory)
    _check_steps(plan, memory)
    assert jacobian_chain(pieces, memory=memory) == plan  # deterministic


@settings(max_examples=100, deadline=None)
@given(chains(max_pieces=4, max_dim=12))
def test_dp_plan_is_among_enumerated_plans(case):
    pieces, memory = case
    plan = jacobian_chain(pieces, memory=memory)
    plans = {}
    for cost, text in _all_plans(pieces, memory, 0, len(pieces) - 1):
        plans[text] = min(cost, plans.get(text, math.inf))
    assert plan.cost == min(plans.values())
    assert plans[plan.bracketing] == plan.cost


@settings(max_examples=60, deadline=None)
@given(chains(max_pieces=6, max_dim=6), st.integers(0, 2**32 - 1))
def test_steps_execute_to_the_jacobian(case, seed):
    pieces, memory = case
    _execute(jacobian_chain(pieces, memory=memory), np.random.default_rng(seed))


@settings(max_examples=60, deadline=None)
@given(chains(max_pieces=6, float_costs=True))
def test_float_costs(case):
    pieces, memory = case
    plan = jacobian_chain(pieces, memory=memory)
    assert plan.cost == pytest.approx(_brute_force(pieces, memory), rel=1e-9, abs=1e-6)


@settings(max_examples=60, deadline=None)
@given(chains(max_pieces=6), st.integers(0, 400))
def test_memory_limit_only_raises_cost(case, memory):
    pieces, _ = case
    free = jacobian_chain(pieces)
    tight = jacobian_chain(pieces, memory=memory)
    assert tight.cost >= free.cost
    assert tight.peak_tape <= memory
    assert free.forward_cost == tight.forward_cost


def _mlp_chain(taped=False):
    def w(n_in, n_out):
        return Piece(n_in, n_out, explicit=True)

    def tanh(n):  # the adjoint of tanh keeps its n outputs when taped
        return Piece(n, n, structure="diagonal", tape=n if taped else 0)

    # tanh(W4 tanh(W3 tanh(W2 tanh(W1 x)))), widths 1000-20-1000-20-1000
    return [w(1000, 20), tanh(20), w(20, 1000), tanh(1000),
            w(1000, 20), tanh(20), w(20, 1000), tanh(1000)]


def test_issue_example_mlp_1000_20_1000_20_1000():
    pieces = _mlp_chain()
    assert [p.tangent_cost for p in pieces] == [20000, 20, 20000, 1000] * 2
    plan = jacobian_chain(pieces)
    # Pure modes: 1000 sweeps through pieces costing 4*20000 + 2*20 + 2*1000 = 82040.
    assert plan.forward_cost == plan.reverse_cost == 82_040_000
    # Optimal: 20 adjoint sweeps through F4..F2 seeded with the rows of W3, 20 tangent
    # sweeps of that 20x20 block through F6..F8, then 1000 rows pulled back through W1.
    assert plan.cost == 20_840_800 == _brute_force(pieces)
    assert plan.bracketing == "ADJ(TAN(F8..F6, ADJ(F5, F4..F2)), F1)"
    assert plan.cost < min(plan.forward_cost, plan.reverse_cost)
    # In flop (2 per multiply-add): ~41.7 Mflop optimal vs ~164 Mflop for either pure mode.
    assert 41e6 < 2 * plan.cost < 43e6
    assert 160e6 < 2 * plan.forward_cost < 170e6
    assert plan.speedup == pytest.approx(82_040_000 / 20_840_800)
    _check_steps(plan, None)


def test_issue_example_under_memory_limit():
    taped = _mlp_chain(taped=True)
    plan = jacobian_chain(taped, memory=500)
    assert plan.reverse_cost is None and plan.reverse_tape == 2040
    assert plan.peak_tape <= 500
    assert plan.cost == _brute_force(taped, 500)
    assert plan.cost < plan.forward_cost
    _check_steps(plan, 500)
    text = plan.explain()
    assert "infeasible" in text and "exceeds the memory limit" in text


def test_diagonal_run_takes_single_sweeps():
    plan = jacobian_chain([Piece(10, 10, structure="diagonal")] * 3)
    assert plan.cost == 30 and plan.bracketing == "TAN(F3..F1)"
    assert plan.steps.sweeps == 1 and plan.steps.diagonal
    assert plan.forward_cost == 300 and plan.reverse_cost == 300


def test_explicit_pieces_prefer_products_when_sweeps_are_dear():
    plan = jacobian_chain([Piece(2, 2, 10, 10, explicit=True)] * 3)
    assert plan.cost == 16 and plan.bracketing == "MUL(MUL(F3, F2), F1)"
    assert [s.kind for s in plan.steps.postorder()] == ["ACC", "ACC", "MUL", "ACC", "MUL"]


def test_single_piece_plans():
    assert jacobian_chain([Piece(5, 3)]).bracketing == "ADJ(F1)"
    assert jacobian_chain([Piece(3, 5)]).bracketing == "TAN(F1)"
    assert jacobian_chain([Piece(5, 3, tape=9)], memory=8).bracketing == "TAN(F1)"
    free = jacobian_chain([Piece(5, 3, explicit=True)])
    assert free.cost == 0 and free.bracketing == "F1" and math.isinf(free.speedup)
    assert "infinite" in free.explain()


def test_plan_reporting():
    plan = jacobian_chain(_mlp_chain())
    text = plan.explain()
    for needle in ("pure tangent", "pure adjoint", "optimal plan", "82,040,000",
                   "20,840,800", "3.94x", plan.bracketing, "R^1000 -> R^1000"):
        assert needle in text
    assert len(text.splitlines()) >= 6
    assert str(plan).startswith(plan.bracketing) and "20,840,800" in str(plan)
    assert repr(plan).startswith("ChainPlan(cost=20840800")
    tree = plan.steps.to_dict()
    assert json.loads(json.dumps(tree)) == tree
    assert tree["kind"] == "ADJ" and tree["children"][0]["kind"] == "TAN"
    assert isinstance(plan.steps, Step)


def test_validation_errors():
    with pytest.raises(GradcError, match="empty"):
        jacobian_chain([])
    with pytest.raises(GradcError, match=r"pieces\[1\] = 3 is not a Piece"):
        jacobian_chain([Piece(2, 2), 3])
    with pytest.raises(GradcError, match=r"pieces\[0\] \(F1\) has n_out = 3 but pieces\[1\] \(F2\) has n_in = 4"):
        jacobian_chain([Piece(2, 3), Piece(4, 5)])
    for bad in (-1, "10", float("nan"), True):
        with pytest.raises(GradcError, match="memory"):
            jacobian_chain([Piece(2, 2)], memory=bad)
    with pytest.raises(GradcError, match="not a sequence"):
        jacobian_chain(5)
    assert jacobian_chain([Piece(2, 2)], memory=math.inf).reverse_cost == 8


def test_long_chain_is_fast():
    rng = np.random.default_rng(0)
    pieces, dim = [], 30
    for l in range(250):
        if l % 3 == 1:
            pieces.append(Piece(dim, dim, structure="diagonal", tape=dim))
        else:
            out = int(rng.integers(1, 60))
            pieces.append(Piece(dim, out, explicit=bool(l % 2), tape=int(rng.integers(0, 50))))
            dim = out
    start = time.perf_counter()
    plan = jacobian_chain(pieces, memory=300)
    assert time.perf_counter() - start < 5
    assert plan.cost <= plan.forward_cost
    _check_steps(plan, 300)


def test_memory_limit_is_inclusive():
    pieces = [Piece(10, 10, tape=5), Piece(10, 1, tape=5)]
    at_limit = jacobian_chain(pieces, memory=10)
    assert at_limit.bracketing == "ADJ(F2..F1)" and at_limit.reverse_cost == 110
    assert at_limit.peak_tape == 10
    below = jacobian_chain(pieces, memory=9)
    assert below.reverse_cost is None and below.peak_tape <= 9
    assert below.cost == _brute_force(pieces, 9) == 110  # each adjoint move tapes one piece
    assert below.bracketing == "ADJ(ADJ(F2), F1)"


# ----------------------------------------------- the time objective and forced plans
from gradc.planner import TimeModel, price  # noqa: E402


def _random_model(pieces, rng):
    q = len(pieces)
    return TimeModel(tangent=tuple(float(rng.uniform(0, 1e-6)) * p.tangent_cost for p in pieces),
                     adjoint=tuple(float(rng.uniform(0, 1e-6)) * p.adjoint_cost for p in pieces),
                     fixed=tuple(float(rng.uniform(0, 1e-4)) for _ in range(q)),
                     move=float(rng.uniform(0, 2e-5)), word=float(rng.uniform(0, 1e-9)),
                     madd=float(rng.uniform(1e-11, 1e-9)), emadd=float(rng.uniform(1e-10, 1e-8)),
                     base=float(rng.uniform(0, 1e-4)))


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000))
def test_time_plan_is_never_predicted_slower_than_a_pure_mode(seed):
    """With fixed costs per move the DP minimises seconds: the pure modes are candidates,
    so the plan is at most as slow as either; its seconds are the sum of its moves' own
    prices (price() of its bracketing gives the same); and the plan of fewest flops,
    priced under the same model, is never faster."""
    rng = np.random.default_rng(seed)
    q = int(rng.integers(1, 7))
    dims = [int(d) for d in rng.integers(1, 60, size=q + 1)]
    pieces = []
    for i in range(q):
        kind = rng.integers(0, 3)
        if kind == 0 and dims[i] == dims[i + 1]:
            pieces.append(Piece(dims[i], dims[i], structure="diagonal", tape=dims[i]))
        elif kind == 1:
            pieces.append(Piece(dims[i], dims[i + 1], explicit=True))
        else:
            pieces.append(Piece(dims[i], dims[i + 1], tape=int(rng.integers(0, 50))))
    model = _random_model(pieces, rng)
    plan = jacobian_chain(pieces, model=model)
    assert plan.seconds <= plan.forward_seconds * (1 + 1e-12)
    assert plan.seconds <= plan.reverse_seconds * (1 + 1e-12)
    assert plan.flop_plan.seconds >= plan.steps.seconds * (1 - 1e-12)
    again = price(pieces, plan.bracketing, model=model)
    assert again.expression() == plan.bracketing
    assert math.isclose(again.seconds, plan.steps.seconds, rel_tol=1e-12)
    assert again.cost == plan.cost
    # the flops objective is the same DP with no fixed costs: same optimum as before
    assert jacobian_chain(pieces, model=TimeModel.flops(pieces)).cost == jacobian_chain(pieces).cost


def test_time_objective_trades_flops_for_fewer_moves():
    """Ten tiny pieces: fewest flops would accumulate each one and multiply; with 10 us per
    move one sweep through the whole chain is predicted faster."""
    pieces = [Piece(3, 3)] * 10
    flops = jacobian_chain(pieces)
    model = TimeModel(tangent=(9e-9,) * 10, adjoint=(9e-9,) * 10, fixed=(0.0,) * 10,
                      move=1e-5, word=0.0, madd=1e-9, emadd=1e-9)
    timed = jacobian_chain(pieces, model=model)
    assert timed.bracketing in ("TAN(F10..F1)", "ADJ(F10..F1)")
    assert timed.seconds == pytest.approx(1e-5 + 3 * 10 * 9e-9)
    assert timed.flop_plan.expression() == flops.bracketing


@pytest.mark.parametrize("text", ["ADJ(F3, F2..F1)", "TAN(F3..F2, F1)", "MUL(F3, MUL(TAN(F2), F1))",
                                  "ADJ(F3..F1)", "TAN(F3..F1)", "MUL(ADJ(F3, F2), F1)",
                                  "ADJ(MUL(F3, TAN(F2)), F1)"])
def test_bracketings_round_trip(text):
    chain = [Piece(100, 50, explicit=True), Piece(50, 50, structure="diagonal"),
             Piece(50, 1, explicit=True)]
    step = price(chain, text)
    assert step.expression() == text
    assert (step.first, step.last) == (1, 3)
    # a forced plan executes like the DP's: the same move tree on random matrices
    rng = np.random.default_rng(0)
    mats = [rng.normal(size=(p.n_out, p.n_in)) for p in chain]
    mats[1] = np.diag(rng.normal(size=50))
    np.testing.assert_allclose(_meaning(step, mats), mats[2] @ mats[1] @ mats[0], rtol=1e-12)


def _meaning(step, mats):
    """J of a step tree by the meaning of each move (explicit matrices stand in for sweeps)."""
    def span(lo, hi):
        out = np.eye(mats[lo - 1].shape[1])
        for l in range(lo, hi + 1):
            out = mats[l - 1] @ out
        return out

    kids = [_meaning(c, mats) for c in step.children]
    if step.kind == "MUL":
        return kids[0] @ kids[1]
    if step.kind == "ACC":
        return mats[step.first - 1]
    lo, hi = step.swept
    if step.kind == "TAN":
        return span(lo, hi) @ (kids[0] if kids else np.eye(mats[lo - 1].shape[1]))
    return (kids[0] if kids else np.eye(mats[hi - 1].shape[0])) @ span(lo, hi)


@pytest.mark.parametrize("text,match", [
    ("ADJ(F2, F1)", "not the whole chain"),
    ("TAN(F1..F3)", "runs upwards"),
    ("MUL(F3, F1)", "must adjoin"),
    ("F2", "covers F2..F2, not the whole chain"),
    ("MUL(F3, MUL(F2, F1))", "F2 is not an explicit piece"),
    ("TAN(F3..F2, F2)", "needs a seed ending at F1"),
    ("ADJ(F3..F1", "ends early"),
    ("ADJ(F3..F1))", "unexpected"),
    ("TAN(F4)", "not a piece of this chain"),
    ("SWEEP(F3)", "unexpected 'S'"),
    ("", "is empty"),
])
def test_bad_bracketings_name_the_problem(text, match):
    chain = [Piece(100, 50, explicit=True), Piece(50, 50, structure="diagonal"),
             Piece(50, 1, explicit=True)]
    with pytest.raises(GradcError, match=match):
        price(chain, text)


def test_forced_plan_respects_the_tape_limit():
    chain = [Piece(4, 4, structure="diagonal", tape=40), Piece(4, 1)]
    with pytest.raises(GradcError, match="over the limit"):
        jacobian_chain(chain, memory=10, plan="ADJ(F2..F1)")
    assert jacobian_chain(chain, memory=10, plan="TAN(F2..F1)").cost == 4 * (4 + 4)
