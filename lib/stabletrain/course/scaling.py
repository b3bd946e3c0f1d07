"""Notebook 14's experiments: the same 20 steps in one process and on ``torchrun`` ranks.

``python -m stabletrain.course.scaling OUT`` (under ``torchrun --nproc_per_node N``) trains a
GroupNorm and a BatchNorm U-Net with warmup + cosine and the guard, then the GroupNorm one again
with a NaN injected into one rank's loss, and saves each rank's results to ``OUT/rank<r>.pt``;
:func:`launch` runs it from a notebook and :func:`train` is one such run, also in one process."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from .. import distributed
from ..loop import fit
from ..models import TinyUNet
from ..schedulers import build_scheduler, lr_curve
from ..stability import StabilityGuard

STEPS, GLOBAL_BATCH = 20, 8


def dataset(n: int = STEPS * GLOBAL_BATCH) -> TensorDataset:
    """Noise images whose mask is a pixel rule (bright pixels): learnable in a few steps."""
    g = torch.Generator().manual_seed(0)
    images = torch.randn(n, 1, 16, 16, generator=g)
    return TensorDataset(images, (images > 0.5).float())


def loader(data: TensorDataset, *, batch: int = GLOBAL_BATCH, shuffle: bool = False) -> DataLoader:
    """One process: batches of ``batch``; in a process group each rank gets ``batch / world`` of
    every global batch from a ``DistributedSampler`` (``fit`` sets its epoch)."""
    world = distributed.world_size()
    if world == 1:
        return DataLoader(data, batch_size=batch, shuffle=shuffle)
    sampler = DistributedSampler(data, shuffle=shuffle, seed=0)
    return DataLoader(data, batch_size=batch // world, sampler=sampler)


class NaNOnRank:
    """A deliberate fault: BCE, but rank ``rank``'s loss is NaN at call ``step`` (from 0)."""

    def __init__(self, rank: int, step: int) -> None:
        self.rank, self.step, self.calls = rank, step, 0

    def __call__(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        loss = torch.nn.functional.binary_cross_entropy_with_logits(outputs, targets)
        bad = distributed.rank() == self.rank and self.calls == self.step
        self.calls += 1
        return loss * float("nan") if bad else loss


def train(norm: str = "group", *, loss_fn: Any = None, lr: float = 1e-2) -> dict[str, Any]:
    """``STEPS`` Adam steps (warmup 5, cosine, clip 1, guard) of a 1-level U-Net, wrapped in DDP
    in a process group; its parameters, the guard's counts and the LRs."""
    torch.manual_seed(0)  # the same initial weights on every rank and in one process
    net = TinyUNet(base_channels=4, depth=1, norm=norm)
    model = DDP(net) if distributed.is_distributed() else net
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    scheduler = build_scheduler(optimizer, type="warmup_cosine", warmup_steps=5, total_steps=STEPS)
    guard = StabilityGuard(model, optimizer, scheduler=scheduler, max_norm=1.0)
    history = fit(model, loader(dataset()), guard=guard, loss_fn=loss_fn, progress=False)
    params = {k: v.detach().clone() for k, v in net.state_dict().items()}
    counts = {"applied": guard.applied, "skipped": guard.skipped}
    return {"params": params, **counts, "lrs": history.steps["lr"], "loss": history.steps["loss"]}


def experiments() -> dict[str, dict[str, Any]]:
    """The runs the notebook compares, in this process (one rank of a group, or alone)."""
    out = {"group": train("group"), "batch": train("batch")}
    out["nan"] = train("group", loss_fn=NaNOnRank(rank=distributed.world_size() - 1, step=7))
    return out


def scaled_schedule(
    base_lr: float,
    reference_batch: int,
    global_batch: int,
    *,
    rule: str = "linear",
    warmup_steps: int = 0,
    total_steps: int = 100,
) -> list[float]:
    """Per-step LRs of a cosine schedule whose peak is :func:`~stabletrain.distributed.scale_lr`
    of ``base_lr``, after a linear warmup from ``base_lr`` (Goyal et al.'s gradual warmup; from the
    peak itself when a smaller batch scales the LR down)."""
    peak = distributed.scale_lr(base_lr, global_batch, reference_batch, rule=rule)
    config = {"type": "warmup_cosine", "warmup_steps": warmup_steps}
    config |= {"warmup_start_lr": min(base_lr, peak)} if warmup_steps else {}
    return lr_curve(config, total_steps, peak)


def launch(out: str | os.PathLike, nproc: int = 2, timeout: float = 120) -> list[dict]:
    """Run :func:`experiments` on ``nproc`` gloo ranks with ``torchrun``; every rank's results."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += [f"--nproc_per_node={nproc}", "-m", "stabletrain.course.scaling", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, timeout=timeout, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"torchrun failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return [torch.load(out / f"rank{r}.pt") for r in range(nproc)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="folder for rank<r>.pt")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    distributed.init_from_env("gloo")
    try:
        torch.save(experiments(), Path(args.out) / f"rank{distributed.rank()}.pt")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
