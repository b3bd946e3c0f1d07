"""Evaluation metrics: :func:`accuracy`, and Dice ``2|P∩T|/(|P|+|T|)`` and IoU ``|P∩T|/|P∪T|``
(1 if both empty) per sample and class, averaged. Binary (``C == 1``): ``sigmoid(logit) >
threshold``; multiclass: argmax, int target ``(N, H, W)``, class 0 left out unless
``include_background``. A list of outputs is read at 0; an empty batch raises ``ValueError``.
Logits in [0, 1] are not flagged (a network's real logits may all lie there)."""

from __future__ import annotations

import re

import torch

from .checks import check_bool, check_float, check_tensor, check_unit_interval

LOWER_IS_BETTER = ("loss", "error", "mse", "mae", "nll", "perplexity")
HIGHER_IS_BETTER = ("dice", "iou", "jaccard", "accuracy", "acc", "f1", "auc")


def metric_mode(monitor: str, mode: str | None = None) -> str:
    """The direction of ``monitor`` from its name: a word of :data:`LOWER_IS_BETTER` → ``"min"``,
    of :data:`HIGHER_IS_BETTER` → ``"max"`` (a ``neg`` word flips it). A given ``mode`` must agree
    with a known direction; an unknown name needs one (else ``ValueError``)."""
    if mode is not None and (mode not in ("min", "max") or isinstance(mode, bool)):
        raise ValueError(f"mode must be one of ('min', 'max') or None, got {mode!r}")
    if not isinstance(monitor, str):
        raise TypeError(f"monitor must be a metric name (str), got {type(monitor).__name__}")
    words = set(re.split(r"[^a-z0-9]+", monitor.lower()))
    low, high = words & set(LOWER_IS_BETTER), words & set(HIGHER_IS_BETTER)
    known = ("min" if low else "max") if bool(low) != bool(high) else None
    if known and words & {"neg", "negative", "minus"}:  # neg_val_loss goes up
        known = "max" if known == "min" else "min"
    if mode is not None and known not in (None, mode):
        way = "down" if known == "min" else "up"
        raise ValueError(f"mode={mode!r} contradicts monitor={monitor!r}, which goes {way}: "
                         f"give mode={known!r} (or None)")  # fmt: skip
    if mode is not None or known is not None:
        return mode or known
    raise ValueError(
        f"cannot tell whether monitor={monitor!r} should go down or up: give mode='min' or "
        f"mode='max' (known: {', '.join(LOWER_IS_BETTER)} go down; "
        f"{', '.join(HIGHER_IS_BETTER)} go up)"
    )


def _confusion(
    logits: torch.Tensor, target: torch.Tensor, threshold: float, include_background: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample, per-class intersection, |P| and |T|, each of shape (N, C')."""
    check_float("threshold", threshold, min=0, max=1)
    check_bool("include_background", include_background)
    if isinstance(logits, list | tuple):
        logits = logits[0]  # deep supervision: index 0 is the final output
    logits, target = check_tensor("logits", logits), check_tensor("target", target)
    if logits.dim() != 4:
        raise ValueError(f"logits must have shape (N, C, H, W), got {tuple(logits.shape)}")
    if not logits.numel():
        raise ValueError(f"logits are empty (shape {tuple(logits.shape)}): an empty batch raises")
    n, c = logits.shape[:2]
    if c == 1:
        target = target.unsqueeze(1) if target.dim() == 3 else target
        if target.shape != logits.shape:
            want, got = tuple(logits.shape), tuple(target.shape)
            raise ValueError(f"binary target must have shape {want}, got {got}")
        pred = (torch.sigmoid(logits.float()) > threshold).flatten(2)
        true = (target > 0.5).flatten(2)
    else:
        shape = (n, *logits.shape[2:])
        if target.shape != shape:
            got = tuple(target.shape)
            raise ValueError(f"multiclass target must be (N, H, W) = {shape}, got {got}")
        if target.is_floating_point():
            raise ValueError("multiclass target must hold integer class indices, got floats")
        if not 0 <= int(target.min()) <= int(target.max()) < c:
            raise ValueError(f"multiclass target must hold class indices in [0, {c - 1}] (C = {c})")
        classes = torch.arange(c, device=logits.device).view(1, c, 1)
        pred = logits.argmax(1).flatten(1).unsqueeze(1) == classes
        true = target.flatten(1).unsqueeze(1) == classes
        if not include_background:
            pred, true = pred[:, 1:], true[:, 1:]
    inter = (pred & true).sum(-1).double()
    return inter, pred.sum(-1).double(), true.sum(-1).double()


def _overlap(logits, target, threshold, include_background, iou: bool) -> float:
    inter, p, t = _confusion(logits, target, threshold, include_background)
    denom = p + t - inter if iou else p + t
    num = inter if iou else 2 * inter
    return float(torch.where(denom > 0, num / denom.clamp_min(1), torch.ones_like(denom)).mean())


@torch.no_grad()
def dice_score(logits, target, *, threshold: float = 0.5, include_background=False) -> float:
    """Mean Dice score of thresholded (binary) or arg-max (multiclass) predictions."""
    return _overlap(logits, target, threshold, include_background, iou=False)


@torch.no_grad()
def iou_score(logits, target, *, threshold: float = 0.5, include_background=False) -> float:
    """Mean intersection-over-union of thresholded or arg-max predictions."""
    return _overlap(logits, target, threshold, include_background, iou=True)


@torch.no_grad()
def accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Fraction of correct predictions over all samples and positions. Class indices:
    ``(N, C, *spatial)`` with int ``(N, *spatial)`` (argmax over 1), or ``(B, T, V)`` with
    ``(B, T)`` (argmax over -1). Binary: ``(N,)`` or ``(N, 1, *spatial)``, ``logit > 0``.
    Raises ``ValueError`` for other shapes, float class indices or indices out of ``[0, C)``."""
    if isinstance(outputs, list | tuple):
        outputs = outputs[0]  # deep supervision: index 0 is the final output
    outputs, targets = check_tensor("outputs", outputs), check_tensor("targets", targets)
    shape, target_shape = tuple(outputs.shape), tuple(targets.shape)
    if not outputs.numel():
        raise ValueError(f"outputs are empty (shape {shape}): an empty batch raises")
    if outputs.dim() == 3 and target_shape == shape[:2]:
        dim = -1  # (B, T, V) scores of a language model
    elif outputs.dim() <= 1 or shape[1] == 1:
        if outputs.dim() > 1 and target_shape == (shape[0], *shape[2:]):
            targets = targets.unsqueeze(1)
        if tuple(targets.shape) != shape:
            allowed = f"the shape of outputs {shape} or lack its channel dim"
            raise ValueError(f"binary targets must have {allowed}, got {target_shape}")
        check_unit_interval("binary targets", targets.float(), " (0/1 labels or probabilities)")
        return float(((outputs > 0) == (targets > 0.5)).float().mean())
    elif target_shape == (shape[0], *shape[2:]):
        dim = 1
    else:
        want = f"(N, *spatial) = {(shape[0], *shape[2:])} for outputs (N, C, *spatial) = {shape}"
        language = "or (B, T) for outputs (B, T, V)"
        raise ValueError(f"targets must have shape {want}, {language}; got {target_shape}")
    if targets.is_floating_point() or targets.dtype == torch.bool:
        hint = "(for one-hot targets pass targets.argmax(1))"
        raise ValueError(f"targets must hold integer class indices, got {targets.dtype} {hint}")
    low, high, c = int(targets.min()), int(targets.max()), shape[dim]
    if not 0 <= low <= high < c:
        got = f"got values in [{low}, {high}]"
        raise ValueError(f"targets must hold class indices in [0, {c - 1}] (C = {c}), {got}")
    return float((outputs.argmax(dim) == targets).float().mean())
