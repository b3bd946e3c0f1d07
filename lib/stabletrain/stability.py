"""Finding and surviving non-finite values in training.

The tools, from cheapest to most involved:

- :func:`grads_are_finite`, :func:`grad_norm`: torch's ``get_total_norm``, measured again in
  float64 when float32 overflows, so a huge gradient is not mistaken for a non-finite one.
- :func:`clip_gradients`: global-norm, per-tensor-norm or value clipping that never spreads
  a non-finite gradient to the others.
- :func:`check_gradients`, :func:`check_weights`: per-parameter diagnosis (names of the
  offending tensors).
- :class:`NanDetector`: names the first module whose forward output or backward gradient
  was not finite, at a fraction of :func:`torch.autograd.detect_anomaly`'s cost.
- :class:`StabilityGuard`: an :class:`~stabletrain.update.Update` (backward, unscale, finite
  check, clipping, optimizer and scheduler step, zero-grad) with a policy for non-finite
  and exploding steps: skip, roll back to a snapshot with a lower learning rate, or raise.

``EarlyStopping`` lives in :mod:`stabletrain.callbacks`; this module re-exports it.

Example:
    >>> import torch
    >>> from stabletrain.stability import StabilityGuard
    >>> model = torch.nn.Linear(4, 1)
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> guard = StabilityGuard(model, opt, clip_mode="norm", max_norm=1.0)
    >>> guard.step(model(torch.ones(2, 4)).sum()).applied
    True
    >>> guard.step(model(torch.full((2, 4), float("nan"))).sum()).reason
    'non-finite loss'
"""

from __future__ import annotations

import copy
import math
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .callbacks import EarlyStopping
from .update import StepResult, Update, steps_per_update
from .utils import cpu_copy

__all__ = [
    "CLIP_MODES",
    "NONFINITE_POLICIES",
    "EarlyStopping",
    "NanDetector",
    "NonFiniteError",
    "NonFiniteReport",
    "StabilityGuard",
    "check_gradients",
    "check_weights",
    "clip_gradients",
    "grad_norm",
    "grads_are_finite",
]

CLIP_MODES = ("norm", "norm_local", "value")
NONFINITE_POLICIES = ("skip", "rollback", "raise")
_EPS = 1e-6  # as torch.nn.utils.clip_grad_norm_


class NonFiniteError(RuntimeError):
    """A NaN or Inf was found; ``report`` holds the diagnosis (a dict or a report object)."""

    def __init__(self, message: str, report: Any = None) -> None:
        super().__init__(message)
        self.report = report


# --------------------------------------------------------------------------------------
# fused gradient reductions


def _as_tensors(parameters: Iterable[torch.Tensor] | torch.Tensor) -> list[torch.Tensor]:
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    return list(parameters)


def _grads(parameters: Iterable[torch.Tensor] | torch.Tensor) -> list[torch.Tensor]:
    return [p.grad for p in _as_tensors(parameters) if p.grad is not None]


def _wide_norm(grads: list[torch.Tensor], norm_type: float = 2.0) -> torch.Tensor:
    """:func:`torch.nn.utils.get_total_norm` in float64 (float32 on MPS, which has no other).

    A float32 sum of squares overflows once entries reach about ``1e19`` while every entry
    is still finite; in float64 it cannot, so this norm is non-finite exactly when an entry is.
    """
    if any(g.device.type == "mps" for g in grads):
        return torch.nn.utils.get_total_norm(grads, norm_type)
    return torch.nn.utils.get_total_norm([g.double() for g in grads], norm_type)


def _total_norm(grads: list[torch.Tensor], norm_type: float = 2.0) -> torch.Tensor:
    """The float32 total norm (fast), measured again in float64 when it is not finite."""
    total = torch.nn.utils.get_total_norm(grads, norm_type)
    return total if torch.isfinite(total) else _wide_norm(grads, norm_type)


def _check_norm_type(norm_type: float) -> float:
    try:
        norm_type = float(norm_type)
    except (TypeError, ValueError):
        raise TypeError(f"norm_type must be a number, got {norm_type!r}") from None
    if not (norm_type > 0 or math.isinf(norm_type)):
        raise ValueError(f"norm_type must be > 0 or inf, got {norm_type}")
    return norm_type


def grad_norm(
    parameters: Iterable[torch.Tensor] | torch.Tensor, norm_type: float = 2.0
) -> torch.Tensor:
    r"""Global norm of all gradients, as one vector: :math:`\lVert(\lVert g_1\rVert_p, …,
    \lVert g_n\rVert_p)\rVert_p`.

    :func:`torch.nn.utils.get_total_norm`, measured again in float64 when the float32
    result is not finite (one host synchronisation): a float32 norm overflows to ``inf``
    once entries reach about ``1e19`` while every gradient is still finite, and "huge" and
    "non-finite" must not look the same. Returns a 0-d float32 tensor (0 when no parameter
    has a gradient); a non-finite gradient gives a non-finite norm.

    Args:
        parameters: tensors (or one tensor) whose ``.grad`` to measure.
        norm_type: ``p`` of the norm, ``> 0`` or ``inf``.
    """
    norm_type = _check_norm_type(norm_type)
    grads = _grads(parameters)
    return _total_norm(grads, norm_type).float() if grads else torch.zeros(())


def grads_are_finite(parameters: Iterable[torch.Tensor] | torch.Tensor) -> bool:
    r"""Whether every gradient entry is finite (no NaN, no ±Inf): one max-norm
    (:math:`\max_i \lVert g_i\rVert_\infty`, which cannot overflow) and one host
    synchronisation. Parameters without a gradient are ignored."""
    grads = _grads(parameters)
    return not grads or bool(torch.isfinite(torch.nn.utils.get_total_norm(grads, math.inf)))


def _check_clip(mode: str, max_value: float) -> float:
    if mode not in CLIP_MODES:
        raise ValueError(f"clip mode must be one of {CLIP_MODES}, got {mode!r}")
    if isinstance(max_value, bool) or not isinstance(max_value, int | float):
        raise TypeError(f"max_value must be a number, got {type(max_value).__name__}")
    if not max_value > 0 or not math.isfinite(max_value):
        raise ValueError(f"max_value must be a finite number > 0, got {max_value}")
    return float(max_value)


def _clip(params: list[torch.Tensor], total: torch.Tensor, mode: str, c: float) -> None:
    """Clip finite gradients in place with torch's functions (no host synchronisation)."""
    if mode == "norm":
        torch.nn.utils.clip_grads_with_norm_(params, c, total)
    elif mode == "value":
        torch.nn.utils.clip_grad_value_(params, c)
    else:  # "norm_local", which torch lacks: each tensor by its own (float64) norm
        for p in params:
            norm = torch.linalg.vector_norm(p.grad, dtype=torch.float64)
            p.grad.mul_(torch.clamp(c / (norm + _EPS), max=1.0).to(p.grad.dtype))


def clip_gradients(
    parameters: Iterable[torch.Tensor] | torch.Tensor, mode: str, max_value: float
) -> torch.Tensor:
    r"""Clip gradients in place, but never when one of them is not finite.

    Modes, with :math:`c` = ``max_value`` and :math:`\epsilon = 10^{-6}`:

    - ``"norm"``: every gradient times :math:`\min(1, c / (\lVert g\rVert_2 + \epsilon))`
      with :math:`\lVert g\rVert_2` the global L2 norm
      (:func:`torch.nn.utils.clip_grads_with_norm_`);
    - ``"norm_local"``: each tensor times :math:`\min(1, c / (\lVert g_i\rVert_2 + \epsilon))`
      (its own norm);
    - ``"value"``: every entry clamped to :math:`[-c, c]` (:func:`torch.nn.utils.clip_grad_value_`).

    When any gradient is NaN or Inf, every gradient is left untouched (torch's
    ``clip_grad_norm_`` multiplies all of them by ``c / inf = 0`` or by NaN). The norm is
    :func:`grad_norm`'s, so a huge but finite gradient is clipped, not mistaken for a
    non-finite one.

    Returns:
        The global L2 norm of the gradients *before* clipping, in every mode (non-finite
        when a gradient is).

    Raises:
        ValueError: unknown ``mode`` or ``max_value <= 0``.
    """
    c = _check_clip(mode, max_value)
    params = [p for p in _as_tensors(parameters) if p.grad is not None]
    if not params:
        return torch.zeros(())
    total = _total_norm([p.grad for p in params])
    if torch.isfinite(total):
        _clip(params, total, mode, c)
    return total.float()


# --------------------------------------------------------------------------------------
# per-parameter diagnosis


def _scan(named: Iterable[tuple[str, torch.Tensor | None]], kind: str) -> dict[str, Any]:
    largest = 0.0
    nan_names: list[str] = []
    inf_names: list[str] = []
    count = 0
    for name, t in named:
        if t is None:
            continue
        count += 1
        t = t.detach()
        if not (t.is_floating_point() or t.is_complex()) or t.numel() == 0:
            continue
        if bool(torch.isnan(t).any()):
            nan_names.append(name)
        if bool(torch.isinf(t).any()):
            inf_names.append(name)
        finite = t[torch.isfinite(t)]
        if finite.numel():
            largest = max(largest, float(finite.abs().max()))
    return {
        f"max_{kind}": largest,
        f"nan_{kind}s": len(nan_names),
        f"inf_{kind}s": len(inf_names),
        f"nan_{kind}_names": nan_names,
        f"inf_{kind}_names": inf_names,
        "nonfinite_names": sorted(set(nan_names) | set(inf_names)),
        "num_checked": count,
    }


def check_gradients(model: nn.Module) -> dict[str, Any]:
    """Per-parameter gradient diagnosis of ``model`` (a slow, readable scan).

    Returns:
        ``max_grad`` (largest finite ``|g|``), ``nan_grads`` / ``inf_grads`` (how many
        parameters hold a NaN / an Inf gradient), ``nan_grad_names`` / ``inf_grad_names``
        and ``nonfinite_names`` (qualified names as in ``named_parameters()``), and
        ``num_checked`` (parameters that have a gradient).
    """
    return _scan(((n, p.grad) for n, p in model.named_parameters()), "grad")


def check_weights(model: nn.Module) -> dict[str, Any]:
    """Per-parameter weight diagnosis of ``model``; keys as :func:`check_gradients` with
    ``weight`` in place of ``grad`` (``max_weight``, ``nan_weights``, ``inf_weights``, …)."""
    return _scan(model.named_parameters(), "weight")


# --------------------------------------------------------------------------------------
# NanDetector


def _tensors_in(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, list | tuple):
        return [t for v in value for t in _tensors_in(v)]
    if isinstance(value, Mapping):
        return [t for v in value.values() for t in _tensors_in(v)]
    return []


def _all_finite(tensors: Iterable[torch.Tensor | None]) -> bool:
    """Exact NaN/Inf check; the fast path is one ``sum`` per tensor (one pass, no copy).

    A finite sum proves every entry finite; a non-finite sum (NaN/Inf entries, or an
    overflow of a large finite sum) is confirmed entry-wise.
    """
    for t in tensors:
        if t is None or not t.is_floating_point() or t.numel() == 0:
            continue
        if not bool(torch.isfinite(t.detach().sum())) and not bool(torch.isfinite(t).all()):
            return False
    return True


#: Modules that cannot turn finite inputs into a NaN/Inf, forward or backward;
#: :class:`NanDetector` does not check them (the module before them would be named).
PASS_THROUGH_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.Identity,
    nn.Dropout,
    nn.Dropout2d,
    nn.MaxPool2d,
    nn.Flatten,
)


def tensor_stats(t: torch.Tensor) -> dict[str, Any]:
    """Shape, dtype, finite min/max/mean and NaN/Inf counts of a tensor (for reports)."""
    t = t.detach()
    stats: dict[str, Any] = {"shape": tuple(t.shape), "dtype": str(t.dtype).replace("torch.", "")}
    if not t.is_floating_point() or t.numel() == 0:
        return stats
    finite = t[torch.isfinite(t)].float()
    stats["nan"] = int(torch.isnan(t).sum())
    stats["inf"] = int(torch.isinf(t).sum())
    if finite.numel():
        stats.update(min=float(finite.min()), max=float(finite.max()), mean=float(finite.mean()))
    return stats


@dataclass
class NonFiniteReport:
    """Where a non-finite value first appeared.

    Attributes:
        module: qualified name as in ``named_modules()`` (``""`` is the root model).
        module_type: class name of that module.
        phase: ``"forward"`` (its output) or ``"backward"`` (the gradient it sent back).
        input_stats: :func:`tensor_stats` of the module's inputs (forward) or of the
            gradient that reached its output (backward).
        output_stats: statistics of the non-finite output (forward) or of the gradients
            it produced (backward).
        call: how many forward calls of hooked modules preceded it in this context.
        note: extra context (for example which tensor's gradient turned non-finite).
    """

    module: str
    module_type: str
    phase: str
    input_stats: list[dict[str, Any]] = field(default_factory=list)
    output_stats: list[dict[str, Any]] = field(default_factory=list)
    call: int = 0
    note: str = ""

    def __str__(self) -> str:
        name = self.module or "<model>"
        text = f"first non-finite value in the {self.phase} pass of {name} ({self.module_type})"
        return f"{text}: {self.note}" if self.note else text


class NanDetector:
    """Name the first module that produced a NaN or Inf, forward or backward.

    Forward: a hook on every module checks its outputs (children run before parents, so
    the innermost module is named). Backward: for each output that takes part in autograd
    the hook also registers a hook on that output's autograd node
    (``grad_fn.register_hook``). When the node runs, ``grad_outputs`` is the gradient
    that reached the module's output and ``grad_inputs`` what its last operation sends
    back: a finite ``grad_outputs`` with a non-finite ``grad_inputs`` names the module; a
    non-finite ``grad_outputs`` names the module that *consumed* this output (recorded by
    a pre-forward hook), whose own operations made the gradient non-finite. Unlike
    ``register_full_backward_hook`` this works with in-place activations such as
    ``ReLU(inplace=True)``.

    After the first finding it stops checking. A clean step costs one
    ``isfinite().all()`` per module output and per gradient — much less than
    :func:`torch.autograd.detect_anomaly`, which also records a stack trace for every
    operation of the forward pass and checks every backward function.

    Args:
        model: the network to watch.
        raise_on_nonfinite: raise :class:`NonFiniteError` at the first finding instead of
            only recording it.

    Example:
        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
        >>> with NanDetector(model) as detector:
        ...     _ = model(torch.tensor([[1.0, float("inf")]]))
        >>> detector.report.module, detector.report.phase
        ('0', 'forward')
    """

    def __init__(self, model: nn.Module, raise_on_nonfinite: bool = False) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        self.model = model
        self.raise_on_nonfinite = bool(raise_on_nonfinite)
        self.report: NonFiniteReport | None = None
        self._handles: list[Any] = []
        self._calls = 0
        self._consumers: dict[Any, list[str]] = {}
        self._seen: set[Any] = set()  # autograd nodes whose output was checked already
        self._types: dict[str, str] = {}

    def reset(self) -> None:
        """Forget the finding so the next non-finite value is reported again."""
        self.report = None
        self._calls = 0

    def __enter__(self) -> NanDetector:
        for name, module in self.model.named_modules():
            self._types[name] = type(module).__name__
            self._handles.append(module.register_forward_pre_hook(self._pre_hook(name)))
            if not isinstance(module, PASS_THROUGH_MODULES):
                self._handles.append(module.register_forward_hook(self._forward_hook(name)))
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Remove every hook (done on leaving the ``with`` block)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._consumers.clear()
        self._seen.clear()

    def _found(self, report: NonFiniteReport) -> None:
        self.report = report
        self._consumers.clear()
        self._seen.clear()
        if self.raise_on_nonfinite:
            raise NonFiniteError(str(report), report)

    def _pre_hook(self, name: str):
        def hook(module: nn.Module, args: Any) -> None:
            if self.report is not None:
                return
            if name == "":  # a new forward pass of the model: forget the last graph
                self._consumers.clear()
                self._seen.clear()
            if torch.is_grad_enabled():
                for t in _tensors_in(args):
                    if t.grad_fn is not None:
                        self._consumers.setdefault(t.grad_fn, []).append(name)

        return hook

    def _forward_hook(self, name: str):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if self.report is not None:
                return
            self._calls += 1
            # a container returning its last child's output: that tensor was checked already
            outputs = [
                t for t in _tensors_in(output) if t.grad_fn is None or t.grad_fn not in self._seen
            ]
            if not _all_finite(outputs):
                self._found(
                    NonFiniteReport(
                        name,
                        type(module).__name__,
                        "forward",
                        [tensor_stats(t) for t in _tensors_in(args)],
                        [tensor_stats(t) for t in outputs],
                        self._calls,
                    )
                )
                return
            if torch.is_grad_enabled():
                for t in outputs:
                    if t.grad_fn is not None:
                        self._seen.add(t.grad_fn)
                        t.grad_fn.register_hook(self._backward_hook(name, t.grad_fn))

        return hook

    def _backward_hook(self, name: str, node: Any):
        def hook(grad_inputs: tuple, grad_outputs: tuple) -> None:
            if self.report is not None:
                return
            incoming = [g for g in grad_outputs if g is not None]
            produced = [g for g in grad_inputs if g is not None]
            if _all_finite(incoming):
                if _all_finite(produced):
                    return
                culprit, note = name, ""
            else:
                consumers = self._consumers.get(node, [])
                if consumers:  # the innermost module that read this output
                    culprit = max(consumers, key=lambda n: n.count(".") + (n != ""))
                    note = f"the gradient it sent back to the output of {name or '<model>'}"
                else:
                    culprit = name
                    note = "the gradient reaching its output was already non-finite (the loss?)"
            report = NonFiniteReport(
                culprit,
                self._types.get(culprit, "?"),
                "backward",
                [tensor_stats(g) for g in incoming],
                [tensor_stats(g) for g in produced],
                self._calls,
                note,
            )
            self._found(report)

        return hook


# --------------------------------------------------------------------------------------
# StabilityGuard


class StabilityGuard(Update):
    r"""The whole optimizer update, with a policy for NaN and Inf.

    ``step(loss)`` runs, for every micro-batch, ``backward`` of ``loss /
    accumulation_steps`` (through ``amp.backward`` when ``amp`` is given, which scales it
    under float16); on every ``accumulation_steps``-th call it then

    1. unscales the gradients (``amp.unscale_``),
    2. reads the summed loss and the global gradient norm :math:`\lVert g\rVert_2`
       (float32 per-tensor norms combined in float64, and measured again in float64 when
       one overflows, so it is non-finite exactly when a gradient entry is and a huge
       gradient keeps its size) in **one** host synchronisation (two after an overflow),
    3. judges the step: *non-finite* (a NaN/Inf loss or gradient), a *blow-up* (both
       finite, but the loss or the gradient norm above ``spike_factor`` × the median of
       the last ``spike_window`` healthy steps' values, once ``spike_warmup`` healthy steps
       were seen; the loss test only while that median is positive), or *healthy*,
    4. on a healthy step, every ``snapshot_every`` applied steps, snapshots the model,
       optimizer and scheduler state on the CPU *before* the update: a snapshot holds a
       state whose loss and gradient were just measured healthy,
    5. clips (``clip_mode`` with ``max_norm``, see :func:`clip_gradients`),
    6. steps the optimizer (``amp.step``), and the scheduler **only if the optimizer
       really stepped** (metric-driven schedulers are left to :func:`fit`), and zeroes the
       gradients.

    A non-finite step and a blow-up get the same policy, ``on_nonfinite``:

    - ``"skip"``: no update. Parameters, optimizer state, scheduler position and the
      model's buffers (e.g. BatchNorm running statistics, restored to their values after
      the last good step) stay bit-for-bit as they were.
    - ``"rollback"``: restore the last snapshot (as copies) and multiply the learning
      rate by ``lr_backoff``: :math:`s \leftarrow s \cdot` ``lr_backoff``, and every group
      runs at :math:`s \cdot \eta_{\text{sched}}` from then on (the scheduler computes
      :math:`\eta_{\text{sched}}` as if there had been no backoff; the guard owns its
      stepping). If the scheduler has ``needs_rollback`` (the ``adaptive`` scheduler),
      ``scheduler.step(nan)`` makes the scheduler's own cut instead and the guard clears
      the flag: no double cut.
    - ``"raise"``: raise :class:`NonFiniteError` with a diagnosis.

    Blow-ups are counted apart (``blowups``): a loss that climbs to ``1e9`` without ever
    becoming non-finite is a divergence too, and a snapshot taken during one would be
    restored by every rollback.

    Under float16 (``amp.scaler`` set), a step whose loss is finite but whose gradients
    overflow is the gradient scaler's business: ``amp.step`` skips it and lowers the
    scale, the guard counts it in ``scaler_skips``; it raises only if the scale falls
    below ``min_loss_scale``. After ``max_consecutive_skips`` other non-finite steps in a
    row it raises :class:`NonFiniteError`. Non-finite *weights* cannot be cured by
    skipping; the diagnosis says so (rollback is the remedy).

    Args:
        model: the network being trained.
        optimizer: its optimizer.
        scheduler: stepped after every real optimizer step (unless metric-driven).
        amp: mixed-precision helper with ``backward``, ``unscale_``, ``step -> bool``,
            ``scale`` and ``scaler`` (``None`` for float32).
        clip_mode: ``None`` or one of ``CLIP_MODES``; ``"norm"`` if only ``max_norm`` is given.
        max_norm: clipping threshold ``> 0``.
        on_nonfinite: one of ``NONFINITE_POLICIES``.
        lr_backoff: factor in ``(0, 1]`` applied to the LR at each rollback.
        snapshot_every: applied steps between snapshots (``>= 1``); one is also taken at
            construction.
        max_consecutive_skips: unhealthy (non-finite or blown-up) steps in a row before
            giving up (``>= 1``).
        accumulation_steps: micro-batches per optimizer step (``>= 1``).
        min_loss_scale: smallest acceptable float16 loss scale.
        spike_factor: a finite loss or gradient norm above this multiple of the recent
            healthy median is a blow-up (``> 1``; ``None`` turns the test off).
        spike_warmup: healthy steps recorded before the blow-up test starts (``>= 1``).
        spike_window: how many recent healthy steps the median is taken over (``>= 1``).

    Attributes:
        applied, skipped, rollbacks, scaler_skips: counters (``skipped``: steps skipped
            under ``"skip"``, non-finite or blow-up).
        nonfinite_steps, blowups: how many steps were non-finite / finite blow-ups.
        lr_scale: the cumulative rollback LR factor :math:`s`.
        grad_norms: pre-clipping global gradient norm of every optimizer step.
        last_finite_loss: the last finite (summed) loss seen at a step boundary.
        last_diagnosis: the diagnosis dict of the last non-finite step.

    Raises:
        ValueError: an argument outside its accepted values (the message lists them).
    """

    checkpoint_name = "guard"
    handles_nonfinite = True

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        scheduler: Any = None,
        amp: Any = None,
        clip_mode: str | None = None,
        max_norm: float | None = None,
        on_nonfinite: str = "skip",
        lr_backoff: float = 0.5,
        snapshot_every: int = 50,
        max_consecutive_skips: int = 10,
        accumulation_steps: int = 1,
        min_loss_scale: float = 1.0,
        spike_factor: float | None = 10.0,
        spike_warmup: int = 10,
        spike_window: int = 50,
    ) -> None:
        if on_nonfinite not in NONFINITE_POLICIES:
            raise ValueError(
                f"on_nonfinite must be one of {NONFINITE_POLICIES}, got {on_nonfinite!r}"
            )
        if clip_mode is not None and clip_mode not in CLIP_MODES:
            raise ValueError(f"clip_mode must be None or one of {CLIP_MODES}, got {clip_mode!r}")
        if max_norm is not None:
            if isinstance(max_norm, bool) or not isinstance(max_norm, int | float):
                raise TypeError(f"max_norm must be a number or None, got {max_norm!r}")
            if not max_norm > 0 or not math.isfinite(max_norm):
                raise ValueError(f"max_norm must be a finite number > 0 or None, got {max_norm}")
            clip_mode = clip_mode or "norm"
        elif clip_mode is not None:
            raise ValueError(f"clip_mode={clip_mode!r} needs max_norm > 0")
        if not isinstance(lr_backoff, int | float) or not 0 < lr_backoff <= 1:
            raise ValueError(f"lr_backoff must be in (0, 1], got {lr_backoff!r}")
        for name, value in (
            ("snapshot_every", snapshot_every),
            ("max_consecutive_skips", max_consecutive_skips),
            ("accumulation_steps", accumulation_steps),
            ("spike_warmup", spike_warmup),
            ("spike_window", spike_window),
        ):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {type(value).__name__}")
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if not min_loss_scale > 0:
            raise ValueError(f"min_loss_scale must be > 0, got {min_loss_scale}")
        if spike_factor is not None:
            if isinstance(spike_factor, bool) or not isinstance(spike_factor, int | float):
                raise TypeError(f"spike_factor must be a number or None, got {spike_factor!r}")
            if not 1 < spike_factor < math.inf:
                raise ValueError(
                    f"spike_factor must be a finite number > 1 or None, got {spike_factor}"
                )
        super().__init__(
            model, optimizer, scheduler, amp=amp, accumulation_steps=accumulation_steps
        )
        self.clip_mode = clip_mode
        self.max_norm = None if max_norm is None else float(max_norm)
        self.on_nonfinite = on_nonfinite
        self.lr_backoff = float(lr_backoff)
        self.snapshot_every = snapshot_every
        self.max_consecutive_skips = max_consecutive_skips
        self.min_loss_scale = float(min_loss_scale)
        self.spike_factor = None if spike_factor is None else float(spike_factor)
        self.spike_warmup = spike_warmup
        self.spike_window = spike_window

        self.applied = 0
        self.nonfinite_steps = 0
        self.blowups = 0
        self._healthy_losses: list[float] = []
        self._healthy_norms: list[float] = []
        self._rollbacks_in_a_row = 0
        self._blowups_in_a_row = 0
        self.skipped = 0
        self.rollbacks = 0
        self.scaler_skips = 0
        self.consecutive_skips = 0
        self.lr_scale = 1.0
        self.grad_norms: list[float] = []
        self.last_finite_loss = math.nan
        self.last_diagnosis: dict[str, Any] | None = None
        named_buffers = list(model.named_buffers())
        self._buffer_names = [n for n, _ in named_buffers]
        self._buffers = [b for _, b in named_buffers]
        self._buffer_copies = [b.detach().clone() for b in self._buffers]
        self._snapshot: dict[str, Any] | None = None
        self.take_snapshot()

    # -- helpers ---------------------------------------------------------------------
    @property
    def _scaler(self) -> Any:
        return getattr(self.amp, "scaler", None) if self.amp is not None else None

    def take_snapshot(self, loss: float = math.nan) -> None:
        """Copy model, optimizer and scheduler state (and the LR scale) to the CPU.

        ``loss`` is the state's measured loss, kept for messages (NaN: not measured).
        """
        self._snapshot = {
            "applied": self.applied,
            "loss": float(loss),
            "model": self._model_state(),
            "optimizer": cpu_copy(self.optimizer.state_dict()),
            "scheduler": cpu_copy(self.scheduler.state_dict())
            if self.scheduler is not None and hasattr(self.scheduler, "state_dict")
            else None,
            "lr_scale": self.lr_scale,
        }

    def _model_state(self) -> dict[str, Any]:
        """The model's state with its buffers as after the last applied step.

        Mid-step, the forward pass has already moved the running statistics; the state
        whose loss was just measured is the one before it.
        """
        state = cpu_copy(self.model.state_dict())
        for name, saved in zip(self._buffer_names, self._buffer_copies):
            if name in state:  # persistent buffers only
                state[name] = saved.detach().to("cpu", copy=True)
        return state

    def _restore_snapshot(self) -> None:
        snap = self._snapshot
        assert snap is not None
        self.model.load_state_dict(snap["model"])  # copies into the live tensors
        # optimizer.load_state_dict may keep CPU tensors as they are: give it a copy
        self.optimizer.load_state_dict(copy.deepcopy(snap["optimizer"]))
        if snap["scheduler"] is not None:
            self.scheduler.load_state_dict(copy.deepcopy(snap["scheduler"]))
        factor = self.lr_scale / snap["lr_scale"]
        for group in self.optimizer.param_groups:
            group["lr"] = group["lr"] * factor
        if self._buffers:  # the restored statistics are the new 'last good' ones
            torch._foreach_copy_(self._buffer_copies, self._buffers)

    def restore_snapshot(self, *, keep_lr: bool = False) -> bool:
        """Restore the last snapshot now, outside a step (counted as a rollback).

        For a metric-driven scheduler that flagged a non-finite validation metric after
        the epoch (``scheduler.needs_rollback``), call it with ``keep_lr=True``: model and
        optimizer state return to the snapshot, while the learning rates and scheduler
        state keep the cut the scheduler has just made; ``needs_rollback`` is cleared.
        No ``lr_backoff`` is applied.
        """
        lrs = [group["lr"] for group in self.optimizer.param_groups]
        sched = self.scheduler
        sched_state = (
            copy.deepcopy(sched.state_dict())
            if keep_lr and sched is not None and hasattr(sched, "state_dict")
            else None
        )
        self._restore_snapshot()
        if keep_lr:
            for group, lr in zip(self.optimizer.param_groups, lrs):
                group["lr"] = lr
            if sched_state is not None:
                sched.load_state_dict(sched_state)
        if sched is not None and hasattr(sched, "needs_rollback"):
            sched.needs_rollback = False
        self.rollbacks += 1
        return True

    def _set_lr_scale(self, scale: float) -> None:
        factor = scale / self.lr_scale
        for group in self.optimizer.param_groups:
            group["lr"] = group["lr"] * factor
        self.lr_scale = scale

    def _step_scheduler(self) -> None:
        if self.lr_scale == 1.0:
            super()._step_scheduler()
            return
        if self.scheduler is None or not steps_per_update(self.scheduler):
            return
        # the scheduler sees its own (un-backed-off) learning rates, then the scale returns
        for group in self.optimizer.param_groups:
            group["lr"] = group["lr"] / self.lr_scale
        self.scheduler.step()
        for group in self.optimizer.param_groups:
            group["lr"] = group["lr"] * self.lr_scale

    def _reset_scaler(self) -> None:
        if callable(getattr(self.amp, "skip", None)):  # stabletrain.amp.MixedPrecision
            self.amp.skip(self.optimizer)
            return
        scaler = self._scaler
        if scaler is not None and scaler.is_enabled():
            # forget this step's unscale_ without stepping and without changing the scale
            scaler.update(new_scale=float(scaler.get_scale()))

    # -- the update --------------------------------------------------------------------
    def step(self, loss: torch.Tensor, *, sync: bool | None = None) -> StepResult:
        """Backward and, when the accumulation window closes, the guarded update."""
        loss_sum = self._accumulate(loss, sync)
        if loss_sum is None:
            return StepResult(False, math.nan, "accumulating")
        params = [p for p in self.params() if p.grad is not None]
        grads = [p.grad for p in params]
        total = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
        # the one host synchronisation of the step
        loss_value, norm_value = torch.stack([loss_sum.to(total), total]).tolist()
        loss_ok, grads_ok = math.isfinite(loss_value), math.isfinite(norm_value)
        if not grads_ok and grads:  # a float32 overflow, or a real NaN/Inf: measure exactly
            total = _wide_norm(grads)  # in float64 (a rare second synchronisation)
            norm_value = float(total)
            grads_ok = math.isfinite(norm_value)
        self.grad_norms.append(norm_value)

        if loss_ok and not grads_ok and self._scaler is not None and self._scaler.is_enabled():
            return self._scaler_skip(norm_value, loss_value)
        if not (loss_ok and grads_ok):
            self.nonfinite_steps += 1
            reason = "non-finite loss" if not loss_ok else "non-finite gradient"
            return self._unhealthy(reason, loss_value, norm_value)
        self.last_finite_loss = loss_value
        blowup = self._blowup(loss_value, norm_value)
        if blowup is not None:
            self.blowups += 1
            self._blowups_in_a_row += 1
            return self._unhealthy(blowup, loss_value, norm_value)

        self._record_healthy(loss_value, norm_value)
        if self.applied and self.applied % self.snapshot_every == 0:
            self.take_snapshot(loss_value)  # measured healthy, before this step's update
        if self.clip_mode is not None and grads:
            _clip(params, total, self.clip_mode, self.max_norm)  # type: ignore[arg-type]
        applied = self._optimizer_step()
        self._zero_grad()
        if not applied:  # the scaler found an overflow we did not (should not happen)
            self.scaler_skips += 1
            return StepResult(False, norm_value, "optimizer step skipped by the gradient scaler")
        self._step_scheduler()
        self.applied += 1
        self.consecutive_skips = 0
        self._rollbacks_in_a_row = self._blowups_in_a_row = 0
        if self._buffers:
            torch._foreach_copy_(self._buffer_copies, self._buffers)
        return StepResult(True, norm_value, None)

    def _blowup(self, loss_value: float, norm_value: float) -> str | None:
        """A reason if this finite step is a blow-up against the healthy medians, else None."""
        if self.spike_factor is None or len(self._healthy_norms) < self.spike_warmup:
            return None
        f = self.spike_factor
        loss_median = statistics.median(self._healthy_losses)
        norm_median = statistics.median(self._healthy_norms)
        if loss_median > 0 and loss_value > f * loss_median:
            return f"loss blow-up ({loss_value:.4g} > {f:g} x healthy median {loss_median:.4g})"
        if norm_median > 0 and norm_value > f * norm_median:
            return (
                f"exploding gradient (norm {norm_value:.4g} > {f:g} x healthy median "
                f"{norm_median:.4g})"
            )
        return None

    def _record_healthy(self, loss_value: float, norm_value: float) -> None:
        for values, value in (
            (self._healthy_losses, loss_value),
            (self._healthy_norms, norm_value),
        ):
            values.append(value)
            del values[: -self.spike_window]

    def _scaler_skip(self, norm_value: float, loss_value: float) -> StepResult:
        self.last_finite_loss = loss_value
        self.amp.step(self.optimizer)  # the scaler sees the inf, skips and lowers its scale
        self._zero_grad()
        self.scaler_skips += 1
        scale = float(self.amp.scale)
        if scale < self.min_loss_scale:
            diagnosis = self._diagnosis("loss scale collapsed", loss_value, norm_value)
            raise NonFiniteError(
                f"the float16 loss scale fell to {scale:g} < min_loss_scale="
                f"{self.min_loss_scale:g}: gradients overflow even unscaled; {self._summary()}",
                diagnosis,
            )
        return StepResult(False, norm_value, "gradient overflow (loss scale lowered)")

    def _diagnosis(self, reason: str, loss_value: float, norm_value: float) -> dict[str, Any]:
        weights = check_weights(self.model)
        grads = check_gradients(self.model)
        diagnosis = {
            "reason": reason,
            "loss": loss_value,
            "grad_norm": norm_value,
            "last_finite_loss": self.last_finite_loss,
            "loss_scale": float(getattr(self.amp, "scale", 1.0)) if self.amp else 1.0,
            "applied": self.applied,
            "skipped": self.skipped,
            "rollbacks": self.rollbacks,
            "scaler_skips": self.scaler_skips,
            "consecutive_skips": self.consecutive_skips,
            "nonfinite_steps": self.nonfinite_steps,
            "blowups": self.blowups,
            "nonfinite_weights": weights["nonfinite_names"],
            "nonfinite_grads": grads["nonfinite_names"],
            "max_weight": weights["max_weight"],
        }
        if weights["nonfinite_names"]:
            diagnosis["advice"] = (
                "the weights themselves are not finite: skipping steps cannot cure this; "
                "use on_nonfinite='rollback' (restores the last good snapshot)"
            )
        return diagnosis

    def _summary(self) -> str:
        return (
            f"applied={self.applied}, skipped={self.skipped}, rollbacks={self.rollbacks}, "
            f"non-finite steps={self.nonfinite_steps}, blow-ups={self.blowups}, "
            f"scaler_skips={self.scaler_skips}, last finite loss={self.last_finite_loss:.4g}, "
            f"loss scale={float(getattr(self.amp, 'scale', 1.0)) if self.amp else 1.0:g}"
        )

    def _unhealthy(self, reason: str, loss_value: float, norm_value: float) -> StepResult:
        """A non-finite or blown-up step: no update, then skip, roll back or raise."""
        diagnosis = self._diagnosis(reason, loss_value, norm_value)
        self.last_diagnosis = diagnosis
        self._zero_grad()
        self._reset_scaler()
        if self.on_nonfinite == "raise":
            raise NonFiniteError(self._message(diagnosis), diagnosis)
        self.consecutive_skips += 1
        if self.on_nonfinite == "rollback":
            self._rollback()
        else:
            self.skipped += 1
            if self._buffers:  # undo the window's running-statistics updates
                torch._foreach_copy_(self._buffers, self._buffer_copies)
        if self.consecutive_skips >= self.max_consecutive_skips:
            diagnosis = self._diagnosis(reason, loss_value, norm_value)
            kind = "blown-up or non-finite" if self._blowups_in_a_row else "non-finite"
            text = (
                f"{self.consecutive_skips} {kind} steps in a row "
                f"(max_consecutive_skips={self.max_consecutive_skips}); "
            )
            if self.on_nonfinite == "rollback" and self._rollbacks_in_a_row > 1:
                snap = self._snapshot or {}
                text += (
                    f"the last {self._rollbacks_in_a_row} rollbacks each restored the snapshot "
                    f"taken at applied step {snap.get('applied')} (loss {snap.get('loss', math.nan):.4g}) "
                    f"and the next step blew up again, even at lr_scale={self.lr_scale:g}: "
                    "that state is itself unstable or the LR cut is too small (lower the LR, "
                    "lr_backoff or snapshot_every, or add normalisation or clipping); "
                )
            elif self.on_nonfinite == "skip" and self._blowups_in_a_row:
                text += (
                    "skipping leaves the weights as they are, and every step from them is "
                    "unhealthy: they have already exploded (use on_nonfinite='rollback'); "
                )
            raise NonFiniteError(text + self._message(diagnosis), diagnosis)
        return StepResult(False, norm_value, reason)

    def _message(self, diagnosis: Mapping[str, Any]) -> str:
        text = f"{diagnosis['reason']} (loss={diagnosis['loss']}, grad norm={diagnosis['grad_norm']}); "
        text += self._summary()
        if diagnosis["nonfinite_grads"]:
            text += f"; non-finite gradients in {diagnosis['nonfinite_grads'][:5]}"
        if "advice" in diagnosis:
            text += f"; non-finite weights in {diagnosis['nonfinite_weights'][:5]}: "
            text += diagnosis["advice"]
        return text

    def _rollback(self) -> None:
        self.rollbacks += 1
        self._rollbacks_in_a_row += 1
        self._restore_snapshot()
        sched = self.scheduler
        if sched is not None and hasattr(sched, "needs_rollback"):
            sched.step(float("nan"))  # the scheduler makes its own cut
            sched.needs_rollback = False
        else:
            self._set_lr_scale(self.lr_scale * self.lr_backoff)

    # -- state -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Counters, LR scale, the step histories and the rollback snapshot.

        The snapshot rides along (it is already a CPU copy) so that a resumed run rolls
        back to the same state as an uninterrupted one: resume stays bit-exact under
        ``"rollback"``. It roughly doubles the guard's share of a checkpoint.
        """
        return {
            "applied": self.applied,
            "skipped": self.skipped,
            "rollbacks": self.rollbacks,
            "scaler_skips": self.scaler_skips,
            "consecutive_skips": self.consecutive_skips,
            "lr_scale": self.lr_scale,
            "grad_norms": list(self.grad_norms),
            "last_finite_loss": self.last_finite_loss,
            "micro": self._micro,
            "nonfinite_steps": self.nonfinite_steps,
            "blowups": self.blowups,
            "healthy_losses": list(self._healthy_losses),
            "healthy_norms": list(self._healthy_norms),
            "rollbacks_in_a_row": self._rollbacks_in_a_row,
            "blowups_in_a_row": self._blowups_in_a_row,
            "snapshot": self._snapshot,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore counters, LR scale and the rollback snapshot.

        A state without a snapshot (written before it was saved) snapshots the model,
        optimizer and scheduler as they are now: load them first.
        """
        self.applied = int(state["applied"])
        self.skipped = int(state["skipped"])
        self.rollbacks = int(state["rollbacks"])
        self.scaler_skips = int(state.get("scaler_skips", 0))
        self.consecutive_skips = int(state.get("consecutive_skips", 0))
        self.lr_scale = float(state["lr_scale"])
        self.grad_norms = [float(v) for v in state.get("grad_norms", [])]
        self.last_finite_loss = float(state.get("last_finite_loss", math.nan))
        self._micro = int(state.get("micro", 0))
        self.nonfinite_steps = int(state.get("nonfinite_steps", 0))
        self.blowups = int(state.get("blowups", 0))
        self._healthy_losses = [float(v) for v in state.get("healthy_losses", [])]
        self._healthy_norms = [float(v) for v in state.get("healthy_norms", [])]
        self._rollbacks_in_a_row = int(state.get("rollbacks_in_a_row", 0))
        self._blowups_in_a_row = int(state.get("blowups_in_a_row", 0))
        self._loss_sum = None
        if self._buffers:
            torch._foreach_copy_(self._buffer_copies, self._buffers)
        if state.get("snapshot") is not None:
            self._snapshot = cpu_copy(state["snapshot"])  # a copy: the caller keeps its own
        else:
            self.take_snapshot()

    def __repr__(self) -> str:
        return (
            f"StabilityGuard(on_nonfinite={self.on_nonfinite!r}, clip_mode={self.clip_mode!r}, "
            f"max_norm={self.max_norm}, {self._summary()})"
        )
