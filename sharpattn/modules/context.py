"""The context-aware unit of SAN (section III-D, Fig. 4, p = q = 1; docs/spec.md section 6)."""

from __future__ import annotations

import torch
from torch import nn


def _conv_bn(in_channels: int, out_channels: int, kernel: int, stride: int = 1) -> list:
    return [nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2,
                      bias=False),
            nn.BatchNorm2d(out_channels)]


class ContextAwareUnit(nn.Module):
    """Looks at a wider context to guide the mask: T (N, C, H, W) -> X (N, C, H, W).

    One residual bottleneck with the architecture of a ResNet stage's entry unit (1x1 to C/2,
    3x3 stride 2, 1x1 to 2C, a strided 1x1 projection shortcut), with its own parameters, then a
    1x1 transposed convolution with stride 2 back to C channels at the input's H x W (odd sizes
    too). The transposed convolution has no bias: the mask only sees X through the per-plane
    min-max normalisation of eq. 3, which removes any per-channel constant.

    Extra parameters for C = 256 / 512 / 1024 (ResNet-50 blocks 1-3): 510,464 / 2,036,736 /
    8,136,704, SAN Table II's 0.51 / 2.03 / 8.13 M (truncated to two decimals, as the table
    does; its convolution weights alone would round to the same figures).
    """

    def __init__(self, channels: int):
        super().__init__()
        if channels < 2 or channels % 2:
            raise ValueError(f"ContextAwareUnit: channels must be even and >= 2, got {channels}")
        width, out = channels // 2, 2 * channels
        self.channels = channels
        self.residual = nn.Sequential(
            *_conv_bn(channels, width, 1), nn.ReLU(inplace=True),
            *_conv_bn(width, width, 3, stride=2), nn.ReLU(inplace=True),
            *_conv_bn(width, out, 1))
        self.shortcut = nn.Sequential(*_conv_bn(channels, out, 1, stride=2))
        self.relu = nn.ReLU(inplace=True)
        self.upsample = nn.ConvTranspose2d(out, channels, kernel_size=1, stride=2, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # torchvision's ResNet initialisation, so the unit starts like the backbone's own units.
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        if t.dim() != 4 or t.shape[1] != self.channels:
            raise ValueError(f"ContextAwareUnit({self.channels}): expected (N, {self.channels}, "
                             f"H, W), got {tuple(t.shape)}")
        context = self.relu(self.residual(t) + self.shortcut(t))
        return self.upsample(context, output_size=t.shape[-2:])

    def extra_repr(self) -> str:
        return f"channels={self.channels}"
