"""Mixed precision that tells you when it skipped a step.

:class:`MixedPrecision` bundles ``torch.autocast`` and, for float16 only, a
``torch.amp.GradScaler``. Its :meth:`~MixedPrecision.step` returns **whether the
optimizer really stepped** — ``GradScaler.step`` silently skips the update when
the scaled gradients overflowed and does not tell you (pytorch issues 55585 and
67590), which is how learning-rate schedules drift ahead of the optimizer and
the "``lr_scheduler.step()`` before ``optimizer.step()``" warning appears.

Rule used to detect a skip: ``GradScaler.update`` multiplies the scale by
``backoff_factor < 1`` exactly when an inf/NaN was found (and the step
skipped), and otherwise keeps it or multiplies it by ``growth_factor > 1``; so
the step was applied iff ``scale_after >= scale_before``.

dtype choice for ``dtype="auto"``:

- CUDA: bfloat16 where the device supports it natively, else float16;
- CPU: bfloat16 when the processor has native bfloat16 instructions
  (``avx512_bf16``/``amx_bf16`` on x86, ``bf16`` on Arm), else float32
  (emulated bfloat16 is slower than float32);
- anything else: float32.

float16 has a 5-bit exponent (max 65504, smallest subnormal ≈ 6e-8), hence
loss scaling; bfloat16 keeps float32's 8-bit exponent with fewer mantissa
bits, so it needs no scaler.

Example:
    >>> import torch
    >>> from stabletrain.amp import MixedPrecision
    >>> amp = MixedPrecision("bfloat16", device_type="cpu")
    >>> model = torch.nn.Linear(4, 1)
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> with amp.autocast():
    ...     out = model(torch.randn(8, 4))
    >>> amp.backward(out.float().pow(2).mean())
    >>> amp.step(opt)
    True
"""

from __future__ import annotations

import contextlib
import functools
import platform
from typing import Any

import torch

__all__ = [
    "DTYPES",
    "MixedPrecision",
    "cpu_has_native_bfloat16",
]

DTYPES = ("auto", "float16", "bfloat16", "float32")
_TORCH_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
_SCALER_OPTIONS = ("init_scale", "growth_factor", "backoff_factor", "growth_interval")


@functools.cache
def cpu_has_native_bfloat16() -> bool:
    """Whether this CPU has bfloat16 instructions (read from ``/proc/cpuinfo`` on Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(f.read().split())
    except OSError:
        flags = set()
    if flags & {"avx512_bf16", "amx_bf16", "bf16"}:
        return True
    # Apple silicon from M2 on has BF16; macOS has no /proc/cpuinfo.
    return platform.system() == "Darwin" and platform.machine() == "arm64" and not flags


def _resolve_dtype(dtype: str | torch.dtype, device_type: str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        name = {v: k for k, v in _TORCH_DTYPES.items()}.get(dtype)
        if name is None:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype}")
        dtype = name
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if dtype != "auto":
        return _TORCH_DTYPES[dtype]
    if device_type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device_type == "cpu" and cpu_has_native_bfloat16():
        return torch.bfloat16
    return torch.float32


class MixedPrecision:
    """Autocast plus (for float16) a gradient scaler, with honest step reporting.

    Args:
        dtype: ``"float16"``, ``"bfloat16"``, ``"float32"`` (no autocast) or
            ``"auto"`` (see the module docs). A ``torch.dtype`` is accepted too.
        device_type: ``"cuda"``, ``"cpu"``, ... (default: CUDA if available, else CPU).
        enabled: ``False`` turns everything off (plain float32 training).
        **scaler_options: ``init_scale``, ``growth_factor``, ``backoff_factor``,
            ``growth_interval`` for the ``GradScaler`` (float16 only).

    Attributes:
        dtype: the resolved ``torch.dtype`` (float32 when disabled).
        scaler: the ``torch.amp.GradScaler`` or ``None``.
        steps: optimizer steps applied; ``skipped_steps``: steps the scaler skipped.

    Raises:
        ValueError: unknown ``dtype`` or scaler option, or an invalid option value.
    """

    def __init__(
        self,
        dtype: str | torch.dtype = "auto",
        device_type: str | None = None,
        enabled: bool = True,
        **scaler_options: Any,
    ) -> None:
        unknown = sorted(set(scaler_options) - set(_SCALER_OPTIONS))
        if unknown:
            raise ValueError(
                f"unknown scaler option(s) {unknown}; accepted: {list(_SCALER_OPTIONS)}"
            )
        if "init_scale" in scaler_options and not scaler_options["init_scale"] > 0:
            raise ValueError(f"init_scale must be > 0, got {scaler_options['init_scale']}")
        if "growth_factor" in scaler_options and not scaler_options["growth_factor"] > 1:
            raise ValueError(f"growth_factor must be > 1, got {scaler_options['growth_factor']}")
        if "backoff_factor" in scaler_options and not 0 < scaler_options["backoff_factor"] < 1:
            raise ValueError(
                f"backoff_factor must be in (0, 1), got {scaler_options['backoff_factor']}"
            )
        gi = scaler_options.get("growth_interval", 1)
        if isinstance(gi, bool) or not isinstance(gi, int) or gi < 1:
            raise ValueError(f"growth_interval must be an int >= 1, got {gi!r}")
        if device_type is None:
            device_type = "cuda" if torch.cuda.is_available() else "cpu"
        self.device_type = str(device_type)
        self.requested_dtype = dtype
        self.dtype = _resolve_dtype(dtype, self.device_type) if enabled else torch.float32
        self.enabled = bool(enabled) and self.dtype != torch.float32
        self.scaler: torch.amp.GradScaler | None = None
        if self.enabled and self.dtype == torch.float16:
            self.scaler = torch.amp.GradScaler(self.device_type, **scaler_options)
        self.scaler_options = dict(scaler_options)
        self.steps = 0
        self.skipped_steps = 0
        self._unscaled: set[int] = set()

    # -- forward ---------------------------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager:
        """``torch.autocast`` for the resolved dtype, or a no-op when disabled/float32."""
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    # -- backward and update ------------------------------------------------------------------
    def backward(self, loss: torch.Tensor) -> None:
        """``loss.backward()``, on the scaled loss when a scaler is in use."""
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        """Divide the gradients by the loss scale (before clipping); once per step."""
        if self.scaler is not None and id(optimizer) not in self._unscaled:
            self.scaler.unscale_(optimizer)
            self._unscaled.add(id(optimizer))

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """Optimizer step and scaler update; True only if the optimizer really stepped."""
        self._unscaled.discard(id(optimizer))
        if self.scaler is None:
            optimizer.step()
            self.steps += 1
            return True
        before = self.scaler.get_scale()
        self.scaler.step(optimizer)
        self.scaler.update()
        applied = self.scaler.get_scale() >= before
        if applied:
            self.steps += 1
        else:
            self.skipped_steps += 1
        return applied

    def skip(self, optimizer: torch.optim.Optimizer) -> None:
        """Abandon this step without an optimizer step (for example after a NaN loss).

        If the gradients were already unscaled, the scaler's per-step record is
        cleared as torch requires before the next ``unscale_``; the loss scale and
        its growth counter are left as they were (the caller, not the scaler,
        decided to skip).
        """
        if self.scaler is not None and id(optimizer) in self._unscaled:
            self.scaler.update(new_scale=float(self.scaler.get_scale()))
        self._unscaled.discard(id(optimizer))

    @property
    def scale(self) -> float:
        """The current loss scale (1.0 without a scaler)."""
        return float(self.scaler.get_scale()) if self.scaler is not None else 1.0

    # -- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "dtype": str(self.dtype).replace("torch.", ""),
            "enabled": self.enabled,
            "steps": self.steps,
            "skipped_steps": self.skipped_steps,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("dtype")
        mine = str(self.dtype).replace("torch.", "")
        if saved is not None and saved != mine:
            raise ValueError(f"state was saved with dtype {saved}, this MixedPrecision uses {mine}")
        self.steps = int(state.get("steps", 0))
        self.skipped_steps = int(state.get("skipped_steps", 0))
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])

    def __repr__(self) -> str:
        dtype = str(self.dtype).replace("torch.", "")
        scaler = f", scale={self.scale:g}" if self.scaler is not None else ""
        return f"MixedPrecision(dtype={dtype}, device_type={self.device_type!r}{scaler})"
