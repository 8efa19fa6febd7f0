"""Tests for gradc.optim: schedules, clipping, SGD, Adam, RMSprop and the fit loop."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gradc.errors import GradcError
from gradc.optim import (SGD, Adam, History, Optimizer, RMSprop, _adam_update, _rmsprop_update,
                         _sgd_update, clip_by_global_norm, constant, cosine, fit, staircase)


# ---------------------------------------------------------------- schedules
def test_constant():
    s = constant(0.3)
    assert [s(0), s(1), s(10**9)] == [0.3, 0.3, 0.3]
    assert isinstance(s(np.int64(5)), float)
    assert repr(s) == "constant(lr=0.3)"
    assert s == constant(0.3) and hash(s) == hash(constant(0.3))
    with pytest.raises(AttributeError):
        s.lr = 1.0  # frozen


def test_staircase_at_boundaries():
    s = staircase(0.5, [3, 7, 8], factor=0.1)
    expect = {0: 0.5, 2: 0.5, 3: 0.5 * 0.1, 6: 0.5 * 0.1, 7: 0.5 * 0.1**2,
              8: 0.5 * 0.1**3, 100: 0.5 * 0.1**3}
    for step, value in expect.items():
        assert s(step) == value, step
    assert repr(s) == "staircase(lr=0.5, boundaries=(3, 7, 8), factor=0.1)"
    assert staircase(1.0, [])(50) == 1.0
    assert staircase(1.0, [0], factor=0.5)(0) == 0.5  # boundary 0 decays the first step


def test_cosine_values():
    s = cosine(0.4, 10)
    assert s(0) == 0.4
    assert s(5) == pytest.approx(0.2, rel=1e-15)
    assert s(10) == 0.0
    assert s(11) == 0.0 and s(10**6) == 0.0
    f = cosine(1.0, 7, final_lr=0.25)
    assert f(0) == pytest.approx(1.0, rel=1e-15)
    assert f(7) == 0.25 and f(100) == 0.25
    vals = [f(k) for k in range(9)]
    assert all(a > b for a, b in zip(vals[:7], vals[1:8]))  # strictly decreasing in the decay
    odd = cosine(2.0, 4, final_lr=1.0)
    assert odd(1) == pytest.approx(1.0 + 0.5 * (1 + math.cos(math.pi / 4)), rel=1e-15)
    assert repr(f) == "cosine(lr=1.0, total_steps=7, final_lr=0.25)"


@pytest.mark.parametrize("make, match", [
    (lambda: constant(0.0), "lr must be positive"),
    (lambda: constant(-1), "lr must be positive"),
    (lambda: constant(float("nan")), "lr must be finite"),
    (lambda: constant("0.1"), "lr must be a real number"),
    (lambda: staircase(0.1, [5, 3]), "boundaries must be sorted"),
    (lambda: staircase(0.1, [3, 3]), "boundaries must be sorted"),
    (lambda: staircase(0.1, [-1]), "boundaries must be non-negative"),
    (lambda: staircase(0.1, [1.5]), "boundaries must be a sequence of integers"),
    (lambda: staircase(0.1, [1], factor=0), "factor must be positive"),
    (lambda: cosine(0.1, 0), "total_steps must be > 0"),
    (lambda: cosine(0.1, 2.5), "total_steps must be an integer"),
    (lambda: cosine(0.1, 10, final_lr=0.2), "final_lr must be <= lr"),
    (lambda: cosine(0.1, 10, final_lr=-0.1), "final_lr must be non-negative"),
    (lambda: constant(0.1)(-1), "step must be >= 0"),
    (lambda: constant(0.1)(1.0), "step must be an integer"),
])
def test_schedule_validation(make, match):
    with pytest.raises(GradcError, match=match):
        make()


# ---------------------------------------------------------------- clipping
finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)
arrays = hnp.arrays(np.float64, hnp.array_shapes(min_dims=1, max_dims=3, max_side=6), elements=finite)
max_norms = st.floats(1e-3, 1e4)


@settings(max_examples=150, deadline=None)
@given(g=arrays, max_norm=max_norms)
def test_clip_bounds_norm(g, max_norm):
    original = g.copy()
    c, norm = clip_by_global_norm(g, max_norm)
    true = math.hypot(*g.ravel())  # exact to rounding, no under/overflow
    assert norm == pytest.approx(true, rel=1e-12)
    np.testing.assert_array_equal(g, original)  # input untouched
    assert c is not g and c.shape == g.shape and c.dtype == np.float64
    after = math.hypot(*c.ravel())
    assert after <= max_norm * (1 + 1e-12)
    if true > max_norm:
        assert after == pytest.approx(max_norm, rel=1e-12)
        np.testing.assert_allclose(c, g * (max_norm / true), rtol=1e-12, atol=0)
    else:
        np.testing.assert_array_equal(c, g)


@settings(max_examples=80, deadline=None)
@given(gs=st.lists(arrays, min_size=1, max_size=4), max_norm=max_norms)
def test_clip_list_global_norm(gs, max_norm):
    cs, norm = clip_by_global_norm(gs, max_norm)
    true = math.hypot(*np.concatenate([a.ravel() for a in gs]))
    assert norm == pytest.approx(true, rel=1e-12)
    assert isinstance(cs, list) and [c.shape for c in cs] == [g.shape for g in gs]
    after = math.hypot(*np.concatenate([c.ravel() for c in cs]))
    assert after <= max_norm * (1 + 1e-12)
    if true > max_norm:
        assert after == pytest.approx(max_norm, rel=1e-12)


def test_clip_extreme_magnitudes_and_errors():
    big = np.full(4, 1e200)  # squares overflow
    c, norm = clip_by_global_norm(big, 1.0)
    assert norm == pytest.approx(2e200, rel=1e-14)
    np.testing.assert_allclose(c, 0.5, rtol=1e-14)
    tiny = np.array([3e-170, 4e-170])  # squares underflow
    assert clip_by_global_norm(tiny, 1.0)[1] == pytest.approx(5e-170, rel=1e-14)
    assert clip_by_global_norm(np.zeros(3), 1.0)[1] == 0.0
    with pytest.raises(GradcError, match="NaN or inf"):
        clip_by_global_norm(np.array([1.0, np.nan]), 1.0)
    with pytest.raises(GradcError, match="NaN or inf"):
        clip_by_global_norm([np.ones(2), np.array([np.inf])], 1.0)
    with pytest.raises(GradcError, match="max_norm must be positive"):
        clip_by_global_norm(np.ones(2), 0.0)
    with pytest.raises(GradcError, match=r"grad\[1\] must be a real array"):
        clip_by_global_norm([np.ones(2), np.ones(2, complex)], 1.0)


# ---------------------------------------------------------------- SGD
def test_kernel_is_numba():
    from numba.core.registry import CPUDispatcher
    assert isinstance(_sgd_update, CPUDispatcher)
    p, g = np.ones(3), np.full(3, 2.0)
    _sgd_update(p, g, np.empty(0), 0.5, 0.0, False, 0.0, 1.0)
    np.testing.assert_array_equal(p, [0.0, 0.0, 0.0])


def test_plain_step_exact():
    rng = np.random.default_rng(1)
    p = rng.normal(size=50)
    g = rng.normal(size=50)
    expect = p - 0.037 * g
    opt = SGD(lr=0.037)
    assert opt.step(p, g) == 0.037
    np.testing.assert_array_equal(p, expect)
    assert opt.step_count == 1 and opt.state == {"step_count": 1, "velocity": None}


@pytest.mark.parametrize("nesterov", [False, True])
def test_momentum_matches_recurrence(nesterov):
    rng = np.random.default_rng(2)
    p = rng.normal(size=20)
    ref, v = p.copy(), np.zeros(20)
    lr, mu, wd = 0.05, 0.8, 0.01
    opt = SGD(lr=lr, momentum=mu, nesterov=nesterov, weight_decay=wd)
    for _ in range(6):
        g = rng.normal(size=20)
        d = g + wd * ref
        v = mu * v + d
        ref = ref - lr * ((d + mu * v) if nesterov else v)
        opt.step(p, g)
    np.testing.assert_allclose(p, ref, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(opt.state["velocity"], v, rtol=1e-14, atol=1e-15)
    opt.reset()
    assert opt.step_count == 0 and opt.state["velocity"] is None


def test_weight_decay_single_step():
    p = np.array([1.0, -2.0, 3.0])
    g = np.array([0.5, 0.5, -1.0])
    expect = p - 0.1 * (g + 0.2 * p)
    SGD(lr=0.1, weight_decay=0.2).step(p, g)
    np.testing.assert_allclose(p, expect, rtol=1e-15)
    np.testing.assert_allclose(p, [0.93, -2.01, 3.04], rtol=1e-14)


def test_clip_norm_in_step_and_schedule():
    p = np.zeros(2)
    opt = SGD(lr=staircase(1.0, [1], factor=0.5), clip_norm=1.0)
    assert opt.step(p, np.array([30.0, 40.0])) == 1.0
    np.testing.assert_allclose(p, [-0.6, -0.8], rtol=1e-15)
    assert opt.step(p, np.array([0.3, 0.4])) == 0.5  # below the bound: unscaled, decayed lr
    np.testing.assert_allclose(p, [-0.75, -1.0], rtol=1e-15)
    assert opt.lr_at(0) == 1.0 and opt.lr_at(5) == 0.5
    assert "staircase(lr=1.0" in repr(opt) and "clip_norm=1.0" in repr(opt)


def test_list_params_updated_in_place():
    rng = np.random.default_rng(3)
    shapes = [(3,), (2, 3), (4, 1, 2), ()]
    ps = [rng.normal(size=s) for s in shapes]
    ps[3] = np.array(1.5)
    ids = [id(p) for p in ps]
    grads = [[rng.normal(size=s) for s in shapes] for _ in range(3)]
    refs = [p.copy() for p in ps]
    vs = [np.zeros(s) for s in shapes]
    opt = SGD(lr=0.1, momentum=0.5)
    for gs in grads:
        opt.step(ps, gs)
        for k in range(len(shapes)):
            vs[k] = 0.5 * vs[k] + gs[k]
            refs[k] = refs[k] - 0.1 * vs[k]
    assert [id(p) for p in ps] == ids
    for p, r, v, s in zip(ps, refs, vs, shapes):
        assert p.shape == s
        np.testing.assert_allclose(p, r, rtol=1e-14)
    for v, ref_v in zip(opt.state["velocity"], vs):
        np.testing.assert_allclose(v, ref_v, rtol=1e-14)


def test_float32_grad_is_converted():
    p = np.ones(3)
    SGD(lr=1.0).step(p, np.full(3, 0.5, dtype=np.float32))
    np.testing.assert_array_equal(p, 0.5)


@pytest.mark.parametrize("make", [lambda: SGD(lr=0.1, momentum=0.9, nesterov=True),
                                  lambda: Adam(lr=0.01, weight_decay=0.01, decoupled=True),
                                  lambda: RMSprop(lr=0.01, momentum=0.5)])
def test_float32_params_are_updated_in_place_with_float64_state(make):
    """float32 parameters (of a dtype="float32" function): updated in place, state and
    arithmetic in float64, so after 20 steps they are the float64 run's parameters rounded
    to float32 (within a few float32 epsilons), and the state is float64."""
    rng = np.random.default_rng(9)
    p64 = [rng.normal(size=5), rng.normal(size=(2, 3))]
    p32 = [p.astype(np.float32) for p in p64]
    p64 = [p.astype(np.float32).astype(np.float64) for p in p64]  # the same start
    ids = [id(p) for p in p32]
    o64, o32 = make(), make()
    for _ in range(20):
        g = [rng.normal(size=p.shape) for p in p64]
        o64.step(p64, g)
        o32.step(p32, [a.astype(np.float32) for a in g])
    assert [id(p) for p in p32] == ids and all(p.dtype == np.float32 for p in p32)
    for a, b in zip(p32, p64):
        np.testing.assert_allclose(a, b, rtol=0, atol=64 * np.finfo(np.float32).eps * np.abs(b).max())
    state = [v for bufs in o32.state.values() if isinstance(bufs, list) for v in bufs]
    assert state and all(v.dtype == np.float64 for v in state)


def test_sgd_validation():
    with pytest.raises(GradcError, match=r"params\[1\] with shape \(4, 2\) is not C-contiguous"):
        SGD().step([np.ones(2), np.ones((4, 4))[:, ::2]], [np.ones(2), np.ones((4, 2))])
    with pytest.raises(GradcError, match=r"params\[0\] with shape \(3,\) has dtype float16; "
                       "need float64 or float32"):
        SGD().step([np.ones(3, np.float16)], [np.ones(3)])
    with pytest.raises(GradcError, match="params has dtype int64|params with shape"):
        SGD().step(np.arange(3), np.ones(3))
    ro = np.ones(2)
    ro.flags.writeable = False
    with pytest.raises(GradcError, match="read-only"):
        SGD().step(ro, np.ones(2))
    with pytest.raises(GradcError, match=r"grad\[0\] has shape \(3,\), but params\[0\] has shape \(2,\)"):
        SGD().step([np.ones(2)], [np.ones(3)])
    with pytest.raises(GradcError, match="does not match params"):
        SGD().step([np.ones(2), np.ones(2)], [np.ones(2)])
    buf = np.ones(6)
    with pytest.raises(GradcError, match=r"params\[0\] and params\[2\] share memory"):
        SGD().step([buf[:4], np.ones(1), buf[3:]], [np.ones(4), np.ones(1), np.ones(3)])
    np.testing.assert_array_equal(buf, 1.0)
    with pytest.raises(GradcError, match="params is an empty list"):
        SGD().step([], [])
    opt = SGD(momentum=0.5)
    opt.step(np.ones(2), np.ones(2))
    with pytest.raises(GradcError, match="reset"):
        opt.step(np.ones(3), np.ones(3))
    with pytest.raises(GradcError, match="nesterov=True requires momentum"):
        SGD(nesterov=True)
    with pytest.raises(GradcError, match=r"momentum must be in \[0, 1\)"):
        SGD(momentum=1.0)
    with pytest.raises(GradcError, match="weight_decay must be non-negative"):
        SGD(weight_decay=-1e-3)
    with pytest.raises(GradcError, match="clip_norm must be positive"):
        SGD(clip_norm=0)
    with pytest.raises(GradcError, match="lr must be positive"):
        SGD(lr=0)
    with pytest.raises(GradcError, match="schedule returned -1.0 at step 0"):
        SGD(lr=lambda step: -1.0).step(np.ones(1), np.ones(1))


# ---------------------------------------------------------------- fit
def _least_squares(n=120, d=4, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    y = X @ rng.normal(size=d) + 0.1 * rng.normal(size=n)

    def value_and_grad(w, Xb, yb):
        r = Xb @ w - yb
        return 0.5 * float(r @ r) / len(yb), Xb.T @ r / len(yb)

    return X, y, value_and_grad


def test_fit_least_squares_converges():
    X, y, vg = _least_squares()
    w_star = np.linalg.lstsq(X, y, rcond=None)[0]
    w = np.zeros(X.shape[1])
    opt = SGD(lr=cosine(0.1, 80 * 8, final_lr=0.0), momentum=0.5)
    h = fit(vg, w, (X, y), optimizer=opt, epochs=80, batch_size=16, progress=False)
    np.testing.assert_allclose(w, w_star, atol=2e-3)
    assert h.losses.shape == (640,) and h.lrs.shape == (640,) and h.epoch_losses.shape == (80,)
    np.testing.assert_array_equal(h.lrs, [opt.lr_at(k) for k in range(640)])
    assert h.epoch_losses[-1] < 0.1 * h.epoch_losses[0]
    assert not h.stopped_early
    assert repr(h).startswith("History(steps=640, epochs=80, first_loss=")
    # full batch (batch_size=None) with plain gradient descent also reaches lstsq
    w2 = np.zeros(X.shape[1])
    h2 = fit(vg, w2, (X, y), optimizer=SGD(0.5), epochs=200, progress=False)
    assert h2.losses.shape == (200,)
    np.testing.assert_allclose(w2, w_star, atol=1e-8)


def _record_batches(seed, shuffle=True, batch_size=3, n=10, epochs=2):
    seen = []

    def vg(p, idx):
        seen.append(idx.copy())
        return float(idx.sum()), np.zeros_like(p)

    h = fit(vg, np.zeros(1), (np.arange(n),), optimizer=SGD(0.1), epochs=epochs,
            batch_size=batch_size, shuffle=shuffle, seed=seed, progress=False)
    return seen, h


def test_fit_shuffle_deterministic_and_complete():
    a, ha = _record_batches(seed=7)
    b, hb = _record_batches(seed=7)
    c, _ = _record_batches(seed=8)
    assert len(a) == 8 and [len(x) for x in a[:4]] == [3, 3, 3, 1]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    np.testing.assert_array_equal(ha.losses, hb.losses)
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
    for epoch in (a[:4], a[4:]):  # each epoch is a permutation of all rows
        np.testing.assert_array_equal(np.sort(np.concatenate(epoch)), np.arange(10))
    assert not np.array_equal(np.concatenate(a[:4]), np.concatenate(a[4:]))
    ordered, h = _record_batches(seed=7, shuffle=False)
    np.testing.assert_array_equal(np.concatenate(ordered), np.tile(np.arange(10), 2))
    np.testing.assert_allclose(h.epoch_losses, [np.mean([3, 12, 21, 9])] * 2)


def test_fit_nan_loss_raises_with_step():
    calls = []

    def vg(p, x):
        calls.append(1)
        return (np.nan if len(calls) == 4 else 1.0), np.ones_like(p)

    p = np.zeros(2)
    with pytest.raises(GradcError, match=r"loss is nan at step 3 \(epoch 1, batch 1\)") as info:
        fit(vg, p, (np.zeros(6),), optimizer=SGD(0.1), epochs=3, batch_size=3, progress=False)
    np.testing.assert_allclose(p, -0.3)  # three finite steps applied, not the NaN one
    assert info.value.history.losses.tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(GradcError, match="loss is inf at step 0"):
        fit(lambda p: (np.inf, p), np.zeros(1), optimizer=SGD(), progress=False)


def test_fit_callback_early_stop_and_no_data():
    X, y, vg = _least_squares(n=20)
    steps = []

    def cb(step, loss, params):
        steps.append((step, loss))
        return step == 4

    h = fit(vg, np.zeros(4), (X, y), optimizer=SGD(0.1), epochs=10, batch_size=5,
            progress=False, callback=cb)
    assert h.stopped_early and h.losses.size == 5 and [s for s, _ in steps] == [0, 1, 2, 3, 4]
    assert h.epoch_losses.size == 2 and h.epoch_losses[1] == h.losses[4]
    # no data: one step per epoch; consts are passed after the (empty) batch data
    w = np.array([5.0])
    h = fit(lambda w, c: (float((w[0] - c) ** 2), 2 * (w - c)), w, optimizer=SGD(0.25),
            epochs=3, consts=(1.0,), progress=False)
    assert h.losses.tolist() == [16.0, 4.0, 1.0] and w[0] == 1.5


def test_fit_progress_bar_shows_loss(capsys):
    X, y, vg = _least_squares(n=20)
    fit(vg, np.zeros(4), (X, y), optimizer=SGD(0.1), epochs=2, batch_size=10, progress=True)
    err = capsys.readouterr().err
    assert "loss=" in err and "4/4" in err
    fit(vg, np.zeros(4), (X, y), optimizer=SGD(0.1), epochs=2, progress=False)
    assert capsys.readouterr().err == ""


def test_fit_validation():
    X, y, vg = _least_squares(n=20)
    w = np.zeros(4)
    kw = dict(optimizer=SGD(), progress=False)
    with pytest.raises(GradcError, match=r"data\[1\] has 19 rows on axis 0 but data\[0\] has 20"):
        fit(vg, w, (X, y[:-1]), **kw)
    with pytest.raises(GradcError, match="batch_size must be a positive integer"):
        fit(vg, w, (X, y), batch_size=0, **kw)
    with pytest.raises(GradcError, match="epochs must be a positive integer"):
        fit(vg, w, (X, y), epochs=0, **kw)
    with pytest.raises(GradcError, match="data arrays are empty"):
        fit(vg, w, (X[:0], y[:0]), **kw)
    with pytest.raises(GradcError, match=r"data\[0\] is a scalar"):
        fit(vg, w, (np.float64(1.0),), **kw)
    with pytest.raises(GradcError, match="must return \\(scalar loss, grad\\)"):
        fit(lambda w, X, y: 1.0, w, (X, y), **kw)
    with pytest.raises(GradcError, match=r"grad has shape \(3,\), but params has shape \(4,\)"):
        fit(lambda w, X, y: (1.0, np.ones(3)), w, (X, y), **kw)
    with pytest.raises(TypeError):
        fit(vg, w, (X, y))  # optimizer is a required keyword
    assert np.all(w == 0.0)


def test_history_repr_empty():
    h = History(np.array([]), np.array([]), np.array([]))
    assert repr(h) == "History(steps=0, epochs=0, first_loss=nan, final_loss=nan, stopped_early=False)"
    assert math.isnan(h.final_loss)


# ---------------------------------------------------------------- Adam / RMSprop
# Reference implementations of the published update rules, written out in numpy on lists
# of arrays (independently of gradc's kernels).  ``lr`` is a float or ``step -> lr``.
def _clip_ref(gs, clip):
    if clip is None:
        return gs, False
    norm = math.sqrt(sum(float(np.sum(g * g)) for g in gs))
    return ([g * (clip / norm) for g in gs], True) if norm > clip else (gs, False)


def adam_reference(ps, grads, lr, beta1=0.9, beta2=0.999, eps=1e-8, wd=0.0, decoupled=False,
                   clip=None):
    """Kingma & Ba (2015) Algorithm 1; L2 decay as torch.optim.Adam, decoupled as AdamW."""
    ps = [np.array(p, dtype=float) for p in ps]
    m = [np.zeros_like(p) for p in ps]
    v = [np.zeros_like(p) for p in ps]
    n_clipped = 0
    for k, gs in enumerate(grads):
        t = k + 1
        a = lr(k) if callable(lr) else lr
        gs, c = _clip_ref(gs, clip)
        n_clipped += c
        for j, g in enumerate(gs):
            if decoupled:
                ps[j] = ps[j] - a * wd * ps[j]
            else:
                g = g + wd * ps[j]
            m[j] = beta1 * m[j] + (1 - beta1) * g
            v[j] = beta2 * v[j] + (1 - beta2) * g ** 2
            mhat = m[j] / (1 - beta1 ** t)
            vhat = v[j] / (1 - beta2 ** t)
            ps[j] = ps[j] - a * mhat / (np.sqrt(vhat) + eps)
    return ps, m, v, n_clipped


def rmsprop_reference(ps, grads, lr, alpha=0.99, eps=1e-8, momentum=0.0, wd=0.0, clip=None):
    """Hinton's RMSprop as torch.optim.RMSprop(centered=False)."""
    ps = [np.array(p, dtype=float) for p in ps]
    s = [np.zeros_like(p) for p in ps]
    b = [np.zeros_like(p) for p in ps]
    n_clipped = 0
    for k, gs in enumerate(grads):
        a = lr(k) if callable(lr) else lr
        gs, c = _clip_ref(gs, clip)
        n_clipped += c
        for j, g in enumerate(gs):
            g = g + wd * ps[j]
            s[j] = alpha * s[j] + (1 - alpha) * g ** 2
            if momentum > 0:
                b[j] = momentum * b[j] + g / (np.sqrt(s[j]) + eps)
                ps[j] = ps[j] - a * b[j]
            else:
                ps[j] = ps[j] - a * g / (np.sqrt(s[j]) + eps)
    return ps, s, b, n_clipped


# Gradient magnitudes vary over the steps, so a clip_norm of 1 clips some steps, not others.
_SCALES = [3.0, 0.05, 1.0, 10.0, 0.2, 2.0, 0.01, 5.0]


def _grad_sequence(seed, n=20):
    rng = np.random.default_rng(seed)
    return rng.normal(size=n), [rng.normal(size=n) * sc for sc in _SCALES]


def _run(opt, p0, grads):
    p = p0.copy()
    lrs = []
    for g in grads:
        g_before = g.copy()
        lrs.append(opt.step(p, g))
        np.testing.assert_array_equal(g, g_before)  # gradients are never modified
    return p, lrs


def test_adaptive_kernels_are_numba():
    from numba.core.registry import CPUDispatcher
    assert isinstance(_adam_update, CPUDispatcher) and isinstance(_rmsprop_update, CPUDispatcher)
    assert all(isinstance(o, Optimizer) for o in (SGD(), Adam(), RMSprop()))


@pytest.mark.parametrize("kw, clip, sched", [
    (dict(), None, False),
    (dict(wd=0.05), None, False),
    (dict(wd=0.05, decoupled=True), None, False),
    (dict(beta1=0.0, beta2=0.5, eps=1e-3), None, False),
    (dict(wd=0.01), 1.0, False),
    (dict(wd=0.1, decoupled=True), 1.0, True),
    (dict(), None, True),
])
def test_adam_matches_algorithm_1(kw, clip, sched):
    p0, grads = _grad_sequence(4)
    lr = staircase(0.05, [3, 6], factor=0.3) if sched else 0.05
    ref, m, v, n_clipped = adam_reference([p0], [[g] for g in grads], lr, clip=clip, **kw)
    if clip is not None:
        assert 0 < n_clipped < len(grads)
    opt = Adam(lr=lr, beta1=kw.get("beta1", 0.9), beta2=kw.get("beta2", 0.999),
               eps=kw.get("eps", 1e-8), weight_decay=kw.get("wd", 0.0),
               decoupled=kw.get("decoupled", False), clip_norm=clip)
    p, lrs = _run(opt, p0, grads)
    np.testing.assert_allclose(p, ref[0], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(opt.state["m"], m[0], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(opt.state["v"], v[0], rtol=1e-12, atol=1e-15)
    assert lrs == [opt.lr_at(k) for k in range(len(grads))]
    assert opt.step_count == len(grads)
    assert not np.allclose(p, p0, atol=1e-3)


def test_adam_first_steps_and_decay_modes_by_hand():
    # t=1: mhat = g, vhat = g**2, so the step is lr * g / (|g| + eps) ~ lr * sign(g)
    p = np.array([1.0, -1.0, 2.0])
    g = np.array([1e-3, 5.0, -1e4])
    Adam(lr=0.1).step(p, g)
    np.testing.assert_allclose(p, [1.0, -1.0, 2.0] - 0.1 * g / (np.abs(g) + 1e-8), rtol=1e-14)
    np.testing.assert_allclose(p, [0.9, -1.1, 2.1], rtol=2e-6)
    # t=2 with g2 = -g1 and beta1=0.5, beta2=0.75: m = 0.5*0.5*g - 0.5*g = -0.25 g,
    # mhat = -0.25 g / 0.75 = -g/3; v = 0.75*0.25 g^2 + 0.25 g^2 = 0.4375 g^2,
    # vhat = 0.4375 g^2 / 0.4375 = g^2  ->  second step = +lr/3 * sign(g)
    p = np.zeros(2)
    opt = Adam(lr=0.3, beta1=0.5, beta2=0.75, eps=1e-12)
    opt.step(p, np.array([2.0, -4.0]))
    opt.step(p, np.array([-2.0, 4.0]))
    np.testing.assert_allclose(p, [-0.3 + 0.1, 0.3 - 0.1], rtol=1e-10)
    # zero gradient: AdamW only shrinks p by lr*wd*p; L2 Adam sees g = wd*p and steps ~lr
    p0 = np.array([2.0, -4.0])
    pw = p0.copy()
    Adam(lr=0.1, weight_decay=0.5, decoupled=True).step(pw, np.zeros(2))
    np.testing.assert_allclose(pw, p0 * (1 - 0.1 * 0.5), rtol=1e-15)
    pl = p0.copy()
    Adam(lr=0.1, weight_decay=0.5).step(pl, np.zeros(2))
    np.testing.assert_allclose(pl, p0 - 0.1 * np.sign(p0), rtol=1e-9)


@pytest.mark.parametrize("kw, clip, sched", [
    (dict(), None, False),
    (dict(wd=0.05), None, False),
    (dict(momentum=0.9), None, False),
    (dict(momentum=0.5, wd=0.02, alpha=0.9, eps=1e-4), None, False),
    (dict(momentum=0.9, wd=0.01), 1.0, True),
    (dict(alpha=0.0), 1.0, False),
    (dict(), None, True),
])
def test_rmsprop_matches_reference(kw, clip, sched):
    p0, grads = _grad_sequence(5)
    lr = cosine(0.02, 6, final_lr=0.001) if sched else 0.01
    ref, s, b, n_clipped = rmsprop_reference([p0], [[g] for g in grads], lr, clip=clip, **kw)
    if clip is not None:
        assert 0 < n_clipped < len(grads)
    opt = RMSprop(lr=lr, alpha=kw.get("alpha", 0.99), eps=kw.get("eps", 1e-8),
                  momentum=kw.get("momentum", 0.0), weight_decay=kw.get("wd", 0.0), clip_norm=clip)
    p, lrs = _run(opt, p0, grads)
    np.testing.assert_allclose(p, ref[0], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(opt.state["square_avg"], s[0], rtol=1e-12, atol=1e-15)
    if kw.get("momentum", 0.0) > 0:
        np.testing.assert_allclose(opt.state["velocity"], b[0], rtol=1e-12, atol=1e-15)
    else:
        assert opt.state["velocity"] is None
    assert lrs == [opt.lr_at(k) for k in range(len(grads))]
    assert not np.allclose(p, p0, atol=1e-3)


def test_rmsprop_first_step_by_hand():
    # s = (1 - alpha) g^2 = 0.04 g^2: step = lr * g / (0.2 |g|) = 5 lr sign(g); with momentum
    # the second step with the same g adds momentum * 5 lr + lr * g / sqrt(s2)
    p = np.array([1.0, -1.0])
    g = np.array([3.0, -0.5])
    opt = RMSprop(lr=0.01, alpha=0.96, momentum=0.5, eps=1e-12)
    opt.step(p, g)
    np.testing.assert_allclose(p, [0.95, -0.95], rtol=1e-10)
    opt.step(p, g)
    s2 = 0.96 * 0.04 + 0.04  # in units of g^2
    second = 0.5 * 5 + 1 / math.sqrt(s2)
    np.testing.assert_allclose(p, [0.95 - 0.01 * second, -0.95 + 0.01 * second], rtol=1e-10)


@pytest.mark.parametrize("which", ["adam", "adamw", "rmsprop"])
def test_adaptive_list_params_in_place(which):
    rng = np.random.default_rng(6)
    shapes = [(3,), (2, 3), (4, 1, 2), ()]
    ps = [rng.normal(size=s) for s in shapes]
    ids = [id(p) for p in ps]
    p0 = [p.copy() for p in ps]
    grads = [[rng.normal(size=s) * sc for s in shapes] for sc in _SCALES[:5]]
    if which == "rmsprop":
        opt = RMSprop(lr=0.01, momentum=0.8, weight_decay=0.1, clip_norm=1.5)
        ref, s, b, n_clipped = rmsprop_reference(p0, grads, 0.01, momentum=0.8, wd=0.1, clip=1.5)
        bufs = {"square_avg": s, "velocity": b}
    else:
        dec = which == "adamw"
        opt = Adam(lr=0.05, weight_decay=0.1, decoupled=dec, clip_norm=1.5)
        ref, m, v, n_clipped = adam_reference(p0, grads, 0.05, wd=0.1, decoupled=dec, clip=1.5)
        bufs = {"m": m, "v": v}
    assert 0 < n_clipped < len(grads)  # clipping uses the global norm over all arrays
    for gs in grads:
        opt.step(ps, gs)
    assert [id(p) for p in ps] == ids
    for p, r, shape in zip(ps, ref, shapes):
        assert p.shape == shape
        np.testing.assert_allclose(p, r, rtol=1e-12, atol=1e-14)
    state = opt.state
    assert list(state) == ["step_count", *bufs] and state["step_count"] == len(grads)
    for name, expect in bufs.items():
        assert [a.shape for a in state[name]] == shapes
        for a, e in zip(state[name], expect):
            np.testing.assert_allclose(a, e, rtol=1e-12, atol=1e-15)


def test_torch_agrees():
    torch = pytest.importorskip("torch")
    p0, grads = _grad_sequence(7)
    cases = [
        (Adam(lr=0.05, weight_decay=0.05),
         lambda t: torch.optim.Adam([t], lr=0.05, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05)),
        (Adam(lr=0.05, beta1=0.8, beta2=0.99, weight_decay=0.1, decoupled=True),
         lambda t: torch.optim.AdamW([t], lr=0.05, betas=(0.8, 0.99), eps=1e-8, weight_decay=0.1)),
        (RMSprop(lr=0.01, alpha=0.9, momentum=0.7, weight_decay=0.05),
         lambda t: torch.optim.RMSprop([t], lr=0.01, alpha=0.9, eps=1e-8, weight_decay=0.05,
                                       momentum=0.7, centered=False)),
        (RMSprop(lr=0.01),
         lambda t: torch.optim.RMSprop([t], lr=0.01, alpha=0.99, eps=1e-8)),
    ]
    for ours, make in cases:
        t = torch.tensor(p0.copy(), dtype=torch.float64, requires_grad=True)
        theirs = make(t)
        for g in grads:
            theirs.zero_grad()
            t.grad = torch.tensor(g, dtype=torch.float64)
            theirs.step()
        p, _ = _run(ours, p0, grads)
        np.testing.assert_allclose(p, t.detach().numpy(), rtol=1e-10, atol=1e-12, err_msg=repr(ours))


@pytest.mark.parametrize("make", [lambda: Adam(lr=0.1, weight_decay=0.01),
                                  lambda: RMSprop(lr=0.01, momentum=0.9)])
def test_adaptive_state_and_reset(make):
    opt = make()
    names = ["m", "v"] if isinstance(opt, Adam) else ["square_avg", "velocity"]
    assert opt.state == {"step_count": 0, **dict.fromkeys(names)}
    p0, grads = _grad_sequence(8, n=5)
    p1, _ = _run(opt, p0, grads[:3])
    st1 = opt.state
    assert st1["step_count"] == 3 and all(st1[n].shape == (5,) for n in names)
    assert all(np.shares_memory(st1[n], opt.state[n]) for n in names)  # live buffers
    with pytest.raises(GradcError, match=r"differ from the previous step's \[\(5,\)\]; call reset"):
        opt.step(np.ones(4), np.ones(4))
    assert opt.step_count == 3
    opt.reset()
    assert opt.state == {"step_count": 0, **dict.fromkeys(names)}
    # after reset the run (bias correction, buffers) restarts as a fresh optimizer's
    p2, _ = _run(opt, p0, grads[:3])
    np.testing.assert_array_equal(p2, p1)
    opt.reset()
    opt.step(np.ones((2, 2)), np.ones((2, 2)))  # other shapes are fine after reset
    assert opt.state[names[0]].shape == (2, 2)


def test_adaptive_repr():
    assert repr(Adam()) == ("Adam(lr=0.001, beta1=0.9, beta2=0.999, eps=1e-08, weight_decay=0.0, "
                            "decoupled=False, clip_norm=None)")
    assert repr(RMSprop(lr=cosine(0.1, 10), clip_norm=2)) == (
        "RMSprop(lr=cosine(lr=0.1, total_steps=10, final_lr=0.0), alpha=0.99, eps=1e-08, "
        "momentum=0.0, weight_decay=0.0, clip_norm=2.0)")


@pytest.mark.parametrize("make, match", [
    (lambda: Adam(beta1=1.0), r"beta1 must be in \[0, 1\), got 1.0"),
    (lambda: Adam(beta1=-0.1), "beta1 must be non-negative"),
    (lambda: Adam(beta2=1), r"beta2 must be in \[0, 1\), got 1"),
    (lambda: Adam(beta2=float("nan")), "beta2 must be finite"),
    (lambda: Adam(eps=0.0), "eps must be positive"),
    (lambda: Adam(eps="1e-8"), "eps must be a real number"),
    (lambda: Adam(decoupled=1), "decoupled must be a bool"),
    (lambda: Adam(weight_decay=-0.1), "weight_decay must be non-negative"),
    (lambda: Adam(clip_norm=0.0), "clip_norm must be positive"),
    (lambda: Adam(lr=0.0), "lr must be positive"),
    (lambda: RMSprop(alpha=1.0), r"alpha must be in \[0, 1\)"),
    (lambda: RMSprop(alpha=-0.5), "alpha must be non-negative"),
    (lambda: RMSprop(eps=-1e-8), "eps must be positive"),
    (lambda: RMSprop(momentum=1.0), r"momentum must be in \[0, 1\)"),
    (lambda: RMSprop(momentum=True), "momentum must be a real number"),
    (lambda: RMSprop(weight_decay=float("inf")), "weight_decay must be finite"),
    (lambda: RMSprop(clip_norm=-1), "clip_norm must be positive"),
    (lambda: RMSprop(lr=-0.1), "lr must be positive"),
])
def test_adaptive_constructor_validation(make, match):
    with pytest.raises(GradcError, match=match):
        make()


@pytest.mark.parametrize("cls", [Adam, RMSprop])
def test_adaptive_step_validation(cls):
    with pytest.raises(GradcError, match=r"params\[1\] with shape \(4, 2\) is not C-contiguous"):
        cls().step([np.ones(2), np.ones((4, 4))[:, ::2]], [np.ones(2), np.ones((4, 2))])
    with pytest.raises(GradcError, match=r"params with shape \(3,\) has dtype float16"):
        cls().step(np.ones(3, np.float16), np.ones(3))
    with pytest.raises(GradcError, match=r"grad has shape \(3,\), but params has shape \(2,\)"):
        cls().step(np.ones(2), np.ones(3))
    with pytest.raises(GradcError, match="does not match params"):
        cls().step(np.ones(2), [np.ones(2)])
    with pytest.raises(GradcError, match=r"grad\[0\] must be a real array"):
        cls().step([np.ones(2)], [np.ones(2, complex)])
    buf = np.ones(6)
    with pytest.raises(GradcError, match=r"params\[0\] and params\[1\] share memory"):
        cls().step([buf[:4], buf[3:]], [np.ones(4), np.ones(3)])
    np.testing.assert_array_equal(buf, 1.0)
    with pytest.raises(GradcError, match="NaN or inf"):
        cls(clip_norm=1.0).step(np.ones(2), np.array([1.0, np.nan]))
    p = np.ones(2)
    opt = cls(lr=lambda step: 0.1 if step == 0 else math.nan)
    assert opt.step(p, np.ones(2)) == 0.1
    before = p.copy()
    with pytest.raises(GradcError, match="schedule returned nan at step 1"):
        opt.step(p, np.ones(2))
    np.testing.assert_array_equal(p, before)
    assert opt.step_count == 1


def test_fit_with_adam_and_rmsprop_on_quadratic():
    # ill-conditioned quadratic: curvatures 1 .. 1000, minimum at c
    a = np.array([1.0, 10.0, 100.0, 1000.0])
    c = np.array([1.0, -2.0, 0.5, 3.0])

    def vg(w):
        r = w - c
        return 0.5 * float(a @ (r * r)), a * r

    for opt in (Adam(lr=cosine(0.2, 300)), RMSprop(lr=cosine(0.05, 300), momentum=0.5)):
        w = np.zeros(4)
        h = fit(vg, w, optimizer=opt, epochs=300, progress=False)
        assert h.losses.shape == (300,) and h.losses[0] == pytest.approx(4533.0)
        assert h.final_loss < 1e-6 * h.losses[0], repr(opt)
        np.testing.assert_allclose(w, c, atol=1e-3)
        np.testing.assert_array_equal(h.lrs, [opt.lr_at(k) for k in range(300)])
    # mini-batch least squares with Adam
    X, y, vgl = _least_squares()
    w_star = np.linalg.lstsq(X, y, rcond=None)[0]
    w = np.zeros(X.shape[1])
    h = fit(vgl, w, (X, y), optimizer=Adam(lr=cosine(0.05, 60 * 8)), epochs=60, batch_size=16,
            progress=False)
    assert h.epoch_losses[-1] < 0.1 * h.epoch_losses[0]
    np.testing.assert_allclose(w, w_star, atol=5e-3)
