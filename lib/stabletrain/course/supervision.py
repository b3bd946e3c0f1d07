"""Notebook 09's figure of the deep-supervision weight schedules.

- :func:`supervision_curves` — each output's weight at evenly spaced training progress;
- :func:`plot_supervision_weights` — those curves, one line per output;
- :class:`SupervisionExplorer` — the same plot with controls (``supervision_widget``).

Example:
    >>> from stabletrain.course.supervision import supervision_curves
    >>> progress, weights = supervision_curves("step_wise", 3, num_points=3)
    >>> weights[-1]
    [1.0, 0.0, 0.0]
"""

from __future__ import annotations

from typing import Any

import ipywidgets as w
from matplotlib.figure import Figure

from ..deep_supervision import SCHEDULES, supervision_weights
from ..widgets import _make_control, _Widget, describe_schedule

__all__ = ["SupervisionExplorer", "plot_supervision_weights", "supervision_curves"]

#: Controls of the schedules' parameters, as ``widgets._param_specs`` (0 outputs: all).
_PARAMS = {
    "custom_sigmoid_low_to_high": {
        "k": ("float", 10.0, 1.0, 30.0, 0.5),
        "x0": ("float", 0.5, 0.0, 1.0, 0.05),
        "transition_point": ("float", 0.25, 0.0, 0.95, 0.05),
    },
    "cosine_annealing": {
        "frequency": ("float", 3.0, 0.0, 10.0, 0.5),
        "final_ratio": ("float", 0.5, 0.0, 1.0, 0.05),
    },
    "curriculum": {
        "max_active_outputs": ("int", 0, 0, 6, 1),
        "activation_strategy": ("choice", "linear", ("linear", "exp")),
    },
    "step_wise": {"threshold": ("float", 0.5, 0.0, 1.0, 0.05)},
}


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
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


class SupervisionExplorer(_Widget):
    """Each output's weight along training, with a schedule menu, an outputs slider, the
    schedule's parameters and a progress slider (*advance* adds 0.1; its weights are marked).

    Headless: :meth:`weights`, :meth:`curves`, :meth:`config` (``DeepSupervisionLoss``'s
    keywords); ``controls``, ``button``, ``image``, ``figure``; ``widget`` is displayed.
    """

    def __init__(self, schedule: str = "linear_low_to_high", num_outputs: int = 4) -> None:
        supervision_weights(schedule, num_outputs, 0.0)  # checks the starting values
        self.controls = {
            "schedule": _make_control("schedule", ("choice", schedule, SCHEDULES)),
            "num_outputs": _make_control(
                "outputs", ("int", num_outputs, 1, max(6, num_outputs), 1)
            ),
            "progress": _make_control("progress", ("float", 0.5, 0.0, 1.0, 0.05)),
        }
        for kind, specs in _PARAMS.items():
            self.controls.update({f"{kind}.{n}": _make_control(n, s) for n, s in specs.items()})
        self.button = w.Button(description="advance", icon="forward", tooltip="progress + 0.1")
        self.button.on_click(self.advance)
        self.image = w.Image(format="png")
        self.figure = Figure(figsize=(6.5, 3.4))
        self.ax = self.figure.add_subplot()
        self._params = w.VBox()
        for control in self.controls.values():
            control.observe(self.update, names="value")
        main = [self.controls[k] for k in ("schedule", "num_outputs", "progress")]
        controls = w.VBox([*main, self._params, self.button])
        self.widget = w.HBox([controls, self.image], layout=w.Layout(flex_flow="row wrap"))
        self.update()

    def config(self) -> dict[str, Any]:
        """``{"schedule", "num_outputs", **its parameters}``: ``DeepSupervisionLoss(loss, **c)``."""
        kind = self.controls["schedule"].value
        params = {n: self.controls[f"{kind}.{n}"].value for n in _PARAMS.get(kind, {})}
        return {"schedule": kind, "num_outputs": self.controls["num_outputs"].value, **params}

    def weights(self, progress: float) -> list[float]:
        """The outputs' weights at ``progress`` in [0, 1]."""
        return supervision_weights(progress=progress, **self.config())

    def curves(self, num_points: int = 101) -> tuple[list[float], list[list[float]]]:
        """``(progress, weights)`` as :func:`supervision_curves`."""
        return supervision_curves(num_points=num_points, **self.config())

    def advance(self, _button: Any = None) -> None:
        """Move the progress slider on by 0.1 (back to 0 after 1)."""
        p = self.controls["progress"]
        p.value = 0.0 if p.value >= 1.0 else min(1.0, round(p.value + 0.1, 2))

    def update(self, _change: Any = None) -> Figure:
        """Redraw the figure in place and return it."""
        config, p = self.config(), self.controls["progress"].value
        kind = config.pop("schedule")
        self._params.children = [self.controls[f"{kind}.{n}"] for n in _PARAMS.get(kind, {})]
        self.ax.clear()
        plot_supervision_weights(kind, **config, ax=self.ax)
        weights = self.weights(p)
        self.ax.axvline(p, color="0.5", ls=":")
        for line, weight in zip(list(self.ax.lines), weights):
            self.ax.plot(p, weight, "o", color=line.get_color())
        config.pop("num_outputs")
        shown = ", ".join(f"{v:.2f}" for v in weights)
        title = f"{describe_schedule({'type': kind, **config})}\nweights at progress {p:.2f}: "
        self.ax.set_title(title + shown, fontsize=9)
        return self._render()
