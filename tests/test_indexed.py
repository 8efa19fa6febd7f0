"""Indexed models (IndexedBase, Sum, FunctionMatrix) compile to loop nests: the maths
against the sympy.diff oracle (sums expanded, elements as symbols), finite differences,
forward = reverse, equality with the MatrixSymbol form, random index expressions, the
errors, and that nothing is unrolled."""

import numpy as np
import pytest
import sympy as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gradc
from gradc import nn
from gradc.testing import check_against_sympy, check_grads

i, j, k, m, c, di, dj, q = sp.symbols("i j k m c di dj q", integer=True)
RNG = np.random.default_rng(7)


def _compile(loss, wrt, data=(), consts=(), **kw):
    kw.setdefault("jit", False)
    return gradc.compile(loss, wrt=wrt, data=data, consts=consts, **kw)


def _params(wrt, scale=0.5):
    return [RNG.normal(size=tuple(int(d) for d in s.shape)) * scale
            if isinstance(s, sp.IndexedBase) else float(RNG.normal() * scale) for s in wrt]


def _data(syms, n=5):
    return [RNG.normal(size=(n, *(int(d) for d in s.shape))) if isinstance(s, sp.IndexedBase)
            else RNG.normal(size=n) for s in syms]


# --------------------------------------------------------------------------------------
# models, each checked against sympy.diff with every sum expanded


def _ridge():
    w, x = sp.IndexedBase("w", shape=(4,)), sp.IndexedBase("x", shape=(4,))
    b, y = sp.symbols("b y")
    return (sp.Sum(w[j] * x[j], (j, 0, 3)) + b - y) ** 2, [w, b], [x, y]


def _mlp():
    W, v = sp.IndexedBase("W", shape=(3, 4)), sp.IndexedBase("v", shape=(3,))
    x, bb = sp.IndexedBase("x", shape=(4,)), sp.IndexedBase("bb", shape=(3,))
    y = sp.Symbol("y")
    h = sp.tanh(sp.Sum(W[k, j] * x[j], (j, 0, 3)) + bb[k])
    return (sp.Sum(v[k] * h, (k, 0, 2)) - y) ** 2, [W, bb, v], [x, y]


def _triangular():
    L, u = sp.IndexedBase("L", shape=(4, 4)), sp.IndexedBase("u", shape=(4,))
    # a strictly lower-triangular product inside a nonlinearity, as in the GMM
    inner = sp.Sum(L[j, m] * u[m], (m, 0, j - 1))
    return sp.Sum(sp.exp(L[j, j]) * u[j] + inner ** 2, (j, 0, 3)), [L], [u]


def _strided_conv():
    x, w = sp.IndexedBase("x", shape=(9,)), sp.IndexedBase("w", shape=(3,))
    a = sp.Symbol("a")
    z = sp.Sum(x[2 * i + di] * w[di], (di, 0, 2))
    return sp.Sum(sp.log(1 + sp.exp(a * z)), (i, 0, 3)), [w, a], [x]


def _offsets_and_delta():
    x, w = sp.IndexedBase("x", shape=(6,)), sp.IndexedBase("w", shape=(6,))
    # a centred stencil with negative offsets, an index used as a number, a Kronecker delta
    s = sp.Sum(w[i + di] * x[i] * (di + 2), (di, -1, 1))
    return sp.Sum(sp.sin(s) + i * w[i] * sp.KroneckerDelta(i, 3), (i, 1, 4)), [w], [x]


def _nested_hoist():
    A, x = sp.IndexedBase("A", shape=(3, 3)), sp.IndexedBase("x", shape=(3,))
    # Max(., 0) of an inner sum, used once per k: hoisted into a tensor over j
    z = sp.Max(sp.Sum(A[j, m] * x[m], (m, 0, 2)), 0)
    return sp.Sum(A[k, j] * z * x[k], (k, 0, 2), (j, 0, 2)), [A], [x]


def _consts_and_powers():
    w, s = sp.IndexedBase("w", shape=(2, 3)), sp.IndexedBase("s", shape=(3,))
    x = sp.IndexedBase("x", shape=(3,))
    lam = sp.Symbol("lam")
    fit = sp.Sum(sp.Sum(w[i, j] * x[j] * s[j], (j, 0, 2)) ** 2, (i, 0, 1))
    reg = lam * sp.Sum(w[i, j] ** 2, (i, 0, 1), (j, 0, 2))
    return fit + reg, [w], [x], [s, lam]


MODELS = {"ridge": _ridge, "mlp": _mlp, "triangular": _triangular,
          "strided_conv": _strided_conv, "offsets_and_delta": _offsets_and_delta,
          "nested_hoist": _nested_hoist, "consts_and_powers": _consts_and_powers}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_against_sympy_oracle(name):
    loss, wrt, data, *rest = MODELS[name]()
    consts = rest[0] if rest else []
    fn = _compile(loss, wrt, data, consts)
    args = _data(data)
    cvals = [RNG.normal(size=tuple(int(d) for d in s.shape)) if isinstance(s, sp.IndexedBase)
             else 0.3 for s in consts]
    check_against_sympy(fn, _params(wrt), *args, *cvals, rtol=1e-10)
    check_grads(fn, _params(wrt), *args, *cvals)


def test_no_unrolling():
    """The program has one loop equation per sum whatever the extents."""
    def count(d):
        w, x = sp.IndexedBase("w", shape=(d,)), sp.IndexedBase("x", shape=(d,))
        fn = _compile(sp.tanh(sp.Sum(w[j] * x[j], (j, 0, d - 1))), [w], [x])
        prog = fn._second["value"]
        return len(prog.eqns), fn.source.count("\n")

    assert count(3) == count(3000)


def test_matrix_and_indexed_mlp_agree():
    W, v = sp.IndexedBase("W", shape=(3, 4)), sp.IndexedBase("v", shape=(1, 3))
    x = sp.IndexedBase("x", shape=(4,))
    y = sp.Symbol("y")
    h = sp.tanh(sp.Sum(W[k, j] * x[j], (j, 0, 3)))
    indexed = (sp.Sum(v[0, k] * h, (k, 0, 2)) - y) ** 2
    Wm, vm, xm = sp.MatrixSymbol("W", 3, 4), sp.MatrixSymbol("v", 1, 3), sp.MatrixSymbol("x", 4, 1)
    matrix = ((vm * nn.tanh(Wm * xm))[0, 0] - y) ** 2
    f1 = _compile(indexed, [W, v], [x, y])
    f2 = _compile(matrix, [Wm, vm], [xm, y])
    P = [RNG.normal(size=(3, 4)), RNG.normal(size=(1, 3))]
    X, Y = RNG.normal(size=(6, 4)), RNG.normal(size=6)
    v1, g1 = f1.value_and_grad(P, X, Y)
    v2, g2 = f2.value_and_grad(P, X, Y)
    np.testing.assert_allclose(v1, v2, rtol=1e-13)
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)


# --------------------------------------------------------------------------------------
# the lecture's convolutional network (small) through nn.cross_entropy


def _conv_net(H=6, C=2, classes=3):
    O = H - 2
    x = sp.IndexedBase("x", shape=(H, H))
    K = sp.IndexedBase("K", shape=(3, 3, C))
    B = sp.IndexedBase("B", shape=(C,))
    V = sp.IndexedBase("V", shape=(classes, O, O, C))
    b2 = sp.IndexedBase("b2", shape=(classes,))
    label = sp.Symbol("label", integer=True)
    z = sp.Sum(x[i + di, j + dj] * K[di, dj, c], (di, 0, 2), (dj, 0, 2)) + B[c]
    logit = sp.Sum(V[k, i, j, c] * sp.Max(z, 0), (i, 0, O - 1), (j, 0, O - 1),
                   (c, 0, C - 1)) + b2[k]
    loss = nn.cross_entropy(sp.FunctionMatrix(classes, 1, sp.Lambda((k, q), logit)), label)
    return loss, [K, B, V, b2], [x, label]


def _conv_reference(P, X, L):
    Kv, Bv, Vv, bv = P
    n, H = X.shape[0], X.shape[1]
    O = H - 2
    Z = np.zeros((n, O, O, Kv.shape[2]))
    for a in range(3):
        for b in range(3):
            Z += X[:, a:a + O, b:b + O, None] * Kv[a, b][None, None, None, :]
    R = np.maximum(Z + Bv, 0)
    lg = np.einsum("kijc,nijc->nk", Vv, R) + bv
    mx = lg.max(1, keepdims=True)
    lse = np.log(np.exp(lg - mx).sum(1)) + mx[:, 0]
    return np.mean(lse - lg[np.arange(n), L])


@pytest.fixture(scope="module")
def conv_jit():
    loss, wrt, data = _conv_net()
    return gradc.compile(loss, wrt=wrt, data=data)


def _conv_point(H=6, C=2, classes=3, n=7):
    O = H - 2
    P = [RNG.normal(size=(3, 3, C)), RNG.normal(size=C), RNG.normal(size=(classes, O, O, C)),
         RNG.normal(size=classes)]
    return P, RNG.normal(size=(n, H, H)), RNG.integers(0, classes, size=n)


def test_conv_net_value_and_fd(conv_jit):
    P, X, L = _conv_point()
    v, g = conv_jit.value_and_grad(P, X, L)
    np.testing.assert_allclose(v, _conv_reference(P, X, L), rtol=1e-12)
    eps = 1e-6
    for pi in range(4):
        for idx in range(0, P[pi].size, max(1, P[pi].size // 5)):
            Pp = [p.copy() for p in P]
            Pm = [p.copy() for p in P]
            Pp[pi].reshape(-1)[idx] += eps
            Pm[pi].reshape(-1)[idx] -= eps
            fd = (_conv_reference(Pp, X, L) - _conv_reference(Pm, X, L)) / (2 * eps)
            assert g[pi].reshape(-1)[idx] == pytest.approx(fd, rel=1e-6, abs=1e-8)


def test_conv_net_oracle_forward_reverse_and_python_agree(conv_jit):
    small = _conv_net(H=4, C=1, classes=2)
    P, X, L = _conv_point(H=4, C=1, classes=2, n=3)
    check_against_sympy(_compile(*small), P, X, L, rtol=1e-10)
    P, X, L = _conv_point(n=3)
    check_grads(conv_jit, P, X, L)
    loss, wrt, data = _conv_net()
    plain = _compile(loss, wrt, data)
    v1, g1 = conv_jit.value_and_grad(P, X, L)
    v2, g2 = plain.value_and_grad(P, X, L)
    assert v1 == pytest.approx(v2, rel=1e-14)
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_conv_net_compile_time_does_not_grow_with_the_image():
    small, _, _ = _conv_net(H=6)
    large, _, _ = _conv_net(H=28)
    f1 = _compile(small, *_conv_net(H=6)[1:])
    f2 = _compile(large, *_conv_net(H=28)[1:])
    assert len(f1._second["value"].eqns) == len(f2._second["value"].eqns)
    # the code differs only where the extents choose a loop order or split a long sum
    # into four accumulators: a few lines, not lines per element
    assert abs(f1.source.count("\n") - f2.source.count("\n")) <= 0.1 * f1.source.count("\n")


def test_parallel_matches_serial():
    loss, wrt, data = _ridge()
    f1 = gradc.compile(loss, wrt=wrt, data=data)
    f2 = gradc.compile(loss, wrt=wrt, data=data, parallel=True)
    P, args = _params(wrt), _data(data, n=300)
    v1, g1 = f1.value_and_grad(P, *args)
    v2, g2 = f2.value_and_grad(P, *args)
    assert v1 == v2
    for a, b in zip(g1, g2):
        np.testing.assert_array_equal(a, b)


def test_per_example_values_and_hvp():
    loss, wrt, data = _ridge()
    fn = _compile(loss, wrt, data, reduce=None)
    P, (X, Y) = _params(wrt), _data(data)
    np.testing.assert_allclose(fn.value(P, X, Y), (X @ P[0] + P[1] - Y) ** 2, rtol=1e-13)
    mean = _compile(loss, wrt, data)
    t = _params(wrt)
    hv = mean.hvp(P, t, X, Y)
    # H = 2/n [X 1]^T [X 1]
    A = np.hstack([X, np.ones((X.shape[0], 1))])
    want = 2 / X.shape[0] * A.T @ (A @ np.concatenate([t[0], [t[1]]]))
    np.testing.assert_allclose(np.concatenate([hv[0], [hv[1]]]), want, rtol=1e-12)


# --------------------------------------------------------------------------------------
# random index expressions


@st.composite
def index_models(draw):
    """A random model over 1-D arrays: sums of random depth with random affine reads
    (offsets and strides) kept inside their arrays, and random scalar functions."""
    n_w = draw(st.integers(3, 7))
    w = sp.IndexedBase("w", shape=(n_w,))
    x = sp.IndexedBase("x", shape=(8,))
    fns = [lambda e: e, sp.tanh, lambda e: e ** 2, sp.sin, lambda e: sp.exp(e / 4)]

    def read(base, size, lo, hi, var):
        stride = draw(st.integers(1, 2))
        # choose an offset that keeps base[stride * var + off] inside for var in lo..hi
        off_lo, off_hi = -stride * lo, size - 1 - stride * hi
        if off_lo > off_hi:
            stride = 1
            off_lo, off_hi = -lo, size - 1 - hi
        return base[stride * var + draw(st.integers(off_lo, off_hi))]

    hi_i = draw(st.integers(0, min(n_w, 8) - 1))
    terms = []
    for _ in range(draw(st.integers(1, 3))):
        f = draw(st.sampled_from(fns))
        inner = read(w, n_w, 0, hi_i, i) * read(x, 8, 0, hi_i, i)
        if draw(st.booleans()):  # a nested sum over j in 0..i (triangular) or 0..2
            tri = draw(st.booleans())
            hi_j = i if tri else 2
            jmax = hi_i if tri else 2
            inner = inner + sp.Sum(read(w, n_w, 0, jmax, j) * read(x, 8, 0, hi_i, i), (j, 0, hi_j))
        terms.append(sp.Sum(f(inner), (i, 0, hi_i)))
    return sp.Add(*terms), w, x


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(index_models())
def test_random_index_expressions(model):
    loss, w, x = model
    fn = _compile(loss, [w], [x])
    P = [RNG.normal(size=(int(w.shape[0]),)) * 0.5]
    X = RNG.normal(size=(3, 8))
    check_against_sympy(fn, P, X, rtol=1e-9)


# --------------------------------------------------------------------------------------
# bad input


def _err(loss, wrt, data=(), match=""):
    with pytest.raises(gradc.GradcError, match=match):
        _compile(loss, wrt, data)


def test_error_non_affine_index():
    x = sp.IndexedBase("x", shape=(9,))
    _err(sp.Sum(x[i * j], (i, 0, 2), (j, 0, 2)), [x], match=r"not affine")


def test_error_out_of_bounds_names_index_range_and_shape():
    x = sp.IndexedBase("x", shape=(5,))
    _err(sp.Sum(x[i + 1], (i, 0, 4)), [x],
         match=r"index i \+ 1 of x\[i \+ 1\] takes values 1\.\.5 .* outside 0\.\.4 .*shape 5")


def test_error_triangular_out_of_bounds_is_exact():
    x = sp.IndexedBase("x", shape=(4,))
    # j - m stays in 1..3 for m < j: accepted; j - m + 1 reaches 4: refused
    _compile(sp.Sum(sp.Sum(x[j - m], (m, 0, j - 1)), (j, 0, 3)), [x])
    _err(sp.Sum(sp.Sum(x[j - m + 1], (m, 0, j - 1)), (j, 0, 3)), [x], match="outside 0..3")


def test_error_symbolic_bound():
    x = sp.IndexedBase("x", shape=(5,))
    nn_ = sp.Symbol("N", integer=True)
    _err(sp.Sum(x[i], (i, 0, nn_)), [x], match=r"bound N of index i is symbolic")


def test_error_no_shape():
    with pytest.raises(gradc.GradcError, match=r"IndexedBase x has no shape"):
        _compile(sp.Sum(sp.IndexedBase("x")[i], (i, 0, 2)), [sp.IndexedBase("x")])


def test_error_wrong_data_shape():
    w, x = sp.IndexedBase("w", shape=(3,)), sp.IndexedBase("x", shape=(3, 2))
    fn = _compile(sp.Sum(w[i] * x[i, 1], (i, 0, 2)), [w], [x])
    with pytest.raises(gradc.GradcError, match=r"data x: expected shape \(n, 3, 2\)"):
        fn.value([np.ones(3)], np.ones((4, 2, 3)))
    with pytest.raises(gradc.GradcError, match=r"params w: expected shape \(3,\)"):
        fn.value([np.ones(4)], np.ones((4, 3, 2)))


def test_error_free_index_left_over():
    x = sp.IndexedBase("x", shape=(3,))
    _err(sp.tanh(x[i]), [x], match=r"free index i in x\[i\]")
    _err(sp.Sum(x[i] * x[j], (i, 0, 2)), [x], match=r"free index j")


def test_error_backwards_range():
    x = sp.IndexedBase("x", shape=(5,))
    _err(sp.Sum(sp.Sum(x[m], (m, 0, j - 2)), (j, 0, 4)), [x], match=r"runs backwards")


def test_error_indexedbase_without_indices():
    x, y = sp.IndexedBase("x", shape=(3,)), sp.IndexedBase("y", shape=(2,))
    _err(sp.Sum(x[i], (i, 0, 2)) * y, [x, y], match=r"IndexedBase y used without indices")


# --------------------------------------------------------------------------------------
# contractions: nests that are matrix products run as np.dot (every layout)


@pytest.mark.parametrize("spec", ["ij,jk->ik", "ij,jk->ki", "ji,jk->ik", "ij,kj->ik",
                                  "ijl,jl->i", "j,ij->i", "i,i->", "ij,j*->i",
                                  "j*,ij->i"])
def test_contractions_match_einsum(spec):
    """A star marks the operand that is data (one per example, batched): with the example
    index outermost it is still one matrix product over the whole batch."""
    ins, out = spec.split("->")
    sa, sb = ins.split(",")
    da, db = sa.endswith("*"), sb.endswith("*")
    sa, sb = sa.rstrip("*"), sb.rstrip("*")
    ext = {"i": 3, "j": 4, "k": 2, "l": 5}
    sym = {s: sp.Symbol(s, integer=True) for s in ext}
    A = sp.IndexedBase("A", shape=tuple(ext[s] for s in sa))
    B = sp.IndexedBase("B", shape=tuple(ext[s] for s in sb))
    y = sp.Symbol("y")
    summed = [s for s in ext if (s in sa or s in sb) and s not in out]
    body = A[tuple(sym[s] for s in sa)] * B[tuple(sym[s] for s in sb)]
    term = sp.Sum(body, *[(sym[s], 0, ext[s] - 1) for s in summed])
    C = sp.IndexedBase("C", shape=tuple(ext[s] for s in out) or (1,))
    if out:  # reduce the vector or matrix result with a weighted sum of its squares
        value = sp.Sum(C[tuple(sym[s] for s in out)] * term ** 2,
                       *[(sym[s], 0, ext[s] - 1) for s in out])
    else:
        value = C[0] * term ** 2
    data = [a for a, d in ((A, da), (B, db)) if d] or [y]
    wrt = [a for a, d in ((A, da), (B, db)) if not d] + [C]
    loss = value * (y if data == [y] else 1)
    fn = _compile(loss, wrt, data)
    assert "as a matrix product" in fn.source
    P = _params(wrt)
    n = 4
    vals = {}
    it = iter(P)
    for a, d, sub in ((A, da, sa), (B, db, sb)):
        vals[a] = RNG.normal(size=(n, *(ext[t] for t in sub))) if d else next(it)
    Cv = next(it)
    Y = RNG.normal(size=n)
    ea = ("n" if da else "") + sa
    eb = ("n" if db else "") + sb
    t = np.einsum(f"{ea},{eb}->{'n' if da or db else ''}{out}", vals[A], vals[B])
    if not (da or db):
        t = np.broadcast_to(t, (n, *t.shape))
    per = np.einsum(f"{out},n{out}->n", Cv, t ** 2) if out else Cv[0] * t ** 2
    args = [vals[a] for a in data] if data != [y] else [Y]
    want = np.mean(per * (Y if data == [y] else 1))
    assert fn.value(P, *args) == pytest.approx(want, rel=1e-12)
    check_grads(fn, P, *args)


# --------------------------------------------------------------------------------------
# gradc.nn's indexed layers


def test_nn_conv2d_and_locally_connected_match_numpy():
    x = sp.IndexedBase("x", shape=(7, 7, 2))
    K = sp.IndexedBase("K", shape=(3, 3, 2, 4))
    conv = nn.conv2d(x, K, stride=2)
    assert conv.shape == (3, 3, 4)
    W = sp.IndexedBase("W", shape=(3, 3, 3, 3, 2, 4))
    lc = nn.locally_connected(x, W, 3, stride=2)
    a, b_ = sp.symbols("a b")
    loss = sp.Sum(sp.tanh(a * conv[i, j, c]) + b_ * lc[i, j, c] ** 2, (i, 0, 2), (j, 0, 2),
                  (c, 0, 3))
    fn = _compile(loss, [K, W, a, b_], [x])
    P = [RNG.normal(size=(3, 3, 2, 4)) * 0.3, RNG.normal(size=(3, 3, 3, 3, 2, 4)) * 0.3, 0.7, 0.2]
    X = RNG.normal(size=(3, 7, 7, 2))
    win = np.empty((3, 3, 3, 3, 3, 2))  # (n, output row, output column, window row, column, C_in)
    for p in range(3):
        for r in range(3):
            win[:, p, r] = X[:, 2 * p:2 * p + 3, 2 * r:2 * r + 3, :]
    zc = np.einsum("nijabd,abdc->nijc", win, P[0])
    zl = np.einsum("nijabd,ijabdc->nijc", win, P[1])
    want = np.mean(np.sum(np.tanh(P[2] * zc) + P[3] * zl ** 2, axis=(1, 2, 3)))
    assert fn.value(P, X) == pytest.approx(want, rel=1e-12)
    check_grads(fn, P, X)


def _padded_net(H, C, p, stride=1):
    """A convolution with zero padding ``p`` and its twin on data padded by hand."""
    x = sp.IndexedBase("x", shape=(H, H, 2))
    xp = sp.IndexedBase("xp", shape=(H + 2 * p, H + 2 * p, 2))
    K = sp.IndexedBase("K", shape=(3, 3, 2, C))
    a = sp.Symbol("a")

    def loss(img, pad):
        z = nn.conv2d(img, K, stride=stride, padding=pad)
        o = z.shape[0]
        return sp.Sum(sp.log(1 + sp.exp(a * z[i, j, c])), (i, 0, o - 1), (j, 0, o - 1),
                      (c, 0, C - 1)), o

    return x, xp, K, a, loss(x, p), loss(xp, 0)


def test_conv2d_padding_matches_padded_data():
    """``padding=p`` is the convolution of the image surrounded by p zeros: the value and
    gradient equal those of the same network on data padded with ``np.pad``, under numba
    and without (strides too), against the sympy oracle, and by differences."""
    for p, stride in ((1, 1), (2, 2)):
        x, xp, K, a, (loss, o), (loss2, o2) = _padded_net(5, 3, p, stride)
        assert o == o2 == (5 + 2 * p - 3) // stride + 1
        P = [RNG.normal(size=(3, 3, 2, 3)) * 0.4, 0.8]
        X = RNG.normal(size=(4, 5, 5, 2))
        Xp = np.pad(X, ((0, 0), (p, p), (p, p), (0, 0)))
        ref = _compile(loss2, [K, a], [xp]).value_and_grad(P, Xp)
        for jit in (False, True):
            fn = _compile(loss, [K, a], [x], jit=jit)
            v, g = fn.value_and_grad(P, X)
            assert v == pytest.approx(ref[0], rel=1e-13)
            for got, want in zip(g, ref[1]):
                np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
        check_against_sympy(_compile(loss, [K, a], [x]), P, X[:2], rtol=1e-10)
        check_grads(fn, P, X)
    assert "pad(x, 1, 1, 0)[" in str(nn.conv2d(x, K, padding=1)[i, j, c])


def test_padded_parameter_gets_its_interior_cotangent():
    """A padded *parameter* (``nn.pad`` of a wrt array): its gradient is the padded
    array's cotangent without the border; a locally connected layer with padding on
    data; the sympy oracle sees the padding as zeros."""
    w = sp.IndexedBase("w", shape=(4, 3))
    x = sp.IndexedBase("x", shape=(6, 5))
    wp = nn.pad(w, (1, 1))
    assert wp.shape == (6, 5) and nn.pad(w, 0) is w
    loss = sp.Sum(sp.tanh(wp[i, j] * x[i, j]) + wp[i, j] ** 2 * x[i, j], (i, 0, 5), (j, 0, 4))
    P = [RNG.normal(size=(4, 3))]
    X = RNG.normal(size=(3, 6, 5))
    fn = _compile(loss, [w], [x])
    check_against_sympy(fn, P, X, rtol=1e-10)
    inner = X[:, 1:5, 1:4]
    want = np.mean(np.sum(np.tanh(P[0] * inner) + P[0] ** 2 * inner, axis=(1, 2)))
    assert fn.value(P, X) == pytest.approx(want, rel=1e-13)
    g = np.mean((1 - np.tanh(P[0] * inner) ** 2) * inner + 2 * P[0] * inner, axis=0)
    np.testing.assert_allclose(fn.grad(P, X)[0], g, rtol=1e-12)
    img = sp.IndexedBase("img", shape=(4, 4))
    W = sp.IndexedBase("W", shape=(4, 4, 3, 3, 2))
    lc = nn.locally_connected(img, W, 3, padding=1)
    assert lc.shape == (4, 4, 2)
    lloss = sp.Sum(lc[i, j, c] ** 2, (i, 0, 3), (j, 0, 3), (c, 0, 1))
    fl = _compile(lloss, [W], [img])
    check_against_sympy(fl, [RNG.normal(size=(4, 4, 3, 3, 2))], RNG.normal(size=(2, 4, 4)),
                        rtol=1e-10)


def test_nn_layer_errors():
    x = sp.IndexedBase("x", shape=(5, 5))
    with pytest.raises(gradc.GradcError, match=r"expected \(3, 3, 'C_out'\)"):
        nn.conv2d(x, sp.IndexedBase("K", shape=(3, 3)))
    with pytest.raises(gradc.GradcError, match="padding must be a non-negative integer"):
        nn.conv2d(x, sp.IndexedBase("K", shape=(3, 3, 4)), padding=-1)
    with pytest.raises(gradc.GradcError, match="padding must be"):
        nn.conv2d(x, sp.IndexedBase("K", shape=(3, 3, 4)), padding=(1, 1, 1))
    with pytest.raises(gradc.GradcError, match="one per axis"):
        nn.pad(x, (1, 2, 3))
    with pytest.raises(gradc.GradcError, match="already padded"):
        nn.pad(nn.pad(x, 1), 1)
    with pytest.raises(gradc.GradcError, match="IndexedBase with a shape"):
        nn.pad(sp.Symbol("x"), 1)
    with pytest.raises(gradc.GradcError, match="does not fit"):
        nn.locally_connected(x, sp.IndexedBase("W", shape=(1, 1, 6, 6, 2)), 6)
    with pytest.raises(gradc.GradcError, match="index it with 3 indices"):
        nn.conv2d(x, sp.IndexedBase("K", shape=(3, 3, 4)))[i, j]


def test_error_non_integer_bound():
    x = sp.IndexedBase("x", shape=(5,))
    _err(sp.Sum(x[i], (i, 0, sp.Rational(5, 2))), [x], match="not an integer")


# --------------------------------------------------------------------------------------
# matrix forms that lower onto loops: slices and explicit matrices


def test_matrix_slices_and_explicit_matrices():
    x = sp.MatrixSymbol("x", 5, 1)
    W = sp.MatrixSymbol("W", 2, 5)
    w, b_ = sp.symbols("w b")
    X = RNG.normal(size=(4, 5))
    cases = [
        (w * nn.sum_squares(x[1:, :] - x[:-1, :]) + b_ * nn.sum(x[::2, :]), [w, b_], [0.3, 0.2]),
        (nn.sum(nn.tanh(sp.Matrix([w * x[0, 0], b_ * x[1, 0] + w]))), [w, b_], [0.3, 0.2]),
        (nn.sum_squares(W[:, 1:3] * x[1:3, :]) + nn.sum(W[1:, ::2]), [W],
         [RNG.normal(size=(2, 5))]),
    ]
    for loss, wrt, P in cases:
        fn = _compile(loss, wrt, [x])
        check_against_sympy(fn, P, X, rtol=1e-10)
        check_grads(fn, P, X)
    d = x[1:, :] - x[:-1, :]
    fn = _compile(w * nn.sum_squares(d), [w], [x])
    assert fn.value([1.0], X) == pytest.approx(np.mean(np.sum(np.diff(X, axis=1) ** 2, 1)))


# --------------------------------------------------------------------------------------
# second order: exact structural sparsity of loop nests, and sparse Hessians


def _sympy_pattern(fn):
    from gradc.testing import explicit

    expr, elements = explicit(fn.expr)
    syms = [e for s in fn.wrt for e in (elements[s] if s in elements else [s])]
    real = {s: sp.Symbol(s.name, real=True) for s in expr.free_symbols}
    expr = expr.xreplace(real)
    syms = [real.get(s, s) for s in syms]
    first = [sp.diff(expr, s) for s in syms]
    d2 = [[sp.diff(f, t) for t in syms] for f in first]
    # gradc's conventions: derivatives of steps are 0 (relu'' = 0)
    d2 = [[d.replace(lambda e: isinstance(e, sp.DiracDelta), lambda e: sp.S.Zero) for d in row]
          for row in d2]
    return np.array([[d != 0 for d in row] for row in d2])


@pytest.mark.parametrize("name", ["ridge", "mlp", "triangular", "strided_conv",
                                  "offsets_and_delta", "nested_hoist"])
def test_hessian_pattern_matches_sympy(name):
    loss, wrt, data, *_ = MODELS[name]()
    fn = _compile(loss, wrt, data)
    got = fn.hessian_sparsity().toarray()
    np.testing.assert_array_equal(got, _sympy_pattern(fn))


def test_indexed_chain_sparse_hessian():
    N = 400
    xs = sp.IndexedBase("xs", shape=(N,))
    chain = sp.Sum(100 * (xs[i + 1] - xs[i] ** 2) ** 2 + (1 - xs[i]) ** 2, (i, 0, N - 2))
    fn = _compile(chain, [xs])
    pat = fn.hessian_sparsity()
    assert pat.nnz == 3 * N - 2  # tridiagonal
    p = [RNG.uniform(0.5, 1.5, N)]
    H = fn.hessian(p, sparse=True)
    v = RNG.normal(size=N)
    np.testing.assert_allclose(H @ v, fn.hvp(p, [v])[0], rtol=1e-12)
    d = np.diag(H.toarray())
    want = 1200 * p[0] ** 2 - 400 * np.append(p[0][1:], 0) + 2  # from term i
    want[1:] += 200  # from term i - 1
    want[-1] = 200
    np.testing.assert_allclose(d, want, rtol=1e-12)


# --------------------------------------------------------------------------------------
# review findings: printing, integer powers, models without sums, Piecewise conditions


def _review_cases():
    w, x = sp.IndexedBase("w", shape=(4,)), sp.IndexedBase("x", shape=(4,))
    y, b = sp.symbols("y b")
    W, X, Y = RNG.normal(size=4), RNG.normal(size=(5, 4)), RNG.normal(size=5)
    return [
        (sp.Sum(sp.Mod(j, 2) * w[j], (j, 0, 3)) * y, [w], [y], [W], [Y]),
        (sp.Sum(2 ** (-j) * w[j] * x[j], (j, 0, 3)) ** 2, [w], [x], [W], [X]),
        (w[0] ** 2 + w[3] * y, [w], [y], [W], [Y]),
        (w[0] * x[0], [w], [x], [W], [X]),
        ((b * x[1] - y) ** 2, [b], [x, y], [0.3], [X, Y]),
        (sp.Sum(sp.Piecewise((w[j] ** 2, x[j] > 0), (w[j], True)), (j, 0, 3)), [w], [x], [W], [X]),
        (sp.Sum(sp.Piecewise((w[j] ** 2, y > 0), (w[j], True)), (j, 0, 3)), [w], [y], [W], [Y]),
    ]


@pytest.mark.parametrize("k", range(7))
def test_review_cases_against_sympy(k):
    loss, wrt, data, P, args = _review_cases()[k]
    fn = _compile(loss, wrt, data)
    check_against_sympy(fn, P, *args)
    check_grads(fn, P, *args)


def test_negative_integer_power_of_an_index_under_numba():
    loss, wrt, data, P, args = _review_cases()[1]
    f1 = gradc.compile(loss, wrt=wrt, data=data)
    f2 = _compile(loss, wrt, data)
    assert f1.value(P, *args) == pytest.approx(f2.value(P, *args), rel=1e-13)


def test_fused_parameter_loops_read_transposes_out_of_place():
    """Loop nests that map whole parameter-shaped arrays fuse into one loop per shape; a
    nest reading a value of that loop at another point (a transpose) must not join it,
    nor write over an array it reads off the point.  Under numba too, where the counts of
    those loops are hidden from LLVM (``_rt.opaque``)."""
    Q = sp.IndexedBase("Q", shape=(6, 6))
    x = sp.IndexedBase("x", shape=(6,))
    inner = sp.Sum(sp.exp(Q[k, j]) * Q[j, k] + sp.tanh(Q[j, k]) * sp.exp(Q[k, j]), (j, 0, 5))
    losses = [sp.Sum(x[k] * inner, (k, 0, 5)) ** 2,
              sp.Sum(sp.tanh(Q[j, k]) * sp.exp(Q[k, j]) * x[k] + sp.exp(Q[j, k]) * x[j],
                     (k, 0, 5), (j, 0, 5)) ** 2,
              sp.Sum(sp.exp(Q[j, k]) * x[j] + sp.exp(Q[k, j]) * sp.tanh(Q[j, k]) * x[k],
                     (k, 0, 5), (j, 0, 5)) ** 2]
    # its own seed: drawn from the module's RNG, the point depended on how many draws the
    # tests before it made, and at some points the central difference along a direction
    # that nearly cancels misses rtol 1e-6 by rounding (the sympy oracle agrees to 1e-10)
    rng = np.random.default_rng(563)
    P = [rng.normal(size=(6, 6)) * 0.5]
    X = rng.normal(size=(7, 6))
    for loss in losses:
        for jit in (False, True):
            fn = gradc.compile(loss, wrt=[Q], data=[x], jit=jit)
            check_against_sympy(fn, P, X, rtol=1e-10)
            check_grads(fn, P, X)
        assert "_rt.opaque(6)" in fn.source


def test_pointwise_nests_join_a_fused_loop_only_at_its_point():
    """The fusion rule itself: a map nest reading a value of the loop it would join at
    another point (a transpose) does not join it; read at the point it does; a column
    ``(K, 1)`` and a vector ``(K,)`` of a batch are the same point."""
    from gradc.codegen.arrays import _joins, _pointwise
    from gradc.ir import Builder
    from gradc.prims.loop import loop
    from gradc.prims.scalar import placeholder as ph

    b = Builder()
    A = b.add_input("param", "A", 0, (4, 4), False)
    dims = ((k, 0, 3), (j, 0, 3))
    a = loop(b, dims, [A], [(k, j)], sp.exp(ph(0)), (4, 4), (k, j))
    loop(b, dims, [a, A], [(j, k), (k, j)], ph(0) * ph(1), (4, 4), (k, j))
    loop(b, dims, [a, A], [(k, j), (j, k)], ph(0) * ph(1), (4, 4), (k, j))
    ea, off, on = b.eqns
    assert all(_pointwise(e) for e in b.eqns)
    assert not _joins(off, {a.id}) and _joins(on, {a.id})
    x = b.add_input("data", "x", 0, (4,), True)
    col = loop(b, ((k, 0, 3),), [x], [(k,)], sp.tanh(ph(0)), (4, 1), (k, 0))
    vec = loop(b, ((k, 0, 3),), [col], [(k, 0)], 2 * ph(0), (4,), (k,))
    ecol, evec = b.eqns[3:]
    assert vec is not None and _pointwise(ecol) and _pointwise(evec)
    assert _joins(evec, {col.id})


def test_batch_sums_over_two_result_axes_vectorise_their_inner_loop():
    """A gradient summed over the batch whose two loops both walk result axes (``mu``
    and ``A``, (2, 16), in a mixture-like model) hides its inner count of 16 from LLVM
    (which would unroll it and vectorise the outer loop with gathers); the squared norm
    over 16 coordinates per example runs as four interleaved sums.  Same values, under
    numba and without, against the sympy oracle and differences."""
    K, d = 2, 16
    A = sp.IndexedBase("A", shape=(K, d))
    mu = sp.IndexedBase("mu", shape=(K, d))
    x = sp.IndexedBase("x", shape=(d,))
    inner = sp.Sum((A[k, j] * x[j] - mu[k, j]) ** 2, (j, 0, d - 1))
    loss = sp.log(sp.Sum(sp.exp(-inner / d), (k, 0, K - 1)))
    rng = np.random.default_rng(11)
    P = [rng.normal(size=(K, d)), rng.normal(size=(K, d)) * 0.5]
    X = rng.normal(size=(5, d))
    got = []
    for jit in (False, True):
        fn = gradc.compile(loss, wrt=[A, mu], data=[x], reduce="sum", jit=jit)
        check_against_sympy(fn, P, X, rtol=1e-10)
        check_grads(fn, P, X)
        got.append(fn.value_and_grad(P, X))
    src = fn.source[fn.source.index("def value_and_grad"):]
    src = src[:src.index("\ndef ")]
    assert "acc0 = acc1 = acc2 = acc3 = 0.0" in src
    assert "in range(0, ext16):" in src and "_rt.opaque(16)" in src
    assert got[0][0] == pytest.approx(got[1][0], rel=1e-13)
    for a, b in zip(got[0][1], got[1][1]):
        np.testing.assert_allclose(a, b, rtol=1e-12)


def test_kronecker_delta_of_an_index_and_integer_data():
    """``KroneckerDelta(k, label)`` with ``label`` integer data keeps each example's own
    term (a one-hot written with indices); its derivative is 0 (piecewise constant), so
    the loop rules need no partial by the label.  Against numpy, the sympy oracle and
    differences, under numba and without."""
    from gradc.prims import partials, placeholder

    a0, a1, a2 = (placeholder(t) for t in range(3))
    assert partials(sp.KroneckerDelta(a0, a1) * a2 ** 2, 3) == \
        (0, 0, 2 * a2 * sp.KroneckerDelta(a0, a1))
    w = sp.IndexedBase("w", shape=(4,))
    x = sp.Symbol("x")
    label = sp.Symbol("label", integer=True)
    loss = sp.Sum(sp.KroneckerDelta(k, label) * (w[k] * x - 1) ** 2 + w[k] ** 2 / 8, (k, 0, 3))
    P = [RNG.normal(size=4)]
    X, L = RNG.normal(size=6), np.array([0, 3, 1, 3, 2, 0])
    want_v = np.mean((P[0][L] * X - 1) ** 2) + np.sum(P[0] ** 2) / 8
    want_g = np.zeros(4)
    np.add.at(want_g, L, 2 * (P[0][L] * X - 1) * X / len(X))
    want_g += P[0] / 4
    for jit in (False, True):
        fn = _compile(loss, [w], [x, label], jit=jit)
        v, (g,) = fn.value_and_grad(P, X, L)
        assert v == pytest.approx(want_v, rel=1e-13)
        np.testing.assert_allclose(g, want_g, rtol=1e-12)
    check_against_sympy(fn, P, X, L, rtol=1e-10)
    check_grads(fn, P, X, L)


def test_per_example_maps_run_as_one_loop_over_rows():
    """A map over a per-example array reading a bias by its last index (the ReLU of a
    convolution, ``Max(z[i, j, c] + B[c], 0)``, and its derivative) runs as one loop over
    the leading axes with the last one inside it, its count hidden from LLVM (which
    vectorised the loop around a constant 8 with gathers); same values under numba and
    without, against the sympy oracle and differences."""
    x = sp.IndexedBase("x", shape=(3, 3))
    K = sp.IndexedBase("K", shape=(2, 2, 8))
    B = sp.IndexedBase("B", shape=(8,))
    V = sp.IndexedBase("V", shape=(2, 2, 2, 8))
    z = sp.Sum(x[i + di, j + dj] * K[di, dj, c], (di, 0, 1), (dj, 0, 1)) + B[c]
    logit = sp.Sum(V[k, i, j, c] * sp.Max(z, 0), (i, 0, 1), (j, 0, 1), (c, 0, 7))
    loss = nn.logsumexp(sp.FunctionMatrix(2, 1, sp.Lambda((k, q), logit)))
    P = [RNG.normal(size=(2, 2, 8)), RNG.normal(size=8), RNG.normal(size=(2, 2, 2, 8))]
    X = RNG.normal(size=(4, 3, 3))
    got = []
    for jit in (False, True):
        fn = _compile(loss, [K, B, V], [x], jit=jit)
        got.append(fn.value_and_grad(P, X))
    src = fn.source[fn.source.index("def value_and_grad"):]
    src = src[:src.index("\ndef ")]
    assert src.count("one loop over 4 rows of 8") == 2 and "in range(0, ext8):" in src
    assert got[0][0] == pytest.approx(got[1][0], rel=1e-13)
    for a, b in zip(got[0][1], got[1][1]):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    check_against_sympy(fn, P, X, rtol=1e-10)
    check_grads(fn, P, X)
