"""Short, seeded training runs on the shapes task, for notebooks and widgets.

Comparisons in the course must give every contender the same seed, data,
model initialisation and budget; :func:`short_run` is that one recipe, so no
notebook re-implements it.

Example:
    >>> from stabletrain.experiments import short_run
    >>> history = short_run(lr=3e-3, epochs=1, num_train=32, progress=False)  # doctest: +SKIP
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .data import make_loaders
from .models import TinyUNet
from .training import History, fit
from .utils import seed_everything

__all__ = ["SchedulerSpec", "SeedStats", "run_seeds", "seed_stats", "short_run"]

SchedulerSpec = Mapping[str, Any] | Callable[[torch.optim.Optimizer, int], Any] | None

_OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}


def _build_scheduler(spec: SchedulerSpec, optimizer: torch.optim.Optimizer, total_steps: int):
    if spec is None:
        return None
    if callable(spec):
        return spec(optimizer, total_steps)
    if isinstance(spec, Mapping):
        from .schedulers import build_scheduler  # the schedulers module builds configs

        config = dict(spec)
        config.setdefault("total_steps", total_steps)
        return build_scheduler(optimizer, config)
    raise TypeError(
        "scheduler must be None, a mapping for build_scheduler, or a callable "
        f"(optimizer, total_steps) -> scheduler; got {type(spec).__name__}"
    )


def short_run(
    *,
    lr: float = 1e-3,
    epochs: int = 3,
    scheduler: SchedulerSpec = None,
    optimizer: str = "adam",
    attention: str | None = "cbam",
    base_channels: int = 16,
    depth: int = 3,
    deep_supervision: bool = False,
    num_train: int = 256,
    num_val: int = 64,
    batch_size: int = 16,
    image_size: int = 64,
    num_classes: int = 1,
    seed: int = 0,
    data_seed: int = 0,
    dataset_kwargs: Mapping[str, Any] | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    optimizer_kwargs: Mapping[str, Any] | None = None,
    make_guard: Callable[[torch.nn.Module, torch.optim.Optimizer, Any], Any] | None = None,
    return_model: bool = False,
    **fit_kwargs: Any,
) -> History | tuple[History, torch.nn.Module]:
    """Train a fresh :class:`TinyUNet` on the shapes data with one seed and budget.

    Args:
        lr: peak learning rate (the optimizer's LR; schedulers scale from it).
        epochs: passes over ``num_train`` images.
        scheduler: ``None``, a mapping given to
            ``stabletrain.schedulers.build_scheduler`` (``total_steps`` is filled
            in), or a callable ``(optimizer, total_steps) -> scheduler``.
        optimizer: ``"adam"``, ``"adamw"`` or ``"sgd"``.
        attention, base_channels, depth, deep_supervision: the model.
        num_train, num_val, batch_size, image_size, num_classes, data_seed,
            dataset_kwargs: the data (``ShapesSegmentation`` arguments).
        seed: seeds the model initialisation and the data order.
        model_kwargs, optimizer_kwargs: extra constructor arguments.
        make_guard: ``(model, optimizer, scheduler) -> guard`` to train through a
            stability guard instead of the plain update.
        return_model: also return the trained model.
        **fit_kwargs: passed to :func:`stabletrain.training.fit` (for example
            ``max_grad_norm``, ``loss_fn``, ``amp``, ``max_steps``, ``progress``).

    Raises:
        ValueError: unknown ``optimizer``.
    """
    if optimizer not in _OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {sorted(_OPTIMIZERS)}, got {optimizer!r}")
    train, val = make_loaders(
        num_train,
        num_val,
        batch_size,
        image_size=image_size,
        num_classes=num_classes,
        seed=data_seed,
        **dict(dataset_kwargs or {}),
    )
    seed_everything(seed)
    train.generator.manual_seed(seed)
    model = TinyUNet(
        num_classes=num_classes,
        base_channels=base_channels,
        depth=depth,
        attention=attention,
        deep_supervision=deep_supervision,
        **dict(model_kwargs or {}),
    )
    opt = _OPTIMIZERS[optimizer](model.parameters(), lr=lr, **dict(optimizer_kwargs or {}))
    total_steps = epochs * len(train) // fit_kwargs.get("accumulation_steps", 1)
    sched = _build_scheduler(scheduler, opt, total_steps)
    fit_kwargs.setdefault("progress", False)
    guard = make_guard(model, opt, sched) if make_guard is not None else None
    history = fit(
        model,
        train,
        epochs=epochs,
        optimizer=opt,
        scheduler=sched,
        val_loader=val,
        guard=guard,
        **fit_kwargs,
    )
    return (history, model) if return_model else history


def run_seeds(seeds: Sequence[int], **kwargs: Any) -> list[Any]:
    """:func:`short_run` once per seed (model initialisation and data order), all else equal.

    Returns one result per seed, in the order of ``seeds`` (a ``History``, or
    ``(History, model)`` with ``return_model=True``).

    Raises:
        ValueError: ``seeds`` is empty or holds a non-integer.
    """
    seeds = list(seeds)
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) for s in seeds):
        raise ValueError(f"seeds must be a non-empty sequence of ints, got {seeds!r}")
    if "seed" in kwargs:
        raise ValueError("pass the seeds as `seeds`, not `seed`")
    return [short_run(seed=seed, **kwargs) for seed in seeds]


@dataclass(frozen=True)
class SeedStats:
    """Summary of one figure over several seeds.

    ``str()`` gives ``"mean ± std (min–max, n seeds)"`` at ``digits`` decimals:
    the form for tables, not for output that must match on every CPU.
    """

    values: tuple[float, ...]
    mean: float
    std: float
    min: float
    max: float
    digits: int = 3

    @property
    def n(self) -> int:
        return len(self.values)

    def count(self, predicate: Callable[[float], bool]) -> int:
        """How many seeds' values satisfy ``predicate`` (NaN values never do)."""
        return sum(1 for v in self.values if not math.isnan(v) and predicate(v))

    def __str__(self) -> str:
        d = self.digits
        return (
            f"{self.mean:.{d}f} ± {self.std:.{d}f} "
            f"({self.min:.{d}f}–{self.max:.{d}f}, {self.n} seeds)"
        )


def seed_stats(values: Iterable[float], digits: int = 3) -> SeedStats:
    """Mean, sample standard deviation (0 for one value), min and max of ``values``.

    A NaN among ``values`` makes every figure NaN (``values`` keeps them): a
    diverged seed is never averaged away.

    Raises:
        ValueError: ``values`` is empty.
    """
    vals = tuple(float(v) for v in values)
    if not vals:
        raise ValueError("values must hold at least one number")
    if any(math.isnan(v) for v in vals):
        return SeedStats(vals, math.nan, math.nan, math.nan, math.nan, digits)
    std = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return SeedStats(vals, statistics.fmean(vals), std, min(vals), max(vals), digits)
