"""Schedulers: our LRs against the closest peer, and the per-step time ratio to torch.

For every type of ``stabletrain.schedulers`` this builds the closest torch
equivalent (torch's built-in schedulers; ``timm`` and ``transformers`` are tried
and reported when they cannot be imported), steps both on optimizers with three
parameter groups of different base LRs, and prints

- the largest absolute LR difference over the run (all groups, all steps);
- the time of one ``scheduler.step()``, ours and torch's, measured interleaved
  in one process (median of several rounds), and their ratio.

Run from the repository root:

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_schedulers.py [--steps 2000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import importlib
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.optim import lr_scheduler as tls

from stabletrain.schedulers import build_scheduler, with_warmup

BASES = (0.1, 0.03, 0.5)
Maker = Callable[[torch.optim.Optimizer, int], Any]


def make_optimizer() -> torch.optim.Optimizer:
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in BASES]
    opt = torch.optim.SGD([{"params": [p], "lr": b} for p, b in zip(params, BASES)], momentum=0.9)
    return opt


def build(maker: Maker, total: int) -> tuple[torch.optim.Optimizer, Any]:
    opt = make_optimizer()
    sched = maker(opt, total)
    opt.step()  # no gradients: a no-op that keeps torch's step-order warning quiet
    return opt, sched


def peers_status() -> list[str]:
    lines = []
    for name in ("timm", "transformers"):
        try:
            importlib.import_module(name)
            lines.append(
                f"{name}: importable, but not compared (torch's built-ins are the reference)"
            )
        except Exception as error:  # ImportError, or a version clash raised at import time
            lines.append(f"{name}: could not be imported ({type(error).__name__}: {error})"[:160])
    return lines


def cases(total: int) -> list[tuple[str, str, Maker, Maker, bool]]:
    """(type, peer name, our maker, peer maker, metric-driven)."""
    w = total // 10

    def ours(**config: Any) -> Maker:
        return lambda opt, t: build_scheduler(opt, {"total_steps": t, **config})

    def seq_warmup_cosine(opt, t):
        return tls.SequentialLR(
            opt,
            [tls.LinearLR(opt, 0.01, 1.0, total_iters=w), tls.CosineAnnealingLR(opt, t - w)],
            milestones=[w],
        )

    return [
        (
            "constant",
            "ConstantLR(factor=1)",
            ours(type="constant"),
            lambda o, t: tls.ConstantLR(o, factor=1.0, total_iters=0),
            False,
        ),
        (
            "warmup_cosine (W=0)",
            "CosineAnnealingLR",
            ours(type="warmup_cosine"),
            lambda o, t: tls.CosineAnnealingLR(o, t),
            False,
        ),
        (
            f"warmup_cosine (W={w})",
            "LinearLR+CosineAnnealingLR in SequentialLR",
            ours(type="warmup_cosine", warmup_steps=w),
            seq_warmup_cosine,
            False,
        ),
        (
            "cosine_restarts",
            "CosineAnnealingWarmRestarts(T_0, T_mult=2)",
            ours(type="cosine_restarts", first_cycle_steps=total // 16, t_mult=2),
            lambda o, t: tls.CosineAnnealingWarmRestarts(o, total // 16, 2),
            False,
        ),
        (
            "onecycle",
            "OneCycleLR",
            ours(type="onecycle"),
            lambda o, t: tls.OneCycleLR(o, max_lr=list(BASES), total_steps=t),
            False,
        ),
        (
            "polynomial",
            "PolynomialLR(power=2)",
            ours(type="polynomial", power=2.0),
            lambda o, t: tls.PolynomialLR(o, total_iters=t, power=2.0),
            False,
        ),
        (
            "exponential",
            "ExponentialLR",
            ours(type="exponential", gamma=0.999),
            lambda o, t: tls.ExponentialLR(o, 0.999),
            False,
        ),
        (
            "step",
            "StepLR",
            ours(type="step", step_size=total // 8, gamma=0.5),
            lambda o, t: tls.StepLR(o, total // 8, 0.5),
            False,
        ),
        (
            "plateau",
            "ReduceLROnPlateau",
            ours(type="plateau", patience=3, factor=0.5),
            lambda o, t: tls.ReduceLROnPlateau(o, patience=3, factor=0.5),
            True,
        ),
        (
            "adaptive (no spikes)",
            "ReduceLROnPlateau(patience-1, threshold=0)",
            ours(type="adaptive", patience=4, spike_threshold=1e9),
            lambda o, t: tls.ReduceLROnPlateau(o, patience=3, factor=0.5, threshold=0.0),
            True,
        ),
        (
            f"with_warmup(CosineAnnealingLR, {w})",
            "LinearLR+CosineAnnealingLR in SequentialLR",
            lambda o, t: with_warmup(tls.CosineAnnealingLR(o, t - w), w),
            seq_warmup_cosine,
            False,
        ),
    ]


def metrics_for(total: int) -> list[float]:
    rng = random.Random(0)
    return [1.0 / (1.0 + 0.01 * k) + 0.05 * rng.random() for k in range(total)]


def trajectory(maker: Maker, total: int, metric_driven: bool) -> list[list[float]]:
    opt, sched = build(maker, total)
    metrics = metrics_for(total)
    out = []
    for k in range(total):
        out.append([float(g["lr"]) for g in opt.param_groups])
        if metric_driven:
            if not isinstance(sched, tls.ReduceLROnPlateau):
                sched.step()
            sched.step(metrics[k])
        elif k < total - 1 or not isinstance(sched, tls.OneCycleLR):  # torch raises past T
            sched.step()
    return out


def time_steps(maker: Maker, total: int, metric_driven: bool) -> float:
    """Seconds per ``step()`` (metric-driven types: per ``step(metric)``, the call they share)."""
    _, sched = build(maker, total)
    n = total - 1
    if metric_driven:
        metrics = metrics_for(total)
        start = time.perf_counter()
        for k in range(n):
            sched.step(metrics[k])
    else:
        start = time.perf_counter()
        for _ in range(n):
            sched.step()
    return (time.perf_counter() - start) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000, help="schedule length in steps")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(
        f"torch {torch.__version__}, {args.steps} steps, 3 parameter groups, {args.rounds} rounds"
    )
    for line in peers_status():
        print("peer", line)
    print()
    header = f"{'type':38s} {'peer':44s} {'max |Δlr|':>10s} {'ours µs':>8s} {'torch µs':>8s} {'ratio':>6s}"
    print(header)
    print("-" * len(header))
    for name, peer, ours, theirs, metric_driven in cases(args.steps):
        a = trajectory(ours, args.steps, metric_driven)
        b = trajectory(theirs, args.steps, metric_driven)
        diff = max(abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb))
        t_ours, t_torch = [], []
        for _ in range(args.rounds):  # interleaved, so load changes hit both alike
            t_ours.append(time_steps(ours, args.steps, metric_driven))
            t_torch.append(time_steps(theirs, args.steps, metric_driven))
        mo, mt = statistics.median(t_ours), statistics.median(t_torch)
        print(f"{name:38s} {peer:44s} {diff:10.2e} {mo * 1e6:8.2f} {mt * 1e6:8.2f} {mo / mt:6.2f}")
    print(
        "\nratio = our time per call / torch's (lower is faster); metric-driven rows time "
        "step(metric). The adaptive row compares the patience rule only (its spike and NaN "
        "rules have no torch equivalent); ReduceLROnPlateau's LRs are matched up to its eps."
    )


if __name__ == "__main__":
    main()
