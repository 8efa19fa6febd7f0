"""Colouring of exact sparsity patterns, and recovery of the matrix from its products.

Contract
--------
:func:`star_colouring` colours the adjacency graph of a symmetric pattern (vertex ``i``
for parameter ``i``, an edge for each off-diagonal nonzero) so that adjacent vertices
differ and every path on four vertices uses at least three colours.  With one
Hessian-vector product per colour ``c`` along the indicator vector of ``c`` (the columns
of the *seed matrix*, :func:`seed_matrix`), every nonzero of the Hessian can be read
directly (:class:`StarRecovery`): with ``B = H @ seed``, ``H[i, j]`` is ``B[i, colour[j]]``
when ``i`` has no other neighbour of ``j``'s colour, else ``B[j, colour[i]]`` (a star
colouring makes one of the two unambiguous).  :func:`column_colouring` gives the colouring for a Jacobian (no
two columns sharing a row get one colour; one JVP per colour), with
:class:`ColumnRecovery`; the same colouring of the transposed pattern colours rows (one
VJP per colour), with :class:`RowRecovery`.

:func:`is_star_colouring` is the independent check the tests use: a colouring is a star
colouring exactly when it is proper and no edge ``(u, v)`` has two neighbours of ``v``'s
colour at ``u`` *and* two of ``u``'s colour at ``v`` (that is a two-coloured path
``x-u-v-y``).

The column colouring is compiled (numba): its work is the sum over rows of the squared
row length, a few milliseconds for a bundle adjustment problem's 100,000 rows.  The greedy
star colouring visits vertices by decreasing degree (largest first) and gives each
the smallest colour that keeps the partial colouring a star colouring; its cost is the
sum over vertices of the squared degree.  Nothing here recurses.
"""

from __future__ import annotations

import numpy as np
from numba import njit


def _graph(pattern):
    """Adjacency lists (off-diagonal) of a symmetric csr pattern."""
    m = pattern.tocsr()
    ip, ix = m.indptr, m.indices
    return [ix[ip[i]:ip[i + 1]][ix[ip[i]:ip[i + 1]] != i] for i in range(m.shape[0])]


def colouring_work(pattern) -> int:
    """The work :func:`star_colouring` does on ``pattern`` (the sum of squared degrees),
    to decide before colouring whether it is worth it."""
    m = pattern.tocsr()
    deg = np.diff(m.indptr).astype(np.int64)
    return int((deg * deg).sum())


def star_colouring(pattern):
    """Greedy star colouring of a symmetric pattern: an int array, one colour per vertex,
    numbered from 0 (see the module docstring).

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sparse
    >>> arrow = np.eye(5, dtype=bool); arrow[0, :] = arrow[:, 0] = True
    >>> star_colouring(sparse.csr_matrix(arrow)).tolist()  # a star: two colours
    [0, 1, 1, 1, 1]
    """
    adj = _graph(pattern)
    n = len(adj)
    colour = np.full(n, -1, dtype=np.int64)
    # counts[x][c]: how many coloured neighbours of x have colour c
    counts = [dict() for _ in range(n)]
    order = sorted(range(n), key=lambda v: -len(adj[v]))
    for v in order:
        forbidden = set()
        mine = counts[v]
        for w in adj[v]:
            cw = colour[w]
            if cw < 0:
                continue
            forbidden.add(cw)
            # v - w - x - y: v may not take x's colour if x has another neighbour y of w's
            # colour (y != w)
            # u - v - w - y: if v has two neighbours of w's colour, v may not take the
            # colour of any other neighbour y of w
            two_here = mine.get(cw, 0) >= 2
            for x in adj[w]:
                cx = colour[x]
                if x == v or cx < 0:
                    continue
                if counts[x].get(cw, 0) >= 2:  # w itself counts once
                    forbidden.add(cx)
                if two_here:
                    forbidden.add(cx)
        c = 0
        while c in forbidden:
            c += 1
        colour[v] = c
        for x in adj[v]:
            counts[x][c] = counts[x].get(c, 0) + 1
    return colour


def is_star_colouring(pattern, colour) -> bool:
    """True if ``colour`` is a star colouring of the symmetric ``pattern``."""
    adj = _graph(pattern)
    colour = np.asarray(colour)
    counts = []
    for v, nb in enumerate(adj):
        if np.any(colour[nb] == colour[v]):
            return False
        vals, cnt = np.unique(colour[nb], return_counts=True)
        counts.append(dict(zip(vals.tolist(), cnt.tolist())))
    for u, nb in enumerate(adj):
        for v in nb:
            if counts[u].get(int(colour[v]), 0) >= 2 and counts[v].get(int(colour[u]), 0) >= 2:
                return False
    return True


def seed_matrix(colour, ncolours=None):
    """The ``(P, colours)`` 0/1 matrix whose column ``c`` is the indicator of colour ``c``."""
    colour = np.asarray(colour)
    k = int(colour.max()) + 1 if ncolours is None else ncolours
    seed = np.zeros((colour.size, k))
    seed[np.arange(colour.size), colour] = 1.0
    return seed


class _Reads:
    """Reads ``products[..., cols_read[k], rows_read[k]]``, as one flat gather (the flat
    index computed once)."""

    rows_read = cols_read = None
    _flat = None

    def __init__(self, pattern, colour):
        m = pattern.tocsr()
        m.sort_indices()
        self.pattern = m
        self.colour = np.asarray(colour)
        self.ncolours = int(self.colour.max()) + 1 if self.colour.size else 0

    def set_reads(self, rows, cols):
        self.rows_read, self.cols_read = rows, cols
        self._flat = None

    def values(self, products):
        """The csr data of the matrix from ``products``: ``products[..., c, i]`` is entry
        ``i`` of the product with seed column ``c`` (``(colours, P)``, or ``(n, colours,
        P)`` for one matrix per example)."""
        if self._flat is None:
            self._flat = self.cols_read * products.shape[-1] + self.rows_read
        flat = products.reshape(products.shape[:-2] + (-1,))
        return np.take(flat, self._flat, axis=-1)


def column_colouring(pattern):
    """Greedy colouring of the columns of a (rows x P) pattern such that no two columns
    with a nonzero in the same row share a colour: one JVP per colour recovers the
    Jacobian (:class:`ColumnRecovery`)."""
    m = pattern.tocsc()
    mr = pattern.tocsr()
    order = np.argsort(-np.diff(m.indptr), kind="stable")  # most rows first
    return _greedy_columns(order, m.indptr.astype(np.int64), m.indices.astype(np.int64),
                           mr.indptr.astype(np.int64), mr.indices.astype(np.int64))


@njit(cache=True)
def _greedy_columns(order, cp, ci, rp, ri):  # pragma: no cover - compiled
    """Greedy distance-2 colouring of the columns (csc ``cp, ci``; csr ``rp, ri``) in
    ``order``: each column gets the smallest colour no column sharing a row has.  Work:
    the sum over rows of the squared row length."""
    ncols = order.size
    colour = np.full(ncols, -1, dtype=np.int64)
    mark = np.full(ncols + 1, -1, dtype=np.int64)  # mark[c] == j: colour c is forbidden for j
    for j in order:
        for a in range(cp[j], cp[j + 1]):
            r = ci[a]
            for b in range(rp[r], rp[r + 1]):
                c = colour[ri[b]]
                if c >= 0:
                    mark[c] = j
        c = 0
        while mark[c] == j:
            c += 1
        colour[j] = c
    return colour


class ColumnRecovery(_Reads):
    """Where each nonzero of a Jacobian is read from its products with the seed matrix of
    a column colouring: ``J[i, j] = B[i, colour[j]]``."""

    def __init__(self, pattern, colour):
        super().__init__(pattern, colour)
        m = self.pattern
        self.set_reads(np.repeat(np.arange(m.shape[0]), np.diff(m.indptr)),
                       self.colour[m.indices])


class StarRecovery(_Reads):
    """Where each nonzero of a symmetric matrix is read from its products with the seed
    matrix of a star colouring: ``values = B[..., rows_read, cols_read]`` in the order of
    ``pattern``'s csr entries."""

    def __init__(self, pattern, colour):
        super().__init__(pattern, colour)
        m = self.pattern
        n = m.shape[0]
        rows = np.repeat(np.arange(n), np.diff(m.indptr))
        cols = m.indices
        # how many neighbours of i have colour c, for each (i, c) met below
        off = rows != cols
        key = rows[off] * max(self.ncolours, 1) + self.colour[cols[off]]
        uniq, cnt = np.unique(key, return_counts=True)
        count = dict(zip(uniq.tolist(), cnt.tolist()))
        read_r, read_c = rows.copy(), self.colour[cols].copy()
        for k in np.nonzero(off)[0]:
            i, j = int(rows[k]), int(cols[k])
            if count.get(i * self.ncolours + int(self.colour[j]), 0) > 1:
                read_r[k], read_c[k] = j, self.colour[i]
        self.set_reads(read_r, read_c)


class RowRecovery(_Reads):
    """Where each nonzero of a Jacobian is read from its products with the seed matrix of
    a colouring of its rows (no two rows sharing a column get one colour; one VJP per
    colour): ``J[i, j] = B[colour[i], j]`` with ``B[c]`` the sum of the rows of colour c."""

    def __init__(self, pattern, colour):
        super().__init__(pattern, colour)
        m = self.pattern
        rows = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
        self.set_reads(m.indices.copy(), self.colour[rows])
