"""Small segmentation models for the course: a U-Net with optional SE/CBAM attention.

``TinyUNet()`` is BatchNorm after every convolution, ReLU, no attention: the network the
notebooks train. Options change it into one that can really diverge (notebook 01):
``norm=None`` (no normalisation, so it is no longer invariant to the scale of its
weights), ``activation="leaky_relu"`` and ``bottleneck_attention=True`` (a residual
one-head self-attention block at the bottleneck, :class:`SpatialSelfAttention`, with an
optional ``qk_norm``); ``norm="group"`` is the cure notebook 01 measures.

By default the SE/CBAM attention blocks are written *plainly*, the way they are usually
first written: multiplicative sigmoid gating with no normalisation, no bounds and
no residual scaling. Keyword options add numerical safeguards (normalisation,
bounded gating, residual scaling; ``TinyUNet(safe_attention=True)`` turns on
``SAFE_ATTENTION``); notebook 01 measures what they change under an aggressive
learning rate.

Shapes: images ``(N, in_channels, H, W)`` → logits ``(N, num_classes, H, W)``.
``H`` and ``W`` must be divisible by ``2**depth``.

Example:
    >>> import torch
    >>> from stabletrain.models import TinyUNet
    >>> model = TinyUNet(attention="cbam")
    >>> model(torch.zeros(2, 1, 64, 64)).shape
    torch.Size([2, 1, 64, 64])
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .checks import check_bool, check_choice, check_float, check_int, check_keys

__all__ = [
    "ACTIVATION_TYPES",
    "ATTENTION_TYPES",
    "NORM_TYPES",
    "SAFE_ATTENTION",
    "CBAMBlock",
    "ConvBlock",
    "SEBlock",
    "SpatialSelfAttention",
    "TinyUNet",
]

ATTENTION_TYPES = (None, "se", "cbam")
NORM_TYPES = ("batch", "group", None)
ACTIVATION_TYPES = ("relu", "leaky_relu")
_OPTIONS = ("norm", "gate_bound", "residual_scale")  # keyword options of the attention blocks


def _check_positive_int(name: str, value: object) -> int:
    # Kept for course.divergence, which imports it; new code calls check_int directly.
    return check_int(name, value, min=1)


def _check_options(
    norm: bool, gate_bound: float | None, residual_scale: float | None
) -> tuple[bool, float | None, float | None]:
    return (
        check_bool("norm", norm),
        check_float("gate_bound", gate_bound, min=0, low_open=True, optional=True),
        check_float("residual_scale", residual_scale, min=0, max=1, low_open=True, optional=True),
    )


class _Gate(nn.Module):
    r"""Sigmoid gate, optionally with bounded logits: :math:`\sigma(b \tanh(z / b))`.

    With ``bound=b`` the gate stays in :math:`[\sigma(-b), \sigma(b)]` (for ``b = 4``,
    about ``[0.018, 0.982]``): no channel or pixel is ever switched fully off or on, so the
    gate keeps a gradient and cannot silence a feature map. ``bound=None`` is the plain
    :math:`\sigma(z)`.
    """

    def __init__(self, bound: float | None = None) -> None:
        super().__init__()
        self.bound = None if bound is None else float(bound)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.bound is not None:
            z = self.bound * torch.tanh(z / self.bound)
        return torch.sigmoid(z)

    def extra_repr(self) -> str:
        return f"bound={self.bound}"


def _residual(x: torch.Tensor, y: torch.Tensor, scale: float | None) -> torch.Tensor:
    return y if scale is None else x + scale * (y - x)


class SEBlock(nn.Module):
    r"""Squeeze-and-excitation channel attention (Hu et al., 2018), with optional safeguards.

    Plain (the defaults): ``s = σ(W₂ · ReLU(W₁ · GAP(x)))`` and ``y = x ⊙ s`` (one gate per
    channel). ``W₁`` maps ``C → max(C // reduction, 1)`` channels, ``W₂`` maps back.

    Safeguards (each off by default):

    - ``norm=True``: a LayerNorm-style ``GroupNorm(1, hidden)`` on the hidden layer, so the
      gate logits do not grow with the scale of ``x`` or of ``W₁``;
    - ``gate_bound=b``: bounded gating ``σ(b·tanh(z/b))`` (see :class:`_Gate`);
    - ``residual_scale=α`` in ``(0, 1]``: ``y = x + α·(x ⊙ s − x)``, the block starts close
      to the identity and the gate can change a feature by at most a factor ``α``.

    Shapes: ``(N, C, H, W) → (N, C, H, W)``.
    """

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
        channels = check_int("channels", channels, min=1)
        reduction = check_int("reduction", reduction, min=1)
        norm, gate_bound, residual_scale = _check_options(norm, gate_bound, residual_scale)
        hidden = max(channels // reduction, 1)
        self.fc1 = nn.Conv2d(channels, hidden, kernel_size=1)
        self.norm = nn.GroupNorm(1, hidden) if norm else nn.Identity()
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, kernel_size=1)
        self.gate = _Gate(gate_bound)
        self.residual_scale = residual_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        s = self.gate(self.fc2(self.act(self.norm(self.fc1(s)))))
        return _residual(x, x * s, self.residual_scale)


class CBAMBlock(nn.Module):
    r"""Convolutional block attention module (Woo et al., 2018): channel, then spatial.

    Plain (the defaults):
    channel gate ``M_c = σ(MLP(AvgPool(x)) + MLP(MaxPool(x)))``, ``x' = x ⊙ M_c``;
    spatial gate ``M_s = σ(conv_k([mean_c(x'), max_c(x')]))``, ``y = x' ⊙ M_s``.

    Safeguards (each off by default), as in :class:`SEBlock`:

    - ``norm=True``: ``GroupNorm(1, hidden)`` on the MLP's hidden layer and a
      ``BatchNorm2d(2)`` on the pooled spatial descriptor, so neither gate's logits scale
      with the activations;
    - ``gate_bound=b``: both gates bounded, ``σ(b·tanh(z/b))``;
    - ``residual_scale=α``: ``y = x + α·(x' ⊙ M_s − x)``.

    Shapes: ``(N, C, H, W) → (N, C, H, W)``.
    """

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
        channels = check_int("channels", channels, min=1)
        reduction = check_int("reduction", reduction, min=1)
        if check_int("kernel_size", kernel_size, min=1) % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        norm, gate_bound, residual_scale = _check_options(norm, gate_bound, residual_scale)
        hidden = max(channels // reduction, 1)
        layers: list[nn.Module] = [nn.Conv2d(channels, hidden, kernel_size=1)]
        if norm:
            layers.append(nn.GroupNorm(1, hidden))
        layers += [nn.ReLU(inplace=True), nn.Conv2d(hidden, channels, kernel_size=1)]
        self.mlp = nn.Sequential(*layers)
        self.pool_norm = nn.BatchNorm2d(2) if norm else nn.Identity()
        self.spatial = nn.Conv2d(2, 1, kernel_size=kernel_size, padding=kernel_size // 2)
        self.channel_gate = _Gate(gate_bound)
        self.spatial_gate = _Gate(gate_bound)
        self.residual_scale = residual_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.mlp(F.adaptive_avg_pool2d(x, 1))
        mx = self.mlp(F.adaptive_max_pool2d(x, 1))
        y = x * self.channel_gate(avg + mx)
        pooled = torch.cat([y.mean(dim=1, keepdim=True), y.amax(dim=1, keepdim=True)], dim=1)
        y = y * self.spatial_gate(self.spatial(self.pool_norm(pooled)))
        return _residual(x, y, self.residual_scale)


#: The safeguards notebook 01 turns on with ``TinyUNet(safe_attention=True)``.
SAFE_ATTENTION: dict[str, Any] = {"norm": True, "gate_bound": 4.0, "residual_scale": 0.5}


def _attention(kind: str | None, channels: int, options: Mapping[str, Any]) -> nn.Module:
    if kind is None:
        return nn.Identity()
    if kind == "se":
        return SEBlock(channels, **options)
    return CBAMBlock(channels, **options)


class SpatialSelfAttention(nn.Module):
    r"""One-head self-attention over the pixels of a feature map, added residually.

    With ``x`` of shape ``(N, C, H, W)`` read as ``L = H·W`` tokens of width ``C``:
    ``q, k, v = W_q x, W_k x, W_v x`` (``1×1`` convolutions),
    ``A = softmax(q kᵀ / √C)`` over the keys, and ``y = x + W_o (A v)``.
    With ``qk_norm=True`` the queries and keys are LayerNorm-ed over channels
    first (Dehghani et al., 2023), which bounds the attention logits by the norms'
    gains. ``last_max_logit`` holds ``max |q kᵀ / √C|`` of the latest forward pass as a
    0-d tensor (``None`` before the first), a precursor one may want to watch.

    Shapes: ``(N, C, H, W) → (N, C, H, W)``.
    """

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
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":  # the largest group count <= 8 that divides the channels
        groups = max(g for g in range(1, 9) if channels % g == 0)
        return nn.GroupNorm(groups, channels)
    return nn.Identity()


def _activation(kind: str) -> nn.Module:
    return nn.LeakyReLU(0.1, inplace=True) if kind == "leaky_relu" else nn.ReLU(inplace=True)


class ConvBlock(nn.Module):
    """Two ``3×3 conv → norm → activation`` layers, then optional attention.

    ``norm`` is ``"batch"`` (BatchNorm2d), ``"group"`` (GroupNorm, up to 8 groups)
    or ``None`` (no normalisation; the convolutions then have a bias);
    ``activation`` is ``"relu"`` or ``"leaky_relu"`` (slope 0.1).
    ``attention_options`` go to the attention block (``norm``, ``gate_bound``,
    ``residual_scale``).
    """

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
        check_choice("activation", activation, ACTIVATION_TYPES)
        bias = norm is None  # a norm's shift makes a bias redundant
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=bias),
            _norm_layer(norm, out_channels),
            _activation(activation),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=bias),
            _norm_layer(norm, out_channels),
            _activation(activation),
        )
        self.attention = _attention(attention, out_channels, attention_options or {})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attention(self.conv(x))


class TinyUNet(nn.Module):
    """A small U-Net for the course, optionally with attention and deep supervision.

    ``depth`` encoder levels at resolutions ``1, 1/2, …, 1/2^(depth−1)`` with
    ``base_channels · 2^i`` channels, a bottleneck at ``1/2^depth``, and a mirrored
    decoder with skip connections. Each encoder and decoder block may end with
    ``attention="se"`` (:class:`SEBlock`) or ``"cbam"`` (:class:`CBAMBlock`).

    Outputs are logits. With ``deep_supervision=True`` the forward pass returns a
    list of ``depth`` logit tensors: index 0 the final full-resolution output and
    index ``i`` the decoder output at ``1/2^i`` resolution. Setting
    ``model.deep_supervision = False`` returns the single final tensor again
    (inference); the auxiliary heads are kept.

    Args:
        in_channels: image channels.
        num_classes: output channels (1 for binary segmentation).
        base_channels: channels of the first level.
        depth: number of down-sampling steps, 1–6. Inputs must be divisible by ``2**depth``.
        attention: ``None``, ``"se"`` or ``"cbam"``.
        deep_supervision: return one logit map per decoder level.
        attention_options: keyword arguments of the attention blocks (``norm``,
            ``gate_bound``, ``residual_scale``; see :class:`CBAMBlock`). Default: plain blocks.
        safe_attention: shorthand for ``attention_options=SAFE_ATTENTION`` (the
            safeguards of notebook 01); explicit ``attention_options`` override its entries.
        norm: normalisation after every convolution: ``"batch"`` (the default),
            ``"group"`` or ``None``. Without normalisation the network is no longer
            invariant to the scale of its weights and can really diverge.
        activation: ``"relu"`` (the default) or ``"leaky_relu"`` (slope 0.1).
        bottleneck_attention: add a :class:`SpatialSelfAttention` block after the bottleneck.
        qk_norm: LayerNorm on that block's queries and keys.
    """

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
        in_channels = check_int("in_channels", in_channels, min=1)
        num_classes = check_int("num_classes", num_classes, min=1)
        base_channels = check_int("base_channels", base_channels, min=1)
        depth = check_int("depth", depth, min=1, max=6)
        check_choice("attention", attention, ATTENTION_TYPES)
        check_choice("norm", norm, NORM_TYPES)
        check_choice("activation", activation, ACTIVATION_TYPES)
        check_bool("bottleneck_attention", bottleneck_attention)
        check_bool("qk_norm", qk_norm)
        if qk_norm and not bottleneck_attention:
            raise ValueError("qk_norm=True needs bottleneck_attention=True")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.depth = depth
        self.attention = attention
        self.deep_supervision = check_bool("deep_supervision", deep_supervision)
        options = dict(SAFE_ATTENTION) if check_bool("safe_attention", safe_attention) else {}
        options.update(check_keys("attention_options", attention_options or {}, _OPTIONS))
        self.attention_options = options
        self.norm = norm
        self.activation = activation
        block = {"norm": norm, "activation": activation}

        widths = [base_channels * 2**i for i in range(depth + 1)]
        self.encoders = nn.ModuleList()
        channels = in_channels
        for i in range(depth):
            self.encoders.append(ConvBlock(channels, widths[i], attention, options, **block))
            channels = widths[i]
        self.bottleneck = ConvBlock(widths[depth - 1], widths[depth], attention, options, **block)
        self.self_attention = (
            SpatialSelfAttention(widths[depth], qk_norm=qk_norm)
            if bottleneck_attention
            else nn.Identity()
        )
        self.upsamples = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for i in reversed(range(depth)):
            self.upsamples.append(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2))
            self.decoders.append(ConvBlock(2 * widths[i], widths[i], attention, options, **block))
        # heads[i] reads the decoder output at 1/2^i resolution; heads[0] is the final head.
        self.heads = nn.ModuleList(nn.Conv2d(widths[i], num_classes, 1) for i in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"expected input of shape (N, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        factor = 2**self.depth
        if x.shape[-2] % factor or x.shape[-1] % factor:
            raise ValueError(
                f"depth={self.depth} needs H and W divisible by 2**depth={factor}; "
                f"got an input of {x.shape[-2]}x{x.shape[-1]} (lower depth or resize the input)"
            )
        skips = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.self_attention(self.bottleneck(x))
        decoded = []  # deepest first
        for up, decoder, skip in zip(self.upsamples, self.decoders, reversed(skips)):
            x = decoder(torch.cat([up(x), skip], dim=1))
            decoded.append(x)
        decoded.reverse()  # index i at 1/2^i resolution
        if not self.deep_supervision:
            return self.heads[0](decoded[0])
        return [head(features) for head, features in zip(self.heads, decoded)]
