"""A checkpoint folder from elsewhere, a damaged index or a second process cannot make the
manager touch files outside its folder, lose a save, or load a corrupt weight silently."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest
import torch

from stabletrain.checkpoint import (
    CheckpointError,
    CheckpointManager,
    payload_checksum,
)

V1 = Path(__file__).parent / "data" / "checkpoint_v1"  # written by the format-1 manager


def _model():
    return torch.nn.Linear(4, 2)


def _save_epochs(manager, epochs, model=None):
    model = model or _model()
    for epoch in epochs:
        with torch.no_grad():
            model.weight.fill_(epoch)
        manager.save(epoch, {"val_loss": 1.0 / (epoch + 1)}, step=epoch, model=model)
    return model


def _flip_in_weight(path: Path, epoch: float) -> None:
    """Flip one bit inside the stored weight tensor (its bytes are the float ``epoch``)."""
    data = bytearray(path.read_bytes())
    pattern = torch.full((2, 4), float(epoch)).numpy().tobytes()
    at = data.find(pattern)
    assert at >= 0, "the weight's bytes should be stored as they are"
    data[at + 5] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_forged_manifest_cannot_reach_files_outside_the_folder(tmp_path):
    folder, victim = tmp_path / "ckpt", tmp_path / "victim.txt"
    folder.mkdir()
    victim.write_text("keep me")
    absolute = tmp_path / "elsewhere" / "precious.pt"
    absolute.parent.mkdir()
    absolute.write_text("keep me too")
    entry = {"seq": 0, "epoch": 0, "step": 0, "batch_in_epoch": None, "metrics": {}}
    entry |= {"value": 0.0, "roles": ["regular"], "size": None, "crc32": None, "time": 0.0}
    forged = [{**entry, "name": "../victim.txt"}, {**entry, "name": str(absolute), "seq": 1}]
    forged.append({**entry, "name": "sub/epoch-0001.pt", "seq": 2})
    (folder / "manifest.json").write_text(json.dumps({"files": forged}))
    with pytest.warns(UserWarning, match=r"ignoring manifest entry .*victim\.txt"):
        manager = CheckpointManager(folder, strategy="epoch", max_keep=1)
    assert manager.checkpoints() == []
    _save_epochs(manager, range(6))
    assert victim.read_text() == "keep me" and absolute.read_text() == "keep me too"
    assert [i.path.name for i in manager.checkpoints()] == ["epoch-0005.pt"]


def test_a_symlink_named_like_a_checkpoint_is_neither_read_nor_deleted(tmp_path):
    folder, target = tmp_path / "ckpt", tmp_path / "outside.pt"
    folder.mkdir()
    first = CheckpointManager(tmp_path / "other", strategy="epoch")
    _save_epochs(first, [0])
    shutil.copy(first.latest_path, target)
    (folder / "epoch-0000.pt").symlink_to(target)
    with pytest.warns(UserWarning, match="not a regular file"):
        manager = CheckpointManager(folder, strategy="epoch", max_keep=1)
    _save_epochs(manager, range(1, 4))
    assert target.exists() and (folder / "epoch-0000.pt").is_symlink()


def test_a_bit_flip_in_a_weight_is_caught_without_the_manifest(tmp_path):
    manager = CheckpointManager(tmp_path, strategy="epoch", max_keep=3)
    _save_epochs(manager, range(3))
    manager.close()
    (tmp_path / "manifest.json").unlink()
    _flip_in_weight(tmp_path / "epoch-0002.pt", 2)
    with pytest.warns(
        UserWarning, match=r"ignoring unreadable checkpoint epoch-0002\.pt.*checksum"
    ):
        reopened = CheckpointManager(tmp_path, strategy="epoch", max_keep=3)
    model = _model()
    assert reopened.load("latest", model=model)["epoch"] == 1  # the previous good one
    assert torch.equal(model.weight, torch.full((2, 4), 1.0))
    with pytest.raises(CheckpointError, match=r"epoch-0002\.pt is corrupt: the checksum"):
        reopened.load(tmp_path / "epoch-0002.pt", model=model)


def test_a_bit_flip_is_caught_with_the_manifest_and_latest_falls_back(tmp_path):
    manager = CheckpointManager(tmp_path, strategy="epoch", max_keep=3)
    _save_epochs(manager, range(3))
    _flip_in_weight(tmp_path / "epoch-0002.pt", 2)
    with pytest.warns(UserWarning, match=r"fell back to epoch-0001\.pt"):
        assert manager.load("latest", model=_model())["epoch"] == 1


def test_the_checksum_covers_values_and_tensors():
    payload = {"epoch": 3, "objects": {"w": torch.arange(6.0).reshape(2, 3)}, "x": [1, (2.5,)]}
    base = payload_checksum(payload)
    assert payload_checksum({**payload, "epoch": 4}) != base
    assert payload_checksum({**payload, "objects": {"w": torch.arange(6.0)}}) != base  # shape
    assert payload_checksum({**payload, "objects": {"w": torch.arange(6).reshape(2, 3)}}) != base
    bumped = torch.arange(6.0).reshape(2, 3)
    bumped[1, 2] = torch.nextafter(bumped[1, 2], torch.tensor(9.0))
    assert payload_checksum({**payload, "objects": {"w": bumped}}) != base
    assert payload_checksum({**payload, "x": [1, (2.5,)]}) == base


def test_files_of_the_previous_format_still_load(tmp_path):
    folder = shutil.copytree(V1, tmp_path / "v1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        manager = CheckpointManager(folder, strategy="epoch", max_keep=2)
    model = _model()
    meta = manager.load("latest", model=model)
    assert (meta["epoch"], meta["step"]) == (2, 20)
    assert torch.equal(model.weight, torch.full((2, 4), 2.0))
    _save_epochs(manager, [3])  # a new-format file joins the old ones
    assert [i.epoch for i in manager.checkpoints()] == [2, 3]
    # the format-1 file is still checked against the manifest's CRC-32
    _flip_in_weight(folder / "epoch-0002.pt", 2)
    with pytest.raises(CheckpointError, match="CRC-32 does not match"):
        manager.load(folder / "epoch-0002.pt", model=model)


@pytest.mark.parametrize(
    "damage",
    ["not json {", '{"files": "abc"}', "[1, 2]", "no-seq", "manifest-is-a-folder", "tmp-folder"],
)
def test_a_damaged_manifest_is_set_aside_and_rebuilt(tmp_path, damage):
    manager = CheckpointManager(tmp_path, strategy="epoch", max_keep=3)
    _save_epochs(manager, range(2))
    manager.close()
    manifest = tmp_path / "manifest.json"
    if damage == "no-seq":
        doc = json.loads(manifest.read_text())
        for entry in doc["files"]:
            del entry["seq"]
        manifest.write_text(json.dumps(doc))
    elif damage == "manifest-is-a-folder":
        manifest.unlink()
        manifest.mkdir()
    elif damage == "tmp-folder":
        (tmp_path / ".tmp-epoch-0005.pt-1").mkdir()
    else:
        manifest.write_text(damage)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reopened = CheckpointManager(tmp_path, strategy="epoch", max_keep=3)
    assert [i.epoch for i in reopened.checkpoints()] == [0, 1]
    assert reopened.load("latest", model=_model())["epoch"] == 1
    assert json.loads(manifest.read_text())["files"][-1]["name"] == "epoch-0001.pt"
    if damage in ("tmp-folder",):
        assert not caught and (tmp_path / ".tmp-epoch-0005.pt-1").is_dir()
    elif damage == "no-seq":
        assert any("ignoring manifest entry" in str(w.message) for w in caught)
    else:
        assert any("set" in str(w.message) or "moved it to" in str(w.message) for w in caught)
        assert list(tmp_path.glob("manifest.json.corrupt-*"))


def test_only_stale_temporary_files_of_our_naming_are_removed(tmp_path):
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead = subprocess.run(
            [sys.executable, "-c", "import os; print(os.getpid())"],
            capture_output=True,
            text=True,
            check=True,
        )
        dead_pid = int(dead.stdout)
        names = {
            f".tmp-epoch-0003.pt-{dead_pid}": False,  # a crashed writer's: removed
            f".tmp-manifest.json-{dead_pid}": False,
            f".tmp-epoch-0004.pt-{live.pid}": True,  # a live process's: kept
            f".tmp-notes.txt-{dead_pid}": True,  # not our naming: kept
            ".tmp-whatever": True,
        }
        for name in names:
            (tmp_path / name).write_bytes(b"half a checkpoint")
        CheckpointManager(tmp_path)
        assert {n: (tmp_path / n).exists() for n in names} == names
    finally:
        live.kill()
        live.wait()


_PEEKER = textwrap.dedent(
    """
    import sys, time, warnings
    from stabletrain.checkpoint import CheckpointManager
    folder, stop = sys.argv[1], sys.argv[2]
    import os
    looks = 0
    open(stop + ".ready", "w").close()
    while not os.path.exists(stop):
        manager = CheckpointManager(folder, strategy="epoch", read_only=True)
        infos = manager.checkpoints()
        if infos:
            manager.load("latest", restore_rng=False)
        looks += 1
        time.sleep(0.01)
    print(looks)
    """
)


def test_a_peeking_reader_never_breaks_a_running_writer(tmp_path):
    folder, stop = tmp_path / "ckpt", tmp_path / "stop"
    manager = CheckpointManager(folder, strategy="epoch", max_keep=20)
    reader = subprocess.Popen(
        [sys.executable, "-c", _PEEKER, str(folder), str(stop)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not Path(f"{stop}.ready").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        model = _model()
        for epoch in range(20):
            _save_epochs(manager, [epoch], model)
            time.sleep(0.02)  # the reader looks between (and during) saves
    finally:
        stop.touch()
        out, err = reader.communicate(timeout=60)
    assert reader.returncode == 0, err
    assert int(out) >= 10  # it really looked while the writer worked
    assert _files(folder) == [f"epoch-{e:04d}.pt" for e in range(20)]
    for info in manager.checkpoints():
        restored = _model()
        manager.load(info.path, model=restored, restore_rng=False)
        assert torch.equal(restored.weight, torch.full((2, 4), float(info.epoch)))


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("epoch-"))


_WRITER = textwrap.dedent(
    """
    import sys
    from stabletrain.checkpoint import CheckpointLockedError, CheckpointManager
    try:
        CheckpointManager(sys.argv[1], strategy="epoch")
    except CheckpointLockedError as error:
        print("refused:", error)
        sys.exit(3)
    """
)


def test_a_second_writer_process_is_refused_until_the_first_is_gone(tmp_path):
    manager = CheckpointManager(tmp_path, strategy="epoch")
    _save_epochs(manager, [0])
    second = subprocess.run(
        [sys.executable, "-c", _WRITER, str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert second.returncode == 3, second.stderr
    assert f"PID {os.getpid()}" in second.stdout and "read_only=True" in second.stdout
    manager.close()
    again = subprocess.run(
        [sys.executable, "-c", _WRITER, str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert again.returncode == 0, again.stdout + again.stderr


def test_in_one_process_a_newer_manager_takes_over_the_folder(tmp_path):
    old = CheckpointManager(tmp_path, strategy="epoch")
    _save_epochs(old, [0])
    new = CheckpointManager(tmp_path, strategy="epoch")
    with pytest.raises(CheckpointError, match="took over"):
        _save_epochs(old, [1])
    _save_epochs(new, [1])
    assert old.load("latest", model=_model())["epoch"] == 1  # reading still works
    new.close()
    with pytest.raises(CheckpointError, match="closed"):
        _save_epochs(new, [2])


def test_a_reader_creates_changes_and_deletes_nothing(tmp_path):
    missing = tmp_path / "not-yet"
    assert CheckpointManager(missing, read_only=True).checkpoints() == []
    assert not missing.exists()
    manager = CheckpointManager(tmp_path, strategy="epoch")
    _save_epochs(manager, range(2))
    (tmp_path / "manifest.json").write_text("{broken")
    (tmp_path / ".tmp-epoch-0009.pt-999999999").write_bytes(b"x")
    before = sorted(os.listdir(tmp_path))
    with pytest.warns(UserWarning, match="unusable"):
        reader = CheckpointManager(tmp_path, strategy="epoch", read_only=True)
    with pytest.warns(UserWarning, match="unusable"):  # a reader re-reads, and says so again
        assert [i.epoch for i in reader.checkpoints()] == [0, 1]
    assert sorted(os.listdir(tmp_path)) == before
    with pytest.raises(CheckpointError, match="read_only"):
        _save_epochs(reader, [5])
