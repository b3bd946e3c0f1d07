"""The optimizer update: one object does the whole step, so each setting lives in one place.

:class:`Update` runs, for every micro-batch, ``backward`` of ``loss / accumulation_steps``
(scaled by the ``amp`` helper under float16) and, when an accumulation window closes:
unscale, measure the global gradient norm, clip, optimizer step, scheduler step (only if
the optimizer really stepped), zero-grad. It reports a :class:`StepResult`.
:func:`~stabletrain.loop.fit` calls nothing else to train, and takes the forward pass's
autocast from the same object (:meth:`Update.autocast`), so mixed precision, accumulation
and the scheduler cannot disagree between the loop and the update.
:class:`~stabletrain.stability.StabilityGuard` is an :class:`Update` with a policy for
non-finite and exploding steps.

Example:
    >>> import torch
    >>> model = torch.nn.Linear(4, 1)
    >>> update = Update(model, torch.optim.SGD(model.parameters(), lr=0.1), max_grad_norm=1.0)
    >>> update.step(model(torch.ones(2, 4)).sum()).applied
    True
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .checks import check_float, check_int

__all__ = ["StepResult", "Update", "steps_per_update"]


@dataclass
class StepResult:
    """What one call of an update's ``step(loss)`` did.

    Attributes:
        applied: the optimizer really changed the parameters.
        grad_norm: global L2 norm of the (unscaled) gradients before clipping;
            NaN when it was not computed (for example mid-accumulation).
        reason: why the update was not applied (``None`` when it was).
    """

    applied: bool
    grad_norm: float
    reason: str | None = None


def steps_per_update(scheduler: Any) -> bool:
    """Whether ``scheduler.step()`` is due after each real optimizer step: for every
    scheduler except a bare ``ReduceLROnPlateau``, which only takes ``step(metric)``."""
    return scheduler is not None and not isinstance(
        scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau
    )


class Update:
    """The plain update: what most training loops do, in order (nanoGPT's few lines).

    ``step(loss)``: backward; on every ``accumulation_steps``-th call (or when the loop
    closes the window early with ``sync=True``, at an epoch's end): unscale, global L2
    gradient norm (:func:`torch.nn.utils.get_total_norm`), clip to ``max_grad_norm``
    (:func:`torch.nn.utils.clip_grads_with_norm_`), optimizer step (through ``amp``, which
    reports whether the float16 scaler really stepped), scheduler step if it did, zero-grad.
    It does nothing about non-finite values: that is the stability guard's job.

    Args:
        model: the network (the guard snapshots it; the plain update only records it).
        optimizer: its optimizer.
        scheduler: stepped after every real optimizer step, unless it only takes
            ``step(metric)`` (a bare ``ReduceLROnPlateau``).
        amp: a :class:`~stabletrain.amp.MixedPrecision` (``None``: float32).
        max_grad_norm: clip the global gradient norm to this (``> 0``) or not at all.
        accumulation_steps: micro-batches per optimizer step (``>= 1``).

    Raises:
        ValueError, TypeError: an argument outside its accepted values.
    """

    #: the name under which checkpoints store this object's state (``None``: it has none)
    checkpoint_name: str | None = None
    #: whether the update itself deals with non-finite steps (the plain one does not)
    handles_nonfinite: bool = False

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
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {optimizer!r}")
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.amp = amp
        self.max_grad_norm = (
            None
            if max_grad_norm is None
            else check_float("max_grad_norm", max_grad_norm, min=0, low_open=True)
        )
        self.accumulation_steps = check_int("accumulation_steps", accumulation_steps, min=1)
        self._micro = 0
        self._loss_sum: torch.Tensor | None = None

    # -- the pieces a subclass reuses -----------------------------------------------------
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
        detached = loss.detach().float()
        self._loss_sum = detached if self._loss_sum is None else self._loss_sum + detached
        # divide so that the summed gradient is the mean over the window's micro-batches
        scaled = loss / self.accumulation_steps if self.accumulation_steps > 1 else loss
        if self.amp is not None:
            self.amp.backward(scaled)  # scales the loss under float16 so gradients don't underflow
        else:
            scaled.backward()
        self._micro += 1
        if not (sync if sync is not None else self._micro % self.accumulation_steps == 0):
            return None
        self._micro = 0
        loss_sum, self._loss_sum = self._loss_sum, None
        if self.amp is not None:
            self.amp.unscale_(self.optimizer)  # clip and measure true, not scaled, gradients
        return loss_sum

    def _optimizer_step(self) -> bool:
        """Step the optimizer; False when the float16 scaler skipped it (overflow)."""
        if self.amp is not None:
            return bool(self.amp.step(self.optimizer))
        self.optimizer.step()
        return True

    def _step_scheduler(self) -> None:
        if steps_per_update(self.scheduler):
            self.scheduler.step()

    def _zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    # -- the update -------------------------------------------------------------------------
    def step(self, loss: torch.Tensor, *, sync: bool | None = None) -> StepResult:
        """Backward and, when the accumulation window closes, the update.

        ``sync`` closes (``True``) or keeps open (``False``) the window regardless of
        the count; ``None`` closes it every ``accumulation_steps`` calls.
        """
        if self._accumulate(loss, sync) is None:
            return StepResult(False, math.nan, "accumulating")
        params = self.params()
        grads = [p.grad for p in params if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads, foreach=True) if grads else torch.zeros(())
        if self.max_grad_norm is not None and grads:
            torch.nn.utils.clip_grads_with_norm_(params, self.max_grad_norm, norm, foreach=True)
        applied = self._optimizer_step()
        if applied:  # a skipped step must not advance the schedule (pytorch#67590)
            self._step_scheduler()
        self._zero_grad()
        return StepResult(applied, float(norm), None if applied else "optimizer step skipped")

    def restore_snapshot(self, *, keep_lr: bool = False) -> bool:
        """Return to the last good state if this update keeps one (the plain one does not)."""
        return False

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
