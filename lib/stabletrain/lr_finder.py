r"""The LR range test: step ``i`` of ``n`` at :math:`lr_0 (lr_1/lr_0)^{i/(n-1)}` (``"exp"``)
or :math:`lr_0 + (lr_1 - lr_0)\, i/(n-1)` (``"linear"``), stopping when the smoothed loss
(:class:`MovingAverage`) exceeds ``diverge_threshold`` × its best or is not finite; then
everything is put back bit for bit. :func:`suggest_lr` reads a centred smoothing."""

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

from . import loop
from .checks import check_choice, check_float, check_int
from .distributed import mean_across_ranks
from .update import Update
from .utils import capture_rng_state, cpu_copy, restore_rng_state

LR_RANGE_MODES = ("exp", "linear")
_WIDTH = 0.25  # width (decades of LR) of the centred smoothing
_NO_DESCENT = "the loss never fell during the LR range test, so there is no suggestion (try a "
_NO_DESCENT += "lower start_lr, more num_iters or check the data/loss)"


class MovingAverage:
    """Bias-corrected EMA: with ``a = smooth`` in ``(0, 1]``, :meth:`update` returns
    ``m_k / (1 − (1−a)^k)``, ``m_k = (1−a) m_{k−1} + a ℓ_k``, ``m_0 = 0``, over the ``k``
    finite values so far; a non-finite value returns ``nan`` and changes nothing."""

    def __init__(self, smooth: float) -> None:
        self.smooth = check_float("smooth", smooth, min=0, max=1, low_open=True)
        self.count, self._avg = 0, 0.0

    def update(self, value: float) -> float:
        if not math.isfinite(value):
            return math.nan
        self.count += 1
        self._avg = (1 - self.smooth) * self._avg + self.smooth * value
        return self._avg / (1 - (1 - self.smooth) ** self.count)


def ema(values: Iterable[float], smooth: float) -> list[float]:
    """:class:`MovingAverage` of ``values``."""
    return list(map(MovingAverage(smooth).update, values))


def zero_lag_smooth(
    lrs: Sequence[float], values: Sequence[float], decades: float = _WIDTH
) -> list[float]:
    r"""Centred smoothing over :math:`x = \log_{10} lr`: :math:`\tilde\ell_i = \sum_j w_j
    \ell_j / \sum_j w_j`, :math:`w_j = e^{-|x_j - x_i|/\text{decades}}`, over the :math:`j`
    within :math:`\min(x_i - x_0, x_{n-1} - x_i)` of :math:`x_i` (a symmetric window)."""
    x = np.log10(np.asarray(lrs, dtype=float))
    y = np.asarray(values, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"lrs and values must have the same length, got {x.size} and {y.size}")
    decades = check_float("decades", decades, min=0, low_open=True, finite=False)
    out = np.empty_like(y)
    for i in range(y.size):
        near = np.abs(x - x[i]) <= min(x[i] - x[0], x[-1] - x[i]) + 1e-12
        weights = np.exp(-np.abs(x[near] - x[i]) / decades)
        out[i] = float(np.sum(weights * y[near]) / np.sum(weights))
    return out.tolist()


SUGGESTION_RULES = ("descent", "valley", "steep", "minimum")


def suggest_lr(
    lrs: Sequence[float], losses: Sequence[float], rule: str = "descent"
) -> tuple[float, tuple[float, float]]:
    """``(suggestion, (low, high))`` from increasing ``lrs`` and smoothed ``losses`` (the finite
    ones; ``nan`` where a rule finds nothing). ``"descent"``: ``k = argmin L``, ``j = argmax
    L[:k+1]``, ``Δ = L_j − L_k``; ``low``/``high`` the first LRs after ``j`` with ``L ≤ L_j − 0.1Δ``
    / ``L ≤ L_k + 0.1Δ``, the suggestion the steepest ``dL/d log lr`` between them (``nan`` if k = 0
    or Δ ≤ 1e-6 |L_j|). fastai's: ``"valley"``, 2/3 down the longest decreasing run (the band);
    ``"steep"``, the steepest point anywhere; ``"minimum"``, the LR of the lowest loss / 10."""
    rule = check_choice("rule", rule, SUGGESTION_RULES)
    x, y = np.asarray(lrs, dtype=float), np.asarray(losses, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"lrs and losses must have the same length, got {x.size} and {y.size}")
    x, y = np.log(x[np.isfinite(y)]), y[np.isfinite(y)]
    nothing = (math.nan, (math.nan, math.nan))
    if y.size < 3:
        return nothing
    k = int(np.argmin(y))
    if rule == "minimum":
        return float(math.exp(x[k])) / 10, (math.nan, math.nan)
    if rule == "steep":
        return float(math.exp(x[int(np.argmin(np.diff(y) / np.diff(x)))])), (math.nan, math.nan)
    if rule == "valley":  # the longest strictly decreasing subsequence ending at each point
        run = [1] * y.size
        for i in range(1, y.size):
            run[i] = 1 + max((run[j] for j in range(i) if y[j] > y[i]), default=0)
        end = int(np.argmax(run))
        start = max(0, end - run[end])  # as fastai counts it
        third = (end - start) / 3
        pick = start + int(third) + int(third / 2)
        return float(math.exp(x[pick])), (float(math.exp(x[start])), float(math.exp(x[end])))
    j = int(np.argmax(y[: k + 1]))
    drop = y[j] - y[k]
    if k == 0 or not drop > 1e-6 * abs(y[j]):
        return nothing
    segment = y[j : k + 1]
    lo = j + int(np.argmax(segment <= y[j] - 0.1 * drop))
    hi = j + int(np.argmax(segment <= y[k] + 0.1 * drop))
    s = lo + int(np.argmin(np.gradient(y, x)[lo : hi + 1]))
    return float(math.exp(x[s])), (float(math.exp(x[lo])), float(math.exp(x[hi])))


@dataclass
class LRRangeTestResult:
    """What :func:`lr_range_test` measured: ``lrs`` (of the group with the largest LR) per
    completed step; ``losses``, the causal smoothing of ``raw_losses`` (``nan`` where not
    finite); ``suggestion_losses``, the zero-lag smoothing (raw losses clipped to
    ``diverge_threshold`` × the best smoothed one) that :func:`suggest_lr` reads; ``stop_reason``
    ``"completed"``, ``"diverged"`` or ``"non-finite loss"``."""

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

    def suggest(self, rule: str = "descent") -> float:
        """:func:`suggest_lr` of the centred smoothing by ``rule`` (one of ``SUGGESTION_RULES``)."""
        return suggest_lr(self.lrs, self.suggestion_losses, rule)[0]

    def plot(self, ax: Axes | None = None) -> Figure:
        """Loss against LR: raw, both smoothings, the suggestion and its range; ✕: non-finite."""
        import matplotlib.pyplot as plt

        own = ax is None
        fig, ax = plt.subplots(figsize=(6, 3.5)) if own else (ax.figure, ax)
        lrs, raw, smooth = (np.asarray(v, float) for v in (self.lrs, self.raw_losses, self.losses))
        zero_lag = np.asarray(self.suggestion_losses, dtype=float)
        if zero_lag.size != lrs.size:
            zero_lag = np.full(lrs.size, np.nan)
        ax.plot(lrs, raw, ".", color="0.6", markersize=3, label="raw loss")
        ax.plot(lrs, smooth, "-", color="C0", label="smoothed loss (causal)")
        ax.plot(lrs, zero_lag, "-", color="C1", lw=1.2, label="centred smoothing (suggestion)")
        curves = np.vstack([raw, smooth, zero_lag])
        finite = curves[np.isfinite(curves)]
        if finite.size:
            reference = zero_lag if np.isfinite(zero_lag).any() else smooth
            end = int(np.argmin(np.where(np.isfinite(reference), reference, np.inf))) + 1
            head = curves[:, :end][np.isfinite(curves[:, :end])]
            top = float(head.max()) if head.size else float(finite.max())
            span = max(top - float(finite.min()), 1e-12)
            ax.set_ylim(float(finite.min()) - 0.05 * span, top + 0.1 * span)
        bad = ~np.isfinite(raw)
        if bad.any():
            tops = np.full(int(bad.sum()), ax.get_ylim()[1])
            ax.plot(lrs[bad], tops, "x", color="C3", mew=2, markersize=9, label="non-finite loss")
        if all(map(math.isfinite, self.suggestion_range)):
            ax.axvspan(*self.suggestion_range, color="C2", alpha=0.15, label="suggestion range")
        if math.isfinite(self.suggestion):
            ax.axvline(self.suggestion, color="C2", linestyle="--")
            ok = np.isfinite(zero_lag)
            y = np.interp(math.log(self.suggestion), np.log(lrs[ok]), zero_lag[ok])
            label = f"suggestion {self.suggestion:.2g}"
            ax.plot([self.suggestion], [y], "o", color="C2", label=label)
        xscale = "log" if self.mode == "exp" else "linear"
        ax.set(xscale=xscale, xlabel="learning rate", ylabel="training loss", title="LR range test")
        ax.legend(fontsize=8)
        if own:
            fig.tight_layout()
        return fig


def _put_back(live: Any, saved: Any) -> Any:
    same = isinstance(live, torch.Tensor) and (live.shape, live.dtype) == (saved.shape, saved.dtype)
    return live.copy_(saved) if same else saved


class _Snapshot:
    """Everything the range test changes, to be put back bit for bit and in place."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, loader, stateful):
        self.tensors = [*model.parameters(), *model.buffers()]
        self.saved = cpu_copy(self.tensors)
        self.grads = [(p, cpu_copy(p.grad)) for p in model.parameters()]
        self.modes = [(m, m.training) for m in model.modules()]
        # the live state tensors and their copies: restoring in place keeps tensor identity
        self.opt_state = {p: (dict(s), cpu_copy(s)) for p, s in optimizer.state.items()}
        groups = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
        self.groups = [copy.deepcopy(g) for g in groups]
        self.states = [(obj, cpu_copy(obj.state_dict())) for obj in stateful if obj is not None]
        self.rng = capture_rng_state()
        sampler = getattr(loader, "sampler", None)
        gens = (getattr(loader, "generator", None), getattr(sampler, "generator", None))
        unique = {id(g): g for g in gens if isinstance(g, torch.Generator)}.values()
        self.generators = [(gen, gen.get_state()) for gen in unique]

    @torch.no_grad()
    def restore(self, optimizer: torch.optim.Optimizer) -> None:
        for live, saved in zip(self.tensors, self.saved):
            live.copy_(saved)
        for p, saved in self.grads:
            p.grad = None if saved is None else saved.to(p.device)
        for m, mode in self.modes:
            m.training = mode
        optimizer.state.clear()
        for p, (live, saved) in self.opt_state.items():
            optimizer.state[p] = {k: _put_back(live[k], v) for k, v in saved.items()}
        for group, saved in zip(optimizer.param_groups, self.groups):
            for key in [k for k in group if k != "params" and k not in saved]:
                del group[key]
            group.update(saved)
        for obj, state in self.states:  # after the buffers: a guard re-reads them
            obj.load_state_dict(state)
        restore_rng_state(self.rng)
        for gen, state in self.generators:
            gen.set_state(state)


def _batches(loader: Iterable) -> Iterable:
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise ValueError("loader is empty")


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
    """Run the LR range test, then restore all it touched (also if it raises). Each step sets
    the LR (the largest group follows the sweep, the others keep their ratio), trains on the
    next batch (``loader`` cycled) as ``fit`` would and records the loss of the following one.
    ``loss_fn`` ``None``: ``default_loss``; ``update``: the training's ``Update`` (then
    ``optimizer`` is ``None``); ``max_grad_norm`` clips the plain update. In a process group each
    rank sweeps its own batches, the loss averaged over the ranks: all return the same result."""
    start_lr = check_float("start_lr", start_lr, min=0, low_open=True)
    if (end_lr := check_float("end_lr", end_lr, min=0, low_open=True)) <= start_lr:
        raise ValueError(f"end_lr must be > start_lr ({start_lr!r}), got {end_lr!r}")
    check_int("num_iters", num_iters, min=3)
    check_choice("mode", mode, LR_RANGE_MODES)
    average = MovingAverage(smooth)  # checks smooth
    check_float("diverge_threshold", diverge_threshold, min=1, low_open=True, finite=False)
    loop._check_callable("loss_fn", loss_fn, "torch.nn.MSELoss()")  # fit's rule
    loop._check_callable("batch_fn", batch_fn, "lambda batch: (inputs, targets)")
    if update is None:
        update = Update(model, optimizer, max_grad_norm=max_grad_norm)
    elif not isinstance(update, Update):
        raise TypeError(f"update must be a stabletrain Update or None, got {update!r}")
    elif optimizer is not None and optimizer is not update.optimizer:
        raise ValueError("optimizer is not the update's optimizer: give the update only")
    elif max_grad_norm is not None:
        raise ValueError("max_grad_norm is for the plain update; the given update clips itself")
    optimizer = update.optimizer
    if not {id(p) for p in model.parameters()} & {id(p) for p in update.params()}:
        hint = "build it from model.parameters() (the weights would never change)"
        raise ValueError(f"the optimizer holds none of the model's parameters: {hint}")
    sweep = (np.geomspace if mode == "exp" else np.linspace)(start_lr, end_lr, num_iters)
    largest = max(g["lr"] for g in optimizer.param_groups)
    ratios = [g["lr"] / largest if largest > 0 else 1.0 for g in optimizer.param_groups]
    device = torch.device(device) if device is not None else next(model.parameters()).device
    batch_fn = batch_fn or loop.split_batch
    snapshot = _Snapshot(model, optimizer, loader, (update, update.scheduler, update.amp))
    lrs, raw, smoothed = [], [], []
    initial, stop, best = math.nan, "completed", math.inf
    try:
        model.train()
        optimizer.zero_grad(set_to_none=True)
        batches = iter(_batches(loader))
        # Iteration i measures the loss after step i-1, then makes step i.
        for i in range(num_iters + 1):
            window = []  # the update's accumulation window: its mean loss is the measurement
            for _ in range(update.accumulation_steps):
                inputs, targets = loop.to_device(batch_fn(next(batches)), device)
                with update.autocast():  # the forward pass, the loss in float32, as in fit
                    outputs = loop.outputs_to_float32(loop._forward(model, inputs))
                loss_fn = loss_fn or loop.default_loss(outputs, targets)
                window.append(loop.compute_loss(loss_fn, outputs, targets, 0.0))
            # in a process group the mean over every rank: all stop together, with one result
            value = mean_across_ranks(sum(float(w.detach()) for w in window) / len(window))
            if i == 0:
                initial = value
            else:
                lrs.append(float(sweep[i - 1]))
                raw.append(value)
                smoothed.append(average.update(value))
                best = min(best, smoothed[-1])  # unchanged by a nan
            if not math.isfinite(value) or (i and smoothed[-1] > diverge_threshold * best):
                stop = "diverged" if math.isfinite(value) else "non-finite loss"
                break
            if i == num_iters:
                break
            for group, ratio in zip(optimizer.param_groups, ratios):
                group["lr"] = float(sweep[i]) * ratio
            for j, loss in enumerate(window):
                update.step(loss, sync=j + 1 == len(window))
    finally:
        snapshot.restore(optimizer)
    ok = np.isfinite(raw)
    # a blow-up must not leak into the descent through the window: clip it to the stop level
    cap = diverge_threshold * best if math.isfinite(best) else math.inf
    zero_lag = np.full(len(raw), np.nan)
    zero_lag[ok] = zero_lag_smooth(np.asarray(lrs)[ok], np.minimum(np.asarray(raw)[ok], cap))
    zero_lag = zero_lag.tolist()
    suggestion, band = suggest_lr(lrs, zero_lag)
    if not math.isfinite(suggestion):
        warnings.warn(_NO_DESCENT, RuntimeWarning, stacklevel=2)
    return LRRangeTestResult(lrs, smoothed, raw, suggestion, band, zero_lag, initial, stop, mode)
