"""Notebook 01's real divergence: a recipe that goes inf → NaN in float32, its precursors,
and the widget that re-runs it.

The recipe (:data:`RECIPE`): the shapes data at 32×32 (256 training images, batch 8,
seeded shuffling), BCE-with-logits, a :class:`~stabletrain.models.TinyUNet` with base 8
channels and depth 3, LeakyReLU(0.1), **no normalisation**, PyTorch's default init and a
residual one-head self-attention block at the 4×4 bottleneck; ``SGD(lr=2.0,
momentum=0.9)``, no warmup, no clipping, nothing injected. Without normalisation each
weight's gradient grows with the product of the other layers' weights, so a step that
lengthens the weights makes the next gradient larger: a super-exponential blow-up.

Example:
    >>> from stabletrain.course.divergence import divergence_run, verdict
    >>> verdict(divergence_run(seed=0))  # doctest: +SKIP
    'diverged: non-finite loss at step 19'
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from ..callbacks import Callback, TrainContext
from ..history import History
from ..models import NORM_TYPES, SpatialSelfAttention, _check_positive_int
from ..stability import StabilityGuard
from .experiments import short_run

__all__ = [
    "RECIPE",
    "DivergenceLab",
    "PrecursorProbe",
    "WatchModel",
    "clipped_fraction",
    "divergence_run",
    "verdict",
]

#: The model, data and optimizer of the divergence (arguments of ``short_run``).
RECIPE: dict[str, Any] = {
    "optimizer": "sgd",
    "lr": 2.0,
    "optimizer_kwargs": {"momentum": 0.9},
    "attention": None,
    "base_channels": 8,
    "depth": 3,
    "image_size": 32,
    "batch_size": 8,
    "num_train": 256,
    "num_val": 32,
}


def divergence_run(
    seed: int = 0,
    *,
    lr: float = 2.0,
    norm: str | None = None,
    qk_norm: bool = False,
    bottleneck_attention: bool = True,
    warmup_steps: int = 0,
    max_grad_norm: float | None = None,
    steps: int = 40,
    guard: Mapping[str, Any] | None = None,
    return_model: bool = False,
    guards: list[StabilityGuard] | None = None,
    **fit_kwargs: Any,
) -> History | tuple[History, nn.Module]:
    """Train :data:`RECIPE` on one seed for ``steps`` optimizer steps (or until a NaN).

    Args:
        seed: model initialisation and data order.
        lr: SGD's learning rate (the recipe's is 2.0).
        norm: ``None`` (the recipe), ``"group"`` or ``"batch"`` after every convolution.
        qk_norm: LayerNorm on the attention's queries and keys.
        bottleneck_attention: keep the self-attention block at the bottleneck.
        warmup_steps: linear warmup of the LR over this many steps (0: none).
        max_grad_norm: clip the global gradient norm to this (plain update) or, with
            ``guard``, the guard's ``max_norm``.
        steps: the budget of optimizer steps.
        guard: train through a :class:`~stabletrain.stability.StabilityGuard` built with
            these keyword arguments (``None``: the plain update, which stops at the first
            non-finite loss).
        return_model: also return the trained model.
        guards: with ``guard``, the guard built for the run is appended to this list (to
            read its counters: ``skipped``, ``rollbacks``, ``blowups``, ``lr_scale``),
            also when the run raises.
        **fit_kwargs: more arguments of :func:`stabletrain.loop.fit` (``callbacks``).

    Raises:
        ValueError: ``norm`` not in ``NORM_TYPES``, ``steps < 1`` or ``warmup_steps < 0``.
    """
    if norm not in NORM_TYPES:
        raise ValueError(f"norm must be one of {NORM_TYPES}, got {norm!r}")
    steps = _check_positive_int("steps", steps)
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise ValueError(f"warmup_steps must be an int >= 0, got {warmup_steps!r}")
    per_epoch = RECIPE["num_train"] // RECIPE["batch_size"]
    make_guard = None
    if guard is not None:
        options = dict(guard)
        if max_grad_norm is not None:
            options.setdefault("max_norm", max_grad_norm)
        max_grad_norm = None

        def make_guard(model: nn.Module, optimizer: Any, scheduler: Any) -> StabilityGuard:
            built = StabilityGuard(model, optimizer, scheduler=scheduler, **options)
            if guards is not None:
                guards.append(built)
            return built

    return short_run(
        **{**RECIPE, "lr": lr},
        epochs=math.ceil(steps / per_epoch),
        max_steps=steps,
        seed=seed,
        scheduler={"type": "constant", "warmup_steps": warmup_steps} if warmup_steps else None,
        model_kwargs={
            "norm": norm,
            "activation": "leaky_relu",
            "bottleneck_attention": bottleneck_attention,
            "qk_norm": qk_norm,
        },
        max_grad_norm=max_grad_norm,
        make_guard=make_guard,
        return_model=return_model,
        **fit_kwargs,
    )


def verdict(history: History) -> str:
    """``"diverged: non-finite loss at step k"``, ``"blew up: loss … at step k (finite)"`` or
    ``"stable for n steps"``.

    Steps a guard rejected (``applied`` False) are judged apart: the run is stable if every
    applied step was, and the verdict adds how many the guard rejected.
    """
    losses = history.steps.get("loss", [])
    applied = history.steps.get("applied", [True] * len(losses))
    kept = History()
    for i, (loss, ok) in enumerate(zip(losses, applied)):
        if ok is not False:
            kept.log_step(step=i, loss=loss)
    rejected = len(losses) - kept.num_steps
    first = kept.first_nonfinite_step()
    if first is not None:
        return f"diverged: non-finite loss at step {kept.steps['step'][first]}"
    blowup = kept.blowup_step()
    if blowup is not None:
        loss = kept.steps["loss"][blowup]
        return f"blew up: loss {loss:.3g} at step {kept.steps['step'][blowup]} (finite)"
    text = f"stable for {history.num_steps} steps"
    return text + (f" ({rejected} rejected by the guard)" if rejected else "")


def clipped_fraction(history: History, threshold: float) -> float:
    """Fraction of the applied steps whose gradient norm (before clipping) was above
    ``threshold``: how often a clip at ``threshold`` fired. ``nan`` without applied steps.

    Raises:
        ValueError: ``threshold`` not a finite number > 0.
    """
    if not (isinstance(threshold, int | float) and 0 < threshold < math.inf):
        raise ValueError(f"threshold must be a finite number > 0, got {threshold!r}")
    norms = history.steps.get("grad_norm", [])
    applied = history.steps.get("applied", [True] * len(norms))
    kept = [g for g, ok in zip(norms, applied) if ok is not False]
    return sum(g > threshold for g in kept) / len(kept) if kept else math.nan


class WatchModel(Callback):
    """A :class:`~stabletrain.callbacks.Callback` that enters ``factory(model)`` (a context
    manager such as :class:`PrecursorProbe` or
    :class:`~stabletrain.stability.NanDetector`) when ``fit`` starts and exits it when
    ``fit`` returns, so it watches a model that ``fit``'s caller builds.

    The entered object is ``self.watcher`` (``None`` before the run). If ``fit`` raises,
    ``on_fit_end`` does not run: call :meth:`close` to remove the hooks.

    Example:
        >>> watch = WatchModel(PrecursorProbe)
        >>> history = divergence_run(0, steps=5, callbacks=[watch])  # doctest: +SKIP
        >>> len(watch.watcher.records["weight_norm"])  # doctest: +SKIP
        5
    """

    def __init__(self, factory: Callable[[nn.Module], Any]) -> None:
        if not callable(factory):
            raise TypeError(f"factory must be callable, got {type(factory).__name__}")
        self.factory = factory
        self.watcher: Any = None
        self._open = False

    def on_fit_start(self, ctx: TrainContext) -> None:
        self.close()
        self.watcher = self.factory(ctx.model)
        self.watcher.__enter__()
        self._open = True

    def on_fit_end(self, ctx: TrainContext) -> None:
        self.close()

    def close(self) -> None:
        """Exit the watcher (remove its hooks); its records stay readable. Idempotent."""
        if self._open:
            self.watcher.__exit__(None, None, None)
            self._open = False


class PrecursorProbe:
    """Record, for every training forward pass, what may rise before a blow-up.

    Per pass (only in train mode with gradients on): ``weight_norm`` (global L2 norm of
    the parameters that produced it), ``max_activation`` (largest ``|output|`` of any
    convolution) and ``max_attention_logit`` (of every :class:`SpatialSelfAttention`,
    the largest). Use as a context manager around training; the lists are in
    ``records``.
    """

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        self.model = model
        self.records: dict[str, list[float]] = {
            "weight_norm": [],
            "max_activation": [],
            "max_attention_logit": [],
        }
        self._handles: list[Any] = []
        self._current: list[torch.Tensor] = []

    def _active(self) -> bool:
        return self.model.training and torch.is_grad_enabled()

    def __enter__(self) -> PrecursorProbe:
        def start(module: nn.Module, args: Any) -> None:
            if self._active():
                self._current = []

        def activation(module: nn.Module, args: Any, output: torch.Tensor) -> None:
            if self._active():
                self._current.append(output.detach().abs().amax())

        def finish(module: nn.Module, args: Any, output: Any) -> None:
            if not self._active():
                return
            with torch.no_grad():
                weights = torch.linalg.vector_norm(
                    torch.stack(
                        [
                            torch.linalg.vector_norm(p, dtype=torch.float64)
                            for p in module.parameters()
                        ]
                    )
                )
            logits = [
                m.last_max_logit
                for m in module.modules()
                if isinstance(m, SpatialSelfAttention) and m.last_max_logit is not None
            ]
            self.records["weight_norm"].append(float(weights))
            acts = [float(a) for a in self._current]
            self.records["max_activation"].append(max(acts) if acts else math.nan)
            self.records["max_attention_logit"].append(
                max(float(v) for v in logits) if logits else math.nan
            )

        self._handles.append(self.model.register_forward_pre_hook(start))
        for module in self.model.modules():
            if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
                self._handles.append(module.register_forward_hook(activation))
        # the weight norm is read after the forward: the update comes later, in step()
        self._handles.append(self.model.register_forward_hook(finish))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


class DivergenceLab:
    """Re-run the divergence with your LR, warmup, clipping and normalisation.

    :meth:`run` trains one seed and returns ``{"history", "verdict"}``; :meth:`plot`
    draws its loss and gradient norm; :meth:`widget` wraps both in controls (a *run*
    button, so nothing trains while you move a slider). Works without a browser.

    Args:
        steps: the budget of every run.
    """

    def __init__(self, steps: int = 40) -> None:
        self.steps = _check_positive_int("steps", steps)
        self.last: dict[str, Any] | None = None

    def run(
        self,
        lr: float = 2.0,
        warmup_steps: int = 0,
        max_grad_norm: float = 0.0,
        norm: str | None = None,
        seed: int = 0,
    ) -> dict[str, Any]:
        """Train once; ``max_grad_norm=0`` means no clipping. Returns history and verdict."""
        if not (isinstance(lr, int | float) and 0 < lr < math.inf):
            raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
        if not (isinstance(max_grad_norm, int | float) and 0 <= max_grad_norm < math.inf):
            raise ValueError(f"max_grad_norm must be a finite number >= 0, got {max_grad_norm!r}")
        history = divergence_run(
            seed,
            lr=float(lr),
            norm=norm,
            warmup_steps=int(warmup_steps),
            max_grad_norm=float(max_grad_norm) or None,
            steps=self.steps,
        )
        clip = f"{max_grad_norm:g}" if max_grad_norm else "off"
        settings = f"lr={lr:.3g}, warmup={warmup_steps}, clip={clip}, norm={norm}, seed={seed}"
        self.last = {"history": history, "verdict": verdict(history), "settings": settings}
        return self.last

    def plot(self, result: Mapping[str, Any] | None = None) -> Any:
        """A figure of the run's loss and gradient norm (log scale); title: settings, verdict."""
        import matplotlib.pyplot as plt

        result = result if result is not None else self.last
        if result is None:
            raise ValueError("nothing to plot yet: call run() first")
        history = result["history"]
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3))
        ax1.semilogy(history.steps["loss"])
        ax2.semilogy(history.steps["grad_norm"])
        ax1.set(xlabel="step", ylabel="loss")
        ax2.set(xlabel="step", ylabel="‖g‖₂ (before clipping)")
        title = " — ".join(filter(None, (result.get("settings"), result["verdict"])))
        fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        return fig

    def widget(self) -> Any:
        """Sliders for LR, warmup, clipping, a normalisation menu and a seed; a run button."""
        import ipywidgets as w
        import matplotlib.pyplot as plt

        kw = {"style": {"description_width": "initial"}, "layout": w.Layout(width="340px")}
        controls = {
            "lr": w.FloatLogSlider(value=2.0, base=10, min=-2, max=1, description="lr", **kw),
            "warmup_steps": w.IntSlider(0, 0, self.steps, description="warmup steps", **kw),
            "max_grad_norm": w.FloatSlider(
                value=0.0, min=0.0, max=2.0, step=0.05, description="clip (0 = off)", **kw
            ),
            "norm": w.Dropdown(
                options=[("none", None), ("group", "group")], description="norm", **kw
            ),
            "seed": w.IntSlider(value=0, min=0, max=4, description="seed", **kw),
        }
        button = w.Button(description="run", button_style="primary", icon="play")
        text = w.Label()
        image = w.Image(format="png")

        def on_click(_: Any) -> None:
            button.disabled, text.value = True, "training…"
            try:
                result = self.run(**{k: c.value for k, c in controls.items()})
            finally:
                button.disabled = False
            text.value = result["verdict"]
            fig = self.plot(result)
            buffer = io.BytesIO()
            fig.savefig(buffer, format="png", dpi=80)
            plt.close(fig)
            image.value = buffer.getvalue()

        button.on_click(on_click)
        return w.VBox([*controls.values(), button, text, image])
