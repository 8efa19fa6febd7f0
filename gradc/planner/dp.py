"""Dynamic programme for matrix-free Jacobian chaining (after Naumann, arXiv 2406.11862).

Contract: :func:`solve` takes an already validated, dimension-consistent chain of
:class:`~gradc.planner.pieces.Piece` objects and a tape limit, and returns the root
:class:`~gradc.planner.plan.Step` of a minimal-cost accumulation plan for the chain's
Jacobian.  O(q^3) time and O(q^2) memory for q pieces; exact arithmetic on ints.

Cost model (pieces ``i..j``, ``F_i`` applied first; ``J_{j..i}`` is ``m_j x n_i``;
``t``/``a``/``e`` are tangent cost, adjoint cost and tape; the sub-chain is *diagonal* if
all its pieces are, and then its Jacobian is kept as a vector and every tangent or
adjoint move over it needs one sweep instead of ``n_i`` / ``m_j``):

* ACC (``i == j``): 0 if explicit, else ``min(sw_t * t_i, sw_a * a_i)``.
* TAN: ``C(i, k) + sw_t * sum(t_{k+1..j})``, or ``sw_t * sum(t_{i..j})`` from the identity.
* ADJ: ``C(k+1, j) + sw_a * sum(a_{i..k})``, or ``sw_a * sum(a_{i..j})`` from the
  identity; only if the swept tape ``sum(e)`` is within the memory limit.
* MUL: ``C(k+1, j) + C(i, k) + m_j*m_k*n_i`` (dense x dense); a diagonal factor drops
  its dimension from the product: ``D*n_i``, ``m_j*D`` or ``D`` for diag x diag.

with ``sw_t = n_i`` and ``sw_a = m_j`` (1 for a diagonal sub-chain).  Ties go to the
first candidate in this order: ACC explicit, ACC tangent, ACC adjoint; TAN from the
identity, ADJ from the identity, TAN splits, ADJ splits, MUL splits.  Among TAN and ADJ
splits the one with the smallest seed sub-chain (longest sweep) wins, i.e. the
smallest ``k`` for TAN and the largest ``k`` for ADJ, so equally cheap nested sweeps are
flattened; among MUL splits the smallest ``k`` wins.  Tape feasibility is tested on prefix sums, ``E[k+1] - E[i] <= memory``.
"""

from __future__ import annotations

import math

from .plan import Step


def _prefix(values):
    out = [0]
    for v in values:
        out.append(out[-1] + v)
    return out


def _prod_cost(mj, mk, ni, outer_diag, inner_diag):
    """Multiply-adds of ``(mj x mk) @ (mk x ni)`` with optionally diagonal factors."""
    if outer_diag and inner_diag:
        return mk
    if outer_diag:
        return mk * ni
    if inner_diag:
        return mj * mk
    return mj * mk * ni


class _Tables:
    """Dimensions, structure and prefix sums of one chain under one objective."""

    def __init__(self, pieces, model, memory):
        q = self.q = len(pieces)
        self.pieces = pieces
        self.model = model
        self.n = [p.n_in for p in pieces]
        self.m = [p.n_out for p in pieces]
        self.T = _prefix(p.tangent_cost for p in pieces)
        self.A = _prefix(p.adjoint_cost for p in pieces)
        self.E = _prefix(p.tape for p in pieces)
        self.TW = _prefix(model.tangent)
        self.AW = _prefix(model.adjoint)
        self.FX = _prefix(model.fixed)
        diag = [p.diagonal for p in pieces]
        # last_dense[j]: largest l <= j with a dense piece (-1 if none); next_dense[i]:
        # smallest l >= i with a dense piece (q if none); i..j is diagonal iff
        # last_dense[j] < i.
        self.last_dense, prev = [], -1
        for l in range(q):
            prev = prev if diag[l] else l
            self.last_dense.append(prev)
        self.next_dense, nxt = [q] * q, q
        for l in reversed(range(q)):
            nxt = nxt if diag[l] else l
            self.next_dense[l] = nxt
        # adj_max[i]: largest k with tape(i..k) <= memory (i - 1 if piece i alone is over)
        mem = math.inf if memory is None else memory
        self.adj_max, hi = [], 0
        for i in range(q):
            hi = max(hi, i)
            while hi < q and self.E[hi + 1] - self.E[i] <= mem:
                hi += 1
            self.adj_max.append(hi - 1)

    def diagonal(self, i, j):
        return self.last_dense[j] < i

    def sweep(self, lo, hi, sweeps, kind, width_in, width_out):
        """Objective of ``sweeps`` tangent / adjoint vectors through pieces lo..hi (0-based)."""
        md = self.model
        W = self.TW if kind == "tangent" else self.AW
        seed = width_in if kind == "tangent" else width_out  # the seeds copied in
        return (md.move + sweeps * (W[hi + 1] - W[lo]) + (self.FX[hi + 1] - self.FX[lo])
                + sweeps * seed * md.word)

    def own(self, i, j, kind, k, method):
        """(multiply-adds, objective) of the move chosen for i..j (children excluded)."""
        n, m = self.n, self.m
        dg = self.diagonal(i, j)
        if kind == "MUL":
            od, id_ = self.last_dense[j] <= k, self.last_dense[k] < i
            return (_prod_cost(m[j], m[k], n[i], od, id_),
                    self.model.product(m[j], m[k], n[i], od, id_))
        if method == "explicit":
            return 0, 0
        lo, hi = (i, j) if k is None else ((k + 1, j) if kind == "TAN" else (i, k))
        if method == "tangent":
            sweeps = 1 if dg else n[i]
            flops = sweeps * (self.T[hi + 1] - self.T[lo])
        else:
            sweeps = 1 if dg else m[j]
            flops = sweeps * (self.A[hi + 1] - self.A[lo])
        return flops, self.sweep(lo, hi, sweeps, method, n[lo], m[hi])


def solve(pieces, memory=None, model=None) -> Step:
    """Return the root :class:`Step` of an optimal plan (inputs already validated).

    ``model`` (a :class:`~gradc.planner.timing.TimeModel`) is the objective: predicted
    seconds; ``None`` counts multiply-adds.

    >>> from gradc.planner.pieces import Piece
    >>> solve([Piece(3, 3, explicit=True), Piece(3, 1)], memory=None).expression()
    'TAN(F2, F1)'
    """
    from .timing import TimeModel

    timed = model is not None
    model = TimeModel.flops(pieces) if model is None else model
    tb = _Tables(pieces, model, memory)
    q, n, m = tb.q, tb.n, tb.m
    TW, AW, FX, word, move = tb.TW, tb.AW, tb.FX, model.word, model.move
    last_dense, next_dense, adj_max = tb.last_dense, tb.next_dense, tb.adj_max

    C = [[None] * q for _ in range(q)]   # C[i][j]
    CT = [[None] * q for _ in range(q)]  # CT[j][i] == C[i][j]
    choice = [[None] * q for _ in range(q)]  # (kind, k or None, method)
    for i, p in enumerate(pieces):
        if p.explicit:
            best, ch = 0, ("ACC", None, "explicit")
        else:
            best, ch = tb.own(i, i, "ACC", None, "tangent")[1], ("ACC", None, "tangent")
            if adj_max[i] >= i:
                v = tb.own(i, i, "ACC", None, "adjoint")[1]
                if v < best:
                    best, ch = v, ("ACC", None, "adjoint")
        C[i][i] = CT[i][i] = best
        choice[i][i] = ch

    for length in range(2, q + 1):
        for i in range(q - length + 1):
            j = i + length - 1
            dg = last_dense[j] < i
            ni, mj = n[i], m[j]
            sw_t, sw_a = (1, 1) if dg else (ni, mj)
            row, col = C[i], CT[j]
            ks = range(i, j)

            best, ch = tb.sweep(i, j, sw_t, "tangent", ni, mj), ("TAN", None, "tangent")
            if adj_max[i] >= j:
                v = tb.sweep(i, j, sw_a, "adjoint", ni, mj)
                if v < best:
                    best, ch = v, ("ADJ", None, "adjoint")

            # TAN split k: push the columns of C(i, k) through k+1..j
            t_end, f_end, wt = TW[j + 1], FX[j + 1], sw_t * word
            tan = [row[k] + move + sw_t * (t_end - TW[k + 1]) + (f_end - FX[k + 1])
                   + wt * m[k] for k in ks]
            v = min(tan)
            if v < best:
                best, ch = v, ("TAN", i + tan.index(v), "tangent")

            kmax = min(j - 1, adj_max[i])
            if kmax >= i:  # ADJ split k: pull the rows of C(k+1, j) back through i..k
                a_start, f_start, wa = AW[i], FX[i], sw_a * word
                adj = [col[k + 1] + move + sw_a * (AW[k + 1] - a_start) + (FX[k + 1] - f_start)
                       + wa * m[k] for k in range(i, kmax + 1)]
                v = min(adj)
                if v < best:  # largest k on ties: the smallest seed, the longest sweep
                    best, ch = v, ("ADJ", kmax - adj[::-1].index(v), "adjoint")

            lo_end = min(next_dense[i], j)
            hi_start = max(last_dense[j], i)
            if model.is_flops:
                mjni = mj * ni
                mul = [row[k] + col[k + 1] + mjni * m[k] for k in ks]
                # Re-price the splits with a diagonal factor: inner i..k diagonal for
                # k < next_dense[i]; outer k+1..j diagonal for k >= last_dense[j].
                special = (range(i, j) if lo_end >= hi_start else
                           list(range(i, lo_end)) + list(range(hi_start, j)))
            else:
                mul = [None] * (j - i)
                special = ks
            for k in special:
                mul[k - i] = row[k] + col[k + 1] + model.product(
                    mj, m[k], ni, k >= last_dense[j], k < next_dense[i])
            v = min(mul)
            if v < best:
                best, ch = v, ("MUL", i + mul.index(v), "product")

            C[i][j] = CT[j][i] = best
            choice[i][j] = ch

    return build(tb, lambda i, j: choice[i][j], timed)


def build(tb, choice, timed=True) -> Step:
    """Turn a choice per sub-chain (``choice(i, j) -> (kind, k, method)``, 0-based) into
    a :class:`Step` tree, costs summed bottom-up, without recursion; ``timed``: with the
    model's seconds too."""
    q = tb.q
    pieces = tb.pieces
    seconds = timed
    built: dict[tuple[int, int], Step] = {}
    stack = [(0, q - 1, False)]
    while stack:
        i, j, ready = stack.pop()
        kind, k, method = choice(i, j)
        kids = [] if k is None else ([(i, k)] if kind == "TAN" else
                                     [(k + 1, j)] if kind == "ADJ" else [(k + 1, j), (i, k)])
        if kids and not ready:
            stack.append((i, j, True))
            stack.extend((a, b, False) for a, b in kids)
            continue
        children = tuple(built.pop(kid) for kid in kids)
        dg = tb.diagonal(i, j)
        shape = (pieces[j].n_out, pieces[i].n_in)
        own, own_obj = tb.own(i, j, kind, k, method)
        sweeps, swept, tape = 0, None, 0
        if kind != "MUL" and method != "explicit":
            lo, hi = (i, j) if k is None else ((k + 1, j) if kind == "TAN" else (i, k))
            swept = (lo + 1, hi + 1)
            sweeps = 1 if dg else (shape[1] if method == "tangent" else shape[0])
            if method == "adjoint":
                tape = tb.E[hi + 1] - tb.E[lo]
        built[i, j] = Step(kind=kind, first=i + 1, last=j + 1,
                           cost=own + sum(c.cost for c in children), own_cost=own,
                           shape=shape, diagonal=dg, method=method, sweeps=sweeps,
                           swept=swept, split=None if k is None else k + 1, tape=tape,
                           children=children,
                           seconds=(own_obj + sum(c.seconds for c in children)) if seconds
                           else None)
    return built[0, q - 1]
