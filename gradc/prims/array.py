"""Structural primitives of matrix models, one block each.

Contract
--------
Per-example types of matrix models are scalars ``()`` or matrices ``(rows, cols)``; a 1x1
matrix result is a scalar.  A batched value is stored with the batch on axis 0: a
per-example column or row vector of length L as an ``(n, L)`` array, a per-example scalar
as ``(n,)``.  Per-example values with both dimensions above 1 (a batch of matrices) are
not supported and raise :class:`gradc.GradcError`.  Scalar programs also hold rank-1
vectors ``(T,)``: the parameter vector, and what :func:`gather` reads from it.  Each block gives the type rule, the forward and reverse rules
(transpose rules for the linear ones) and the array code (``emit_array``, statements
written through the :class:`gradc.codegen.arrays.Context`).
"""

from __future__ import annotations

import sympy as sp

from ..errors import GradcError
from ..ir import Lit, Var, shape_text, size_of, type_of
from . import Primitive, Scatter, Summed, add, mul, register

_fmt = shape_text


def _is_vector(shape):
    return shape == () or shape[0] == 1 or shape[1] == 1


def batched(atom):
    return type_of(atom)[1]


def shape_of(atom):
    return type_of(atom)[0]


# --------------------------------------------------------------------------------------
# batch_sum: the sum over the examples of the batch (a batch-invariant result)


@register
class BatchSum(Primitive):
    name = "batch_sum"
    structure = "linear"

    def abstract_eval(self, inputs, params):
        (a,) = inputs
        assert batched(a), "batch_sum of a batch-invariant value"
        return shape_of(a), False

    def jvp(self, b, eqn, tangents):
        return batch_sum(b, tangents[0])

    def vjp(self, b, eqn, ct, active):
        return [ct]  # the same cotangent for every example

    def emit_array(self, eqn, ctx):
        return ctx.batch_sum(eqn)

    def sparsity(self, eqn, deps, pattern):
        return deps[0]


def batch_sum(b, a):
    """Sum of ``a`` over the batch; a batch-invariant ``a`` is multiplied by n."""
    if a is None:
        return None
    if not batched(a):
        return mul(b, a, b.size())
    return b.emit("batch_sum", [a])


# --------------------------------------------------------------------------------------
# matmul: out = A @ B per example; with contract=True, sum over the batch of A_i @ B_i


@register
class MatMul(Primitive):
    name = "matmul"
    structure = "linear"

    def abstract_eval(self, inputs, params):
        a, b_ = inputs
        (r, k), (k2, c) = shape_of(a), shape_of(b_)
        if k != k2:
            raise GradcError(f"matrix product: shapes {r}x{k} and {k2}x{c} do not match")
        contract = params
        if contract:
            assert batched(a) and batched(b_)
            return (r, c), False
        out = () if (r, c) == (1, 1) else (r, c)
        isb = batched(a) or batched(b_)
        return out, isb

    def describe(self, eqn):
        a, b_ = eqn.inputs
        op = " @@ " if eqn.params else " @ "
        return f"{a!r}{op}{b_!r}" + ("  (summed over the batch)" if eqn.params else "")

    def jvp(self, b, eqn, tangents):
        a, b_ = eqn.inputs
        ta, tb = tangents
        return add(b, [
            matmul(b, ta, b_, eqn.params) if ta is not None else None,
            matmul(b, a, tb, eqn.params) if tb is not None else None,
        ])

    def vjp(self, b, eqn, ct, active):
        a, b_ = eqn.inputs
        per_example = batched(eqn.out)
        return [
            _product_ct(b, ct, transpose(b, b_), a, per_example) if active[0] else None,
            _product_ct(b, transpose(b, a), ct, b_, per_example) if active[1] else None,
        ]

    def emit_array(self, eqn, ctx):
        return ctx.matmul(eqn)

    def sparsity(self, eqn, deps, pattern):
        from ..sparsity import deps_array

        a, b_ = deps
        (r, k), (_, c) = a.shape, b_.shape
        out = deps_array((r, c))
        for i in range(r):
            for j in range(c):
                parts = []
                for t in range(k):
                    pattern.meet(a[i, t], b_[t, j])
                    parts += [a[i, t], b_[t, j]]
                out[i, j] = frozenset().union(*parts)
        return out.reshape(eqn.out.shape)


def _product_ct(b, left, right, target, per_example):
    """The cotangent ``left @ right`` for ``target``.  When the product is per example and
    ``target`` is batch-invariant, the per-example products are summed over the batch here,
    as one product (a batch-contracting GEMM, or a product with a batch sum), and marked
    :class:`Summed`; otherwise :func:`gradc.ad.total` does what is left."""
    if batched(target) or not per_example or not (batched(left) or batched(right)):
        return matmul(b, left, right)
    if batched(left) and batched(right):
        return Summed(matmul(b, left, right, contract=True))
    if batched(left):
        return Summed(matmul(b, batch_sum(b, left), right))
    return Summed(matmul(b, left, batch_sum(b, right)))


def matmul(b, a, b_, contract=False):
    """``a @ b_``; products with a scalar (or 1x1) operand are elementwise products."""
    if a is None or b_ is None:
        return None
    if shape_of(a) == () or shape_of(b_) == ():
        prod = mul(b, a, b_)
        if contract:
            return batch_sum(b, prod)
        return prod
    if isinstance(a, Lit) or isinstance(b_, Lit):
        raise AssertionError("literal matrix operand")
    if contract and not (batched(a) and batched(b_)):
        contract = False
    return b.emit("matmul", [a, b_], bool(contract))


# --------------------------------------------------------------------------------------
# transpose


@register
class Transpose(Primitive):
    name = "transpose"
    structure = "linear"

    def abstract_eval(self, inputs, params):
        (a,) = inputs
        r, c = shape_of(a)
        return (c, r), batched(a)

    def describe(self, eqn):
        return f"{eqn.inputs[0]!r}.T"

    def jvp(self, b, eqn, tangents):
        return transpose(b, tangents[0])

    def vjp(self, b, eqn, ct, active):
        return [transpose(b, ct)]

    def emit_array(self, eqn, ctx):
        (a,) = eqn.inputs
        src = ctx.name(a)
        # a batched vector keeps its (n, L) storage; a matrix becomes a transposed view, a
        # batch of matrices a batch of their transposes
        r, c = shape_of(a)
        if batched(a) and r > 1 and c > 1:
            return [f"{ctx.name(eqn.out)} = _rt.btranspose({src}, {r}, {c}, n)"]
        return [f"{ctx.name(eqn.out)} = {src}" + ("" if batched(a) else ".T")]

    def sparsity(self, eqn, deps, pattern):
        return deps[0].T.copy()


def transpose(b, a):
    if a is None or isinstance(a, Lit) or shape_of(a) == ():
        return a
    for e in reversed(b.eqns):  # transpose of a transpose
        if e.out == a and e.prim == "transpose":
            return e.inputs[0]
    return b.emit("transpose", [a])


# --------------------------------------------------------------------------------------
# sum: the sum of the elements of a matrix (per example)


@register
class Sum(Primitive):
    name = "sum"
    structure = "linear"

    def abstract_eval(self, inputs, params):
        (a,) = inputs
        return (), batched(a)

    def jvp(self, b, eqn, tangents):
        return sum_elements(b, tangents[0])

    def vjp(self, b, eqn, ct, active):
        return [ct]  # broadcast back to the matrix by gradc.ad.total

    def emit_array(self, eqn, ctx):
        return ctx.reduce_elements(eqn, "sum")

    def sparsity(self, eqn, deps, pattern):
        return self.linear_sparsity(eqn, deps)


def sum_elements(b, a):
    if a is None or shape_of(a) == ():
        return a
    return b.emit("sum", [a])


# --------------------------------------------------------------------------------------
# broadcast: a scalar repeated into a matrix


@register
class Broadcast(Primitive):
    name = "broadcast"
    elementwise = True
    structure = "linear"

    def abstract_eval(self, inputs, params):
        (a,) = inputs
        assert shape_of(a) == ()
        return tuple(params), batched(a)

    def emit(self, eqn, names, printer):
        return names[0]

    def jvp(self, b, eqn, tangents):
        return broadcast(b, tangents[0], eqn.params)

    def vjp(self, b, eqn, ct, active):
        return [sum_elements(b, ct)]

    def sparsity(self, eqn, deps, pattern):
        from ..sparsity import broadcast_to

        return broadcast_to(deps[0], eqn.params)


def broadcast(b, a, shape):
    if a is None:
        return None
    if shape_of(a) == tuple(shape) or not shape:
        return a
    return b.emit("broadcast", [a], tuple(shape))


# --------------------------------------------------------------------------------------
# logsumexp: log(sum(exp(z))) over the elements, computed stably (max shifted)


@register
class LogSumExp(Primitive):
    name = "logsumexp"

    def abstract_eval(self, inputs, params):
        (a,) = inputs
        return (), batched(a)

    def jvp(self, b, eqn, tangents):
        (z,) = eqn.inputs
        return sum_elements(b, mul(b, softmax_of(b, z, eqn.out), tangents[0]))

    def vjp(self, b, eqn, ct, active):
        (z,) = eqn.inputs
        return [mul(b, ct, softmax_of(b, z, eqn.out))]

    def emit_array(self, eqn, ctx):
        return ctx.reduce_elements(eqn, "logsumexp")


def softmax_of(b, z, lse):
    """exp(z - logsumexp(z)), elementwise: the softmax, with no overflow."""
    from .scalar import elementwise, placeholder

    return elementwise(b, sp.exp(placeholder(0) - placeholder(1)), [z, lse])


# --------------------------------------------------------------------------------------
# pick: z[label] for a per-example vector z and integer label; onehot: its transpose


@register
class Pick(Primitive):
    name = "pick"
    structure = "linear"

    def abstract_eval(self, inputs, params):
        z, idx = inputs
        if not _is_vector(shape_of(z)) or shape_of(z) == ():
            raise GradcError(f"pick needs a vector of scores, got {_fmt(shape_of(z))}")
        return (), batched(z) or batched(idx)

    def jvp(self, b, eqn, tangents):
        return pick(b, tangents[0], eqn.inputs[1])

    def vjp(self, b, eqn, ct, active):
        z, idx = eqn.inputs
        return [mul(b, ct, b.emit("onehot", [idx], shape_of(z))), None]

    def emit_array(self, eqn, ctx):
        return ctx.pick(eqn)

    def sparsity(self, eqn, deps, pattern):
        return self.linear_sparsity(eqn, deps[:1])  # any element may be the one picked


def pick(b, z, idx):
    if z is None:
        return None
    return b.emit("pick", [z, idx])


@register
class OneHot(Primitive):
    name = "onehot"
    structure = "linear"

    def abstract_eval(self, inputs, params):
        (idx,) = inputs
        return tuple(params), batched(idx)

    def emit_array(self, eqn, ctx):
        return ctx.onehot(eqn)

    def sparsity(self, eqn, deps, pattern):
        return self.linear_sparsity(eqn, [])


# --------------------------------------------------------------------------------------
# element: A[index] at a constant index tuple (one per axis); its transpose is assemble


@register
class Element(Primitive):
    name = "element"
    structure = "linear"

    def abstract_eval(self, inputs, params):
        (a,) = inputs
        assert len(params) == len(shape_of(a)), (params, shape_of(a))
        return (), batched(a)

    def describe(self, eqn):
        return f"{eqn.inputs[0]!r}[{', '.join(map(str, eqn.params))}]"

    def jvp(self, b, eqn, tangents):
        return element(b, tangents[0], eqn.params)

    def vjp(self, b, eqn, ct, active):
        return [Scatter(ct, eqn.params)]

    def emit_array(self, eqn, ctx):
        (a,) = eqn.inputs
        src, out = ctx.name(a), ctx.name(eqn.out)
        if batched(a):
            flat = _flat_index(eqn.params, shape_of(a))
            # a copy: with one example the column is contiguous and ascontiguousarray
            # would return a view, which array kernels may later write over
            return [f"{out} = {src}[:, {flat}].copy()"]
        return [f"{out} = {src}[{', '.join(map(str, eqn.params))}]"]

    def sparsity(self, eqn, deps, pattern):
        from ..sparsity import deps_array

        return deps_array((), deps[0][tuple(eqn.params)])


def _flat_index(index, shape):
    flat = 0
    for i, d in zip(index, shape):
        flat = flat * d + i
    return flat


def element(b, a, index, hint=""):
    if a is None or shape_of(a) == ():
        return a
    return b.emit("element", [a], tuple(index), hint=hint)


# --------------------------------------------------------------------------------------
# gather: a run of a vector, v[start + step * t] for t < length ("slice"), or v[table[t]]
# ("table"); its transpose is assemble


def gather_spec(indices):
    """The gather spec reading ``vector[indices[t]]`` for t in order: a slice when the
    indices are an arithmetic sequence, else a table."""
    indices = tuple(int(i) for i in indices)
    if len(indices) == 1:
        return ("slice", indices[0], 1, 1)
    step = indices[1] - indices[0]
    if step != 0 and all(indices[t + 1] - indices[t] == step for t in range(len(indices) - 1)):
        return ("slice", indices[0], step, len(indices))
    return ("table", indices)


def spec_indices(spec):
    """The indices a gather spec reads, as a tuple."""
    if spec[0] == "slice":
        _, start, step, length = spec
        return tuple(start + step * t for t in range(length))
    return spec[1]


def spec_length(spec):
    return spec[3] if spec[0] == "slice" else len(spec[1])


def spec_text(spec):
    if spec[0] == "slice":
        _, start, step, length = spec
        stop = start + step * length
        return f"{start}:{stop}" + (f":{step}" if step != 1 else "")
    idx = spec[1]
    return "[" + ", ".join(map(str, idx[:4])) + (", ..." if len(idx) > 4 else "") + "]"


@register
class Gather(Primitive):
    name = "gather"
    structure = "linear"

    def abstract_eval(self, inputs, params):
        (a,) = inputs
        assert len(shape_of(a)) == 1, "gather reads a vector"
        return (spec_length(params),), batched(a)

    def describe(self, eqn):
        return f"{eqn.inputs[0]!r}[{spec_text(eqn.params)}]"

    def jvp(self, b, eqn, tangents):
        return gather(b, tangents[0], eqn.params)

    def vjp(self, b, eqn, ct, active):
        return [Scatter(ct, eqn.params)]

    def sparsity(self, eqn, deps, pattern):
        return deps[0][list(spec_indices(eqn.params))]


def gather(b, a, spec, hint=""):
    if a is None:
        return None
    if spec[0] == "slice" and spec[1] == 0 and spec[2] == 1 and spec[3] == shape_of(a)[0]:
        return a
    return b.emit("gather", [a], spec, hint=hint)


# --------------------------------------------------------------------------------------
# assemble: zeros of a shape with each input added where its index says: the whole array
# (None), one element (an index tuple) or a run of a vector (a gather spec)


@register
class Assemble(Primitive):
    name = "assemble"
    structure = "linear"

    def abstract_eval(self, inputs, params):
        shape, where = params
        assert len(where) == len(inputs)
        for a, w in zip(inputs, where):
            want = shape if w is None else (() if isinstance(w[0], int) else (spec_length(w),))
            assert shape_of(a) in (want, ()), (shape_of(a), want)
        return tuple(shape), any(batched(a) for a in inputs)

    def describe(self, eqn):
        shape, where = eqn.params
        parts = [f"{a!r}" + ("" if w is None else
                             f"@[{', '.join(map(str, w))}]" if isinstance(w[0], int) else
                             f"@[{spec_text(w)}]") for a, w in zip(eqn.inputs, where)]
        return f"assemble({shape_text(shape)}; {', '.join(parts)})"

    def jvp(self, b, eqn, tangents):
        shape, where = eqn.params
        keep = [(t, w) for t, w in zip(tangents, where) if t is not None]
        return assemble(b, shape, keep)

    def vjp(self, b, eqn, ct, active):
        shape, where = eqn.params
        out = []
        for act, w in zip(active, where):
            if not act:
                out.append(None)
            elif w is None:
                out.append(ct)
            elif isinstance(w[0], int):
                out.append(element(b, ct, w))
            else:
                out.append(gather(b, ct, w))
        return out

    def emit_array(self, eqn, ctx):
        shape, where = eqn.params
        out = ctx.name(eqn.out)
        if batched(eqn.out):
            lines = [f"{out} = _rt.zeros((n, {size_of(shape)}))"]
        else:
            lines = [f"{out} = _rt.zeros({tuple(shape)!r})"]
        for a, w in zip(eqn.inputs, where):
            src = ctx.name(a)
            if w is None:
                lines.append(f"{out} += {src}")
            elif isinstance(w[0], int) and batched(eqn.out):
                # a loop, not a slice: numba compiles "a[:, k] += v" in seconds
                at = _flat_index(w, shape)
                val = f"{src}[e]" if batched(a) else src
                lines += ["for e in range(n):", f"    {out}[e, {at}] += {val}"]
            elif isinstance(w[0], int):
                lines.append(f"{out}[{', '.join(map(str, w))}] += {src}")
            else:
                raise GradcError("internal: a gathered run in an array kernel")
        return lines

    def sparsity(self, eqn, deps, pattern):
        from ..sparsity import deps_array, union

        shape, where = eqn.params
        out = deps_array(shape)
        for d, w in zip(deps, where):
            if w is None:
                out = union(out, d)
            elif isinstance(w[0], int):
                out[tuple(w)] = out[tuple(w)] | d.reshape(-1)[0]
            else:
                idx = list(spec_indices(w))
                out[idx] = union(out[idx], d)
        return out


def assemble(b, shape, parts):
    """``zeros(shape)`` plus each ``(atom, where)`` of ``parts`` (see :class:`Assemble`);
    literal zeros are dropped, a single whole part is returned as it is, and a scalar part
    for a run or the whole array is broadcast over it."""
    parts = [(a, w) for a, w in parts
             if a is not None and not (isinstance(a, Lit) and a.value == 0.0)]
    if not parts:
        return None
    if len(parts) == 1 and parts[0][1] is None:
        return broadcast(b, parts[0][0], shape)
    return b.emit("assemble", [a for a, _ in parts], (tuple(shape), tuple(w for _, w in parts)))


# --------------------------------------------------------------------------------------
# constant: a vector of float64 numbers (the coefficients of a re-rolled family)


@register
class Constant(Primitive):
    name = "constant"
    structure = "linear"

    def abstract_eval(self, inputs, params):
        return (len(params),), False

    def describe(self, eqn):
        vals = ", ".join(repr(v) for v in eqn.params[:4])
        return f"constant([{vals}{', ...' if len(eqn.params) > 4 else ''}])"

    def sparsity(self, eqn, deps, pattern):
        return self.linear_sparsity(eqn, [])


def constant(b, values, hint=""):
    values = tuple(float(v) for v in values)
    if len(set(values)) == 1:
        return Lit(values[0])
    return b.emit("constant", [], values, hint=hint)


# --------------------------------------------------------------------------------------
# eye: the identity matrix (a constant)


@register
class Eye(Primitive):
    name = "eye"
    structure = "linear"

    def abstract_eval(self, inputs, params):
        return tuple(params), False

    def emit_array(self, eqn, ctx):
        r, c = eqn.params
        return [f"{ctx.name(eqn.out)} = np.eye({r}, {c})"]

    def sparsity(self, eqn, deps, pattern):
        return self.linear_sparsity(eqn, [])


__all__ = ["batch_sum", "matmul", "transpose", "sum_elements", "broadcast", "pick",
           "softmax_of", "element", "gather", "gather_spec", "spec_indices", "spec_length",
           "assemble", "Var"]
