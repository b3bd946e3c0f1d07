r"""Learning-rate schedulers: real ``LRScheduler`` subclasses, stepped once per optimizer step.

Notation: :math:`s` = ``step()`` calls so far; :math:`b` = a group's base LR (``initial_lr`` if
set, else ``lr``); :math:`W` = ``warmup_steps``; :math:`T` = ``total_steps``; :math:`t = s - W`;
:math:`D = T - W`; :math:`\eta` = ``min_lr`` (one or per group) or ``min_lr_ratio`` × b (alias
``alpha``). Warmup (all but ``onecycle``), :math:`s < W`: lr = a + (b − a)s/W, a =
``warmup_start_lr`` (≤ b) or (not both) ``warmup_start_factor`` (in (0, 1], 0.01) × b.
``metric_driven`` types also take ``step(metric)``."""

from __future__ import annotations

import copy
import inspect
import math
import numbers
import statistics
import warnings
from collections.abc import Mapping, Sequence
from functools import partial
from itertools import pairwise
from typing import Any

import numpy as np
import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, OneCycleLR, ReduceLROnPlateau

from . import checks
from .checks import check_choice, check_config_value, check_float, check_int, did_you_mean

# this module's values come from configurations: a wrong type is a ValueError too
_int, _float = (partial(check_config_value, c) for c in (check_int, check_float))
_bool = partial(check_config_value, checks.check_bool)
_positive = partial(_float, min=0, low_open=True)  # > 0
_start_factor = partial(_float, "warmup_start_factor", min=0, max=1, low_open=True)
_CLASS_KEY = "scheduler_class"  # in every state_dict(): the type it belongs to
# torch's own fields, in some versions or only once torch stepped: no unknown keys in a state
_TORCH_FIELDS = ("verbose", "_get_lr_called_within_step", "_is_initial", "_step_count", "_last_lr")
_PER_GROUP = ("base_lrs", "min_lrs", "warmup_start_lrs", "current_lrs", "targets", "momenta")
_KINDS = ((bool, "a bool"), ((numbers.Real, torch.Tensor), "a number"), (str, "a str"))
_KINDS += ((Mapping, "a mapping"), ((list, tuple), "a list"))


def _did_you_mean(key: Any, names: Sequence[str]) -> str:
    return f"{did_you_mean(key, names)} ".lstrip()


def _one_for_all(name: str, values: list[Any]) -> Any:
    """The value a group added by ``add_param_group`` gets: the one all the others share."""
    if any(v != values[0] for v in values):
        per_group = f"{name} was given per parameter group ({len(values)} values)"
        raise ValueError(f"{per_group}: a group added by add_param_group has none; give one value")
    return values[0]


def _kind(value: Any) -> str | None:
    return next((kind for t, kind in _KINDS if isinstance(value, t)), None)


def _check_field(name: str, current: Any, value: Any) -> None:
    """``value`` of the kind of ``current``, recursively; ``None`` on either side: anything."""
    kind = _kind(current)
    if kind is not None and value is not None and _kind(value) != kind:
        raise TypeError(f"{name} must be {kind}, got {type(value).__name__} {value!r}")
    if kind == "a list":
        for i, (c, v) in enumerate(zip(current, value)):
            _check_field(f"{name}[{i}]", c, v)
    elif kind == "a mapping":
        for key in set(current) & set(value):
            _check_field(f"{name}[{key!r}]", current[key], value[key])


def _per_group(name: str, value: Any, groups: int) -> list[float] | None:
    """A number >= 0 or one per parameter group (a sequence or array) as floats, or None."""
    value = value.tolist() if isinstance(value, np.ndarray | torch.Tensor) else value
    if value is None or not isinstance(value, Sequence) or isinstance(value, str):
        return None if value is None else [_float(name, value, min=0)] * groups
    if len(value) != groups:
        one_each = f"one value per parameter group ({groups})"
        raise ValueError(f"{name} must be a number or have {one_each}, got {len(value)} values")
    return [_float(f"{name}[{i}]", v, min=0) for i, v in enumerate(value)]


def _group_lrs(optimizer: Optimizer) -> list[Any]:
    lrs = (group["lr"] for group in optimizer.param_groups)
    return [lr.clone() if torch.is_tensor(lr) else lr for lr in lrs]


def _base_lrs_of(optimizer: Optimizer) -> list[float]:
    """The base LRs ``LRScheduler`` adopts; raises ``TypeError`` / ``ValueError`` (lr < 0)."""
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"optimizer must be a torch Optimizer, got {type(optimizer).__name__}")
    bases = enumerate(g.get("initial_lr", g["lr"]) for g in optimizer.param_groups)
    return [check_float(f"the optimizer's param_groups[{i}] lr", float(b), min=0) for i, b in bases]


def is_metric_driven(scheduler: Any) -> bool:
    """Whether it takes ``step(metric)``: ``metric_driven = True`` or ``ReduceLROnPlateau``."""
    driven = getattr(scheduler, "metric_driven", False)
    return bool(driven) or isinstance(scheduler, ReduceLROnPlateau)


def epochs_to_steps(epochs: float, steps_per_epoch: int) -> int:
    r"""Epochs (fractional allowed) as optimizer steps: :math:`\lfloor e n + 0.5 \rfloor`."""
    e = _float("epochs", epochs, min=0)
    return math.floor(e * _int("steps_per_epoch", steps_per_epoch, min=1) + 0.5)


class _Schedule(LRScheduler):
    """LR of step ``s``: ``_lr(s, group, base)``; ``metric_driven``: ``_report(metric)`` too."""

    metric_driven: bool = False
    _needs_total: bool = False
    warmup_start_lrs: list[float] | None = None
    _state_exclude: tuple[str, ...] = ("optimizer", "_fields")

    def __init__(self, optimizer: Optimizer) -> None:
        self._fields = (*self.__dict__, "last_epoch", "base_lrs")  # what a state must hold
        super().__init__(optimizer)

    def _own_state(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in self._state_exclude}

    def state_dict(self) -> dict[str, Any]:
        return {**copy.deepcopy(self._own_state()), _CLASS_KEY: type(self).__name__}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load a copy of a ``state_dict()`` of this type. ``TypeError``: a field's type;
        ``ValueError``: another type's, missing/unknown fields, another group count, bad values."""
        name = type(self).__name__
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"{name} state_dict must be a mapping, got {type(state_dict).__name__}")
        state = copy.deepcopy(dict(state_dict))
        if (cls := state.pop(_CLASS_KEY, name)) != name:
            raise ValueError(f"this state_dict belongs to a {cls!r} scheduler, not to this {name}")
        field = f"{name} state_dict[{{!r}}]".format
        check_int(field("last_epoch"), state.get("last_epoch", 0), min=-1)
        current = self._own_state()
        if missing := [k for k in current if k in self._fields and k not in state]:
            raise ValueError(f"{name} state_dict lacks {missing} (another scheduler's state?)")
        if unknown := sorted(set(state) - set(current) - set(_TORCH_FIELDS)):
            raise ValueError(f"{name} state_dict has unknown fields {unknown} (another type's?)")
        for key in set(state) & set(current):
            _check_field(field(key), current[key], state[key])
        groups = len(self.optimizer.param_groups)
        for key in [k for k in _PER_GROUP if state.get(k) is not None]:
            if len(state[key]) != groups:
                got = f"has {len(state[key])} values; the optimizer has {groups} parameter groups"
                raise ValueError(f"{field(key)} {got} (another optimizer's scheduler state?)")
            for i, lr in enumerate(state[key] if key != "momenta" else ()):
                check_float(f"{field(key)}[{i}]", float(lr) if torch.is_tensor(lr) else lr, min=0)
        w = check_int(field("warmup_steps"), state.get("warmup_steps", 0), min=0)
        if state.get("total_steps") is not None or self._needs_total:
            check_int(field("total_steps"), state.get("total_steps"), min=w + 1)
        self.__dict__.update(state)

    def _adopt_new_groups(self) -> None:
        """Groups added by ``add_param_group``: base LR their ``initial_lr`` (else ``lr``)."""
        for i, group in list(enumerate(self.optimizer.param_groups))[len(self.base_lrs) :]:
            b = float(group.setdefault("initial_lr", group["lr"]))
            self.base_lrs.append(check_float(f"param_groups[{i}] lr", b, min=0))
            self._new_group(i, b)

    def _new_group(self, i: int, b: float) -> None:
        """Extend the per-group state for group ``i`` (base LR ``b``)."""

    def _warmup_lr(self, s: int, i: int, b: float) -> float:
        starts = self.warmup_start_lrs
        a = starts[i] if starts is not None else self.warmup_start_factor * b
        return a + (b - a) * s / self.warmup_steps

    def _extra(self, s: int) -> None:
        """Side effects besides the LR at step ``s`` (momentum cycling)."""

    def lr_at(self, step: int) -> list[float]:
        """Every group's LR at ``step`` in the current state, without changing any state."""
        step = _int("step", step, min=0)
        return [self._lr(step, i, float(b)) for i, b in enumerate(self.base_lrs)]

    def get_lr(self) -> list[float]:
        self._extra(self.last_epoch)
        return self.lr_at(self.last_epoch)

    def _apply(self) -> None:
        """Set the group LRs to this step's at once (after a metric changed the schedule)."""
        for group, lr in zip(self.optimizer.param_groups, self.lr_at(self.last_epoch)):
            group["lr"] = group["lr"].fill_(lr) if torch.is_tensor(group["lr"]) else lr  # in place
        self._last_lr = _group_lrs(self.optimizer)

    def step(self, metric: float | torch.Tensor | None = None) -> None:  # type: ignore[override]
        """``step()``: one optimizer step; ``step(metric)``: report a metric (not a step). Not
        metric-driven: an int is torch's ``epoch`` (``SequentialLR``), other metrics raise."""
        self._adopt_new_groups()
        if metric is not None and self.metric_driven:
            if not torch.is_tensor(metric):
                metric = check_float("metric", metric, finite=False)
            elif metric.numel() != 1:
                shape = f"a tensor of shape {tuple(metric.shape)}"
                raise TypeError(f"metric must be a number or a one-element tensor, got {shape}")
            self._report(metric)
        elif metric is None or (isinstance(metric, int) and not isinstance(metric, bool)):
            super().step(metric)
        else:
            message = f"{type(self).__name__} is not metric-driven: call step() without a metric"
            raise ValueError(f"{message} (got {metric!r})")


class _WarmupSchedule(_Schedule):
    """Closed form: warmup, then :meth:`_after_warmup`."""

    def __init__(
        self,
        optimizer: Optimizer,
        *,
        total_steps: int | None = None,
        warmup_steps: int = 0,
        warmup_start_lr: float | Sequence[float] | None = None,
        warmup_start_factor: float | None = None,
        min_lr: float | Sequence[float] | None = None,
        min_lr_ratio: float = 0.0,
    ) -> None:
        bases = _base_lrs_of(optimizer)
        self.warmup_steps = _int("warmup_steps", warmup_steps, min=0)
        if total_steps is not None or self._needs_total:
            total_steps = _int("total_steps", total_steps, min=self.warmup_steps + 1)
        self.total_steps = total_steps
        self.warmup_start_lrs = _per_group("warmup_start_lr", warmup_start_lr, len(bases))
        if self.warmup_start_lrs is not None and warmup_start_factor is not None:
            both = f"got {warmup_start_lr=}, {warmup_start_factor=}"
            raise ValueError(f"give warmup_start_lr or warmup_start_factor, not both; {both}")
        factor = 0.01 if warmup_start_factor is None else warmup_start_factor
        self.warmup_start_factor = _start_factor(factor)
        ratio = _float("min_lr_ratio", min_lr_ratio, min=0, max=1)
        if min_lr is not None and ratio != 0.0:
            both = f"got min_lr={min_lr!r}, min_lr_ratio={min_lr_ratio!r}"
            raise ValueError(f"give min_lr or min_lr_ratio (alias alpha), not both; {both}")
        self.min_lrs = _per_group("min_lr", min_lr, len(bases)) or [ratio * b for b in bases]
        for i, (b, a) in enumerate(zip(bases, self.warmup_start_lrs or [None] * len(bases))):
            self._at_most_lr(i, b, self.min_lrs[i], a)
        self.min_lr_ratio = ratio
        super().__init__(optimizer)

    @staticmethod
    def _at_most_lr(i: int, b: float, eta: float, start: float | None) -> None:
        for name, value in (("min_lr", eta), ("warmup_start_lr", start)):
            what = f"{name} of param_groups[{i}] (at most its lr)"
            check_float(what, value, max=b, optional=True)

    def _new_group(self, i: int, b: float) -> None:
        eta = self.min_lr_ratio * b if self.min_lr_ratio else _one_for_all("min_lr", self.min_lrs)
        starts = self.warmup_start_lrs
        a = None if starts is None else _one_for_all("warmup_start_lr", starts)
        self._at_most_lr(i, b, eta, a)
        self.min_lrs.append(eta)
        if starts is not None:
            starts.append(a)

    def _lr(self, s: int, i: int, b: float) -> float:
        if s < self.warmup_steps:
            return self._warmup_lr(s, i, b)
        return self._after_warmup(s - self.warmup_steps, b, self.min_lrs[i])


class Constant(_WarmupSchedule):
    """``constant``: warmup (none by default), then ``lr = b``."""

    def _after_warmup(self, t: int, b: float, eta: float) -> float:
        return b


ConstantWithWarmup = Constant  # the former name


class WarmupCosine(_WarmupSchedule):
    r"""``warmup_cosine`` (aliases ``cosine``, ``cosine_decay``), ``total_steps`` required:
    :math:`\text{lr} = \eta + (b - \eta)(1 + \cos(\pi \min(t, D)/D))/2`."""

    _needs_total = True

    def _after_warmup(self, t: int, b: float, eta: float) -> float:
        d = self.total_steps - self.warmup_steps
        return eta + (b - eta) * 0.5 * (1.0 + math.cos(math.pi * min(t, d) / d))


class CosineRestarts(_WarmupSchedule):
    r"""``cosine_restarts`` (alias ``cosine_decay_restarts``): SGDR. Cycle :math:`k` has length
    :math:`\ell_k = F r^k` (``first_cycle_steps`` F > 0, ``t_mult`` r ≥ 1, alias ``t_mul``),
    starts at :math:`S_k = \sum_{j<k} \ell_j`; with :math:`\tau = t - S_k`, peak
    :math:`p_k = \max(\eta, b m^k)` (``m_mul`` m in (0, 1]):
    :math:`\text{lr} = \eta + (p_k - \eta)(1 + \cos(\pi \tau / \ell_k))/2`."""

    def __init__(
        self,
        optimizer: Optimizer,
        first_cycle_steps: float,
        *,
        t_mult: float = 1.0,
        m_mul: float = 1.0,
        **kwargs: Any,
    ) -> None:
        self.first_cycle_steps = _positive("first_cycle_steps", first_cycle_steps)
        self.t_mult = _float("t_mult", t_mult, min=1)
        self.m_mul = _float("m_mul", m_mul, min=0, max=1, low_open=True)
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
    r"""``polynomial``: :math:`\text{lr} = \eta + (b - \eta)(1 - \min(t, D)/D)^p`, ``power`` > 0."""

    _needs_total = True

    def __init__(self, optimizer: Optimizer, *, power: float = 1.0, **kwargs: Any) -> None:
        self.power = _positive("power", power)
        super().__init__(optimizer, **kwargs)

    def _after_warmup(self, t: int, b: float, eta: float) -> float:
        d = self.total_steps - self.warmup_steps
        return eta + (b - eta) * (1.0 - min(t, d) / d) ** self.power


class ExponentialDecay(_WarmupSchedule):
    r"""``exponential`` (alias ``exponential_decay``): :math:`\max(\eta, b\gamma^{t/n})`, ``gamma``
    in (0, 1] (alias ``decay_rate``), n = ``decay_steps`` > 0; ``staircase`` floors t/n."""

    def __init__(
        self,
        optimizer: Optimizer,
        gamma: float,
        *,
        decay_steps: float = 1,
        staircase: bool = False,
        **kwargs: Any,
    ) -> None:
        self.gamma = _float("gamma", gamma, min=0, max=1, low_open=True)
        self.decay_steps = _positive("decay_steps", decay_steps)
        self.staircase = _bool("staircase", staircase)
        super().__init__(optimizer, **kwargs)

    def _after_warmup(self, t: int, b: float, eta: float) -> float:
        exponent = math.floor(t / self.decay_steps) if self.staircase else t / self.decay_steps
        return max(eta, b * self.gamma**exponent)


class StepDecay(ExponentialDecay):
    r"""``step``: :math:`\max(\eta, b\gamma^{\lfloor t/n \rfloor})`, n = ``step_size`` ≥ 1."""

    def __init__(
        self, optimizer: Optimizer, step_size: int, *, gamma: float = 0.1, **kwargs: Any
    ) -> None:
        self.step_size = _int("step_size", step_size, min=1)
        super().__init__(optimizer, gamma, decay_steps=step_size, staircase=True, **kwargs)


class OneCycle(_WarmupSchedule):
    r"""``onecycle``: for s < T, LRs and momenta (or Adam's β1) exactly ``OneCycleLR``'s with
    ``max_lr`` = each group's base LR; ``warmup_steps`` (if not 0) sets ``pct_start = W/T``
    (not both; 0.3 by default); from s = T the final values (warning once past T). ``ValueError``
    also for a phase under one step or ``cycle_momentum`` without momentum or betas."""

    _needs_total = True

    def __init__(
        self,
        optimizer: Optimizer,
        *,
        total_steps: int,
        pct_start: float | None = None,
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
        w = 0 if warmup_steps in (None, 0) else _int("warmup_steps", warmup_steps, min=1)
        if w and pct_start is not None:
            both = f"got warmup_steps={w}, pct_start={pct_start!r}"
            raise ValueError(f"give warmup_steps or pct_start, not both; {both}")
        total = _int("total_steps", total_steps, min=w + 1)
        pct_start = w / total if w else 0.3 if pct_start is None else pct_start
        self.pct_start = _float("pct_start", pct_start, min=0, max=1)
        self.anneal_strategy = check_choice("anneal_strategy", anneal_strategy, ("cos", "linear"))
        self.div_factor = _positive("div_factor", div_factor)
        self.final_div_factor = _positive("final_div_factor", final_div_factor)
        self.three_phase = _bool("three_phase", three_phase)
        self.cycle_momentum = _bool("cycle_momentum", cycle_momentum)
        p = self.pct_start * total
        # torch's phases: (end step, LR from, LR to, momentum from, momentum to)
        self._phases = [(p - 1, "initial_lr", "max_lr", "max_momentum", "base_momentum")]
        if three_phase:
            self._phases += [(2 * p - 2, "max_lr", "initial_lr", "base_momentum", "max_momentum")]
        last = self._phases[-1]  # the final phase goes on from where the one before it ends
        self._phases += [(total - 1, last[2], "min_lr", last[4], "max_momentum")]
        if any(not b > a for a, b in pairwise([0.0] + [phase[0] for phase in self._phases])):
            short = f"pct_start={self.pct_start} (or warmup_steps) with total_steps={total}"
            need = "choose pct_start * total_steps > 1, leaving the decay at least one step"
            raise ValueError(f"{short} leaves a phase shorter than one step; {need}")
        self.use_beta1 = "betas" in optimizer.defaults
        if cycle_momentum:  # per group, as OneCycleLR keeps them in the groups
            if "momentum" not in optimizer.defaults and not self.use_beta1:
                neither = f"{type(optimizer).__name__} has neither (pass cycle_momentum=False)"
                raise ValueError(f"cycle_momentum=True needs momentum or betas; {neither}")
            keys = ("base_momentum", "max_momentum")
            ms = [_per_group(k, v, len(bases)) for k, v in zip(keys, (base_momentum, max_momentum))]
            self.momenta = [dict(zip(keys, pair)) for pair in zip(*ms)]
        self._warned_past_end = False
        super().__init__(optimizer, total_steps=total)

    def _new_group(self, i: int, b: float) -> None:
        super()._new_group(i, b)
        if self.cycle_momentum:
            self.momenta.append(dict(_one_for_all("base_momentum/max_momentum", self.momenta)))

    def _anneal(self, s: int, values: Mapping[str, float], lr: bool) -> float:
        """``OneCycleLR``'s value in the phase of step ``s`` (the last phase past its end)."""
        ends = [0.0] + [phase[0] for phase in self._phases]
        k = next((k for k, end in enumerate(ends[1:-1]) if s <= end), len(self._phases) - 1)
        anneal = getattr(OneCycleLR, f"_annealing_{self.anneal_strategy}")  # cos or linear
        phase, pct = self._phases[k], (s - ends[k]) / (ends[k + 1] - ends[k])
        return anneal(values[phase[1 if lr else 3]], values[phase[2 if lr else 4]], pct)

    def _lr(self, s: int, i: int, b: float) -> float:
        values = {"initial_lr": b / self.div_factor, "max_lr": b}
        values["min_lr"] = values["initial_lr"] / self.final_div_factor
        return values["min_lr"] if s >= self.total_steps else self._anneal(s, values, lr=True)

    def _extra(self, s: int) -> None:
        if s > self.total_steps and not self._warned_past_end:
            self._warned_past_end = True
            msg = f"OneCycle stepped past total_steps={self.total_steps}; holding the final LR"
            warnings.warn(msg, RuntimeWarning, stacklevel=4)
        momenta = self.momenta if self.cycle_momentum else []
        for group, values in zip(self.optimizer.param_groups, momenta):
            m = values["max_momentum"] if s >= self.total_steps else self._anneal(s, values, False)
            if self.use_beta1:
                group["betas"] = (m, *group["betas"][1:])
            else:
                group["momentum"] = m


class PlateauWithWarmup(_WarmupSchedule):
    r"""``plateau``: warmup by ``step()``, then ``ReduceLROnPlateau``'s rule (same arguments and
    defaults, floor :math:`\eta`) by ``step(metric)``; metrics during warmup are ignored."""

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
        self.mode = check_choice("mode", mode, ("min", "max"))
        self.threshold_mode = check_choice("threshold_mode", threshold_mode, ("rel", "abs"))
        self.factor = _float("factor", factor, min=0, max=1, low_open=True, high_open=True)
        self.patience = _int("patience", patience, min=0)
        self.threshold = _float("threshold", threshold, min=0)
        self.cooldown = _int("cooldown", cooldown, min=0)
        self.eps = _float("eps", eps, min=0)
        self.best = math.inf if mode == "min" else -math.inf
        self.num_bad_epochs = self.cooldown_counter = 0
        self.current_lrs = _base_lrs_of(optimizer)
        super().__init__(optimizer, **kwargs)

    def _new_group(self, i: int, b: float) -> None:
        super()._new_group(i, b)
        self.current_lrs.append(b)

    def _lr(self, s: int, i: int, b: float) -> float:
        return self._warmup_lr(s, i, b) if s < self.warmup_steps else self.current_lrs[i]

    _is_better = ReduceLROnPlateau._is_better  # torch's comparison (mode, threshold[_mode])

    def _report(self, metric: float | torch.Tensor) -> None:
        if self.last_epoch < self.warmup_steps:
            return
        current = float(metric)
        better = self._is_better(current, self.best)
        self.best = current if better else self.best
        self.num_bad_epochs = 0 if better or self.cooldown_counter > 0 else self.num_bad_epochs + 1
        self.cooldown_counter = max(self.cooldown_counter - 1, 0)
        if self.num_bad_epochs > self.patience:
            new = [max(old * self.factor, eta) for old, eta in zip(self.current_lrs, self.min_lrs)]
            self.current_lrs = [n if o - n > self.eps else o for o, n in zip(self.current_lrs, new)]
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
            self._apply()


class AdaptiveScheduler(_Schedule):
    r"""``adaptive``: :math:`\text{lr} = \min(\ell(s), \max(\eta, \ell(s) m))`, :math:`\ell` the
    ``base`` schedule's LR (a type name or ``{"type": ..., **params}``, or its parameters as
    keywords), :math:`m` from 1; a cut, :math:`m \leftarrow m \cdot` ``factor``, applies at once.
    ``step(metric)`` cuts (once) for a non-finite metric (and sets ``needs_rollback``; whoever
    rolls back clears it), one over ``(1 + spike_threshold)`` × the mean of the last ``window``
    finite ones, or ``patience`` metrics without a new best (a cut resets that count).
    ``observe(loss)`` cuts for a finite step loss over ``step_spike_factor`` (``None``: off) ×
    the median of the last ``step_window`` (after ``window``); a spike stays out of the median
    and starts a cooldown of ``window`` steps."""

    metric_driven = True
    _state_exclude = ("optimizer", "_fields", "_base")

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
        closed_form = SCHEDULER_TYPES[:-2]  # all but plateau and adaptive
        name = check_choice("base", _canonical(base, what="base"), closed_form)
        self.factor = _float("factor", factor, min=0, max=1, low_open=True, high_open=True)
        self.spike_threshold = _positive("spike_threshold", spike_threshold)
        self.window = _int("window", window, min=1)
        self.patience = _int("patience", patience, min=1)
        spike = _float("step_spike_factor", step_spike_factor, min=1, low_open=True, optional=True)
        self.step_spike_factor = spike
        self.step_window = _int("step_window", step_window, min=1)
        self.step_losses: list[float] = []
        self.step_cooldown = 0
        self.base_type = name
        self._base = _construct(name, optimizer, base_params, also=_accepted(type(self))[0])
        self.multiplier = 1.0
        self.needs_rollback = False
        self.recent: list[float] = []
        self.best = math.inf
        self.num_bad = self.num_cuts = 0
        super().__init__(optimizer)

    def _lr(self, s: int, i: int, b: float) -> float:
        base_lr = self._base._lr(s, i, b)
        return min(base_lr, max(self._base.min_lrs[i], base_lr * self.multiplier))

    def _extra(self, s: int) -> None:
        self._base._extra(s)

    def _new_group(self, i: int, b: float) -> None:
        self._base._adopt_new_groups()

    def _report(self, metric: float | torch.Tensor) -> None:
        value = float(metric)
        finite = math.isfinite(value)
        self.needs_rollback = self.needs_rollback or not finite
        mean = sum(self.recent) / len(self.recent) if self.recent else math.inf
        cut = not finite or value > (1.0 + self.spike_threshold) * mean
        if finite:
            self.recent = [*self.recent, value][-self.window :]
        better = finite and value < self.best
        self.best = value if better else self.best
        self.num_bad = 0 if better else self.num_bad + 1
        if cut or self.num_bad >= self.patience:
            self.num_bad = 0
            self._cut()

    def observe(self, loss: float | torch.Tensor) -> bool:
        """``True`` if this step's loss was a blow-up and cut (a non-finite one is ignored)."""
        value = float(loss)
        if self.step_spike_factor is None or not math.isfinite(value):
            return False
        self.step_cooldown = max(self.step_cooldown - 1, 0)
        if len(self.step_losses) >= self.window and self.step_cooldown == 0:
            median = statistics.median(self.step_losses)
            if median > 0 and value > self.step_spike_factor * median:
                self.step_cooldown = self.window
                self._cut()
                return True
        self.step_losses = [*self.step_losses, value][-self.step_window :]
        return False

    def _cut(self) -> None:
        self.multiplier *= self.factor
        self.num_cuts += 1
        self._apply()


class WarmupWrapper(_Schedule):
    r"""Linear warmup (a = f × b, alias ``with_warmup``) in front of any torch scheduler, towards
    each group's LR when built; from s = W exactly the wrapped one's from its step 0. Metric-driven
    if that one is (``step(metric)`` passed on after warmup, ignored during it; ``step()`` leaves
    a ``ReduceLROnPlateau`` alone). Step only this (``ValueError`` if the wrapped one was)."""

    _state_exclude = ("optimizer", "_fields", "scheduler", "_inner_epoch")

    def __init__(
        self, scheduler: Any, warmup_steps: int, warmup_start_factor: float = 0.01
    ) -> None:
        optimizer = getattr(scheduler, "optimizer", None)
        if not isinstance(optimizer, Optimizer):
            got = type(scheduler).__name__
            raise ValueError(f"scheduler must be a torch LR scheduler (with .optimizer), got {got}")
        self.scheduler = scheduler
        self.warmup_steps = _int("warmup_steps", warmup_steps, min=0)
        self.warmup_start_factor = _start_factor(warmup_start_factor)
        self.targets = _group_lrs(optimizer)
        self.metric_driven = is_metric_driven(scheduler)
        self._plateau = isinstance(scheduler, ReduceLROnPlateau)
        self._inner_epoch = getattr(scheduler, "last_epoch", None)
        super().__init__(optimizer)

    def _lr(self, s: int, i: int, b: float) -> float:
        target = self.targets[i]
        return self._warmup_lr(s, i, float(target)) if s < self.warmup_steps else target

    def _new_group(self, i: int, b: float) -> None:
        self.targets.append(_group_lrs(self.optimizer)[i])

    def get_lr(self) -> list[float]:
        """The LRs of this step: warmup's, then the wrapped scheduler's ``get_last_lr()``."""
        if self.last_epoch < self.warmup_steps:
            return super().get_lr()
        return list(self.scheduler.get_last_lr())

    def step(self, metric: float | torch.Tensor | None = None) -> None:  # type: ignore[override]
        if getattr(self.scheduler, "last_epoch", None) != self._inner_epoch:
            wrapped = f"the wrapped {type(self.scheduler).__name__} was stepped on its own"
            raise ValueError(f"{wrapped}: step only the with_warmup wrapper (it steps it)")
        self._adopt_new_groups()
        if metric is not None:
            if not self.metric_driven:
                wrapped = type(self.scheduler).__name__
                raise ValueError(f"step(metric) is for metric-driven schedulers; {wrapped} is not")
            if self.last_epoch >= self.warmup_steps:
                self.scheduler.step(metric)
        else:
            self._step_count += 1
            self.last_epoch += 1
            if self.last_epoch <= self.warmup_steps:
                self._apply()
            elif not self._plateau:
                self.scheduler.step()
        self._last_lr = _group_lrs(self.optimizer)
        self._inner_epoch = getattr(self.scheduler, "last_epoch", None)

    def state_dict(self) -> dict[str, Any]:
        inner = copy.deepcopy(self.scheduler.state_dict())
        return {**super().state_dict(), "scheduler_state": inner}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        state = dict(state_dict) if isinstance(state_dict, Mapping) else state_dict
        inner = state.pop("scheduler_state", None) if isinstance(state, dict) else {}
        if not isinstance(inner, Mapping):
            lacks = "WarmupWrapper state_dict lacks its 'scheduler_state'"
            raise ValueError(f"{lacks} (got {inner!r})")
        super().load_state_dict(state)  # TypeError if not a mapping
        self.scheduler.load_state_dict(copy.deepcopy(dict(inner)))
        self._inner_epoch = getattr(self.scheduler, "last_epoch", None)


with_warmup = WarmupWrapper  # with_warmup(scheduler, warmup_steps): step only the result

_CLASSES: dict[str, type[_Schedule]] = {
    "constant": Constant,
    "warmup_cosine": WarmupCosine,
    "cosine_restarts": CosineRestarts,
    "onecycle": OneCycle,
    "polynomial": PolynomialDecay,
    "exponential": ExponentialDecay,
    "step": StepDecay,
    "plateau": PlateauWithWarmup,
    "adaptive": AdaptiveScheduler,
}
SCHEDULER_TYPES: tuple[str, ...] = tuple(_CLASSES)
SCHEDULER_ALIASES: dict[str, str] = {
    "cosine": "warmup_cosine",
    "cosine_decay": "warmup_cosine",
    "cosine_decay_restarts": "cosine_restarts",
    "exponential_decay": "exponential",
}
_PARAM_ALIASES = {"alpha": "min_lr_ratio", "t_mul": "t_mult", "decay_rate": "gamma"}
_VALID = sorted((*SCHEDULER_TYPES, *SCHEDULER_ALIASES))


def _canonical(name: Any, what: str = "type") -> str:
    if not isinstance(name, str):
        raise ValueError(f"{what} must be a scheduler type name, one of {_VALID}; got {name!r}")
    key = SCHEDULER_ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in SCHEDULER_TYPES:
        hint = _did_you_mean(key, _VALID)
        raise ValueError(f"unknown {what} {name!r}; {hint}valid types: {_VALID}")
    return key


def _accepted(cls: type) -> tuple[list[str], list[str]]:
    """(keyword names, required names) of ``cls`` after ``optimizer``; ``**kwargs``: warmup's."""
    params = list(inspect.signature(cls.__init__).parameters.values())[2:]
    if params and params[-1].kind is params[-1].VAR_KEYWORD:
        params[-1:] = list(inspect.signature(_WarmupSchedule.__init__).parameters.values())[2:]
    return [p.name for p in params], [p.name for p in params if p.default is p.empty]


def _construct(
    name: str, optimizer: Optimizer, params: Mapping[str, Any], also: Sequence[str] = ()
) -> LRScheduler:
    """``also``: the names the caller (``adaptive``) accepts besides, for the error message."""
    for alias, canonical in _PARAM_ALIASES.items():
        if alias in params and canonical in params:
            raise ValueError(f"{alias} and {canonical} are the same parameter: give one")
    resolved = {_PARAM_ALIASES.get(k, k): v for k, v in params.items()}
    for key in ("learning_rate", "lr"):
        if key in resolved:
            own = "the peak/base LR is each parameter group's own lr, set on the optimizer"
            raise ValueError(f"{key} is not a scheduler parameter: {own}")
    cls = _CLASSES[name]  # adaptive passes what is not its own on to its base's _construct
    names, required = (list(resolved), []) if name == "adaptive" else _accepted(cls)
    required += ["total_steps"] if cls._needs_total else []
    if missing := [req for req in required if req not in resolved]:
        raise ValueError(f"missing parameter {missing[0]!r} for scheduler type {name!r}")
    if unknown := [key for key in resolved if key not in names]:
        key, accepted = unknown[0], sorted({*names, *also})
        what = f"unknown parameter {key!r} for scheduler type {name!r}"
        raise ValueError(f"{what}; {_did_you_mean(key, accepted)}accepted: {accepted}")
    return cls(optimizer, **resolved)


def _mapping(config: Any) -> dict[str, Any]:
    if not isinstance(config, Mapping):
        raise ValueError(f"config must be a mapping with a 'type', got {type(config).__name__}")
    return dict(config)


def build_scheduler(
    optimizer: Optimizer, config: Mapping[str, Any] | None = None, /, **params: Any
) -> LRScheduler:
    """A scheduler from ``{"type": ..., **params}`` and/or keywords (which override); parameter
    aliases ``alpha`` → ``min_lr_ratio``, ``t_mul`` → ``t_mult``, ``decay_rate`` → ``gamma``.
    ``ValueError``: a missing/unknown type or a missing, unknown or invalid parameter."""
    merged = {**(_mapping(config) if config is not None else {}), **params}
    if "type" not in merged:
        raise ValueError(f"missing parameter 'type'; valid types: {_VALID}")
    return _construct(_canonical(merged.pop("type")), optimizer, merged)


def lr_curve(
    config: Mapping[str, Any],
    total_steps: int,
    base_lr: float = 1.0,
    *,
    metrics: Mapping[int, float] | None = None,
) -> list[float]:
    """``[lr(0), ..., lr(total_steps - 1)]`` of ``config`` (``total_steps`` by default) on a
    one-group SGD at ``base_lr``; metric-driven types get ``step(metrics[k])`` after step k."""
    total_steps = _int("total_steps", total_steps, min=1)
    base_lr = _float("base_lr", base_lr, min=0)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base_lr, momentum=0.9)
    scheduler = build_scheduler(optimizer, {"total_steps": total_steps, **_mapping(config)})
    lrs: list[float] = []
    for k in range(total_steps):
        lrs.append(float(optimizer.param_groups[0]["lr"]))
        optimizer.step()  # no gradient: changes nothing, keeps torch's step-order check quiet
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # onecycle past its end
            scheduler.step()
        if metrics is not None and k in metrics and is_metric_driven(scheduler):
            scheduler.step(metrics[k])
    return lrs
