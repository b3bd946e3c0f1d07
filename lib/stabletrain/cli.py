"""``python -m stabletrain``: ``train --config FILE [flags]`` (flags override the file; prints
the run's summary, ``--export DIR`` writes the history) and ``compare-schedulers --out FILE``
(every scheduler type's LR curve on one figure). Flags are documented by ``--help``.

Errors are one line on stderr (``stabletrain: error: ...``), never a traceback; exit status
2: usage or configuration, 1: the run failed, 130: interrupted.
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from argparse import ArgumentTypeError
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

__all__ = ["build_parser", "main"]


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
            raise ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not math.isfinite(value) or value < low or (strict and value == low):
            raise ArgumentTypeError(f"expected {what} {bound}, got {text!r}")
        return value

    return parse


_positive_int = _number(int, 1)
_non_negative_float = _number(float, 0)
_positive_float = _number(float, 0, strict=True)


def _assignment(text: str) -> tuple[str, Any]:
    import yaml

    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ArgumentTypeError(f"expected KEY=VALUE (e.g. optimizer.lr=3e-3), got {text!r}")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        raise ArgumentTypeError(f"value of {key} is not valid YAML: {raw!r}") from None
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
        description="Train on the synthetic shapes data from a YAML configuration (see "
        "configs/). Flags override the file; the resolved configuration is logged to MLflow "
        "and stored in every checkpoint.",
    )
    add = train.add_argument
    add("--config", required=True, metavar="FILE", help="YAML configuration file (required)")
    add("--preset", choices=sorted(PRESETS), help="training preset (overrides the file's preset)")
    types = sorted((*SCHEDULER_TYPES, *SCHEDULER_ALIASES, "none"))
    add(
        "--scheduler",
        choices=types,
        metavar="TYPE",
        help="LR scheduler type; a new type replaces the scheduler section (only "
        "warmup_epochs is kept). One of: " + ", ".join(types),
    )
    add("--warmup-epochs", type=_non_negative_float, metavar="E", help="linear LR warmup, epochs")
    add("--lr", type=_positive_float, help="peak learning rate (optimizer.lr)")
    add("--epochs", type=_positive_int, help="number of training epochs")
    add("--batch-size", type=_positive_int, metavar="N", help="batch size (data.batch_size)")
    add("--num-train", type=_positive_int, metavar="N", help="training images (data.num_train)")
    add("--num-val", type=_positive_int, metavar="N", help="validation images (data.num_val)")
    add("--seed", type=int, help="seed of the model initialisation and data order")
    add("--device", help="device, e.g. cpu or cuda (default: the best available)")
    add("--checkpoint-dir", metavar="DIR", help="checkpoint folder; 'none' turns checkpoints off")
    add("--resume", action="store_true", help="continue from the latest checkpoint there")
    add(
        "--stop-after-epochs",
        type=_positive_int,
        metavar="N",
        help="stop after N epochs, once their checkpoint is written (continue with --resume)",
    )
    add("--tracking-uri", metavar="URI", help="MLflow store, e.g. sqlite:///mlflow.db (tracks)")
    add("--experiment", help="MLflow experiment name (turns tracking on)")
    add("--run-name", help="MLflow run name")
    add("--no-tracking", action="store_true", help="do not log to MLflow")
    add(
        "--set",
        dest="assignments",
        action="append",
        type=_assignment,
        default=[],
        metavar="KEY=VALUE",
        help="override a setting by its dotted key, value in YAML (repeatable)",
    )
    add("--export", metavar="DIR", help="write history_epochs/steps.csv and history.json to DIR")
    add("--no-progress", action="store_true", help="hide the progress bar")

    compare = commands.add_parser(
        "compare-schedulers",
        help="draw every scheduler's LR curve on one figure",
        description="Draw the LR of every scheduler type against the optimizer step (example "
        "settings; metric-driven types see a validation loss that stops improving halfway).",
    )
    add = compare.add_argument
    add("--out", required=True, metavar="FILE", help="image file to write (.png)")
    add("--epochs", type=_positive_int, default=30, help="epochs (default 30)")
    add("--steps-per-epoch", type=_positive_int, default=20, metavar="N", help="(default 20)")
    add("--warmup-epochs", type=_non_negative_float, default=3.0, metavar="E", help="(default 3)")
    add("--lr", type=_positive_float, default=1e-3, help="peak LR (default 1e-3)")
    return parser


def __getattr__(name: str) -> Any:
    """Deprecated: ``scheduler_curves`` lives in :mod:`stabletrain.course.experiments`."""
    if name != "scheduler_curves":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(f"import {name} from stabletrain.course.experiments", DeprecationWarning, 2)
    from .course.experiments import scheduler_curves

    return scheduler_curves


def _compare(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    from .course.experiments import scheduler_curves
    from .plotting import plot_lr

    out = Path(args.out)
    if out.suffix.lower() not in (".png", ".svg", ".pdf", ".jpg", ".jpeg"):
        raise ValueError(f"--out must end in .png, .svg, .pdf or .jpg, got {str(out)!r}")
    curves = scheduler_curves(args.epochs, args.steps_per_epoch, args.warmup_epochs, args.lr)
    fig = plot_lr(curves, title=f"LR schedules over {args.epochs} epochs")
    fig.set_size_inches(9, 5)
    fig.axes[0].set_xlabel(f"optimizer step ({args.steps_per_epoch} per epoch)")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out} ({len(curves)} schedules)")
    return 0


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    keys = "epochs seed device optimizer.lr data.batch_size data.num_train data.num_val"
    keys += " tracking.run_name tracking.experiment tracking.tracking_uri scheduler.warmup_epochs"
    flags = {"optimizer.lr": "lr", "scheduler.warmup_epochs": "warmup_epochs"}
    overrides = {k: getattr(args, flags.get(k, k.split(".")[-1])) for k in keys.split()}
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
    options = {"progress": not args.no_progress, "stop_after_epochs": args.stop_after_epochs}
    history, _, training = run(cfg, resume=args.resume, **options)
    if args.resume and history.epochs.get("epoch"):
        print(f"resumed: epochs {history.epochs['epoch']} (earlier ones from the checkpoint)")
    summary = history.summary(cfg["monitor"]).items()
    parts = (f"{k}={f'{v:.4g}' if isinstance(v, float) else v}" for k, v in summary)
    print("summary: " + ", ".join(parts))
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
    return " ".join(str(error).split()) or type(error).__name__


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
