"""The transformation networks: shapes at any size, output range, architecture of each preset, configs."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from model_store.networks import NetworkConfig, ResidualBlock, TransformNet, build_network

STYLE_CONFIGS = [
    NetworkConfig(kind="style", preset=preset, width=width) for preset in ("paper", "modern") for width in (1.0, 0.5)
]
SR_CONFIGS = [
    NetworkConfig(kind="sr", preset=preset, factor=factor, width=0.25)
    for preset in ("paper", "modern")
    for factor in (4, 8)
]
STYLE_SIZES = [(37, 45), (64, 64), (1, 7), (6, 1), (1, 1), (3, 9)]
SR_SIZES = [(37, 45), (16, 16), (1, 7), (5, 1), (1, 1), (3, 9)]


def _image(h: int, w: int, n: int = 1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, h, w, generator=g) * 255.0


def _net(config: NetworkConfig, seed: int = 0) -> TransformNet:
    torch.manual_seed(seed)
    return build_network(config).eval()


def _cid(c: NetworkConfig) -> str:
    return f"{c.kind}-{c.preset}-x{c.factor}-w{c.width}"


@pytest.fixture(scope="module", params=STYLE_CONFIGS, ids=_cid)
def style_net(request: pytest.FixtureRequest) -> TransformNet:
    return _net(request.param)


@pytest.fixture(scope="module", params=SR_CONFIGS, ids=_cid)
def sr_net(request: pytest.FixtureRequest) -> TransformNet:
    return _net(request.param)


def _check_range(y: torch.Tensor) -> None:
    assert torch.isfinite(y).all()
    assert y.min() >= 0.0 and y.max() <= 255.0


@pytest.mark.parametrize("size", STYLE_SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_style_output_is_input_size(style_net: TransformNet, size: tuple[int, int]) -> None:
    h, w = size
    with torch.no_grad():
        y = style_net(_image(h, w))
    assert y.shape == (1, 3, h, w)
    _check_range(y)


@pytest.mark.parametrize("size", SR_SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_sr_output_is_scaled_input_size(sr_net: TransformNet, size: tuple[int, int]) -> None:
    h, w = size
    f = sr_net.config.factor
    with torch.no_grad():
        y = sr_net(_image(h, w))
    assert y.shape == (1, 3, h * f, w * f)
    _check_range(y)


def test_output_range_holds_for_extreme_inputs() -> None:
    net = _net(NetworkConfig(kind="sr", preset="modern", factor=4, width=0.25))
    x = torch.cat([torch.zeros(1, 3, 8, 8), torch.full((1, 3, 8, 8), 255.0)])
    with torch.no_grad():
        _check_range(net(x))
        _check_range(net(x * 100.0))  # far outside [0, 255]: the scaled tanh still bounds the output


@pytest.mark.parametrize(
    "config",
    [
        NetworkConfig(kind="style", preset="paper", width=0.25),
        NetworkConfig(kind="style", preset="modern", width=0.25),
        NetworkConfig(kind="sr", preset="paper", factor=4, width=0.25),
        NetworkConfig(kind="sr", preset="modern", factor=4, width=0.25),
    ],
    ids=_cid,
)
def test_batch_of_two_matches_single_images(config: NetworkConfig) -> None:
    net = _net(config)
    x = _image(13, 18, n=2)
    with torch.no_grad():
        both = net(x)
        first, second = net(x[:1]), net(x[1:])
    f = config.factor
    assert both.shape == (2, 3, 13 * f, 18 * f)
    torch.testing.assert_close(both[:1], first, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(both[1:], second, rtol=1e-4, atol=1e-3)
    assert not torch.allclose(first, second)  # the output depends on the input


def _modules(net: nn.Module, kind: type) -> list[nn.Module]:
    return [m for m in net.modules() if isinstance(m, kind)]


def test_paper_style_net_architecture() -> None:
    net = _net(NetworkConfig(kind="style", preset="paper", width=0.25))
    assert net.input_pad == 40
    assert _modules(net, nn.BatchNorm2d) and not _modules(net, nn.InstanceNorm2d)
    assert len(_modules(net, nn.ConvTranspose2d)) == 2  # two fractionally strided x2 upsamplings
    blocks = _modules(net, ResidualBlock)
    assert len(blocks) == 5
    for block in blocks:
        assert not block.pad
        assert all(c.padding == (0, 0) for c in _modules(block, nn.Conv2d))


def test_paper_residual_block_is_unpadded_with_centre_cropped_identity() -> None:
    net = _net(NetworkConfig(kind="style", preset="paper", width=0.25))
    block = net.body[0]
    c = block.body[0].in_channels
    z = torch.randn(2, c, 12, 14)
    with torch.no_grad():
        out = block(z)
        assert out.shape == (2, c, 8, 10)  # two unpadded 3x3 convs: 2 px per side
        last_norm = block.body[-1]
        assert isinstance(last_norm, nn.BatchNorm2d)
        last_norm.weight.zero_()
        last_norm.bias.zero_()
        # With the residual branch silenced, what remains is the identity path: the centre crop.
        torch.testing.assert_close(block(z), z[:, :, 2:-2, 2:-2])


def test_paper_style_padding_is_consumed_exactly() -> None:
    net = _net(NetworkConfig(kind="style", preset="paper", width=0.25))
    shapes: dict[str, tuple[int, ...]] = {}
    net.body.register_forward_hook(lambda m, i, o: shapes.update(body_in=i[0].shape, body_out=o.shape))
    with torch.no_grad():
        net(_image(32, 48))
    # (32 + 80) / 4 = 28 at the bottleneck; five blocks each eat 2 px per side: 28 - 20 = 8 = 32 / 4.
    assert shapes["body_in"][-2:] == (28, 32)
    assert shapes["body_out"][-2:] == (8, 12)


def test_modern_style_net_architecture() -> None:
    net = _net(NetworkConfig(kind="style", preset="modern", width=0.25))
    assert net.input_pad == 0
    assert _modules(net, nn.InstanceNorm2d) and not _modules(net, nn.BatchNorm2d)
    assert not _modules(net, nn.ConvTranspose2d)
    assert len(_modules(net, nn.Upsample)) == 2
    assert all(c.padding == (0, 0) for c in _modules(net, nn.Conv2d))  # reflection pads, never zero padding
    assert _modules(net, nn.ReflectionPad2d)
    block = _modules(net, ResidualBlock)[0]
    c = block.body[0][1].in_channels
    z = torch.randn(1, c, 9, 11)
    with torch.no_grad():
        assert block(z).shape == z.shape
        block.body[-1].weight.zero_()
        block.body[-1].bias.zero_()
        torch.testing.assert_close(block(z), z)  # full identity path


def test_sr_architecture() -> None:
    paper = _net(NetworkConfig(kind="sr", preset="paper", factor=8, width=0.25))
    modern = _net(NetworkConfig(kind="sr", preset="modern", factor=4, width=0.25))
    assert len(_modules(paper, nn.ConvTranspose2d)) == 3  # log2(8) upsampling stages
    assert _modules(paper, nn.BatchNorm2d)
    assert len(_modules(modern, nn.Upsample)) == 2 and not _modules(modern, nn.ConvTranspose2d)
    assert len(_modules(paper, ResidualBlock)) == 4 and len(_modules(modern, ResidualBlock)) == 4


def test_width_and_block_count() -> None:
    full = build_network(NetworkConfig(kind="style", width=1.0))
    half = build_network(NetworkConfig(kind="style", width=0.5))
    assert full.head[0][0][1].out_channels == 32 and half.head[0][0][1].out_channels == 16
    assert full.body[0].body[0][1].in_channels == 128 and half.body[0].body[0][1].in_channels == 64
    n_full = sum(p.numel() for p in full.parameters())
    n_half = sum(p.numel() for p in half.parameters())
    assert 3.5 < n_full / n_half < 4.5  # conv weights scale with width squared
    assert len(build_network(NetworkConfig(kind="sr", factor=4, residual_blocks=2, width=0.25)).body) == 2


def test_config_round_trips() -> None:
    for config in [*STYLE_CONFIGS, *SR_CONFIGS, NetworkConfig(kind="sr", factor=2, residual_blocks=3)]:
        data = config.to_dict()
        assert NetworkConfig.from_dict(data) == config
        assert NetworkConfig.from_dict(json.loads(json.dumps(data))) == config
    assert NetworkConfig.from_dict({}) == NetworkConfig()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kind": "sr", "factor": 3},
        {"kind": "sr", "factor": 1},
        {"kind": "sr", "factor": 6},
        {"kind": "x"},
        {"kind": "style", "factor": 4},
        {"preset": "fancy"},
        {"width": 0.0},
        {"width": 5.0},
    ],
)
def test_invalid_configs_raise(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        NetworkConfig(**kwargs)
    with pytest.raises(ValueError):
        build_network(kwargs)


def test_from_dict_rejects_unknown_keys() -> None:
    with pytest.raises(ValueError, match="colour"):
        NetworkConfig.from_dict({"kind": "style", "colour": "red"})


@pytest.mark.parametrize("config", [STYLE_CONFIGS[1], SR_CONFIGS[3]], ids=_cid)
def test_build_from_dict_matches_build_from_config(config: NetworkConfig) -> None:
    a = build_network(config)
    b = build_network(config.to_dict())
    assert isinstance(b, TransformNet) and b.config == config
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    assert all(sa[k].shape == sb[k].shape and sa[k].dtype == sb[k].dtype for k in sa)
    # Same structure means the weights of one load into the other strictly and give the same outputs.
    b.load_state_dict(sa, strict=True)
    x = _image(10, 12)
    with torch.no_grad():
        torch.testing.assert_close(a.eval()(x), b.eval()(x))

