"""Bodies of the multi-process tests in ``test_distributed.py``: each runs in every rank of a
real gloo process group on the CPU and writes what it measured to ``<tmp>/rank<r>.pt``."""

from __future__ import annotations

import os
import signal
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, TensorDataset

from stabletrain import Callback, CheckpointManager, StabilityGuard, TinyUNet, fit
from stabletrain.course import scaling
from stabletrain.schedulers import build_scheduler


def entry(target: str, rank: int, world: int, port: int, tmp: str, args: tuple) -> None:
    """One rank: join the group, run ``target``, leave."""
    os.environ |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    os.environ |= {"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank)}
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    try:
        result = globals()[target](rank, world, Path(tmp), *args)
        torch.save(result, Path(tmp) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def equivalence(rank: int, world: int, tmp: Path) -> dict:
    return scaling.train("group")


def nan_on_one_rank(rank: int, world: int, tmp: Path, step: int) -> dict:
    return scaling.train("group", loss_fn=scaling.NaNOnRank(1, step))


class _NaNValueOnRank(scaling.NaNOnRank):
    """A deliberate fault in the loss's *value* only (a NaN constant added: the gradients stay
    finite), on one rank: only an agreement between the ranks makes both skip."""

    def __call__(self, outputs, targets):
        bad = dist.get_rank() == self.rank and self.calls == self.step
        self.calls += 1
        loss = torch.nn.functional.binary_cross_entropy_with_logits(outputs, targets)
        return loss + float("nan") if bad else loss


def nan_value_on_one_rank(rank: int, world: int, tmp: Path, step: int) -> dict:
    return scaling.train("group", loss_fn=_NaNValueOnRank(1, step))


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return TinyUNet(base_channels=4, depth=1, norm="group")


def plateau_lrs(rank: int, world: int, tmp: Path) -> dict:
    """Each rank validates on other data, so the local ``val_loss`` differs; the LRs must not."""
    net = DDP(model())
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    scheduler = build_scheduler(optimizer, type="plateau", patience=0, factor=0.5)
    data = scaling.dataset(64)
    g = torch.Generator().manual_seed(100 + rank)
    val = TensorDataset(torch.randn(16, 1, 16, 16, generator=g) * (1 + 3 * rank),
                        torch.ones(16, 1, 16, 16) * rank)  # fmt: skip
    history = fit(
        net, scaling.loader(data), val_loader=DataLoader(val, batch_size=8), epochs=4,
        optimizer=optimizer, scheduler=scheduler, progress=False,
    )  # fmt: skip
    return {"lrs": history.steps["lr"], "val_loss": history.epochs["val_loss"]}


class _KillAt(Callback):
    """Kills this process (SIGKILL, no clean-up) at global step ``step`` on rank ``rank``."""

    def __init__(self, rank: int, step: int) -> None:
        self.rank, self.step = rank, step

    def on_step_end(self, ctx, record) -> None:
        if dist.get_rank() == self.rank and ctx.step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class _CountSteps(Callback):
    """The optimizer steps this process ran (a resumed run runs only the rest)."""

    steps = 0

    def on_step_end(self, ctx, record) -> None:
        self.steps += 1


def _recording_writes(tmp: Path) -> None:
    """Record every checkpoint write of this rank in ``writes-rank<r>.txt``."""
    from stabletrain import checkpoint

    original = checkpoint._atomic_write
    log = tmp / f"writes-rank{dist.get_rank()}.txt"

    def recorded(path, write, **kwargs):
        with open(log, "a") as f:
            f.write(f"{path}\n")
        return original(path, write, **kwargs)

    checkpoint._atomic_write = recorded


def resumable(rank: int, world: int, tmp: Path, folder: str, phase: str) -> dict:
    """Two shuffled epochs with mid-epoch checkpoints; ``phase``: ``killed`` (rank 1 dies at step
    26, after the mid-epoch checkpoint of step 24), ``resumed`` (from the folder) or ``whole`` (uninterrupted)."""
    _recording_writes(tmp)
    net = DDP(model())
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    scheduler = build_scheduler(optimizer, type="warmup_cosine", warmup_steps=5, total_steps=40)
    guard = StabilityGuard(net, optimizer, scheduler=scheduler, max_norm=1.0)
    manager = CheckpointManager(folder, strategy="epoch", every_n_steps=4, monitor="train_loss")
    counter = _CountSteps()
    callbacks = [counter, *([_KillAt(1, 26)] if phase == "killed" else [])]
    fit(
        net, scaling.loader(scaling.dataset(), shuffle=True), guard=guard, epochs=2, progress=False,
        checkpoints=manager, resume=phase == "resumed", callbacks=callbacks,
    )  # fmt: skip
    manager.close()
    params = {k: v.detach().clone() for k, v in net.module.state_dict().items()}
    return {"params": params, "steps_here": counter.steps}


def range_test(rank: int, world: int, tmp: Path) -> dict:
    """Each rank sweeps on its own half of the batches; the curve and suggestion must agree."""
    from stabletrain import lr_range_test

    net = DDP(model())
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    result = lr_range_test(
        net, optimizer, None, scaling.loader(scaling.dataset(), shuffle=True), num_iters=15
    )
    return {
        "losses": result.losses,
        "suggestion": result.suggestion,
        "stop": result.stop_reason,
        "raw": result.raw_losses,
    }
