"""Checkpoint write/read cost: plain ``torch.save``/``torch.load`` vs ``CheckpointManager``.

On a ~50 MB state (ten float32 tensors of 5.2 MB), interleaved in one process:

- ``torch.save(state, path)``: the peer (no fsync, no checksum, not atomic);
- our durable save: payload checksum (CRC-32, stored in the file) + temporary file + fsync +
  ``os.replace`` + fsync of the folder + manifest;
- our background save: the time ``save()`` blocks the training loop (copy to
  reused CPU buffers), then the write finishes in a thread (not timed);
- ``torch.load(path, weights_only=True)`` vs our checksum-verified load.

Goals (issue 6): durable save <= 2.2x plain ``torch.save``; background save
blocking <= 0.3x plain ``torch.save``.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_checkpoint.py [--repeats 9] [--dir D]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from stabletrain.checkpoint import CheckpointManager


class State:
    """A stand-in for a model: ``state_dict``/``load_state_dict`` over a dict of tensors."""

    def __init__(self, megabytes: float) -> None:
        numel = int(megabytes * 2**20 / 4 / 10)
        generator = torch.Generator().manual_seed(0)
        self.tensors = {
            f"layer{i}.weight": torch.randn(numel, generator=generator) for i in range(10)
        }

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.tensors

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.loaded = state


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--megabytes", type=float, default=50.0)
    parser.add_argument("--dir", default=None, help="folder for the files (default: a temp dir)")
    args = parser.parse_args()

    state = State(args.megabytes)
    size = sum(t.numel() * t.element_size() for t in state.tensors.values()) / 2**20
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        plain_path = root / "plain.pt"
        durable = CheckpointManager(root / "durable", strategy="epoch", max_keep=1)
        background = CheckpointManager(
            root / "background", strategy="epoch", max_keep=1, async_save=True
        )
        times: dict[str, list[float]] = {k: [] for k in ("plain", "durable", "blocked", "async")}
        loads: dict[str, list[float]] = {"torch.load": [], "ours": []}
        # warm-up: first writes allocate buffers and files
        torch.save(state.state_dict(), plain_path)
        durable.save(0, model=state)
        background.save(0, model=state)
        background.wait()

        def plain() -> None:
            times["plain"].append(_timed(lambda: torch.save(state.state_dict(), plain_path)))

        def durable_save(epoch: int) -> None:
            times["durable"].append(_timed(lambda: durable.save(epoch, model=state)))

        def background_save(epoch: int) -> None:
            start = time.perf_counter()
            background.save(epoch, model=state)
            times["blocked"].append(time.perf_counter() - start)
            background.wait()
            times["async"].append(time.perf_counter() - start)

        for epoch in range(1, args.repeats + 1):
            # rotate the order: a save right after another competes with its disk writeback
            contenders = [
                plain,
                lambda e=epoch: durable_save(e),
                lambda e=epoch: background_save(e),
            ]
            shift = epoch % len(contenders)
            for run in contenders[shift:] + contenders[:shift]:
                run()
            loads["torch.load"].append(
                _timed(lambda: torch.load(plain_path, weights_only=True, map_location="cpu"))
            )
            loads["ours"].append(_timed(lambda: durable.load("latest", model=State(0.001))))

    med = {k: statistics.median(v) for k, v in {**times, **loads}.items()}
    print(f"state: {size:.1f} MB, {args.repeats} interleaved repeats, medians")
    print(f"  torch.save (plain)            {med['plain'] * 1e3:7.1f} ms   1.00x")
    for key, label in (
        ("durable", "durable save (ours)"),
        ("blocked", "background save: loop blocked"),
        ("async", "background save: until written"),
    ):
        print(f"  {label:<30}{med[key] * 1e3:7.1f} ms   {med[key] / med['plain']:.2f}x")
    print(f"  torch.load (weights_only)     {med['torch.load'] * 1e3:7.1f} ms   1.00x")
    ratio = med["ours"] / med["torch.load"]
    print(f"  verified load (ours)          {med['ours'] * 1e3:7.1f} ms   {ratio:.2f}x")
    print(
        f"goals: durable <= 2.2x -> {med['durable'] / med['plain']:.2f}x; "
        f"blocked <= 0.3x -> {med['blocked'] / med['plain']:.2f}x"
    )


if __name__ == "__main__":
    main()
