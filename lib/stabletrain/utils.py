"""Seeding, RNG state capture and restore, device choice and :func:`cpu_copy`."""

from __future__ import annotations

import contextlib
import copy
import os
import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from .checks import check_bool, check_int


def seed_everything(seed: int, *, deterministic: bool = True) -> None:
    """Seed Python, NumPy and torch (CPU, CUDA) with ``seed`` in ``[0, 2**32)``; ``deterministic``
    also sets deterministic algorithms (``warn_only``), cuDNN and ``CUBLAS_WORKSPACE_CONFIG``."""
    seed = check_int("seed", seed, min=0, max=2**32 - 1)
    check_bool("deterministic", deterministic)
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - seeding the legacy global generator is the point
    torch.manual_seed(seed)  # also seeds every CUDA device
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


DEVICE_TYPES = ("cpu", "cuda", "mps")
_DEVICE_FORMS = "'cpu', 'cuda', 'cuda:N', 'mps' or a torch.device"


def as_device(name: str, value: str | torch.device) -> torch.device:
    """``value`` as a ``torch.device`` of a type in :data:`DEVICE_TYPES`, else an error."""
    if not isinstance(value, str | torch.device):
        raise TypeError(f"{name} must be {_DEVICE_FORMS}, got {type(value).__name__} {value!r}")
    with contextlib.suppress(RuntimeError):
        if (device := torch.device(value)).type in DEVICE_TYPES:
            return device
    raise ValueError(f"{name} must be {_DEVICE_FORMS}, got {value!r}")


def get_device(prefer: str | torch.device | None = None) -> torch.device:
    """``prefer`` (``ValueError`` if not available here) if given, else CUDA, MPS or CPU."""
    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if prefer is not None:
        device = as_device("prefer", prefer)
        if not available.get(device.type, True):
            name = device.type.upper()
            raise ValueError(f"prefer={str(prefer)!r}: {name} is not available on this machine")
        return device
    return torch.device(next((kind for kind, ok in available.items() if ok), "cpu"))


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy (legacy global), torch CPU and CUDA (if initialised) generator states, as
    values that load with ``weights_only=True`` (the MT19937 key as an ``int64`` tensor)."""
    np_state = np.random.get_state(legacy=False)  # noqa: NPY002 - the global stream is the point
    cuda_ready = torch.cuda.is_available() and torch.cuda.is_initialized()  # never initialise it
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
        "cuda": list(torch.cuda.get_rng_state_all()) if cuda_ready else [],
    }


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state` (CUDA only with as many devices as captured)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    npy = dict(state["numpy"])
    npy["state"] = {"key": npy.pop("key").numpy().astype(np.uint32), "pos": npy.pop("pos")}
    np.random.set_state(npy)  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
        torch.cuda.set_rng_state_all(cuda)


def cpu_copy(value: Any, pool: dict[tuple, torch.Tensor] | None = None, _path: tuple = ()) -> Any:
    """A deep copy of ``value`` (nested dicts, lists, tuples), tensors detached and on the CPU;
    with ``pool``, into the buffers an earlier call on the same structure left there."""
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
