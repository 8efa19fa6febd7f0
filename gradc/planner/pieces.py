"""Elemental pieces of a Jacobian chain.

Contract: a :class:`Piece` is an immutable, validated description of one elemental
function ``F_i : R^n_in -> R^n_out`` of a chain ``F = F_q o ... o F_1`` -- its dimensions,
the cost of one Jacobian-vector product (tangent) and one vector-Jacobian product
(adjoint) in multiply-adds, the tape memory the adjoint needs, and whether its Jacobian
is diagonal and/or available explicitly.  Unset costs get the dense-matvec defaults.
Construction with invalid fields raises ``GradcError`` naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._common import _error, check_nonneg_real, check_positive_int

STRUCTURES = ("dense", "diagonal")


@dataclass(frozen=True)
class Piece:
    """One elemental function ``F_i : R^n_in -> R^n_out`` of a Jacobian chain.

    Parameters
    ----------
    n_in, n_out : int
        Input and output dimension (positive integers).
    tangent_cost : int or float, optional
        ``t_i``: multiply-adds of one Jacobian-vector product ``J_i v``.  Default: the
        cost of a dense matvec, ``n_in * n_out``, or ``n_in`` for a diagonal piece.
    adjoint_cost : int or float, optional
        ``a_i``: multiply-adds of one vector-Jacobian product ``w J_i``; same default.
    tape : int or float, default 0
        ``e_i``: memory (float64 words) the adjoint must keep from the forward pass.
    structure : {"dense", "diagonal"}, default "dense"
        ``"diagonal"``: ``J_i`` is diagonal (an elementwise map); requires
        ``n_in == n_out``.
    explicit : bool, default False
        ``True`` if ``J_i`` is available as a matrix at no accumulation cost (e.g. ``W``
        in ``x -> W @ x``).

    Raises
    ------
    GradcError
        On a non-positive or non-integer dimension, a negative / NaN / infinite cost or
        tape, an unknown ``structure``, a non-bool ``explicit``, or a diagonal piece with
        ``n_in != n_out``.

    Examples
    --------
    >>> Piece(3, 2)
    Piece(n_in=3, n_out=2, tangent_cost=6, adjoint_cost=6, tape=0, structure='dense', explicit=False)
    >>> Piece(5, 5, structure="diagonal", tape=5).tangent_cost
    5
    """

    n_in: int
    n_out: int
    tangent_cost: int | float | None = None
    adjoint_cost: int | float | None = None
    tape: int | float = 0
    structure: str = "dense"
    explicit: bool = False

    def __post_init__(self) -> None:
        put = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
        n_in = check_positive_int(self.n_in, "Piece.n_in")
        n_out = check_positive_int(self.n_out, "Piece.n_out")
        put("n_in", n_in)
        put("n_out", n_out)
        if not isinstance(self.structure, str) or self.structure not in STRUCTURES:
            raise _error(f"Piece.structure = {self.structure!r} is not one of {STRUCTURES}")
        if self.structure == "diagonal" and n_in != n_out:
            raise _error(f"a diagonal Piece needs n_in == n_out, got n_in = {n_in}, n_out = {n_out}")
        if not isinstance(self.explicit, bool):
            raise _error(f"Piece.explicit = {self.explicit!r} is not a bool")
        default = n_in if self.structure == "diagonal" else n_in * n_out
        for name in ("tangent_cost", "adjoint_cost"):
            value = getattr(self, name)
            put(name, default if value is None else check_nonneg_real(value, f"Piece.{name}"))
        put("tape", check_nonneg_real(self.tape, "Piece.tape"))

    @property
    def diagonal(self) -> bool:
        """``True`` if the Jacobian is diagonal.

        >>> Piece(4, 4, structure="diagonal").diagonal
        True
        """
        return self.structure == "diagonal"
