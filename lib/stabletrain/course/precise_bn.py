"""Scoring short trainings with re-estimated BatchNorm statistics ("precise BN").

In ``eval()`` BatchNorm normalises with running statistics: an exponential average
(momentum 0.1) of earlier batches' statistics, started at mean 0 and variance 1. In
the course's short runs they lag behind the weights — after 6 steps about half of
each running statistic (0.9**6 ≈ 0.53) is still its initial value — so an eval-mode
score measures the stale statistics as much as the network (the eval-mode BatchNorm
mismatch of notebook 02). The losses and deep-supervision notebooks compare
trainings by a score that removes it: a *copy* of the model whose running statistics
are re-estimated on the training images (``torch.optim.swa_utils.update_bn``), then
evaluated in ``eval()`` mode.

Example:
    >>> from stabletrain.course.precise_bn import PreciseBNProbe
    >>> probe = PreciseBNProbe(train_loader, val_loader, epochs=(3, 6))  # doctest: +SKIP
    >>> short_run(..., callbacks=[probe]); probe.scores[6]["dice"]  # doctest: +SKIP
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import nn
from torch.optim.swa_utils import update_bn

from ..metrics import dice_score
from ..training import Callback, TrainContext

__all__ = ["PreciseBNProbe", "precise_bn_scores"]


@torch.no_grad()
def precise_bn_scores(
    model: nn.Module, train_loader: Iterable, val_loader: Iterable
) -> dict[str, float]:
    """Validation scores of a copy of ``model`` with BatchNorm statistics re-estimated.

    The copy's running statistics are replaced by the plain average of the batch
    statistics over ``train_loader`` (no weight changes); it is then evaluated in
    ``eval()`` mode on ``val_loader``, on its final output (index 0 with deep
    supervision). ``model`` itself, its training mode and the global RNG are left
    untouched.

    Returns:
        ``{"dice": mean Dice score of the thresholded prediction (as ``fit``
        reports ``val_dice``), "foreground": fraction of validation pixels
        predicted foreground}``.

    Raises:
        ValueError: the model's final output has more than one channel (binary
        segmentation only).
    """
    probe = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        update_bn(train_loader, probe)
    probe.eval()
    dice = foreground = 0.0
    count = 0
    for images, targets in val_loader:
        outputs = probe(images)
        final = outputs[0] if isinstance(outputs, list | tuple) else outputs
        if final.shape[1] != 1:
            raise ValueError(f"binary segmentation only, got {final.shape[1]} output channels")
        final = final.float()
        n = images.shape[0]
        dice += dice_score(final, targets) * n
        foreground += float((final > 0).float().mean()) * n
        count += n
    return {"dice": dice / max(1, count), "foreground": foreground / max(1, count)}


class PreciseBNProbe(Callback):
    """Record :func:`precise_bn_scores` after the given (1-based) epochs of a ``fit``.

    ``scores[epoch]`` holds the scores after that epoch. The probe works on a copy,
    so the training itself (weights, BatchNorm statistics, data order, RNG) is the
    same with and without it — provided ``train_loader`` is not the loader being
    trained on (iterating a shuffling loader advances its generator); an unshuffled
    loader over the training images is the usual choice.

    Raises:
        ValueError: ``epochs`` is empty or holds a number below 1.
    """

    def __init__(self, train_loader: Iterable, val_loader: Iterable, epochs: Iterable[int]):
        self.train_loader = train_loader
        self.val_loader = val_loader
        self.epochs = sorted(set(int(e) for e in epochs))
        if not self.epochs or self.epochs[0] < 1:
            raise ValueError(f"epochs must be 1-based epoch numbers, got {self.epochs!r}")
        self.scores: dict[int, dict[str, float]] = {}

    def on_epoch_end(self, ctx: TrainContext, metrics: dict) -> None:
        if ctx.epoch + 1 in self.epochs:
            self.scores[ctx.epoch + 1] = precise_bn_scores(
                ctx.model, self.train_loader, self.val_loader
            )
