"""Dice, Jaccard, Tversky and focal losses and their weighted combinations.

``pred``: logits (``from_logits=True``) or probabilities ``(N, C, *spatial)`` (binary: or ``(N,)``),
half precision run in float32. Modes: ``"binary"`` (``C == 1``, sigmoid; target with or without the
channel dim), ``"multilabel"`` (sigmoid per channel, target of ``pred``'s shape), ``"multiclass"``
(softmax; int indices ``(N, *spatial)`` or probabilities). Unless ``validate=False``, targets and
probabilities must be in [0, 1], indices in ``[0, C)``, and logits of a loss's first call all in
[0, 1] (spanning half of it) warn. An empty batch raises ``ValueError``. ``weight``: a number >= 0
per channel (not all 0) multiplying each class's loss before the reduction (as MONAI)."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .checks import (
    check_bool,
    check_choice,
    check_config_value,
    check_float,
    check_keys,
    check_unit_interval,
    warn_if_probabilities,
)

MODES = ("binary", "multilabel", "multiclass")
REDUCTIONS = ("mean", "sum", "none")
#: Term keys of :class:`CombinedLoss` that measure region overlap.
OVERLAP_TERMS = ("dice", "jaccard", "tversky")
_PROBABILITIES = "pred looks like probabilities (all in [0, 1]) but from_logits=True: pass logits "
_PROBABILITIES += "or from_logits=False"


def _class_indices(target: torch.Tensor, classes: int, dtype: torch.dtype) -> torch.Tensor:
    """Indices ``(N, *spatial)`` as floats ``(N, 1, P)``: ``dtype`` if exact there, else float64."""
    exact = dtype if classes <= 2 / torch.finfo(dtype).eps else torch.float64
    return target.reshape(target.shape[0], 1, -1).to(exact)


# Kept: 1.5x as fast as plain autograd of FocalLoss._sigmoid_focal (benchmarks/README.md).
class _SigmoidFocalSum(torch.autograd.Function):
    r"""``Σ α_t (1 − p_t)^γ BCE(x, t)``; with ``q = σ(z')``, ``z' = x(1 − 2t)``, ``m = q^γ``,
    ``ce = softplus(x) − t x``: ``∂ℓ/∂x = α_t [m(σ(x) − t) + γ m (1 − q)(1 − 2t) ce]``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, t: torch.Tensor, gamma: float, alpha: float | None):
        sign = t.mul(-2.0).add_(1.0)  # 1 - 2t
        zn = x * sign
        m = F.logsigmoid(zn).mul_(gamma).exp_()
        ce = torch.addcmul(F.softplus(x), t, x, value=-1.0)
        weight = None if alpha is None else t.mul(2.0 * alpha - 1.0).add_(1.0 - alpha)
        ctx.save_for_backward(x, t, sign, zn, m, ce, weight)
        ctx.gamma = gamma
        return (m * ce if weight is None else (m * ce).mul_(weight)).sum()  # cascade sum: accurate

    @staticmethod
    def backward(ctx, grad_total: torch.Tensor):
        x, t, sign, zn, m, ce, weight = ctx.saved_tensors
        # γ (1 − q)(1 − 2t) ce with 1 − q = σ(−z')
        second = torch.neg(zn).sigmoid_().mul_(sign).mul_(ce).mul_(ctx.gamma)
        grad = torch.sigmoid(x).sub_(t).add_(second).mul_(m)
        if weight is not None:
            grad.mul_(weight)
        return grad.mul_(grad_total), None, None, None


class _SegmentationLoss(nn.Module):
    """Shared argument handling and input checks of the losses in this module."""

    _logits_checked = False  # from_logits: pred shown to be logits, or warned (once)
    _fields: tuple[str, ...] = ()  # shown by extra_repr after mode, from_logits, reduction
    _optional: tuple[tuple[str, Any], ...] = (("weight", None),)  # shown where not default

    def __init__(
        self, mode: str, from_logits: bool, reduction: str, validate: bool, weight: Any = None
    ) -> None:
        super().__init__()
        self.mode = check_choice("mode", mode, MODES)
        self.from_logits = check_bool("from_logits", from_logits)
        self.reduction = check_choice("reduction", reduction, REDUCTIONS)
        self.validate = check_bool("validate", validate)
        weight = weight.tolist() if isinstance(weight, torch.Tensor) else weight
        if isinstance(weight, str | Mapping) or not isinstance(weight, Collection | None):
            raise TypeError(f"weight must be a sequence of C numbers >= 0 or None, got {weight!r}")
        if weight is not None:
            weight = tuple(check_float(f"weight[{i}]", w, min=0) for i, w in enumerate(weight))
            if not any(weight):
                zero = "(all 0: the loss is 0)"
                raise ValueError(f"weight must hold a value > 0 {zero}, got {weight}")
        self.weight = weight

    def extra_repr(self) -> str:
        fields = ("mode", "from_logits", "reduction", *self._fields)
        fields += tuple(k for k, v in self._optional if getattr(self, k) != v)
        values = ((key, getattr(self, key)) for key in fields)
        return ", ".join(f"{k}={v:g}" if type(v) is float else f"{k}={v!r}" for k, v in values)

    def _class_weights(self, c: int, like: torch.Tensor) -> torch.Tensor | None:
        if self.weight is not None and len(self.weight) != c:
            got = f"{len(self.weight)} values, but pred has C = {c} channels"
            raise ValueError(f"weight needs one value per class: it has {got}")
        return None if self.weight is None else like.new_tensor(self.weight)

    def _check(self, pred: torch.Tensor, target: torch.Tensor, *, class_indices: bool = True):
        """``(pred (N, C, *spatial), target as int64 indices or floats of pred's shape)``."""
        if not isinstance(pred, torch.Tensor) or not isinstance(target, torch.Tensor):
            kinds = f"{type(pred).__name__} and {type(target).__name__}"
            raise TypeError(f"pred and target must be tensors, got {kinds}")
        if not pred.is_floating_point():
            raise ValueError(f"pred must be a floating-point tensor, got {pred.dtype}")
        pred = pred.float() if pred.dtype in (torch.float16, torch.bfloat16) else pred
        pred = pred.unsqueeze(1) if self.mode == "binary" and pred.dim() == 1 else pred
        shape, target_shape = tuple(pred.shape), tuple(target.shape)
        if pred.dim() < 2:
            raise ValueError(f"pred must have shape (N, C, *spatial) or (N,), got {shape}")
        if not pred.numel():
            raise ValueError(f"pred is empty (shape {shape}): an empty batch raises")
        indices_shape = (shape[0], *shape[2:])  # class indices, or binary without channel dim
        if self.mode == "binary" and shape[1] != 1:
            raise ValueError(f"binary mode needs pred with one channel, got shape {shape}")
        if self.mode == "multiclass" and shape[1] < 2:
            raise ValueError(f"multiclass mode needs C >= 2 channels, got pred of shape {shape}")
        if self.mode == "multiclass" and target_shape == indices_shape:
            if target.is_floating_point() or target.dtype == torch.bool:
                message = f"multiclass target must hold integer class indices, got {target.dtype}"
                raise ValueError(message)
            target = target.long()
            if self.validate and class_indices and target.numel():
                self._check_class_indices(target, shape[1])
        else:
            if self.mode == "binary" and target_shape == indices_shape:
                target = target.unsqueeze(1)
            if tuple(target.shape) != shape:
                expected = f"the shape of pred {shape}"
                if self.mode == "multiclass":
                    expected = f"(N, *spatial) = {indices_shape} (class indices) or {expected}"
                raise ValueError(f"{self.mode} target must have {expected}, got {target_shape}")
            target = target.to(pred.dtype)
            if self.validate:
                check_unit_interval(f"{self.mode} target values", target)
        if not self.from_logits and self.validate:
            hint = " (pass logits with from_logits=True)"
            check_unit_interval("with from_logits=False pred probabilities", pred, hint)
        elif self.validate and not self._logits_checked:  # the first call only: one sync
            warn_if_probabilities(pred, _PROBABILITIES)
            self._logits_checked = True
        return pred, target

    @staticmethod
    def _check_class_indices(target: torch.Tensor, c: int) -> None:
        low, high = (int(v) for v in torch.aminmax(target))
        if low < 0 or high >= c:
            message = f"multiclass target holds class indices in [{low}, {high}], but pred has C ="
            raise ValueError(f"{message} {c} channels (indices must be in [0, {c - 1}])")

    def _reduce(self, loss: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        loss = loss if weight is None else loss * weight
        return loss if self.reduction == "none" else getattr(loss, self.reduction)()


class DiceLoss(_SegmentationLoss):
    r"""Soft Dice loss per sample and channel, ``p`` the probabilities, ``t`` the (one-hot) target,
    ``I = Σpt``: ``ℓ = 1 − (2I + s)/(Σp + Σt + s)``, with ``jaccard`` ``1 − (I + s)/(Σp + Σt − I +
    s)``; ``squared``: ``Σp²``, ``Σt²``. ``reduction="none"``: ``(N, C')``; an empty channel scores
    ``1 − s/(Σp + s)``. ``include_background=False`` drops channel 0 (not in binary mode).
    ``batch=True``: sums over the whole batch before the ratio (nnU-Net), ``"none"``: ``(C',)``."""

    _fields = ("smooth", "squared", "jaccard", "include_background")
    _optional = (("batch", False), ("weight", None))

    def __init__(
        self,
        mode: str = "binary",
        smooth: float = 1e-5,
        squared: bool = False,
        jaccard: bool = False,
        include_background: bool = True,
        *,
        from_logits: bool = True,
        reduction: str = "mean",
        validate: bool = True,
        batch: bool = False,
        weight: Sequence[float] | None = None,
    ) -> None:
        super().__init__(mode, from_logits, reduction, validate, weight)
        self.smooth = check_float("smooth", smooth, min=0, low_open=True)
        self.squared = check_bool("squared", squared)
        self.jaccard = check_bool("jaccard", jaccard)
        self.include_background = check_bool("include_background", include_background)
        self.batch = check_bool("batch", batch)

    def _statistics(self, pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``Σpt``, ``Σp`` (``Σp²`` if squared), ``Σt`` (``Σt²``) per sample (or batch) and
        channel, and the class weights (or None)."""
        pred, target = self._check(pred, target, class_indices=False)
        n, c = pred.shape[:2]
        weight = self._class_weights(c, pred)
        p = pred.reshape(n, c, -1)
        if target.dtype == torch.int64:  # multiclass class indices
            labels = _class_indices(target, c, p.dtype)
            # range check on the cache-warm float copy (exact); the int one words the error
            if self.validate and labels.numel() and not 0 <= labels.amin() <= labels.amax() < c:
                self._check_class_indices(target, c)
            index = torch.arange(c, device=labels.device, dtype=labels.dtype).view(1, c, 1)
            t = torch.eq(labels, index, out=p.new_empty(p.shape))
        else:
            t = target.reshape(n, c, -1)
        if self.from_logits:
            p = torch.softmax(p, 1) if self.mode == "multiclass" else torch.sigmoid(p)
        inter = torch.linalg.vecdot(p, t)
        total = torch.linalg.vecdot(p, p) if self.squared else p.sum(-1)
        true = torch.linalg.vecdot(t, t) if self.squared else t.sum(-1)
        if not self.include_background and self.mode != "binary" and c > 1:
            inter, total, true = inter[:, 1:], total[:, 1:], true[:, 1:]
            weight = None if weight is None else weight[1:]
        if self.batch:
            inter, total, true = inter.sum(0), total.sum(0), true.sum(0)
        return inter, total, true, weight

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        inter, total, true, weight = self._statistics(pred, target)
        s = self.smooth
        if self.jaccard:
            return self._reduce(1.0 - (inter + s) / (total + true - inter + s), weight)
        return self._reduce(1.0 - (2.0 * inter + s) / (total + true + s), weight)


class JaccardLoss(DiceLoss):
    r""":class:`DiceLoss` with ``jaccard=True``: ``ℓ = 1 − (I + s)/(Σp + Σt − I + s)``."""

    def __init__(
        self,
        mode: str = "binary",
        smooth: float = 1e-5,
        squared: bool = False,
        include_background: bool = True,
        *,
        from_logits: bool = True,
        reduction: str = "mean",
        validate: bool = True,
        batch: bool = False,
        weight: Sequence[float] | None = None,
    ) -> None:
        options = {"from_logits": from_logits, "reduction": reduction, "validate": validate}
        options.update(batch=batch, weight=weight)
        super().__init__(mode, smooth, squared, True, include_background, **options)


class TverskyLoss(DiceLoss):
    r"""Tversky loss per sample and channel: ``ℓ = 1 − (TP + s)/(TP + α FP + β FN + s)``,
    ``TP = Σpt``, ``FP = Σp(1−t)``, ``FN = Σ(1−p)t``; ``alpha = beta = 0.5`` is Dice;
    ``alpha = beta = 0`` (a constant loss) raises ``ValueError``."""

    _fields = (*DiceLoss._fields, "alpha", "beta")

    def __init__(
        self,
        mode: str = "binary",
        alpha: float = 0.5,
        beta: float = 0.5,
        smooth: float = 1e-5,
        include_background: bool = True,
        *,
        from_logits: bool = True,
        reduction: str = "mean",
        validate: bool = True,
        batch: bool = False,
        weight: Sequence[float] | None = None,
    ) -> None:
        options = {"from_logits": from_logits, "reduction": reduction, "validate": validate}
        options.update(batch=batch, weight=weight)
        super().__init__(mode, smooth, False, False, include_background, **options)
        self.alpha = check_float("alpha", alpha, min=0)
        self.beta = check_float("beta", beta, min=0)
        if not (self.alpha or self.beta):
            raise ValueError("alpha and beta must not both be 0 (the loss would be constant 0)")

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        tp, total, true, weight = self._statistics(pred, target)
        fp, fn, s = total - tp, true - tp, self.smooth
        return self._reduce(1.0 - (tp + s) / (tp + self.alpha * fp + self.beta * fn + s), weight)


class FocalLoss(_SegmentationLoss):
    r"""Focal loss ``ℓ = −α_t (1 − p_t)^γ log p_t`` (Lin et al., 2017), from log-sigmoid/softmax.
    Sigmoid modes, per element: ``α_t = αt + (1−α)(1−t)`` (``alpha=None``: 1); ``"mean"``
    averages over all elements. Multiclass, per pixel: ``α_t = 1−α`` for class 0, else ``α``;
    probability targets give ``Σ_c t_c ℓ_c``; ``"mean"`` averages over pixels (``gamma=0,
    alpha=None`` is ``CrossEntropyLoss``). ``"none"``: ``pred``'s shape or ``(N, *spatial)``.
    ``include_background=False``: multilabel drops channel 0, multiclass class 0's term (softmax
    over all C); binary ignores it. ``weight[c]`` multiplies class c's term (a plain mean, as
    MONAI)."""

    _fields = ("gamma", "alpha")
    _optional = (("include_background", True), ("weight", None))

    def __init__(
        self,
        mode: str = "binary",
        gamma: float = 2.0,
        alpha: float | None = 0.25,
        *,
        from_logits: bool = True,
        reduction: str = "mean",
        validate: bool = True,
        include_background: bool = True,
        weight: Sequence[float] | None = None,
    ) -> None:
        super().__init__(mode, from_logits, reduction, validate, weight)
        self.gamma = check_float("gamma", gamma, min=0)
        self.alpha = check_float("alpha", alpha, min=0, max=1, optional=True)
        self.include_background = check_bool("include_background", include_background)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        shape = pred.shape
        pred, target = self._check(pred, target)
        c, background = pred.shape[1], self.include_background or self.mode == "binary"
        weight = self._class_weights(c, pred)
        if self.mode == "multiclass":
            if not background:  # class 0's term weighs 0
                weight = pred.new_ones(c) if weight is None else weight
                weight = weight * (torch.arange(c, device=pred.device) > 0)
            return self._reduce(self._softmax_focal(pred, target, weight))
        if not background:
            pred, target, shape = pred[:, 1:], target[:, 1:], pred[:, 1:].shape
            weight = None if weight is None else weight[1:]
        if weight is None and self.from_logits and self.gamma and self.reduction != "none":
            total = _SigmoidFocalSum.apply(pred, target, self.gamma, self.alpha)
            return total / max(1, pred.numel()) if self.reduction == "mean" else total
        loss = self._sigmoid_focal(pred, target)
        loss = loss if weight is None else loss * weight.view(-1, *[1] * (pred.dim() - 2))
        return self._reduce(loss.reshape(shape))

    def _sigmoid_focal(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.from_logits:
            loss = F.binary_cross_entropy_with_logits(pred, target, reduction="none")
            if self.gamma:
                # 1 - p_t = σ(-z), z = x(2t - 1); in log space so it never over/underflows.
                z = pred * (2.0 * target - 1.0)
                loss = loss * torch.exp(F.logsigmoid(-z) * self.gamma)
        else:
            log_p, log_q = pred.clamp_min(1e-12).log(), (1 - pred).clamp_min(1e-12).log()
            loss = -(target * log_p + (1 - target) * log_q)
            if self.gamma:
                one_minus_pt = (target * (1 - pred) + (1 - target) * pred).clamp_min(1e-12)
                loss = loss * one_minus_pt.pow(self.gamma)
        if self.alpha is not None:
            loss = loss * (target * (2.0 * self.alpha - 1.0) + (1.0 - self.alpha))
        return loss

    def _softmax_focal(self, pred: torch.Tensor, target: torch.Tensor, weight=None) -> torch.Tensor:
        """Per pixel ``Σ_c α_c t_c (1 − p_c)^γ (−log p_c)``: one term for class indices."""
        logp = torch.log_softmax(pred, 1) if self.from_logits else pred.clamp_min(1e-12).log()
        if target.dtype == torch.int64:  # class indices: t is one-hot, keep the true class
            classes = target.unsqueeze(1)
            loss = -logp.gather(1, classes)
            logp = -loss
        else:
            classes = torch.arange(pred.shape[1], device=pred.device).view(
                -1, *[1] * (pred.dim() - 2)
            )
            loss = -logp * target
        if self.gamma:
            # 1 - p_c, clamped so its power has a finite gradient when p_c rounds to 1.
            loss = loss * (-torch.expm1(logp)).clamp_min(1e-12).pow(self.gamma)
        if self.alpha is not None:
            loss = loss * torch.where(classes == 0, 1.0 - self.alpha, self.alpha)
        if weight is not None:
            loss = loss * weight[classes]  # the weight of each term's class
        return loss.sum(1)


class _BCEWithLogitsLoss(nn.BCEWithLogitsLoss):
    """``nn.BCEWithLogitsLoss`` that also takes integer or bool 0/1 masks (checked, as floats)."""

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if not target.is_floating_point():
            target = target.to(input.dtype)
            check_unit_interval("binary target values", target)
        return super().forward(input, target)

    def _get_name(self) -> str:
        return "BCEWithLogitsLoss"


class _CrossEntropyLoss(nn.CrossEntropyLoss):
    """``nn.CrossEntropyLoss`` that also takes uint8/int32 class indices (as int64)."""

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return super().forward(input, target if target.is_floating_point() else target.long())

    def _get_name(self) -> str:
        return "CrossEntropyLoss"


class _Weights(dict):
    """A read-only snapshot of :attr:`CombinedLoss.weights` (its copies are plain dicts)."""

    def _read_only(self, *args: Any, **kwargs: Any) -> None:
        change = "to change weights, assign loss.weights = {key: weight, ...} (all or some terms)"
        raise TypeError(f"CombinedLoss.weights is a read-only snapshot: {change}")

    __setitem__ = __delitem__ = __ior__ = clear = pop = popitem = setdefault = update = _read_only

    def __reduce__(self) -> tuple:
        return dict, (dict(self),)


class CombinedLoss(nn.Module):
    r"""``L = Σ_k w_k L_k(pred, target)``, ``terms``: ``key -> (loss callable, weight)``, the
    weights ``>= 0``, not all 0. ``weights`` is a read-only snapshot (item assignment raises
    ``TypeError``); assign a mapping of some or all terms to change them. They are saved in
    ``state_dict()``; ``last_values`` holds the detached terms of the last forward."""

    def __init__(self, terms: Mapping[str, tuple[Callable, float]]) -> None:
        super().__init__()
        if not isinstance(terms, Mapping) or not terms:
            raise ValueError("terms must be a non-empty mapping key -> (loss, weight)")
        for key, term in terms.items():
            if not isinstance(key, str) or not key.isidentifier() or key == "total":
                raise ValueError(f"term keys must be identifiers other than 'total', got {key!r}")
            if not (isinstance(term, tuple | list) and len(term) == 2 and callable(term[0])):
                raise ValueError(f"terms[{key!r}] must be a pair (loss, weight), got {term!r}")
        self.keys: tuple[str, ...] = tuple(terms)
        self._terms = {key: loss for key, (loss, _) in terms.items()}
        self.losses = nn.ModuleDict(
            {k: v for k, v in self._terms.items() if isinstance(v, nn.Module)}
        )
        self._weights: dict[str, float] = {}
        self.weights = {key: weight for key, (_, weight) in terms.items()}
        self.last_values: dict[str, torch.Tensor] = {}

    def term(self, key: str) -> Callable:
        """The loss callable of term ``key``."""
        if key not in self.keys:
            raise KeyError(f"unknown term {key!r}; terms are {self.keys}")
        return self._terms[key]

    @property
    def weights(self) -> dict[str, float]:
        return _Weights(self._weights)

    @weights.setter
    def weights(self, values: Mapping[str, float]) -> None:
        new = dict(self._weights)
        for key, value in check_keys("weights", values, self.keys).items():
            new[key] = check_float(f"weights[{key!r}]", value, min=0)
        if missing := set(self.keys) - set(new):
            raise ValueError(f"missing weight(s) for {sorted(missing)}; terms are {self.keys}")
        if not any(new.values()):
            raise ValueError(f"weights must not all be 0 (loss 0, no gradient), got {new}")
        self._weights = {key: new[key] for key in self.keys}

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        values = {key: loss(pred, target) for key, loss in self._terms.items()}
        self.last_values = {key: value.detach() for key, value in values.items()}
        terms = [value * self._weights[key] for key, value in values.items()]
        return sum(terms[1:], terms[0])

    @torch.no_grad()
    def components(self, pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
        """Each term's unweighted value and the weighted ``"total"``, as floats."""
        total = float(self.forward(pred, target))
        return {**{key: float(v) for key, v in self.last_values.items()}, "total": total}

    def get_extra_state(self) -> dict[str, Any]:
        return {"weights": dict(self._weights)}

    def set_extra_state(self, state: Mapping[str, Any]) -> None:
        self.weights = state["weights"]

    def extra_repr(self) -> str:
        return "weights=" + ", ".join(f"{k}={w:g}" for k, w in self._weights.items())


#: Preset name -> ``(overlap term key, its weight, other term key, its weight)``.
LOSS_PRESETS: dict[str, tuple[str, float, str, float]] = {
    "default_segmentation": ("dice", 0.7, "bce", 0.3),
    "focal_segmentation": ("dice", 0.6, "focal", 0.4),
    "balanced_segmentation": ("dice", 0.5, "bce", 0.5),
    "dice_focused": ("dice", 0.8, "bce", 0.2),
    "jaccard_based": ("jaccard", 0.7, "bce", 0.3),
}

_CONFIG_KEYS = ("type", "dice_weight", "bce_weight", "dice_config", "bce_config", "mode")
_DICE_CONFIG = {"smooth": 1e-5, "jaccard": False, "squared_pred": False, "include_background": True}
_CONFIG_CHECKS: dict[str, tuple[Callable, dict[str, Any]]] = {
    **dict.fromkeys(("dice_weight", "bce_weight", "gamma"), (check_float, {"min": 0})),
    "smooth": (check_float, {"min": 0, "low_open": True}),
    **dict.fromkeys(("jaccard", "squared_pred", "include_background"), (check_bool, {})),
    "alpha": (check_float, {"min": 0, "max": 1, "optional": True}),
}


def _checked(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``values``, each checked by :data:`_CONFIG_CHECKS`, named ``prefix + key`` (config rule)."""
    checks = {k: _CONFIG_CHECKS[k] for k in values}
    return {k: check_config_value(c, prefix + k, values[k], **b) for k, (c, b) in checks.items()}


def _section(config: Mapping[str, Any], key: str, allowed: Collection[str]) -> dict[str, Any]:
    """``config[key]`` (None: ``{}``), its keys in ``allowed``, its values checked (config rule)."""
    value = {} if (value := config.get(key)) is None else value
    return _checked(check_config_value(check_keys, key, value, allowed=allowed), key + ".")


def build_loss(name_or_config: str | Mapping[str, Any], *, mode: str = "binary") -> CombinedLoss:
    """A :class:`CombinedLoss` from a :data:`LOSS_PRESETS` name or a configuration mapping; keys
    ``type`` (``"combined"``), ``dice_weight`` (0.7), ``bce_weight`` (0.3), ``dice_config``
    (``smooth``, ``jaccard``, ``squared_pred``, ``include_background``), ``bce_config``
    (``gamma``, ``alpha``: a ``focal`` term replaces ``bce``, which is ``CrossEntropyLoss`` in
    multiclass mode) and ``mode``. Raises ``ValueError``."""
    check_choice("mode", mode, MODES)
    config = name_or_config
    if isinstance(config, str):
        if config not in LOSS_PRESETS:  # worded for the configuration files
            raise ValueError(f"unknown loss preset {config!r}; presets are {tuple(LOSS_PRESETS)}")
        overlap, w_overlap, pixel, w_pixel = LOSS_PRESETS[config]
        focal = {"gamma": 2.0, "alpha": 0.25} if pixel == "focal" else {}
        dice = {"jaccard": overlap == "jaccard"}
        config = dict(dice_weight=w_overlap, bce_weight=w_pixel, dice_config=dice, bce_config=focal)
    config = dict(check_keys("the loss config", config, _CONFIG_KEYS))
    check_choice("loss config type", config.get("type", "combined"), ("combined",))
    mode = check_choice("mode", config.get("mode", mode), MODES)
    dice = {**_DICE_CONFIG, **_section(config, "dice_config", _DICE_CONFIG)}
    focal = _section(config, "bce_config", ("gamma", "alpha"))
    _checked({key: value for key, value in config.items() if key.endswith("_weight")})
    args = (dice["smooth"], dice["squared_pred"], dice["jaccard"], dice["include_background"])
    overlap = DiceLoss(mode, *args)
    pixel = _CrossEntropyLoss() if mode == "multiclass" else _BCEWithLogitsLoss()
    pixel = FocalLoss(mode, focal.get("gamma", 2.0), focal.get("alpha", 0.25)) if focal else pixel
    terms = {"jaccard" if overlap.jaccard else "dice": (overlap, config.get("dice_weight", 0.7))}
    terms["focal" if focal else "bce"] = (pixel, config.get("bce_weight", 0.3))
    return CombinedLoss(terms)
