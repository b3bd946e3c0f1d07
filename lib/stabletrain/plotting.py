"""The learning-rate figure (``python -m stabletrain compare-schedulers``, the widgets)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure


def plot_lr(
    lrs: Sequence[float] | Mapping[str, Sequence[float]],
    *,
    ax: Axes | None = None,
    log: bool = False,
    title: str = "learning rate per step",
) -> Figure:
    """LR against optimizer step, for one schedule or a mapping ``{label: lrs}``."""
    fig, ax = plt.subplots(figsize=(6, 3.5)) if ax is None else (ax.figure, ax)
    lrs = lrs if isinstance(lrs, Mapping) else {"": lrs}
    for label, values in lrs.items():
        ax.plot(np.arange(len(values)), values, label=label or None)
    ax.set(xlabel="step", ylabel="learning rate", title=title)
    if log:
        ax.set_yscale("log")
    if any(lrs):
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
