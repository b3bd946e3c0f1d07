"""Small segmentation models for the course: a U-Net with optional SE/CBAM attention.

The attention blocks are written *plainly*, the way they are usually first
written: multiplicative sigmoid gating with no normalisation, no bounds and no
residual scaling. Notebook 01 shows how such blocks can take training to NaN
and which safeguards fix it.

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

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ATTENTION_TYPES", "CBAMBlock", "ConvBlock", "SEBlock", "TinyUNet"]

ATTENTION_TYPES = (None, "se", "cbam")


def _check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


class SEBlock(nn.Module):
    """Squeeze-and-excitation channel attention (Hu et al., 2018).

    ``s = σ(W₂ · ReLU(W₁ · GAP(x)))`` and ``y = x ⊙ s`` (one gate per channel).
    ``W₁`` maps ``C → max(C // reduction, 1)`` channels, ``W₂`` maps back.

    Shapes: ``(N, C, H, W) → (N, C, H, W)``.
    """

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        channels = _check_positive_int("channels", channels)
        reduction = _check_positive_int("reduction", reduction)
        hidden = max(channels // reduction, 1)
        self.fc1 = nn.Conv2d(channels, hidden, kernel_size=1)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        s = torch.sigmoid(self.fc2(self.act(self.fc1(s))))
        return x * s


class CBAMBlock(nn.Module):
    """Convolutional block attention module (Woo et al., 2018): channel, then spatial.

    Channel gate: ``M_c = σ(MLP(AvgPool(x)) + MLP(MaxPool(x)))``, ``x' = x ⊙ M_c``.
    Spatial gate: ``M_s = σ(conv_k([mean_c(x'), max_c(x')]))``, ``y = x' ⊙ M_s``.

    Shapes: ``(N, C, H, W) → (N, C, H, W)``.
    """

    def __init__(self, channels: int, reduction: int = 4, kernel_size: int = 7) -> None:
        super().__init__()
        channels = _check_positive_int("channels", channels)
        reduction = _check_positive_int("reduction", reduction)
        kernel_size = _check_positive_int("kernel_size", kernel_size)
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        hidden = max(channels // reduction, 1)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, kernel_size=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, kernel_size=1),
        )
        self.spatial = nn.Conv2d(2, 1, kernel_size=kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.mlp(F.adaptive_avg_pool2d(x, 1))
        mx = self.mlp(F.adaptive_max_pool2d(x, 1))
        x = x * torch.sigmoid(avg + mx)
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.spatial(pooled))


def _attention(kind: str | None, channels: int) -> nn.Module:
    if kind is None:
        return nn.Identity()
    if kind == "se":
        return SEBlock(channels)
    return CBAMBlock(channels)


class ConvBlock(nn.Module):
    """Two ``3×3 conv → BatchNorm → ReLU`` layers, then optional attention."""

    def __init__(self, in_channels: int, out_channels: int, attention: str | None = None) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )
        self.attention = _attention(attention, out_channels)

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
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 1,
        base_channels: int = 16,
        depth: int = 3,
        attention: str | None = None,
        deep_supervision: bool = False,
    ) -> None:
        super().__init__()
        in_channels = _check_positive_int("in_channels", in_channels)
        num_classes = _check_positive_int("num_classes", num_classes)
        base_channels = _check_positive_int("base_channels", base_channels)
        depth = _check_positive_int("depth", depth)
        if depth > 6:
            raise ValueError(f"depth must be between 1 and 6, got {depth}")
        if attention not in ATTENTION_TYPES:
            raise ValueError(f"attention must be one of {ATTENTION_TYPES}, got {attention!r}")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.depth = depth
        self.attention = attention
        self.deep_supervision = bool(deep_supervision)

        widths = [base_channels * 2**i for i in range(depth + 1)]
        self.encoders = nn.ModuleList()
        channels = in_channels
        for i in range(depth):
            self.encoders.append(ConvBlock(channels, widths[i], attention))
            channels = widths[i]
        self.bottleneck = ConvBlock(widths[depth - 1], widths[depth], attention)
        self.upsamples = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for i in reversed(range(depth)):
            self.upsamples.append(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2))
            self.decoders.append(ConvBlock(2 * widths[i], widths[i], attention))
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
        x = self.bottleneck(x)
        decoded = []  # deepest first
        for up, decoder, skip in zip(self.upsamples, self.decoders, reversed(skips)):
            x = decoder(torch.cat([up(x), skip], dim=1))
            decoded.append(x)
        decoded.reverse()  # index i at 1/2^i resolution
        if not self.deep_supervision:
            return self.heads[0](decoded[0])
        return [head(features) for head, features in zip(self.heads, decoded)]
