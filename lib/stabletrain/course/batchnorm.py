"""The eval-mode BatchNorm mismatch: see it, measure it, remove it (notebook 02).

In ``model.train()`` a BatchNorm layer normalises with the statistics of the
current batch; in ``model.eval()`` it uses its *running* statistics, an
exponential average (momentum 0.1) of the batch statistics of earlier steps.
When the weights move fast (a high LR, a short run), the running statistics lag
behind the activations they are meant to describe, and the eval-mode network
normalises every layer a little wrongly; the error compounds with depth. The
validation score then says the network failed when the same weights are fine.

- :func:`score` scores one batch in eval mode (running statistics) or with the
  batch's own statistics, without changing the model.
- :func:`precise_bn` re-estimates the running statistics on training batches
  (``torch.optim.swa_utils.update_bn``, "precise BN") on a copy of the model.
- :func:`diagnose` does all three on the same batch; :func:`plot_diagnosis`
  draws the probability histograms and scores side by side.
- :func:`layer_mismatch` measures, per BatchNorm layer, how far the batch
  statistics are from the running ones.
- :class:`BatchStatsProbe` is a ``fit`` callback that scores the validation
  images with batch statistics after every epoch, beside the logged eval-mode score.

Example:
    >>> from stabletrain.course.batchnorm import diagnose, plot_diagnosis
    >>> diag = diagnose(model, images, masks, train_loader)  # doctest: +SKIP
    >>> plot_diagnosis(diag)  # doctest: +SKIP
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from ..metrics import dice_score
from ..training import Callback, TrainContext

__all__ = [
    "BNDiagnosis",
    "BatchStatsProbe",
    "LayerGap",
    "ModeScore",
    "diagnose",
    "layer_mismatch",
    "plot_diagnosis",
    "precise_bn",
    "score",
]

_BN = nn.modules.batchnorm._BatchNorm


@dataclass(frozen=True)
class ModeScore:
    """Scores of one binary-segmentation batch under one normalisation.

    Attributes:
        loss: mean binary cross-entropy of the logits.
        dice: :func:`stabletrain.metrics.dice_score` at threshold 0.5.
        foreground: fraction of pixels predicted foreground (probability > 0.5).
        probs: every pixel's predicted probability, flattened (for a histogram).
    """

    loss: float
    dice: float
    foreground: float
    probs: np.ndarray


@torch.no_grad()
def score(
    model: nn.Module, images: torch.Tensor, targets: torch.Tensor, *, batch_stats: bool = False
) -> ModeScore:
    """Score ``images`` in eval mode, or with ``batch_stats=True`` normalised by the batch's own
    statistics (BatchNorm in train mode, everything else in eval mode).

    The model is left as it was: the train-mode pass runs on a deep copy, so the
    running statistics do not move. ``model`` must return one logit map per image.
    """
    net = copy.deepcopy(model)
    net.eval()
    if batch_stats:
        for module in net.modules():
            if isinstance(module, _BN):
                module.train()
    logits = net(images).float()
    loss = nn.functional.binary_cross_entropy_with_logits(logits, targets.float())
    probs = torch.sigmoid(logits)
    return ModeScore(
        loss=float(loss),
        dice=dice_score(logits, targets),
        foreground=float((probs > 0.5).float().mean()),
        probs=probs.flatten().numpy(),
    )


@torch.no_grad()
def precise_bn(model: nn.Module, loader: Iterable) -> nn.Module:
    """A copy of ``model`` whose BatchNorm running statistics are re-estimated on ``loader``.

    ``torch.optim.swa_utils.update_bn`` resets them and averages the batch
    statistics of one pass over ``loader`` (equal weights, no momentum); the
    weights are untouched. The copy is returned in eval mode; ``model`` is unchanged.
    """
    net = copy.deepcopy(model)
    torch.optim.swa_utils.update_bn(loader, net)
    return net.eval()


@dataclass(frozen=True)
class BNDiagnosis:
    """One batch scored three ways with the same weights.

    Attributes:
        running: eval mode with the running statistics (what validation reports).
        batch: normalised with the batch's own statistics (what training sees).
        precise: eval mode after :func:`precise_bn`.
        true_foreground: fraction of foreground pixels in the targets.
    """

    running: ModeScore
    batch: ModeScore
    precise: ModeScore
    true_foreground: float

    def modes(self) -> dict[str, ModeScore]:
        """The three scores, labelled as in :func:`plot_diagnosis`."""
        return {
            "eval mode, running statistics": self.running,
            "batch statistics": self.batch,
            "eval mode after update_bn": self.precise,
        }


def diagnose(
    model: nn.Module, images: torch.Tensor, targets: torch.Tensor, train_loader: Iterable
) -> BNDiagnosis:
    """Score ``images`` with running statistics, batch statistics and re-estimated
    (precise-BN) statistics; ``train_loader`` feeds :func:`precise_bn`. ``model`` is unchanged."""
    return BNDiagnosis(
        running=score(model, images, targets),
        batch=score(model, images, targets, batch_stats=True),
        precise=score(precise_bn(model, train_loader), images, targets),
        true_foreground=float((targets > 0.5).float().mean()),
    )


def plot_diagnosis(diag: BNDiagnosis, title: str = "") -> Figure:
    """Left: histogram of the predicted probabilities under each normalisation (log counts).
    Right: validation Dice and predicted-foreground fraction under each, and the true fraction."""
    fig, (ax_hist, ax_bar) = plt.subplots(1, 2, figsize=(12, 3.6))
    bins = np.linspace(0, 1, 41)
    modes = diag.modes()
    for (label, s), color in zip(modes.items(), ("C3", "C0", "C2")):
        ax_hist.hist(s.probs, bins=bins, histtype="step", lw=1.8, color=color, label=label)
    ax_hist.axvline(0.5, color="0.5", ls=":", lw=1)
    ax_hist.set(yscale="log", xlabel="predicted foreground probability", ylabel="pixels")
    ax_hist.set_title("the same weights, the same validation images", fontsize=10)
    ax_hist.legend(fontsize=8)
    x = np.arange(len(modes))
    for shift, key, label in (
        (-0.2, "dice", "val Dice"),
        (0.2, "foreground", "predicted foreground"),
    ):
        bars = ax_bar.bar(x + shift, [getattr(s, key) for s in modes.values()], 0.4, label=label)
        ax_bar.bar_label(bars, fmt="%.2f", fontsize=8)
    ax_bar.axhline(diag.true_foreground, color="k", ls="--", lw=1, label="true foreground")
    ax_bar.set_xticks(x, [label.replace(", ", ",\n") for label in modes], fontsize=8)
    ax_bar.set(ylim=(0, 1), title=title)
    ax_bar.legend(fontsize=8)
    fig.tight_layout()
    return fig


@dataclass(frozen=True)
class LayerGap:
    """How far one BatchNorm layer's batch statistics are from its running ones.

    Attributes:
        name: the layer's name in ``model.named_modules()``.
        mean_gap: ``|batch mean − running mean|``, averaged over channels.
        var_ratio: batch variance / running variance, averaged over channels.
    """

    name: str
    mean_gap: float
    var_ratio: float


@torch.no_grad()
def layer_mismatch(
    model: nn.Module, images: torch.Tensor, *, batch_stats: bool = False
) -> list[LayerGap]:
    """Per BatchNorm layer (in forward order), the gap between the statistics of the
    activations of ``images`` arriving at the layer and the layer's running statistics.

    By default in the eval-mode forward pass, where each layer receives what the layers
    before it produced with *their* running statistics, so errors compound; with
    ``batch_stats=True`` in the forward pass of training (every layer normalised with the
    batch's statistics), which shows each layer's own mismatch. ``model`` is unchanged.
    """
    net = copy.deepcopy(model).eval()
    if batch_stats:
        for module in net.modules():
            if isinstance(module, _BN):
                module.train()
    gaps: list[LayerGap] = []
    running = {
        n: (m.running_mean.clone(), m.running_var.clone())
        for n, m in net.named_modules()
        if isinstance(m, _BN)
    }

    def hook(name: str):
        def record(module: _BN, inputs: tuple[torch.Tensor, ...], _output: torch.Tensor) -> None:
            x = inputs[0].float().transpose(0, 1).flatten(1)  # channels × values
            mean, var = x.mean(1), x.var(1)
            run_mean, run_var = running[name]
            gaps.append(
                LayerGap(
                    name,
                    float((mean - run_mean).abs().mean()),
                    float((var / run_var.clamp_min(module.eps)).mean()),
                )
            )

        return record

    handles = [
        m.register_forward_hook(hook(n)) for n, m in net.named_modules() if isinstance(m, _BN)
    ]
    try:
        net(images)
    finally:
        for h in handles:
            h.remove()
    return gaps


class BatchStatsProbe(Callback):
    """A :func:`stabletrain.training.fit` callback: after every epoch, score ``images``
    with batch statistics (:func:`score` with ``batch_stats=True``; the model is not changed).

    ``losses`` and ``dices`` hold one value per epoch, to set beside the eval-mode
    ``val_loss`` and ``val_dice`` that ``fit`` logs for the same epochs.
    """

    def __init__(self, images: torch.Tensor, targets: torch.Tensor) -> None:
        self.images, self.targets = images, targets
        self.losses: list[float] = []
        self.dices: list[float] = []

    def on_epoch_end(self, ctx: TrainContext, metrics: dict) -> None:
        s = score(ctx.model, self.images, self.targets, batch_stats=True)
        self.losses.append(s.loss)
        self.dices.append(s.dice)
