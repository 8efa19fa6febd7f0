"""Training utilities: learning-rate schedules, gradient clipping, SGD and a fit loop.

Contract
--------
* **Schedules** (:class:`constant`, :class:`staircase`, :class:`cosine`) are
  frozen, hashable objects.  Calling one with a 0-based integer step returns
  the learning rate for that step as a Python ``float``.
* **Parameters** are either one C-contiguous ``float64`` numpy array (any
  shape, usually flat) or a list/tuple of such arrays.  :meth:`SGD.step`
  updates them **in place**; arrays that cannot be updated in place
  (wrong dtype, non-contiguous, read-only) are rejected with a
  :class:`~gradc.errors.GradcError` naming the offending index.
* **Gradients** have the same structure and shapes as the parameters.  Any
  real dtype is accepted (converted to contiguous ``float64``); gradients are
  never modified.
* One SGD step is, per element, with ``s`` the clip factor
  ``min(1, clip_norm / ||g||)`` (global norm over all arrays)::

      d = s * g + weight_decay * p
      v = momentum * v + d                      # only if momentum > 0
      d = d + momentum * v  if nesterov else v  # only if momentum > 0
      p = p - lr * d

  The loop is a single fused numba kernel, :func:`_sgd_update`.
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
           "SGD", "History", "fit"]


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


_EMPTY = np.empty(0, dtype=np.float64)


class SGD:
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
        if callable(lr):
            self.schedule = lr
        else:
            self.schedule = constant(lr)
        self.momentum = _real("momentum", momentum, nonneg=True)
        if self.momentum >= 1.0:
            raise _error(f"momentum must be in [0, 1), got {momentum!r}")
        if not isinstance(nesterov, (bool, np.bool_)):
            raise _error(f"nesterov must be a bool, got {nesterov!r}")
        self.nesterov = bool(nesterov)
        if self.nesterov and self.momentum == 0.0:
            raise _error("nesterov=True requires momentum > 0")
        self.weight_decay = _real("weight_decay", weight_decay, nonneg=True)
        self.clip_norm = None if clip_norm is None else _real("clip_norm", clip_norm, positive=True)
        self.reset()

    def __repr__(self):
        lr = self.schedule.lr if isinstance(self.schedule, constant) else self.schedule
        return (f"SGD(lr={lr!r}, momentum={self.momentum!r}, nesterov={self.nesterov!r}, "
                f"weight_decay={self.weight_decay!r}, clip_norm={self.clip_norm!r})")

    def reset(self):
        """Forget velocity and restart the step counter at 0."""
        self._velocity = None
        self._shapes = None
        self._single = None
        self.step_count = 0

    @property
    def state(self):
        """The optimizer's state: ``{"step_count": int, "velocity": arrays or None}``."""
        vel = self._velocity
        if vel is not None:
            vel = [v.reshape(s) for v, s in zip(vel, self._shapes)]
            vel = vel[0] if self._single else vel
        return {"step_count": self.step_count, "velocity": vel}

    def lr_at(self, step):
        """Learning rate used at (0-based) ``step``, as a float."""
        lr = float(self.schedule(step))
        if not (math.isfinite(lr) and lr >= 0.0):
            raise _error(f"learning-rate schedule returned {lr!r} at step {step}; need finite >= 0")
        return lr

    def step(self, params, grad):
        """Apply one update to ``params`` in place; return the learning rate used."""
        ps, single = _as_list(params, "params")
        for i, p in enumerate(ps):
            name = _label("params", i, single)
            if not isinstance(p, np.ndarray):
                raise _error(f"{name} must be a numpy array (updated in place), got {type(p).__name__}")
            if p.dtype != np.float64:
                raise _error(f"{name} with shape {p.shape} has dtype {p.dtype}; need float64")
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
            if self.momentum != 0.0:
                self._velocity = [np.zeros(p.size) for p in ps]
        elif shapes != self._shapes or single != self._single:
            raise _error(f"params shapes {shapes} differ from the previous step's {self._shapes}; "
                         "call reset() to start over")
        scale = 1.0
        if self.clip_norm is not None:
            norm = _global_norm(gs)
            if norm > self.clip_norm:
                scale = self.clip_norm / norm
        lr = self.lr_at(self.step_count)
        for i, (p, g) in enumerate(zip(ps, gs)):
            v = _EMPTY if self._velocity is None else self._velocity[i]
            _sgd_update(p.reshape(-1), g.reshape(-1), v, lr, self.momentum,
                        self.nesterov, self.weight_decay, scale)
        self.step_count += 1
        return lr


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
    optimizer : SGD
        Any object with ``step(params, grad)`` returning the learning rate.
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
