import math
import time
from pathlib import Path

import pytest
import torch
import yaml

from stabletrain.config import (
    DEFAULTS,
    MONITORS,
    PRESETS,
    _yaml_loader,
    build_model,
    build_training,
    config_diff,
    load_config,
    resolve_config,
    run,
)
from stabletrain.deep_supervision import DeepSupervisionLoss
from stabletrain.schedulers import OneCycle, PlateauWithWarmup, WarmupCosine

TINY = {
    "epochs": 2,
    "data": {"num_train": 32, "num_val": 16, "batch_size": 16, "image_size": 32},
    "model": {"base_channels": 4, "depth": 2},
}


class RecordingTracker:
    def __init__(self):
        self.params = {}
        self.metrics = []
        self.finished = None

    def log_params(self, params):
        self.params.update(params)

    def log_metrics(self, metrics, step):
        self.metrics.append((step, dict(metrics)))

    def finish(self, history=None, *, status="FINISHED"):
        self.finished = status


def test_layers_merge_in_order():
    cfg = resolve_config(
        {"preset": "stable", "optimizer": {"lr": 3e-3}},
        overrides={"optimizer.weight_decay": 0.05, "epochs": 7, "model.attention": None},
    )
    assert cfg["preset"] == "stable"
    assert cfg["optimizer"] == {
        "type": "adamw",
        "lr": 3e-3,
        "weight_decay": 0.05,
        "gradient_clipping_by_norm": 1.0,
    }
    assert cfg["epochs"] == 7 and cfg["model"]["attention"] is None  # None sets null
    assert cfg["early_stopping"] == {"patience": 15}
    assert set(cfg) == set(DEFAULTS)
    # resolving a resolved configuration changes nothing
    assert resolve_config(cfg) == cfg
    # an override's preset wins over the config's, the preset argument over both
    assert resolve_config({"preset": "stable"}, overrides={"preset": "fast"})["preset"] == "fast"
    assert resolve_config({"preset": "stable"}, preset="fast")["scheduler"]["type"] == "onecycle"


def test_changing_the_scheduler_type_starts_the_section_afresh():
    cfg = resolve_config({"preset": "attention", "scheduler": {"type": "plateau"}})
    assert cfg["scheduler"] == {"type": "plateau", "warmup_epochs": 5}  # min_lr_ratio dropped
    same = resolve_config({"preset": "attention", "scheduler": {"warmup_epochs": 2}})
    assert same["scheduler"]["min_lr_ratio"] == 0.01 and same["scheduler"]["warmup_epochs"] == 2
    adaptive = resolve_config({"preset": "attention"}, overrides={"scheduler.type": "adaptive"})
    assert adaptive["scheduler"] == {"type": "adaptive"}


def test_presets_are_documented_mappings():
    assert set(PRESETS) == {"fast", "stable", "memory_constrained", "attention"}
    for preset in PRESETS.values():
        assert set(preset) <= set(DEFAULTS)


@pytest.mark.parametrize(
    "config,match",
    [
        ({"preset": "turbo"}, r"preset must be one of \('fast', 'stable', .*got 'turbo'"),
        ({"optimiser": {}}, r"unknown key\(s\) \['optimiser'\] in config; accepted keys"),
        ({"data": {"n_train": 8}}, r"unknown key\(s\) \['n_train'\] in config section 'data'"),
        ({"stability": {"clip": 1}}, r"section 'stability'; accepted"),
        ({"epochs": 0}, "epochs must be >= 1"),
        ({"model": 3}, "config section 'model' must be a mapping"),
    ],
)
def test_bad_configurations_name_the_problem(config, match):
    with pytest.raises(ValueError, match=match):
        resolve_config(config)


def test_bad_settings_fail_at_build_time():
    model = build_model(TINY)
    for config, match in [
        ({"optimizer": {"type": "lamb"}}, "optimizer type must be one of"),
        ({"scheduler": {"type": "cosine", "gamma": 0.5}}, "unknown parameter 'gamma'"),
        ({"preset": "attention"}, r"warmup_epochs=5 must be shorter than epochs=2"),
        ({"stability": {"on_nonfinite": "pray"}}, "on_nonfinite must be one of"),
        ({"loss": "nope"}, "unknown loss preset"),
    ]:
        with pytest.raises(ValueError, match=match):
            build_training(model, {**TINY, **config})


def test_yaml_files(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("preset: fast\nepochs: 3\noptimizer:\n  lr: 0.002\n")
    cfg = resolve_config(path)
    assert cfg["optimizer"]["lr"] == 0.002 and cfg["scheduler"]["type"] == "onecycle"
    (tmp_path / "bad.yaml").write_text("epochs: [1\n")
    with pytest.raises(ValueError, match="not valid YAML at line"):
        load_config(tmp_path / "bad.yaml")
    with pytest.raises(ValueError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_each_preset_builds_what_it_says():
    spe = 4
    model = build_model(TINY)
    fast = build_training(model, {**TINY, "preset": "fast"}, steps_per_epoch=spe)
    assert isinstance(fast.scheduler, OneCycle) and fast.scheduler.total_steps == 2 * spe
    assert fast.guard.clip_mode is None and fast.early_stopping.patience == 5

    stable = build_training(model, {**TINY, "preset": "stable"}, steps_per_epoch=spe)
    assert isinstance(stable.scheduler, PlateauWithWarmup) and stable.scheduler.warmup_steps == spe
    assert (stable.guard.clip_mode, stable.guard.max_norm) == ("norm", 1.0)
    assert stable.amp is None and stable.guard.on_nonfinite == "skip"
    assert stable.early_stopping.patience == 15

    memory = build_training(model, {**TINY, "preset": "memory_constrained"}, steps_per_epoch=spe)
    assert isinstance(memory.scheduler, WarmupCosine) and memory.guard.max_norm == 0.5

    cfg = {**TINY, "epochs": 8, "preset": "attention"}
    attention = build_training(model, cfg, steps_per_epoch=spe)
    assert isinstance(attention.scheduler, WarmupCosine)
    assert attention.scheduler.warmup_steps == 5 * spe
    assert attention.guard.on_nonfinite == "rollback" and attention.guard.max_norm == 0.5
    assert attention.config["model"]["safe_attention"] is True
    # the optimizer is the configured one, driven by the guard and the scheduler
    assert attention.guard.optimizer is attention.optimizer
    assert attention.guard.scheduler is attention.scheduler


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_each_preset_trains_a_few_steps(preset):
    overrides = {"scheduler.warmup_epochs": 1} if preset in ("attention", "stable") else {}
    cfg = resolve_config({**TINY, "preset": preset}, overrides=overrides)
    tracker = RecordingTracker()
    history, _, training = run(cfg, progress=False, tracker=tracker)
    assert history.num_steps == 4
    assert all(math.isfinite(v) for v in history.steps["loss"])
    assert tracker.params["config"] == training.config  # the resolved config was logged
    assert tracker.finished == "FINISHED"
    assert history.epochs["val_loss"][-1] < history.epochs["val_loss"][0] + 0.05


def test_every_scheduler_type_gets_its_length_in_steps():
    model = build_model(TINY)
    adaptive = {"type": "adaptive", "base": "warmup_cosine", "warmup_epochs": 0.5}
    training = build_training(model, {**TINY, "scheduler": adaptive}, steps_per_epoch=4)
    assert training.scheduler.metric_driven
    cosine = build_training(model, {**TINY, "scheduler": {"type": "cosine"}}, steps_per_epoch=4)
    assert cosine.scheduler.total_steps == 8
    with pytest.raises(ValueError, match="warmup_epochs or warmup_steps"):
        build_training(
            model, {**TINY, "scheduler": {"type": "cosine", "warmup_epochs": 1, "warmup_steps": 2}}
        )


def test_deep_supervision_wraps_the_loss():
    cfg = {**TINY, "model": {**TINY["model"], "deep_supervision": True}}
    model = build_model(cfg)
    training = build_training(model, cfg)
    assert isinstance(training.loss_fn, DeepSupervisionLoss)
    assert training.loss_fn.num_outputs == 2


def test_checkpoints_store_the_resolved_config_and_resume(tmp_path):
    cfg = resolve_config(
        {**TINY, "epochs": 3, "checkpoints": {"directory": str(tmp_path / "ckpt")}}
    )
    full, _, _ = run(cfg, progress=False)
    cfg2 = resolve_config(cfg, overrides={"checkpoints.directory": str(tmp_path / "ckpt2")})
    interrupted, _, training = run(cfg2, progress=False, stop_after_epochs=2)
    assert interrupted.num_steps == 4 and len(interrupted.epochs["epoch"]) == 2
    assert "stopped after 2 of 3 epochs" in interrupted.stop_reason
    meta = training.checkpoints.load("latest", restore_rng=False)
    assert meta["extra"]["config"] == cfg2 and meta["epoch"] == 1
    resumed, _, _ = run(cfg2, progress=False, resume=True)
    assert resumed.epochs["epoch"] == [0, 1, 2]
    # bit-exact continuation of the uninterrupted run
    assert resumed.steps["loss"] == full.steps["loss"]
    # resuming with other training settings is refused, naming them
    other = resolve_config(cfg2, overrides={"optimizer.lr": 0.01})
    with pytest.raises(ValueError, match=r"cannot resume.*optimizer\.lr"):
        run(other, progress=False, resume=True)


def test_config_diff():
    assert config_diff({"a": {"b": 1, "c": 2}, "d": 3}, {"a": {"b": 1, "c": 5}, "e": 0}) == [
        "a.c",
        "d",
        "e",
    ]


def test_model_follows_the_config():
    model = build_model({**TINY, "preset": "attention"})
    assert model.attention == "cbam" and model.attention_options["norm"] is True
    assert isinstance(model, torch.nn.Module)


def test_yaml_reader_refuses_an_alias_bomb_fast(tmp_path):
    lines = ["a: &a [" + ", ".join(["lol"] * 9) + "]"]
    lines += [f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]" for a, b in zip("abcdefgh", "bcdefghi")]
    (path := tmp_path / "bomb.yaml").write_text("\n".join(lines).replace("i:", "monitor:"))
    started = time.perf_counter()
    with pytest.raises(ValueError, match="nested aliases"):
        resolve_config(path)
    assert time.perf_counter() - started < 1.0
    big = tmp_path / "big.yaml"
    big.write_text("epochs: 3\n" + "# padding\n" * 300_000)  # 3 MB
    started = time.perf_counter()
    with pytest.raises(ValueError, match="1 MB"):
        resolve_config(big)
    assert time.perf_counter() - started < 1.0


def test_yaml_reader_keeps_valid_yaml(tmp_path):
    if yaml.__with_libyaml__:
        assert issubclass(_yaml_loader(), yaml.CSafeLoader)
    path = tmp_path / "c.yaml"
    path.write_text("x: &lr {lr: 0.002}\noptimizer:\n  <<: *lr\n  weight_decay: 0.0\n")
    assert load_config(path)["optimizer"] == {"lr": 0.002, "weight_decay": 0.0}
    path.write_text("data: {batch_size: 8}\nmodel:\n  deep_supervision: no\n")  # YAML 1.1 bool
    assert load_config(path) == {"data": {"batch_size": 8}, "model": {"deep_supervision": False}}


@pytest.mark.parametrize("path", sorted(Path(__file__).parents[1].glob("configs/*.yaml")))
def test_every_config_file_resolves(path):
    cfg = resolve_config(path)
    assert cfg["preset"] in PRESETS and cfg["monitor"] in MONITORS


def test_the_monitored_metric_sets_the_direction(tmp_path):
    model = build_model(TINY)
    config = {**TINY, "early_stopping": {"patience": 2}, "monitor": "val_dice"}
    config["checkpoints"] = {"directory": str(tmp_path / "a")}
    training = build_training(model, config)
    assert training.early_stopping.mode == "max" and training.checkpoints.mode == "max"
    training.checkpoints.close()
    config["checkpoints"] = {"directory": str(tmp_path / "b"), "mode": "min"}
    config["early_stopping"] = {"patience": 2, "mode": "min"}  # contradicts val_dice's direction
    with pytest.raises(ValueError, match="mode='min' contradicts monitor='val_dice'"):
        build_training(model, config)
    default = build_training(model, {**TINY, "early_stopping": {"patience": 2}})
    assert default.early_stopping.mode == "min"  # val_loss
    plateau = {"type": "plateau", "warmup_epochs": 0.5}
    dice = build_training(model, {**TINY, "monitor": "val_dice", "scheduler": plateau})
    assert dice.scheduler.mode == "max" and "mode" not in dice.config["scheduler"]


def test_every_valid_device_spelling_is_accepted():
    for device in (None, "auto", "cpu", "cuda", "cuda:1", "mps"):
        assert resolve_config({"device": device})["device"] == device


def test_yaml_numbers_are_read_as_yaml_1_2_does():
    text = "a: 3e-3\nb: 1e-3\nc: 010\nd: 1:00\ne: 0o17\nf: 0x1f\ng: .inf\nh: 1_000\ni: 0.5\nj: 7\n"
    data = yaml.load(text, Loader=_yaml_loader())
    assert data == {"a": 3e-3, "b": 1e-3, "c": 10, "d": "1:00", "e": 15, "f": 31} | {
        "g": math.inf,
        "h": "1_000",
        "i": 0.5,
        "j": 7,
    }
    assert isinstance(data["a"], float) and isinstance(data["c"], int)


def test_a_null_override_sets_null_and_the_input_is_not_mutated():
    config = {"optimizer": {"lr": 0.1}}
    cfg = resolve_config(config, overrides={"model.attention": None, "optimizer.type": "sgd"})
    assert cfg["model"]["attention"] is None and cfg["optimizer"]["type"] == "sgd"
    assert config == {"optimizer": {"lr": 0.1}}


def test_onecycle_pct_start_drops_the_presets_warmup():
    config = {**TINY, "preset": "stable", "scheduler": {"type": "onecycle", "pct_start": 0.5}}
    assert "warmup_epochs" not in resolve_config(config)["scheduler"]
    assert build_training(build_model(config), config).scheduler.pct_start == 0.5


def test_a_mode_against_the_monitors_direction_goes_through_metric_mode():
    from stabletrain.metrics import metric_mode

    try:
        metric_mode("val_loss", "max")
    except ValueError:
        pass
    else:
        pytest.skip("metric_mode does not refuse a contradicting mode yet (the metrics part)")
    for section in ("early_stopping", "checkpoints"):
        with pytest.raises(ValueError, match=f"config section '{section}'"):
            resolve_config({**TINY, section: {"patience": 1, "mode": "max"}})


def test_improvement_or_final_gets_the_planned_epochs(tmp_path):
    points = {"directory": str(tmp_path / "ck"), "strategy": "improvement_or_final"}
    config = {**TINY, "epochs": 3, "checkpoints": points}
    assert build_training(build_model(config), config).checkpoints.total_epochs == 3
