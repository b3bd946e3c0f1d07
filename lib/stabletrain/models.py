"""A small U-Net (:class:`TinyUNet`) with optional SE/CBAM attention and bottleneck self-attention:
images ``(N, in_channels, H, W)`` → logits ``(N, num_classes, H, W)``. ``norm=None``,
``activation="leaky_relu"`` and ``bottleneck_attention=True`` make a network that can diverge
(notebook 01); the safeguards (``SAFE_ATTENTION``) bound the attention."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .checks import check_bool, check_choice, check_float, check_int, check_keys

ATTENTION_TYPES = (None, "se", "cbam")
NORM_TYPES = ("batch", "group", None)
ACTIVATION_TYPES = ("relu", "leaky_relu")
_OPTIONS = ("norm", "gate_bound", "residual_scale")  # keyword options of the attention blocks
#: The safeguards notebook 01 turns on with ``TinyUNet(safe_attention=True)``.
SAFE_ATTENTION: dict[str, Any] = {"norm": True, "gate_bound": 4.0, "residual_scale": 0.5}


def _check_positive_int(name: str, value: object) -> int:  # used by course.divergence
    return check_int(name, value, min=1)


def _check_block(channels, reduction, norm, gate_bound, residual_scale) -> tuple:
    channels = check_int("channels", channels, min=1)
    hidden = max(channels // check_int("reduction", reduction, min=1), 1)
    positive = {"min": 0, "low_open": True, "optional": True}
    gate_bound = check_float("gate_bound", gate_bound, **positive)
    scale = check_float("residual_scale", residual_scale, max=1, **positive)
    return channels, hidden, check_bool("norm", norm), gate_bound, scale


class _Gate(nn.Module):
    r"""``σ(z)``, or with ``bound=b`` ``σ(b tanh(z/b))`` (in ``[σ(−b), σ(b)]``)."""

    def __init__(self, bound: float | None = None) -> None:
        super().__init__()
        self.bound = None if bound is None else float(bound)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(z if self.bound is None else self.bound * torch.tanh(z / self.bound))

    def extra_repr(self) -> str:
        return f"bound={self.bound}"


def _residual(x: torch.Tensor, y: torch.Tensor, scale: float | None) -> torch.Tensor:
    return y if scale is None else x + scale * (y - x)


class SEBlock(nn.Module):
    r"""Squeeze-and-excitation, ``(N, C, H, W)`` → same: ``y = x ⊙ σ(W₂ ReLU(W₁ GAP(x)))``, ``W₁``:
    ``C → max(C // reduction, 1)``. Safeguards: ``norm`` (``GroupNorm(1, hidden)``), ``gate_bound``
    (bounded gate), ``residual_scale=α`` (``y = x + α(x ⊙ s − x)``)."""

    def __init__(
        self,
        channels: int,
        reduction: int = 4,
        *,
        norm: bool = False,
        gate_bound: float | None = None,
        residual_scale: float | None = None,
    ) -> None:
        super().__init__()
        options = _check_block(channels, reduction, norm, gate_bound, residual_scale)
        channels, hidden, norm, gate_bound, self.residual_scale = options
        self.fc1 = nn.Conv2d(channels, hidden, kernel_size=1)
        self.norm = nn.GroupNorm(1, hidden) if norm else nn.Identity()
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, kernel_size=1)
        self.gate = _Gate(gate_bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.gate(self.fc2(self.act(self.norm(self.fc1(F.adaptive_avg_pool2d(x, 1))))))
        return _residual(x, x * s, self.residual_scale)


class CBAMBlock(nn.Module):
    r"""CBAM, ``(N, C, H, W)`` → same: channel gate ``σ(MLP(avg(x)) + MLP(max(x)))``, then a spatial
    gate on ``[mean_c, max_c]`` (odd ``kernel_size``); safeguards as :class:`SEBlock` (``norm`` also
    adds ``BatchNorm2d(2)`` on the pooled map)."""

    def __init__(
        self,
        channels: int,
        reduction: int = 4,
        kernel_size: int = 7,
        *,
        norm: bool = False,
        gate_bound: float | None = None,
        residual_scale: float | None = None,
    ) -> None:
        super().__init__()
        options = _check_block(channels, reduction, norm, gate_bound, residual_scale)
        channels, hidden, norm, gate_bound, self.residual_scale = options
        if check_int("kernel_size", kernel_size, min=1) % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        squeeze = nn.Conv2d(channels, hidden, kernel_size=1)
        hidden_norm = [nn.GroupNorm(1, hidden)] if norm else []
        excite = nn.Conv2d(hidden, channels, kernel_size=1)
        self.mlp = nn.Sequential(squeeze, *hidden_norm, nn.ReLU(inplace=True), excite)
        self.pool_norm = nn.BatchNorm2d(2) if norm else nn.Identity()
        self.spatial = nn.Conv2d(2, 1, kernel_size=kernel_size, padding=kernel_size // 2)
        self.channel_gate = _Gate(gate_bound)
        self.spatial_gate = _Gate(gate_bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.mlp(F.adaptive_avg_pool2d(x, 1))
        mx = self.mlp(F.adaptive_max_pool2d(x, 1))
        y = x * self.channel_gate(avg + mx)
        pooled = torch.cat([y.mean(dim=1, keepdim=True), y.amax(dim=1, keepdim=True)], dim=1)
        y = y * self.spatial_gate(self.spatial(self.pool_norm(pooled)))
        return _residual(x, y, self.residual_scale)


class SpatialSelfAttention(nn.Module):
    r"""``y = x + W_o softmax(q kᵀ/√C) v`` over the ``H·W`` pixels (one head), ``(N, C, H, W)`` → same;
    ``qk_norm`` LayerNorms ``q`` and ``k``; ``last_max_logit`` is ``max |q kᵀ/√C|`` (0-d tensor)."""

    def __init__(self, channels: int, *, qk_norm: bool = False) -> None:
        super().__init__()
        channels = check_int("channels", channels, min=1)
        check_bool("qk_norm", qk_norm)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)
        self.q_norm = nn.LayerNorm(channels) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(channels) if qk_norm else nn.Identity()
        self.last_max_logit: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        q, k, v = self.qkv(x).flatten(2).transpose(1, 2).chunk(3, dim=-1)  # (N, L, C) each
        q, k = self.q_norm(q), self.k_norm(k)
        logits = q @ k.transpose(1, 2) / c**0.5  # (N, L, L)
        self.last_max_logit = logits.detach().abs().amax()  # a tensor: no host sync here
        y = (logits.softmax(dim=-1) @ v).transpose(1, 2).reshape(n, c, h, w)
        return x + self.out(y)


def _norm_layer(kind: str | None, channels: int) -> nn.Module:
    if kind == "group":  # the largest group count <= 8 that divides the channels
        return nn.GroupNorm(max(g for g in range(1, 9) if channels % g == 0), channels)
    return nn.BatchNorm2d(channels) if kind == "batch" else nn.Identity()


class ConvBlock(nn.Module):
    """Two ``3×3 conv → norm → activation`` layers, then optional attention (norm: conv bias only if ``None``)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        attention: str | None = None,
        attention_options: Mapping[str, Any] | None = None,
        *,
        norm: str | None = "batch",
        activation: str = "relu",
    ) -> None:
        super().__init__()
        check_choice("norm", norm, NORM_TYPES)
        leaky = check_choice("activation", activation, ACTIVATION_TYPES) == "leaky_relu"
        layers: list[nn.Module] = []
        for channels in (in_channels, out_channels):  # a norm's shift makes a bias redundant
            conv = nn.Conv2d(channels, out_channels, 3, padding=1, bias=norm is None)
            act = nn.LeakyReLU(0.1, inplace=True) if leaky else nn.ReLU(True)
            layers += [conv, _norm_layer(norm, out_channels), act]
        self.conv = nn.Sequential(*layers)
        block, options = SEBlock if attention == "se" else CBAMBlock, attention_options or {}
        self.attention = nn.Identity() if attention is None else block(out_channels, **options)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attention(self.conv(x))


class TinyUNet(nn.Module):
    """A small U-Net: ``depth`` (1–6) levels of ``base_channels · 2^i`` channels, skip connections;
    ``H``, ``W`` divisible by ``2**depth``. Returns logits, or with ``deep_supervision`` a list of
    ``depth`` maps (index ``i`` at ``1/2^i`` resolution). ``safe_attention`` starts
    ``attention_options`` from ``SAFE_ATTENTION``; ``qk_norm`` needs ``bottleneck_attention``."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 1,
        base_channels: int = 16,
        depth: int = 3,
        attention: str | None = None,
        deep_supervision: bool = False,
        attention_options: Mapping[str, Any] | None = None,
        safe_attention: bool = False,
        *,
        norm: str | None = "batch",
        activation: str = "relu",
        bottleneck_attention: bool = False,
        qk_norm: bool = False,
    ) -> None:
        super().__init__()
        self.in_channels = check_int("in_channels", in_channels, min=1)
        self.num_classes = check_int("num_classes", num_classes, min=1)
        base_channels = check_int("base_channels", base_channels, min=1)
        self.depth = depth = check_int("depth", depth, min=1, max=6)
        self.attention = check_choice("attention", attention, ATTENTION_TYPES)
        self.norm = check_choice("norm", norm, NORM_TYPES)
        self.activation = check_choice("activation", activation, ACTIVATION_TYPES)
        check_bool("bottleneck_attention", bottleneck_attention)
        if check_bool("qk_norm", qk_norm) and not bottleneck_attention:
            raise ValueError("qk_norm=True needs bottleneck_attention=True")
        self.deep_supervision = check_bool("deep_supervision", deep_supervision)
        options = dict(SAFE_ATTENTION) if check_bool("safe_attention", safe_attention) else {}
        options.update(check_keys("attention_options", attention_options or {}, _OPTIONS))
        self.attention_options, block = options, {"norm": norm, "activation": activation}
        widths = [base_channels * 2**i for i in range(depth + 1)]
        inputs = [in_channels, *widths[: depth - 1]]
        self.encoders = nn.ModuleList(
            ConvBlock(c, w, attention, options, **block) for c, w in zip(inputs, widths[:depth])
        )
        self.bottleneck = ConvBlock(widths[depth - 1], widths[depth], attention, options, **block)
        self.self_attention = nn.Identity()
        if bottleneck_attention:
            self.self_attention = SpatialSelfAttention(widths[depth], qk_norm=qk_norm)
        self.upsamples, self.decoders = nn.ModuleList(), nn.ModuleList()
        for i in reversed(range(depth)):
            self.upsamples.append(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2))
            self.decoders.append(ConvBlock(2 * widths[i], widths[i], attention, options, **block))
        self.heads = nn.ModuleList(nn.Conv2d(widths[i], num_classes, 1) for i in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected shape (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        factor = 2**self.depth
        if x.shape[-2] % factor or x.shape[-1] % factor:
            got = f"got an input of {x.shape[-2]}x{x.shape[-1]} (lower depth or resize the input)"
            raise ValueError(f"depth={self.depth} needs H, W divisible by 2**depth={factor}; {got}")
        skips = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.self_attention(self.bottleneck(x))
        decoded = []  # index i at 1/2^i resolution
        for up, decoder, skip in zip(self.upsamples, self.decoders, reversed(skips)):
            x = decoder(torch.cat([up(x), skip], dim=1))
            decoded.insert(0, x)
        if not self.deep_supervision:
            return self.heads[0](x)
        return [head(features) for head, features in zip(self.heads, decoded)]
