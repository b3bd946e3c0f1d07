"""``python -m stabletrain``: ``train --config FILE [flags]`` and ``compare-schedulers --out
FILE``; see ``--help``. Errors are one line on stderr (``stabletrain: error: ...``), never a
traceback; exit status 2: usage or configuration, 1: the run failed or diverged (a non-finite
final val_loss: ``diverged: ...`` on stderr, after the summary and export), 130: interrupted."""

from __future__ import annotations

import argparse
import math
import os
import sys
import warnings
from argparse import ArgumentTypeError
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"stabletrain: error: {message} (see {self.prog} --help)\n")


def _number(cast: type, low: float, *, strict: bool = False) -> Any:
    expected = f"{'an integer' if cast is int else 'a number'} {'>' if strict else '>='} {low}"

    def parse(text: str) -> Any:
        try:
            value = cast(text)
        except ValueError:
            value = math.nan
        if math.isfinite(value) and (value > low if strict else value >= low):
            return value
        raise ArgumentTypeError(f"expected {expected}, got {text!r}")

    return parse


_positive_int = _number(int, 1)
_non_negative_float = _number(float, 0)
_positive_float = _number(float, 0, strict=True)
_MAX_STEPS = 100_000  # compare-schedulers draws every step of every type


def _assignment(text: str) -> tuple[str, Any]:
    from .config import parse_yaml

    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ArgumentTypeError(f"expected KEY=VALUE (e.g. optimizer.lr=3e-3), got {text!r}")
    if not raw.strip():
        raise ArgumentTypeError(f"{key.strip()} has no value (give {key.strip()}=null for null)")
    try:
        return key.strip(), parse_yaml(raw)  # the config files' loader
    except ValueError as error:
        raise ArgumentTypeError(f"value of {key} {error}: {raw!r}") from None


def build_parser() -> argparse.ArgumentParser:
    from .config import PRESETS
    from .schedulers import SCHEDULER_ALIASES, SCHEDULER_TYPES

    about = "Train the course's U-Net from one configuration, or compare LR schedules."
    parser = _OneLineParser(prog="python -m stabletrain", description=about)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    about = "train on the shapes data from a YAML configuration (flags override the file)"
    add = commands.add_parser("train", help=about, description=about).add_argument
    add("--config", required=True, metavar="FILE", help="YAML configuration file (required)")
    add("--preset", choices=sorted(PRESETS), help="training preset (overrides the file's preset)")
    types = sorted((*SCHEDULER_TYPES, *SCHEDULER_ALIASES, "none"))
    about = "LR scheduler type (a new type keeps only warmup_epochs of the section), one of: "
    add("--scheduler", choices=types, metavar="TYPE", help=about + ", ".join(types))
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
    about = "--resume if there is a checkpoint, else start fresh (--resume alone: exit 2)"
    add("--resume-if-exists", action="store_true", help=about)
    about = "stop after N epochs, once their checkpoint is written (continue with --resume)"
    add("--stop-after-epochs", type=_positive_int, metavar="N", help=about)
    add("--tracking-uri", metavar="URI", help="MLflow store, e.g. sqlite:///mlflow.db (tracks)")
    add("--experiment", help="MLflow experiment name (turns tracking on)")
    add("--run-name", help="MLflow run name")
    add("--no-tracking", action="store_true", help="do not log to MLflow")
    about = "override a setting by its dotted key, value in YAML (repeatable)"
    add("--set", action="append", type=_assignment, metavar="KEY=VALUE", help=about)
    add("--export", metavar="DIR", help="write history_epochs/steps.csv and history.json to DIR")
    add("--no-progress", action="store_true", help="hide the progress bar")

    about = "draw every scheduler type's LR against the optimizer step"
    more = about + " (example settings; metric-driven types see a loss that stops improving)"
    add = commands.add_parser("compare-schedulers", help=about, description=more).add_argument
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
    from .checks import check_folder
    from .course.experiments import scheduler_curves
    from .plotting import plot_lr
    from .schedulers import epochs_to_steps

    out, total = Path(args.out), args.epochs * args.steps_per_epoch
    if out.suffix.lower() not in (".png", ".svg", ".pdf", ".jpg", ".jpeg"):
        raise ValueError(f"--out must end in .png, .svg, .pdf or .jpg, got {str(out)!r}")
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder: give an image file")
    check_folder("--out's folder", out.parent, writable=True)
    if total > _MAX_STEPS:
        raise ValueError(f"--epochs x --steps-per-epoch must be <= {_MAX_STEPS}, got {total}")
    if epochs_to_steps(args.warmup_epochs, args.steps_per_epoch) >= total:
        warmup = f"--warmup-epochs ({args.warmup_epochs:g}; default 3)"
        raise ValueError(f"{warmup} must be shorter than --epochs ({args.epochs})")
    try:
        curves = scheduler_curves(args.epochs, args.steps_per_epoch, args.warmup_epochs, args.lr)
    except ValueError as error:
        flags = f"--epochs {args.epochs} --steps-per-epoch {args.steps_per_epoch}"
        raise ValueError(f"{flags} --warmup-epochs {args.warmup_epochs:g}: {error}") from None
    fig = plot_lr(curves, title=f"LR schedules over {args.epochs} epochs")
    fig.set_size_inches(9, 5)
    fig.axes[0].set_xlabel(f"optimizer step ({args.steps_per_epoch} per epoch)")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out} ({len(curves)} schedules)")
    return 0


def _resolve(args: argparse.Namespace) -> dict[str, Any]:
    """The file's configuration with the flags laid over it as dotted keys (one override layer:
    a flag's ``None`` is not given, ``--set KEY=null`` sets null; ``--set`` last, each key once)."""
    from .checks import check_folder
    from .config import load_config, resolve_config, resumable

    if args.scheduler == "none" and args.warmup_epochs is not None:
        raise ValueError("--warmup-epochs needs a scheduler, but --scheduler is none")
    for flag in ("tracking_uri", "experiment", "run_name", "export", "device", "checkpoint_dir"):
        if getattr(args, flag) is not None and not getattr(args, flag).strip():
            raise ValueError(f"--{flag.replace('_', '-')} is empty: give a value or leave it out")
    given = [f for f in ("tracking-uri", "experiment") if getattr(args, f.replace("-", "_"))]
    if args.no_tracking and given:
        raise ValueError(f"--no-tracking contradicts --{given[0]}: give one")
    if args.export is not None:  # before training, not after it
        try:
            check_folder("--export", args.export, writable=True).mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ValueError(
                f"--export {args.export} cannot be created ({error.strerror})"
            ) from None
    keys = "epochs seed device optimizer.lr data.batch_size data.num_train data.num_val"
    keys += " tracking.run_name tracking.experiment tracking.tracking_uri scheduler.warmup_epochs"
    flags = {k: getattr(args, k.split(".")[-1]) for k in keys.split()}
    flags["scheduler.type"] = args.scheduler  # "none": dropped below
    flags["tracking.enabled"] = False if args.no_tracking else (True if given else None)
    flags["checkpoints.directory"] = args.checkpoint_dir  # "none": dropped below
    keys = [key for key, _ in args.set or []]
    if twice := sorted({key for key in keys if keys.count(key) > 1}):
        raise ValueError(f"--set {twice[0]} is given twice: give each key once")
    overrides = {**{k: v for k, v in flags.items() if v is not None}, **dict(args.set or [])}
    cfg = resolve_config(load_config(args.config), preset=args.preset, overrides=overrides)
    if args.scheduler == "none":
        cfg["scheduler"] = None
    if (args.checkpoint_dir or "").lower() == "none":
        cfg["checkpoints"]["directory"] = None
    if cfg["scheduler"] is not None and "type" not in cfg["scheduler"]:
        raise ValueError("--warmup-epochs needs a scheduler type (give --scheduler TYPE)")
    wanted = args.resume or args.resume_if_exists
    args.resume = wanted and resumable(cfg)
    if wanted and not args.resume:
        nothing = f"no checkpoint in {cfg['checkpoints']['directory']} to resume from"
        if not args.resume_if_exists:
            raise ValueError(f"--resume: {nothing} (--resume-if-exists starts fresh then)")
        if os.environ.get("RANK", "0") == "0":
            print(f"{nothing}: starting fresh (--resume-if-exists)", flush=True)
    if cfg["tracking"].get("run_name") is None:  # MLflow's random names repeat under a seed
        cfg["tracking"]["run_name"] = Path(args.config).stem + ("-resumed" if args.resume else "")
    return cfg


def _train(args: argparse.Namespace) -> int:
    from .config import run

    cfg = _resolve(args)
    main = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 reports and exports
    say = print if main else lambda *args, **kwargs: None
    scheduler = (cfg["scheduler"] or {}).get("type")
    tracking = "on" if cfg["tracking"].get("enabled") else "off"
    head = f"training: preset={cfg['preset']}, epochs={cfg['epochs']}, scheduler={scheduler}, "
    head += f"lr={cfg['optimizer'].get('lr')}, checkpoints={cfg['checkpoints'].get('directory')}"
    say(f"{head}, tracking={tracking}" + (", resuming" if args.resume else ""), flush=True)
    options = {"progress": not args.no_progress, "stop_after_epochs": args.stop_after_epochs}
    history, _, training = run(cfg, resume=args.resume, **options)
    if args.resume and history.epochs.get("epoch"):
        say(f"resumed: epochs {history.epochs['epoch']} (earlier ones from the checkpoint)")
    summary = history.summary(cfg["monitor"]).items()
    parts = (f"{k}={f'{v:.4g}' if isinstance(v, float) else v}" for k, v in summary)
    say("summary: " + ", ".join(parts))
    if history.stop_reason:
        say(f"stopped: {history.stop_reason}")
    latest = training.checkpoints.latest_path if training.checkpoints is not None else None
    if latest is not None:  # (asked on every rank: in a process group it is a collective)
        say(f"latest checkpoint: {latest}")
    if args.export and main:
        folder = Path(args.export)
        folder.mkdir(parents=True, exist_ok=True)
        history.to_csv(folder / "history_epochs.csv")
        history.to_csv(folder / "history_steps.csv", table="steps")
        history.to_json(folder / "history.json")
        say(f"exported the history to {folder}")
    final = (history.epochs.get("val_loss") or [0.0])[-1]  # none logged: nothing to judge
    if main and not math.isfinite(final):
        advice = "lower --lr, or stability.on_nonfinite: raise to stop at the first NaN"
        print(f"stabletrain: diverged: final val_loss={final} ({advice})", file=sys.stderr)
    return 0 if math.isfinite(final) else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (errors: one line on stderr)."""
    args = build_parser().parse_args(argv)
    try:
        return _compare(args) if args.command == "compare-schedulers" else _train(args)
    except KeyboardInterrupt:
        print("stabletrain: interrupted (continue with --resume)", file=sys.stderr)
        return 130
    except Exception as error:
        line = " ".join(str(error).split()) or type(error).__name__
        roots = {c.__module__.split(".")[0] for c in type(error).__mro__}  # none need be imported
        for what, status, given in (
            ("error: tracking", 2, bool(roots & {"mlflow", "sqlalchemy"})),  # e.g. a locked store
            ("error", 2, isinstance(error, ValueError | TypeError | ImportError | OSError)),
            ("training failed", 1, isinstance(error, RuntimeError)),  # CheckpointError, NonFinite
        ):
            if given:
                print(f"stabletrain: {what}: {line}", file=sys.stderr)
                return status
        raise


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
