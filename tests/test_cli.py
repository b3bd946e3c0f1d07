import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from stabletrain.cli import main
from stabletrain.course.experiments import scheduler_curves
from stabletrain.schedulers import SCHEDULER_TYPES

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "attention_unet.yaml")
TINY = [
    "--num-train", "32", "--num-val", "16", "--epochs", "2", "--warmup-epochs", "0.5",
    "--set", "model.base_channels=4", "--set", "data.image_size=32", "--no-progress",
]  # fmt: skip


def _cli(*args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "stabletrain", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_train_end_to_end_in_a_subprocess(tmp_path):
    db = tmp_path / "mlflow.db"
    ckpt = tmp_path / "ckpt"
    result = _cli(
        "train", "--config", CONFIG, *TINY,
        "--tracking-uri", f"sqlite:///{db}", "--checkpoint-dir", str(ckpt),
        "--stop-after-epochs", "1", "--export", str(tmp_path / "export"),
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert (ckpt / "epoch-0000.pt").is_file() and (ckpt / "manifest.json").is_file()
    assert "stopped after 1 of 2 epochs" in result.stdout
    # the run is in the temporary MLflow store, with the resolved configuration
    with sqlite3.connect(db) as con:
        params = dict(con.execute("SELECT key, value FROM params").fetchall())
        metrics = {k for (k,) in con.execute("SELECT DISTINCT key FROM metrics").fetchall()}
    assert params["config.preset"] == "attention"
    assert params["config.optimizer.gradient_clipping_by_norm"] == "0.5"
    assert params["config.model.deep_supervision"] == "True"
    assert {"train_loss", "val_loss", "lr", "grad_norm"} <= metrics
    exported = json.loads((tmp_path / "export" / "history.json").read_text())
    assert exported["summary"]["epochs"] == 1

    # the interrupted run continues from its checkpoint (in-process: cheaper)
    status = main(
        ["train", "--config", CONFIG, *TINY, "--checkpoint-dir", str(ckpt), "--no-tracking",
         "--resume", "--export", str(tmp_path / "export")]
    )  # fmt: skip
    assert status == 0
    resumed = json.loads((tmp_path / "export" / "history.json").read_text())
    assert resumed["epochs"]["epoch"] == [0, 1]
    assert resumed["steps"]["loss"][:2] == exported["steps"]["loss"]
    assert (ckpt / "epoch-0001.pt").is_file()


def test_bad_flag_in_a_subprocess_is_one_line(tmp_path):
    result = _cli("train", "--config", CONFIG, "--epochs", "many", cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--epochs" in lines[0] and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args,match",
    [
        (["train"], "required: --config"),
        (["train", "--config", "missing.yaml"], "config file 'missing.yaml' does not exist"),
        (["train", "--config", CONFIG, "--scheduler", "linear"], "invalid choice: 'linear'"),
        (["train", "--config", CONFIG, "--lr", "-1"], "argument --lr"),
        (["train", "--config", CONFIG, "--set", "optimizer.beta3=1"], r"unknown optimizer key"),
        (["train", "--config", CONFIG, "--set", "oops"], "expected KEY=VALUE"),
        (["train", "--config", CONFIG, "--epochs", "3", "--warmup-epochs", "3"], "shorter than"),
        (["train", "--config", CONFIG, "--preset", "turbo"], "invalid choice: 'turbo'"),
        (["fly"], "invalid choice: 'fly'"),
        (["compare-schedulers", "--out", "x.txt"], "--out must end in"),
    ],
)
def test_bad_flags_and_configs_give_one_line(args, match, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = [*args, "--no-tracking", "--checkpoint-dir", "none"] if args[:1] == ["train"] else args
    try:
        status = main(args)
    except SystemExit as exit_:  # argparse usage errors
        status = exit_.code
    err = capsys.readouterr().err
    assert status == 2
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("stabletrain: error: ")
    assert __import__("re").search(match, err), err


def test_bad_yaml_file(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("preset: attention\nmodel: {attention: transformer}\n")
    status = main(["train", "--config", str(bad), "--no-tracking", "--checkpoint-dir", "none"])
    err = capsys.readouterr().err
    assert status == 2 and "attention must be one of" in err and len(err.splitlines()) == 1


def test_compare_schedulers(tmp_path, capsys):
    out = tmp_path / "schedulers.png"
    assert main(["compare-schedulers", "--out", str(out), "--epochs", "10"]) == 0
    assert out.stat().st_size > 10_000
    curves = scheduler_curves(epochs=10, steps_per_epoch=5, warmup_epochs=2, lr=0.1)
    assert set(curves) == set(SCHEDULER_TYPES)
    assert all(len(v) == 50 for v in curves.values())
    # warmup where the type has one: the peak is reached at step 10, not before
    assert curves["warmup_cosine"][0] < 0.01 and curves["warmup_cosine"][10] == pytest.approx(0.1)
    # the plateau schedule cuts the LR once the metric stops improving
    assert curves["plateau"][-1] < 0.1


def test_resume_without_a_checkpoint_fails_unless_told(tmp_path, capsys):
    args = ["train", "--config", CONFIG, *TINY, "--epochs", "1", "--no-tracking"]
    args += ["--checkpoint-dir", str(tmp_path / "typo")]
    assert main([*args, "--resume"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "no checkpoint in" in err, err
    assert main([*args, "--resume-if-exists"]) == 0
    out = capsys.readouterr().out
    assert "to resume from: starting fresh (--resume-if-exists)" in out
    assert "resuming" not in out and (tmp_path / "typo" / "epoch-0000.pt").is_file()


@pytest.mark.parametrize("module", ["sqlalchemy.exc", "mlflow.exceptions"])
def test_tracking_store_errors_are_one_line(module, tmp_path, capsys, monkeypatch):
    locked = type("OperationalError", (Exception,), {"__module__": module})

    def run(*args, **kwargs):
        raise locked("(sqlite3.OperationalError) database is locked\n[SQL: INSERT ...]")

    monkeypatch.setattr("stabletrain.config.run", run)
    args = ["train", "--config", CONFIG, "--checkpoint-dir", "none"]
    assert main([*args, "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("stabletrain: error: tracking: (sqlite3.OperationalError) database is")
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_null_set_values_are_applied():
    from stabletrain.cli import _resolve, build_parser

    sets = ["--set", "model.attention=null", "--set", "checkpoints.directory=null"]
    cfg = _resolve(build_parser().parse_args(["train", "--config", CONFIG, *sets]))
    assert cfg["model"]["attention"] is None and cfg["checkpoints"]["directory"] is None
    assert (
        _resolve(
            build_parser().parse_args(["train", "--config", CONFIG, "--set", "scheduler=null"])
        )["scheduler"]
        is None
    )


def test_a_non_finite_final_val_loss_is_reported_as_diverged(monkeypatch, capsys):
    from types import SimpleNamespace

    import stabletrain.config

    history = SimpleNamespace(
        epochs={"epoch": [0], "val_loss": [float("nan")]},
        summary=lambda monitor: {"diverged": False, "final_val_loss": float("nan")},
        stop_reason=None,
    )
    fake = lambda cfg, **kwargs: (history, None, SimpleNamespace(checkpoints=None))  # noqa: E731
    monkeypatch.setattr(stabletrain.config, "run", fake)
    args = ["train", "--config", CONFIG, "--checkpoint-dir", "none", "--no-tracking"]
    assert main(args) == 1
    assert "stabletrain: diverged: final val_loss=nan" in capsys.readouterr().err
    history.epochs["val_loss"] = [0.5]
    assert main(args) == 0
