"""The library trains any model, not only the course's segmentation net: a digits
classifier, an MSE regressor and a character-level Transformer language model go through
``fit`` with the guard, a warmup schedule, early stopping, checkpoints with resume and
tracking; the loop's any-model parts (batches, default loss, metrics, settings) too."""

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from stabletrain.callbacks import Callback, EarlyStopping
from stabletrain.checkpoint import CheckpointManager
from stabletrain.loop import default_loss, evaluate, fit, split_batch, to_device
from stabletrain.schedulers import build_scheduler
from stabletrain.stability import StabilityGuard
from stabletrain.utils import seed_everything

TEXT = "the quick brown fox jumps over the lazy dog. " * 12


def _loader(*tensors, batch_size, shuffle, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        TensorDataset(*tensors), batch_size=batch_size, shuffle=shuffle, generator=generator
    )


def digits_task():
    datasets = pytest.importorskip("sklearn.datasets")
    digits = datasets.load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    train = _loader(x[:384], y[:384], batch_size=32, shuffle=True)
    val = _loader(x[1500:1628], y[1500:1628], batch_size=64, shuffle=False)

    def model():
        return nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 64, 10)
        )

    def accuracy(outputs, targets):
        return float((outputs.argmax(1) == targets).float().mean())

    return model, train, val, {"accuracy": accuracy}, "max"


def regression_task():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(320, 6, generator=g)
    y = x @ torch.linspace(-1.0, 2.0, 6).unsqueeze(1) + 0.1 * torch.randn(320, 1, generator=g)
    train = _loader(x[:256], y[:256], batch_size=32, shuffle=True)
    val = _loader(x[256:], y[256:], batch_size=64, shuffle=False)

    def model():
        return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 1))

    def mae(outputs, targets):
        return float((outputs - targets).abs().mean())

    return model, train, val, {"mae": mae}, "min"


class CharLM(nn.Module):
    """A one-layer causal Transformer over characters: (B, T) indices -> (B, T, V) logits."""

    def __init__(self, vocab: int, length: int, width: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.position = nn.Parameter(torch.zeros(length, width))
        layer = nn.TransformerEncoderLayer(width, 4, 64, dropout=0.0, batch_first=True)
        self.body = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.head = nn.Linear(width, vocab)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(length))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens) + self.position[: tokens.shape[1]]
        return self.head(self.body(h, mask=self.mask, is_causal=True))


def lm_task():
    chars = sorted(set(TEXT))
    ids = torch.tensor([chars.index(c) for c in TEXT])
    length = 16
    starts = torch.arange(0, len(ids) - length - 1, 4)
    x = torch.stack([ids[s : s + length] for s in starts])
    y = torch.stack([ids[s + 1 : s + length + 1] for s in starts])
    train = _loader(x[:96], y[:96], batch_size=16, shuffle=True)
    val = _loader(x[96:], y[96:], batch_size=32, shuffle=False)

    def accuracy(outputs, targets):
        return float((outputs.argmax(-1) == targets).float().mean())

    return (lambda: CharLM(len(chars), length)), train, val, {"accuracy": accuracy}, "max"


TASKS = {"digits": digits_task, "regression": regression_task, "char_lm": lm_task}


def _train(task, directory=None, *, epochs, resume=False, tracker=None, stopper=None):
    make_model, train, val, metrics, _ = TASKS[task]()
    seed_everything(0)
    train.generator.manual_seed(0)
    model = make_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    total = 4 * len(train)
    scheduler = build_scheduler(
        optimizer, {"type": "warmup_cosine", "warmup_steps": 5, "total_steps": total}
    )
    guard = StabilityGuard(
        model, optimizer, scheduler=scheduler, max_norm=1.0, on_nonfinite="rollback"
    )
    checkpoints = CheckpointManager(directory, strategy="epoch") if directory else None
    history = fit(
        model,
        train,
        val_loader=val,
        epochs=epochs,
        guard=guard,
        metrics=metrics,
        early_stopping=stopper,
        checkpoints=checkpoints,
        resume=resume,
        tracker=tracker,
        progress=False,
    )
    if checkpoints is not None:
        checkpoints.close()
    return history, model


@pytest.mark.parametrize("task", sorted(TASKS))
def test_any_model_trains_through_fit_with_guard_warmup_and_metrics(task):
    _, _, _, metrics, mode = TASKS[task]()
    stopper = EarlyStopping(patience=3)  # it reads val_loss, which goes down
    history, _ = _train(task, epochs=4, stopper=stopper)
    name = f"val_{next(iter(metrics))}"
    values = history.epochs[name]
    assert len(values) == 4 and all(math.isfinite(v) for v in values)
    assert history.epochs["val_loss"][-1] < history.epochs["val_loss"][0]
    better = values[-1] > values[0] if mode == "max" else values[-1] < values[0]
    assert better, (name, values)
    assert history.steps["lr"][0] < history.steps["lr"][5]  # the warmup ran
    assert not history.diverged and history.summary()["skipped_steps"] == 0


@pytest.mark.parametrize("task", sorted(TASKS))
def test_any_model_resumes_bit_exact(task, tmp_path):
    _, full = _train(task, epochs=3)
    _train(task, tmp_path, epochs=1)
    history, resumed = _train(task, tmp_path, epochs=3, resume=True)
    assert history.epochs["epoch"] == [0, 1, 2]
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_tracking_a_language_model_and_resuming_continues_the_same_run(tmp_path):
    pytest.importorskip("mlflow")
    from stabletrain.tracking import MLflowTracker

    uri = f"sqlite:///{(tmp_path / 'mlflow.db').as_posix()}"
    first = MLflowTracker("any-model", tracking_uri=uri, verbose=False, log_figures=False)
    _train("char_lm", tmp_path / "ckpt", epochs=1, tracker=first)
    second = MLflowTracker("any-model", tracking_uri=uri, verbose=False, log_figures=False)
    with pytest.warns(UserWarning, match="epochs"):  # epochs 1 -> 2 cannot be re-logged
        _train("char_lm", tmp_path / "ckpt", epochs=2, resume=True, tracker=second)
    assert second.run_id == first.run_id
    runs = second.client.search_runs([second.experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    accuracy = second.client.get_metric_history(first.run_id, "val_accuracy")
    assert len(accuracy) == 2  # both epochs, in one run


# -- the loop's any-model pieces ------------------------------------------------------------


def test_default_loss_follows_the_targets():
    assert isinstance(
        default_loss(torch.randn(4, 10), torch.randint(0, 10, (4,))), nn.CrossEntropyLoss
    )
    seg = default_loss(torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8)))
    assert isinstance(seg, nn.CrossEntropyLoss)
    mask = (torch.rand(2, 1, 8, 8) > 0.5).float()
    assert isinstance(default_loss(torch.randn(2, 1, 8, 8), mask), nn.BCEWithLogitsLoss)
    assert isinstance(default_loss(torch.randn(8, 1), torch.randn(8, 1)), nn.MSELoss)
    lm_out, lm_tgt = torch.randn(2, 5, 7), torch.randint(0, 7, (2, 5))
    lm = default_loss(lm_out, lm_tgt)
    expected = nn.functional.cross_entropy(lm_out.reshape(10, 7), lm_tgt.reshape(10))
    assert torch.allclose(lm(lm_out, lm_tgt), expected)


@pytest.mark.parametrize(
    ("outputs", "targets", "match"),
    [
        (torch.randn(8, 1), torch.randn(8), "must have the outputs' shape"),
        (torch.randn(8, 1), torch.randint(0, 2, (8,)), "class indices"),
        (torch.randn(8, 4), torch.randint(0, 4, (8, 3)), "class indices"),
        (torch.randn(8, 2), torch.ones(8, 2, dtype=torch.bool), "float 0/1"),
    ],
)
def test_default_loss_refuses_a_mismatch(outputs, targets, match):
    with pytest.raises(ValueError, match=match):
        default_loss(outputs, targets)


def test_dict_batches_nested_inputs_and_batch_fn():
    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 1), nn.Linear(2, 1)

        def forward(self, left, right):
            return self.a(left) + self.b(right)

    g = torch.Generator().manual_seed(0)
    batches = [
        {"inputs": (torch.randn(4, 3, generator=g), torch.randn(4, 2, generator=g)),
         "targets": torch.randn(4, 1, generator=g)}
        for _ in range(3)
    ]  # fmt: skip
    history = fit(TwoInputs(), batches, epochs=2, progress=False)
    assert history.num_steps == 6
    pairs = [((b["inputs"][0], b["inputs"][1]), b["targets"]) for b in batches]
    flipped = [{"y": t, "x": x} for x, t in pairs]
    history = fit(TwoInputs(), flipped, batch_fn=lambda b: (b["x"], b["y"]), progress=False)
    assert history.num_steps == 3
    with pytest.raises(TypeError, match="batch_fn"):
        split_batch({"x": 1, "y": 2})
    moved = to_device({"a": [torch.ones(1), (torch.zeros(1), "text")]}, torch.device("cpu"))
    assert moved["a"][1][1] == "text"


def test_evaluate_scores_non_segmentation_models_without_dice():
    _, _, val, metrics, _ = regression_task()
    model = nn.Linear(6, 1)
    assert set(evaluate(model, val)) == {"val_loss"}
    assert set(evaluate(model, val, metrics=metrics)) == {"val_loss", "val_mae"}


def test_a_monitored_metric_added_by_a_callback_is_seen_by_early_stopping():
    make_model, train, val, _, _ = regression_task()

    class Negated(Callback):
        def on_validation_end(self, ctx, metrics):
            metrics["neg_val_loss"] = -metrics["val_loss"]

    stopper = EarlyStopping(patience=1, mode="max")
    history = fit(
        make_model(), train, val_loader=val, epochs=3, callbacks=[Negated()],
        early_stopping=stopper, monitor="neg_val_loss", progress=False,
    )  # fmt: skip
    assert history.epochs["neg_val_loss"] == [-v for v in history.epochs["val_loss"]]
    assert stopper.count == 3


def test_a_missing_monitored_metric_is_an_error_at_the_first_epoch():
    make_model, train, _, _, _ = regression_task()
    with pytest.raises(ValueError, match="monitor='val_loss' is not among"):
        fit(make_model(), train, epochs=3, early_stopping=EarlyStopping(patience=1),
            monitor="val_loss", progress=False)  # fmt: skip
    # the default follows what exists: train_loss without validation
    history = fit(make_model(), train, epochs=2, early_stopping=EarlyStopping(patience=5),
                  progress=False)  # fmt: skip
    assert history.num_steps == 2 * len(train)


def test_settings_given_to_fit_and_to_the_guard_must_agree():
    model = nn.Linear(6, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1)
    guard = StabilityGuard(model, optimizer)
    _, train, _, _, _ = regression_task()
    with pytest.raises(ValueError, match="scheduler"):
        fit(model, train, guard=guard, scheduler=scheduler, progress=False)
    with pytest.raises(ValueError, match="accumulation_steps"):
        fit(model, train, guard=guard, accumulation_steps=4, progress=False)
    from stabletrain.amp import MixedPrecision

    with pytest.raises(ValueError, match="amp"):
        fit(model, train, guard=guard, amp=MixedPrecision("bfloat16", device_type="cpu"),
            progress=False)  # fmt: skip
    # the same objects in both places are fine, and the guard's scheduler is stepped
    guard = StabilityGuard(model, optimizer, scheduler=scheduler)
    fit(model, train, guard=guard, scheduler=scheduler, epochs=1, progress=False)
    assert scheduler.last_epoch == len(train)


def test_amp_given_only_to_the_guard_autocasts_the_forward_pass():
    from stabletrain.amp import MixedPrecision

    seen = []

    class Probe(nn.Linear):
        def forward(self, x):
            seen.append(torch.is_autocast_enabled("cpu"))
            return super().forward(x)

    model = Probe(6, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    amp = MixedPrecision("bfloat16", device_type="cpu")
    _, train, _, _, _ = regression_task()
    fit(model, train, guard=StabilityGuard(model, optimizer, amp=amp), progress=False)
    assert seen and all(seen)


def test_accumulation_closes_its_window_at_the_end_of_each_epoch():
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(4, 3, generator=g), torch.randn(4, 1, generator=g)) for _ in range(3)]
    model = nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    steps = []
    original = optimizer.step

    def counting_step(*args, **kwargs):
        steps.append(1)
        return original(*args, **kwargs)

    optimizer.step = counting_step
    history = fit(model, batches, optimizer=optimizer, epochs=2, accumulation_steps=2,
                  progress=False)  # fmt: skip
    # 3 batches, windows of 2: steps after batches 2 and 3 in each epoch
    assert len(steps) == 4 == history.num_steps
    assert all(history.steps["applied"])


@pytest.mark.parametrize("task", sorted(TASKS))
def test_the_range_test_runs_any_model_through_the_training_update(task):
    from stabletrain.amp import MixedPrecision
    from stabletrain.lr_finder import lr_range_test

    make_model, train, _, _, _ = TASKS[task]()
    seed_everything(0)
    model = make_model()
    autocast_seen = []
    model.register_forward_hook(lambda *_: autocast_seen.append(torch.is_autocast_enabled("cpu")))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    amp = MixedPrecision("bfloat16", device_type="cpu")
    guard = StabilityGuard(model, optimizer, amp=amp, accumulation_steps=2, max_norm=1.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = lr_range_test(model, None, None, train, update=guard, num_iters=8, end_lr=0.1)
    assert len(result.lrs) == 8 and all(math.isfinite(v) for v in result.raw_losses)
    assert len(autocast_seen) == 2 * 9 and all(autocast_seen)  # 2 micro-batches a step
    assert guard.applied == 0 and amp.steps == 0  # the update's state was put back
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    with pytest.raises(ValueError, match="max_grad_norm"):
        lr_range_test(model, None, None, train, update=guard, max_grad_norm=1.0)


def test_default_metrics_follow_the_targets():
    _, _, val, metrics, _ = digits_task()
    model = TASKS["digits"]()[0]()
    scores = evaluate(model, val)
    assert set(scores) == {"val_loss", "val_accuracy"}
    assert scores["val_accuracy"] == pytest.approx(
        evaluate(model, val, metrics=metrics)["val_accuracy"]
    )
    lm_model, _, lm_val, _, _ = lm_task()
    assert "val_accuracy" in evaluate(lm_model(), lm_val)


def test_torchmetrics_style_objects_are_reset_updated_and_computed_per_evaluation():
    class MeanAbsError:  # the reset/update/compute protocol of torchmetrics
        def reset(self):
            self.total, self.count = 0.0, 0

        def update(self, outputs, targets):
            self.total += float((outputs - targets).abs().sum())
            self.count += targets.numel()

        def compute(self):
            return self.total / self.count

    _, _, val, metrics, _ = regression_task()
    model = nn.Linear(6, 1)
    metric = MeanAbsError()
    metric.reset()
    metric.update(torch.zeros(1), torch.full((1,), 1e6))  # stale state must not leak in
    first = evaluate(model, val, metrics={"mae": metric})["val_mae"]
    again = evaluate(model, val, metrics={"mae": metric})["val_mae"]
    assert first == pytest.approx(evaluate(model, val, metrics=metrics)["val_mae"]) == again
