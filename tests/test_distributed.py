"""Every stability piece under torch.distributed, with real processes (gloo on the CPU): DDP on
two ranks matches one process, a NaN on one rank is skipped by both, metric-driven LRs agree, and
a killed two-rank run resumes bit for bit. Each launch is bounded in time: a hang fails."""

from __future__ import annotations

import math
import multiprocessing as mp
import socket
import sys
import time
from pathlib import Path

import ddp_workers
import pytest
import torch
import torch.distributed as dist

from stabletrain import distributed
from stabletrain.course import scaling

pytestmark = pytest.mark.skipif(
    not dist.is_available() or sys.platform == "win32", reason="needs torch.distributed (gloo)"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(target: str, tmp: Path, *args, world: int = 2, timeout: float = 120) -> list[dict]:
    """Run ``ddp_workers.<target>`` on ``world`` ranks; their results, or fail on a hang."""
    tmp.mkdir(parents=True, exist_ok=True)
    ctx, port = mp.get_context("spawn"), _free_port()
    procs = [
        ctx.Process(target=ddp_workers.entry, args=(target, r, world, port, str(tmp), args))
        for r in range(world)
    ]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    hung = [r for r, p in enumerate(procs) if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    assert not hung, f"ranks {hung} still running after {timeout:.0f} s (a hang)"
    launch.exitcodes = [p.exitcode for p in procs]
    return [torch.load(tmp / f"rank{r}.pt") if (tmp / f"rank{r}.pt").exists() else None
            for r in range(world)]  # fmt: skip


def _max_difference(a: dict, b: dict) -> float:
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def test_outside_a_process_group_everything_is_one_process():
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    assert distributed.any_rank(torch.tensor(True)) and not distributed.any_rank(False)
    assert distributed.mean_across_ranks(torch.tensor(2.5)) == 2.5
    assert distributed.reduce_metrics({"a": 1.0, "b": "x"}) == {"a": 1.0, "b": "x"}
    assert distributed.broadcast("mine") == "mine" and distributed.gather(3) == [3]


def test_scale_lr_rules_and_bad_input():
    assert distributed.scale_lr(0.1, 1024, 256) == pytest.approx(0.4)
    assert distributed.scale_lr(0.1, 1024, 256, rule="sqrt") == pytest.approx(0.2)
    with pytest.raises(ValueError, match="rule"):
        distributed.scale_lr(0.1, 512, 256, rule="cubic")
    with pytest.raises(ValueError, match="global_batch"):
        distributed.scale_lr(0.1, 0, 256)


def test_two_ranks_on_half_batches_match_one_process_on_the_whole(tmp_path):
    one = scaling.train("group")
    ranks = launch("equivalence", tmp_path)
    assert launch.exitcodes == [0, 0]
    assert _max_difference(ranks[0]["params"], ranks[1]["params"]) == 0.0  # DDP: in lockstep
    assert _max_difference(ranks[0]["params"], one["params"]) < 1e-4  # float32 reduction order
    assert ranks[0]["applied"] == one["applied"] == scaling.STEPS
    assert ranks[0]["lrs"] == pytest.approx(one["lrs"])


@pytest.mark.parametrize("fault", ["nan_on_one_rank", "nan_value_on_one_rank"])
def test_a_nan_on_one_rank_is_skipped_by_every_rank(tmp_path, fault):
    ranks = launch(fault, tmp_path, 7)
    assert launch.exitcodes == [0, 0]
    assert [r["skipped"] for r in ranks] == [1, 1]
    assert [r["applied"] for r in ranks] == [scaling.STEPS - 1] * 2
    assert _max_difference(ranks[0]["params"], ranks[1]["params"]) == 0.0
    assert all(math.isfinite(v) for r in ranks for t in r["params"].values() for v in t.flatten())


def test_plateau_steps_on_the_metric_reduced_across_ranks(tmp_path):
    ranks = launch("plateau_lrs", tmp_path)
    assert launch.exitcodes == [0, 0]
    assert ranks[0]["val_loss"] == ranks[1]["val_loss"]  # the reduced metric, on both
    assert ranks[0]["lrs"] == ranks[1]["lrs"]
    assert min(ranks[0]["lrs"]) < 0.1  # the plateau rule did cut


def test_a_killed_run_resumes_bit_for_bit_and_only_rank_0_writes(tmp_path):
    whole = launch("resumable", tmp_path / "whole", str(tmp_path / "ck-whole"), "whole")
    killed = launch("resumable", tmp_path / "killed", str(tmp_path / "ck"), "killed", timeout=90)
    assert launch.exitcodes[1] == -9  # SIGKILL; rank 0 errors out or is killed, never waits on
    assert killed[1] is None and any((tmp_path / "ck").glob("epoch-*-step-*.pt"))
    resumed = launch("resumable", tmp_path / "resumed", str(tmp_path / "ck"), "resumed")
    assert launch.exitcodes == [0, 0]
    assert [r["steps_here"] for r in resumed] == [40 - 24] * 2  # from the step-24 checkpoint
    for rank in (0, 1):
        assert _max_difference(resumed[rank]["params"], whole[rank]["params"]) == 0.0
    for phase in ("whole", "killed", "resumed"):
        assert not (tmp_path / phase / "writes-rank1.txt").exists()
        assert (tmp_path / phase / "writes-rank0.txt").read_text()


def test_the_range_test_returns_one_result_on_every_rank(tmp_path):
    ranks = launch("range_test", tmp_path)
    assert launch.exitcodes == [0, 0]
    assert ranks[0] == ranks[1]


def test_fit_sets_the_epoch_of_a_distributed_sampler():
    from torch.utils.data import DataLoader, DistributedSampler

    from stabletrain import Callback, fit

    data = scaling.dataset(16)
    sampler = DistributedSampler(data, num_replicas=2, rank=0, shuffle=True, seed=0)  # no group
    seen: list[list[float]] = []

    class Orders(Callback):
        def on_epoch_start(self, ctx):
            seen.append([float(x.sum()) for x, _ in ctx.train_loader])

    model = torch.nn.Conv2d(1, 1, 1)
    fit(model, DataLoader(data, batch_size=4, sampler=sampler), epochs=3, callbacks=[Orders()],
        loss_fn=torch.nn.functional.mse_loss, progress=False)  # fmt: skip
    assert len({tuple(order) for order in seen}) == 3  # without set_epoch: one order, 3 times


def test_the_cli_trains_under_torchrun_and_only_rank_0_reports(tmp_path):
    import os
    import subprocess

    root = Path(__file__).resolve().parents[1]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command += ["-m", "stabletrain", "train", "--config", str(root / "configs" / "stable.yaml")]
    command += ["--epochs", "2", "--num-train", "32", "--num-val", "16", "--no-tracking"]
    command += ["--no-progress", "--checkpoint-dir", str(tmp_path / "ck")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root / "lib")}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("summary: steps=2, epochs=2") == 1  # 32 / (16 per rank x 2 ranks)
    assert (tmp_path / "ck" / "manifest.json").exists() and any(
        (tmp_path / "ck").glob("epoch-*.pt")
    )
