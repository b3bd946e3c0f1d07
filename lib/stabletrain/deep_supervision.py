"""Deep supervision: weighting the losses of a network's outputs at several scales.

A U-Net with deep supervision (``TinyUNet(deep_supervision=True)``) returns
``n`` logit maps: **index 0 is the final, full-resolution output and index
n−1 the deepest, lowest-resolution one**. The auxiliary outputs give the deep
layers a short gradient path early in training; a schedule decides, as
training progresses (``p`` in [0, 1]), how much each output counts.

With ``A = [n, n−1, …, 1]`` (favours index 0), ``B = [1, 2, …, n]`` (favours the
deepest output) and ``N(w) = w / Σw`` (uniform ``1/n`` when ``Σw ≤ 1e-8``):

==============================  =====================================================================
schedule                        weights
==============================  =====================================================================
``constant_equal``              ``1/n`` each
``constant_low_to_high``        ``N(A)``
``constant_high_to_low``        ``N(B)``
``linear_low_to_high``          ``N((1−p)·B + p·A)``
``non_linear_low_to_high``      ``N((1−p²)·B + p²·A)``
``custom_sigmoid_low_to_high``  ``s = 0`` if ``p < t`` or ``t ≥ 1``, else ``σ(k((p−t)/(1−t) − x0))``;
                                ``N((1−s)·B + s·A)`` (``k`` 10, ``x0`` 0.5, ``transition_point`` t 0.25)
``scale_by_scale_low_to_high``  one-hot at ``n−1−min(⌊p·n⌋, n−1)`` (deepest first, final last)
``cosine_annealing``            ``m_i = (n−1−i) − (n−1)/2``, ``amp = (1 − (1−r)p)/n``;
                                ``N(max(1 + m_i cos(2π f p) amp, 0))`` (``frequency`` f 3, ``final_ratio`` r 0.5)
``curriculum``                  ``k = int(M p)`` (``linear``) or ``int(M p²)`` (``exp``), ``k = max(1, k)``,
                                ``k = M`` at ``p ≥ 1``; equal weights on the ``k`` deepest outputs
                                (``max_active_outputs`` M = n; ``activation_strategy``)
``step_wise``                   ``p ≥ h``: one-hot at 0; else ``linear_low_to_high(p/h)``
                                (``threshold`` h 0.5; one-hot at 0 when ``h ≤ 1e-8``)
``nnunet``                      ``w_i = 1/2^i``, the deepest set to 0, ``N(w)`` (nnU-Net)
==============================  =====================================================================

The first ten are the schedules of the Keras project ``dl_techniques`` (its
``optimization/deep_supervision.py``) with the same meaning.

Example:
    >>> from stabletrain.deep_supervision import supervision_weights
    >>> [round(w, 4) for w in supervision_weights("linear_low_to_high", 5, 0.0)]
    [0.0667, 0.1333, 0.2, 0.2667, 0.3333]
    >>> [round(w, 3) for w in supervision_weights("nnunet", 5, 0.0)]
    [0.533, 0.267, 0.133, 0.067, 0.0]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "PROGRESS_FREE_SCHEDULES",
    "SCHEDULES",
    "TARGET_RESIZE_MODES",
    "DeepSupervisionLoss",
    "resize_target",
    "supervision_weights",
    "supervision_widget",
]

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
PROGRESS_FREE_SCHEDULES = (
    "constant_equal",
    "constant_low_to_high",
    "constant_high_to_low",
    "nnunet",
)
TARGET_RESIZE_MODES = ("nearest", "maxpool")


def _normalise(w: Sequence[float]) -> list[float]:
    total = sum(w)
    if total <= 1e-8:
        return [1.0 / len(w)] * len(w)
    return [v / total for v in w]


def _real(name: str, value: Any, low: float | None = None, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name} must be in [{low}, {high}], got {value!r}")
    return float(value)


def _mix(n: int, s: float) -> list[float]:
    """``N((1 − s)·B + s·A)``."""
    return _normalise([(1 - s) * (i + 1) + s * (n - i) for i in range(n)])


def supervision_weights(
    schedule: str, num_outputs: int, progress: float, **params: Any
) -> list[float]:
    """Weights of ``num_outputs`` outputs (index 0 the final one) at ``progress``.

    See the module docstring for every schedule's formula. The weights are
    non-negative and sum to 1.

    Raises:
        ValueError: unknown ``schedule`` or parameter, ``num_outputs < 1``,
            ``progress`` outside [0, 1], or a parameter out of range.
    """
    if schedule not in _DEFAULTS:
        raise ValueError(f"unknown schedule {schedule!r}; schedules are {SCHEDULES}")
    if isinstance(num_outputs, bool) or not isinstance(num_outputs, int) or num_outputs < 1:
        raise ValueError(f"num_outputs must be an int >= 1, got {num_outputs!r}")
    unknown = sorted(set(params) - set(_DEFAULTS[schedule]))
    if unknown:
        accepted = tuple(_DEFAULTS[schedule]) or "none"
        raise ValueError(
            f"unknown parameter(s) {unknown} for schedule {schedule!r}; accepted: {accepted}"
        )
    p = _real("progress", progress)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"progress must be in [0, 1], got {progress!r}")
    n = num_outputs
    cfg = {**_DEFAULTS[schedule], **params}

    if schedule == "constant_equal":
        return [1.0 / n] * n
    if schedule == "constant_low_to_high":
        return _mix(n, 1.0)
    if schedule == "constant_high_to_low":
        return _mix(n, 0.0)
    if schedule == "linear_low_to_high":
        return _mix(n, p)
    if schedule == "non_linear_low_to_high":
        return _mix(n, p * p)
    if schedule == "custom_sigmoid_low_to_high":
        k = _real("k", cfg["k"])
        x0 = _real("x0", cfg["x0"])
        t = _real("transition_point", cfg["transition_point"], 0.0, 1.0)
        if p < t or t >= 1.0:
            s = 0.0
        else:
            s = 1.0 / (1.0 + math.exp(-k * ((p - t) / (1.0 - t) - x0)))
        return _mix(n, s)
    if schedule == "scale_by_scale_low_to_high":
        active = n - 1 - min(math.floor(p * n), n - 1)
        return [1.0 if i == active else 0.0 for i in range(n)]
    if schedule == "cosine_annealing":
        f = _real("frequency", cfg["frequency"], 0.0)
        r = _real("final_ratio", cfg["final_ratio"], 0.0)
        amp = (1.0 - (1.0 - r) * p) / n
        wave = math.cos(2.0 * math.pi * f * p)
        m = [(n - 1 - i) - (n - 1) / 2 for i in range(n)]
        return _normalise([max(1.0 + mi * wave * amp, 0.0) for mi in m])
    if schedule == "curriculum":
        big_m = cfg["max_active_outputs"]
        if big_m is None:
            big_m = n
        if isinstance(big_m, bool) or not isinstance(big_m, int):
            raise ValueError(f"max_active_outputs must be an int or None, got {big_m!r}")
        big_m = n if big_m <= 0 else min(big_m, n)
        strategy = cfg["activation_strategy"]
        if strategy not in ("linear", "exp"):
            raise ValueError(f"activation_strategy must be 'linear' or 'exp', got {strategy!r}")
        k = int(big_m * p) if strategy == "linear" else int(big_m * p * p)
        k = big_m if p >= 1.0 else max(1, k)
        return [1.0 / k if i >= n - k else 0.0 for i in range(n)]
    if schedule == "step_wise":
        h = _real("threshold", cfg["threshold"], 0.0, 1.0)
        if h <= 1e-8 or p >= h:
            return [1.0 if i == 0 else 0.0 for i in range(n)]
        return _mix(n, p / h)
    # nnunet
    if n == 1:
        return [1.0]
    return _normalise([0.0 if i == n - 1 else 0.5**i for i in range(n)])


def resize_target(target: torch.Tensor, size: Sequence[int], mode: str = "nearest") -> torch.Tensor:
    """Resize a segmentation target to the spatial ``size`` of an output.

    ``target`` is ``(N, C, *spatial)`` (binary/multilabel masks) or
    ``(N, *spatial)`` (integer class indices); the result keeps its dtype and layout.

    - ``"nearest"``: nearest-neighbour sampling; every value is one of the input's.
    - ``"maxpool"``: adaptive max-pooling when shrinking, so an object smaller
      than the pooling window survives (for class indices, the highest index in
      the window wins, so any foreground beats background 0); when enlarging it
      falls back to nearest.

    Neither invents label values (bilinear interpolation would).

    Raises:
        ValueError: unknown ``mode`` or a ``size`` of the wrong length.
    """
    if mode not in TARGET_RESIZE_MODES:
        raise ValueError(f"target_resize must be one of {TARGET_RESIZE_MODES}, got {mode!r}")
    size = tuple(int(s) for s in size)
    if len(size) not in (1, 2, 3) or target.dim() not in (len(size) + 1, len(size) + 2):
        raise ValueError(
            f"cannot resize a target of shape {tuple(target.shape)} to spatial size {size}"
        )
    has_channels = target.dim() == len(size) + 2
    if tuple(target.shape[-len(size) :]) == size:
        return target
    x = target if has_channels else target.unsqueeze(1)
    x = x.float() if not x.is_floating_point() else x
    shrinking = all(s <= t for s, t in zip(size, x.shape[2:]))
    if mode == "maxpool" and shrinking:
        pool = (F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d)[len(size) - 1]
        out = pool(x, size)
    else:
        out = F.interpolate(x, size=size, mode="nearest")
    out = out.to(target.dtype)
    return out if has_channels else out.squeeze(1)


class DeepSupervisionLoss(nn.Module):
    r"""Weighted sum of one loss over the outputs of a deeply supervised network.

    .. math:: L = \sum_{i=0}^{n-1} w_i(p)\;\ell\big(\text{out}_i,\ \text{resize}(t, \text{out}_i)\big)

    with :math:`w(p)` = :func:`supervision_weights` of ``schedule`` at progress
    :math:`p`. Outputs whose weight is 0 are skipped (no forward of the loss, no
    gradient to their head); with ``min_weight > 0`` they get that tiny weight
    instead, as nnU-Net does under DDP, where a parameter without gradient
    stalls the all-reduce.

    It follows :func:`stabletrain.training.fit`'s protocol: ``uses_progress`` is
    true, so ``fit`` calls ``loss_fn(outputs, target, progress)`` with the
    fraction of optimizer steps done, and validates with ``loss_fn.loss`` (the
    wrapped loss) on the final output.

    Args:
        loss: per-output loss ``loss(pred, target) -> scalar``.
        num_outputs: how many outputs the model returns.
        schedule: one of :data:`SCHEDULES`.
        target_resize: ``"nearest"`` or ``"maxpool"`` (see :func:`resize_target`).
        min_weight: weight given to outputs the schedule sets to 0 (0: skip them).
        **schedule_params: parameters of the schedule (checked at construction).

    Attributes:
        last_weights: the weights used by the last call (after ``min_weight``).
        last_components: each output's unweighted loss in the last call
            (NaN for a skipped output).

    Example:
        >>> import torch
        >>> from stabletrain.losses import DiceLoss
        >>> ds = DeepSupervisionLoss(DiceLoss(), num_outputs=3, schedule="nnunet")
        >>> outputs = [torch.zeros(2, 1, 16 // 2**i, 16 // 2**i) for i in range(3)]
        >>> loss = ds(outputs, torch.ones(2, 1, 16, 16), progress=0.5)
        >>> [round(w, 3) for w in ds.last_weights]
        [0.667, 0.333, 0.0]
    """

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
        if target_resize not in TARGET_RESIZE_MODES:
            raise ValueError(
                f"target_resize must be one of {TARGET_RESIZE_MODES}, got {target_resize!r}"
            )
        _real("min_weight", min_weight, 0.0, 1.0)
        supervision_weights(schedule, num_outputs, 0.0, **schedule_params)  # checks everything
        self.loss = loss
        self.num_outputs = num_outputs
        self.schedule = schedule
        self.target_resize = target_resize
        self.min_weight = float(min_weight)
        self.schedule_params = dict(schedule_params)
        self.last_weights: list[float] = []
        self.last_components: list[float] = []

    def weights(self, progress: float | None) -> list[float]:
        """The schedule's weights at ``progress`` (before ``min_weight``)."""
        if progress is None:
            if self.schedule not in PROGRESS_FREE_SCHEDULES:
                raise ValueError(
                    f"schedule {self.schedule!r} depends on progress: call "
                    "loss_fn(outputs, target, progress) with progress in [0, 1]"
                )
            progress = 0.0
        return supervision_weights(
            self.schedule, self.num_outputs, progress, **self.schedule_params
        )

    def forward(
        self,
        outputs: Sequence[torch.Tensor],
        target: torch.Tensor,
        progress: float | None = None,
    ) -> torch.Tensor:
        if isinstance(outputs, torch.Tensor) or not isinstance(outputs, Sequence):
            raise ValueError(
                f"outputs must be a list of {self.num_outputs} tensors (a deeply supervised "
                f"model's outputs), got {type(outputs).__name__}"
            )
        if len(outputs) != self.num_outputs:
            raise ValueError(
                f"expected {self.num_outputs} outputs, got {len(outputs)} "
                f"(shapes {[tuple(o.shape) for o in outputs]})"
            )
        weights = self.weights(progress)
        used: list[float] = []
        components: list[float] = []
        total: torch.Tensor | None = None
        for out, w in zip(outputs, weights):
            if w == 0.0:
                w = self.min_weight
            used.append(w)
            if w == 0.0:
                components.append(math.nan)
                continue
            spatial = out.shape[2:]
            value = self.loss(out, resize_target(target, spatial, self.target_resize))
            components.append(float(value.detach()))
            total = value * w if total is None else total + value * w
        self.last_weights = used
        self.last_components = components
        assert total is not None  # weights sum to 1, so at least one is positive
        return total

    def extra_repr(self) -> str:
        params = "".join(f", {k}={v!r}" for k, v in self.schedule_params.items())
        return (
            f"num_outputs={self.num_outputs}, schedule={self.schedule!r}, "
            f"target_resize={self.target_resize!r}, min_weight={self.min_weight:g}{params}"
        )


def supervision_widget(schedule: str = "linear_low_to_high", num_outputs: int = 4):
    """An ipywidgets control: pick a schedule and a number of outputs, see the weights.

    The figure comes from :func:`stabletrain.course.supervision.plot_supervision_weights`
    (call it directly for the same plot without a browser) and is shown as a PNG image
    widget, so the widget needs no interactive matplotlib backend. Requires ``ipywidgets``.
    """
    import io

    import ipywidgets as w
    import matplotlib.pyplot as plt

    from .course.supervision import plot_supervision_weights

    supervision_weights(schedule, num_outputs, 0.0)  # checks the starting values
    choice = w.Dropdown(options=list(SCHEDULES), value=schedule, description="schedule")
    count = w.IntSlider(
        value=num_outputs, min=1, max=6, description="outputs", continuous_update=False
    )
    image = w.Image(format="png")

    def redraw(_change: Any = None) -> None:
        fig = plot_supervision_weights(choice.value, count.value)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=90)
        plt.close(fig)
        image.value = buffer.getvalue()

    choice.observe(redraw, names="value")
    count.observe(redraw, names="value")
    redraw()
    return w.VBox([w.HBox([choice, count]), image])
