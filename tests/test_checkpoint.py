import json
import math
import os
import random
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import checkpoint_worker  # tests/checkpoint_worker.py: the process that gets killed
import numpy as np
import pytest
import torch

from stabletrain.callbacks import Callback
from stabletrain.checkpoint import (
    CheckpointError,
    CheckpointManager,
    UnsafeCheckpointError,
    capture_rng_state,
    restore_rng_state,
)
from stabletrain.data import make_loaders
from stabletrain.loop import fit
from stabletrain.models import TinyUNet
from stabletrain.utils import seed_everything

NAN = math.nan
VALUES = [5.0, 3.0, 4.0, NAN, 2.0, 6.0, 1.0, 7.0]  # val_loss of epochs 0..7


def _model():
    return torch.nn.Linear(4, 2)


def _files(directory: Path) -> list[str]:
    """The checkpoint files (not the manifest, not the hidden lock file)."""
    return sorted(
        p.name for p in directory.iterdir() if p.name != "manifest.json" and p.name[0] != "."
    )


class FakeClock:
    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("strategy", "options", "written", "kept"),
    [
        ("best", {}, [0, 1, 2, 4, 6], [4, 6]),
        ("epoch", {}, list(range(8)), [6, 7]),
        ("interval", {"every_n_epochs": 3}, [2, 5], [2, 5]),
        ("all", {}, list(range(8)), [4, 6, 7]),
        (
            "improvement_or_final",
            {"total_epochs": 8, "min_improvement": 0.1},
            [0, 1, 4, 6, 7],
            [6, 7],
        ),
        ("time", {"every_n_minutes": 1.0}, [2, 5], [2, 5]),
    ],
)
def test_strategies_write_and_keep_the_right_epochs(tmp_path, strategy, options, written, kept):
    manager = CheckpointManager(tmp_path, strategy=strategy, max_keep=2, **options)
    clock = FakeClock(25.0)
    manager._clock, manager._created = clock, 0.0
    model, saved = _model(), []
    for epoch, value in enumerate(VALUES):
        clock.now += 25.0  # 25 s per epoch: the time strategy writes every third epoch
        if manager.save(epoch, {"val_loss": value}, step=epoch, model=model) is not None:
            saved.append(epoch)
    assert saved == written
    infos = manager.checkpoints()
    assert [i.epoch for i in infos] == kept
    assert _files(tmp_path) == [f"epoch-{e:04d}.pt" for e in kept]
    finite = [e for e in kept if math.isfinite(VALUES[e])]
    assert manager.best_path.name == f"epoch-{min(finite, key=lambda e: VALUES[e]):04d}.pt"
    assert manager.latest_path.name == f"epoch-{written[-1]:04d}.pt"


def test_nan_is_never_best_and_max_mode(tmp_path):
    manager = CheckpointManager(tmp_path, monitor="val_dice", mode="max", max_keep=2)
    model = _model()
    assert manager.save(0, {"val_dice": NAN}, model=model) is None
    for epoch, dice in enumerate([0.2, 0.5, 0.4, 0.1], start=1):
        manager.save(epoch, {"val_dice": dice}, model=model)
    assert [i.epoch for i in manager.checkpoints()] == [2, 3]
    assert manager.load("best", model=model)["metrics"]["val_dice"] == 0.5


def test_the_mode_follows_the_monitor(tmp_path):
    """monitor="val_dice" with no mode ranks the highest Dice best (it kept the worst epoch)."""
    model = _model()
    dice = CheckpointManager(tmp_path / "dice", monitor="val_dice", max_keep=1)
    loss = CheckpointManager(tmp_path / "loss", max_keep=1)
    for epoch, value in enumerate([0.5, 0.7, 0.6]):
        dice.save(epoch, {"val_dice": value}, model=model)
        loss.save(epoch, {"val_loss": value}, model=model)
    assert (dice.mode, loss.mode) == ("max", "min")
    assert dice.best_path.name == "epoch-0001.pt" and loss.best_path.name == "epoch-0000.pt"
    assert CheckpointManager(tmp_path / "x", monitor="val_custom", mode="min").mode == "min"


def test_checkpoint_info_is_a_path(tmp_path):
    manager = CheckpointManager(tmp_path, strategy="epoch")
    manager.save(0, {"val_loss": 1.0}, model=_model())
    (info,) = manager.checkpoints()
    assert os.fspath(info) == str(tmp_path / "epoch-0000.pt")
    assert torch.load(info, weights_only=True)["epoch"] == 0
    with open(info, "rb") as f:
        assert f.read(2) == b"PK"  # torch.save's zip format


def test_a_folder_that_cannot_be_written_is_refused_at_construction(tmp_path, monkeypatch):
    folder = tmp_path / "ro"
    CheckpointManager(folder, strategy="epoch").save(0, {"val_loss": 1.0}, model=_model())
    folder.chmod(0o555)
    if os.access(folder, os.W_OK):  # root ignores the mode bits: pretend as chmod would
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, m: Path(p) != folder and real(p, m))
    try:
        for directory in (folder, folder / "sub"):  # an existing folder, and one to be made
            with pytest.raises(ValueError, match=r"directory .*ro.* is not writable"):
                CheckpointManager(directory, strategy="epoch")
        reader = CheckpointManager(folder, strategy="epoch", read_only=True)
        assert [i.epoch for i in reader.checkpoints()] == [0]
    finally:
        folder.chmod(0o755)


def test_top_k_survives_a_restart(tmp_path):
    model = _model()
    first = CheckpointManager(tmp_path, max_keep=2)
    for epoch, value in enumerate([5.0, 3.0, 4.0]):
        first.save(epoch, {"val_loss": value}, model=model)
    second = CheckpointManager(tmp_path, max_keep=2)  # a resumed run opens the same folder
    assert [i.epoch for i in second.checkpoints()] == [1, 2]
    assert second.save(3, {"val_loss": 4.5}, model=model) is None  # not in the top 2
    second.save(4, {"val_loss": 1.0}, model=model)
    assert [i.epoch for i in second.checkpoints()] == [1, 4]
    assert _files(tmp_path) == ["epoch-0001.pt", "epoch-0004.pt"]
    assert second.best_path.name == "epoch-0004.pt"


def test_crash_before_the_manifest_update_adopts_the_written_file(tmp_path, monkeypatch):
    model = _model()
    manager = CheckpointManager(tmp_path, strategy="epoch", max_keep=2)
    manager.save(0, {"val_loss": 1.0}, model=model)
    calls = []

    def crash(self, entries):
        calls.append(1)
        raise KeyboardInterrupt  # dies between "file in place" and "manifest rewritten"

    monkeypatch.setattr(CheckpointManager, "_write_manifest", crash)
    with pytest.raises(KeyboardInterrupt):
        manager.save(1, {"val_loss": 0.5}, model=model)
    monkeypatch.undo()
    reopened = CheckpointManager(tmp_path, strategy="epoch", max_keep=2)
    assert reopened.latest_path.name == "epoch-0001.pt"
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert [f["name"] for f in manifest["files"]] == ["epoch-0000.pt", "epoch-0001.pt"]
    reopened.save(2, {"val_loss": 0.2}, model=model)
    assert _files(tmp_path) == ["epoch-0001.pt", "epoch-0002.pt"]


def test_stale_temporary_files_are_removed(tmp_path):
    (tmp_path / ".tmp-epoch-0003.pt-12345").write_bytes(b"half a checkpoint")
    CheckpointManager(tmp_path)
    assert not list(tmp_path.glob(".tmp-*"))


def test_round_trip_restores_objects_generator_and_rng(tmp_path):
    model = _model()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1, gamma=0.5)
    model(torch.randn(3, 4)).sum().backward()
    optimizer.step()
    scheduler.step()
    generator = torch.Generator().manual_seed(7)
    generator.manual_seed(7)
    manager = CheckpointManager(tmp_path, strategy="epoch")
    path = manager.save(
        3,
        {"val_loss": 0.3},
        step=12,
        extra={"note": "x"},
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        data_generator=generator,
    )
    expected = (
        random.random(),
        np.random.rand(),  # noqa: NPY002
        torch.rand(2),
        torch.randperm(5, generator=generator),
    )
    state = torch.load(path, weights_only=True)  # plain tensors and values only
    assert state["epoch"] == 3

    model2 = _model()
    optimizer2 = torch.optim.Adam(model2.parameters(), lr=0.1)
    scheduler2 = torch.optim.lr_scheduler.StepLR(optimizer2, 1, gamma=0.5)
    generator2 = torch.Generator().manual_seed(99)
    meta = manager.load(
        model=model2, optimizer=optimizer2, scheduler=scheduler2, data_generator=generator2
    )
    assert meta["epoch"] == 3 and meta["step"] == 12 and meta["extra"] == {"note": "x"}
    for a, b in zip(model.state_dict().values(), model2.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert optimizer2.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"] == 0.05
    assert scheduler2.last_epoch == 1
    assert random.random() == expected[0]
    assert np.random.rand() == expected[1]  # noqa: NPY002
    assert torch.equal(torch.rand(2), expected[2])
    assert torch.equal(torch.randperm(5, generator=generator2), expected[3])


def test_rng_state_round_trip():
    state = capture_rng_state()
    draws = random.random(), np.random.rand(), torch.rand(3)  # noqa: NPY002
    restore_rng_state(state)
    assert (random.random(), np.random.rand()) == draws[:2]  # noqa: NPY002
    assert torch.equal(torch.rand(3), draws[2])


def test_truncated_and_corrupt_files_raise_and_latest_falls_back(tmp_path):
    model = _model()
    manager = CheckpointManager(tmp_path, strategy="epoch", max_keep=3)
    for epoch in range(3):
        manager.save(epoch, {"val_loss": 1.0}, model=model)
    newest, middle = tmp_path / "epoch-0002.pt", tmp_path / "epoch-0001.pt"
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])  # truncated
    flipped = bytearray(middle.read_bytes())
    flipped[len(flipped) // 2] ^= 0xFF  # same size, one bad byte
    middle.write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match=r"epoch-0002\.pt.*truncated"):
        manager.load(newest, model=model)
    with pytest.raises(CheckpointError, match=r"epoch-0001\.pt.*(corrupt|truncated)"):
        manager.load("epoch-0001.pt", model=model)
    with pytest.warns(UserWarning, match=r"fell back to epoch-0000\.pt"):
        assert manager.load("latest", model=model)["epoch"] == 0
    # a damaged file that no manifest describes fails inside torch.load, named too
    stray = tmp_path / "elsewhere" / "model.pt"
    stray.parent.mkdir()
    stray.write_bytes(data[:100])
    with pytest.raises(CheckpointError, match=r"model\.pt is truncated or corrupt"):
        manager.load(stray)
    (tmp_path / "epoch-0000.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="no intact checkpoint"):
        manager.load("latest", model=model)


class _Payload:
    """Unpickling this runs os.mkdir(marker): the shape of a malicious checkpoint."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_a_pickled_payload_is_refused_unless_trusted(tmp_path):
    marker = tmp_path / "code-ran"
    evil = tmp_path / "downloaded.pt"
    torch.save({"model": {"weight": torch.zeros(2)}, "bonus": _Payload(str(marker))}, evil)
    manager = CheckpointManager(tmp_path / "runs")
    with pytest.raises(UnsafeCheckpointError, match=r"pickled Python objects.*trusted=True"):
        manager.load(evil)
    assert not marker.exists()  # refused before running anything


def test_state_that_would_need_pickle_is_rejected_at_save(tmp_path):
    class Odd:
        def state_dict(self):
            return {"when": Path("x")}

    manager = CheckpointManager(tmp_path, strategy="epoch")
    with pytest.raises(TypeError, match=r"odd\['when'\].*PosixPath|odd\['when'\].*Path"):
        manager.save(0, odd=Odd())
    with pytest.raises(TypeError, match="no state_dict"):
        manager.save(0, thing=object())


def test_adaptive_strategy_is_a_deprecated_name_of_improvement_or_final(tmp_path):
    with pytest.warns(DeprecationWarning, match="'adaptive' is deprecated; use 'improvement_or"):
        old = CheckpointManager(tmp_path / "old", strategy="adaptive", total_epochs=4)
    new = CheckpointManager(tmp_path / "new", strategy="improvement_or_final", total_epochs=4)
    assert old.strategy == new.strategy == "improvement_or_final"
    for epoch, value in enumerate([1.0, 0.995, 0.5, 0.9]):
        saved = [m.save(epoch, {"val_loss": value}, model=_model()) for m in (old, new)]
        assert [p is None for p in saved] == [saved[1] is None] * 2
    assert [i.epoch for i in old.checkpoints()] == [i.epoch for i in new.checkpoints()] == [0, 2, 3]
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="total_epochs"):
        CheckpointManager(tmp_path / "bad", strategy="adaptive")


def test_missing_object_and_bad_arguments(tmp_path):
    manager = CheckpointManager(tmp_path, strategy="epoch")
    manager.save(0, {"val_loss": 1.0}, model=_model())
    with pytest.raises(CheckpointError, match=r"no state for \['optimizer'\]"):
        manager.load(model=_model(), optimizer=torch.optim.SGD(_model().parameters(), lr=1))
    with pytest.raises(ValueError, match="strategy must be one of"):
        CheckpointManager(tmp_path, strategy="sometimes")
    with pytest.raises(ValueError, match="total_epochs"):
        CheckpointManager(tmp_path, strategy="improvement_or_final")
    with pytest.raises(ValueError, match="every_n_minutes"):
        CheckpointManager(tmp_path, strategy="time")
    with pytest.raises(ValueError, match="max_keep"):
        CheckpointManager(tmp_path, max_keep=0)
    with pytest.raises(ValueError, match=r"monitor='val_loss'.*\['train_loss'\]"):
        CheckpointManager(tmp_path / "b").save(0, {"train_loss": 1.0}, model=_model())


def test_background_save_snapshots_the_state(tmp_path):
    model = _model()
    manager = CheckpointManager(tmp_path, strategy="epoch", async_save=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for epoch in range(2):
        path = manager.save(epoch, {"val_loss": 1.0}, model=model)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)  # the training loop moves on while the file is written
    manager.wait()
    assert path.exists()
    restored = _model()
    manager.load(CheckpointManager(tmp_path).checkpoints()[0].path, model=restored)
    for key, value in restored.state_dict().items():
        assert torch.equal(value, before[key])


def _resume_loaders():
    train, val = make_loaders(num_train=24, num_val=8, batch_size=8, image_size=32, seed=3)
    seed_everything(0)
    train.generator.manual_seed(0)
    return train, val


class Crash(Exception):
    pass


class CrashAtStep(Callback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, ctx, record):
        if ctx.step == self.step:
            raise Crash


def _train(epochs, manager=None, resume=False, crash_at=None):
    train, val = _resume_loaders()
    model = TinyUNet(base_channels=4, depth=2, attention=None)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, 3e-3, total_steps=9)
    history = fit(
        model,
        train,
        val_loader=val,
        epochs=epochs,
        optimizer=optimizer,
        scheduler=scheduler,
        checkpoints=manager,
        resume=resume,
        callbacks=[CrashAtStep(crash_at)] if crash_at else [],
        progress=False,
    )
    return model, history


@pytest.fixture(scope="module")
def straight_run():
    return _train(3)


def _assert_same(run, other):
    (model_a, history_a), (model_b, history_b) = run, other
    assert history_b.steps["loss"] == history_a.steps["loss"]
    assert history_b.epochs["val_loss"] == history_a.epochs["val_loss"]
    assert history_b.epochs["train_loss"] == history_a.epochs["train_loss"]
    for a, b in zip(model_a.state_dict().values(), model_b.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_fit_resumes_after_a_finished_shorter_run(tmp_path, straight_run):
    _train(2, CheckpointManager(tmp_path, strategy="epoch"))
    resumed = _train(3, CheckpointManager(tmp_path, strategy="epoch"), resume=True)
    _assert_same(straight_run, resumed)


@pytest.mark.parametrize("async_save", [False, True])
def test_fit_resumes_mid_epoch_in_the_same_data_order(tmp_path, straight_run, async_save):
    def manager():
        return CheckpointManager(tmp_path, strategy="epoch", every_n_steps=2, async_save=async_save)

    first = manager()
    with pytest.raises(Crash):
        _train(3, first, crash_at=5)  # 3 steps per epoch: dies inside epoch 1
    first.wait()
    latest = manager().checkpoints()[-1]
    assert (latest.epoch, latest.batch_in_epoch, latest.step) == (1, 1, 4)
    _assert_same(straight_run, _train(3, manager(), resume=True))


WORKER = Path(checkpoint_worker.__file__)


def _worker(out: Path, *args: str) -> int:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, str(WORKER), str(out), *args]
    return subprocess.run(cmd, env=env, timeout=120, capture_output=True).returncode


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX SIGKILL")
def test_sigkill_during_a_save_and_mid_epoch_resumes_bit_exactly(tmp_path):
    """Real processes: one killed half-way through writing its third checkpoint, resumed
    and killed again mid-epoch, and resumed to the end, against a straight run (here, on
    one thread like the workers)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        checkpoint_worker.train(tmp_path / "straight.pt")
    finally:
        torch.set_num_threads(threads)
    ckpt = tmp_path / "ckpt"
    common = ["--dir", str(ckpt), "--every-n-steps", "2"]
    assert _worker(tmp_path / "x.pt", *common, "--kill-on-save", "3") == -signal.SIGKILL
    assert list(ckpt.glob(".tmp-*")), "the kill should have interrupted a write"
    assert _worker(tmp_path / "x.pt", *common, "--kill-at-step", "9") == -signal.SIGKILL
    assert CheckpointManager(ckpt, strategy="epoch").latest_path.name.endswith("step-0000008.pt")
    assert _worker(tmp_path / "resumed.pt", *common) == 0
    straight = torch.load(tmp_path / "straight.pt", weights_only=True)
    resumed = torch.load(tmp_path / "resumed.pt", weights_only=True)
    assert resumed["losses"] == straight["losses"]
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key


def test_no_warnings_on_a_clean_folder(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        manager = CheckpointManager(tmp_path, strategy="epoch")
        manager.save(0, {"val_loss": 1.0}, model=_model())
        CheckpointManager(tmp_path, strategy="epoch").load(model=_model())


def test_resume_and_rewind_may_save_earlier_epochs_a_stray_one_may_not(tmp_path):
    model = torch.nn.Linear(2, 2)
    manager = CheckpointManager(tmp_path, strategy="epoch", max_keep=5)
    for epoch in range(4):
        manager.save(epoch, {"val_loss": 1.0}, model=model)
    with pytest.raises(ValueError, match="behind this manager's last save or load"):
        manager.save(2, {"val_loss": 1.0}, model=model)
    manager.load(tmp_path / "epoch-0001.pt", model=model)  # a rewind: go on from epoch 1
    assert manager.save(2, {"val_loss": 0.5}, model=model).name == "epoch-0002.pt"
    assert manager.save(0, {"val_loss": 0.5}, model=model) is not None  # a new run
    assert manager.latest_path.name == "epoch-0000.pt"
