r"""Learning-rate schedulers, stepped once per optimizer step.

Every scheduler here is a real :class:`torch.optim.lr_scheduler.LRScheduler`:
construct it on an optimizer, call ``scheduler.step()`` after every optimizer
step that really happened, and it sets each parameter group's ``lr``. All
lengths are counted in optimizer steps (:func:`epochs_to_steps` converts
epochs), every formula uses **each parameter group's own base LR** ``b`` (its
``lr`` when the scheduler is built, or ``initial_lr`` if an earlier scheduler
set it), and ``state_dict()`` returns copies, so an in-memory snapshot taken
mid-run restores the exact same continuation.

Notation used by every docstring below:

- :math:`s`: number of ``step()`` calls so far (0 right after construction);
- :math:`b`: a group's base LR; :math:`W`: ``warmup_steps`` (default 0);
  :math:`T`: ``total_steps``; :math:`t = s - W`; :math:`D = T - W > 0`;
- :math:`\eta`: the floor, ``min_lr`` (absolute; a number or one per group) if
  given, else ``min_lr_ratio`` :math:`\times b` (``alpha`` is an alias; default 0).

Warmup (every type except ``onecycle``): for :math:`s < W`,

.. math:: \text{lr} = a + (b - a)\,\frac{s}{W},

with :math:`a` = ``warmup_start_lr`` if given, else ``warmup_start_factor``
:math:`\times b` (default 0.01). After warmup each type applies its rule to
:math:`t`.

The metric-driven types (``plateau``, ``adaptive`` and :func:`with_warmup`
around a metric-driven scheduler) have ``metric_driven = True``: they take
``step()`` once per optimizer step like the others *and* ``step(metric)`` after
each validation; a metric report does not count as a step. (Torch's other
schedulers would read a positional argument as an epoch number.)

Build one from a flat configuration (the style of the course's configuration
files) or from keywords:

Example:
    >>> import torch
    >>> from stabletrain.schedulers import build_scheduler, lr_curve
    >>> model = torch.nn.Linear(2, 1)
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> sched = build_scheduler(
    ...     opt, {"type": "warmup_cosine", "warmup_steps": 2, "total_steps": 10}
    ... )
    >>> [round(x, 4) for x in lr_curve({"type": "step", "step_size": 2, "gamma": 0.5}, 5)]
    [1.0, 1.0, 0.5, 0.5, 0.25]
"""

from __future__ import annotations

import copy
import inspect
import math
import numbers
import statistics
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

__all__ = [
    "SCHEDULER_ALIASES",
    "SCHEDULER_TYPES",
    "AdaptiveScheduler",
    "Constant",
    "ConstantWithWarmup",
    "CosineRestarts",
    "ExponentialDecay",
    "OneCycle",
    "PlateauWithWarmup",
    "PolynomialDecay",
    "StepDecay",
    "WarmupCosine",
    "WarmupWrapper",
    "build_scheduler",
    "epochs_to_steps",
    "is_metric_driven",
    "lr_curve",
    "with_warmup",
]


# --------------------------------------------------------------------------- validation helpers


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _check_float(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """Return ``float(value)`` or raise ``ValueError`` naming ``name`` and the accepted range."""
    lo = "(-inf" if low is None else ("(" if low_open else "[") + f"{low:g}"
    hi = "inf)" if high is None else f"{high:g}" + (")" if high_open else "]")
    rng = f"{lo}, {hi}"
    if not _is_number(value) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number in {rng}, got {value!r}")
    v = float(value)
    if low is not None and (v < low or (low_open and v == low)):
        raise ValueError(f"{name} must be in {rng}, got {value!r}")
    if high is not None and (v > high or (high_open and v == high)):
        raise ValueError(f"{name} must be in {rng}, got {value!r}")
    return v


def _per_group(name: str, value: Any, groups: int) -> list[float]:
    """A number, or a sequence with one number per parameter group, as a list of floats."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != groups:
            raise ValueError(
                f"{name} must be a number or have one value per parameter group "
                f"({groups}), got {len(value)} values"
            )
        return [_check_float(f"{name}[{i}]", v, low=0.0) for i, v in enumerate(value)]
    return [_check_float(name, value, low=0.0)] * groups


def _set_lr(group: dict[str, Any], value: float) -> None:
    """Set ``group["lr"]`` without replacing a tensor LR (torch supports tensor LRs)."""
    if isinstance(group["lr"], torch.Tensor):
        group["lr"].fill_(value)
    else:
        group["lr"] = value


def _group_lrs(optimizer: Optimizer) -> list[Any]:
    return [
        g["lr"].clone() if isinstance(g["lr"], torch.Tensor) else g["lr"]
        for g in optimizer.param_groups
    ]


def _base_lrs_of(optimizer: Optimizer) -> list[float]:
    """The base LRs that ``LRScheduler.__init__`` will adopt (``initial_lr`` if set, else ``lr``)."""
    if not isinstance(optimizer, Optimizer):
        raise TypeError(
            f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
        )
    bases = [float(g.get("initial_lr", g["lr"])) for g in optimizer.param_groups]
    for i, b in enumerate(bases):
        if not math.isfinite(b) or b < 0:
            raise ValueError(
                f"the optimizer's lr must be a finite number >= 0 (the base LR of every "
                f"schedule), got {b} in param_groups[{i}]"
            )
    return bases


def is_metric_driven(scheduler: Any) -> bool:
    """Whether ``scheduler`` takes ``step(metric)`` after each validation.

    True for a scheduler with ``metric_driven = True`` (``plateau``, ``adaptive``, a
    :func:`with_warmup` around one of those) and for torch's ``ReduceLROnPlateau``.
    """
    return bool(getattr(scheduler, "metric_driven", False)) or isinstance(
        scheduler, ReduceLROnPlateau
    )


def epochs_to_steps(epochs: float, steps_per_epoch: int) -> int:
    r"""Convert a length in epochs to optimizer steps: :math:`\lfloor e \cdot n + 0.5 \rfloor`.

    Args:
        epochs: a number of epochs, fractional allowed (``0.5`` is half an epoch).
        steps_per_epoch: optimizer steps per epoch (``len(loader) // accumulation_steps``).

    Raises:
        ValueError: ``epochs < 0`` or ``steps_per_epoch < 1``.

    Example:
        >>> epochs_to_steps(2, 8), epochs_to_steps(0.5, 7)
        (16, 4)
    """
    e = _check_float("epochs", epochs, low=0.0)
    n = _check_int("steps_per_epoch", steps_per_epoch, 1)
    return math.floor(e * n + 0.5)


# --------------------------------------------------------------------------- shared base


class _CopyingState:
    """``state_dict``/``load_state_dict`` that copy, so snapshots never alias live state."""

    _state_exclude: tuple[str, ...] = ("optimizer",)

    def state_dict(self) -> dict[str, Any]:
        """Return a deep copy of the scheduler's state (everything but the optimizer)."""
        return copy.deepcopy(
            {k: v for k, v in self.__dict__.items() if k not in self._state_exclude}
        )

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load a state from :meth:`state_dict` (copied, so the argument stays untouched)."""
        self.__dict__.update(copy.deepcopy(dict(state_dict)))


class _WarmupSchedule(_CopyingState, LRScheduler):
    r"""Base of the closed-form schedules: linear warmup, then :meth:`_after_warmup`.

    The LR of step :math:`s` is a pure function of :math:`s` and the group's
    base LR (:meth:`lr_at`), so there is no accumulated rounding error and a
    restored ``state_dict`` continues exactly.
    """

    metric_driven: bool = False
    _needs_total: bool = False

    def __init__(
        self,
        optimizer: Optimizer,
        *,
        total_steps: int | None = None,
        warmup_steps: int = 0,
        warmup_start_lr: float | Sequence[float] | None = None,
        warmup_start_factor: float = 0.01,
        min_lr: float | Sequence[float] | None = None,
        min_lr_ratio: float = 0.0,
    ) -> None:
        bases = _base_lrs_of(optimizer)
        groups = len(bases)
        self.warmup_steps = _check_int("warmup_steps", warmup_steps, 0)
        if total_steps is None:
            if self._needs_total:
                raise ValueError(f"total_steps is required for {type(self).__name__}")
        else:
            total_steps = _check_int("total_steps", total_steps, 1)
            if total_steps <= self.warmup_steps:
                raise ValueError(
                    f"total_steps must be > warmup_steps, got total_steps={total_steps}, "
                    f"warmup_steps={self.warmup_steps}"
                )
        self.total_steps = total_steps
        self.warmup_start_lrs = (
            None
            if warmup_start_lr is None
            else _per_group("warmup_start_lr", warmup_start_lr, groups)
        )
        self.warmup_start_factor = _check_float("warmup_start_factor", warmup_start_factor, low=0.0)
        ratio = _check_float("min_lr_ratio", min_lr_ratio, low=0.0, high=1.0)
        if min_lr is not None:
            if ratio != 0.0:
                raise ValueError(
                    "give min_lr (absolute) or min_lr_ratio (alias alpha), not both; "
                    f"got min_lr={min_lr!r}, min_lr_ratio={min_lr_ratio!r}"
                )
            self.min_lrs = _per_group("min_lr", min_lr, groups)
        else:
            self.min_lrs = [ratio * b for b in bases]
        for i, (eta, b) in enumerate(zip(self.min_lrs, bases)):
            if eta > b:
                raise ValueError(
                    f"min_lr must not exceed the base LR, got min_lr={eta} > lr={b} "
                    f"in param_groups[{i}]"
                )
        self.min_lr_ratio = ratio
        super().__init__(optimizer)

    # -- the rule -------------------------------------------------------------------------------
    def _warmup_lr(self, s: int, i: int, b: float) -> float:
        a = (
            self.warmup_start_lrs[i]
            if self.warmup_start_lrs is not None
            else self.warmup_start_factor * b
        )
        return a + (b - a) * s / self.warmup_steps

    def _after_warmup(self, t: int, b: float, eta: float) -> float:
        raise NotImplementedError

    def _lr(self, s: int, i: int, b: float) -> float:
        if s < self.warmup_steps:
            return self._warmup_lr(s, i, b)
        return self._after_warmup(s - self.warmup_steps, b, self.min_lrs[i])

    def _extra(self, s: int) -> None:
        """Side effects besides the LR at step ``s`` (momentum cycling); none by default."""

    def lr_at(self, step: int) -> list[float]:
        """The LR of every parameter group at step ``step``, without changing any state."""
        step = _check_int("step", step, 0)
        return [self._lr(step, i, float(b)) for i, b in enumerate(self.base_lrs)]

    def step(self, epoch: int | None = None) -> None:
        """Advance one optimizer step and set every group's LR.

        ``epoch`` is torch's deprecated jump-to-step argument (an int; used by
        ``SequentialLR``). A float is refused: it is almost surely a metric given to
        a schedule that is not metric-driven, which torch would read as an epoch.
        """
        if epoch is not None and (isinstance(epoch, bool) or not isinstance(epoch, int)):
            raise ValueError(
                f"{type(self).__name__} is not metric-driven: call step() without a metric "
                f"(got {epoch!r})"
            )
        super().step(epoch)

    def get_lr(self) -> list[float]:
        """LRs for the current step ``s = last_epoch`` (called by ``step()``)."""
        self._extra(self.last_epoch)
        return [self._lr(self.last_epoch, i, float(b)) for i, b in enumerate(self.base_lrs)]


# --------------------------------------------------------------------------- closed-form types


class Constant(_WarmupSchedule):
    r"""``constant``: linear warmup (none by default), then the base LR, :math:`\text{lr} = b`.

    Named like the other closed-form types, which all take a warmup: the class name is
    what ``fit`` logs as the run's ``scheduler``. ``ConstantWithWarmup`` is an alias.

    Args:
        optimizer: the wrapped optimizer; each group's ``lr`` is its base LR :math:`b`.
        total_steps: optional; only checked to be :math:`> W`.
        warmup_steps, warmup_start_lr, warmup_start_factor: the warmup (module docs).
        min_lr, min_lr_ratio: accepted for uniformity; validated, no effect.
    """

    def _after_warmup(self, t: int, b: float, eta: float) -> float:
        return b


ConstantWithWarmup = Constant  # the former name, kept for existing code


class WarmupCosine(_WarmupSchedule):
    r"""``warmup_cosine`` (aliases ``cosine``, ``cosine_decay``): warmup, then half a cosine.

    .. math::
        \text{lr} = \eta + (b - \eta)\,\tfrac12\Big(1 + \cos\big(\pi\,\tfrac{\min(t, D)}{D}\big)\Big)

    It reaches :math:`\eta` at :math:`s = T` and stays there (no rise after
    :math:`T`, unlike ``CosineAnnealingLR`` past ``T_max``). With :math:`W = 0`
    and :math:`\eta` = ``eta_min`` it equals ``CosineAnnealingLR(opt, T_max=T)``
    for :math:`s \le T`.

    Args:
        optimizer: the wrapped optimizer.
        total_steps: :math:`T` (required, :math:`> W`).
        warmup_steps, warmup_start_lr, warmup_start_factor: the warmup.
        min_lr, min_lr_ratio: the floor :math:`\eta`.

    Example:
        >>> import torch
        >>> opt = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=1.0)
        >>> sched = WarmupCosine(opt, total_steps=4, warmup_steps=2)
        >>> [round(x, 3) for x in (sched.lr_at(s)[0] for s in range(5))]
        [0.01, 0.505, 1.0, 0.5, 0.0]
    """

    _needs_total = True

    def _after_warmup(self, t: int, b: float, eta: float) -> float:
        d = self.total_steps - self.warmup_steps
        return eta + (b - eta) * 0.5 * (1.0 + math.cos(math.pi * min(t, d) / d))


class CosineRestarts(_WarmupSchedule):
    r"""``cosine_restarts`` (alias ``cosine_decay_restarts``): SGDR warm restarts after warmup.

    Cycle :math:`k = 0, 1, \dots` has length :math:`\ell_k = F\,r^k` (:math:`F`
    = ``first_cycle_steps``, :math:`r` = ``t_mult``) and starts at
    :math:`S_k = \ell_0 + \dots + \ell_{k-1}` (real numbers). Step :math:`t`
    lies in the cycle with :math:`S_k \le t < S_{k+1}`, at offset
    :math:`\tau = t - S_k`; the cycle's peak is
    :math:`p_k = \max(\eta, b\,m^k)` (:math:`m` = ``m_mul``), and

    .. math::
        \text{lr} = \eta + (p_k - \eta)\,\tfrac12\big(1 + \cos(\pi\,\tau / \ell_k)\big).

    With integer :math:`F`, integer :math:`r`, ``m_mul=1`` and :math:`W = 0` it
    equals ``CosineAnnealingWarmRestarts(opt, T_0=F, T_mult=r, eta_min=η)``.

    Args:
        optimizer: the wrapped optimizer.
        first_cycle_steps: :math:`F > 0` (a number of steps, may be fractional).
        t_mult: cycle-length growth :math:`r \ge 1` (alias ``t_mul``; default 1).
        m_mul: peak decay per cycle, :math:`0 < m \le 1` (default 1).
        total_steps: optional; only checked to be :math:`> W`.
        warmup_steps, warmup_start_lr, warmup_start_factor, min_lr, min_lr_ratio: as usual.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        first_cycle_steps: float,
        *,
        t_mult: float = 1.0,
        m_mul: float = 1.0,
        **kwargs: Any,
    ) -> None:
        self.first_cycle_steps = _check_float(
            "first_cycle_steps", first_cycle_steps, low=0.0, low_open=True
        )
        self.t_mult = _check_float("t_mult", t_mult, low=1.0)
        self.m_mul = _check_float("m_mul", m_mul, low=0.0, high=1.0, low_open=True)
        super().__init__(optimizer, **kwargs)

    def cycle(self, t: float) -> tuple[int, float, float]:
        r"""``(k, τ, ℓ_k)`` for post-warmup step :math:`t \ge 0`."""
        f, r = self.first_cycle_steps, self.t_mult
        if r == 1.0:
            k = math.floor(t / f)
            return k, t - k * f, f
        k = math.floor(math.log1p(t * (r - 1.0) / f) / math.log(r))
        start = f * (r**k - 1.0) / (r - 1.0)
        while k > 0 and start > t:  # guard against rounding in the logarithm
            k -= 1
            start = f * (r**k - 1.0) / (r - 1.0)
        while start + f * r**k <= t:
            start += f * r**k
            k += 1
        return k, t - start, f * r**k

    def _after_warmup(self, t: int, b: float, eta: float) -> float:
        k, tau, length = self.cycle(t)
        peak = max(eta, b * self.m_mul**k)
        return eta + (peak - eta) * 0.5 * (1.0 + math.cos(math.pi * tau / length))


class PolynomialDecay(_WarmupSchedule):
    r"""``polynomial``: warmup, then :math:`\text{lr} = \eta + (b - \eta)(1 - \min(t, D)/D)^{p}`.

    With :math:`W = 0`, :math:`\eta = 0` it equals ``PolynomialLR(opt, total_iters=T, power=p)``.

    Args:
        optimizer: the wrapped optimizer.
        total_steps: :math:`T` (required, :math:`> W`).
        power: :math:`p > 0` (default 1.0, linear decay).
        warmup_steps, warmup_start_lr, warmup_start_factor, min_lr, min_lr_ratio: as usual.
    """

    _needs_total = True

    def __init__(self, optimizer: Optimizer, *, power: float = 1.0, **kwargs: Any) -> None:
        self.power = _check_float("power", power, low=0.0, low_open=True)
        super().__init__(optimizer, **kwargs)

    def _after_warmup(self, t: int, b: float, eta: float) -> float:
        d = self.total_steps - self.warmup_steps
        return eta + (b - eta) * (1.0 - min(t, d) / d) ** self.power


class ExponentialDecay(_WarmupSchedule):
    r"""``exponential`` (alias ``exponential_decay``): :math:`\max(\eta,\ b\,\gamma^{t/n})`.

    :math:`n` = ``decay_steps``; with ``staircase=True`` the exponent is
    :math:`\lfloor t/n \rfloor`. With :math:`W = 0`, :math:`n = 1`, :math:`\eta = 0`
    it equals ``ExponentialLR(opt, gamma)``.

    Args:
        optimizer: the wrapped optimizer.
        gamma: decay factor per ``decay_steps``, :math:`0 < \gamma \le 1` (alias ``decay_rate``).
        decay_steps: :math:`n > 0` (default 1).
        staircase: floor the exponent (default ``False``).
        total_steps: optional; only checked to be :math:`> W`.
        warmup_steps, warmup_start_lr, warmup_start_factor, min_lr, min_lr_ratio: as usual.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        gamma: float,
        *,
        decay_steps: float = 1,
        staircase: bool = False,
        **kwargs: Any,
    ) -> None:
        self.gamma = _check_float("gamma", gamma, low=0.0, high=1.0, low_open=True)
        self.decay_steps = _check_float("decay_steps", decay_steps, low=0.0, low_open=True)
        if not isinstance(staircase, bool):
            raise ValueError(f"staircase must be True or False, got {staircase!r}")
        self.staircase = staircase
        super().__init__(optimizer, **kwargs)

    def _after_warmup(self, t: int, b: float, eta: float) -> float:
        exponent = t / self.decay_steps
        if self.staircase:
            exponent = math.floor(exponent)
        return max(eta, b * self.gamma**exponent)


class StepDecay(_WarmupSchedule):
    r"""``step``: :math:`\max(\eta,\ b\,\gamma^{\lfloor t / n \rfloor})`, :math:`n` = ``step_size``.

    With :math:`W = 0`, :math:`\eta = 0` it equals ``StepLR(opt, step_size, gamma)``.

    Args:
        optimizer: the wrapped optimizer.
        step_size: :math:`n \ge 1` steps between cuts.
        gamma: factor per cut, :math:`0 < \gamma \le 1` (default 0.1).
        total_steps: optional; only checked to be :math:`> W`.
        warmup_steps, warmup_start_lr, warmup_start_factor, min_lr, min_lr_ratio: as usual.
    """

    def __init__(
        self, optimizer: Optimizer, step_size: int, *, gamma: float = 0.1, **kwargs: Any
    ) -> None:
        self.step_size = _check_int("step_size", step_size, 1)
        self.gamma = _check_float("gamma", gamma, low=0.0, high=1.0, low_open=True)
        super().__init__(optimizer, **kwargs)

    def _after_warmup(self, t: int, b: float, eta: float) -> float:
        return max(eta, b * self.gamma ** (t // self.step_size))


class OneCycle(_WarmupSchedule):
    r"""``onecycle``: torch's ``OneCycleLR`` with ``max_lr`` = each group's base LR, safe past T.

    For :math:`s = 0 \dots T-1` the LRs (and momenta / Adam :math:`\beta_1`, when
    ``cycle_momentum``) are those of
    ``OneCycleLR(opt, max_lr=b, total_steps=T, pct_start, anneal_strategy,
    div_factor, final_div_factor, three_phase, cycle_momentum, base_momentum,
    max_momentum)``: from :math:`b/\text{div}` up to :math:`b` over the first
    ``pct_start`` of the steps, then down to
    :math:`b/(\text{div}\cdot\text{final\_div})` (two-phase) — or back to
    :math:`b/\text{div}` and then down (``three_phase``). ``warmup_steps``, if
    given, sets ``pct_start = W / T``. From step :math:`T` on it holds the final
    LR and momentum; it warns once when stepped beyond :math:`T` (a run of
    exactly :math:`T` optimizer steps reaches :math:`s = T` after its last step
    and never uses that LR, so it does not warn), and it never raises
    mid-training (torch raises after :math:`T` and extrapolates at :math:`T`, with
    linear annealing even to a negative LR).

    Args:
        optimizer: the wrapped optimizer (needs ``momentum`` or ``betas`` if ``cycle_momentum``).
        total_steps: :math:`T` (required).
        pct_start: fraction of :math:`T` spent rising (default 0.3).
        anneal_strategy: ``"cos"`` or ``"linear"``.
        div_factor, final_div_factor: start LR :math:`b/\text{div}`, end LR
            :math:`b/(\text{div}\cdot\text{final\_div})` (defaults 25, 1e4).
        three_phase: use the symmetric three-phase variant.
        cycle_momentum, base_momentum, max_momentum: momentum cycling (defaults
            True, 0.85, 0.95; a number or one per group).
        warmup_steps: if given and not 0, sets ``pct_start = warmup_steps / total_steps``.

    Raises:
        ValueError: a phase would be shorter than one step (``pct_start * T <= 1``, or
            ``pct_start`` too close to 1), or any invalid argument.
    """

    _needs_total = True

    def __init__(
        self,
        optimizer: Optimizer,
        *,
        total_steps: int,
        pct_start: float = 0.3,
        anneal_strategy: str = "cos",
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
        three_phase: bool = False,
        cycle_momentum: bool = True,
        base_momentum: float | Sequence[float] = 0.85,
        max_momentum: float | Sequence[float] = 0.95,
        warmup_steps: int | None = None,
    ) -> None:
        bases = _base_lrs_of(optimizer)
        total = _check_int("total_steps", total_steps, 1)
        if warmup_steps is not None and warmup_steps != 0:
            w = _check_int("warmup_steps", warmup_steps, 1)
            if w >= total:
                raise ValueError(
                    f"total_steps must be > warmup_steps, got total_steps={total}, warmup_steps={w}"
                )
            pct_start = w / total
        self.pct_start = _check_float("pct_start", pct_start, low=0.0, high=1.0)
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"anneal_strategy must be 'cos' or 'linear', got {anneal_strategy!r}")
        self.anneal_strategy = anneal_strategy
        self.div_factor = _check_float("div_factor", div_factor, low=0.0, low_open=True)
        self.final_div_factor = _check_float(
            "final_div_factor", final_div_factor, low=0.0, low_open=True
        )
        for name, flag in (("three_phase", three_phase), ("cycle_momentum", cycle_momentum)):
            if not isinstance(flag, bool):
                raise ValueError(f"{name} must be True or False, got {flag!r}")
        self.three_phase = three_phase
        p = self.pct_start * total
        if three_phase:
            self._phases = [
                (p - 1, "initial", "max", "max_m", "base_m"),
                (2 * p - 2, "max", "initial", "base_m", "max_m"),
                (total - 1, "initial", "min", "max_m", "max_m"),
            ]
        else:
            self._phases = [
                (p - 1, "initial", "max", "max_m", "base_m"),
                (total - 1, "max", "min", "base_m", "max_m"),
            ]
        start = 0.0
        for end, *_ in self._phases:
            if not end > start:
                raise ValueError(
                    f"pct_start={self.pct_start} (or warmup_steps) with total_steps={total} "
                    "leaves a phase shorter than one step; choose pct_start so that "
                    "pct_start * total_steps > 1 and the decay phase keeps at least one step"
                )
            start = end
        self.cycle_momentum = cycle_momentum
        groups = len(bases)
        self.use_beta1 = "betas" in optimizer.defaults
        if cycle_momentum:
            if "momentum" not in optimizer.defaults and not self.use_beta1:
                raise ValueError(
                    "cycle_momentum=True needs an optimizer with momentum or betas; "
                    f"{type(optimizer).__name__} has neither (pass cycle_momentum=False)"
                )
            self.base_momentums = _per_group("base_momentum", base_momentum, groups)
            self.max_momentums = _per_group("max_momentum", max_momentum, groups)
        self._warned_past_end = False
        super().__init__(optimizer, total_steps=total)

    def _anneal(self, start: float, end: float, pct: float) -> float:
        if self.anneal_strategy == "cos":  # the same float operations as torch's OneCycleLR
            cos_out = math.cos(math.pi * pct) + 1
            return end + (start - end) / 2.0 * cos_out
        return (end - start) * pct + start

    def _value(self, s: int, values: Mapping[str, float], lr: bool) -> float:
        start_step = 0.0
        last = len(self._phases) - 1
        for j, phase in enumerate(self._phases):  # the phase of step s (the last one past it)
            if s <= phase[0] or j == last:
                break
            start_step = phase[0]
        end_step, lo, hi, mlo, mhi = phase
        pct = (s - start_step) / (end_step - start_step)
        a, z = (lo, hi) if lr else (mlo, mhi)
        return self._anneal(values[a], values[z], pct)

    def _lr(self, s: int, i: int, b: float) -> float:
        initial = b / self.div_factor
        minimum = initial / self.final_div_factor
        if s >= self.total_steps:
            return minimum
        return self._value(s, {"initial": initial, "max": b, "min": minimum}, lr=True)

    def _extra(self, s: int) -> None:
        if s > self.total_steps and not self._warned_past_end:
            self._warned_past_end = True
            warnings.warn(
                f"OneCycle stepped past total_steps={self.total_steps}; holding the final LR",
                RuntimeWarning,
                stacklevel=4,
            )
        if not self.cycle_momentum:
            return
        for i, group in enumerate(self.optimizer.param_groups):
            values = {"base_m": self.base_momentums[i], "max_m": self.max_momentums[i]}
            if s >= self.total_steps:
                m = values[self._phases[-1][4]]
            else:
                m = self._value(s, values, lr=False)
            if self.use_beta1:
                group["betas"] = (m, *group["betas"][1:])
            else:
                group["momentum"] = m


# --------------------------------------------------------------------------- metric-driven types


class PlateauWithWarmup(_WarmupSchedule):
    r"""``plateau``: warmup by ``step()``, then ``ReduceLROnPlateau``'s rule by ``step(metric)``.

    After warmup the LR of group :math:`i` is :math:`\ell_i` (starts at
    :math:`b`); each ``step(metric)`` applies torch's rule: the metric is better
    if below ``best·(1−threshold)`` (``rel``, ``min`` mode; ``best−threshold`` for
    ``abs``; mirrored for ``max``); after more than ``patience`` bad metrics
    :math:`\ell_i \leftarrow \max(\ell_i\cdot\text{factor},\ \eta_i)` (skipped if
    the change is at most ``eps``) followed by ``cooldown`` metrics in which bad
    ones are not counted. ``step()`` after warmup leaves the LR alone; metrics
    reported during warmup are ignored. With :math:`W = 0` it gives exactly
    ``ReduceLROnPlateau``'s LRs for the same metric sequence.

    Args:
        optimizer: the wrapped optimizer.
        mode, factor, patience, threshold, threshold_mode, cooldown, eps: as in
            ``ReduceLROnPlateau`` (defaults ``"min"``, 0.1, 10, 1e-4, ``"rel"``, 0, 1e-8).
        min_lr, min_lr_ratio: the floor :math:`\eta` (absolute, or a ratio of :math:`b`).
        total_steps: optional; only checked to be :math:`> W`.
        warmup_steps, warmup_start_lr, warmup_start_factor: the warmup.
    """

    metric_driven = True

    def __init__(
        self,
        optimizer: Optimizer,
        *,
        mode: str = "min",
        factor: float = 0.1,
        patience: int = 10,
        threshold: float = 1e-4,
        threshold_mode: str = "rel",
        cooldown: int = 0,
        eps: float = 1e-8,
        **kwargs: Any,
    ) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(f"threshold_mode must be 'rel' or 'abs', got {threshold_mode!r}")
        self.mode = mode
        self.threshold_mode = threshold_mode
        self.factor = _check_float(
            "factor", factor, low=0.0, high=1.0, low_open=True, high_open=True
        )
        self.patience = _check_int("patience", patience, 0)
        self.threshold = _check_float("threshold", threshold, low=0.0)
        self.cooldown = _check_int("cooldown", cooldown, 0)
        self.eps = _check_float("eps", eps, low=0.0)
        self.best = math.inf if mode == "min" else -math.inf
        self.num_bad_epochs = 0
        self.cooldown_counter = 0
        self.current_lrs = [float(b) for b in _base_lrs_of(optimizer)]
        super().__init__(optimizer, **kwargs)

    def _lr(self, s: int, i: int, b: float) -> float:  # after warmup: the plateau rule's LR
        if s < self.warmup_steps:
            return self._warmup_lr(s, i, b)
        return self.current_lrs[i]

    def _is_better(self, a: float, best: float) -> bool:
        if self.mode == "min" and self.threshold_mode == "rel":
            return a < best * (1.0 - self.threshold)
        if self.mode == "min":
            return a < best - self.threshold
        if self.threshold_mode == "rel":
            return a > best * (self.threshold + 1.0)
        return a > best + self.threshold

    def step(self, metric: float | torch.Tensor | None = None) -> None:  # type: ignore[override]
        """``step()``: one optimizer step. ``step(metric)``: report a metric (not a step)."""
        if metric is None:
            super().step()
            return
        if self.last_epoch < self.warmup_steps:
            return
        current = float(metric)
        if self._is_better(current, self.best):
            self.best = current
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > self.patience:
            for i, old in enumerate(self.current_lrs):
                new = max(old * self.factor, self.min_lrs[i])
                if old - new > self.eps:
                    self.current_lrs[i] = new
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
            for group, lr in zip(self.optimizer.param_groups, self.current_lrs):
                _set_lr(group, lr)
            self._last_lr = _group_lrs(self.optimizer)


# canonical type -> class; "plateau"/"adaptive" are not valid ``base`` types of ``adaptive``.
_CLOSED_FORM: dict[str, type[_WarmupSchedule]] = {
    "constant": Constant,
    "warmup_cosine": WarmupCosine,
    "cosine_restarts": CosineRestarts,
    "onecycle": OneCycle,
    "polynomial": PolynomialDecay,
    "exponential": ExponentialDecay,
    "step": StepDecay,
}


class AdaptiveScheduler(_CopyingState, LRScheduler):
    r"""``adaptive``: a closed-form base schedule times a multiplier cut on trouble.

    .. math:: \text{lr} = \min\big(\ell(s),\ \max(\eta,\ \ell(s)\cdot m)\big)

    where :math:`\ell(s)` is the base schedule's LR (``base``: any closed-form
    type, default ``constant``, with its own parameters) and :math:`m` starts at
    1. ``step(metric)`` takes a training or validation loss (lower is better) and
    cuts at most once, :math:`m \leftarrow m\cdot\text{factor}`, when:

    - the metric is not finite — and then also sets ``needs_rollback = True``
      (whoever performs the rollback clears it; :class:`~stabletrain.stability.StabilityGuard`
      does both);
    - it is above :math:`(1 + \text{spike\_threshold})` × the mean of the last
      ``window`` finite metrics (the first metric is never a spike);
    - or ``patience`` consecutive metrics brought no new best.

    A cut resets the patience count. Non-finite metrics stay out of the mean. The
    group LRs change immediately on a cut.

    ``observe(loss)`` takes every training step's loss (:func:`~stabletrain.training.fit`
    calls it after each applied step) and cuts at once, the same way, when a finite loss
    exceeds ``step_spike_factor`` × the median of the last ``step_window`` observed
    losses (once ``window`` were observed): a blow-up inside an epoch need not move the
    epoch's mean, which ``step(metric)`` sees. A spiking loss does not enter the median,
    and after a step-level cut the next ``window`` observations cannot cut again.

    Args:
        optimizer: the wrapped optimizer.
        base: the base type name, or a mapping ``{"type": ..., **params}``.
        factor: :math:`0 <` factor :math:`< 1` (default 0.5).
        spike_threshold: relative jump counted as a spike, :math:`> 0` (default 1.0).
        window: number of recent finite metrics averaged (default 10).
        patience: metrics without a new best before a cut (default 10).
        step_spike_factor: step-level blow-up factor, :math:`> 1` (default 10;
            ``None`` turns ``observe`` off).
        step_window: step losses the step-level median is taken over (default 50).
        **base_params: parameters of the base schedule (``total_steps``,
            ``warmup_steps``, ``min_lr``, ...); ``min_lr``/``min_lr_ratio`` are also
            the floor :math:`\eta` of the cut LR.
    """

    metric_driven = True
    _state_exclude = ("optimizer", "_base")

    def __init__(
        self,
        optimizer: Optimizer,
        base: str | Mapping[str, Any] = "constant",
        *,
        factor: float = 0.5,
        spike_threshold: float = 1.0,
        window: int = 10,
        patience: int = 10,
        step_spike_factor: float | None = 10.0,
        step_window: int = 50,
        **base_params: Any,
    ) -> None:
        if isinstance(base, Mapping):
            base_params = {**{k: v for k, v in base.items() if k != "type"}, **base_params}
            base = base.get("type", "constant")
        name = _canonical(base, what="base")
        if name not in _CLOSED_FORM:
            raise ValueError(
                f"base must be one of {sorted(_CLOSED_FORM)} (plateau and adaptive cannot be "
                f"the base of adaptive), got {base!r}"
            )
        self.factor = _check_float(
            "factor", factor, low=0.0, high=1.0, low_open=True, high_open=True
        )
        self.spike_threshold = _check_float(
            "spike_threshold", spike_threshold, low=0.0, low_open=True
        )
        self.window = _check_int("window", window, 1)
        self.patience = _check_int("patience", patience, 1)
        if step_spike_factor is not None:
            step_spike_factor = _check_float(
                "step_spike_factor", step_spike_factor, low=1.0, low_open=True
            )
        self.step_spike_factor = step_spike_factor
        self.step_window = _check_int("step_window", step_window, 1)
        self.step_losses: list[float] = []
        self.step_cooldown = 0
        self.base_type = name
        self._base = _construct(name, optimizer, base_params)
        self.multiplier = 1.0
        self.needs_rollback = False
        self.recent: list[float] = []
        self.best = math.inf
        self.num_bad = 0
        self.num_cuts = 0
        super().__init__(optimizer)

    def _lr(self, s: int, i: int, b: float) -> float:
        base_lr = self._base._lr(s, i, b)
        return min(base_lr, max(self._base.min_lrs[i], base_lr * self.multiplier))

    def lr_at(self, step: int) -> list[float]:
        """The LRs at ``step`` with the current multiplier, without changing any state."""
        step = _check_int("step", step, 0)
        return [self._lr(step, i, float(b)) for i, b in enumerate(self.base_lrs)]

    def get_lr(self) -> list[float]:
        """LRs for the current step with the current multiplier (called by ``step()``)."""
        self._base._extra(self.last_epoch)
        return [self._lr(self.last_epoch, i, float(b)) for i, b in enumerate(self.base_lrs)]

    def step(self, metric: float | torch.Tensor | None = None) -> None:  # type: ignore[override]
        """``step()``: one optimizer step. ``step(metric)``: report a loss (not a step)."""
        if metric is None:
            super().step()
            return
        value = float(metric)
        cut = False
        if not math.isfinite(value):
            cut = True
            self.needs_rollback = True
        else:
            if self.recent:
                mean = sum(self.recent) / len(self.recent)
                if value > (1.0 + self.spike_threshold) * mean:
                    cut = True
            self.recent = [*self.recent, value][-self.window :]
        if math.isfinite(value) and value < self.best:
            self.best = value
            self.num_bad = 0
        else:
            self.num_bad += 1
            if self.num_bad >= self.patience:
                cut = True
        if cut:
            self.num_bad = 0
            self._cut()

    def observe(self, loss: float | torch.Tensor) -> bool:
        """A training step's loss: cut now if it is a step-level blow-up; ``True`` if it cut.

        Non-finite losses are ignored here (they are ``step(metric)``'s and the guard's).
        """
        value = float(loss)
        if self.step_spike_factor is None or not math.isfinite(value):
            return False
        if self.step_cooldown > 0:
            self.step_cooldown -= 1
        recent = self.step_losses
        if len(recent) >= self.window and self.step_cooldown == 0:
            median = statistics.median(recent)
            if median > 0 and value > self.step_spike_factor * median:
                self.step_cooldown = self.window
                self._cut()
                return True
        self.step_losses = [*recent, value][-self.step_window :]
        return False

    def _cut(self) -> None:
        self.multiplier *= self.factor
        self.num_cuts += 1
        values = [self._lr(self.last_epoch, i, float(b)) for i, b in enumerate(self.base_lrs)]
        for group, lr in zip(self.optimizer.param_groups, values):
            _set_lr(group, lr)
        self._last_lr = _group_lrs(self.optimizer)


# --------------------------------------------------------------------------- warmup wrapper


class WarmupWrapper(_CopyingState, LRScheduler):
    r"""Linear warmup in front of any torch scheduler (see :func:`with_warmup`).

    Let :math:`\ell^{(0)}_i` be group :math:`i`'s LR right after the wrapped
    scheduler was built (its step-0 LR). For :math:`s < W`:
    :math:`\text{lr} = f\ell^{(0)} + (1 - f)\ell^{(0)}\,s/W` (:math:`f` =
    ``warmup_start_factor``); at :math:`s = W` the LRs are :math:`\ell^{(0)}`
    again and every later ``step()`` steps the wrapped scheduler, so from step
    :math:`W` on the LRs are exactly the wrapped scheduler's from its step 0.

    A metric-driven wrapped scheduler (``ReduceLROnPlateau``, or one with
    ``metric_driven = True``) makes the wrapper metric-driven: ``step(metric)``
    is passed on after warmup (ignored during it), and ``step()`` after warmup
    leaves a ``ReduceLROnPlateau``'s LR alone.
    """

    _state_exclude = ("optimizer", "scheduler")

    def __init__(
        self, scheduler: Any, warmup_steps: int, warmup_start_factor: float = 0.01
    ) -> None:
        optimizer = getattr(scheduler, "optimizer", None)
        if not isinstance(optimizer, Optimizer):
            raise ValueError(
                "scheduler must be a torch LR scheduler with an .optimizer, "
                f"got {type(scheduler).__name__}"
            )
        self.scheduler = scheduler
        self.warmup_steps = _check_int("warmup_steps", warmup_steps, 0)
        self.warmup_start_factor = _check_float("warmup_start_factor", warmup_start_factor, low=0.0)
        self.targets = _group_lrs(optimizer)
        self.metric_driven = is_metric_driven(scheduler)
        self._plateau = isinstance(scheduler, ReduceLROnPlateau)
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:
        s = self.last_epoch
        if s >= self.warmup_steps:
            return list(self.targets)
        out = []
        for target in self.targets:
            b = float(target)
            a = self.warmup_start_factor * b
            out.append(a + (b - a) * s / self.warmup_steps)
        return out

    def step(self, metric: float | torch.Tensor | None = None) -> None:  # type: ignore[override]
        """``step()``: one optimizer step. ``step(metric)``: report a metric (metric-driven only)."""
        if metric is not None:
            if not self.metric_driven:
                raise ValueError(
                    f"step(metric) is for metric-driven schedulers; the wrapped "
                    f"{type(self.scheduler).__name__} takes step() only"
                )
            if self.last_epoch >= self.warmup_steps:
                self.scheduler.step(metric)
                self._last_lr = _group_lrs(self.optimizer)
            return
        self._step_count += 1
        self.last_epoch += 1
        if self.last_epoch <= self.warmup_steps:
            for group, lr in zip(self.optimizer.param_groups, self.get_lr()):
                _set_lr(group, float(lr))
        elif not self._plateau:
            self.scheduler.step()
        self._last_lr = _group_lrs(self.optimizer)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["scheduler_state"] = copy.deepcopy(self.scheduler.state_dict())
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        state = dict(state_dict)
        inner = state.pop("scheduler_state", None)
        super().load_state_dict(state)
        if inner is not None:
            self.scheduler.load_state_dict(copy.deepcopy(inner))


def with_warmup(
    scheduler: Any, warmup_steps: int, warmup_start_factor: float = 0.01
) -> WarmupWrapper:
    """Put a linear warmup of ``warmup_steps`` steps in front of any torch scheduler.

    Build the wrapped scheduler first, then wrap it, and from then on step only
    the wrapper. See :class:`WarmupWrapper` for the rule.

    Example:
        >>> import torch
        >>> opt = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=1.0)
        >>> sched = with_warmup(torch.optim.lr_scheduler.CosineAnnealingLR(opt, 10), 5)
        >>> round(opt.param_groups[0]["lr"], 3)
        0.01
    """
    return WarmupWrapper(scheduler, warmup_steps, warmup_start_factor)


# --------------------------------------------------------------------------- factory

SCHEDULER_TYPES: tuple[str, ...] = (
    "constant",
    "warmup_cosine",
    "cosine_restarts",
    "onecycle",
    "polynomial",
    "exponential",
    "step",
    "plateau",
    "adaptive",
)
"""Canonical names accepted by :func:`build_scheduler` (aliases in :data:`SCHEDULER_ALIASES`)."""

SCHEDULER_ALIASES: dict[str, str] = {
    "cosine": "warmup_cosine",
    "cosine_decay": "warmup_cosine",
    "cosine_decay_restarts": "cosine_restarts",
    "exponential_decay": "exponential",
}
"""Alternative type names and the canonical type each stands for."""

_PARAM_ALIASES: dict[str, str] = {"alpha": "min_lr_ratio", "t_mul": "t_mult", "decay_rate": "gamma"}

_CLASSES: dict[str, type] = {
    **_CLOSED_FORM,
    "plateau": PlateauWithWarmup,
    "adaptive": AdaptiveScheduler,
}


def _canonical(name: Any, what: str = "type") -> str:
    valid = sorted((*SCHEDULER_TYPES, *SCHEDULER_ALIASES))
    if not isinstance(name, str):
        raise ValueError(f"{what} must be a scheduler type name, one of {valid}; got {name!r}")
    key = name.strip().lower()
    key = SCHEDULER_ALIASES.get(key, key)
    if key not in SCHEDULER_TYPES:
        raise ValueError(f"unknown {what} {name!r}; valid types: {valid}")
    return key


def _accepted(cls: type) -> tuple[list[str], list[str]]:
    """(keyword names, required names) of a scheduler class beyond ``optimizer``.

    Follows ``**kwargs`` up the class hierarchy (a subclass passing its extra
    keywords on to its parent accepts the parent's too).
    """
    names: list[str] = []
    required: list[str] = []
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        params = list(inspect.signature(klass.__init__).parameters.values())[2:]
        for p in params:
            if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) or p.name in names:
                continue
            names.append(p.name)
            if p.default is p.empty:
                required.append(p.name)
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return names, required


def _resolve_aliases(params: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in params.items():
        canonical = _PARAM_ALIASES.get(key, key)
        if canonical in out:
            raise ValueError(f"{key} and {canonical} are the same parameter; give only one")
        out[canonical] = value
    return out


def _construct(name: str, optimizer: Optimizer, params: Mapping[str, Any]) -> LRScheduler:
    cls = _CLASSES[name]
    params = _resolve_aliases(params)
    if "learning_rate" in params or "lr" in params:
        key = "learning_rate" if "learning_rate" in params else "lr"
        raise ValueError(
            f"{key} is not a scheduler parameter: the peak/base LR is each parameter "
            "group's own lr, set on the optimizer"
        )
    names, required = _accepted(cls)
    if name == "adaptive":
        base = params.get("base", "constant")
        base_name = base.get("type", "constant") if isinstance(base, Mapping) else base
        base_cls = _CLASSES.get(_canonical(base_name, what="base"))
        if base_cls is not None and base_cls in _CLOSED_FORM.values():
            base_names, _ = _accepted(base_cls)
            names = names + [n for n in base_names if n not in names]
    else:
        for req in required:
            if req not in params:
                raise ValueError(f"missing parameter {req!r} for scheduler type {name!r}")
        if cls._needs_total and "total_steps" not in params:
            raise ValueError(f"missing parameter 'total_steps' for scheduler type {name!r}")
    for key in params:
        if key not in names:
            raise ValueError(
                f"unknown parameter {key!r} for scheduler type {name!r}; accepted: {sorted(names)}"
            )
    return cls(optimizer, **params)


def build_scheduler(
    optimizer: Optimizer, config: Mapping[str, Any] | None = None, /, **params: Any
) -> LRScheduler:
    """Build a scheduler of this module from a flat configuration or from keywords.

    ``build_scheduler(opt, {"type": "warmup_cosine", "warmup_steps": 100,
    "total_steps": 1000})`` and ``build_scheduler(opt, type="warmup_cosine",
    warmup_steps=100, total_steps=1000)`` are the same; keywords override
    entries of ``config``. Parameter aliases: ``alpha`` → ``min_lr_ratio``,
    ``t_mul`` → ``t_mult``, ``decay_rate`` → ``gamma``.

    Args:
        optimizer: the optimizer whose groups' LRs the schedule drives.
        config: a mapping with ``"type"`` (one of :data:`SCHEDULER_TYPES` or an
            alias in :data:`SCHEDULER_ALIASES`) and that type's parameters.
        **params: the same as keywords.

    Raises:
        ValueError: missing or unknown ``type`` (the message lists the valid
            types), a missing, unknown or invalid parameter (named in the message).
    """
    if config is not None and not isinstance(config, Mapping):
        raise ValueError(f"config must be a mapping with a 'type', got {type(config).__name__}")
    merged = {**dict(config or {}), **params}
    if "type" not in merged:
        raise ValueError(
            f"missing parameter 'type'; valid types: {sorted((*SCHEDULER_TYPES, *SCHEDULER_ALIASES))}"
        )
    name = _canonical(merged.pop("type"))
    return _construct(name, optimizer, merged)


def lr_curve(
    config: Mapping[str, Any],
    total_steps: int,
    base_lr: float = 1.0,
    *,
    metrics: Mapping[int, float] | None = None,
) -> list[float]:
    """The LR of every step of a configured schedule, from a throwaway optimizer.

    Builds ``config`` (``total_steps`` filled in when absent) on an SGD optimizer
    with one parameter group at ``base_lr`` and returns the LR used by each of the
    ``total_steps`` optimizer steps (``[lr(0), ..., lr(total_steps − 1)]``). For
    metric-driven types (:func:`is_metric_driven`), ``metrics[k]`` (if given) is
    reported with ``step(metric)`` right after step ``k``, as ``fit`` does after a
    validation; the other types ignore ``metrics``.

    Raises:
        ValueError: as :func:`build_scheduler`, or ``total_steps < 1``.

    Example:
        >>> [round(x, 3) for x in lr_curve({"type": "warmup_cosine", "warmup_steps": 2}, 6, 0.1)]
        [0.001, 0.051, 0.1, 0.085, 0.05, 0.015]
    """
    total_steps = _check_int("total_steps", total_steps, 1)
    base_lr = _check_float("base_lr", base_lr, low=0.0)
    if not isinstance(config, Mapping):
        raise ValueError(f"config must be a mapping with a 'type', got {type(config).__name__}")
    param = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.SGD([param], lr=base_lr, momentum=0.9)
    cfg = dict(config)
    cfg.setdefault("total_steps", total_steps)
    scheduler = build_scheduler(optimizer, cfg)
    driven = is_metric_driven(scheduler)
    group = optimizer.param_groups[0]
    lrs: list[float] = []
    for k in range(total_steps):
        lrs.append(float(group["lr"]))
        optimizer.step()  # no gradient: changes nothing, keeps torch's step-order check quiet
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # onecycle past its end
            scheduler.step()
        if metrics is not None and k in metrics and driven:
            scheduler.step(metrics[k])
    return lrs
