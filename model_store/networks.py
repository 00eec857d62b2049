"""Image transformation networks of Johnson et al. (2016): one style network, one super-resolution network.

Both take and return float RGB images in NCHW layout with pixel values in [0, 255]. Every option lives in
`NetworkConfig`, which is stored with the weights, so `build_network(config)` rebuilds a model exactly as it
was trained.

Presets:
- ``paper``: the paper's supplementary material. Batch norm; the style network reflection-pads its input by
  40 px and uses unpadded residual blocks with a centre-cropped identity path; upsampling by fractionally
  strided (stride 1/2) convolutions; a scaled tanh maps the output to [0, 255].
- ``modern``: instance norm, reflection padding at every conv, nearest-neighbour x2 upsampling followed by a
  conv (no checkerboard artifacts), and a width multiplier (0.5 gives jcjohnson's small instance-norm models).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

Kind = Literal["style", "sr"]
Preset = Literal["paper", "modern"]
Norm = Literal["batch", "instance", "none"]


@dataclass(frozen=True)
class NetworkConfig:
    """Everything needed to rebuild a network; serialized into checkpoints and manifests."""

    kind: Kind = "style"
    preset: Preset = "modern"
    width: float = 1.0
    factor: int = 1  # super-resolution factor; 1 for style networks
    residual_blocks: int | None = None  # None: the paper's count (5 for style, 4 for SR)
    norm: Norm | None = None  # None: the preset's (paper: batch; modern: instance for style, none for SR)

    def __post_init__(self) -> None:
        if self.kind not in ("style", "sr"):
            raise ValueError(f"kind must be 'style' or 'sr', got {self.kind!r}")
        if self.preset not in ("paper", "modern"):
            raise ValueError(f"preset must be 'paper' or 'modern', got {self.preset!r}")
        if self.kind == "style" and self.factor != 1:
            raise ValueError("a style network has factor 1")
        if self.kind == "sr" and (self.factor < 2 or self.factor & (self.factor - 1)):
            raise ValueError(f"super-resolution factor must be a power of two >= 2, got {self.factor}")
        if self.norm not in (None, "batch", "instance", "none"):
            raise ValueError(f"norm must be batch, instance or none, got {self.norm!r}")
        # Stored configs name their norm explicitly, so a later change of defaults cannot change a saved model.
        object.__setattr__(self, "norm", self.norm_layer)
        if not 0 < self.width <= 4:
            raise ValueError(f"width multiplier must be in (0, 4], got {self.width}")

    @property
    def blocks(self) -> int:
        if self.residual_blocks is not None:
            return self.residual_blocks
        return 5 if self.kind == "style" else 4

    @property
    def norm_layer(self) -> Norm:
        if self.norm is not None:
            return self.norm
        if self.preset == "paper":
            return "batch"
        # Instance norm throws away each image's mean and contrast, which SR must reproduce exactly (measured:
        # an instance-norm x4 net scored 3 dB under bicubic until its histogram was matched); EDSR's finding too.
        return "instance" if self.kind == "style" else "none"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NetworkConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown network config keys: {sorted(unknown)}")
        return cls(**data)


def _channels(base: int, width: float) -> int:
    return max(1, round(base * width))


def _norm(norm: Norm, channels: int) -> nn.Module:
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    return nn.Identity()


def _conv(preset: Preset, cin: int, cout: int, kernel: int, stride: int = 1, pad: bool = True) -> nn.Module:
    """A conv that keeps the spatial size (divided by stride) unless pad=False."""
    p = kernel // 2 if pad else 0
    if preset == "modern" and p:
        return nn.Sequential(nn.ReflectionPad2d(p), nn.Conv2d(cin, cout, kernel, stride))
    return nn.Conv2d(cin, cout, kernel, stride, padding=p)


def _conv_norm_relu(preset: Preset, norm: Norm, cin: int, cout: int, kernel: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(_conv(preset, cin, cout, kernel, stride), _norm(norm, cout), nn.ReLU(inplace=True))


class ResidualBlock(nn.Module):
    """conv-norm-ReLU-conv-norm plus identity; no ReLU after the add.

    With ``pad=False`` (the paper's style network) each 3x3 conv loses one pixel per side, so the identity
    path is centre-cropped by two pixels per side to match.
    """

    def __init__(self, preset: Preset, norm: Norm, channels: int, pad: bool):
        super().__init__()
        self.pad = pad
        self.body = nn.Sequential(
            _conv(preset, channels, channels, 3, pad=pad),
            _norm(norm, channels),
            nn.ReLU(inplace=True),
            _conv(preset, channels, channels, 3, pad=pad),
            _norm(norm, channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.pad else x[:, :, 2:-2, 2:-2]
        return identity + self.body(x)


def _upsample(preset: Preset, norm: Norm, cin: int, cout: int) -> nn.Sequential:
    """x2 upsampling followed by norm and ReLU."""
    if preset == "paper":
        up: nn.Module = nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1)
    else:
        up = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), _conv(preset, cin, cout, 3))
    return nn.Sequential(up, _norm(norm, cout), nn.ReLU(inplace=True))


class ScaledTanh(nn.Module):
    """Maps activations to [0, 255]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 127.5 * (torch.tanh(x) + 1.0)


class TransformNet(nn.Module):
    """The style network (kind='style') or the super-resolution network (kind='sr')."""

    def __init__(self, config: NetworkConfig):
        super().__init__()
        self.config = config
        p, n, w = config.preset, config.norm_layer, config.width
        # The paper's style network pads by 40 px once and lets its unpadded residual blocks eat it.
        self.input_pad = 40 if (config.kind == "style" and p == "paper") else 0
        pad_blocks = self.input_pad == 0

        if config.kind == "style":
            c1, c2, c3 = _channels(32, w), _channels(64, w), _channels(128, w)
            self.head = nn.Sequential(
                _conv_norm_relu(p, n, 3, c1, 9),
                _conv_norm_relu(p, n, c1, c2, 3, stride=2),
                _conv_norm_relu(p, n, c2, c3, 3, stride=2),
            )
            self.body = nn.Sequential(*[ResidualBlock(p, n, c3, pad_blocks) for _ in range(config.blocks)])
            self.tail = nn.Sequential(_upsample(p, n, c3, c2), _upsample(p, n, c2, c1), _conv(p, c1, 3, 9))
            self.multiple = 4  # two stride-2 convs: input sides must be multiples of 4
        else:
            c = _channels(64, w)
            self.head = _conv_norm_relu(p, n, 3, c, 9)
            self.body = nn.Sequential(*[ResidualBlock(p, n, c, pad_blocks) for _ in range(config.blocks)])
            stages = int(math.log2(config.factor))
            self.tail = nn.Sequential(*[_upsample(p, n, c, c) for _ in range(stages)], _conv(p, c, 3, 9))
            self.multiple = 1
        # The modern preset reflection-pads every conv (4 px for the 9x9 ones), which needs sides of at least
        # 5 px: smaller inputs are padded up to that and cropped back like any other.
        self.min_side = 5 if p == "modern" else 1
        self.output = ScaledTanh()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Transform images of any size; the output is exactly (H, W) x factor."""
        h, w = x.shape[-2:]
        y = self.core(self.pad_input(x))
        f = self.config.factor
        return y[:, :, : h * f, : w * f]

    def pad_input(self, x: torch.Tensor) -> torch.Tensor:
        """Pad to a multiple of the network's stride with reflection (cropped back after `core`): any H x W works.
        Apart from `forward` so that exported graphs (ONNX, OpenVINO) hold only `core`, whose shapes do not
        branch on the input size."""
        h, w = x.shape[-2:]
        hp, wp = max(h, self.min_side), max(w, self.min_side)
        ph, pw = hp - h + (-hp) % self.multiple, wp - w + (-wp) % self.multiple
        pad = self.input_pad
        if ph or pw or pad:
            # Reflection commutes with the per-pixel scaling in `core`, so padding the [0, 255] input is the same.
            x = _reflect_pad(x, (pad, pad + pw, pad, pad + ph))
        return x

    def core(self, x: torch.Tensor) -> torch.Tensor:
        """The network on a padded [0, 255] input; the output uncropped."""
        return self.output(self.tail(self.body(self.head(x / 127.5 - 1.0))))


def _reflect_pad(x: torch.Tensor, pad: tuple[int, int, int, int]) -> torch.Tensor:
    """Reflection padding that also works when the pad is wider than the image (tiny inputs)."""
    left, right, top, bottom = pad
    while left or right or top or bottom:
        h, w = x.shape[-2:]
        step = (min(left, w - 1), min(right, w - 1), min(top, h - 1), min(bottom, h - 1))
        if max(step) == 0:  # a 1-pixel side cannot reflect: replicate instead
            return F.pad(x, (left, right, top, bottom), mode="replicate")
        x = F.pad(x, step, mode="reflect")
        left, right, top, bottom = (a - b for a, b in zip((left, right, top, bottom), step, strict=True))
    return x


def build_network(config: NetworkConfig | dict[str, Any]) -> TransformNet:
    """Build an untrained network from its config (a `NetworkConfig` or its dict form)."""
    if isinstance(config, dict):
        config = NetworkConfig.from_dict(config)
    return TransformNet(config)
