"""Short, seeded training runs on the shapes task (the notebooks' comparisons, the LR tuner).

:func:`short_run` is the one recipe (same seed, data, initialisation and budget for every
contender); :func:`seed_stats` summarises a figure over seeds; :func:`scheduler_curves` is
every scheduler type's example LR curve (``python -m stabletrain compare-schedulers``).
"""

from __future__ import annotations

import inspect
import math
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..config import scheduler_from_config, seeded_start
from ..data import make_loaders
from ..history import History
from ..loop import fit
from ..models import TinyUNet
from ..optim import build_optimizer

__all__ = [
    "SchedulerSpec",
    "SeedStats",
    "course_task",
    "run_seeds",
    "scheduler_curves",
    "seed_stats",
    "short_run",
    "short_run_arguments",
]

SchedulerSpec = Mapping[str, Any] | Callable[[torch.optim.Optimizer, int], Any] | None

# fit's arguments that short_run sets itself (the others pass through **fit_kwargs)
_SET_BY_SHORT_RUN = ("model", "train_loader", "optimizer", "lr", "scheduler", "val_loader", "guard")


def short_run_arguments() -> tuple[str, ...]:
    """Every keyword :func:`short_run` accepts: its own and the ``fit`` ones it passes on."""
    own = [
        n for n, p in inspect.signature(short_run).parameters.items() if p.kind is p.KEYWORD_ONLY
    ]
    passed = [n for n in inspect.signature(fit).parameters if n not in (*_SET_BY_SHORT_RUN, *own)]
    return (*own, *passed)


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

    The recipe of :func:`stabletrain.config.run`: data, seeding and model from
    :func:`~stabletrain.config.seeded_start`, the optimizer from
    :func:`~stabletrain.optim.build_optimizer` (given the parameters: one group with
    torch's defaults), a mapping ``scheduler`` through
    :func:`~stabletrain.config.scheduler_from_config`, then :func:`~stabletrain.loop.fit`.

    Args:
        lr: peak learning rate (the optimizer's LR; schedulers scale from it).
        epochs: passes over ``num_train`` images.
        scheduler: ``None``, a mapping given to
            ``stabletrain.schedulers.build_scheduler`` (``total_steps`` is filled
            in; ``warmup_epochs`` allowed), or a callable ``(optimizer, total_steps) -> scheduler``.
        optimizer: a :data:`stabletrain.optim.OPTIMIZER_TYPES` name (``"adam"``, ``"sgd"``…).
        attention, base_channels, depth, deep_supervision: the model.
        num_train, num_val, batch_size, image_size, num_classes, data_seed,
            dataset_kwargs: the data (``ShapesSegmentation`` arguments).
        seed: seeds the model initialisation and the data order.
        model_kwargs, optimizer_kwargs: extra constructor arguments.
        make_guard: ``(model, optimizer, scheduler) -> guard`` to train through a
            stability guard instead of the plain update.
        return_model: also return the trained model.
        **fit_kwargs: passed to :func:`stabletrain.loop.fit` (for example
            ``max_grad_norm``, ``loss_fn``, ``amp``, ``max_steps``, ``progress``).

    Raises:
        ValueError: unknown ``optimizer`` or optimizer setting.
        TypeError: a keyword that neither ``short_run`` nor ``fit`` takes, or an
            argument repeated in ``dataset_kwargs``/``model_kwargs``.
    """
    accepted = short_run_arguments()
    unknown = sorted(set(fit_kwargs) - set(accepted))
    if unknown:
        raise TypeError(
            f"short_run got unknown argument(s) {unknown}; accepted: {sorted(accepted)}"
        )
    data = dict(num_train=num_train, num_val=num_val, batch_size=batch_size)
    data.update(image_size=image_size, num_classes=num_classes, seed=data_seed)
    net = dict(base_channels=base_channels, depth=depth, attention=attention)
    net.update(deep_supervision=deep_supervision)
    for name, extra, own in (
        ("dataset_kwargs", dataset_kwargs, data),
        ("model_kwargs", model_kwargs, (*net, "num_classes")),
        ("optimizer_kwargs", optimizer_kwargs, ("type", "lr")),
    ):
        repeated = sorted(set(extra or {}) & set(own))
        if repeated:
            raise TypeError(f"{name} repeats short_run's own argument(s) {repeated}")
    train, val, model = seeded_start(
        {**data, **(dataset_kwargs or {})}, {**net, **(model_kwargs or {})}, seed
    )
    # the parameters, not the model: one plain group, as torch builds it (no group names)
    opt = build_optimizer(
        model.parameters(), {"type": optimizer, "lr": lr, **(optimizer_kwargs or {})}
    )
    steps_per_epoch = math.ceil(len(train) / fit_kwargs.get("accumulation_steps", 1))
    if callable(scheduler):
        sched = scheduler(opt, epochs * steps_per_epoch)
    elif scheduler is None or isinstance(scheduler, Mapping):
        sched = scheduler_from_config(
            opt, scheduler, epochs=epochs, steps_per_epoch=steps_per_epoch
        )
    else:
        raise TypeError(
            "scheduler must be None, a mapping for build_scheduler, or a callable "
            f"(optimizer, total_steps) -> scheduler; got {type(scheduler).__name__}"
        )
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


def scheduler_curves(
    epochs: int = 30, steps_per_epoch: int = 20, warmup_epochs: float = 3.0, lr: float = 1e-3
) -> dict[str, list[float]]:
    """The LR of every step for an example configuration of each scheduler type.

    Each type of :data:`stabletrain.schedulers.SCHEDULER_TYPES` with settings that
    show its shape over ``epochs * steps_per_epoch`` steps (warmup of
    ``warmup_epochs`` where the type has one). At every epoch end a validation loss
    that improves for the first half of training and is flat afterwards is reported
    (:func:`~stabletrain.schedulers.lr_curve`: the metric-driven types react to it).

    Raises:
        ValueError: the warmup is not shorter than the run, or another invalid setting.
    """
    from ..schedulers import SCHEDULER_TYPES, epochs_to_steps, lr_curve

    total = epochs * steps_per_epoch
    warmup = epochs_to_steps(warmup_epochs, steps_per_epoch)
    if warmup >= total:
        raise ValueError(f"warmup_epochs={warmup_epochs} must be shorter than epochs={epochs}")
    decay = max(1, total - warmup)
    configs: dict[str, dict[str, Any]] = {
        "constant": {"warmup_steps": warmup},
        "warmup_cosine": {"warmup_steps": warmup, "min_lr_ratio": 0.01},
        "cosine_restarts": {"warmup_steps": warmup, "first_cycle_steps": max(1, decay // 3)},
        "onecycle": {"pct_start": 0.3},
        "polynomial": {"warmup_steps": warmup, "power": 2.0},
        "exponential": {"warmup_steps": warmup, "gamma": 0.01 ** (1 / decay)},
        "step": {"warmup_steps": warmup, "step_size": max(1, decay // 4), "gamma": 0.5},
        "plateau": {"warmup_steps": warmup, "patience": 2, "factor": 0.5},
        "adaptive": {"base": "warmup_cosine", "warmup_steps": warmup, "patience": 2},
    }
    missing = set(SCHEDULER_TYPES) - set(configs)
    assert not missing, f"no example for {missing}"
    metrics = {
        (e + 1) * steps_per_epoch - 1: 1.0 - 0.5 * min(e, epochs // 2) / max(1, epochs // 2)
        for e in range(epochs)
    }
    return {
        name: lr_curve({"type": name, **configs[name]}, total, lr, metrics=metrics)
        for name in SCHEDULER_TYPES
    }


def course_task(
    *,
    epochs: int = 2,
    num_train: int = 128,
    num_val: int = 32,
    batch_size: int = 16,
    image_size: int = 64,
    data_seed: int = 0,
    **model_kwargs: Any,
) -> dict[str, Any]:
    """The shapes task as ``lr_tuner``/``lr_sweep`` take it: ``model_fn`` (a fresh
    :class:`TinyUNet`, ``model_kwargs`` over cbam attention, 16 channels, depth 3), the loaders,
    ``optimizer_fn`` (Adam, as :func:`short_run`) and ``steps`` (``epochs`` passes)."""
    train, val = make_loaders(num_train, num_val, batch_size, image_size=image_size, seed=data_seed)
    net = {"attention": "cbam", "base_channels": 16, "depth": 3, **model_kwargs}
    TinyUNet(**net)  # checks the model's arguments now, not at the first run

    def optimizer_fn(model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
        return build_optimizer(model.parameters(), {"type": "adam", "lr": lr})

    return {
        "model_fn": lambda: TinyUNet(**net),
        "train_loader": train,
        "val_loader": val,
        "optimizer_fn": optimizer_fn,
        "steps": epochs * len(train),
    }
