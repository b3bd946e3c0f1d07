import math

import pytest
import torch

from stabletrain.lr_finder import SUGGESTION_RULES, suggest_lr
from stabletrain.tuning import lr_sweep, range_test, tuning_run


def _task(n=64):
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, 2, generator=g) + 2.0 * y[:, None]
    data = torch.utils.data.TensorDataset(x, y)
    train = torch.utils.data.DataLoader(
        data, batch_size=16, shuffle=True, generator=torch.Generator()
    )
    val = torch.utils.data.DataLoader(data, batch_size=64)
    return (lambda: torch.nn.Linear(2, 2)), train, val


def test_a_tuning_run_is_seeded_and_reports_its_monitor():
    model_fn, train, val = _task()
    a = tuning_run(model_fn, train, val, lr=0.1, steps=10, monitor="val_accuracy")
    b = tuning_run(model_fn, train, val, lr=0.1, steps=10, monitor="val_accuracy")
    c = tuning_run(model_fn, train, val, lr=0.1, steps=10, seed=1, monitor="val_accuracy")
    assert a.history.steps["loss"] == b.history.steps["loss"] != c.history.steps["loss"]
    assert a.history.num_steps == 10 and a.diverged_step is None
    assert a.final_metric == a.history.epochs["val_accuracy"][-1]


def test_a_run_that_blows_up_is_marked_diverged_and_stopped():
    model_fn, train, val = _task()
    run = tuning_run(
        model_fn,
        train,
        val,
        lr=1e4,
        steps=40,
        optimizer_fn=lambda m, lr: torch.optim.SGD(m.parameters(), lr=lr),
    )
    assert run.diverged_step is not None and run.diverged_step < 39
    assert math.isnan(run.final_metric) and run.history.num_steps == run.diverged_step + 1


def test_a_sweep_marks_divergent_points_and_picks_a_stable_best():
    model_fn, train, val = _task()
    sgd = lambda m, lr: torch.optim.SGD(m.parameters(), lr=lr)  # noqa: E731
    result = lr_sweep(
        model_fn, train, val, lrs=[0.1, 1e4], steps=20, seeds=(0, 1), optimizer_fn=sgd
    )
    rows = {r["lr"]: r for r in result.rows}
    assert rows[1e4]["diverged"] == 2 and rows[0.1]["diverged"] == 0
    assert result.mode == "min" and result.best["lr"] == 0.1  # divergent points never win
    fig = result.plot(suggestion=0.3)
    assert fig.axes[0].get_xscale() == "log"


def test_range_test_on_a_fresh_model_leaves_nothing_behind():
    model_fn, train, _ = _task()
    result = range_test(model_fn, train, start_lr=1e-4, end_lr=10.0, num_iters=30)
    assert len(result.lrs) > 3
    for rule in SUGGESTION_RULES:
        assert isinstance(result.suggest(rule), float)


def test_suggestion_rules_follow_fastai():
    lrs = [10 ** (k / 10) for k in range(-40, 1)]
    losses = [1.0 / (1 + math.exp(8 * (math.log10(lr) + 2))) + 0.1 for lr in lrs]  # one descent
    losses[-5:] = [0.2, 0.4, 0.8, 1.6, 3.2]  # then a blow-up
    steep, _ = suggest_lr(lrs, losses, "steep")
    minimum, _ = suggest_lr(lrs, losses, "minimum")
    valley, (low, high) = suggest_lr(lrs, losses, "valley")
    k = min(range(len(losses)), key=losses.__getitem__)
    assert minimum == pytest.approx(lrs[k] / 10)
    assert 1e-3 < steep < 1e-1 and low < valley < high <= lrs[k] * (1 + 1e-9)
    with pytest.raises(ValueError, match="rule"):
        suggest_lr(lrs, losses, "median")


def test_a_sweep_takes_numpy_arrays_like_lists():
    np = pytest.importorskip("numpy")
    model_fn, train, val = _task()
    grid = dict(steps=6, warmups=[0, 2], seeds=[0])
    lists = lr_sweep(model_fn, train, val, lrs=[0.1, 0.01], **grid)
    arrays = lr_sweep(
        model_fn,
        train,
        val,
        lrs=np.array([0.1, 0.01]),
        steps=6,
        warmups=np.array([0, 2]),
        seeds=np.array([0]),
    )
    assert [r.final_metric for r in arrays.runs] == [r.final_metric for r in lists.runs]
    assert [(r.lr, r.warmup_steps, r.seed) for r in arrays.runs] == [
        (r.lr, r.warmup_steps, r.seed) for r in lists.runs
    ]
