import math

import pytest
import torch

from stabletrain import Callback, History, TinyUNet, fit, make_loaders, seed_everything


@pytest.fixture(scope="module")
def loaders():
    return make_loaders(num_train=64, num_val=16, batch_size=16, image_size=32)


def test_fit_lowers_the_loss(loaders):
    train, val = loaders
    seed_everything(0)
    history = fit(
        TinyUNet(base_channels=8), train, val_loader=val, epochs=4, lr=3e-3, progress=False
    )
    assert history.num_steps == 16
    first, last = history.epochs["train_loss"][0], history.epochs["train_loss"][-1]
    assert last < 0.85 * first
    assert set(history.epochs) >= {"train_loss", "val_loss", "val_dice", "lr"}
    assert all(math.isfinite(v) for v in history.steps["grad_norm"])


def test_fit_is_deterministic(loaders):
    train, _ = make_loaders(num_train=32, num_val=8, batch_size=8, image_size=32, seed=5)
    runs = []
    for _ in range(2):
        seed_everything(1)
        train.generator.manual_seed(5)
        runs.append(fit(TinyUNet(base_channels=4), train, epochs=1, progress=False).steps["loss"])
    assert runs[0] == runs[1]


def test_scheduler_steps_once_per_optimizer_step(loaders):
    train, _ = loaders
    model = TinyUNet(base_channels=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    history = fit(model, train, optimizer=opt, scheduler=sched, epochs=2, progress=False)
    assert history.steps["lr"] == pytest.approx([0.1 / (1 + s) for s in range(8)])


def test_accumulation_and_max_steps(loaders):
    train, _ = loaders
    history = fit(
        TinyUNet(base_channels=4),
        train,
        epochs=3,
        accumulation_steps=2,
        max_steps=3,
        progress=False,
    )
    assert history.num_steps == 3
    assert history.stop_reason == "max_steps=3 reached"


def test_metric_driven_scheduler_gets_the_validation_loss(loaders):
    train, val = loaders
    model = TinyUNet(base_channels=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0, factor=0.5, threshold=10.0)
    history = fit(
        model, train, optimizer=opt, scheduler=sched, val_loader=val, epochs=3, progress=False
    )
    # threshold=10 makes every epoch "no improvement" after the first, so the LR halves
    assert history.epochs["lr"] == pytest.approx([0.1, 0.05, 0.025])


def test_callbacks_see_every_step_and_can_stop(loaders):
    train, _ = loaders
    seen = []

    class StopAfterTwo(Callback):
        def on_step_end(self, ctx, record):
            seen.append(record["step"])
            if ctx.step == 2:
                ctx.stop_training, ctx.stop_reason = True, "enough"

    history = fit(
        TinyUNet(base_channels=4), train, epochs=2, callbacks=[StopAfterTwo()], progress=False
    )
    assert seen == [1, 2] and history.stop_reason == "enough"


def test_nonfinite_loss_stops_the_plain_loop(loaders):
    train, _ = loaders
    model = TinyUNet(base_channels=4)
    calls = []

    def exploding_loss(out, target):  # a fault injected on purpose, to test the stop
        calls.append(1)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(out, target)
        return loss * (math.inf if len(calls) == 3 else 1.0)

    history = fit(model, train, loss_fn=exploding_loss, epochs=2, progress=False)
    assert history.diverged and history.first_nonfinite_step() == 2
    assert "non-finite loss" in history.stop_reason and history.num_steps == 3


def test_deep_supervision_needs_a_progress_aware_loss(loaders):
    train, _ = loaders
    with pytest.raises(ValueError, match="deep supervision"):
        fit(TinyUNet(base_channels=4, deep_supervision=True), train, epochs=1, progress=False)

    class FinalOnly:
        uses_progress = True

        def __init__(self):
            self.progress = []

        def __call__(self, outputs, target, progress):
            self.progress.append(progress)
            return torch.nn.functional.binary_cross_entropy_with_logits(outputs[0], target)

    loss = FinalOnly()
    fit(
        TinyUNet(base_channels=4, deep_supervision=True),
        train,
        loss_fn=loss,
        epochs=2,
        progress=False,
    )
    assert loss.progress[0] == 0.0 and loss.progress[-1] == pytest.approx(7 / 8)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"epochs": 0}, "epochs"),
        ({"accumulation_steps": 0}, "accumulation_steps"),
        ({"max_steps": 0}, "max_steps"),
        ({"resume": True}, "checkpoints"),
        ({"max_grad_norm": -1.0}, "max_grad_norm"),
    ],
)
def test_bad_arguments(loaders, kwargs, name):
    with pytest.raises(ValueError, match=name):
        fit(TinyUNet(base_channels=4), loaders[0], progress=False, **kwargs)


def test_history_round_trip():
    h = History()
    h.log_step(loss=1.0, lr=0.1)
    h.log_step(loss=float("nan"), lr=0.1, extra=3)
    copy = History()
    copy.load_state_dict(h.state_dict())
    assert copy.steps["lr"] == [0.1, 0.1] and math.isnan(copy.steps["extra"][0])
    assert copy.diverged and copy.first_nonfinite_step() == 1


class RecordingCheckpoints:
    """A stand-in checkpoint manager that records what fit hands it."""

    latest_path = None

    def __init__(self):
        self.saved = []

    def save(self, epoch, metrics, step=None, **objects):
        self.saved.append(objects)


def test_callbacks_with_state_are_checkpointed(loaders):
    class Stateful(Callback):
        def state_dict(self):
            return {"n": 1}

    manager = RecordingCheckpoints()
    fit(
        TinyUNet(base_channels=4),
        loaders[0],
        epochs=1,
        checkpoints=manager,
        callbacks=[Callback(), Stateful()],
        progress=False,
    )
    keys = set(manager.saved[-1])
    assert "callback_1" in keys and "callback_0" not in keys
    assert {"model", "optimizer", "history", "data_generator"} <= keys


def test_nan_validation_metric_rolls_back_through_the_guard(loaders):
    """adaptive scheduler + guard: a NaN val loss restores the snapshot and keeps one cut."""
    from stabletrain.schedulers import build_scheduler
    from stabletrain.stability import StabilityGuard

    train, _ = loaders
    images, masks = next(iter(train))
    bad_val = [(torch.full_like(images, float("nan")), masks)]  # injected fault: NaN images
    seed_everything(0)
    model = TinyUNet(base_channels=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = build_scheduler(opt, type="adaptive", factor=0.5)
    guard = StabilityGuard(model, opt, scheduler=sched, on_nonfinite="rollback", snapshot_every=1)
    history = fit(
        model, train, optimizer=opt, guard=guard, val_loader=bad_val, epochs=1, progress=False
    )
    assert math.isnan(history.epochs["val_loss"][0])
    assert guard.rollbacks == 1 and sched.needs_rollback is False
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)  # one cut, no extra backoff
    assert all(torch.equal(v, guard._snapshot["model"][k]) for k, v in model.state_dict().items())


def test_stopping_on_the_last_batch_leaves_the_data_order_as_a_full_epoch(loaders):
    train, _ = make_loaders(num_train=32, num_val=8, batch_size=8, image_size=32)
    states = []
    for max_steps in (None, 4):  # 4 steps = exactly one epoch
        train.generator.manual_seed(0)
        fit(TinyUNet(base_channels=4), train, epochs=1, max_steps=max_steps, progress=False)
        states.append(train.generator.get_state())
    assert torch.equal(states[0], states[1])


class _Dice(Callback):
    """Adds a scripted ``val_dice`` to each epoch's metrics."""

    def __init__(self, values):
        self.values = list(values)

    def on_validation_end(self, ctx, metrics):
        metrics["val_dice"] = self.values[ctx.epoch]


def _linear_batches(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(4, 3, generator=g), torch.randn(4, 1, generator=g)) for _ in range(n)]


def test_early_stopping_reads_the_direction_from_the_monitored_metric():
    from stabletrain import EarlyStopping

    stopper = EarlyStopping(patience=1)  # mode=None: Dice goes up
    history = fit(torch.nn.Linear(3, 1), _linear_batches(2), epochs=3, monitor="val_dice",
                  early_stopping=stopper, callbacks=[_Dice([0.5, 0.6, 0.7])], progress=False)  # fmt: skip
    assert stopper.mode == "max" and history.stop_reason is None and stopper.best == 0.7
    falling = EarlyStopping(patience=1)
    history = fit(torch.nn.Linear(3, 1), _linear_batches(2), epochs=3, monitor="val_dice",
                  early_stopping=falling, callbacks=[_Dice([0.7, 0.6, 0.5])], progress=False)  # fmt: skip
    assert len(history.epochs["val_dice"]) == 2 and "no improvement" in history.stop_reason
    loss = EarlyStopping(patience=1)
    fit(torch.nn.Linear(3, 1), _linear_batches(2), epochs=1, early_stopping=loss, progress=False)
    assert loss.mode == "min"  # train_loss goes down


def test_an_early_stopping_reused_in_a_second_fit_starts_afresh():
    from stabletrain import EarlyStopping

    stopper = EarlyStopping(patience=1)
    first = fit(torch.nn.Linear(3, 1), _linear_batches(2), epochs=3, monitor="val_dice",
                early_stopping=stopper, callbacks=[_Dice([0.7, 0.6, 0.5])], progress=False)  # fmt: skip
    assert "no improvement" in first.stop_reason and stopper.best == 0.7
    second = fit(torch.nn.Linear(3, 1), _linear_batches(2), epochs=3, monitor="val_dice",
                 early_stopping=stopper, callbacks=[_Dice([0.1, 0.2, 0.3])], progress=False)  # fmt: skip
    assert second.stop_reason is None and len(second.epochs["val_dice"]) == 3
    assert stopper.best == 0.3 and stopper.count == 3 and not stopper.stopped


def test_the_default_adam_takes_lr_and_lr_defaults_to_1e_3():
    history = fit(torch.nn.Linear(3, 1), _linear_batches(2), progress=False)
    assert history.steps["lr"][0] == 1e-3
    assert (
        fit(torch.nn.Linear(3, 1), _linear_batches(2), lr=0.5, progress=False).steps["lr"][0] == 0.5
    )


def test_a_metric_value_may_be_a_number_or_a_one_element_tensor():
    metrics = {"a": lambda o, t: 0.25, "b": lambda o, t: torch.tensor([0.5]), "c": lambda o, t: 1}
    history = fit(torch.nn.Linear(3, 1), _linear_batches(2), val_loader=_linear_batches(1),
                  metrics=metrics, progress=False)  # fmt: skip
    assert [history.epochs[k] for k in ("val_a", "val_b", "val_c")] == [[0.25], [0.5], [1.0]]


def _reference_accumulation(batches, epochs, accumulation, lr=0.1):
    """SGD by hand: per epoch, windows of ``accumulation`` batches, the last one shorter; each
    window's gradient is the mean over its own batches."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(epochs):
        for start in range(0, len(batches), accumulation):
            window = batches[start : start + accumulation]
            loss = sum(torch.nn.functional.mse_loss(model(x), y) for x, y in window) / len(window)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    return model


@pytest.mark.parametrize("guarded", [False, True])
def test_an_epochs_leftover_batches_are_a_shorter_accumulation(guarded):
    from stabletrain import StabilityGuard

    batches = _linear_batches(3)
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    settings = {"optimizer": optimizer, "accumulation_steps": 2}
    if guarded:
        settings = {"guard": StabilityGuard(model, optimizer, accumulation_steps=2)}
    history = fit(model, batches, epochs=2, progress=False, **settings)
    assert history.num_steps == 4 and all(history.steps["applied"])  # 2 + 1 windows an epoch
    assert history.steps["epoch"] == [0, 0, 1, 1]
    expected = _reference_accumulation(batches, epochs=2, accumulation=2)
    for a, b in zip(model.parameters(), expected.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_a_mid_epoch_resume_keeps_the_accumulation_windows(tmp_path):
    from stabletrain import StabilityGuard
    from stabletrain.checkpoint import CheckpointManager

    class Crash(Exception):
        pass

    class CrashAt(Callback):
        def on_step_end(self, ctx, record):
            if ctx.step == 5:
                raise Crash

    def run(folder, crash=False, resume=False):
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 1)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        guard = StabilityGuard(model, optimizer, accumulation_steps=2)
        manager = CheckpointManager(tmp_path / folder, strategy="epoch", every_n_steps=1,
                                    monitor="train_loss")  # fmt: skip
        history = fit(model, _linear_batches(5), epochs=2, guard=guard, checkpoints=manager,
                      resume=resume, callbacks=[CrashAt()] if crash else [], progress=False)  # fmt: skip
        return model, history, guard

    straight = run("straight")
    with pytest.raises(Crash):
        run("resumed", crash=True)  # windows [0, 1], [2, 3], [4]: dies after batch 3 of epoch 1
    resumed = run("resumed", resume=True)
    assert resumed[1].num_steps == straight[1].num_steps == 6
    assert resumed[1].steps["loss"] == straight[1].steps["loss"]
    assert resumed[2].applied == straight[2].applied == 6
    for a, b in zip(straight[0].parameters(), resumed[0].parameters(), strict=True):
        assert torch.equal(a, b)


def test_evaluate_runs_a_model_without_parameters_on_the_cpu():
    from stabletrain.loop import evaluate

    batches = [(torch.ones(2, 3), torch.zeros(2, 3))]
    scores = evaluate(torch.nn.Identity(), batches, torch.nn.MSELoss(), metrics={})
    assert scores == {"val_loss": 1.0}
