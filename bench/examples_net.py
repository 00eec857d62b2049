"""The pytorch/examples ``fast_neural_style`` TransformerNet layout, for the benchmark's same-network row.

Written here from its published architecture (not copied): reflection padding before every convolution, instance
norm with affine parameters after every convolution but the last, ReLU activations, nearest-neighbour x2 upsampling
before the two upsampling convolutions::

    conv 9x9 3->32 s1, conv 3x3 32->64 s2, conv 3x3 64->128 s2,
    5 residual blocks (conv 3x3 128 / IN / ReLU / conv 3x3 128 / IN, plus the input),
    upsample x2 + conv 3x3 128->64, upsample x2 + conv 3x3 64->32, conv 9x9 32->3 (no norm, no activation).

Used only for timing (random weights): `bench.bench` compares it with the project's own network at width 1 and
with the shipped model in the default backend, in one run.
"""

from __future__ import annotations

import torch
from torch import nn


def conv(cin: int, cout: int, kernel: int, stride: int = 1, upsample: bool = False) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Upsample(scale_factor=2, mode="nearest")] if upsample else []
    layers += [nn.ReflectionPad2d(kernel // 2), nn.Conv2d(cin, cout, kernel, stride)]
    return layers


def conv_in_relu(cin: int, cout: int, kernel: int, stride: int = 1, upsample: bool = False) -> list[nn.Module]:
    return [*conv(cin, cout, kernel, stride, upsample), nn.InstanceNorm2d(cout, affine=True), nn.ReLU()]


class Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(*conv_in_relu(channels, channels, 3), *conv(channels, channels, 3),
                                  nn.InstanceNorm2d(channels, affine=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ExamplesTransformerNet(nn.Module):
    """Nx3xHxW in, Nx3xHxW out (H and W multiples of 4)."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            *conv_in_relu(3, 32, 9), *conv_in_relu(32, 64, 3, 2), *conv_in_relu(64, 128, 3, 2),
            *(Residual(128) for _ in range(5)),
            *conv_in_relu(128, 64, 3, upsample=True), *conv_in_relu(64, 32, 3, upsample=True),
            *conv(32, 3, 9),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
