"""A training process for the SIGKILL resume test in ``test_checkpoint.py`` (not a test).

    python tests/checkpoint_worker.py OUT [--dir D] [--every-n-steps N]
        [--kill-on-save K] [--kill-at-step S]

Trains a tiny TinyUNet for ``EPOCHS`` epochs on a few shapes images, resuming
from ``D`` when it holds checkpoints, and writes the final parameters and the
per-step losses to ``OUT``. ``--kill-on-save K`` sends SIGKILL to this process
half-way through writing the K-th checkpoint file; ``--kill-at-step S`` sends
it right after optimizer step S. Both are real kills: no handler, no cleanup.
"""

from __future__ import annotations

import argparse
import os
import signal

import torch

from stabletrain import checkpoint
from stabletrain.callbacks import Callback
from stabletrain.data import make_loaders
from stabletrain.loop import fit
from stabletrain.models import TinyUNet
from stabletrain.utils import seed_everything

EPOCHS = 3


def _kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class _DyingFile:
    """The file ``torch.save`` writes to, killing this process once 4 kB of it are written."""

    def __init__(self, file) -> None:
        self.file = file

    def write(self, data) -> int:
        written = self.file.write(data)
        if self.file.tell() > 4096:  # part of the file is on disk, the rest never will be
            self.file.flush()
            _kill()
        return written

    def flush(self) -> None:
        self.file.flush()


def _kill_during_save(k: int) -> None:
    """Make the k-th checkpoint write die after some bytes reached the disk."""
    original_write, original_save = checkpoint.CheckpointManager._write, torch.save
    calls = 0

    def write(self, path, payload, kept, dropped):
        nonlocal calls
        calls += 1
        if calls == k:
            torch.save = lambda obj, f: original_save(obj, _DyingFile(f))
        return original_write(self, path, payload, kept, dropped)

    checkpoint.CheckpointManager._write = write


class KillAtStep(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, ctx, record) -> None:
        if ctx.step == self.step:
            _kill()


def train(out, directory=None, every_n_steps=None, kill_at_step=None) -> None:
    """Train ``EPOCHS`` epochs (resuming from ``directory`` if it holds checkpoints)."""
    train_loader, val = make_loaders(num_train=24, num_val=8, batch_size=8, image_size=32, seed=3)
    seed_everything(0)
    train_loader.generator.manual_seed(0)
    model = TinyUNet(base_channels=4, depth=2, attention="cbam")
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, 3e-3, total_steps=EPOCHS * 3)
    manager = None
    if directory:
        manager = checkpoint.CheckpointManager(
            directory, strategy="epoch", max_keep=2, every_n_steps=every_n_steps
        )
    history = fit(
        model,
        train_loader,
        val_loader=val,
        epochs=EPOCHS,
        optimizer=optimizer,
        scheduler=scheduler,
        checkpoints=manager,
        resume=manager is not None,
        callbacks=[KillAtStep(kill_at_step)] if kill_at_step else [],
        progress=False,
    )
    torch.save({"model": model.state_dict(), "losses": history.steps["loss"]}, out)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--dir")
    parser.add_argument("--every-n-steps", type=int)
    parser.add_argument("--kill-on-save", type=int)
    parser.add_argument("--kill-at-step", type=int)
    args = parser.parse_args()
    if args.kill_on_save:
        _kill_during_save(args.kill_on_save)
    train(args.out, args.dir, args.every_n_steps, args.kill_at_step)


if __name__ == "__main__":
    main()
