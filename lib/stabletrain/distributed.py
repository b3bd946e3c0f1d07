"""``torch.distributed`` in the few calls the library needs; without a process group of more than
one rank every function is the single-process identity (rank 0 of 1, no collective). A flag is
agreed by an all-reduce MAX, a metric by an all-reduce mean, a choice (a file, a path) is rank 0's,
broadcast. Collectives run on the current CUDA device for NCCL, else on the CPU."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist

from .checks import check_choice, check_float, check_int

SCALING_RULES = ("linear", "sqrt")


def is_distributed() -> bool:
    """An initialised process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's global rank (0 outside a process group)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """The number of ranks (1 outside a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Rank 0: the one that writes files, logs and draws."""
    return rank() == 0


def _device(device: torch.device | str | None = None) -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu") if device is None else torch.device(device)


def max_across_ranks(
    value: float | torch.Tensor, device: torch.device | str | None = None
) -> float:
    """The largest ``value`` over the ranks (one all-reduce MAX of one number). ``device``: where
    ``value`` lives (the gradients' device), used unless the backend needs another."""
    if not is_distributed():
        return float(value)
    where = _device(value.device if isinstance(value, torch.Tensor) else device)
    box = torch.as_tensor(value, dtype=torch.float32).reshape(1).to(where)
    dist.all_reduce(box, op=dist.ReduceOp.MAX)
    return float(box.item())


def any_rank(flag: bool | torch.Tensor, device: torch.device | str | None = None) -> bool:
    """``True`` on every rank if ``flag`` is true on any (:func:`max_across_ranks` of 0/1)."""
    return bool(max_across_ranks(flag, device))


def mean_across_ranks(value: float | torch.Tensor) -> float:
    """The mean of ``value`` over the ranks (a non-finite value on any rank makes it NaN/inf)."""
    return reduce_metrics({"value": float(value)})["value"]


def reduce_metrics(metrics: Mapping[str, Any], weight: float = 1.0) -> dict[str, Any]:
    """Numbers averaged over the ranks, weighted by ``weight`` (e.g. a rank's sample count);
    other values kept. Every rank must pass the same keys (one all-reduce for all of them)."""
    out = dict(metrics)
    keys = [k for k, v in out.items() if isinstance(v, int | float) and not isinstance(v, bool)]
    if not keys or not is_distributed():
        return out
    w = check_float("weight", weight, min=0)
    sums = [w * float(out[k]) if w else 0.0 for k in keys]  # an empty shard adds nothing
    values = torch.tensor([*sums, w], dtype=torch.float64, device=_device())
    dist.all_reduce(values)
    *sums, total = values.tolist()
    return out | {k: s / total if total > 0 else math.nan for k, s in zip(keys, sums)}


def broadcast(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (a picklable value; ``obj`` elsewhere is ignored)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, device=_device())
    return box[0]


def gather(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank (``[obj]`` in one process)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def init_from_env(backend: str | None = None) -> bool:
    """Join the process group ``torchrun`` describes (``WORLD_SIZE`` > 1 in the environment) with
    ``backend`` (default NCCL with CUDA, else gloo) and, with CUDA, select ``LOCAL_RANK``'s GPU.
    Returns whether a group of more than one rank is initialised."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return is_distributed()
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)
    return is_distributed()


def scale_lr(
    base_lr: float, global_batch: int, reference_batch: int, rule: str = "linear"
) -> float:
    r"""The LR for ``global_batch`` (per-rank batch × ranks × accumulation) from one tuned at
    ``reference_batch``: ``linear`` :math:`\eta = \eta_0 k`, ``sqrt`` :math:`\eta_0 \sqrt k`,
    :math:`k` = global / reference (pair ``linear`` with a warmup, Goyal et al. 2017)."""
    base_lr = check_float("base_lr", base_lr, min=0)
    global_batch = check_int("global_batch", global_batch, min=1)
    k = global_batch / check_int("reference_batch", reference_batch, min=1)
    return base_lr * (k if check_choice("rule", rule, SCALING_RULES) == "linear" else math.sqrt(k))
