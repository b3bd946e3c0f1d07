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
- :func:`score_loader` averages :func:`score` over a loader; :func:`bn_modes`
  scores a loader with running, batch and re-estimated statistics;
  :func:`precise_bn_scores` only the last.
- Two ``fit`` callbacks record scores during a training without changing it:
  :class:`BatchStatScores` (batch statistics, every epoch, beside the logged
  eval-mode score) and :class:`PreciseBNProbe` (re-estimated statistics, at
  chosen epochs).

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

from ..callbacks import Callback, TrainContext
from ..metrics import dice_score

__all__ = [
    "BNDiagnosis",
    "BatchStatScores",
    "LayerGap",
    "ModeScore",
    "PreciseBNProbe",
    "bn_modes",
    "diagnose",
    "layer_mismatch",
    "plot_diagnosis",
    "precise_bn",
    "precise_bn_scores",
    "score",
    "score_loader",
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
    running statistics do not move. With deep supervision the final output
    (index 0) is scored.

    Raises:
        ValueError: the final output has more than one channel (binary segmentation only).
    """
    net = copy.deepcopy(model)
    net.eval()
    if batch_stats:
        for module in net.modules():
            if isinstance(module, _BN):
                module.train()
    outputs = net(images)
    logits = (outputs[0] if isinstance(outputs, list | tuple) else outputs).float()
    if logits.shape[1] != 1:
        raise ValueError(f"binary segmentation only, got {logits.shape[1]} output channels")
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
    weights are untouched. The copy is returned in eval mode; ``model`` and the
    global RNG (which a loader without its own generator draws from) are unchanged.
    """
    net = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
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


@torch.no_grad()
def score_loader(
    model: nn.Module, loader: Iterable, *, batch_stats: bool = False
) -> dict[str, float]:
    """:func:`score` over every batch of ``loader``, averaged per image.

    Returns ``{"val_loss", "val_dice", "foreground"}`` (eval mode, or batch
    statistics with ``batch_stats=True``, as in :func:`score`); ``model`` is unchanged.

    Raises:
        ValueError: ``loader`` yields no batch.
    """
    totals = {"val_loss": 0.0, "val_dice": 0.0, "foreground": 0.0}
    count = 0
    for images, targets in loader:
        s = score(model, images, targets, batch_stats=batch_stats)
        n = images.shape[0]
        totals["val_loss"] += s.loss * n
        totals["val_dice"] += s.dice * n
        totals["foreground"] += s.foreground * n
        count += n
    if count == 0:
        raise ValueError("loader yielded no batch to score")
    return {key: value / count for key, value in totals.items()}


def bn_modes(
    model: nn.Module, train_loader: Iterable, val_loader: Iterable
) -> dict[str, dict[str, float]]:
    """:func:`score_loader` of ``model`` on ``val_loader`` three ways.

    ``"eval"`` with the running statistics (what validation reports), ``"batch"``
    with each batch's own statistics, ``"precise"`` after :func:`precise_bn` on
    ``train_loader``. ``model`` is unchanged.
    """
    return {
        "eval": score_loader(model, val_loader),
        "batch": score_loader(model, val_loader, batch_stats=True),
        "precise": score_loader(precise_bn(model, train_loader), val_loader),
    }


class BatchStatScores(Callback):
    """A :func:`stabletrain.loop.fit` callback: after every epoch,
    :func:`score_loader` with batch statistics on ``loader`` (the model is not changed).

    ``rows`` holds one ``{"val_loss", "val_dice", "foreground"}`` per epoch, to set
    beside the eval-mode ``val_loss`` and ``val_dice`` that ``fit`` logs;
    ``losses`` and ``dices`` are its columns.
    """

    def __init__(self, loader: Iterable) -> None:
        self.loader = loader
        self.rows: list[dict[str, float]] = []

    @property
    def losses(self) -> list[float]:
        return [row["val_loss"] for row in self.rows]

    @property
    def dices(self) -> list[float]:
        return [row["val_dice"] for row in self.rows]

    def on_epoch_end(self, ctx: TrainContext, metrics: dict) -> None:
        self.rows.append(score_loader(ctx.model, self.loader, batch_stats=True))


def precise_bn_scores(
    model: nn.Module, train_loader: Iterable, val_loader: Iterable
) -> dict[str, float]:
    """``{"dice", "foreground"}`` of :func:`precise_bn` (on ``train_loader``) on ``val_loader``.

    Raises:
        ValueError: the model's final output has more than one channel.
    """
    scores = score_loader(precise_bn(model, train_loader), val_loader)
    return {"dice": scores["val_dice"], "foreground": scores["foreground"]}


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

    def __init__(self, train_loader: Iterable, val_loader: Iterable, epochs: Iterable[int]) -> None:
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
