"""The ``python -m stabletrain`` command line: train from one configuration, compare schedules.

Commands:

- ``train --config FILE [flags]``: resolve the configuration
  (:func:`stabletrain.config.resolve_config`; flags override the file), train on the
  shapes data with a progress bar, checkpoints and MLflow tracking, then print the
  run's summary (:meth:`stabletrain.training.History.summary`) and, with
  ``--export DIR``, write the full history as CSV and JSON.
- ``compare-schedulers --out FILE``: draw every scheduler type's LR curve on one
  figure (:func:`scheduler_curves`).

Every flag is documented by ``--help``. A bad flag, a bad configuration or a failed
run ends with **one** line on standard error (``stabletrain: error: ...``) and a
non-zero exit status (2: usage or configuration, 1: the run failed, 130:
interrupted), never a traceback.

Example:
    ``python -m stabletrain train --config configs/attention_unet.yaml --epochs 3``
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

__all__ = ["build_parser", "main", "scheduler_curves"]


class _OneLineParser(argparse.ArgumentParser):
    """``ArgumentParser`` whose usage errors are a single line (exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"stabletrain: error: {message} (see {self.prog} --help)\n")


def _number(cast: type, low: float, *, strict: bool = False) -> Any:
    """An argparse ``type``: ``cast(text)``, finite and ``>= low`` (``> low`` if ``strict``)."""
    what = "an integer" if cast is int else "a number"
    bound = f"{'>' if strict else '>='} {low}"

    def parse(text: str) -> Any:
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not math.isfinite(value) or value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(f"expected {what} {bound}, got {text!r}")
        return value

    return parse


_positive_int = _number(int, 1)
_non_negative_float = _number(float, 0)
_positive_float = _number(float, 0, strict=True)


def _assignment(text: str) -> tuple[str, Any]:
    import yaml

    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(
            f"expected KEY=VALUE (e.g. optimizer.lr=3e-3), got {text!r}"
        )
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        raise argparse.ArgumentTypeError(f"value of {key} is not valid YAML: {raw!r}") from None
    return key.strip(), value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m stabletrain`` (every flag documented)."""
    from .config import PRESETS
    from .schedulers import SCHEDULER_ALIASES, SCHEDULER_TYPES

    parser = _OneLineParser(
        prog="python -m stabletrain",
        description="Train the course's U-Net from one configuration, or compare LR schedules.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_OneLineParser)
    commands.required = True

    train = commands.add_parser(
        "train",
        help="train on the shapes data from a YAML configuration",
        description=(
            "Train on the synthetic shapes data from a YAML configuration (see configs/). "
            "Flags override the file; the resolved configuration is logged to MLflow and "
            "stored in every checkpoint."
        ),
    )
    train.add_argument(
        "--config", required=True, metavar="FILE", help="YAML configuration file (required)"
    )
    train.add_argument(
        "--preset", choices=sorted(PRESETS), help="training preset (overrides the file's preset)"
    )
    train.add_argument(
        "--scheduler",
        choices=sorted((*SCHEDULER_TYPES, *SCHEDULER_ALIASES, "none")),
        metavar="TYPE",
        help=(
            "LR scheduler type; a new type replaces the scheduler section (only "
            "warmup_epochs is kept). One of: "
            + ", ".join(sorted((*SCHEDULER_TYPES, *SCHEDULER_ALIASES, "none")))
        ),
    )
    train.add_argument(
        "--warmup-epochs",
        type=_non_negative_float,
        metavar="E",
        help="linear LR warmup length in epochs (fractions allowed)",
    )
    train.add_argument("--lr", type=_positive_float, help="peak learning rate (optimizer.lr)")
    train.add_argument("--epochs", type=_positive_int, help="number of training epochs")
    train.add_argument(
        "--batch-size", type=_positive_int, metavar="N", help="batch size (data.batch_size)"
    )
    train.add_argument(
        "--num-train", type=_positive_int, metavar="N", help="training images (data.num_train)"
    )
    train.add_argument(
        "--num-val", type=_positive_int, metavar="N", help="validation images (data.num_val)"
    )
    train.add_argument("--seed", type=int, help="seed of the model initialisation and data order")
    train.add_argument("--device", help="device, e.g. cpu or cuda (default: the best available)")
    train.add_argument(
        "--checkpoint-dir",
        metavar="DIR",
        help="checkpoint folder (checkpoints.directory); 'none' turns checkpoints off",
    )
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue from the latest checkpoint in the checkpoint folder",
    )
    train.add_argument(
        "--stop-after-epochs",
        type=_positive_int,
        metavar="N",
        help="stop after N epochs, once their checkpoint is written (an interruption; "
        "continue the same run later with --resume)",
    )
    train.add_argument(
        "--tracking-uri",
        metavar="URI",
        help="MLflow store, e.g. sqlite:///mlflow.db (turns tracking on)",
    )
    train.add_argument("--experiment", help="MLflow experiment name (turns tracking on)")
    train.add_argument("--run-name", help="MLflow run name")
    train.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    train.add_argument(
        "--set",
        dest="assignments",
        action="append",
        type=_assignment,
        default=[],
        metavar="KEY=VALUE",
        help="override any setting by its dotted key, value in YAML (repeatable), "
        "e.g. --set optimizer.weight_decay=0.01",
    )
    train.add_argument(
        "--export",
        metavar="DIR",
        help="write history_epochs.csv, history_steps.csv and history.json to DIR",
    )
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    compare = commands.add_parser(
        "compare-schedulers",
        help="draw every scheduler's LR curve on one figure",
        description=(
            "Draw the LR of every scheduler type against the optimizer step on one figure "
            "(example settings of each type; metric-driven types see a validation loss "
            "that stops improving halfway)."
        ),
    )
    compare.add_argument("--out", required=True, metavar="FILE", help="image file to write (.png)")
    compare.add_argument("--epochs", type=_positive_int, default=30, help="epochs (default 30)")
    compare.add_argument(
        "--steps-per-epoch",
        type=_positive_int,
        default=20,
        metavar="N",
        help="optimizer steps per epoch (default 20)",
    )
    compare.add_argument(
        "--warmup-epochs",
        type=_non_negative_float,
        default=3.0,
        metavar="E",
        help="warmup of the types that have one (default 3)",
    )
    compare.add_argument("--lr", type=_positive_float, default=1e-3, help="peak LR (default 1e-3)")
    return parser


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
    from .schedulers import SCHEDULER_TYPES, epochs_to_steps, lr_curve

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


def _compare(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    from .plotting import plot_lr

    out = Path(args.out)
    if out.suffix.lower() not in (".png", ".svg", ".pdf", ".jpg", ".jpeg"):
        raise ValueError(f"--out must end in .png, .svg, .pdf or .jpg, got {str(out)!r}")
    curves = scheduler_curves(args.epochs, args.steps_per_epoch, args.warmup_epochs, args.lr)
    fig = plot_lr(curves, title=f"LR schedules over {args.epochs} epochs")
    fig.set_size_inches(9, 5)
    ax = fig.axes[0]
    ax.set_xlabel(f"optimizer step ({args.steps_per_epoch} per epoch)")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out} ({len(curves)} schedules)")
    return 0


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides: dict[str, Any] = {
        "epochs": args.epochs,
        "seed": args.seed,
        "device": args.device,
        "optimizer.lr": args.lr,
        "data.batch_size": args.batch_size,
        "data.num_train": args.num_train,
        "data.num_val": args.num_val,
        "tracking.run_name": args.run_name,
        "tracking.experiment": args.experiment,
        "tracking.tracking_uri": args.tracking_uri,
        "scheduler.warmup_epochs": args.warmup_epochs,
    }
    if args.scheduler not in (None, "none"):
        overrides["scheduler.type"] = args.scheduler
    if args.tracking_uri is not None or args.experiment is not None:
        overrides["tracking.enabled"] = True
    if args.no_tracking:
        overrides["tracking.enabled"] = False
    if args.checkpoint_dir is not None:
        none = args.checkpoint_dir.lower() == "none"
        overrides["checkpoints.directory"] = None if none else args.checkpoint_dir
    overrides.update(dict(args.assignments))
    return overrides


def _resolve(args: argparse.Namespace) -> dict[str, Any]:
    """The file's configuration with the flags laid over it (one override layer)."""
    from .config import load_config, resolve_config

    if args.scheduler == "none" and args.warmup_epochs is not None:
        raise ValueError("--warmup-epochs needs a scheduler, but --scheduler is none")
    cfg = resolve_config(load_config(args.config), preset=args.preset, overrides=_overrides(args))
    if cfg["tracking"].get("run_name") is None:  # MLflow's random names repeat under a seed
        cfg["tracking"]["run_name"] = Path(args.config).stem + ("-resumed" if args.resume else "")
    if args.scheduler == "none":
        cfg["scheduler"] = None
    if args.checkpoint_dir is not None and args.checkpoint_dir.lower() == "none":
        cfg["checkpoints"]["directory"] = None
    if cfg["scheduler"] is not None and "type" not in cfg["scheduler"]:
        raise ValueError("--warmup-epochs needs a scheduler type (give --scheduler TYPE)")
    return cfg


def _print_summary(summary: Mapping[str, Any]) -> None:
    parts = []
    for key, value in summary.items():
        if isinstance(value, float):
            value = f"{value:.4g}"
        parts.append(f"{key}={value}")
    print("summary: " + ", ".join(parts))


def _train(args: argparse.Namespace) -> int:
    from .config import run

    cfg = _resolve(args)
    ckpt = cfg["checkpoints"].get("directory")
    print(
        f"training: preset={cfg['preset']}, epochs={cfg['epochs']}, "
        f"scheduler={(cfg['scheduler'] or {}).get('type')}, lr={cfg['optimizer'].get('lr')}, "
        f"checkpoints={ckpt}, tracking={'on' if cfg['tracking'].get('enabled') else 'off'}"
        + (", resuming" if args.resume else ""),
        flush=True,
    )
    history, _, training = run(
        cfg,
        resume=args.resume,
        progress=not args.no_progress,
        stop_after_epochs=args.stop_after_epochs,
    )
    if args.resume and history.epochs.get("epoch"):
        print(f"resumed: epochs {history.epochs['epoch']} (earlier ones from the checkpoint)")
    _print_summary(history.summary(cfg["monitor"]))
    if history.stop_reason:
        print(f"stopped: {history.stop_reason}")
    if training.checkpoints is not None and training.checkpoints.latest_path is not None:
        print(f"latest checkpoint: {training.checkpoints.latest_path}")
    if args.export:
        folder = Path(args.export)
        folder.mkdir(parents=True, exist_ok=True)
        history.to_csv(folder / "history_epochs.csv")
        history.to_csv(folder / "history_steps.csv", table="steps")
        history.to_json(folder / "history.json")
        print(f"exported the history to {folder}")
    return 0


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text or type(error).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (errors: one line on stderr)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from .checkpoint import CheckpointError
    from .stability import NonFiniteError

    try:
        if args.command == "compare-schedulers":
            return _compare(args)
        return _train(args)
    except KeyboardInterrupt:
        print("stabletrain: interrupted (continue with --resume)", file=sys.stderr)
        return 130
    except (ValueError, TypeError, ImportError, OSError) as error:
        print(f"stabletrain: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except (CheckpointError, NonFiniteError, RuntimeError) as error:
        print(f"stabletrain: training failed: {_one_line(error)}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
