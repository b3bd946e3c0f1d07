"""The course's figures of a training run: loss curves, loss scale, predictions.

Every function draws on a given matplotlib ``Axes`` (or makes a new figure) and returns
the figure.

Example:
    >>> from stabletrain.course.plots import plot_history
    >>> fig = plot_history(history)  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ..history import History
from ..lr_finder import ema

__all__ = ["plot_history", "plot_loss_scale", "plot_prediction_grid"]


def plot_history(
    histories: History | Mapping[str, History],
    *,
    smoothing: float = 0.8,
    log_loss: bool = True,
    axes: Sequence[Axes] | None = None,
) -> Figure:
    """Training loss per step (smoothed) and validation loss/Dice per epoch.

    ``smoothing`` is the weight of the past in the moving average of the training
    loss (:func:`stabletrain.lr_finder.ema` with weight ``1 − smoothing``).

    Pass one :class:`History` or a mapping ``{label: history}`` to overlay runs.
    A run that hit a non-finite loss is marked with an ✕ where it happened.
    """
    if not 0 <= smoothing < 1:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
    if isinstance(histories, History):
        histories = {"": histories}
    if axes is None:
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    else:
        fig = axes[0].figure
    for label, h in histories.items():
        losses = h.steps.get("loss", [])
        steps = np.arange(len(losses))
        line = axes[0].plot(steps, ema(losses, 1 - smoothing), label=label or None)[0]
        bad = h.first_nonfinite_step()
        if bad is not None:
            finite = [v for v in losses[:bad] if math.isfinite(v)]
            y = finite[-1] if finite else 1.0
            axes[0].plot([bad], [y], "x", color=line.get_color(), markersize=10, mew=2)
        epochs_per_step = len(losses) / max(1, len(h.epochs.get("epoch", [])))
        x_epoch = (np.arange(len(h.epochs.get("epoch", []))) + 1) * epochs_per_step
        if "val_loss" in h.epochs:
            axes[1].plot(x_epoch, h.epochs["val_loss"], "o-", color=line.get_color())
        if "val_dice" in h.epochs:
            axes[2].plot(x_epoch, h.epochs["val_dice"], "o-", color=line.get_color())
    axes[0].set(title="training loss (smoothed)", xlabel="step")
    axes[1].set(title="validation loss", xlabel="step")
    axes[2].set(title="validation Dice", xlabel="step", ylim=(0, 1))
    if log_loss:
        axes[0].set_yscale("log")
        axes[1].set_yscale("log")
    if any(histories):
        axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_loss_scale(
    histories: History | Mapping[str, History], *, ax: Axes | None = None
) -> Figure:
    """The gradient scaler's loss scale per step, with skipped steps marked ✕.

    Reads ``history.steps["loss_scale"]`` and ``["applied"]`` as recorded by
    :func:`stabletrain.loop.fit` with a float16 ``amp``.
    """
    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 3.5))
    else:
        fig = ax.figure
    if isinstance(histories, History):
        histories = {"": histories}
    for label, h in histories.items():
        scale = np.asarray(h.steps.get("loss_scale", []), dtype=float)
        applied = np.asarray(h.steps.get("applied", []), dtype=bool)
        steps = np.arange(len(scale))
        line = ax.step(steps, scale, where="post", label=label or None)[0]
        skipped = ~applied[: len(scale)]
        ax.plot(steps[skipped], scale[skipped], "x", color=line.get_color(), mew=2)
    ax.set(
        xlabel="step",
        ylabel="loss scale after the step",
        yscale="log",
        title="loss scale (✕ = skipped step)",
    )
    if any(histories):
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


@torch.no_grad()
def plot_prediction_grid(
    model: torch.nn.Module,
    images: torch.Tensor,
    masks: torch.Tensor,
    *,
    max_images: int = 4,
    threshold: float = 0.5,
) -> Figure:
    """Rows of image / true mask / predicted mask for the first ``max_images`` images."""
    model_was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        logits = model(images[:max_images].to(device))
    finally:
        model.train(model_was_training)
    if isinstance(logits, list | tuple):
        logits = logits[0]
    logits = logits.float().cpu()
    if logits.shape[1] == 1:
        pred = (torch.sigmoid(logits[:, 0]) > threshold).float()
        true = masks[:max_images].reshape(pred.shape)
        cmap, vmax = "gray", 1
    else:
        pred = logits.argmax(1).float()
        true = masks[:max_images].float()
        cmap, vmax = "tab10", 9
    n = pred.shape[0]
    fig, axes = plt.subplots(n, 3, figsize=(6.5, 2.2 * n), squeeze=False)
    for i in range(n):
        axes[i, 0].imshow(images[i, 0].cpu().numpy(), cmap="gray")
        axes[i, 1].imshow(true[i].numpy(), cmap=cmap, vmin=0, vmax=vmax, interpolation="nearest")
        axes[i, 2].imshow(pred[i].numpy(), cmap=cmap, vmin=0, vmax=vmax, interpolation="nearest")
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    for ax, title in zip(axes[0], ("image", "true mask", "prediction")):
        ax.set_title(title)
    fig.tight_layout()
    return fig
