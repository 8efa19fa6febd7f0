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
    """Cost of ``(mj x mk) @ (mk x ni)`` with optionally diagonal factors."""
    if outer_diag and inner_diag:
        return mk
    if outer_diag:
        return mk * ni
    if inner_diag:
        return mj * mk
    return mj * mk * ni


def solve(pieces, memory=None) -> Step:
    """Return the root :class:`Step` of an optimal plan (inputs already validated).

    >>> from gradc.planner.pieces import Piece
    >>> solve([Piece(3, 3, explicit=True), Piece(3, 1)], memory=None).expression()
    'TAN(F2, F1)'
    """
    q = len(pieces)
    n = [p.n_in for p in pieces]
    m = [p.n_out for p in pieces]
    diag = [p.diagonal for p in pieces]
    T = _prefix(p.tangent_cost for p in pieces)
    A = _prefix(p.adjoint_cost for p in pieces)
    E = _prefix(p.tape for p in pieces)
    mem = math.inf if memory is None else memory

    # last_dense[j]: largest l <= j with a dense piece (-1 if none); next_dense[i]:
    # smallest l >= i with a dense piece (q if none).  i..j is diagonal iff last_dense[j] < i.
    last_dense, prev = [], -1
    for l in range(q):
        prev = prev if diag[l] else l
        last_dense.append(prev)
    next_dense, nxt = [q] * q, q
    for l in reversed(range(q)):
        nxt = nxt if diag[l] else l
        next_dense[l] = nxt
    # adj_max[i]: largest k with tape(i..k) <= mem (i - 1 if even piece i alone is over);
    # tapes are non-negative so the feasible k form a prefix.
    adj_max, hi = [], 0
    for i in range(q):
        hi = max(hi, i)
        while hi < q and E[hi + 1] - E[i] <= mem:
            hi += 1
        adj_max.append(hi - 1)

    C = [[None] * q for _ in range(q)]   # C[i][j]
    CT = [[None] * q for _ in range(q)]  # CT[j][i] == C[i][j]
    choice = [[None] * q for _ in range(q)]  # (kind, k or None, method)
    for i, p in enumerate(pieces):
        if p.explicit:
            best, ch = 0, ("ACC", None, "explicit")
        else:
            best, ch = (1 if diag[i] else n[i]) * p.tangent_cost, ("ACC", None, "tangent")
            if adj_max[i] >= i:
                v = (1 if diag[i] else m[i]) * p.adjoint_cost
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
            Tj, Ai = T[j + 1], A[i]
            row, col = C[i], CT[j]
            ks = range(i, j)

            best, ch = sw_t * (Tj - T[i]), ("TAN", None, "tangent")
            if adj_max[i] >= j:
                v = sw_a * (A[j + 1] - Ai)
                if v < best:
                    best, ch = v, ("ADJ", None, "adjoint")

            tan = [row[k] + sw_t * (Tj - T[k + 1]) for k in ks]
            v = min(tan)
            if v < best:
                best, ch = v, ("TAN", i + tan.index(v), "tangent")

            kmax = min(j - 1, adj_max[i])
            if kmax >= i:
                adj = [col[k + 1] + sw_a * (A[k + 1] - Ai) for k in range(i, kmax + 1)]
                v = min(adj)
                if v < best:  # largest k on ties: the smallest seed, the longest sweep
                    best, ch = v, ("ADJ", kmax - adj[::-1].index(v), "adjoint")

            mjni = mj * ni
            mul = [row[k] + col[k + 1] + mjni * m[k] for k in ks]
            # Re-price the splits with a diagonal factor: inner i..k diagonal for
            # k < next_dense[i]; outer k+1..j diagonal for k >= last_dense[j].
            lo_end = min(next_dense[i], j)
            hi_start = max(last_dense[j], i)
            for k in (range(i, j) if lo_end >= hi_start else
                      list(range(i, lo_end)) + list(range(hi_start, j))):
                mul[k - i] = row[k] + col[k + 1] + _prod_cost(
                    mj, m[k], ni, k >= last_dense[j], k < next_dense[i])
            v = min(mul)
            if v < best:
                best, ch = v, ("MUL", i + mul.index(v), "product")

            C[i][j] = CT[j][i] = best
            choice[i][j] = ch

    return _build(pieces, C, choice, T, A, E, last_dense)


def _build(pieces, C, choice, T, A, E, last_dense) -> Step:
    """Turn the choice table into a :class:`Step` tree, without recursion."""
    q = len(pieces)
    built: dict[tuple[int, int], Step] = {}
    stack = [(0, q - 1, False)]
    while stack:
        i, j, ready = stack.pop()
        kind, k, method = choice[i][j]
        kids = [] if k is None else ([(i, k)] if kind == "TAN" else
                                     [(k + 1, j)] if kind == "ADJ" else [(k + 1, j), (i, k)])
        if kids and not ready:
            stack.append((i, j, True))
            stack.extend((a, b, False) for a, b in kids)
            continue
        children = tuple(built.pop(kid) for kid in kids)
        dg = last_dense[j] < i
        shape = (pieces[j].n_out, pieces[i].n_in)
        sweeps, swept, tape = 0, None, 0
        if kind == "MUL":
            own = _prod_cost(shape[0], pieces[k].n_out, shape[1],
                             last_dense[j] <= k, last_dense[k] < i)
        elif method == "explicit":
            own = 0
        else:
            lo, hi = (i, j) if k is None else ((k + 1, j) if kind == "TAN" else (i, k))
            swept = (lo + 1, hi + 1)
            if method == "tangent":
                sweeps = 1 if dg else shape[1]
                own = sweeps * (T[hi + 1] - T[lo])
            else:
                sweeps = 1 if dg else shape[0]
                own = sweeps * (A[hi + 1] - A[lo])
                tape = E[hi + 1] - E[lo]
        built[i, j] = Step(kind=kind, first=i + 1, last=j + 1, cost=C[i][j], own_cost=own,
                           shape=shape, diagonal=dg, method=method, sweeps=sweeps,
                           swept=swept, split=None if k is None else k + 1, tape=tape,
                           children=children)
    return built[0, q - 1]
