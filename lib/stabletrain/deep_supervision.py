"""Deep supervision: weighting the losses of a network's outputs at several scales.

Output 0 is the final full-resolution map, ``n−1`` the deepest. With ``A = [n, …, 1]``,
``B = [1, …, n]``, ``N(w) = w/Σw`` (``1/n`` each if ``Σw ≤ 1e-8``), progress ``p`` and
``mix(s) = N((1−s)B + sA)``: the ``_low_to_high`` schedules are ``mix`` of 1, ``p``, ``p²`` or
a sigmoid ``σ(k((p−t)/(1−t) − x0))`` after ``t``; the others are in :func:`supervision_weights`
(from the Keras project ``dl_techniques``, plus ``nnunet``: ``N(1/2^i)``, deepest 0)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .checks import check_choice, check_config_value, check_float, check_int

_DEFAULTS: dict[str, dict[str, Any]] = {
    "constant_equal": {},
    "constant_low_to_high": {},
    "constant_high_to_low": {},
    "linear_low_to_high": {},
    "non_linear_low_to_high": {},
    "custom_sigmoid_low_to_high": {"k": 10.0, "x0": 0.5, "transition_point": 0.25},
    "scale_by_scale_low_to_high": {},
    "cosine_annealing": {"frequency": 3.0, "final_ratio": 0.5},
    "curriculum": {"max_active_outputs": None, "activation_strategy": "linear"},
    "step_wise": {"threshold": 0.5},
    "nnunet": {},
}
SCHEDULES = tuple(_DEFAULTS)
#: Schedules whose weights do not depend on ``progress``.
PROGRESS_FREE_SCHEDULES = (*SCHEDULES[:3], "nnunet")  # the constant_* schedules and nnunet
TARGET_RESIZE_MODES = ("nearest", "maxpool")


def _normalise(w: Sequence[float]) -> list[float]:
    total = sum(w)
    return [v / total for v in w] if total > 1e-8 else [1.0 / len(w)] * len(w)


def _real(name: str, value: Any, low: float | None = None, high: float | None = None) -> float:
    return check_config_value(check_float, name, value, min=low, max=high)


def supervision_weights(
    schedule: str, num_outputs: int, progress: float, **params: Any
) -> list[float]:
    """Weights (non-negative, summing to 1) of ``num_outputs`` outputs at ``progress`` in [0, 1]:
    constant_equal ``1/n``; constant_high_to_low ``mix(0)``; scale_by_scale one-hot at
    ``n−1−min(⌊pn⌋, n−1)``; cosine_annealing ``N(max(1 + m_i cos(2πfp)(1 − (1−r)p)/n, 0))``,
    ``m_i = (n−1−i) − (n−1)/2``; curriculum equal weights on the ``k = max(1, int(Mp))``
    (``M = max_active_outputs``, None or 0: n; ``exp``: ``p²``; ``M`` at ``p ≥ 1``) deepest
    outputs; step_wise one-hot at 0 if ``p ≥ h``, else ``mix(p/h)``. Raises ``ValueError``."""
    if schedule not in _DEFAULTS:
        raise ValueError(f"unknown schedule {schedule!r}; schedules are {SCHEDULES}")
    n = num_outputs
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"num_outputs must be an int >= 1, got {n!r}")
    if unknown := sorted(set(params) - set(_DEFAULTS[schedule])):
        accepted = f"accepted: {tuple(_DEFAULTS[schedule]) or 'none'}"
        raise ValueError(f"unknown parameter(s) {unknown} for schedule {schedule!r}; {accepted}")
    p = _real("progress", progress, 0.0, 1.0)
    cfg = {**_DEFAULTS[schedule], **params}
    mixes = {"constant_low_to_high": 1.0, "constant_high_to_low": 0.0, "linear_low_to_high": p}
    if schedule == "constant_equal":
        return [1.0 / n] * n
    if schedule in mixes or schedule == "non_linear_low_to_high":
        s = mixes.get(schedule, p * p)
    elif schedule == "custom_sigmoid_low_to_high":
        k = check_config_value(check_float, "k", cfg["k"], min=0, low_open=True)
        x0 = _real("x0", cfg["x0"])
        t = _real("transition_point", cfg["transition_point"], 0.0, 1.0)
        s = 0.0 if p < t or t >= 1.0 else 1.0 / (1.0 + math.exp(-k * ((p - t) / (1.0 - t) - x0)))
    elif schedule == "scale_by_scale_low_to_high":
        active = n - 1 - min(math.floor(p * n), n - 1)
        return [float(i == active) for i in range(n)]
    elif schedule == "cosine_annealing":
        f = _real("frequency", cfg["frequency"], 0.0)
        r = _real("final_ratio", cfg["final_ratio"], 0.0)
        amp, wave = (1.0 - (1.0 - r) * p) / n, math.cos(2.0 * math.pi * f * p)
        m = [(n - 1 - i) - (n - 1) / 2 for i in range(n)]
        return _normalise([max(1.0 + mi * wave * amp, 0.0) for mi in m])
    elif schedule == "curriculum":
        big_m = cfg["max_active_outputs"]
        big_m = check_config_value(check_int, "max_active_outputs", big_m, min=0, optional=True)
        big_m = n if not big_m else min(big_m, n)  # None or 0: all
        kind = check_choice("activation_strategy", cfg["activation_strategy"], ("linear", "exp"))
        k = int(big_m * p) if kind == "linear" else int(big_m * p * p)
        k = big_m if p >= 1.0 else max(1, k)
        return [1.0 / k if i >= n - k else 0.0 for i in range(n)]
    elif schedule == "step_wise":
        h = _real("threshold", cfg["threshold"], 0.0, 1.0)
        if h <= 1e-8 or p >= h:
            return [float(i == 0) for i in range(n)]
        s = p / h
    else:  # nnunet
        return [1.0] if n == 1 else _normalise([0.0 if i == n - 1 else 0.5**i for i in range(n)])
    return _normalise([(1 - s) * (i + 1) + s * (n - i) for i in range(n)])  # N((1 − s)B + sA)


def resize_target(target: torch.Tensor, size: Sequence[int], mode: str = "nearest") -> torch.Tensor:
    """Resize a target ``(N, C, *spatial)`` or int ``(N, *spatial)`` to ``size``, keeping its dtype:
    ``"nearest"`` samples; ``"maxpool"`` max-pools when shrinking (small objects and, for class
    indices, the highest index survive) and samples when enlarging. Raises ``ValueError``."""
    check_choice("target_resize", mode, TARGET_RESIZE_MODES)
    size = tuple(int(s) for s in size)
    if len(size) not in (1, 2, 3) or target.dim() not in (len(size) + 1, len(size) + 2):
        shape = tuple(target.shape)
        raise ValueError(f"cannot resize a target of shape {shape} to spatial size {size}")
    has_channels = target.dim() == len(size) + 2
    if tuple(target.shape[-len(size) :]) == size:
        return target
    x = target if has_channels else target.unsqueeze(1)
    x = x if x.is_floating_point() else x.float()
    if mode == "maxpool" and all(s <= t for s, t in zip(size, x.shape[2:])):  # shrinking
        pool = (F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d)[len(size) - 1]
        out = pool(x, size).to(target.dtype)
    else:
        out = F.interpolate(x, size=size, mode="nearest").to(target.dtype)
    return out if has_channels else out.squeeze(1)


class DeepSupervisionLoss(nn.Module):
    r"""``L = Σ_i w_i(p) loss(out_i, resize_target(target, out_i))``, ``w`` the ``schedule``'s
    :func:`supervision_weights`. Outputs of weight 0 are skipped, or get ``min_weight`` (as nnU-Net
    under DDP). ``uses_progress``: ``fit`` calls ``loss_fn(outputs, target, progress)``.
    ``last_weights`` and ``last_components`` (NaN if skipped) describe the last call."""

    uses_progress = True

    def __init__(
        self,
        loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        num_outputs: int,
        schedule: str = "linear_low_to_high",
        target_resize: str = "nearest",
        *,
        min_weight: float = 0.0,
        **schedule_params: Any,
    ) -> None:
        super().__init__()
        if not callable(loss):
            raise TypeError(f"loss must be callable, got {type(loss).__name__}")
        self.target_resize = check_choice("target_resize", target_resize, TARGET_RESIZE_MODES)
        self.min_weight = _real("min_weight", min_weight, 0.0, 1.0)
        supervision_weights(schedule, num_outputs, 0.0, **schedule_params)  # checks everything
        self.loss, self.num_outputs, self.schedule = loss, num_outputs, schedule
        self.schedule_params = dict(schedule_params)
        self.last_weights: list[float] = []
        self.last_components: list[float] = []

    def weights(self, progress: float | None) -> list[float]:
        """The schedule's weights at ``progress`` (before ``min_weight``)."""
        if progress is None and self.schedule not in PROGRESS_FREE_SCHEDULES:
            call = "call loss_fn(outputs, target, progress) with progress in [0, 1]"
            raise ValueError(f"schedule {self.schedule!r} depends on progress: {call}")
        p = 0.0 if progress is None else progress
        return supervision_weights(self.schedule, self.num_outputs, p, **self.schedule_params)

    def forward(self, outputs: Sequence[torch.Tensor], target: torch.Tensor, progress=None):
        if isinstance(outputs, torch.Tensor) or not isinstance(outputs, Sequence):
            what = f"a list of {self.num_outputs} tensors (a deeply supervised model's outputs)"
            raise ValueError(f"outputs must be {what}, got {type(outputs).__name__}")
        if len(outputs) != self.num_outputs:
            got = f"{len(outputs)} (shapes {[tuple(o.shape) for o in outputs]})"
            raise ValueError(f"expected {self.num_outputs} outputs, got {got}")
        self.last_weights = [w or self.min_weight for w in self.weights(progress)]
        values = [
            self.loss(out, resize_target(target, out.shape[2:], self.target_resize)) if w else None
            for out, w in zip(outputs, self.last_weights)
        ]
        self.last_components = [math.nan if v is None else float(v.detach()) for v in values]
        terms = [v * w for v, w in zip(values, self.last_weights) if v is not None]
        return sum(terms[1:], terms[0])  # weights sum to 1: at least one term

    def extra_repr(self) -> str:
        params = "".join(f", {k}={v!r}" for k, v in self.schedule_params.items())
        options = f"target_resize={self.target_resize!r}, min_weight={self.min_weight:g}{params}"
        return f"num_outputs={self.num_outputs}, schedule={self.schedule!r}, {options}"


def supervision_widget(schedule: str = "linear_low_to_high", num_outputs: int = 4):
    """A :class:`~stabletrain.course.supervision.SupervisionExplorer` (needs ipywidgets)."""
    from .course.supervision import SupervisionExplorer

    return SupervisionExplorer(schedule, num_outputs)
