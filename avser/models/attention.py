"""3D convolution blocks and CBAM attention for (B, C, D, H, W) feature maps.

In the spirit of timm's ``layers/cbam.py``, moved to 3D: channel attention
(shared MLP over average- and max-pooled descriptors), spatial attention (a
conv over the channel-wise mean and max maps), and CBAM = channel, then
spatial. The paper's convolution block is Conv3d + GroupNorm + ReLU.
"""

from __future__ import annotations

import torch
from torch import nn

Size3 = int | tuple[int, int, int]

_VOLUME = (2, 3, 4)  # the D, H, W axes of a (B, C, D, H, W) map


class ConvBlock3d(nn.Module):
    """Conv3d (valid padding, as in Table I, unless ``padding``) + GroupNorm + ReLU."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Size3,
        stride: Size3 = 1,
        groups: int = 8,
        act_layer: type[nn.Module] = nn.ReLU,
        padding: Size3 = 0,
    ) -> None:
        super().__init__()
        # No conv bias: GroupNorm's shift makes it redundant.
        self.conv = nn.Conv3d(in_channels, out_channels, kernel_size, stride, padding, bias=False)
        self.norm = nn.GroupNorm(groups, out_channels)
        self.act = act_layer(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class ChannelAttention3d(nn.Module):
    """Reweights channels: gate(MLP(avgpool(x)) + MLP(maxpool(x))).

    The MLP's hidden size is ``channels // reduction`` but at least
    ``min_hidden`` (capped at ``channels``): its inputs follow a ReLU, so they
    are non-negative, and a 2-unit ReLU layer (32 channels / 16 in RA1) starts
    with every unit dead about one time in four, freezing the gate at 0.5.
    """

    def __init__(
        self,
        channels: int,
        reduction: int = 16,
        min_hidden: int = 8,
        act_layer: type[nn.Module] = nn.ReLU,
        gate_layer: type[nn.Module] = nn.Sigmoid,
    ) -> None:
        super().__init__()
        hidden = min(channels, max(min_hidden, channels // reduction))
        self.fc1 = nn.Conv3d(channels, hidden, 1, bias=False)
        self.act = act_layer(inplace=True)
        self.fc2 = nn.Conv3d(hidden, channels, 1, bias=False)
        self.gate = gate_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_avg = self.fc2(self.act(self.fc1(x.mean(_VOLUME, keepdim=True))))
        x_max = self.fc2(self.act(self.fc1(x.amax(_VOLUME, keepdim=True))))
        return x * self.gate(x_avg + x_max)


class SpatialAttention3d(nn.Module):
    """Reweights positions: gate(conv([mean_c(x), max_c(x)]))."""

    def __init__(self, kernel_size: int = 7, gate_layer: type[nn.Module] = nn.Sigmoid) -> None:
        super().__init__()
        # Same padding: the attention map must cover every position of x.
        self.conv = nn.Conv3d(2, 1, kernel_size, padding=kernel_size // 2)
        self.gate = gate_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_attn = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * self.gate(self.conv(x_attn))


class CBAM3d(nn.Module):
    """Convolutional block attention module in 3D: channel, then spatial."""

    def __init__(
        self,
        channels: int,
        reduction: int = 16,
        spatial_kernel: int = 7,
        min_hidden: int = 8,
        act_layer: type[nn.Module] = nn.ReLU,
        gate_layer: type[nn.Module] = nn.Sigmoid,
    ) -> None:
        super().__init__()
        self.channel = ChannelAttention3d(channels, reduction, min_hidden, act_layer, gate_layer)
        self.spatial = SpatialAttention3d(spatial_kernel, gate_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial(self.channel(x))
