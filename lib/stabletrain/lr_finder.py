"""The learning-rate range test (Smith, 2017): sweep the LR upwards, watch the loss.

:func:`lr_range_test` trains for ``num_iters`` optimizer steps while the learning
rate grows from ``start_lr`` to ``end_lr``, records the training loss after each
step, and then puts the model, the optimizer and every random generator back
exactly as they were, so the test can be run right before a real training
without changing it.

The LR of step ``i`` (``i = 0 … n−1``, ``n = num_iters``) is

.. math::

    \\text{exp:}\\quad lr_i = lr_0 \\,(lr_1/lr_0)^{i/(n-1)}, \\qquad
    \\text{linear:}\\quad lr_i = lr_0 + (lr_1 - lr_0)\\, i/(n-1)

with ``lr_0 = start_lr`` and ``lr_1 = end_lr``. ``losses[i]`` is the loss
measured on the next batch *after* the update made with ``lrs[i]`` (the loss of
a batch seen before that update says nothing about ``lrs[i]``), smoothed with a
bias-corrected exponential moving average of weight ``a = smooth``:

.. math::

    m_i = (1-a)\\, m_{i-1} + a\\, \\ell_i,\\quad m_{-1} = 0, \\qquad
    \\bar\\ell_i = m_i / (1 - (1-a)^{i+1}).

The test stops when :math:`\\bar\\ell_i` exceeds ``diverge_threshold`` × its best
value, or at the first non-finite loss. The suggestion (:func:`suggest_lr`) is
the steepest descent of the loss per decade of LR, read off a *centred* smoothing
(:func:`zero_lag_smooth`) because the causal average above lags the sweep.

Example:
    >>> import torch
    >>> from stabletrain import TinyUNet, make_loaders
    >>> from stabletrain.lr_finder import lr_range_test
    >>> train, _ = make_loaders(num_train=64, num_val=8, batch_size=8)
    >>> model = TinyUNet(base_channels=8)
    >>> opt = torch.optim.Adam(model.parameters())
    >>> result = lr_range_test(model, opt, torch.nn.BCEWithLogitsLoss(), train)  # doctest: +SKIP
    >>> result.suggestion, result.suggestion_range  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import nn

from .loop import _forward, compute_loss, default_loss, outputs_to_float32, split_batch, to_device
from .update import Update
from .utils import capture_rng_state, cpu_copy, restore_rng_state

__all__ = [
    "LR_RANGE_MODES",
    "LRRangeTestResult",
    "MovingAverage",
    "ema",
    "lr_range_test",
    "suggest_lr",
    "zero_lag_smooth",
]

LR_RANGE_MODES = ("exp", "linear")

#: Fraction of the loss drop that bounds :attr:`LRRangeTestResult.suggestion_range`.
_BAND = 0.1
#: Width (in decades of LR) of the centred smoothing the suggestion is read from.
_WIDTH = 0.25


class MovingAverage:
    """Bias-corrected exponential moving average, fed one value at a time.

    With weight ``a = smooth`` in ``(0, 1]``, :meth:`update` returns
    ``m_k / (1 − (1−a)^k)`` where ``m_k = (1−a) m_{k−1} + a ℓ_k``, ``m_0 = 0``, over the
    ``k`` finite values seen so far; a non-finite value returns ``nan`` and leaves the
    average as it was.

    Raises:
        ValueError: ``smooth`` outside ``(0, 1]``.
    """

    def __init__(self, smooth: float) -> None:
        if not 0 < smooth <= 1:
            raise ValueError(f"smooth must be in (0, 1], got {smooth}")
        self.smooth = smooth
        self.count = 0
        self._avg = 0.0

    def update(self, value: float) -> float:
        if not math.isfinite(value):
            return math.nan
        self.count += 1
        self._avg = (1 - self.smooth) * self._avg + self.smooth * value
        return self._avg / (1 - (1 - self.smooth) ** self.count)


def ema(values: Iterable[float], smooth: float) -> list[float]:
    """:class:`MovingAverage` of ``values`` (the causal smoothing of
    :attr:`LRRangeTestResult.losses`, and of the loss curves in the figures)."""
    average = MovingAverage(smooth)
    return [average.update(value) for value in values]


def zero_lag_smooth(
    lrs: Sequence[float], values: Sequence[float], decades: float = _WIDTH
) -> list[float]:
    r"""Centred smoothing over the log-LR axis, for the suggestion.

    .. math::

        \tilde\ell_i = \frac{\sum_{j \in J_i} e^{-|x_j - x_i|/w}\,\ell_j}
                             {\sum_{j \in J_i} e^{-|x_j - x_i|/w}},\qquad
        x = \log_{10} lr,\quad w = \text{decades},

    where :math:`J_i` holds the points within :math:`\min(x_i - x_0, x_{n-1} - x_i)`
    of :math:`x_i`, so the window is symmetric everywhere, edges included.

    Why not the moving average of ``losses``: a causal average lags. With weight
    ``a`` it describes on average the loss ``(1 − a)/a`` steps earlier (19 steps
    for ``a = 0.05``, 1.5 decades in a 100-step sweep over 8 decades), which moves
    the descent to larger LRs. A symmetric window does not shift a trend, and a
    width of a quarter of a decade keeps the descent sharp (LRs within a factor
    1.8 of each other train alike) instead of mixing it with the blow-up beyond.
    """
    x = np.log10(np.asarray(lrs, dtype=float))
    y = np.asarray(values, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"lrs and values must have the same length, got {x.size} and {y.size}")
    if not decades > 0:
        raise ValueError(f"decades must be > 0, got {decades}")
    out = np.empty_like(y)
    for i in range(y.size):
        reach = min(x[i] - x[0], x[-1] - x[i]) + 1e-12
        near = np.abs(x - x[i]) <= reach
        weights = np.exp(-np.abs(x[near] - x[i]) / decades)
        out[i] = float(np.sum(weights * y[near]) / np.sum(weights))
    return out.tolist()


def suggest_lr(lrs: Sequence[float], losses: Sequence[float]) -> tuple[float, tuple[float, float]]:
    """The suggestion rule of the range test, on smoothed losses.

    :func:`lr_range_test` applies it to the centred, *zero-lag* smoothing of the
    raw losses (:func:`zero_lag_smooth`): the causal moving average that decides
    when to stop lags behind the sweep and would push the suggestion to too
    large LRs.

    Let ``L`` be the finite smoothed losses, ``k = argmin L`` and ``j`` the index
    of the largest loss before ``k`` (where the descent starts). With the drop
    ``Δ = L_j − L_k``:

    - ``suggestion_range = (lrs[lo], lrs[hi])`` where ``lo`` is the first index
      after ``j`` with ``L ≤ L_j − 0.1·Δ`` (10 % of the drop done) and ``hi`` the
      first with ``L ≤ L_k + 0.1·Δ`` (90 % done): the LRs over which the loss
      really falls, like the rise time of a step response. Above ``hi`` the
      loss has stopped improving and is about to blow up.
    - ``suggestion = lrs[s]``, ``s = argmin_{lo ≤ i ≤ hi} dL/d log(lr)``: the LR of
      the steepest descent per decade inside that range (central differences,
      ``numpy.gradient`` over ``log lr``).

    If the loss never falls (``k = 0`` or ``Δ ≤ 10⁻⁶·|L_j|``) there is nothing to
    suggest: the result is ``nan`` and ``(nan, nan)``, never a made-up value.

    Args:
        lrs: the learning rates, increasing, all ``> 0``.
        losses: the smoothed losses, the same length (non-finite entries are ignored).

    Returns:
        ``(suggestion, (low, high))``.
    """
    if len(lrs) != len(losses):
        raise ValueError(
            f"lrs and losses must have the same length, got {len(lrs)} and {len(losses)}"
        )
    pairs = [(lr, loss) for lr, loss in zip(lrs, losses) if math.isfinite(loss)]
    nothing = (math.nan, (math.nan, math.nan))
    if len(pairs) < 3:
        return nothing
    x = np.log(np.array([p[0] for p in pairs], dtype=float))
    y = np.array([p[1] for p in pairs], dtype=float)
    k = int(np.argmin(y))
    if k == 0:
        return nothing
    j = int(np.argmax(y[: k + 1]))
    drop = y[j] - y[k]
    if not drop > 1e-6 * abs(y[j]):
        return nothing
    segment = y[j : k + 1]
    lo = j + int(np.argmax(segment <= y[j] - _BAND * drop))
    hi = j + int(np.argmax(segment <= y[k] + _BAND * drop))
    slopes = np.gradient(y, x)
    s = lo + int(np.argmin(slopes[lo : hi + 1]))
    return float(math.exp(x[s])), (float(math.exp(x[lo])), float(math.exp(x[hi])))


@dataclass
class LRRangeTestResult:
    """What :func:`lr_range_test` measured.

    Attributes:
        lrs: the LR of each completed step (of the parameter group with the
            largest LR; the other groups keep their ratio to it).
        losses: smoothed, bias-corrected loss after each step (``nan`` at a
            non-finite raw loss).
        raw_losses: the measured loss after each step.
        suggestion: the suggested LR (see :func:`suggest_lr`), ``nan`` if the
            loss never fell.
        suggestion_range: ``(low, high)`` LRs over which the loss fell.
        suggestion_losses: the centred, zero-lag smoothing (:func:`zero_lag_smooth`)
            of the finite raw losses, each first clipped to ``diverge_threshold``
            × the best smoothed loss (so a blow-up cannot leak into the descent),
            that the suggestion is computed from; ``nan`` where the raw loss was
            not finite.
        initial_loss: the loss before the first update.
        stop_reason: ``"completed"``, ``"diverged"`` (smoothed loss above
            ``diverge_threshold`` × best) or ``"non-finite loss"``.
    """

    lrs: list[float]
    losses: list[float]
    raw_losses: list[float]
    suggestion: float
    suggestion_range: tuple[float, float]
    suggestion_losses: list[float] = field(default_factory=list)
    initial_loss: float = math.nan
    stop_reason: str = "completed"
    mode: str = "exp"
    best_loss: float = field(init=False)
    best_lr: float = field(init=False)

    def __post_init__(self) -> None:
        finite = [(loss, lr) for lr, loss in zip(self.lrs, self.losses) if math.isfinite(loss)]
        self.best_loss, self.best_lr = min(finite) if finite else (math.nan, math.nan)

    def plot(self, ax: Axes | None = None) -> Figure:
        """Loss against LR (log axis for ``mode="exp"``): raw points, the causal
        smoothed curve (``losses``), the centred curve the suggestion comes
        from (``suggestion_losses``), the suggestion (dot and dashed line) and its range (shaded); a
        non-finite loss is marked with an ✕ at the top of the axes."""
        import matplotlib.pyplot as plt

        if ax is None:
            fig, ax = plt.subplots(figsize=(6, 3.5))
        else:
            fig = ax.figure
        lrs = np.asarray(self.lrs, dtype=float)
        raw = np.asarray(self.raw_losses, dtype=float)
        smooth = np.asarray(self.losses, dtype=float)
        zero_lag = np.asarray(self.suggestion_losses, dtype=float)
        if zero_lag.size != lrs.size:
            zero_lag = np.full(lrs.size, np.nan)
        ax.plot(lrs, raw, ".", color="0.6", markersize=3, label="raw loss")
        ax.plot(lrs, smooth, "-", color="C0", label="smoothed loss (causal)")
        ax.plot(lrs, zero_lag, "-", color="C1", lw=1.2, label="centred smoothing (suggestion)")
        curves = np.vstack([raw, smooth, zero_lag])
        if np.isfinite(curves).any():
            # show everything up to where the loss blows up, not the blow-up itself
            reference = zero_lag if np.isfinite(zero_lag).any() else smooth
            end = int(np.argmin(np.where(np.isfinite(reference), reference, np.inf))) + 1
            head = curves[:, :end][np.isfinite(curves[:, :end])]
            bottom = float(curves[np.isfinite(curves)].min())
            top = float(head.max()) if head.size else float(curves[np.isfinite(curves)].max())
            span = max(top - bottom, 1e-12)
            ax.set_ylim(bottom - 0.05 * span, top + 0.1 * span)
        bad = ~np.isfinite(raw)
        if bad.any():
            ax.plot(
                lrs[bad],
                [ax.get_ylim()[1]] * int(bad.sum()),
                "x",
                color="C3",
                mew=2,
                markersize=9,
                label="non-finite loss",
            )
        low, high = self.suggestion_range
        if math.isfinite(low) and math.isfinite(high):
            ax.axvspan(low, high, color="C2", alpha=0.15, label="suggestion range")
        if math.isfinite(self.suggestion):
            ax.axvline(self.suggestion, color="C2", linestyle="--")
            ok = np.isfinite(zero_lag)
            y = np.interp(math.log(self.suggestion), np.log(lrs[ok]), zero_lag[ok])
            ax.plot(
                [self.suggestion], [y], "o", color="C2", label=f"suggestion {self.suggestion:.2g}"
            )
        ax.set_xscale("log" if self.mode == "exp" else "linear")
        ax.set(xlabel="learning rate", ylabel="training loss", title="LR range test")
        ax.legend(fontsize=8)
        fig.tight_layout()
        return fig


# ----------------------------------------------------------------------------- state snapshots


def _put_back(live: Any, saved: Any) -> Any:
    if isinstance(live, torch.Tensor) and live.shape == saved.shape and live.dtype == saved.dtype:
        live.copy_(saved)
        return live
    return saved


class _Snapshot:
    """Everything the range test changes, copied so it can be put back bit for bit."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loader: Any,
        stateful: Iterable[Any] = (),
    ) -> None:
        self.params = [(p, cpu_copy(p)) for p in model.parameters()]
        self.grads = [(p, None if p.grad is None else cpu_copy(p.grad)) for p in model.parameters()]
        self.buffers = [(b, cpu_copy(b)) for b in model.buffers()]
        self.modes = [(m, m.training) for m in model.modules()]
        # (live tensor, copy) pairs: restoring copies back in place keeps tensor identity
        self.opt_state = {
            p: {k: (v, cpu_copy(v)) for k, v in s.items()} for p, s in optimizer.state.items()
        }
        self.groups = [
            {k: copy.deepcopy(v) for k, v in g.items() if k != "params"}
            for g in optimizer.param_groups
        ]
        self.states = [(obj, cpu_copy(obj.state_dict())) for obj in stateful if obj is not None]
        self.rng = capture_rng_state()
        self.generators = []
        for gen in (
            getattr(loader, "generator", None),
            getattr(getattr(loader, "sampler", None), "generator", None),
        ):
            if isinstance(gen, torch.Generator) and all(gen is not g for g, _ in self.generators):
                self.generators.append((gen, gen.get_state()))

    @torch.no_grad()
    def restore(self, optimizer: torch.optim.Optimizer) -> None:
        for p, saved in self.params:
            p.copy_(saved)
        for p, saved in self.grads:
            p.grad = None if saved is None else saved.to(p.device)
        for b, saved in self.buffers:
            b.copy_(saved)
        for m, mode in self.modes:
            m.training = mode
        optimizer.state.clear()
        for p, saved in self.opt_state.items():
            optimizer.state[p] = {k: _put_back(live, copy) for k, (live, copy) in saved.items()}
        for group, saved in zip(optimizer.param_groups, self.groups):
            for key in [k for k in group if k != "params" and k not in saved]:
                del group[key]
            group.update(saved)
        for obj, state in self.states:  # after the buffers: a guard re-reads them
            obj.load_state_dict(state)
        restore_rng_state(self.rng)
        for gen, state in self.generators:
            gen.set_state(state)


# ----------------------------------------------------------------------------- the test


def _check_number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    return float(value)


def _batches(loader: Iterable) -> Iterable:
    """Cycle through ``loader`` for as many batches as needed."""
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise ValueError("loader is empty")


def _loss(
    model: nn.Module,
    loss_fn: Callable | None,
    batch: Any,
    update: Update,
    batch_fn: Callable,
    device: torch.device,
) -> tuple[torch.Tensor, Callable]:
    """One batch's loss (and the loss function, :func:`~stabletrain.loop.default_loss` if none),
    the forward pass under the update's autocast, the loss in float32, as :func:`fit` does."""
    inputs, targets = to_device(batch_fn(batch), device)
    with update.autocast():
        outputs = outputs_to_float32(_forward(model, inputs))
    loss_fn = loss_fn or default_loss(outputs, targets)
    return compute_loss(loss_fn, outputs, targets, 0.0), loss_fn


def lr_range_test(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    loss_fn: Callable[..., torch.Tensor] | None,
    loader: Iterable,
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_iters: int = 100,
    mode: str = "exp",
    smooth: float = 0.05,
    diverge_threshold: float = 4.0,
    max_grad_norm: float | None = None,
    device: torch.device | str | None = None,
    update: Update | None = None,
    batch_fn: Callable[[Any], tuple[Any, torch.Tensor]] | None = None,
) -> LRRangeTestResult:
    """Run the LR range test and restore everything it touched.

    Each of the ``num_iters`` steps sets the LR (see the module docs for the
    sweep), does forward, backward and ``optimizer.step()`` on the next batch
    of ``loader`` (cycled if it is shorter), and records the loss of the
    following batch. Parameter groups keep their LR ratios: the group with the
    largest LR follows the sweep and the others are scaled with it (groups at
    LR 0 stay frozen; if all are 0, all follow the sweep).

    The test stops early

    - at the first non-finite loss (recorded, no update is made with it), and
    - when the smoothed loss exceeds ``diverge_threshold`` × the best smoothed
      loss so far (that step is recorded too).

    Afterwards the parameters, gradients and buffers of ``model`` (BatchNorm
    statistics included), its train/eval modes, the optimizer's state and
    hyper-parameters, Python's, NumPy's, torch's (CPU and CUDA) random states
    and the loader's shuffling generator are exactly what they were before —
    also if the test raises.

    Args:
        model: the network (on its device); trained in train mode.
        optimizer: an optimizer over the model's parameters (``None`` with ``update``).
        loss_fn: ``loss_fn(outputs, targets)`` (float32 outputs); a loss with
            ``uses_progress`` gets ``progress=0``; ``None``:
            :func:`~stabletrain.loop.default_loss`.
        loader: batches as :func:`~stabletrain.loop.fit` takes them (see ``batch_fn``).
        start_lr: first LR, ``> 0``.
        end_lr: last LR, ``> start_lr``.
        num_iters: number of steps, ``>= 3``.
        mode: ``"exp"`` (geometric sweep) or ``"linear"``.
        smooth: weight of a new loss in the moving average, in ``(0, 1]``
            (1 means no smoothing).
        diverge_threshold: ``> 1``; stop when the smoothed loss is this many
            times the best one.
        max_grad_norm: clip the gradient norm each step (as the real training
            will, if it clips); ``None`` for no clipping.
        device: where batches go; defaults to the model's device.
        update: the :class:`~stabletrain.update.Update` the training will use (a plain
            one or a guard), so its mixed precision, accumulation (each sweep step takes
            ``accumulation_steps`` batches) and clipping apply to the sweep too; its
            state, its scheduler's and its scaler's are restored afterwards.
        batch_fn: ``batch -> (inputs, targets)``, as for ``fit``.

    Returns:
        :class:`LRRangeTestResult` with ``lrs``, ``losses``, ``raw_losses``,
        ``suggestion`` (:func:`suggest_lr`), ``suggestion_range`` and ``plot()``.

    Raises:
        ValueError: an out-of-range argument, an unknown ``mode``, or an empty loader.
        TypeError: a non-numeric argument, or a loader that does not yield pairs.
    """
    start_lr = _check_number("start_lr", start_lr)
    end_lr = _check_number("end_lr", end_lr)
    smooth = _check_number("smooth", smooth)
    diverge_threshold = _check_number("diverge_threshold", diverge_threshold)
    if not start_lr > 0 or not math.isfinite(start_lr):
        raise ValueError(f"start_lr must be a finite number > 0, got {start_lr}")
    if not end_lr > start_lr or not math.isfinite(end_lr):
        raise ValueError(f"end_lr must be finite and > start_lr={start_lr}, got {end_lr}")
    if isinstance(num_iters, bool) or not isinstance(num_iters, int):
        raise TypeError(f"num_iters must be an int, got {type(num_iters).__name__}")
    if num_iters < 3:
        raise ValueError(f"num_iters must be >= 3, got {num_iters}")
    if mode not in LR_RANGE_MODES:
        raise ValueError(f"mode must be one of {LR_RANGE_MODES}, got {mode!r}")
    if not 0 < smooth <= 1:
        raise ValueError(f"smooth must be in (0, 1], got {smooth}")
    if not diverge_threshold > 1:
        raise ValueError(f"diverge_threshold must be > 1, got {diverge_threshold}")
    if max_grad_norm is not None and not _check_number("max_grad_norm", max_grad_norm) > 0:
        raise ValueError(f"max_grad_norm must be > 0 or None, got {max_grad_norm}")
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    if update is None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch optimizer, got {type(optimizer).__name__}")
        update = Update(model, optimizer, max_grad_norm=max_grad_norm)
    elif optimizer is not None and optimizer is not update.optimizer:
        raise ValueError("optimizer is not the update's optimizer: give the update only")
    elif max_grad_norm is not None:
        raise ValueError("max_grad_norm is for the plain update; the given update clips itself")
    optimizer = update.optimizer

    if mode == "exp":
        sweep = np.geomspace(start_lr, end_lr, num_iters)
    else:
        sweep = np.linspace(start_lr, end_lr, num_iters)
    largest = max(g["lr"] for g in optimizer.param_groups)
    ratios = [g["lr"] / largest if largest > 0 else 1.0 for g in optimizer.param_groups]
    device = torch.device(device) if device is not None else next(model.parameters()).device
    batch_fn = batch_fn or split_batch

    snapshot = _Snapshot(model, optimizer, loader, (update, update.scheduler, update.amp))
    lrs: list[float] = []
    raw: list[float] = []
    smoothed: list[float] = []
    initial = math.nan
    stop_reason = "completed"
    try:
        model.train()
        optimizer.zero_grad(set_to_none=True)
        batches = iter(_batches(loader))
        average, best = MovingAverage(smooth), math.inf
        # Iteration i measures the loss after step i-1, then makes step i.
        for i in range(num_iters + 1):
            window = []  # the update's accumulation window: its mean loss is the measurement
            for _ in range(update.accumulation_steps):
                loss, loss_fn = _loss(model, loss_fn, next(batches), update, batch_fn, device)
                window.append(loss)
            value = sum(float(w.detach()) for w in window) / len(window)
            if i == 0:
                initial = value
            else:
                lrs.append(float(sweep[i - 1]))
                raw.append(value)
                smoothed.append(average.update(value))
                if not math.isfinite(value):
                    stop_reason = "non-finite loss"
                    break
                best = min(best, smoothed[-1])
                if smoothed[-1] > diverge_threshold * best:
                    stop_reason = "diverged"
                    break
            if i == num_iters:
                break
            if not math.isfinite(value):  # the initial loss is already non-finite
                stop_reason = "non-finite loss"
                break
            for group, ratio in zip(optimizer.param_groups, ratios):
                group["lr"] = float(sweep[i]) * ratio
            for j, loss in enumerate(window):
                update.step(loss, sync=j + 1 == len(window))
    finally:
        snapshot.restore(optimizer)
    finite = [i for i, v in enumerate(raw) if math.isfinite(v)]
    zero_lag = [math.nan] * len(raw)
    # a blow-up must not leak into the descent through the window: clip it to the stop level
    cap = diverge_threshold * best if math.isfinite(best) else math.inf
    clipped = [min(raw[i], cap) for i in finite]
    smoothed_finite = zero_lag_smooth([lrs[i] for i in finite], clipped)
    for i, v in zip(finite, smoothed_finite):
        zero_lag[i] = v
    suggestion, band = suggest_lr(lrs, zero_lag)
    if not math.isfinite(suggestion):
        warnings.warn(
            "the loss never fell during the LR range test, so there is no suggestion "
            "(try a lower start_lr, more num_iters or check the data/loss)",
            RuntimeWarning,
            stacklevel=2,
        )
    return LRRangeTestResult(
        lrs=lrs,
        losses=smoothed,
        raw_losses=raw,
        suggestion=suggestion,
        suggestion_range=band,
        suggestion_losses=zero_lag,
        initial_loss=initial,
        stop_reason=stop_reason,
        mode=mode,
    )
