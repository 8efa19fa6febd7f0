"""The classic matrix chain ordering problem (CLRS section 15.2).

Contract: :func:`chain_order` takes the dimensions ``p0, ..., pn`` of a product
``A1 A2 ... An`` (``Ai`` is ``p[i-1] x p[i]``) and returns the minimal number of scalar
multiplications of any parenthesisation together with one optimal parenthesisation as a
string.  Dense matrices, cost ``a*b*c`` for an ``a x b`` times ``b x c`` product, exact
integer arithmetic, O(n^3) time, O(n^2) memory.  Invalid dims raise ``GradcError``.
"""

from __future__ import annotations

from ._common import _error, check_positive_int


def chain_order(dims) -> tuple[int, str]:
    """Optimal parenthesisation of a matrix chain product.

    Parameters
    ----------
    dims : sequence of int
        ``p0, p1, ..., pn`` with ``n >= 1``: matrix ``Ai`` (``i = 1..n``) has shape
        ``p[i-1] x p[i]``.  Every entry must be a positive integer.

    Returns
    -------
    cost : int
        Minimal number of scalar multiplications; multiplying ``a x b`` by ``b x c``
        costs ``a*b*c``.  A single matrix costs 0.
    bracketing : str
        An optimal parenthesisation, matrices named ``A1..An``, every product
        parenthesised: ``"A1"``, ``"(A1A2)"``, ``"((A1A2)A3)"``.

    Raises
    ------
    GradcError
        If ``dims`` has fewer than two entries or an entry is not a positive integer
        (the message names the entry, e.g. ``dims[2] = 0``).

    Notes
    -----
    Ties are broken towards the smallest split point: for ``Ai..Aj`` the optimal split
    ``(Ai..Ak)(Ak+1..Aj)`` with the smallest ``k`` is chosen (the CLRS convention).

    Examples
    --------
    >>> chain_order([30, 35, 15, 5, 10, 20, 25])
    (15125, '((A1(A2A3))((A4A5)A6))')
    >>> chain_order([10, 100, 5, 50])
    (7500, '((A1A2)A3)')
    >>> chain_order([4, 7])
    (0, 'A1')
    """
    try:
        dims = list(dims)
    except TypeError:
        raise _error(f"dims = {dims!r} is not a sequence of positive integers") from None
    if len(dims) < 2:
        raise _error(f"dims needs at least 2 entries (one matrix), got {len(dims)}: {dims!r}")
    p = [check_positive_int(d, f"dims[{idx}]") for idx, d in enumerate(dims)]
    n = len(p) - 1
    # cost[i][j], split[i][j] for 0-based matrices i..j (matrix i is p[i] x p[i+1]).
    cost = [[0] * n for _ in range(n)]
    split = [[0] * n for _ in range(n)]
    for length in range(2, n + 1):
        for i in range(n - length + 1):
            j = i + length - 1
            row, pij = cost[i], p[i] * p[j + 1]
            best_k, best = i, None
            for k in range(i, j):
                c = row[k] + cost[k + 1][j] + pij * p[k + 1]
                if best is None or c < best:  # strict: the smallest k wins ties
                    best, best_k = c, k
            cost[i][j], split[i][j] = best, best_k

    # Rebuild the bracketing without recursion (chains may be long).
    done: dict[tuple[int, int], str] = {}
    stack = [(0, n - 1, False)]
    while stack:
        i, j, ready = stack.pop()
        if i == j:
            done[i, j] = f"A{i + 1}"
            continue
        k = split[i][j]
        if ready:
            done[i, j] = "(" + done.pop((i, k)) + done.pop((k + 1, j)) + ")"
        else:
            stack += [(i, j, True), (i, k, False), (k + 1, j, False)]
    return cost[0][n - 1], done[0, n - 1]
