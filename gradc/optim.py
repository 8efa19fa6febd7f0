"""Training utilities: learning-rate schedules, gradient clipping, optimizers and a fit loop.

Contract
--------
* **Schedules** (:class:`constant`, :class:`staircase`, :class:`cosine`) are
  frozen, hashable objects.  Calling one with a 0-based integer step returns
  the learning rate for that step as a Python ``float``.
* **Optimizers** (:class:`SGD`, :class:`Adam`, :class:`RMSprop`, all
  :class:`Optimizer` subclasses) take ``lr`` as a positive float or a schedule,
  evaluated at the 0-based ``step_count``; ``step(params, grad)`` returns the
  learning rate it used.  Their per-parameter buffers (``state``) are allocated
  at the first step and are shaped like the parameters; a later step with other
  shapes is an error until ``reset()``.
* **Parameters** are either one C-contiguous ``float64`` (or ``float32``, for
  functions compiled with ``dtype="float32"``) numpy array (any shape, usually
  flat) or a list/tuple of such arrays.  ``step`` updates them **in place**; the
  optimizer's state (velocities, moments) and each step's arithmetic are float64
  whatever the parameters' dtype, so a float32 parameter is rounded once per step.
  Arrays that cannot be updated in place (another dtype, non-contiguous,
  read-only) are rejected with a :class:`~gradc.errors.GradcError` naming the
  offending index.
* **Gradients** have the same structure and shapes as the parameters.  Any
  real dtype is accepted (converted to contiguous ``float64``); gradients are
  never modified.
* Every optimizer first takes, per element, ``g = s * grad`` with ``s`` the clip
  factor ``min(1, clip_norm / ||grad||)`` (global norm over all arrays; 1 without
  ``clip_norm``), and ``lr`` of the current step.  One SGD step is::

      d = g + weight_decay * p
      v = momentum * v + d                      # only if momentum > 0
      d = d + momentum * v  if nesterov else v  # only if momentum > 0
      p = p - lr * d

  One Adam step (Kingma & Ba 2015, Algorithm 1), with ``t = step_count + 1``::

      g = g + weight_decay * p                  # only if not decoupled (L2)
      p = p - lr * weight_decay * p             # only if decoupled (AdamW)
      m = beta1 * m + (1 - beta1) * g
      v = beta2 * v + (1 - beta2) * g**2
      p = p - lr * (m / (1 - beta1**t)) / (sqrt(v / (1 - beta2**t)) + eps)

  One RMSprop step (as ``torch.optim.RMSprop``, not centred)::

      g = g + weight_decay * p
      s = alpha * s + (1 - alpha) * g**2
      d = g / (sqrt(s) + eps)
      b = momentum * b + d;  d = b              # only if momentum > 0
      p = p - lr * d

  Each loop is a single fused numba kernel per array: :func:`_sgd_update`,
  :func:`_adam_update`, :func:`_rmsprop_update`.
* :func:`fit` runs mini-batch epochs over arrays batched on axis 0, stops
  with an error on a non-finite loss, and returns a :class:`History`.

All argument errors raise :class:`gradc.errors.GradcError` (a ``ValueError``).
"""
from __future__ import annotations

import bisect
import math
import numbers
import operator
from dataclasses import dataclass

import numpy as np
from numba import njit
from tqdm import tqdm

from gradc.errors import GradcError

__all__ = ["Schedule", "constant", "staircase", "cosine", "clip_by_global_norm",
           "Optimizer", "SGD", "Adam", "RMSprop", "History", "fit"]


def _error(msg):
    """Build the GradcError (a ValueError subclass) to raise for ``msg``."""
    return GradcError(msg)


def _real(name, value, *, positive=False, nonneg=False):
    """Validate a finite real scalar argument and return it as float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _error(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise _error(f"{name} must be finite, got {value!r}")
    if positive and value <= 0.0:
        raise _error(f"{name} must be positive, got {value!r}")
    if nonneg and value < 0.0:
        raise _error(f"{name} must be non-negative, got {value!r}")
    return value


def _step_index(step):
    try:
        step = operator.index(step)
    except TypeError:
        raise _error(f"step must be an integer, got {step!r}") from None
    if step < 0:
        raise _error(f"step must be >= 0, got {step}")
    return step


# ---------------------------------------------------------------- schedules
class Schedule:
    """Base class of learning-rate schedules: ``schedule(step) -> float``.

    Subclasses implement ``_value(step)`` for a validated ``int`` step >= 0.

    Examples
    --------
    >>> isinstance(cosine(0.1, 100), Schedule)
    True
    >>> constant(0.5)(7)
    0.5
    """

    def __call__(self, step):
        return float(self._value(_step_index(step)))

    def _value(self, step):  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass(frozen=True)
class constant(Schedule):
    """Constant learning rate ``lr`` at every step.

    Parameters
    ----------
    lr : float
        Positive learning rate.

    Examples
    --------
    >>> s = constant(0.1)
    >>> s(0), s(10_000)
    (0.1, 0.1)
    >>> s
    constant(lr=0.1)
    """

    lr: float

    def __post_init__(self):
        object.__setattr__(self, "lr", _real("lr", self.lr, positive=True))

    def _value(self, step):
        return self.lr


@dataclass(frozen=True)
class staircase(Schedule):
    """Step decay: ``lr * factor**k`` where ``k`` = number of boundaries <= step.

    Parameters
    ----------
    lr : float
        Positive initial learning rate.
    boundaries : sequence of int
        Strictly increasing, non-negative steps at which the rate is
        multiplied by ``factor`` (the step equal to a boundary is already
        decayed).
    factor : float, default 0.1
        Positive multiplier applied at each boundary.

    Examples
    --------
    >>> s = staircase(1.0, [10, 20], factor=0.5)
    >>> [s(0), s(9), s(10), s(19), s(20), s(1000)]
    [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
    >>> s
    staircase(lr=1.0, boundaries=(10, 20), factor=0.5)
    """

    lr: float
    boundaries: tuple = ()
    factor: float = 0.1

    def __post_init__(self):
        object.__setattr__(self, "lr", _real("lr", self.lr, positive=True))
        object.__setattr__(self, "factor", _real("factor", self.factor, positive=True))
        try:
            bounds = tuple(operator.index(b) for b in self.boundaries)
        except TypeError:
            raise _error(f"boundaries must be a sequence of integers, got {self.boundaries!r}") from None
        if any(b < 0 for b in bounds):
            raise _error(f"boundaries must be non-negative, got {bounds}")
        if any(a >= b for a, b in zip(bounds, bounds[1:])):
            raise _error(f"boundaries must be sorted in strictly increasing order, got {bounds}")
        object.__setattr__(self, "boundaries", bounds)

    def _value(self, step):
        return self.lr * self.factor ** bisect.bisect_right(self.boundaries, step)


@dataclass(frozen=True)
class cosine(Schedule):
    """Cosine decay from ``lr`` to ``final_lr`` over ``total_steps``, then flat.

    ``final_lr + 0.5*(lr - final_lr)*(1 + cos(pi*min(step, total_steps)/total_steps))``

    Parameters
    ----------
    lr : float
        Positive initial learning rate.
    total_steps : int
        Positive number of steps of the decay.
    final_lr : float, default 0.0
        Rate reached at ``total_steps`` and kept after; ``0 <= final_lr <= lr``.

    Examples
    --------
    >>> s = cosine(1.0, 100, final_lr=0.2)
    >>> round(s(0), 12), round(s(50), 12), s(100), s(500)
    (1.0, 0.6, 0.2, 0.2)
    >>> s
    cosine(lr=1.0, total_steps=100, final_lr=0.2)
    """

    lr: float
    total_steps: int
    final_lr: float = 0.0

    def __post_init__(self):
        object.__setattr__(self, "lr", _real("lr", self.lr, positive=True))
        object.__setattr__(self, "final_lr", _real("final_lr", self.final_lr, nonneg=True))
        if self.final_lr > self.lr:
            raise _error(f"final_lr must be <= lr, got final_lr={self.final_lr!r} > lr={self.lr!r}")
        try:
            total = operator.index(self.total_steps)
        except TypeError:
            raise _error(f"total_steps must be an integer, got {self.total_steps!r}") from None
        if total <= 0:
            raise _error(f"total_steps must be > 0, got {total}")
        object.__setattr__(self, "total_steps", total)

    def _value(self, step):
        t = min(step, self.total_steps) / self.total_steps
        return self.final_lr + 0.5 * (self.lr - self.final_lr) * (1.0 + math.cos(math.pi * t))


# ---------------------------------------------------------------- clipping
def _as_list(x, name):
    """Return (list_of_arrays, is_single) for an array or a list/tuple of arrays."""
    if isinstance(x, (list, tuple)):
        if len(x) == 0:
            raise _error(f"{name} is an empty {type(x).__name__}")
        return list(x), False
    return [x], True


def _label(name, i, single):
    return name if single else f"{name}[{i}]"


def _grad_arrays(grad, name="grad"):
    arrays, single = _as_list(grad, name)
    out = []
    for i, g in enumerate(arrays):
        g = np.asarray(g)
        if g.dtype.kind not in "fiu":
            raise _error(f"{_label(name, i, single)} must be a real array, got dtype {g.dtype}")
        out.append(np.asarray(g, dtype=np.float64, order="C"))  # keeps 0-d shape
    return out, single


def _global_norm(arrays):
    """Euclidean norm over all arrays; safe against overflow/underflow of squares."""
    with np.errstate(over="ignore", invalid="ignore"):
        ss = sum(float(np.dot(a.reshape(-1), a.reshape(-1))) for a in arrays)
    if 1e-280 < ss < math.inf:
        return math.sqrt(ss)
    # Rescale by the largest magnitude (also detects NaN / inf entries).
    m = max((float(np.max(np.abs(a))) if a.size else 0.0) for a in arrays)
    if not math.isfinite(m):
        raise _error("gradient contains NaN or inf entries; its norm is undefined")
    if m == 0.0:
        return 0.0
    return m * math.sqrt(sum(float(np.sum(np.square(a / m))) for a in arrays))


def clip_by_global_norm(grad, max_norm):
    """Scale gradients so that their global Euclidean norm is at most ``max_norm``.

    Parameters
    ----------
    grad : ndarray or list of ndarray
        One array or a list/tuple of arrays (any shapes); not modified.
    max_norm : float
        Positive bound on the norm of all entries taken together.

    Returns
    -------
    clipped : ndarray or list of ndarray
        ``float64`` copies with the same structure, multiplied by
        ``min(1, max_norm / norm)``.
    norm : float
        The global norm of ``grad`` before clipping.

    Raises
    ------
    GradcError
        If ``max_norm`` is not positive or ``grad`` contains NaN/inf.

    Examples
    --------
    >>> g, n = clip_by_global_norm(np.array([3.0, 4.0]), 1.0)
    >>> g, n
    (array([0.6, 0.8]), 5.0)
    >>> gs, n = clip_by_global_norm([np.array([3.0]), np.array([[4.0]])], 10.0)
    >>> gs, n
    ([array([3.]), array([[4.]])], 5.0)
    """
    max_norm = _real("max_norm", max_norm, positive=True)
    arrays, single = _grad_arrays(grad)
    norm = _global_norm(arrays)
    scale = max_norm / norm if norm > max_norm else 1.0
    clipped = [a * scale if scale != 1.0 else a.copy() for a in arrays]
    return (clipped[0] if single else clipped), norm


# ---------------------------------------------------------------- optimizers
def _unit_interval(name, value):
    """Validate a real coefficient in ``[0, 1)`` and return it as float."""
    out = _real(name, value, nonneg=True)
    if out >= 1.0:
        raise _error(f"{name} must be in [0, 1), got {value!r}")
    return out


def _schedule(lr):
    """A callable ``step -> lr`` from a schedule/callable or a positive float."""
    return lr if callable(lr) else constant(lr)


class Optimizer:
    """Base class of :class:`SGD`, :class:`Adam` and :class:`RMSprop`.

    It holds the learning-rate ``schedule``, ``weight_decay``, ``clip_norm`` and
    ``step_count``, and implements :meth:`step`: validate ``params`` and ``grad``
    (see the module docstring), allocate the per-parameter state buffers at the
    first step (flat ``float64`` arrays), compute the global-norm clip factor,
    evaluate the schedule at ``step_count`` and call the subclass's update.

    Subclasses implement ``_allocate(sizes) -> {name: list of flat arrays or None}``
    (the buffer names, in the order :attr:`state` lists them) and
    ``_update(ps, gs, lr, scale)`` on flat views, with the buffers in ``self._buffers``.

    Examples
    --------
    >>> all(isinstance(o, Optimizer) for o in (SGD(), Adam(), RMSprop()))
    True
    """

    def _init_common(self, weight_decay, clip_norm):
        self.weight_decay = _real("weight_decay", weight_decay, nonneg=True)
        self.clip_norm = None if clip_norm is None else _real("clip_norm", clip_norm, positive=True)
        self.reset()

    def _lr_repr(self):
        return self.schedule.lr if isinstance(self.schedule, constant) else self.schedule

    def _allocate(self, sizes):  # pragma: no cover - abstract
        raise NotImplementedError

    def _update(self, ps, gs, lr, scale):  # pragma: no cover - abstract
        raise NotImplementedError

    def reset(self):
        """Forget the state buffers and restart the step counter at 0."""
        self._buffers = None
        self._shapes = None
        self._single = None
        self.step_count = 0

    @property
    def state(self):
        """``{"step_count": int, <buffer name>: arrays or None, ...}`` (live buffers)."""
        out = {"step_count": self.step_count}
        if self._buffers is None:
            out.update(dict.fromkeys(self._allocate([])))
            return out
        for name, bufs in self._buffers.items():
            if bufs is not None:
                bufs = [b.reshape(s) for b, s in zip(bufs, self._shapes)]
                bufs = bufs[0] if self._single else bufs
            out[name] = bufs
        return out

    def lr_at(self, step):
        """Learning rate used at (0-based) ``step``, as a float."""
        lr = float(self.schedule(step))
        if not (math.isfinite(lr) and lr >= 0.0):
            raise _error(f"learning-rate schedule returned {lr!r} at step {step}; need finite >= 0")
        return lr

    def _check(self, params, grad):
        """Validate ``params``/``grad``, allocate state; return (params, grads, clip scale)."""
        ps, single = _as_list(params, "params")
        for i, p in enumerate(ps):
            name = _label("params", i, single)
            if not isinstance(p, np.ndarray):
                raise _error(f"{name} must be a numpy array (updated in place), got {type(p).__name__}")
            if p.dtype not in (np.float64, np.float32):
                raise _error(f"{name} with shape {p.shape} has dtype {p.dtype}; need float64 "
                             "or float32")
            if not p.flags.c_contiguous:
                raise _error(f"{name} with shape {p.shape} is not C-contiguous; in-place update "
                             "needs np.ascontiguousarray(...) (and keep that array)")
            if not p.flags.writeable:
                raise _error(f"{name} with shape {p.shape} is read-only")
        if len(ps) > 1:  # overlapping arrays would be updated twice
            spans = sorted((p.ctypes.data, p.ctypes.data + p.nbytes, i) for i, p in enumerate(ps) if p.size)
            for (_, end, i), (start, _, j) in zip(spans, spans[1:]):
                if start < end:
                    raise _error(f"params[{min(i, j)}] and params[{max(i, j)}] share memory; "
                                 "each parameter must be a separate array")
        gs, gsingle = _grad_arrays(grad)
        if gsingle != single or len(gs) != len(ps):
            raise _error(f"grad structure ({'array' if gsingle else f'{len(gs)} arrays'}) does not "
                         f"match params ({'array' if single else f'{len(ps)} arrays'})")
        for i, (p, g) in enumerate(zip(ps, gs)):
            if g.shape != p.shape:
                raise _error(f"{_label('grad', i, single)} has shape {g.shape}, "
                             f"but {_label('params', i, single)} has shape {p.shape}")
        shapes = [p.shape for p in ps]
        if self._shapes is None:
            self._shapes, self._single = shapes, single
            self._buffers = self._allocate([p.size for p in ps])
        elif shapes != self._shapes or single != self._single:
            raise _error(f"params shapes {shapes} differ from the previous step's {self._shapes}; "
                         "call reset() to start over")
        scale = 1.0
        if self.clip_norm is not None:
            norm = _global_norm(gs)
            if norm > self.clip_norm:
                scale = self.clip_norm / norm
        return ps, gs, scale

    def step(self, params, grad):
        """Apply one update to ``params`` in place; return the learning rate used."""
        ps, gs, scale = self._check(params, grad)
        lr = self.lr_at(self.step_count)
        self._update([p.reshape(-1) for p in ps], [g.reshape(-1) for g in gs], lr, scale)
        self.step_count += 1
        return lr


def _zeros(sizes):
    return [np.zeros(n) for n in sizes]


_EMPTY = np.empty(0, dtype=np.float64)


# ---------------------------------------------------------------- SGD
@njit(cache=True)
def _sgd_update(p, g, v, lr, momentum, nesterov, weight_decay, scale):
    """Fused in-place SGD step over flat float64 arrays (see module docstring).

    ``v`` is only read/written when ``momentum != 0`` (it may be empty then).
    """
    use_v = momentum != 0.0
    for i in range(p.shape[0]):
        d = g[i]
        if scale != 1.0:
            d = d * scale
        if weight_decay != 0.0:
            d = d + weight_decay * p[i]
        if use_v:
            vi = momentum * v[i] + d
            v[i] = vi
            if nesterov:
                d = d + momentum * vi
            else:
                d = vi
        p[i] = p[i] - lr * d


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, weight decay and clipping.

    Parameters
    ----------
    lr : float or callable, default 0.1
        Positive learning rate or a schedule ``step -> lr`` (e.g. :class:`cosine`).
    momentum : float, default 0.0
        Heavy-ball coefficient in ``[0, 1)``.
    nesterov : bool, default False
        Use Nesterov momentum (requires ``momentum > 0``).
    weight_decay : float, default 0.0
        Non-negative L2 coefficient, added to the (clipped) gradient.
    clip_norm : float or None, default None
        If given, gradients are scaled to global norm <= ``clip_norm`` first.

    Attributes
    ----------
    step_count : int
        Number of steps taken; the schedule is evaluated at this step.
    state : dict
        ``{"step_count": int, "velocity": None | array | list of arrays}``
        (the live velocity buffers, shaped like the parameters).

    Examples
    --------
    >>> p = np.array([1.0, 2.0])
    >>> opt = SGD(lr=0.5, momentum=0.9)
    >>> opt.step(p, np.array([1.0, 1.0]))   # returns the learning rate used
    0.5
    >>> opt.step(p, np.array([1.0, 1.0]))   # v = 0.9*1 + 1 = 1.9
    0.5
    >>> p, opt.step_count
    (array([-0.45,  0.55]), 2)
    >>> SGD(lr=staircase(0.1, [100])).lr_at(100)
    0.010000000000000002
    """

    def __init__(self, lr=0.1, momentum=0.0, nesterov=False, weight_decay=0.0, clip_norm=None):
        self.schedule = _schedule(lr)
        self.momentum = _unit_interval("momentum", momentum)
        if not isinstance(nesterov, (bool, np.bool_)):
            raise _error(f"nesterov must be a bool, got {nesterov!r}")
        self.nesterov = bool(nesterov)
        if self.nesterov and self.momentum == 0.0:
            raise _error("nesterov=True requires momentum > 0")
        self._init_common(weight_decay, clip_norm)

    def __repr__(self):
        return (f"SGD(lr={self._lr_repr()!r}, momentum={self.momentum!r}, nesterov={self.nesterov!r}, "
                f"weight_decay={self.weight_decay!r}, clip_norm={self.clip_norm!r})")

    def _allocate(self, sizes):
        return {"velocity": _zeros(sizes) if self.momentum != 0.0 else None}

    def _update(self, ps, gs, lr, scale):
        vel = self._buffers["velocity"]
        for i, (p, g) in enumerate(zip(ps, gs)):
            _sgd_update(p, g, _EMPTY if vel is None else vel[i], lr, self.momentum,
                        self.nesterov, self.weight_decay, scale)


# ---------------------------------------------------------------- Adam
@njit(cache=True)
def _adam_update(p, g, m, v, lr, beta1, beta2, eps, weight_decay, decoupled, scale, bc1, bc2):
    """Fused in-place Adam / AdamW step over flat float64 arrays (see module docstring).

    ``bc1 = 1 - beta1**t`` and ``bc2 = 1 - beta2**t`` are the bias corrections of step ``t``.
    """
    for i in range(p.shape[0]):
        gi = g[i]
        if scale != 1.0:
            gi = gi * scale
        pi = p[i]
        if weight_decay != 0.0:
            if decoupled:
                pi = pi - lr * weight_decay * pi
            else:
                gi = gi + weight_decay * pi
        mi = beta1 * m[i] + (1.0 - beta1) * gi
        vi = beta2 * v[i] + (1.0 - beta2) * (gi * gi)
        m[i] = mi
        v[i] = vi
        p[i] = pi - lr * (mi / bc1) / (math.sqrt(vi / bc2) + eps)


class Adam(Optimizer):
    """Adam (Kingma & Ba, 2015) with bias correction; AdamW with ``decoupled=True``.

    Parameters
    ----------
    lr : float or callable, default 1e-3
        Positive learning rate or a schedule ``step -> lr`` (e.g. :class:`cosine`).
    beta1 : float, default 0.9
        Decay rate of the first-moment (mean) estimate, in ``[0, 1)``.
    beta2 : float, default 0.999
        Decay rate of the second-moment (uncentred variance) estimate, in ``[0, 1)``.
    eps : float, default 1e-8
        Positive term added to ``sqrt(vhat)`` in the denominator.
    weight_decay : float, default 0.0
        Non-negative coefficient.  With ``decoupled=False`` it is an L2 penalty
        added to the (clipped) gradient (as ``torch.optim.Adam``); with
        ``decoupled=True`` the parameters are shrunk by ``lr * weight_decay * p``
        separately and the moments never see it (AdamW, Loshchilov & Hutter 2019,
        as ``torch.optim.AdamW``).
    decoupled : bool, default False
        Use decoupled weight decay (AdamW).
    clip_norm : float or None, default None
        If given, gradients are scaled to global norm <= ``clip_norm`` first.

    Attributes
    ----------
    step_count : int
        Number of steps taken; step ``k`` (0-based) uses ``lr_at(k)`` and the
        bias corrections of ``t = k + 1``.
    state : dict
        ``{"step_count": int, "m": arrays, "v": arrays}`` (the live first- and
        second-moment buffers, shaped like the parameters; None before the first step).

    Examples
    --------
    The first bias-corrected step moves each entry by about ``lr`` against the
    sign of its gradient, whatever the gradient's magnitude:

    >>> p = np.array([1.0, -2.0])
    >>> opt = Adam(lr=0.1)
    >>> opt.step(p, np.array([0.5, -300.0]))
    0.1
    >>> np.round(p, 6), opt.step_count
    (array([ 0.9, -1.9]), 1)
    >>> opt.state["m"], opt.state["v"]
    (array([  0.05, -30.  ]), array([2.5e-04, 9.0e+01]))
    >>> Adam(lr=1e-3, weight_decay=0.01, decoupled=True)
    Adam(lr=0.001, beta1=0.9, beta2=0.999, eps=1e-08, weight_decay=0.01, decoupled=True, clip_norm=None)
    """

    def __init__(self, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
                 decoupled=False, clip_norm=None):
        self.schedule = _schedule(lr)
        self.beta1 = _unit_interval("beta1", beta1)
        self.beta2 = _unit_interval("beta2", beta2)
        self.eps = _real("eps", eps, positive=True)
        if not isinstance(decoupled, (bool, np.bool_)):
            raise _error(f"decoupled must be a bool, got {decoupled!r}")
        self.decoupled = bool(decoupled)
        self._init_common(weight_decay, clip_norm)

    def __repr__(self):
        return (f"Adam(lr={self._lr_repr()!r}, beta1={self.beta1!r}, beta2={self.beta2!r}, "
                f"eps={self.eps!r}, weight_decay={self.weight_decay!r}, "
                f"decoupled={self.decoupled!r}, clip_norm={self.clip_norm!r})")

    def _allocate(self, sizes):
        return {"m": _zeros(sizes), "v": _zeros(sizes)}

    def _update(self, ps, gs, lr, scale):
        t = self.step_count + 1
        bc1 = 1.0 - self.beta1 ** t
        bc2 = 1.0 - self.beta2 ** t
        ms, vs = self._buffers["m"], self._buffers["v"]
        for p, g, m, v in zip(ps, gs, ms, vs):
            _adam_update(p, g, m, v, lr, self.beta1, self.beta2, self.eps, self.weight_decay,
                         self.decoupled, scale, bc1, bc2)


# ---------------------------------------------------------------- RMSprop
@njit(cache=True)
def _rmsprop_update(p, g, s, b, lr, alpha, eps, momentum, weight_decay, scale):
    """Fused in-place RMSprop step over flat float64 arrays (see module docstring).

    ``b`` is only read/written when ``momentum != 0`` (it may be empty then).
    """
    use_b = momentum != 0.0
    for i in range(p.shape[0]):
        gi = g[i]
        if scale != 1.0:
            gi = gi * scale
        if weight_decay != 0.0:
            gi = gi + weight_decay * p[i]
        si = alpha * s[i] + (1.0 - alpha) * (gi * gi)
        s[i] = si
        d = gi / (math.sqrt(si) + eps)
        if use_b:
            d = momentum * b[i] + d
            b[i] = d
        p[i] = p[i] - lr * d


class RMSprop(Optimizer):
    """RMSprop (Hinton, 2012), as ``torch.optim.RMSprop`` with ``centered=False``.

    Parameters
    ----------
    lr : float or callable, default 1e-2
        Positive learning rate or a schedule ``step -> lr`` (e.g. :class:`cosine`).
    alpha : float, default 0.99
        Decay rate of the running mean of squared gradients, in ``[0, 1)``.
    eps : float, default 1e-8
        Positive term added to ``sqrt(s)`` in the denominator.
    momentum : float, default 0.0
        Coefficient in ``[0, 1)`` of a momentum buffer on the scaled step.
    weight_decay : float, default 0.0
        Non-negative L2 coefficient, added to the (clipped) gradient.
    clip_norm : float or None, default None
        If given, gradients are scaled to global norm <= ``clip_norm`` first.

    Attributes
    ----------
    step_count : int
        Number of steps taken; the schedule is evaluated at this step.
    state : dict
        ``{"step_count": int, "square_avg": arrays, "velocity": None | arrays}``
        (the live buffers, shaped like the parameters; ``velocity`` only with
        momentum).

    Examples
    --------
    With no history, ``s = (1 - alpha) g**2``, so the first step is about
    ``lr / sqrt(1 - alpha)`` against the sign of the gradient:

    >>> p = np.array([1.0, -2.0])
    >>> opt = RMSprop(lr=0.01, alpha=0.99)
    >>> opt.step(p, np.array([0.5, -300.0]))
    0.01
    >>> np.round(p, 6), opt.state["velocity"] is None
    (array([ 0.9, -1.9]), True)
    >>> RMSprop(momentum=0.9)
    RMSprop(lr=0.01, alpha=0.99, eps=1e-08, momentum=0.9, weight_decay=0.0, clip_norm=None)
    """

    def __init__(self, lr=1e-2, alpha=0.99, eps=1e-8, momentum=0.0, weight_decay=0.0,
                 clip_norm=None):
        self.schedule = _schedule(lr)
        self.alpha = _unit_interval("alpha", alpha)
        self.eps = _real("eps", eps, positive=True)
        self.momentum = _unit_interval("momentum", momentum)
        self._init_common(weight_decay, clip_norm)

    def __repr__(self):
        return (f"RMSprop(lr={self._lr_repr()!r}, alpha={self.alpha!r}, eps={self.eps!r}, "
                f"momentum={self.momentum!r}, weight_decay={self.weight_decay!r}, "
                f"clip_norm={self.clip_norm!r})")

    def _allocate(self, sizes):
        return {"square_avg": _zeros(sizes),
                "velocity": _zeros(sizes) if self.momentum != 0.0 else None}

    def _update(self, ps, gs, lr, scale):
        ss, bs = self._buffers["square_avg"], self._buffers["velocity"]
        for i, (p, g) in enumerate(zip(ps, gs)):
            _rmsprop_update(p, g, ss[i], _EMPTY if bs is None else bs[i], lr, self.alpha,
                            self.eps, self.momentum, self.weight_decay, scale)


# ---------------------------------------------------------------- fit
@dataclass(frozen=True, eq=False)
class History:
    """Record of a :func:`fit` run.

    Attributes
    ----------
    losses : ndarray
        Loss of every step (before that step's update).
    epoch_losses : ndarray
        Mean of the step losses of each (possibly partial, if stopped) epoch.
    lrs : ndarray
        Learning rate used at every step.
    stopped_early : bool
        True if the callback requested a stop.

    Examples
    --------
    >>> h = History(np.array([4.0, 2.0, 1.0]), np.array([3.0, 1.0]), np.full(3, 0.1))
    >>> h
    History(steps=3, epochs=2, first_loss=4, final_loss=1, stopped_early=False)
    """

    losses: np.ndarray
    epoch_losses: np.ndarray
    lrs: np.ndarray
    stopped_early: bool = False

    @property
    def final_loss(self):
        """Last step loss (NaN if no step was taken)."""
        return float(self.losses[-1]) if self.losses.size else math.nan

    def __repr__(self):
        first = float(self.losses[0]) if self.losses.size else math.nan
        return (f"History(steps={self.losses.size}, epochs={self.epoch_losses.size}, "
                f"first_loss={first:.6g}, final_loss={self.final_loss:.6g}, "
                f"stopped_early={self.stopped_early})")


def _as_tuple(x):
    if isinstance(x, np.ndarray):
        return (x,)
    return tuple(x)


def fit(value_and_grad, params, data=(), *, optimizer, epochs=1, batch_size=None,
        shuffle=True, seed=0, progress=True, consts=(), callback=None):
    """Mini-batch training loop.

    Parameters
    ----------
    value_and_grad : callable
        ``value_and_grad(params, *batch_data, *consts) -> (loss, grad)`` with
        ``grad`` structured like ``params``.
    params : ndarray or list of ndarray
        Parameters, updated in place by ``optimizer``.
    data : tuple of ndarray, default ()
        Arrays with a common length on axis 0 (a single array is allowed).
        With no data, each epoch is one call ``value_and_grad(params, *consts)``.
    optimizer : SGD, Adam, RMSprop or any object with ``step(params, grad)``
        Updates ``params`` in place; ``step`` returns the learning rate (or None).
    epochs : int, default 1
    batch_size : int or None, default None
        Rows per batch (the last batch may be smaller); None = full batch.
    shuffle : bool, default True
        Draw a fresh permutation each epoch (no effect on a single full batch).
    seed : int, Generator or None, default 0
        Seed of the ``numpy.random.Generator`` used for shuffling.
    progress : bool, default True
        Show a tqdm bar with the epoch's running mean loss.
    consts : tuple, default ()
        Extra arguments passed after the batch data.
    callback : callable, optional
        ``callback(step, loss, params)`` after each update; a truthy return stops.

    Returns
    -------
    History

    Raises
    ------
    GradcError
        On invalid arguments, or a NaN/inf loss (params keep the values of
        that step; the partial history is attached as ``err.history``).

    Examples
    --------
    >>> X = np.array([[1.0], [2.0], [3.0], [4.0]]); y = 2.0 * X[:, 0]
    >>> def vg(w, Xb, yb):
    ...     r = Xb @ w - yb
    ...     return 0.5 * np.mean(r**2), Xb.T @ r / len(yb)
    >>> w = np.zeros(1)
    >>> h = fit(vg, w, (X, y), optimizer=SGD(0.1), epochs=50, batch_size=2, progress=False)
    >>> h.losses.shape, bool(h.final_loss < 1e-8), np.round(w, 6)
    ((100,), True, array([2.]))
    """
    if not callable(value_and_grad):
        raise _error(f"value_and_grad must be callable, got {value_and_grad!r}")
    if not hasattr(optimizer, "step"):
        raise _error(f"optimizer must have a step(params, grad) method, got {optimizer!r}")
    if isinstance(epochs, bool) or not isinstance(epochs, numbers.Integral) or epochs < 1:
        raise _error(f"epochs must be a positive integer, got {epochs!r}")
    if callback is not None and not callable(callback):
        raise _error(f"callback must be callable or None, got {callback!r}")
    data = tuple(np.asarray(d) for d in _as_tuple(data))
    consts = _as_tuple(consts)
    n = None
    for i, d in enumerate(data):
        if d.ndim == 0:
            raise _error(f"data[{i}] is a scalar; data arrays need the batch on axis 0")
        if n is None:
            n = d.shape[0]
        elif d.shape[0] != n:
            raise _error(f"data[{i}] has {d.shape[0]} rows on axis 0 but data[0] has {n}")
    if n == 0:
        raise _error("data arrays are empty (0 rows)")
    if batch_size is not None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
            raise _error(f"batch_size must be a positive integer or None, got {batch_size!r}")
        if n is None:
            raise _error("batch_size was given but data is empty")
    bs = n if (batch_size is None or n is None) else min(int(batch_size), n)
    per_epoch = 1 if n is None else -(-n // bs)
    rng = np.random.default_rng(seed)

    losses, lrs, epoch_losses = [], [], []
    stopped = False

    def history():
        return History(np.array(losses, dtype=float), np.array(epoch_losses, dtype=float),
                       np.array(lrs, dtype=float), stopped)

    step = 0
    with tqdm(total=epochs * per_epoch, disable=not progress, unit="step") as bar:
        for epoch in range(epochs):
            if n is not None and per_epoch > 1 and shuffle:
                order = rng.permutation(n)
            else:
                order = None
            epoch_sum, epoch_count = 0.0, 0
            for b in range(per_epoch):
                if n is None or per_epoch == 1:
                    batch = data
                elif order is None:
                    batch = tuple(d[b * bs:(b + 1) * bs] for d in data)
                else:
                    idx = order[b * bs:(b + 1) * bs]
                    batch = tuple(d[idx] for d in data)
                out = value_and_grad(params, *batch, *consts)
                try:
                    loss, grad = out
                    loss = float(loss)
                except (TypeError, ValueError):
                    raise _error("value_and_grad must return (scalar loss, grad), "
                                 f"got {type(out).__name__} at step {step}") from None
                if not math.isfinite(loss):
                    if epoch_count:
                        epoch_losses.append(epoch_sum / epoch_count)
                    err = _error(f"loss is {loss} at step {step} (epoch {epoch}, batch {b}); "
                                 "stopping (try a smaller learning rate or clip_norm)")
                    err.history = history()
                    raise err
                lr = optimizer.step(params, grad)
                losses.append(loss)
                lrs.append(math.nan if lr is None else float(lr))
                epoch_sum += loss
                epoch_count += 1
                bar.update(1)
                if progress:
                    bar.set_postfix_str(f"epoch={epoch + 1}/{epochs} loss={epoch_sum / epoch_count:.4g}",
                                        refresh=False)
                if callback is not None and callback(step, loss, params):
                    stopped = True
                step += 1
                if stopped:
                    break
            epoch_losses.append(epoch_sum / epoch_count)
            if stopped:
                break
    return history()
