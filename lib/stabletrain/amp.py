"""``torch.autocast`` plus, for float16, a ``GradScaler``; a step was applied iff the scale did
not drop (the scaler lowers it exactly when it skips). ``dtype="auto"``: CUDA bfloat16 if
supported, else float16; CPU bfloat16 with native instructions, else float32."""

from __future__ import annotations

import contextlib
import functools
import platform
from contextlib import nullcontext
from typing import Any

import torch

from .checks import check_bool, check_choice, check_float, check_int, check_keys
from .utils import DEVICE_TYPES

DTYPES = ("auto", "float16", "bfloat16", "float32")
_TORCH_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
_SCALER_OPTIONS = ("init_scale", "growth_factor", "backoff_factor", "growth_interval")
_SCALER_BOUNDS = {"init_scale": (0, None), "growth_factor": (1, None), "backoff_factor": (0, 1)}
_STATE_KEYS = ("dtype", "enabled", "steps", "skipped_steps", "scaler")
_OPEN = {"low_open": True, "high_open": True, "optional": True}


@functools.cache
def cpu_has_native_bfloat16() -> bool:
    """Whether this CPU has bfloat16 instructions (``/proc/cpuinfo``; Apple silicon: yes)."""
    flags: set[str] = set()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:  # not on macOS
        flags = set(f.read().split())
    apple = platform.system() == "Darwin" and platform.machine() == "arm64" and not flags
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"}) or apple


def _resolve_dtype(dtype: str | torch.dtype, device_type: str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        dtype = {v: k for k, v in _TORCH_DTYPES.items()}.get(dtype, dtype)
    if check_choice("dtype", dtype, DTYPES) != "auto":
        return _TORCH_DTYPES[dtype]
    if device_type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if device_type == "cpu" and cpu_has_native_bfloat16() else torch.float32


class MixedPrecision:
    """Autocast plus (for float16) a ``GradScaler(**scaler_options)``; ``dtype`` (in ``DTYPES``
    or a ``torch.dtype``) resolves to ``self.dtype`` (float32 if not ``enabled``), on
    ``device_type`` (default CUDA if available)."""

    def __init__(
        self,
        dtype: str | torch.dtype = "auto",
        device_type: str | None = None,
        enabled: bool = True,
        **scaler_options: Any,
    ) -> None:
        opts = check_keys("scaler_options", scaler_options, _SCALER_OPTIONS)
        for key, (lo, hi) in _SCALER_BOUNDS.items():
            check_float(key, opts.get(key), min=lo, max=hi, **_OPEN)
        check_int("growth_interval", opts.get("growth_interval"), min=1, optional=True)
        check_bool("enabled", enabled)
        device_type = device_type.type if isinstance(device_type, torch.device) else device_type
        check_choice("device_type", device_type, (None, *DEVICE_TYPES))
        self.device_type = str(device_type or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.requested_dtype = dtype
        self.dtype = _resolve_dtype(dtype, self.device_type) if enabled else torch.float32
        self.enabled = enabled and self.dtype != torch.float32
        self._dtype_name = str(self.dtype).replace("torch.", "")
        use_scaler = self.enabled and self.dtype == torch.float16
        self.scaler = torch.amp.GradScaler(self.device_type, **opts) if use_scaler else None
        self.scaler_options = dict(scaler_options)
        self.steps = self.skipped_steps = 0
        self._unscaled: set[int] = set()

    def autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.device_type, self.dtype) if self.enabled else nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        """``loss.backward()``, on the scaled loss with a scaler."""
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        """Divide the gradients by the loss scale (before clipping); once per step."""
        if self.scaler is not None and id(optimizer) not in self._unscaled:
            self.scaler.unscale_(optimizer)
            self._unscaled.add(id(optimizer))

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """Optimizer step and scaler update; True only if the optimizer really stepped."""
        self._unscaled.discard(id(optimizer))
        before = self.scale
        if self.scaler is None:
            optimizer.step()
        else:
            self.scaler.step(optimizer)
            self.scaler.update()
        applied = self.scale >= before
        self.steps += int(applied)
        self.skipped_steps += int(not applied)
        return applied

    def skip(self, optimizer: torch.optim.Optimizer) -> None:
        """Abandon this step (no optimizer step), keeping the scale and its growth counter."""
        if self.scaler is not None and id(optimizer) in self._unscaled:
            self.scaler.update(new_scale=float(self.scaler.get_scale()))
        self._unscaled.discard(id(optimizer))

    @property
    def scale(self) -> float:
        """The current loss scale (1.0 without a scaler)."""
        return float(self.scaler.get_scale()) if self.scaler is not None else 1.0

    def state_dict(self) -> dict[str, Any]:
        scaler = self.scaler.state_dict() if self.scaler is not None else None
        counts = {"steps": self.steps, "skipped_steps": self.skipped_steps}
        return {"dtype": self._dtype_name, "enabled": self.enabled, **counts, "scaler": scaler}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the counters and the scaler; ``ValueError`` if saved with another dtype."""
        check_keys("MixedPrecision state", state, _STATE_KEYS)
        saved, mine = state.get("dtype"), self._dtype_name
        if saved not in (None, mine):
            raise ValueError(f"state was saved with dtype {saved}, this MixedPrecision uses {mine}")
        self.steps, self.skipped_steps = (int(state.get(k, 0)) for k in ("steps", "skipped_steps"))
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])

    def __repr__(self) -> str:
        scaler = f", scale={self.scale:g}" if self.scaler is not None else ""
        return f"MixedPrecision(dtype={self._dtype_name}, device_type={self.device_type!r}{scaler})"
