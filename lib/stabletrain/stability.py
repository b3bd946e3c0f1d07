"""Non-finite values: checks, NaN-safe norm and clipping, NanDetector, StabilityGuard."""

from __future__ import annotations

import copy
import math
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import nn

from .callbacks import EarlyStopping as EarlyStopping  # re-exported
from .checks import check_bool, check_choice, check_float, check_int, check_keys
from .distributed import is_distributed, max_across_ranks
from .update import StepResult, Update, steps_per_update
from .utils import cpu_copy

CLIP_MODES = ("norm", "norm_local", "value")
NONFINITE_POLICIES = ("skip", "rollback", "raise")
_Params = Iterable[torch.Tensor] | torch.Tensor


class NonFiniteError(RuntimeError):
    """A NaN or Inf was found; ``report`` holds the diagnosis (a dict or a report object)."""

    def __init__(self, message: str, report: Any = None) -> None:
        super().__init__(message)
        self.report = report


def _with_grads(parameters: _Params) -> list[torch.Tensor]:
    params = [parameters] if isinstance(parameters, torch.Tensor) else parameters
    return [p for p in params if p.grad is not None]


def _total_norm(grads: list[torch.Tensor], norm_type: float = 2.0) -> torch.Tensor:
    """``get_total_norm``, redone in float64 (not on MPS) if not finite (overflow, or NaN/Inf)."""
    total = torch.nn.utils.get_total_norm(grads, norm_type)
    if torch.isfinite(total) or any(g.device.type == "mps" for g in grads):
        return total
    return torch.nn.utils.get_total_norm([g.double() for g in grads], norm_type)


def grad_norm(parameters: _Params, norm_type: float = 2.0) -> torch.Tensor:
    """Global ``p``-norm (``p > 0`` or ``inf``) of all gradients, 0-d float32 (0 without any);
    in float64 when the float32 one overflows, so only NaN/Inf give NaN/Inf."""
    norm_type = check_float("norm_type", norm_type, min=0, low_open=True, finite=False)
    grads = [p.grad for p in _with_grads(parameters)]
    return _total_norm(grads, norm_type).float() if grads else torch.zeros(())


def grads_are_finite(parameters: _Params) -> bool:
    """Whether every gradient entry is finite (parameters without a gradient are ignored)."""
    return bool(torch.isfinite(grad_norm(parameters, math.inf)))


def _clip_grads(params: list[torch.Tensor], total: torch.Tensor, mode: str, c: float) -> None:
    if mode == "norm":
        torch.nn.utils.clip_grads_with_norm_(params, c, total)
    elif mode == "value":
        torch.nn.utils.clip_grad_value_(params, c)
    else:  # "norm_local", which torch lacks: by each tensor's float64 norm (eps as torch's)
        for p in params:
            norm = torch.linalg.vector_norm(p.grad, dtype=torch.float64)
            p.grad.mul_(torch.clamp(c / (norm + 1e-6), max=1.0).to(p.grad.dtype))


def clip_gradients(parameters: _Params, mode: str, max_value: float) -> torch.Tensor:
    r"""Clip gradients in place unless one is not finite; returns :func:`grad_norm` (L2) before
    clipping. With :math:`c` = ``max_value > 0``: ``"norm"`` scales all by
    :math:`\min(1, c / (\lVert g\rVert_2 + 10^{-6}))`, ``"norm_local"`` each tensor by its own
    norm, ``"value"`` clamps to :math:`[-c, c]`."""
    check_choice("mode", mode, CLIP_MODES)
    c = check_float("max_value", max_value, min=0, low_open=True)
    params = _with_grads(parameters)
    total = _total_norm([p.grad for p in params]) if params else torch.zeros(())
    if params and torch.isfinite(total):
        _clip_grads(params, total, mode, c)
    return total.float()


def _scan(named: Iterable[tuple[str, torch.Tensor | None]], kind: str) -> dict[str, Any]:
    given = [(name, t.detach()) for name, t in named if t is not None]
    checked = [(n, t) for n, t in given if (t.is_floating_point() or t.is_complex()) and t.numel()]
    nan_names = [n for n, t in checked if bool(torch.isnan(t).any())]
    inf_names = [n for n, t in checked if bool(torch.isinf(t).any())]
    finite = [t[torch.isfinite(t)] for _, t in checked]
    stats = {f"max_{kind}": max([float(f.abs().max()) for f in finite if f.numel()], default=0.0)}
    stats.update({f"nan_{kind}s": len(nan_names), f"inf_{kind}s": len(inf_names)})
    stats.update({f"nan_{kind}_names": nan_names, f"inf_{kind}_names": inf_names})
    stats.update(nonfinite_names=sorted(set(nan_names) | set(inf_names)), num_checked=len(given))
    return stats


def check_gradients(model: nn.Module) -> dict[str, Any]:
    """``max_grad`` (largest finite ``|g|``), ``nan_grads``/``inf_grads`` (counts),
    ``nan_grad_names``/``inf_grad_names``, ``nonfinite_names``, ``num_checked`` (with a grad)."""
    return _scan(((n, p.grad) for n, p in model.named_parameters()), "grad")


def check_weights(model: nn.Module) -> dict[str, Any]:
    """As :func:`check_gradients` for the weights (``max_weight``, ``nan_weights``, …)."""
    return _scan(model.named_parameters(), "weight")


def _tensors_in(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, Mapping):
        value = list(value.values())
    return [t for v in value for t in _tensors_in(v)] if isinstance(value, list | tuple) else []


def _all_finite(tensors: Iterable[torch.Tensor | None]) -> bool:
    floats = (t for t in tensors if t is not None and t.is_floating_point() and t.numel())
    return all(bool(torch.isfinite(t.detach().sum())) or torch.isfinite(t).all() for t in floats)


#: Modules that cannot turn finite values into NaN/Inf; :class:`NanDetector` skips them.
PASS_THROUGH_MODULES: tuple[type[nn.Module], ...] = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Identity)
PASS_THROUGH_MODULES += (nn.Dropout, nn.Dropout2d, nn.MaxPool2d, nn.Flatten)


def tensor_stats(t: torch.Tensor) -> dict[str, Any]:
    """Shape, dtype, NaN/Inf counts and finite min/max/mean of a tensor."""
    t = t.detach()
    stats: dict[str, Any] = {"shape": tuple(t.shape), "dtype": str(t.dtype).replace("torch.", "")}
    if not t.is_floating_point() or t.numel() == 0:
        return stats
    finite = t[torch.isfinite(t)].float()
    stats.update(nan=int(torch.isnan(t).sum()), inf=int(torch.isinf(t).sum()))
    if finite.numel():
        stats.update(min=float(finite.min()), max=float(finite.max()), mean=float(finite.mean()))
    return stats


@dataclass
class NonFiniteReport:
    """Where a non-finite value first appeared: ``module`` (``""``: the root), ``phase``
    (``"forward"``: its output, ``"backward"``: the gradient it sent back), tensor stats."""

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
    """Context manager: ``report`` names the first (innermost) module whose output, or the
    gradient it sent back, was not finite (or that read a non-finite gradient); then it stops
    checking, or raises :class:`NonFiniteError` if ``raise_on_nonfinite``."""

    def __init__(self, model: nn.Module, raise_on_nonfinite: bool = False) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        self.model = model
        self.raise_on_nonfinite = check_bool("raise_on_nonfinite", raise_on_nonfinite)
        self._handles: list[Any] = []
        self._consumers: dict[Any, list[str]] = {}
        self._seen: set[Any] = set()  # autograd nodes whose output was checked already
        self.reset()

    def reset(self) -> None:
        """Forget the finding so the next non-finite value is reported again."""
        self.report: NonFiniteReport | None = None
        self._calls = 0

    def __enter__(self) -> NanDetector:
        for name, module in self.model.named_modules():
            self._handles.append(module.register_forward_pre_hook(partial(self._pre_hook, name)))
            if not isinstance(module, PASS_THROUGH_MODULES):
                forward = partial(self._forward_hook, name)
                self._handles.append(module.register_forward_hook(forward))
        return self

    def close(self, *exc: object) -> None:
        """Remove every hook (done on leaving the ``with`` block)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._forget()

    __exit__ = close

    def _forget(self) -> None:
        self._consumers.clear()
        self._seen.clear()

    def _found(self, name: str, phase: str, inputs: list, outputs: list, note: str = "") -> None:
        stats = [tensor_stats(t) for t in inputs], [tensor_stats(t) for t in outputs]
        kind = type(self.model.get_submodule(name)).__name__
        self.report = NonFiniteReport(name, kind, phase, *stats, self._calls, note)
        self._forget()
        if self.raise_on_nonfinite:
            raise NonFiniteError(str(self.report), self.report)

    def _pre_hook(self, name: str, module: nn.Module, args: Any) -> None:
        if self.report is not None:
            return
        if name == "":  # a new forward pass of the model: forget the last graph
            self._forget()
        for t in _tensors_in(args) if torch.is_grad_enabled() else ():
            if t.grad_fn is not None:
                self._consumers.setdefault(t.grad_fn, []).append(name)

    def _forward_hook(self, name: str, module: nn.Module, args: Any, output: Any) -> None:
        if self.report is not None:
            return
        self._calls += 1
        seen = self._seen  # a container's output may be its last child's, checked already
        outputs = [t for t in _tensors_in(output) if t.grad_fn is None or t.grad_fn not in seen]
        if not _all_finite(outputs):
            return self._found(name, "forward", _tensors_in(args), outputs)
        for t in outputs if torch.is_grad_enabled() else ():
            if t.grad_fn is not None:
                self._seen.add(t.grad_fn)
                t.grad_fn.register_hook(partial(self._backward_hook, name, t.grad_fn))

    def _backward_hook(self, name: str, node: Any, grad_inputs: tuple, grad_outputs: tuple) -> None:
        if self.report is not None:
            return
        incoming = [g for g in grad_outputs if g is not None]
        produced = [g for g in grad_inputs if g is not None]
        culprit, note = name, ""
        if _all_finite(incoming):
            if _all_finite(produced):
                return
        elif self._consumers.get(node):  # the innermost module that read this output
            culprit = max(self._consumers[node], key=lambda n: n.count(".") + (n != ""))
            note = f"the gradient it sent back to the output of {name or '<model>'}"
        else:
            note = "the gradient reaching its output was already non-finite (the loss?)"
        self._found(culprit, "backward", incoming, produced, note)


_COUNTERS = ("applied", "skipped", "rollbacks", "scaler_skips", "consecutive_skips")
_PRIVATE = ("micro", "healthy_losses", "healthy_norms", "rollbacks_in_a_row", "blowups_in_a_row")
#: state_dict key -> value in a fresh guard; the keys in _REQUIRED must be there
_STATE = {**dict.fromkeys(_COUNTERS, 0), "lr_scale": 1.0, "grad_norms": []}
_STATE |= {"last_finite_loss": math.nan, "micro": 0, "nonfinite_steps": 0, "blowups": 0}
_STATE |= {"healthy_losses": [], "healthy_norms": [], **dict.fromkeys(_PRIVATE[3:], 0)}
_ATTRS = {key: f"_{key}" if key in _PRIVATE else key for key in _STATE}  # key -> attribute
_REQUIRED = ("applied", "skipped", "rollbacks", "lr_scale")
_GT0, _GT1 = ({"min": bound, "low_open": True} for bound in (0, 1))  # check_float: > 0, > 1
_WEIGHTS_ADVICE = "the weights themselves are not finite: skipping steps cannot cure this; use "
_WEIGHTS_ADVICE += "on_nonfinite='rollback' (restores the last good snapshot)"


class StabilityGuard(Update):
    r"""The optimizer update with a policy for NaN, Inf and blow-ups. A closed accumulation
    window is *non-finite*, a *blow-up* (loss or norm > ``spike_factor`` × the median of the last
    ``spike_window`` healthy values, after ``spike_warmup`` of them; loss only for a positive
    median) or *healthy*: snapshot to the CPU every ``snapshot_every`` applied steps, clip
    (``"norm"`` if only ``max_norm``), step. ``on_nonfinite``: ``"skip"`` (bit-for-bit),
    ``"rollback"`` (restore the snapshot, :math:`s \leftarrow s \cdot` ``lr_backoff``, groups at
    :math:`s \cdot \eta_{\text{sched}}`; a ``needs_rollback`` scheduler cuts via ``step(nan)``) or
    ``"raise"``. Float16 overflows with a finite loss are the scaler's until the scale <
    ``min_loss_scale``; ``max_consecutive_skips`` in a row raise :class:`NonFiniteError`. In a
    process group every rank acts on the worst verdict of any rank (one all-reduce MAX a step)."""

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
        self.on_nonfinite = check_choice("on_nonfinite", on_nonfinite, NONFINITE_POLICIES)
        clip_mode = check_choice("clip_mode", clip_mode, (None, *CLIP_MODES))
        self.max_norm = check_float("max_norm", max_norm, **_GT0, optional=True)
        if clip_mode is not None and max_norm is None:
            raise ValueError(f"clip_mode={clip_mode!r} needs max_norm > 0")
        self.clip_mode = clip_mode or ("norm" if max_norm is not None else None)
        self.lr_backoff = check_float("lr_backoff", lr_backoff, min=0, max=1, low_open=True)
        self.snapshot_every = check_int("snapshot_every", snapshot_every, min=1)
        skips = check_int("max_consecutive_skips", max_consecutive_skips, min=1)
        self.max_consecutive_skips = skips
        self.min_loss_scale = check_float("min_loss_scale", min_loss_scale, **_GT0, finite=False)
        self.spike_factor = check_float("spike_factor", spike_factor, **_GT1, optional=True)
        self.spike_warmup = check_int("spike_warmup", spike_warmup, min=1)
        self.spike_window = check_int("spike_window", spike_window, min=1)
        super().__init__(
            model, optimizer, scheduler, amp=amp, accumulation_steps=accumulation_steps
        )
        self.last_diagnosis: dict[str, Any] | None = None
        self._scaler = getattr(amp, "scaler", None)
        buffers = dict(model.named_buffers())
        self._buffer_names, self._buffers = list(buffers), list(buffers.values())
        self._buffer_copies = [b.detach().clone() for b in self._buffers]
        self.load_state_dict(_STATE)  # fresh counters, then the first snapshot

    def take_snapshot(self, loss: float = math.nan) -> None:
        """Copy model (buffers as after the last step), optimizer, scheduler and LR scale to the
        CPU; ``loss`` is for messages."""
        model = cpu_copy(self.model.state_dict())
        saved = zip(self._buffer_names, self._buffer_copies)
        model.update({n: cpu_copy(b) for n, b in saved if n in model})  # persistent ones only
        optimizer, sched = cpu_copy(self.optimizer.state_dict()), self.scheduler
        scheduler = cpu_copy(sched.state_dict()) if hasattr(sched, "state_dict") else None
        self._snapshot = {"applied": self.applied, "loss": float(loss), "model": model}
        self._snapshot.update(optimizer=optimizer, scheduler=scheduler, lr_scale=self.lr_scale)

    def restore_snapshot(self, *, keep_lr: bool = False) -> bool:
        """A rollback without ``lr_backoff``, also outside a step (``keep_lr``: keep the LRs and
        scheduler state); clears ``needs_rollback``."""
        snap = self._snapshot
        self.rollbacks += 1
        lrs = [group["lr"] for group in self.optimizer.param_groups]
        self.model.load_state_dict(snap["model"])  # copies into the live tensors
        self.optimizer.load_state_dict(copy.deepcopy(snap["optimizer"]))  # it may keep CPU tensors
        if snap["scheduler"] is not None and not keep_lr:
            self.scheduler.load_state_dict(copy.deepcopy(snap["scheduler"]))
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr if keep_lr else group["lr"] * (self.lr_scale / snap["lr_scale"])
        if self._buffers:  # the restored statistics are the new 'last good' ones
            torch._foreach_copy_(self._buffer_copies, self._buffers)
        if hasattr(self.scheduler, "needs_rollback"):
            self.scheduler.needs_rollback = False
        return True

    def _step_scheduler(self) -> None:
        if self.lr_scale == 1.0:
            super()._step_scheduler()
        elif steps_per_update(self.scheduler):  # it steps from its own (un-backed-off) LRs
            for group in self.optimizer.param_groups:
                group["lr"] = group["lr"] / self.lr_scale
            self.scheduler.step()
            for group in self.optimizer.param_groups:
                group["lr"] = group["lr"] * self.lr_scale

    def _clip(self, params: list[torch.Tensor], norm: torch.Tensor) -> None:
        if self.clip_mode is not None:
            _clip_grads(params, norm, self.clip_mode, self.max_norm)  # type: ignore[arg-type]

    def step(self, loss: torch.Tensor, *, sync: bool | None = None) -> StepResult:
        loss_sum = self._accumulate(loss, sync)
        if loss_sum is None:
            return StepResult(False, math.nan, "accumulating")
        params = [p for p in self.params() if p.grad is not None]
        grads = [p.grad for p in params]
        total = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
        loss_value, norm_value = torch.stack([loss_sum.to(total), total]).tolist()  # one sync
        if not math.isfinite(norm_value):  # a float32 overflow, or a real NaN/Inf: measure exactly
            total = _total_norm(grads)  # in float64 (a rare second synchronisation)
            norm_value = float(total)
        loss_ok, grads_ok = math.isfinite(loss_value), math.isfinite(norm_value)
        self.grad_norms.append(norm_value)
        scaler = self._scaler is not None and self._scaler.is_enabled()
        blowup = self._blowup(loss_value, norm_value) if loss_ok and grads_ok else None
        # 3 non-finite, 2 a float16 overflow (the scaler's), 1 blow-up, 0 healthy
        verdict = 2 if not grads_ok else int(bool(blowup))
        verdict = verdict if loss_ok and (grads_ok or scaler) else 3
        if is_distributed():
            verdict = int(max_across_ranks(verdict, total.device))
        if verdict == 2:
            return self._scaler_skip(norm_value, loss_value)
        if verdict == 3:
            self.nonfinite_steps += 1
            reason = "non-finite loss" if not loss_ok else "non-finite gradient"
            reason = reason if not (loss_ok and grads_ok) else "non-finite value on another rank"
            return self._unhealthy(reason, loss_value, norm_value)
        self.last_finite_loss = loss_value
        if verdict == 1:
            self.blowups += 1
            self._blowups_in_a_row += 1
            return self._unhealthy(blowup or "blow-up on another rank", loss_value, norm_value)
        self._healthy_losses.append(loss_value)
        self._healthy_norms.append(norm_value)
        del self._healthy_losses[: -self.spike_window], self._healthy_norms[: -self.spike_window]
        if self.applied and self.applied % self.snapshot_every == 0:
            self.take_snapshot(loss_value)  # healthy, before this step's update
        if not self._apply(params, total):  # the scaler found an overflow we did not (unexpected)
            self.scaler_skips += 1
            return StepResult(False, norm_value, "optimizer step skipped by the gradient scaler")
        self.applied += 1
        self.consecutive_skips = self._rollbacks_in_a_row = self._blowups_in_a_row = 0
        if self._buffers:
            torch._foreach_copy_(self._buffer_copies, self._buffers)
        return StepResult(True, norm_value, None)

    def _blowup(self, loss_value: float, norm_value: float) -> str | None:
        if self.spike_factor is None or len(self._healthy_norms) < self.spike_warmup:
            return None
        f = self.spike_factor
        for what, value, healthy in (
            ("loss blow-up (", loss_value, self._healthy_losses),
            ("exploding gradient (norm ", norm_value, self._healthy_norms),
        ):
            median = statistics.median(healthy)
            if median > 0 and value > f * median:
                return f"{what}{value:.4g} > {f:g} x healthy median {median:.4g})"
        return None

    def _scaler_skip(self, norm_value: float, loss_value: float) -> StepResult:
        self.last_finite_loss = loss_value
        self.amp.step(self.optimizer)  # the scaler sees the inf, skips and lowers its scale
        self._zero_grad()
        self.scaler_skips += 1
        scale = float(self.amp.scale)
        if scale < self.min_loss_scale:
            text = f"the float16 loss scale fell to {scale:g} < min_loss_scale="
            text += f"{self.min_loss_scale:g}: gradients overflow even unscaled; {self._summary()}"
            diagnosis = self._diagnosis("loss scale collapsed", loss_value, norm_value)
            raise NonFiniteError(text, diagnosis)
        return StepResult(False, norm_value, "gradient overflow (loss scale lowered)")

    def _diagnosis(self, reason: str, loss_value: float, norm_value: float) -> dict[str, Any]:
        weights, grads = check_weights(self.model), check_gradients(self.model)["nonfinite_names"]
        diagnosis = {"reason": reason, "loss": loss_value, "grad_norm": norm_value}
        scale = float(getattr(self.amp, "scale", 1.0))
        diagnosis.update(last_finite_loss=self.last_finite_loss, loss_scale=scale)
        diagnosis.update({n: getattr(self, n) for n in (*_COUNTERS, "nonfinite_steps", "blowups")})
        diagnosis.update(nonfinite_weights=weights["nonfinite_names"], nonfinite_grads=grads)
        diagnosis["max_weight"] = weights["max_weight"]
        if weights["nonfinite_names"]:
            diagnosis["advice"] = _WEIGHTS_ADVICE
        return diagnosis

    def _summary(self) -> str:
        return (
            f"applied={self.applied}, skipped={self.skipped}, rollbacks={self.rollbacks}, "
            f"non-finite steps={self.nonfinite_steps}, blow-ups={self.blowups}, "
            f"scaler_skips={self.scaler_skips}, last finite loss={self.last_finite_loss:.4g}, "
            f"loss scale={float(getattr(self.amp, 'scale', 1.0)):g}"
        )

    def _unhealthy(self, reason: str, loss_value: float, norm_value: float) -> StepResult:
        diagnosis = self.last_diagnosis = self._diagnosis(reason, loss_value, norm_value)
        self._zero_grad()
        if callable(getattr(self.amp, "skip", None)):  # stabletrain.amp.MixedPrecision
            self.amp.skip(self.optimizer)
        elif self._scaler is not None and self._scaler.is_enabled():  # undo unscale_, same scale
            self._scaler.update(new_scale=float(self._scaler.get_scale()))
        if self.on_nonfinite == "raise":
            raise NonFiniteError(self._message(diagnosis), diagnosis)
        self.consecutive_skips += 1
        if self.on_nonfinite == "skip":
            self.skipped += 1
            if self._buffers:  # undo the window's running-statistics updates
                torch._foreach_copy_(self._buffers, self._buffer_copies)
        else:  # roll back: s <- s * lr_backoff, unless the scheduler makes its own cut
            self._rollbacks_in_a_row += 1
            cuts = hasattr(self.scheduler, "needs_rollback")
            self.lr_scale *= 1.0 if cuts else self.lr_backoff
            self.restore_snapshot()  # the LRs at the snapshot, times the new lr_scale
            if cuts:
                self.scheduler.step(float("nan"))
                self.scheduler.needs_rollback = False
        if self.consecutive_skips < self.max_consecutive_skips:
            return StepResult(False, norm_value, reason)
        diagnosis = self._diagnosis(reason, loss_value, norm_value)
        kind = "blown-up or non-finite" if self._blowups_in_a_row else "non-finite"
        text = f"{self.consecutive_skips} {kind} steps in a row "
        text += f"(max_consecutive_skips={self.max_consecutive_skips}); "
        if self.on_nonfinite == "rollback" and self._rollbacks_in_a_row > 1:
            snap, n = self._snapshot, self._rollbacks_in_a_row
            text += f"the last {n} rollbacks each restored the snapshot taken at applied step "
            text += f"{snap.get('applied')} (loss {snap.get('loss', math.nan):.4g}) and the next "
            text += f"step blew up again, even at lr_scale={self.lr_scale:g}: that state is itself"
            text += " unstable or the LR cut is too small (lower the LR, lr_backoff or "
            text += "snapshot_every, or add normalisation or clipping); "
        elif self.on_nonfinite == "skip" and self._blowups_in_a_row:
            text += "skipping leaves the weights as they are, and every step from them is "
            text += "unhealthy: they have already exploded (use on_nonfinite='rollback'); "
        raise NonFiniteError(text + self._message(diagnosis), diagnosis)

    def _message(self, d: Mapping[str, Any]) -> str:
        text = f"{d['reason']} (loss={d['loss']}, grad norm={d['grad_norm']}); {self._summary()}"
        if d["nonfinite_grads"]:
            text += f"; non-finite gradients in {d['nonfinite_grads'][:5]}"
        if "advice" in d:
            text += f"; non-finite weights in {d['nonfinite_weights'][:5]}: {d['advice']}"
        return text

    def state_dict(self) -> dict[str, Any]:
        """Counters, LR scale, step histories and the (CPU) rollback snapshot."""
        state = {key: copy.copy(getattr(self, attr)) for key, attr in _ATTRS.items()}
        return {**state, "snapshot": self._snapshot}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Without a saved snapshot, snapshots the state as it is now (load the rest first)."""
        check_keys("StabilityGuard state", state, (*_STATE, "snapshot"))
        if missing := [key for key in _REQUIRED if key not in state]:
            raise ValueError(f"StabilityGuard state lacks {missing}; it holds {sorted(state)}")
        for key, fresh in _STATE.items():
            value = state[key] if key in _REQUIRED else state.get(key, fresh)
            value = [float(v) for v in value] if isinstance(fresh, list) else type(fresh)(value)
            setattr(self, _ATTRS[key], value)
        self._loss_sum = None
        if self._buffers:
            torch._foreach_copy_(self._buffer_copies, self._buffers)
        if state.get("snapshot") is not None:
            self._snapshot = cpu_copy(state["snapshot"])  # a copy: the caller keeps its own
        else:
            self.take_snapshot()

    def __repr__(self) -> str:
        settings = f"on_nonfinite={self.on_nonfinite!r}, clip_mode={self.clip_mode!r}"
        return f"StabilityGuard({settings}, max_norm={self.max_norm}, {self._summary()})"
