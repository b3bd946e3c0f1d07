"""Notebook 09's figure of the deep-supervision weight schedules.

- :func:`supervision_curves` — each output's weight at evenly spaced training progress;
- :func:`plot_supervision_weights` — those curves, one line per output.

Example:
    >>> from stabletrain.course.supervision import supervision_curves
    >>> progress, weights = supervision_curves("step_wise", 3, num_points=3)
    >>> weights[-1]
    [1.0, 0.0, 0.0]
"""

from __future__ import annotations

from typing import Any

from ..deep_supervision import supervision_weights

__all__ = ["plot_supervision_weights", "supervision_curves"]


def supervision_curves(
    schedule: str, num_outputs: int, num_points: int = 101, **params: Any
) -> tuple[list[float], list[list[float]]]:
    """Weights of every output along training: ``(progress, weights)``.

    ``progress`` holds ``num_points`` values evenly spaced in [0, 1] and
    ``weights[j]`` the weights at ``progress[j]`` (what the plot shows).
    """
    if isinstance(num_points, bool) or not isinstance(num_points, int) or num_points < 2:
        raise ValueError(f"num_points must be an int >= 2, got {num_points!r}")
    progress = [j / (num_points - 1) for j in range(num_points)]
    return progress, [supervision_weights(schedule, num_outputs, p, **params) for p in progress]


def plot_supervision_weights(
    schedule: str,
    num_outputs: int,
    *,
    ax: Any = None,
    num_points: int = 201,
    **params: Any,
):
    """Plot each output's weight against training progress; returns the figure.

    Output 0 (the final, full-resolution one) is drawn thickest.
    """
    import matplotlib.pyplot as plt

    progress, weights = supervision_curves(schedule, num_outputs, num_points, **params)
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 3.2))
    else:
        fig = ax.figure
    for i in range(num_outputs):
        label = "output 0 (final, 1/1)" if i == 0 else f"output {i} (1/{2**i})"
        ax.plot(progress, [w[i] for w in weights], lw=2.5 if i == 0 else 1.2, label=label)
    ax.set(xlabel="training progress", ylabel="weight", ylim=(-0.02, 1.02), title=schedule)
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    return fig
