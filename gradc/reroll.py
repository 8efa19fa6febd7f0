"""Re-rolling: families of like terms of a sum become one loop over packed parameters.

Contract
--------
A scalar model written out term by term, ``w0 + sum_i w_i tanh(v_i x + b_i)`` or the
chain ``sum_i 100 (x_{i+1} - x_i^2)^2 + (1 - x_i)^2``, repeats one *template* with
different parameters.  :class:`Reroller` finds, among the terms of each sympy ``Add``, the
families of at least :data:`MIN_FAMILY` terms that are the same expression up to which
parameters they use (and which numbers stand as coefficients and constant terms), and
lowers each family once, as vector code: a parameter slot that varies along the family
becomes a ``gather`` of the parameter vector (a strided slice when the positions are an
arithmetic sequence, else a table), a varying coefficient a ``constant`` vector, a slot
that is the same in every term a scalar; the family's sum is a ``sum`` over the vector.
Compile time and code size then depend on the number of distinct templates, not on the
number of terms, and the kernels loop over the family (:mod:`gradc.codegen.chunked`).

Two terms are in one family when their *signatures* are equal: the expression tree with
every parameter replaced by a placeholder, every number directly under an ``Add`` or a
``Mul`` replaced by another, children of ``Add`` and ``Mul`` in a canonical order, and the
pattern of which placeholders are the same parameter.  Everything else (data and const
symbols, exponents, function classes) is part of the signature, so the template evaluated
at a term's parameters is that term: re-rolling never changes a value, only the order in
which the family's terms are added.  Signatures are computed bottom-up over the DAG with
memoisation, in time linear in its size, without recursion.
"""

from __future__ import annotations

import sympy as sp

from .frontend import postorder
from .ir import Lit
from .prims import mul
from .prims.array import constant, element, gather, gather_spec, sum_elements

#: A family needs at least this many terms to be re-rolled.
MIN_FAMILY = 4

#: Terms with more parameter and number occurrences than this are never re-rolled (their
#: signatures would be long; such terms are rarely repeated).
MAX_SLOTS = 2048


class _Sig:
    """The signature of one node: ``key`` (an interned int), the parameters and numbers
    of its slots in canonical order, and its children in that order."""

    __slots__ = ("key", "params", "numbers", "order", "has_param")

    def __init__(self, key, params, numbers, order, has_param):
        self.key, self.params, self.numbers = key, params, numbers
        self.order, self.has_param = order, has_param


class Reroller:
    """Finds and lowers families of like terms for a :class:`gradc.frontend.Lowerer`."""

    def __init__(self, lowerer, vector, index):  
        self.lowerer = lowerer
        self.vector = vector  # the params vector input
        self.index = index  # param symbol -> position in params
        self._intern: dict = {}
        self._sig: dict = {}
        self._split: dict = {}
        self.slots: set = set()  # slot symbols of templates being lowered
        self._count = 0

    # -- signatures ---------------------------------------------------------------------
    def _key(self, item):
        k = self._intern.get(item)
        if k is None:
            k = self._intern[item] = len(self._intern)
        return k

    def signature(self, term):
        if term not in self._sig:
            for node in postorder(term):
                if node not in self._sig:
                    self._sig[node] = self._node_sig(node)
        return self._sig[term]

    def _node_sig(self, node):
        if node in self.index:
            return _Sig(self._key("P"), (node,), (), (), True)
        if (not node.args or isinstance(node, sp.Lambda)
                or not any(self._sig[a].has_param for a in node.args)):
            return _Sig(self._key(("leaf", node)), (), (), (), False)  # no parameter
        if any(self._sig[a].params is None for a in node.args):
            return _Sig(self._key(("leaf", node)), None, None, (), True)  # too big to roll
        kids = []
        for a in node.args:
            if isinstance(node, (sp.Add, sp.Mul)) and a.is_Number:
                kids.append((self._key("N"), (), (a,), a, False))
            else:
                s = self._sig[a]
                kids.append((s.key, s.params, s.numbers, a, s.has_param))
        if isinstance(node, (sp.Add, sp.Mul)):  # commutative: a canonical order
            # (ties have the same structure, so either order evaluates the same)
            kids.sort(key=lambda k: (k[0], tuple(self.index[p] for p in k[1])))
        key = self._key((type(node), tuple(k[0] for k in kids)))
        if sum(len(k[1]) + len(k[2]) for k in kids) > MAX_SLOTS:
            return _Sig(key, None, None, (), True)
        params = tuple(p for k in kids for p in k[1])
        numbers = tuple(v for k in kids for v in k[2])
        return _Sig(key, params, numbers, tuple(k[3] for k in kids), True)

    # -- families -----------------------------------------------------------------------
    def split(self, node):
        """``(families, rest)`` for an ``Add`` node: the families (lists of terms, in
        order of their parameters) and the other terms."""
        hit = self._split.get(node)
        if hit is not None:
            return hit
        families, rest = [], list(node.args)
        if len(node.args) >= MIN_FAMILY and not (self.slots and self._has_slot(node)):
            groups: dict = {}
            self.signature(node)  # one walk for all the terms
            for term in node.args:
                s = self.signature(term)
                if not s.has_param or s.params is None:
                    continue
                first = {}
                pattern = tuple(first.setdefault(p, len(first)) for p in s.params)
                groups.setdefault((s.key, pattern, len(s.numbers)), []).append(term)
            fam_terms = set()
            for terms in groups.values():
                if len(terms) >= MIN_FAMILY:
                    terms.sort(key=lambda t: tuple(self.index[p] for p in self._sig[t].params))
                    families.append(terms)
                    fam_terms.update(terms)
            rest = [t for t in node.args if t not in fam_terms]
        self._split[node] = (families, rest)
        return families, rest

    def _has_slot(self, node):
        return any(n in self.slots for n in postorder(node) if isinstance(n, sp.Symbol))

    def lower_family(self, terms):
        """The sum of a family's terms, as one vector expression summed."""
        b = self.lowerer.b
        sigs = [self._sig[t] for t in terms]
        first = {}
        pattern = [first.setdefault(p, len(first)) for p in sigs[0].params]
        nslots = len(first)
        slot_pos = [pattern.index(j) for j in range(nslots)]  # a position of each slot
        tag = self._count
        self._count += 1
        env = {}
        param_syms = []
        for j, pos in enumerate(slot_pos):
            syms = [s.params[pos] for s in sigs]
            sym = sp.Symbol(f"_p{tag}_{j}", real=True)
            idx = [self.index[p] for p in syms]
            if len(set(idx)) == 1:
                env[sym] = element(b, self.vector, (idx[0],), hint=str(syms[0]))
            else:
                env[sym] = gather(b, self.vector, gather_spec(idx), hint=_common_name(syms))
            param_syms.append(sym)
        num_syms = []
        for q in range(len(sigs[0].numbers)):
            vals = [s.numbers[q] for s in sigs]
            if all(v == vals[0] for v in vals):
                num_syms.append(vals[0])
            else:
                sym = sp.Symbol(f"_n{tag}_{q}", real=True)
                env[sym] = constant(b, [float(v) for v in vals])
                num_syms.append(sym)
        body = self._template(terms[0], pattern, param_syms, num_syms)
        self.slots.update(env)
        memo = self.lowerer.memo
        memo.update(env)
        try:
            out = self.lowerer.lower(body)
        finally:
            self.slots.difference_update(env)
        if not getattr(out, "shape", ()):  # every slot the same: T equal terms
            return mul(b, Lit(float(len(terms))), out)
        return sum_elements(b, out)

    def _template(self, term, pattern, param_syms, num_syms):
        """``term`` rebuilt with its parameters and abstracted numbers replaced by the
        slot symbols, visiting nodes in the order of :meth:`signature`."""
        counters = {"p": 0, "n": 0}
        # an explicit post-order over the canonical children (the DAG expanded: a shared
        # subexpression is rebuilt at each occurrence, as the signature counts it)
        stack = [(term, None, False)]
        out_stack = []
        while stack:
            node, _, done = stack.pop()
            if isinstance(node, _NumberSlot):
                out_stack.append(num_syms[counters["n"]])
                counters["n"] += 1
                continue
            sig = self._sig.get(node)
            if not done:
                if node in self.index:
                    out_stack.append(param_syms[pattern[counters["p"]]])
                    counters["p"] += 1
                    continue
                if sig is None or not sig.has_param:
                    out_stack.append(node)
                    continue
                stack.append((node, None, True))
                kids = list(sig.order)
                for a in reversed(kids):
                    if isinstance(node, (sp.Add, sp.Mul)) and a.is_Number:
                        stack.append((_NumberSlot(), node, False))
                    else:
                        stack.append((a, node, False))
                continue
            k = len(sig.order)
            args = out_stack[len(out_stack) - k:]
            del out_stack[len(out_stack) - k:]
            out_stack.append(node.func(*args))
        (body,) = out_stack
        return body


class _NumberSlot:
    """A marker on the template stack for an abstracted number."""


def _common_name(syms):
    """A readable name for a run of parameters: their common prefix (``w`` for w1..w9)."""
    names = [s.name for s in syms]
    prefix = names[0]
    for n in names[1:]:
        while not n.startswith(prefix):
            prefix = prefix[:-1]
    prefix = prefix.rstrip("_0123456789") or "p"
    return prefix
