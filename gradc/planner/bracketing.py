"""Reading a bracketing: the text of a plan back into the moves it names.

Contract: :func:`parse` takes a bracketing in the notation of :mod:`gradc.planner.plan`
(``"ADJ(TAN(F3..F2, F1), F4)"``-style text, what ``Step.expression()`` prints) and the
number of pieces ``q``, and returns ``{(i, j): (kind, k, method)}`` (0-based inclusive
sub-chains), the choice table :func:`gradc.planner.dp.build` turns into a :class:`Step`
tree.  The text must cover pieces ``1..q`` exactly, each term the sub-chain its
arguments imply; anything else raises ``GradcError`` naming the offending term.  Pure
text processing: costs and feasibility are the caller's.
"""

from __future__ import annotations

import re

from ._common import _error

_TOKEN = re.compile(r"\s*(?:(TAN|ADJ|MUL)\b|F(\d+)|(\.\.)|([(),])|(\S))")


def _tokens(text):
    out = []
    for m in _TOKEN.finditer(text):
        word, num, dots, punct, bad = m.groups()
        if bad is not None:
            raise _error(f"plan {text!r}: unexpected {bad!r} at position {m.start(5)}")
        out.append(word or (int(num) if num is not None else (dots or punct)))
    return out


class _Reader:
    def __init__(self, text, q):
        self.text, self.q = text, q
        self.toks = _tokens(text)
        self.pos = 0
        self.choice = {}

    def fail(self, msg):
        raise _error(f"plan {self.text!r}: {msg}")

    def peek(self, ahead=0):
        k = self.pos + ahead
        return self.toks[k] if k < len(self.toks) else None

    def take(self, want=None):
        tok = self.peek()
        if tok is None:
            self.fail("ends early" + ("" if want is None else f", expected {want!r}"))
        if want is not None and tok != want:
            self.fail(f"expected {want!r}, found {tok!r}")
        self.pos += 1
        return tok

    def piece(self):
        tok = self.take()
        if not isinstance(tok, int):
            self.fail(f"expected a piece F1..F{self.q}, found {tok!r}")
        if not 1 <= tok <= self.q:
            self.fail(f"F{tok} is not a piece of this chain (F1..F{self.q})")
        return tok

    def is_range(self):
        """Whether a piece range (``F5`` or ``F5..F3``) comes next, not a term."""
        return isinstance(self.peek(), int) and self.peek(1) in ("..", ",", ")")

    def range(self):
        hi = self.piece()
        lo = hi
        if self.peek() == "..":
            self.take()
            lo = self.piece()
        if lo > hi:
            self.fail(f"the range F{hi}..F{lo} runs upwards: write the later piece first")
        return lo - 1, hi - 1

    def term(self):
        """One term; returns its 0-based sub-chain (i, j)."""
        tok = self.peek()
        if isinstance(tok, int):  # an explicit piece
            p = self.piece() - 1
            return self.put(p, p, ("ACC", None, "explicit"))
        kind = self.take()
        if kind not in ("TAN", "ADJ", "MUL"):
            self.fail(f"expected TAN, ADJ, MUL or a piece, found {kind!r}")
        self.take("(")
        if kind == "MUL":
            outer = self.term()
            self.take(",")
            inner = self.term()
            self.take(")")
            if outer[0] != inner[1] + 1:
                self.fail(f"MUL of F{outer[1] + 1}..F{outer[0] + 1} and "
                          f"F{inner[1] + 1}..F{inner[0] + 1}: the pieces must adjoin")
            return self.put(inner[0], outer[1], ("MUL", inner[1], "product"))
        method = "tangent" if kind == "TAN" else "adjoint"
        if kind == "TAN":
            lo, hi = self.range()
            if self.peek() == ",":
                self.take()
                seed = self.term()
                self.take(")")
                if seed[1] + 1 != lo:
                    self.fail(f"TAN through F{hi + 1}..F{lo + 1} needs a seed ending at "
                              f"F{lo}, got F{seed[1] + 1}..F{seed[0] + 1}")
                return self.put(seed[0], hi, ("TAN", seed[1], method))
            self.take(")")
        else:
            if self.is_range() and self.peek(1) != ",":
                lo, hi = self.range()
                self.take(")")
            else:
                seed = self.term()
                self.take(",")
                lo, hi = self.range()
                self.take(")")
                if seed[0] != hi + 1:
                    self.fail(f"ADJ through F{hi + 1}..F{lo + 1} needs a seed starting at "
                              f"F{hi + 2}, got F{seed[1] + 1}..F{seed[0] + 1}")
                return self.put(lo, seed[1], ("ADJ", hi, method))
        return self.put(lo, hi, ("ACC" if lo == hi else kind, None, method))

    def put(self, i, j, choice):
        self.choice[i, j] = choice
        return i, j


def parse(text, q):
    """The choice table of the bracketing ``text`` for a chain of ``q`` pieces.

    >>> parse("ADJ(F3, F2..F1)", 3)
    {(2, 2): ('ACC', None, 'explicit'), (0, 2): ('ADJ', 1, 'adjoint')}
    """
    if not isinstance(text, str):
        raise _error(f"plan = {text!r} is not a bracketing string, a Step or a ChainPlan")
    r = _Reader(text, q)
    if not r.toks:
        r.fail("is empty")
    i, j = r.term()
    if r.peek() is not None:
        r.fail(f"unexpected {r.peek()!r} after a complete plan")
    if (i, j) != (0, q - 1):
        r.fail(f"covers F{i + 1}..F{j + 1}, not the whole chain F1..F{q}")
    return r.choice


__all__ = ["parse"]
