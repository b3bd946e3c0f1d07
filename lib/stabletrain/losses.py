"""Losses for segmentation and classification: Dice, Jaccard, Tversky, focal, combinations.

Every loss takes logits ``pred`` of shape ``(N, C, *spatial)`` (``from_logits=True``,
the default) or probabilities (``from_logits=False``) and a ``mode``:

- ``"binary"``: ``C == 1``, sigmoid; ``target`` has the shape of ``pred``, or that shape
  without the channel dim, with values in [0, 1] (soft labels allowed). ``pred`` may
  also be ``(N,)``.
- ``"multilabel"``: any ``C``, one sigmoid per channel; ``target`` has the shape of
  ``pred``, values in [0, 1].
- ``"multiclass"``: ``C >= 2``, softmax over ``C``; ``target`` holds integer class
  indices of shape ``(N, *spatial)``, or class probabilities (one-hot or soft) of the
  shape of ``pred``.

``*spatial`` may be empty: classification logits ``(N, C)`` with targets ``(N,)`` or
``(N, C)`` are maps without pixels. The overlap losses (Dice, Jaccard, Tversky) sum over
the spatial dims per sample and channel, so on ``(N, C)`` each term is one element, as on
``(N, C, 1, 1)``.

Losses are computed in float32 when ``pred`` is float16/bfloat16 (those
formats lose the small per-pixel terms of the sums; float64 stays float64), and from
log-sigmoid / log-softmax, so they stay finite for logits of ±1e4.

Shape and dtype checks are always done (they are free). Checks of the *values*
(binary targets in [0, 1], class indices in ``[0, C)``, probabilities in
[0, 1]) cost one or two passes over the data (a min and a max) and can be
switched off with ``validate=False``. Bad input raises ``ValueError`` naming the
shapes or values.

Example:
    >>> import torch
    >>> from stabletrain.losses import DiceLoss, build_loss
    >>> logits = torch.zeros(2, 1, 8, 8)
    >>> target = torch.ones(2, 1, 8, 8)
    >>> round(float(DiceLoss()(logits, target)), 4)  # p = 0.5 everywhere: 1 - 1/1.5
    0.3333
    >>> loss = build_loss("default_segmentation")  # 0.7 dice + 0.3 bce
    >>> sorted(loss.components(logits, target))
    ['bce', 'dice', 'total']
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .checks import check_bool, check_choice, check_float, check_keys

__all__ = [
    "LOSS_PRESETS",
    "MODES",
    "OVERLAP_TERMS",
    "REDUCTIONS",
    "CombinedLoss",
    "DiceLoss",
    "FocalLoss",
    "JaccardLoss",
    "TverskyLoss",
    "build_loss",
]

MODES = ("binary", "multilabel", "multiclass")
REDUCTIONS = ("mean", "sum", "none")
#: Term keys of :class:`CombinedLoss` that measure region overlap (what
#: :class:`~stabletrain.loss_weights.LossWeightScheduler` moves weight towards).
OVERLAP_TERMS = ("dice", "jaccard", "tversky")


def _value_range(values: torch.Tensor) -> tuple[float, float]:
    """Smallest and largest value of a float tensor (NaN if it holds one).

    ``amin`` then ``amax``: on CPU the two vectorised reductions take about
    two thirds of the time of one ``torch.aminmax`` over float data.
    """
    return float(values.amin()), float(values.amax())


def _check_unit_interval(what: str, values: torch.Tensor, hint: str = "") -> None:
    """Raise a ``ValueError`` if the float tensor ``values`` holds values outside [0, 1]."""
    low, high = _value_range(values) if values.numel() else (0.0, 0.0)
    if not (0.0 <= low and high <= 1.0):
        raise ValueError(f"{what} must be in [0, 1], got values in [{low:g}, {high:g}]{hint}")


def _class_indices(target: torch.Tensor, classes: int, dtype: torch.dtype) -> torch.Tensor:
    """Integer class indices ``(N, *spatial)`` as floats ``(N, 1, P)`` for :func:`_one_hot`.

    In ``dtype`` when that holds the integers up to ``classes`` exactly (float32: up
    to 2**24), else in float64. Casting is monotone, so an index ``>= classes``
    never lands on a class.
    """
    exact = dtype if classes <= 2 / torch.finfo(dtype).eps else torch.float64
    return target.reshape(target.shape[0], 1, -1).to(exact)


def _one_hot(indices: torch.Tensor, classes: int, out: torch.Tensor) -> torch.Tensor:
    """Write the one-hot ``[indices = c]`` of ``(N, 1, P)`` float indices into ``out``.

    One vectorised comparison straight into the float ``out`` ``(N, classes, P)``
    (an integer ``==`` then a cast, or a scatter, take several times longer on
    CPU). An index outside ``[0, classes)`` gives a zero column.
    """
    index = torch.arange(classes, device=indices.device, dtype=indices.dtype)
    return torch.eq(indices, index.view(1, classes, 1), out=out)


# Kept: 1.5x as fast as plain autograd of FocalLoss._sigmoid_focal (benchmarks/README.md).
class _SigmoidFocalSum(torch.autograd.Function):
    r"""``Σ α_t (1 − p_t)^γ BCE(x, t)`` over all elements, with a fused backward.

    With ``q = σ(z')``, ``z' = x(1 − 2t)`` (so ``q = 1 − p_t`` for hard labels),
    ``m = q^γ = exp(γ log σ(z'))`` and ``ce = softplus(x) − t x``:

    .. math:: \partial\ell/\partial x = \alpha_t\,[\,m(\sigma(x) - t)
              + \gamma\, m\,(1 - q)(1 - 2t)\,ce\,]
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, t: torch.Tensor, gamma: float, alpha: float | None):
        sign = t.mul(-2.0).add_(1.0)  # 1 - 2t
        zn = x * sign
        m = F.logsigmoid(zn).mul_(gamma).exp_()
        ce = torch.addcmul(F.softplus(x), t, x, value=-1.0)
        weighted = m * ce
        if alpha is None:
            weight = None
            total = weighted.sum()
        else:
            weight = t.mul(2.0 * alpha - 1.0).add_(1.0 - alpha)
            total = weighted.mul_(weight).sum()  # cascade sum: accurate in float32
        ctx.save_for_backward(x, t, sign, zn, m, ce, weight)
        ctx.gamma = gamma
        return total

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

    def __init__(self, mode: str, from_logits: bool, reduction: str, validate: bool) -> None:
        super().__init__()
        self.mode = check_choice("mode", mode, MODES)
        self.from_logits = check_bool("from_logits", from_logits)
        self.reduction = check_choice("reduction", reduction, REDUCTIONS)
        self.validate = check_bool("validate", validate)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, from_logits={self.from_logits}, reduction={self.reduction!r}"

    def _check(
        self, pred: torch.Tensor, target: torch.Tensor, *, class_indices: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Check shapes (always) and values (if ``validate``).

        Returns ``pred`` as ``(N, C, *spatial)`` (float16/bfloat16 as float32) and the
        target: int64 class indices ``(N, *spatial)`` (multiclass) or floats of the shape
        of ``pred``. ``class_indices=False`` leaves the range check of class indices to
        the caller (:class:`DiceLoss` does it on the float copy it makes anyway).
        """
        if not isinstance(pred, torch.Tensor) or not isinstance(target, torch.Tensor):
            raise TypeError(
                f"pred and target must be tensors, got {type(pred).__name__} and "
                f"{type(target).__name__}"
            )
        if not pred.is_floating_point():
            raise ValueError(f"pred must be a floating-point tensor, got {pred.dtype}")
        if pred.dtype in (torch.float16, torch.bfloat16):
            pred = pred.float()
        if self.mode == "binary" and pred.dim() == 1:
            pred = pred.unsqueeze(1)  # (N,) logits: one channel
        shape = tuple(pred.shape)
        if pred.dim() < 2:
            raise ValueError(f"pred must have shape (N, C, *spatial) or (N,), got {shape}")
        # (N, *spatial): class indices, or a binary target without its channel dim
        indices_shape = (shape[0], *shape[2:])
        if self.mode == "binary" and shape[1] != 1:
            raise ValueError(
                f"binary mode needs pred with one channel, got shape {shape} "
                "(use mode='multilabel' or 'multiclass')"
            )
        if self.mode == "multiclass" and shape[1] < 2:
            raise ValueError(
                f"multiclass mode needs C >= 2 channels, got pred of shape {shape}"
                " (use mode='binary' for one channel)"
            )
        if self.mode == "multiclass" and tuple(target.shape) == indices_shape:
            if target.is_floating_point() or target.dtype == torch.bool:
                raise ValueError(
                    "a multiclass target of shape (N, *spatial) must hold integer class "
                    f"indices, got dtype {target.dtype}"
                )
            target = target.long()
            if self.validate and class_indices and target.numel():
                self._check_class_indices(target, shape[1])
        else:
            if self.mode == "binary" and tuple(target.shape) == indices_shape:
                target = target.unsqueeze(1)
            if tuple(target.shape) != shape:
                expected = f"the shape of pred {shape}"
                if self.mode == "multiclass":
                    expected = f"(N, *spatial) = {indices_shape} (class indices) or {expected}"
                raise ValueError(
                    f"{self.mode} target must have {expected}, got {tuple(target.shape)}"
                )
            target = target.to(pred.dtype)
            if self.validate:
                _check_unit_interval(f"{self.mode} target values", target)
        if not self.from_logits and self.validate:
            hint = " (pass logits with from_logits=True)"
            _check_unit_interval("with from_logits=False pred probabilities", pred, hint)
        return pred, target

    @staticmethod
    def _check_class_indices(target: torch.Tensor, channels: int) -> None:
        low, high = (int(v) for v in torch.aminmax(target))
        if low < 0 or high >= channels:
            raise ValueError(
                f"multiclass target holds class indices in [{low}, {high}], but pred has "
                f"C = {channels} channels (indices must be in [0, {channels - 1}])"
            )

    def _reduce(self, loss: torch.Tensor) -> torch.Tensor:
        if self.reduction == "mean":
            return loss.mean()
        if self.reduction == "sum":
            return loss.sum()
        return loss


class DiceLoss(_SegmentationLoss):
    r"""Soft Dice loss (or its Jaccard/IoU form), per sample and channel, then reduced.

    With probabilities :math:`p` (sigmoid or softmax of the logits) and target
    :math:`t` (one-hot in multiclass mode), for each sample :math:`n` and
    channel :math:`c`, summing over pixels:

    .. math::

        I = \sum p\,t,\qquad
        \ell_{n,c} = 1 - \frac{2I + s}{\sum p + \sum t + s}
        \quad\text{or, with jaccard,}\quad
        \ell_{n,c} = 1 - \frac{I + s}{\sum p + \sum t - I + s}

    where ``squared=True`` uses :math:`\sum p^2` and :math:`\sum t^2` in the
    denominator. ``reduction="mean"`` averages :math:`\ell` over samples and
    channels — MONAI's ``DiceLoss(batch=False, smooth_nr=s, smooth_dr=s)``
    convention, with which the Dice form agrees to 1e-6 (MONAI's Jaccard writes
    the smoothing as :math:`(2I+s)/(2(\sum p+\sum t-I)+s)`; ours is the closed form above).

    Empty masks: if a channel's target is empty, :math:`\ell = 1 - s/(\sum p + s)`,
    about 0 only when the prediction is empty *to within the smoothing*
    (:math:`\sum p \ll s`), and about 1 as soon as the prediction puts any
    appreciable mass on the channel (e.g. :math:`\sum p \gtrsim 100 s`). With
    the default ``s = 1e-5``, sigmoid(-20) on 64×64 pixels already sums to about
    1.7e-5: a larger ``smooth`` (e.g. 1) makes empty images forgiving.

    Args:
        mode: ``"binary"``, ``"multilabel"`` or ``"multiclass"``.
        smooth: :math:`s > 0`, added to numerator and denominator.
        squared: square the terms of the denominator (Milletari et al. V-Net form).
        jaccard: use the Jaccard (IoU) form.
        include_background: keep channel 0 (multiclass and multilabel; in binary
            mode the single channel is the foreground and is always kept).
        from_logits: ``pred`` holds logits (else probabilities).
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (an ``(N, C')`` tensor).
        validate: check target (and probability) values.

    Shapes: as in the module docstring; ``*spatial`` may be empty.
    """

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
    ) -> None:
        super().__init__(mode, from_logits, reduction, validate)
        self.smooth = check_float("smooth", smooth, min=0, low_open=True)
        self.squared = check_bool("squared", squared)
        self.jaccard = check_bool("jaccard", jaccard)
        self.include_background = check_bool("include_background", include_background)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, smooth={self.smooth:g}, squared={self.squared}, "
            f"jaccard={self.jaccard}, include_background={self.include_background}"
        )

    def _statistics(
        self, pred: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per (sample, channel) sums: intersection, Σp (Σp² if squared), Σt (Σt²)."""
        pred, target = self._check(pred, target, class_indices=False)
        n, c = pred.shape[:2]
        x = pred.reshape(n, c, -1)
        if target.dtype == torch.int64:  # multiclass class indices
            labels = _class_indices(target, c, x.dtype)
            # Range check on the float copy, still cache-warm (exact: the cast is monotone
            # and c is exact in its dtype); the integer check only to word the error.
            if self.validate and labels.numel():
                low, high = _value_range(labels)
                if low < 0 or high >= c:
                    self._check_class_indices(target, c)
            t = _one_hot(labels, c, x.new_empty(x.shape))
        else:
            t = target.reshape(n, c, -1)
        if self.from_logits:
            p = torch.softmax(x, 1) if self.mode == "multiclass" else torch.sigmoid(x)
        else:
            p = x
        inter = torch.linalg.vecdot(p, t)
        total = torch.linalg.vecdot(p, p) if self.squared else p.sum(-1)
        true = torch.linalg.vecdot(t, t) if self.squared else t.sum(-1)
        if not self.include_background and self.mode != "binary" and c > 1:
            inter, total, true = inter[:, 1:], total[:, 1:], true[:, 1:]
        return inter, total, true

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        inter, total, true = self._statistics(pred, target)
        s = self.smooth
        if self.jaccard:
            loss = 1.0 - (inter + s) / (total + true - inter + s)
        else:
            loss = 1.0 - (2.0 * inter + s) / (total + true + s)
        return self._reduce(loss)


class JaccardLoss(DiceLoss):
    r"""Soft Jaccard (IoU) loss: :class:`DiceLoss` with ``jaccard=True``.

    .. math:: \ell_{n,c} = 1 - \frac{I + s}{\sum p + \sum t - I + s}
    """

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
    ) -> None:
        super().__init__(
            mode,
            smooth,
            squared,
            True,
            include_background,
            from_logits=from_logits,
            reduction=reduction,
            validate=validate,
        )


class TverskyLoss(DiceLoss):
    r"""Tversky loss: Dice with separate weights on false positives and false negatives.

    Per sample and channel, with :math:`TP = \sum p t`, :math:`FP = \sum p(1-t)`,
    :math:`FN = \sum (1-p) t`:

    .. math:: \ell_{n,c} = 1 - \frac{TP + s}{TP + \alpha\,FP + \beta\,FN + s}

    ``alpha`` weights false positives, ``beta`` false negatives (MONAI's
    convention); ``alpha = beta = 0.5`` is Dice. A ``beta > alpha`` favours recall,
    which helps small structures. Averaged like :class:`DiceLoss`.
    """

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
    ) -> None:
        super().__init__(
            mode,
            smooth,
            False,
            False,
            include_background,
            from_logits=from_logits,
            reduction=reduction,
            validate=validate,
        )
        self.alpha = check_float("alpha", alpha, min=0)
        self.beta = check_float("beta", beta, min=0)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, alpha={self.alpha:g}, beta={self.beta:g}"

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        tp, total, true = self._statistics(pred, target)
        fp, fn = total - tp, true - tp
        s = self.smooth
        loss = 1.0 - (tp + s) / (tp + self.alpha * fp + self.beta * fn + s)
        return self._reduce(loss)


class FocalLoss(_SegmentationLoss):
    r"""Focal loss (Lin et al., 2017): cross-entropy down-weighted on easy pixels.

    .. math:: \ell = -\alpha_t\,(1 - p_t)^\gamma \log p_t

    Binary/multilabel (sigmoid), per element, with :math:`z = x(2t-1)`:
    :math:`\log p_t` is taken as minus the binary cross-entropy with logits
    (exact for soft targets too), :math:`(1 - p_t)^\gamma = \exp(\gamma \log\sigma(-z))`
    and :math:`\alpha_t = \alpha t + (1-\alpha)(1-t)` (``alpha`` weights positives,
    :math:`1-\alpha` negatives; ``alpha=None``: :math:`\alpha_t = 1`). This is
    MONAI's sigmoid focal loss; with ``gamma=0, alpha=None`` it equals
    ``torch.nn.BCEWithLogitsLoss``. ``"mean"`` averages over all ``N·C·H·W`` elements.

    Multiclass (softmax), per pixel with true class :math:`y`:
    :math:`p_t = \mathrm{softmax}(x)_y`, :math:`\alpha_t = 1-\alpha` for the
    background class 0 and :math:`\alpha` for every other class (MONAI's scalar
    convention); probability targets :math:`t` give :math:`\sum_c t_c \ell_c` with each
    class's term :math:`\ell_c` as above. ``"mean"`` averages over the ``N·H·W`` pixels, so
    with ``gamma=0, alpha=None`` it equals ``torch.nn.CrossEntropyLoss``; MONAI's
    ``FocalLoss(use_softmax=True)`` averages over ``N·C·H·W`` and is ours divided by C.
    ``reduction="none"`` gives the shape of ``pred`` (sigmoid) or ``(N, *spatial)`` (softmax).

    Every term comes from log-sigmoid or log-softmax, so the loss and its
    gradient stay finite at logits of ±1e4 and for float16/bfloat16 inputs.

    Args:
        mode: ``"binary"``, ``"multilabel"`` or ``"multiclass"``.
        gamma: focusing parameter :math:`\gamma \ge 0` (0: plain cross-entropy).
        alpha: positive-class weight in [0, 1], or ``None`` for no weighting.
        from_logits, reduction, validate: as in :class:`DiceLoss`.
    """

    def __init__(
        self,
        mode: str = "binary",
        gamma: float = 2.0,
        alpha: float | None = 0.25,
        *,
        from_logits: bool = True,
        reduction: str = "mean",
        validate: bool = True,
    ) -> None:
        super().__init__(mode, from_logits, reduction, validate)
        self.gamma = check_float("gamma", gamma, min=0)
        self.alpha = check_float("alpha", alpha, min=0, max=1, optional=True)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, gamma={self.gamma:g}, alpha={self.alpha}"

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        shape = pred.shape
        pred, target = self._check(pred, target)
        if self.mode == "multiclass":
            return self._reduce(self._softmax_focal(pred, target))
        if self.from_logits and self.gamma and self.reduction != "none":
            total = _SigmoidFocalSum.apply(pred, target, self.gamma, self.alpha)
            return total / max(1, pred.numel()) if self.reduction == "mean" else total
        return self._reduce(self._sigmoid_focal(pred, target).reshape(shape))

    def _sigmoid_focal(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.from_logits:
            loss = F.binary_cross_entropy_with_logits(pred, target, reduction="none")
            if self.gamma:
                # 1 - p_t = σ(-z), z = x(2t - 1); in log space so it never over/underflows.
                z = pred * (2.0 * target - 1.0)
                loss = loss * torch.exp(F.logsigmoid(-z) * self.gamma)
        else:
            eps = 1e-12
            loss = -(
                target * pred.clamp_min(eps).log() + (1 - target) * (1 - pred).clamp_min(eps).log()
            )
            if self.gamma:
                one_minus_pt = (target * (1 - pred) + (1 - target) * pred).clamp_min(eps)
                loss = loss * one_minus_pt.pow(self.gamma)
        if self.alpha is not None:
            loss = loss * (target * (2.0 * self.alpha - 1.0) + (1.0 - self.alpha))
        return loss

    def _softmax_focal(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per pixel ``Σ_c α_c t_c (1 − p_c)^γ (−log p_c)``: one term for class indices."""
        logp = torch.log_softmax(pred, 1) if self.from_logits else pred.clamp_min(1e-12).log()
        if target.dtype == torch.int64:  # class indices: t is one-hot, keep the true class
            classes = target.unsqueeze(1)
            loss = -logp.gather(1, classes)
            logp = -loss
        else:
            classes = torch.arange(pred.shape[1], device=pred.device)
            classes = classes.view(-1, *[1] * (pred.dim() - 2))
            loss = -logp * target
        if self.gamma:
            # 1 - p_c, clamped so its power has a finite gradient when p_c rounds to 1.
            loss = loss * (-torch.expm1(logp)).clamp_min(1e-12).pow(self.gamma)
        if self.alpha is not None:
            loss = loss * torch.where(classes == 0, 1.0 - self.alpha, self.alpha)
        return loss.sum(1)


class CombinedLoss(nn.Module):
    r"""Weighted sum of loss terms: :math:`L = \sum_k w_k L_k(\text{pred}, \text{target})`.

    Args:
        terms: mapping ``key -> (loss, weight)``; ``loss`` is any callable
            ``loss(pred, target) -> scalar tensor``. Keys name the terms in
            :meth:`components`, in :attr:`weights` and for
            :class:`~stabletrain.loss_weights.LossWeightScheduler` (which treats
            ``dice``, ``jaccard`` and ``tversky`` as overlap terms).

    Attributes:
        weights: ``{key: weight}``, readable and settable at run time (a
            schedule changes them between steps); a copy is returned.
        last_values: ``{key: tensor}``, detached per-term values of the last
            forward pass (no extra cost; a callback may average them).

    Weights are part of ``state_dict()`` (as extra state), so a checkpoint restores them.

    Example:
        >>> import torch
        >>> from stabletrain.losses import CombinedLoss, DiceLoss
        >>> loss = CombinedLoss({"dice": (DiceLoss(), 0.7), "bce": (torch.nn.BCEWithLogitsLoss(), 0.3)})
        >>> loss.weights = {"dice": 0.5, "bce": 0.5}
        >>> loss.weights
        {'dice': 0.5, 'bce': 0.5}
    """

    def __init__(self, terms: Mapping[str, tuple[Callable, float]]) -> None:
        super().__init__()
        if not isinstance(terms, Mapping) or not terms:
            raise ValueError("terms must be a non-empty mapping key -> (loss, weight)")
        self.losses = nn.ModuleDict()
        self._functions: dict[str, Callable] = {}
        weights: dict[str, float] = {}
        for key, term in terms.items():
            if not isinstance(key, str) or not key.isidentifier() or key == "total":
                raise ValueError(f"term keys must be identifiers other than 'total', got {key!r}")
            if not (isinstance(term, tuple | list) and len(term) == 2 and callable(term[0])):
                raise ValueError(f"terms[{key!r}] must be a pair (loss, weight), got {term!r}")
            loss, weight = term
            if isinstance(loss, nn.Module):
                self.losses[key] = loss
            else:
                self._functions[key] = loss
            weights[key] = weight
        self._keys = tuple(terms)
        self._weights: dict[str, float] = {}
        self.weights = weights
        self.last_values: dict[str, torch.Tensor] = {}

    @property
    def keys(self) -> tuple[str, ...]:
        """The term keys, in order."""
        return self._keys

    def term(self, key: str) -> Callable:
        """The loss callable of term ``key``."""
        if key not in self._keys:
            raise KeyError(f"unknown term {key!r}; terms are {self._keys}")
        return self.losses[key] if key in self.losses else self._functions[key]

    @property
    def weights(self) -> dict[str, float]:
        return dict(self._weights)

    @weights.setter
    def weights(self, values: Mapping[str, float]) -> None:
        new = dict(self._weights)
        for key, value in check_keys("weights", values, self._keys).items():
            new[key] = check_float(f"weights[{key!r}]", value, min=0)
        missing = set(self._keys) - set(new)
        if missing:
            raise ValueError(f"missing weight(s) for {sorted(missing)}; terms are {self._keys}")
        self._weights = {key: new[key] for key in self._keys}

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total: torch.Tensor | None = None
        values: dict[str, torch.Tensor] = {}
        for key in self._keys:
            value = self.term(key)(pred, target)
            values[key] = value.detach()
            weighted = value * self._weights[key]
            total = weighted if total is None else total + weighted
        self.last_values = values
        return total

    @torch.no_grad()
    def components(self, pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
        """Each term's unweighted value and the weighted ``"total"``, as floats."""
        total = self.forward(pred, target)
        out = {key: float(v) for key, v in self.last_values.items()}
        out["total"] = float(total)
        return out

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
_DICE_CONFIG_KEYS = ("smooth", "jaccard", "squared_pred", "include_background")
_BCE_CONFIG_KEYS = ("gamma", "alpha")


def _cross_entropy(mode: str) -> nn.Module:
    return nn.CrossEntropyLoss() if mode == "multiclass" else nn.BCEWithLogitsLoss()


def build_loss(name_or_config: str | Mapping[str, Any], *, mode: str = "binary") -> CombinedLoss:
    """Build a :class:`CombinedLoss` from a preset name or a configuration mapping.

    Presets (overlap term + pixel term): ``default_segmentation`` (0.7 dice +
    0.3 bce), ``focal_segmentation`` (0.6 dice + 0.4 focal, γ 2, α 0.25),
    ``balanced_segmentation`` (0.5/0.5), ``dice_focused`` (0.8/0.2),
    ``jaccard_based`` (0.7 jaccard + 0.3 bce). Term keys: ``dice``, ``jaccard``,
    ``bce`` (``BCEWithLogitsLoss``, or ``CrossEntropyLoss`` in multiclass mode)
    and ``focal``.

    A configuration mapping has the keys ``type`` (``"combined"``),
    ``dice_weight`` (0.7), ``bce_weight`` (0.3), ``dice_config`` (``smooth``,
    ``jaccard``, ``squared_pred``, ``include_background``) and ``bce_config``
    (``gamma``, ``alpha``: a focal term ``focal`` replaces ``bce`` when given),
    and optionally ``mode``.

    Raises:
        ValueError: an unknown preset, ``type`` or configuration key.
    """
    check_choice("mode", mode, MODES)
    if isinstance(name_or_config, str):
        if name_or_config not in LOSS_PRESETS:  # worded for the configuration files
            raise ValueError(
                f"unknown loss preset {name_or_config!r}; presets are {tuple(LOSS_PRESETS)}"
            )
        overlap, w_overlap, pixel, w_pixel = LOSS_PRESETS[name_or_config]
        first = DiceLoss(mode, jaccard=overlap == "jaccard")
        second = FocalLoss(mode, 2.0, 0.25) if pixel == "focal" else _cross_entropy(mode)
        return CombinedLoss({overlap: (first, w_overlap), pixel: (second, w_pixel)})
    config = dict(check_keys("the loss config", name_or_config, _CONFIG_KEYS))
    check_choice("loss config type", config.get("type", "combined"), ("combined",))
    mode = check_choice("mode", config.get("mode", mode), MODES)
    dice_config = check_keys("dice_config", config.get("dice_config") or {}, _DICE_CONFIG_KEYS)
    bce_config = check_keys("bce_config", config.get("bce_config") or {}, _BCE_CONFIG_KEYS)
    overlap = DiceLoss(
        mode,
        smooth=dice_config.get("smooth", 1e-5),
        squared=dice_config.get("squared_pred", False),
        jaccard=dice_config.get("jaccard", False),
        include_background=dice_config.get("include_background", True),
    )
    if bce_config:
        pixel_key = "focal"
        pixel = FocalLoss(mode, bce_config.get("gamma", 2.0), bce_config.get("alpha", 0.25))
    else:
        pixel_key, pixel = "bce", _cross_entropy(mode)
    return CombinedLoss(
        {
            "jaccard" if overlap.jaccard else "dice": (overlap, config.get("dice_weight", 0.7)),
            pixel_key: (pixel, config.get("bce_weight", 0.3)),
        }
    )
