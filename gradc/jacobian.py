"""Jacobian execution: forward, reverse and planned accumulation, in generated kernels.

Contract
--------
:class:`JacobianEngine` takes a per-example program (data already bound as consts) with
vector or scalar ``param`` inputs (the flattened, concatenated ``wrt``) and a vector or
scalar output, splits it into a chain (:func:`gradc.planner.extract.extract_chain`), plans
it (:func:`gradc.planner.jacobian_chain`) and computes the Jacobian ``d out / d wrt``
(``n_out x n_in``) in one of three ways:

``"forward"``
    tangent sweeps through the whole chain seeded with the identity, all columns at once;
``"reverse"``
    adjoint sweeps seeded with the identity, all rows at once;
``"optimal"``
    the plan's moves in post-order: explicit Jacobians (a constant matrix), tangent
    sweeps pushing the columns of a sub-result forward through a range of pieces,
    adjoint sweeps pulling its rows back, and BLAS products, with diagonal sub-results
    kept as vectors.

Every sweep runs a generated numba kernel (``sweep(params, seed, *consts)``) made from
the forward- or reverse-mode transform of the sub-program of the pieces swept, with the
sweeps as the batch axis, so a sweep through ``W x`` is one GEMM.  One more kernel
(``values``) evaluates the primal program once and returns the values the sweeps read.
"""

from __future__ import annotations

import threading

import numpy as np

from . import __version__, backend
from .ad import jvp_program, vjp_program
from .codegen.arrays import ArrayKernel
from .codegen.emit import CHUNK, HEADER, KernelSpec
from .codegen.printer import KernelPrinter
from .ir import Builder, Lit, Var
from .planner import jacobian_chain
from .planner.calibrate import time_model
from .planner.extract import extract_chain


def _size(var):
    return var.shape[0] * var.shape[1] if var.shape else 1


class _SweepKernel(ArrayKernel):
    """``sweep(params, seed, *consts)``: n = number of sweeps = rows of ``seed[0]``."""

    def header(self):
        args = ["params", "seed"] + [self.name(i.var) for i in self.consts]
        return [f"def {self.fname}({', '.join(args)}):", f'    """{self.doc}"""']

    def prologue(self):
        lines = [f"{self.name(i.var)} = params[{i.index}]" for i in self.prog.inputs_of("param")]
        for role in ("tangent", "cotangent"):
            lines += [f"{self.name(i.var)} = seed[{i.index}]" for i in self.prog.inputs_of(role)]
        return lines + ["n = seed[0].shape[0]"]

    def returned(self, groups):
        (_, atoms), = groups
        parts = []
        for a in atoms:
            if isinstance(a, Lit) or not a.batched:
                parts.append(f"np.zeros((n, {self._width(a)}))")
            else:
                parts.append(self.name(a) if a.shape else f"{self.name(a)}.reshape(n, 1)")
        return "(" + ", ".join(parts) + ",)"

    def _width(self, a):
        return 1 if isinstance(a, Lit) or not a.shape else _size(a)


class _ValuesKernel(ArrayKernel):
    """``values(params, *consts)``: the primal values the sweeps read, as a tuple."""

    def header(self):
        args = ["params"] + [self.name(i.var) for i in self.consts]
        return [f"def {self.fname}({', '.join(args)}):", f'    """{self.doc}"""']

    def prologue(self):
        return [f"{self.name(i.var)} = params[{i.index}]" for i in self.prog.inputs_of("param")]

    def returned(self, groups):
        (_, atoms), = groups
        return "(" + "".join(f"{self.name(a)}, " for a in atoms) + ")"


def _module(fname, writer_cls, prog, outputs, doc):
    spec = KernelSpec(fname, prog, (("tuple", tuple(outputs)),), doc)
    w = writer_cls(spec, KernelPrinter(), True)
    text = w.write(list(spec.outputs), False)
    head = HEADER.format(title=doc, version=__version__, args_doc="Jacobian helper kernel.",
                         reduce=None, chunk=CHUNK, runtime="runtime", dtype="float64")
    return head + "\n\n" + text + "\n"


class JacobianEngine:
    """Plans and runs Jacobians of one per-example program (see the module docstring)."""

    def __init__(self, prog, jit=True, memory=None):
        self.prog = prog
        self.jit = jit
        self.chain = extract_chain(prog)
        self.memory = memory
        self.model = time_model(self.chain)
        self.plan = jacobian_chain([c.piece for c in self.chain], memory=memory,
                                   model=self.model)
        self.params = [i.var for i in prog.inputs_of("param")]
        self.consts = prog.inputs_of("const")
        self._kernels = {}
        self._subs = {}
        self._values_kernel = None
        self._local = threading.local()  # each thread's primal values (evaluate is re-entrant)
        self._lock = threading.Lock()  # kernels are built once

    @property
    def env(self):
        return self._local.env

    @env.setter
    def env(self, value):
        self._local.env = value

    # -- sub-programs ---------------------------------------------------------------------
    def _sub(self, lo, hi):
        """The program of pieces lo..hi: the cut before as params, side values as consts."""
        key = (lo, hi)
        if key in self._subs:
            return self._subs[key]
        pieces = self.chain[lo - 1:hi]
        eqns = [e for p in pieces for e in p.eqns]
        inputs = pieces[0].inputs
        inside = {e.out.id for e in eqns}
        b = Builder()
        env = {}
        for k, v in enumerate(inputs):
            env[v.id] = b.add_input("param", v.hint or f"c{lo - 1}_{k}", k, v.shape, False)
        side = []
        for e in eqns:
            for a in e.inputs:
                if isinstance(a, Var) and a.id not in env and a.id not in inside:
                    env[a.id] = b.add_input("const", a.hint or f"s{a.id}", len(side), a.shape,
                                            False)
                    side.append(a)
        for e in eqns:
            ins = [env[a.id] if isinstance(a, Var) else a for a in e.inputs]
            env[e.out.id] = b.emit(e.prim, ins, e.params)
        sub = b.build([env[pieces[-1].output.id]], ["out"])
        self._subs[key] = (sub, side)
        return sub, side

    def _kernel(self, kind, lo, hi):
        key = (kind, lo, hi)
        with self._lock:
            return self._build_kernel(key, kind, lo, hi)

    def _build_kernel(self, key, kind, lo, hi):
        if key not in self._kernels:
            sub, side = self._sub(lo, hi)
            if kind == "tan":
                prog = jvp_program(sub, sweeps=True)
                outs = [prog.outputs[1]]
            else:
                prog = vjp_program(sub, seed="input", sweeps=True)
                outs = list(prog.outputs[1:])
            doc = f"{'tangent' if kind == 'tan' else 'adjoint'} sweeps through pieces {lo}..{hi}"
            source = _module("sweep", _SweepKernel, prog, outs, doc)
            k = backend.load(source, backend.make_key(source), ("sweep",), jit=self.jit)
            self._kernels[key] = (k.sweep, side)
        return self._kernels[key]

    def _values(self):
        with self._lock:
            return self._build_values()

    def _build_values(self):
        if self._values_kernel is None:
            wanted, seen = [], set()
            for p in self.chain:
                for v in list(p.inputs) + [p.output] + ([p.matrix] if p.matrix is not None else []):
                    if isinstance(v, Var) and v.id not in seen:
                        seen.add(v.id)
                        wanted.append(v)
            for lo in range(1, len(self.chain) + 1):
                for hi in range(lo, len(self.chain) + 1):
                    for v in self._sub(lo, hi)[1]:
                        if v.id not in seen:
                            seen.add(v.id)
                            wanted.append(v)
            self._wanted = wanted
            source = _module("values", _ValuesKernel, self.prog, wanted, "primal values")
            k = backend.load(source, backend.make_key(source), ("values",), jit=self.jit)
            self._values_kernel = k.values
        return self._values_kernel

    # -- evaluation -----------------------------------------------------------------------
    def evaluate(self, params, consts, mode="optimal", steps=None):
        """The Jacobian at ``params`` (tuple, one entry per param) with ``consts``, by
        ``mode`` or, given ``steps`` (a :class:`gradc.planner.Step` tree of this chain),
        by that plan."""
        vals = self._values()(params, *consts)
        self.env = {v.id: x for v, x in zip(self._wanted, vals)}
        for v, x in zip(self.params, params):
            self.env[v.id] = x
        q = len(self.chain)
        if mode == "forward":
            J = self.tan(1, q, None)
        elif mode == "reverse":
            J = self.adj(None, 1, q)
        else:
            steps = self.plan.steps if steps is None else steps
            J = self.run(steps)
            if steps.diagonal:
                J = np.diag(J)
        self.env = None
        return J

    def _value(self, v):
        x = self.env[v.id]
        if isinstance(x, np.ndarray):  # a 0-d array (a scalar const) stays a scalar:
            return float(x) if x.ndim == 0 else np.ascontiguousarray(x)  # not (1,)
        return x

    def _inputs_of(self, lo):
        return tuple(self._value(v) for v in self.chain[lo - 1].inputs)

    def tan(self, lo, hi, X):
        """J_{hi..lo} X (X None: the identity), by tangent sweeps."""
        kernel, side = self._kernel("tan", lo, hi)
        n_in = self.chain[lo - 1].piece.n_in
        X = np.eye(n_in) if X is None else X
        seeds = _split_rows(np.ascontiguousarray(X.T), self.chain[lo - 1].inputs)
        (out,) = kernel(self._inputs_of(lo), seeds, *[self._value(v) for v in side])
        return out.T

    def adj(self, X, lo, hi):
        """X J_{hi..lo} (X None: the identity), by adjoint sweeps."""
        kernel, side = self._kernel("adj", lo, hi)
        n_out = self.chain[hi - 1].piece.n_out
        X = np.eye(n_out) if X is None else X
        seed = X if self.chain[hi - 1].output.shape else X[:, 0]  # a scalar's is 1-D
        outs = kernel(self._inputs_of(lo), (np.ascontiguousarray(seed),),
                      *[self._value(v) for v in side])
        if len(outs) == 1:  # no copy of what may be a large result
            return np.reshape(outs[0], (X.shape[0], -1))
        return np.concatenate([np.reshape(o, (X.shape[0], -1)) for o in outs], axis=1)

    def run(self, step):
        """Execute one plan step (children first); diagonal results are vectors."""
        kids = [self.run(c) for c in step.children]
        if step.kind == "ACC":
            piece = self.chain[step.first - 1]
            if step.method == "explicit":
                W = self._value(piece.matrix)
                return W if piece.kind == "explicit" else np.ascontiguousarray(W.T)
            if step.diagonal:
                return self.tan(step.first, step.last, np.ones((piece.piece.n_in, 1)))[:, 0]
            if step.method == "tangent":
                return self.tan(step.first, step.last, None)
            return self.adj(None, step.first, step.last)
        if step.kind == "MUL":
            outer, inner = kids
            od, id_ = step.children[0].diagonal, step.children[1].diagonal
            if od and id_:
                return outer * inner
            if od:
                return outer[:, None] * inner
            if id_:
                return outer * inner[None, :]
            return np.dot(outer, inner)
        lo, hi = step.swept
        seed = kids[0] if kids else None
        seed_diag = bool(kids) and step.children[0].diagonal
        if step.diagonal or self._all_diagonal(lo, hi):
            n = self.chain[lo - 1].piece.n_in
            d = self.tan(lo, hi, np.ones((n, 1)))[:, 0]  # the diagonal, in one sweep
            if seed is None:
                return d if step.diagonal else np.diag(d)
            if seed_diag:
                return d * seed if step.diagonal else np.diag(d * seed)
            return d[:, None] * seed if step.kind == "TAN" else seed * d[None, :]
        if seed_diag:
            seed = np.diag(seed)
        if step.kind == "TAN":
            return self.tan(lo, hi, seed)
        return self.adj(seed, lo, hi)

    def _all_diagonal(self, lo, hi):
        return all(self.chain[i - 1].kind == "diagonal" for i in range(lo, hi + 1))


def _split_rows(S, inputs):
    """Split sweeps (rows of S) into one seed array per input (columns by input size)."""
    out, k = [], 0
    for v in inputs:
        w = _size(v)
        # a batch of sweeps is stored as kernels store any batch: (sweeps, size), a
        # matrix's tangents flattened row by row
        out.append(np.ascontiguousarray(S[:, k:k + w] if v.shape else S[:, k]))
        k += w
    return tuple(out)
