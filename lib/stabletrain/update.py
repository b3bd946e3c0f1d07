"""The optimizer update, one object (``fit`` calls only ``autocast`` and ``step``)."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .checks import check_bool, check_float, check_int


@dataclass
class StepResult:
    """What ``step(loss)`` did: ``applied`` (the parameters changed), ``grad_norm`` (global L2
    norm of the unscaled gradients before clipping; NaN if not computed), ``reason`` (if not)."""

    applied: bool
    grad_norm: float
    reason: str | None = None


def steps_per_update(scheduler: Any) -> bool:
    """``scheduler.step()`` is due after each optimizer step (not for ``ReduceLROnPlateau``)."""
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau
    return scheduler is not None and not isinstance(scheduler, plateau)


def check_loss(loss: Any) -> torch.Tensor:
    """``loss`` if a one-element tensor requiring grad, else TypeError/ValueError (no sync)."""
    need = "the loss must be a one-element tensor, got"
    if not isinstance(loss, torch.Tensor):
        hint = "loss_fn must return a tensor computed from the outputs"
        raise TypeError(f"{need} {type(loss).__name__}: {hint}")
    if loss.numel() != 1:
        hint = "reduce it (reduction='mean') or return loss.mean()"
        raise ValueError(f"{need} shape {tuple(loss.shape)}: {hint}")
    if not loss.requires_grad:
        why = "a detached loss (.detach(), .item(), torch.no_grad) or a model with no trainable"
        raise ValueError(f"the loss does not require grad: {why} parameters (requires_grad=False)")
    return loss


def check_amp(amp: Any) -> Any:
    """``amp`` if ``None`` or it has an ``autocast`` method (a ``MixedPrecision``)."""
    if amp is not None and not callable(getattr(amp, "autocast", None)):
        want = "a stabletrain.amp.MixedPrecision (e.g. MixedPrecision('bfloat16')) or None"
        raise TypeError(f"amp must be {want}, got {type(amp).__name__} {amp!r}")
    return amp


def check_scheduler(scheduler: Any, optimizer: torch.optim.Optimizer) -> Any:
    """``scheduler`` if ``None`` or it has a ``step`` method and drives ``optimizer``."""
    if scheduler is not None and not callable(getattr(scheduler, "step", None)):
        what = "an LR scheduler (with a step method) or None, e.g. build_scheduler"
        got = f"got {type(scheduler).__name__} {scheduler!r}"
        raise TypeError(f"scheduler must be {what}(optimizer, {{...}}), {got}")
    if getattr(scheduler, "optimizer", optimizer) is not optimizer:
        text = "the scheduler belongs to another optimizer (its LR would not move)"
        raise ValueError(f"{text}: build the scheduler from the optimizer it should drive")
    return scheduler


class Update:
    """The plain update: ``step(loss)`` runs backward of ``loss / accumulation_steps`` (scaled by
    ``amp``) and, when the window closes (every ``accumulation_steps`` calls, or ``sync=True``):
    unscale, global L2 norm, clip to ``max_grad_norm``, optimizer step, scheduler step if the
    optimizer stepped, zero-grad. Non-finite values are not its business. A window closed early
    after ``m`` micro-batches gives the mean gradient over those ``m``."""

    checkpoint_name: str | None = None  #: its key in checkpoints (``None``: it has no state)
    handles_nonfinite: bool = False  #: whether it deals with non-finite steps itself

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any = None,
        *,
        amp: Any = None,
        max_grad_norm: float | None = None,
        accumulation_steps: int = 1,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {optimizer!r}")
        self.model, self.optimizer, self.amp = model, optimizer, check_amp(amp)
        self.scheduler = check_scheduler(scheduler, optimizer)
        norm = check_float("max_grad_norm", max_grad_norm, min=0, low_open=True, optional=True)
        self.max_grad_norm = norm
        self.accumulation_steps = check_int("accumulation_steps", accumulation_steps, min=1)
        self._micro, self._loss_sum = 0, None

    def autocast(self) -> contextlib.AbstractContextManager:
        """The forward pass's autocast context (a no-op without ``amp``)."""
        return self.amp.autocast() if self.amp is not None else contextlib.nullcontext()

    @property
    def loss_scale(self) -> float | None:
        """The float16 loss scale now (1.0 under bfloat16), ``None`` without ``amp``."""
        return float(self.amp.scale) if self.amp is not None else None

    def params(self) -> list[torch.Tensor]:
        return [p for g in self.optimizer.param_groups for p in g["params"]]

    def _accumulate(self, loss: torch.Tensor, sync: bool | None) -> torch.Tensor | None:
        """Backward of one micro-batch; the window's summed loss when it closes, else None."""
        check_loss(loss), check_bool("sync", sync, optional=True)
        detached = loss.detach().float()
        self._loss_sum = detached if self._loss_sum is None else self._loss_sum + detached
        scaled = loss / self.accumulation_steps if self.accumulation_steps > 1 else loss  # mean
        if self.amp is not None:
            self.amp.backward(scaled)  # scales the loss under float16: no gradient underflow
        else:
            scaled.backward()
        self._micro += 1
        if not (sync if sync is not None else self._micro % self.accumulation_steps == 0):
            return None
        micro, self._micro = self._micro, 0
        loss_sum, self._loss_sum = self._loss_sum, None
        if self.amp is not None:
            self.amp.unscale_(self.optimizer)  # clip and measure true, not scaled, gradients
        if micro < self.accumulation_steps:  # a shorter window: the mean over its micro-batches
            factor = self.accumulation_steps / micro
            if grads := [p.grad for p in self.params() if p.grad is not None]:
                torch._foreach_mul_(grads, factor)
            loss_sum = loss_sum * factor  # as a full window's sum, for the guard's comparisons
        return loss_sum

    def _clip(self, params: list[torch.Tensor], norm: torch.Tensor) -> None:
        if self.max_grad_norm is not None:
            torch.nn.utils.clip_grads_with_norm_(params, self.max_grad_norm, norm, foreach=True)

    def _apply(self, params: list[torch.Tensor], norm: torch.Tensor) -> bool:
        """Clip, step, zero-grad (``params``: those with a gradient); False: the scaler skipped."""
        if params:
            self._clip(params, norm)
        if self.amp is None:
            self.optimizer.step()
        applied = self.amp is None or bool(self.amp.step(self.optimizer))
        if applied:  # a skipped step must not advance the schedule (pytorch#67590)
            self._step_scheduler()
        self._zero_grad()
        return applied

    def _step_scheduler(self) -> None:
        if steps_per_update(self.scheduler):
            self.scheduler.step()

    def _zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def step(self, loss: torch.Tensor, *, sync: bool | None = None) -> StepResult:
        """Backward and, when the window closes (``sync``: force it open/closed), the update."""
        if self._accumulate(loss, sync) is None:
            return StepResult(False, math.nan, "accumulating")
        params = [p for p in self.params() if p.grad is not None]
        grads = [p.grad for p in params]
        norm = torch.nn.utils.get_total_norm(grads, foreach=True) if grads else torch.zeros(())
        applied = self._apply(params, norm)
        return StepResult(applied, float(norm), None if applied else "optimizer step skipped")

    def restore_snapshot(self, *, keep_lr: bool = False) -> bool:
        """Return to the last good state if this update keeps one (the plain one does not)."""
        return False

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
