"""Reproducibility and device helpers.

Example:
    >>> from stabletrain.utils import seed_everything, get_device
    >>> seed_everything(0)
    >>> get_device("cpu")
    device(type='cpu')
"""

from __future__ import annotations

import copy
import os
import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

__all__ = ["capture_rng_state", "cpu_copy", "get_device", "restore_rng_state", "seed_everything"]


def seed_everything(seed: int, *, deterministic: bool = True) -> None:
    """Seed Python's, NumPy's and torch's (CPU and CUDA) random generators.

    With ``deterministic=True`` torch is asked for deterministic algorithms
    (``torch.use_deterministic_algorithms(True, warn_only=True)``), cuDNN
    autotuning is switched off and ``CUBLAS_WORKSPACE_CONFIG`` is set, so a
    run repeats bit for bit on the same machine and versions.

    Args:
        seed: a non-negative integer below 2**32.
        deterministic: also request deterministic kernels.

    Raises:
        TypeError: ``seed`` is not an integer.
        ValueError: ``seed`` is outside ``[0, 2**32)``.
    """
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if not 0 <= int(seed) < 2**32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - seeding the legacy global generator is the point
    torch.manual_seed(seed)  # also seeds every CUDA device
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def get_device(prefer: str | torch.device | None = None) -> torch.device:
    """Pick a device: ``prefer`` if given, else CUDA, else Apple MPS, else CPU.

    Args:
        prefer: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``, a ``torch.device``
            or ``None`` for automatic choice.

    Raises:
        ValueError: the preferred device is not available on this machine.
    """
    if prefer is not None:
        device = torch.device(prefer)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"prefer={str(prefer)!r}: CUDA is not available on this machine")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise ValueError(f"prefer={str(prefer)!r}: MPS is not available on this machine")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy (legacy global), torch CPU and CUDA generator states, as plain values.

    The NumPy MT19937 key is stored as an ``int64`` tensor so that the result
    loads with ``torch.load(..., weights_only=True)``. CUDA states are captured
    only when CUDA is already initialised (capturing never initialises it).
    """
    np_state = np.random.get_state(legacy=False)  # noqa: NPY002 - the global stream is the point
    cuda: list[torch.Tensor] = []
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        cuda = list(torch.cuda.get_rng_state_all())
    return {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": str(np_state["bit_generator"]),
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
        "cuda": cuda,
    }


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`.

    CUDA states are restored only if CUDA is available with the same number of
    devices; otherwise they are skipped (a CPU machine reading a GPU checkpoint).
    """
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    npy = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        {
            "bit_generator": npy["bit_generator"],
            "state": {"key": npy["key"].numpy().astype(np.uint32), "pos": npy["pos"]},
            "has_gauss": npy["has_gauss"],
            "gauss": npy["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
        torch.cuda.set_rng_state_all(cuda)


def cpu_copy(value: Any, pool: dict[tuple, torch.Tensor] | None = None, _path: tuple = ()) -> Any:
    """A deep copy of ``value`` (nested dicts, lists and tuples) with every tensor detached
    and copied to the CPU: the one snapshot of state that the guard's rollback, the LR range
    test and background checkpoint saves take.

    With ``pool``, tensors are copied into buffers kept there by an earlier call on the same
    structure: a background save then blocks only for a memory copy (allocating fresh 50 MB
    blocks costs page faults every time).
    """
    if isinstance(value, torch.Tensor):
        if pool is None:
            return value.detach().to("cpu", copy=True)
        buffer = pool.get(_path)
        if buffer is None or buffer.shape != value.shape or buffer.dtype != value.dtype:
            buffer = pool[_path] = torch.empty(value.shape, dtype=value.dtype, device="cpu")
        return buffer.copy_(value.detach())
    if isinstance(value, dict):
        return type(value)((k, cpu_copy(v, pool, (*_path, k))) for k, v in value.items())
    if type(value) in (list, tuple):
        return type(value)(cpu_copy(v, pool, (*_path, i)) for i, v in enumerate(value))
    return copy.deepcopy(value)
