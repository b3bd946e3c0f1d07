"""Notebook 12's float-format lesson: will a model survive float16?

- :func:`dtype_table` and :func:`plot_float_formats` — range and precision of float32,
  bfloat16 and float16;
- :func:`activation_ranges` — the largest output of every layer (overflow above 65504);
- :func:`layer_gradients` and :func:`underflow_fraction` — the gradients of one pass under
  autocast and how many of them float16 would flush to zero.

Example:
    >>> from stabletrain.course.precision import dtype_table
    >>> [row["max"] for row in dtype_table()][2]
    65504.0
"""

from __future__ import annotations

import math
from typing import Any

import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ..loop import outputs_to_float32

__all__ = [
    "activation_ranges",
    "dtype_table",
    "layer_gradients",
    "plot_float_formats",
    "underflow_fraction",
]


def dtype_table() -> list[dict[str, Any]]:
    """Range and precision of float32, bfloat16 and float16 (from ``torch.finfo``).

    Columns: ``dtype``, ``exponent_bits``, ``mantissa_bits``, ``max``,
    ``smallest_normal``, ``smallest_subnormal`` (``2^(1 − bias − mantissa_bits)``)
    and ``eps`` (the gap above 1.0).
    """
    rows = []
    for name, exponent_bits, mantissa_bits in (
        ("float32", 8, 23),
        ("bfloat16", 8, 7),
        ("float16", 5, 10),
    ):
        info = torch.finfo(getattr(torch, name))
        rows.append(
            {
                "dtype": name,
                "exponent_bits": exponent_bits,
                "mantissa_bits": mantissa_bits,
                "max": float(info.max),
                "smallest_normal": float(info.smallest_normal),
                "smallest_subnormal": float(info.smallest_normal) * 2.0**-mantissa_bits,
                "eps": float(info.eps),
            }
        )
    return rows


def plot_float_formats(*, ax: Axes | None = None) -> Figure:
    """Gap between neighbouring representable numbers against magnitude, per float format.

    For each of float32, bfloat16 and float16 the curve shows ``nextafter(x, ∞) − x``
    for ``x`` from the smallest subnormal to the largest finite value; where a curve
    ends, the format overflows (right) or flushes to zero (left).
    """
    if ax is None:
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
    else:
        fig = ax.figure
    for row, color in zip(dtype_table(), ("C0", "C1", "C2")):
        dtype = getattr(torch, row["dtype"])
        lo, hi = row["smallest_subnormal"], row["max"]
        xs = torch.logspace(math.log10(lo), math.log10(hi) - 1e-3, 400, dtype=torch.float64)
        xs = xs.to(dtype)
        gaps = torch.nextafter(xs, torch.full_like(xs, math.inf)) - xs
        ax.loglog(xs.double().numpy(), gaps.double().numpy(), color=color, label=row["dtype"])
        ax.axvline(hi, color=color, ls=":", lw=1)
    ax.set(
        xlabel="magnitude |x|",
        ylabel="gap to the next representable number",
        title="range and precision of three float formats",
    )
    ax.legend()
    fig.tight_layout()
    return fig


@torch.no_grad()
def activation_ranges(model: torch.nn.Module, *inputs: torch.Tensor) -> dict[str, float]:
    """Largest absolute output of every leaf module in one forward pass.

    Run it in float32 before switching a model to float16: any module whose
    value exceeds ``torch.finfo(torch.float16).max`` (65504) would overflow to
    inf under float16 autocast. Returns ``{qualified module name: max |output|}``
    in execution order; the model's training mode is kept.
    """
    ranges: dict[str, float] = {}
    handles = []

    def hook(name: str):
        def record(_module, _inputs, output) -> None:
            if isinstance(output, torch.Tensor) and output.is_floating_point():
                value = float(output.detach().abs().max()) if output.numel() else 0.0
                ranges[name] = max(value, ranges.get(name, 0.0))

        return record

    for name, module in model.named_modules():
        if name and not any(True for _ in module.children()):
            handles.append(module.register_forward_hook(hook(name)))
    try:
        model(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    return ranges


def layer_gradients(
    model: torch.nn.Module,
    inputs: torch.Tensor,
    target: torch.Tensor,
    loss_fn: Any = None,
    *,
    dtype: torch.dtype = torch.float32,
    loss_scale: float = 1.0,
    device_type: str = "cpu",
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """One forward/backward pass under ``dtype`` autocast; the gradients it produces.

    The loss (``loss_fn(outputs.float(), target)``, default ``BCEWithLogitsLoss``) is
    multiplied by ``loss_scale`` before ``backward`` — exactly what a gradient scaler
    does — and the parameter gradients are divided by it again afterwards.

    Returns ``(parameter_gradients, output_gradients)``: the (unscaled) ``.grad`` of
    every parameter that received one, and, in float32, the gradient flowing into the
    output of every leaf module (as seen by the backward pass, i.e. *scaled*). Feed the
    latter to :func:`underflow_fraction` to see how many would vanish in float16. The
    model's ``.grad`` fields are left set, as after any backward pass.
    """
    if not loss_scale > 0:
        raise ValueError(f"loss_scale must be > 0, got {loss_scale}")
    loss_fn = loss_fn if loss_fn is not None else torch.nn.BCEWithLogitsLoss()
    captured: list[torch.Tensor] = []

    def keep(_module, _inputs, output) -> None:
        if isinstance(output, torch.Tensor) and output.requires_grad:
            output.register_hook(lambda g: captured.append(g.detach().float()))

    handles = [
        module.register_forward_hook(keep)
        for name, module in model.named_modules()
        if name and not any(True for _ in module.children())
    ]
    try:
        enabled = dtype != torch.float32
        with torch.autocast(device_type=device_type, dtype=dtype, enabled=enabled):
            outputs = model(inputs)
        loss = loss_fn(outputs_to_float32(outputs), target)
        (loss * loss_scale).backward()
    finally:
        for handle in handles:
            handle.remove()
    grads = [p.grad / loss_scale for p in model.parameters() if p.grad is not None]
    return grads, captured


def underflow_fraction(
    values: torch.Tensor | list[torch.Tensor], dtype: torch.dtype = torch.float16
) -> dict[str, float]:
    """How many non-zero values would be lost or degraded when cast to ``dtype``.

    Returns ``{"count": non-zero values, "flushed": fraction that rounds to 0,
    "subnormal": fraction below the smallest normal number (kept with fewer
    significant bits), "overflow": fraction above ``finfo.max``}``.
    """
    if isinstance(values, torch.Tensor):
        values = [values]
    flat = torch.cat([v.detach().float().abs().flatten() for v in values])
    flat = flat[flat > 0]
    if flat.numel() == 0:
        return {"count": 0, "flushed": 0.0, "subnormal": 0.0, "overflow": 0.0}
    info = torch.finfo(dtype)
    cast = flat.to(dtype)
    return {
        "count": int(flat.numel()),
        "flushed": float((cast == 0).float().mean()),
        "subnormal": float((flat < info.smallest_normal).float().mean()),
        "overflow": float(torch.isinf(cast).float().mean()),
    }
