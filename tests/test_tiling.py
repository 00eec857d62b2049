"""Tiled inference (model_store.tiling): tile planning, seamless stitching, tiled vs untiled, built-in models."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from model_store import store
from model_store.networks import NetworkConfig, build_network
from model_store.tiling import (
    DEFAULT_OVERLAP,
    needs_tiling,
    net_geometry,
    plan_spans,
    receptive_radius,
    run_layer_by_layer,
    run_net_tiled,
    run_tiled,
    tile_for_budget,
)

CONTENT = Path(__file__).resolve().parents[2] / "shared" / "data" / "content"


def _image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, h, w, generator=g) * 255.0


def _photo(h: int, w: int) -> torch.Tensor:
    path = CONTENT / "chicago.jpg"
    if not path.is_file():
        pytest.skip(f"content image not found at {path}")
    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB"), dtype=np.float32)
    image = torch.from_numpy(rgb).permute(2, 0, 1)[None]
    return image[:, :, 100 : 100 + h, 200 : 200 + w].contiguous()


def run(net: nn.Module, image: torch.Tensor) -> torch.Tensor:
    """The untiled reference: one forward pass, clamped to [0, 255] as the tiled paths are."""
    with torch.no_grad():
        return net(image).clamp(0, 255)


def _diff(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float, float]:
    """Max abs, mean abs difference (grey levels) and PSNR (dB) between two [0, 255] images."""
    d = (a.double() - b.double()).abs()
    mse = (d * d).mean().item()
    return d.max().item(), d.mean().item(), 10 * math.log10(255**2 / max(mse, 1e-30))


def _nearest(factor: int):
    return lambda t: F.interpolate(t, scale_factor=factor, mode="nearest")


# Planning ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [1, 5, 63, 64, 65, 100, 127, 301, 1001])
@pytest.mark.parametrize(("tile", "overlap", "align"), [(64, 16, 1), (64, 32, 4), (50, 0, 1), (33, 20, 4), (9, 8, 1)])
def test_plan_spans_cover_exactly(length: int, tile: int, overlap: int, align: int) -> None:
    spans = plan_spans(length, tile, overlap, align)
    assert spans[0][0] == 0 and spans[-1][1] == length
    for start, end in spans:
        assert 0 <= start < end <= length and end - start <= tile
        assert start % align == 0
    for (s0, e0), (s1, _) in zip(spans, spans[1:], strict=False):
        assert s0 < s1 and e0 - s1 >= overlap  # increasing, neighbours share at least `overlap`
    if length <= tile:
        assert spans == [(0, length)]


# Stitching ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("factor", [1, 2, 3])
@pytest.mark.parametrize(("h", "w"), [(37, 53), (64, 17), (101, 99)])
def test_identity_like_fn_is_stitched_exactly(factor: int, h: int, w: int) -> None:
    image = _image(h, w)
    out = run_tiled(_nearest(factor), image, factor, tile=24, overlap=10, align=1)
    assert out.shape == (1, 3, h * factor, w * factor)
    assert torch.allclose(out, _nearest(factor)(image), atol=1e-3, rtol=0)


def test_random_conv_net_tiled_equals_untiled_when_margin_covers_receptive_field() -> None:
    torch.manual_seed(0)
    net = build_network(NetworkConfig(kind="sr", factor=2, width=0.125, residual_blocks=1)).eval()
    radius = receptive_radius(net)
    assert radius == 9  # 9x9 head (4) + one block (2) + 3x3 after upsampling (0.5) + 9x9 at x2 (2), rounded up
    image = _image(45, 71, seed=1)
    ref = run(net, image)
    out = run_tiled(lambda t: run(net, t), image, 2, tile=32, overlap=2 * radius + 4, margin=radius, align=1)
    assert out.shape == ref.shape == (1, 3, 90, 142)
    assert (out - ref).abs().max().item() < 1e-3


def test_image_smaller_than_tile_is_one_pass() -> None:
    calls: list[tuple[int, ...]] = []

    def fn(t: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(t.shape))
        return _nearest(2)(t)

    image = _image(31, 47)
    out = run_tiled(fn, image, 2, tile=64, overlap=16)
    assert calls == [(1, 3, 31, 47)]
    assert torch.equal(out, _nearest(2)(image))


def test_tiles_never_exceed_the_tile_size_and_are_aligned() -> None:
    seen: list[tuple[int, int]] = []

    def fn(t: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(t.shape[-2:]))
        return t

    image = _image(203, 150)
    out = run_tiled(fn, image, 1, tile=64, overlap=24, align=4)
    assert torch.allclose(out, image, atol=1e-3, rtol=0)
    assert len(seen) > 1 and all(h <= 64 and w <= 64 for h, w in seen)


# The built-in models -----------------------------------------------------------------------------------------


def test_sr_x4_tiled_matches_untiled() -> None:
    net, _ = store.load("sr_x4")
    image = _photo(96, 128)
    radius = receptive_radius(net)
    assert radius == 14
    ref = run(net, image)
    out = run_tiled(lambda t: run(net, t), image, 4, tile=64, overlap=32, margin=radius)
    assert out.shape == ref.shape == (1, 3, 384, 512)
    max_abs, mean_abs, psnr = _diff(out, ref)
    print(
        f"sr_x4 tiled (tile 64, overlap 32, margin 14) vs untiled: max {max_abs:.2g}, "
        f"mean {mean_abs:.2g}, {psnr:.0f} dB"
    )
    # Measured: max 3e-5, mean 5e-7 grey levels, 160 dB: float rounding only, as the margin covers the receptive field.
    assert max_abs < 0.05 and psnr > 70


def test_muse_tiled_with_whole_image_norm_statistics_matches_untiled() -> None:
    net, _ = store.load("muse")
    image = _photo(240, 320)
    ref = run(net, image)
    exact = run_net_tiled(net, image, tile=256)
    per_tile = run_net_tiled(net, image, tile=256, global_norm=False)
    assert exact.shape == per_tile.shape == ref.shape
    e_max, e_mean, e_psnr = _diff(exact, ref)
    p_max, p_mean, p_psnr = _diff(per_tile, ref)
    print(
        f"muse tiled (tile 256) vs untiled: whole-image stats max {e_max:.2g}, mean {e_mean:.2g}, {e_psnr:.0f} dB; "
        f"per-tile stats max {p_max:.0f}, mean {p_mean:.1f}, {p_psnr:.1f} dB"
    )
    # Measured (muse v2): whole-image statistics (layer by layer) max 2e-4, 142 dB; per-tile statistics max 99,
    # mean 7.6 grey levels, 27.2 dB (the instance-norm limitation: each tile's colours and textures shift).
    assert e_max < 0.05 and e_psnr > 70
    assert p_mean < 15 and p_psnr > 20


def test_global_norm_statistics_are_exact_on_odd_sizes() -> None:
    torch.manual_seed(0)
    net = build_network(NetworkConfig(kind="style", width=0.25, residual_blocks=1)).eval()
    overlap, margin, align = net_geometry(net, ramp=16)
    assert (margin, align) == (22, 4)
    image = _image(101, 150, seed=2)
    ref = run(net, image)
    out = run_net_tiled(net, image, tile=overlap + 24, ramp=16)
    assert out.shape == ref.shape == (1, 3, 101, 150)
    assert (out - ref).abs().max().item() < 0.05
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in net.modules())  # no hooks left behind


def _record_conv_tiles(net: nn.Module) -> tuple[dict[nn.Module, list[tuple[int, int]]], list]:
    """Hooks on every conv of `net` that record the output size of each call; returns (record, handles)."""
    calls: dict[nn.Module, list[tuple[int, int]]] = {}
    handles = []
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            calls[module] = []
            handles.append(module.register_forward_hook(
                lambda m, _args, out: calls[m].append(tuple(out.shape[-2:]))
            ))
    return calls, handles


def test_style_net_layer_by_layer_matches_untiled_with_many_tiles() -> None:
    torch.manual_seed(0)
    net = build_network(NetworkConfig(kind="style", width=0.25, residual_blocks=2)).eval()
    image = _image(68, 92, seed=3)  # multiples of 4: the maps are exactly 68x92, 34x46, 17x23
    ref = run(net, image)
    budget = 400  # output pixels per pass: 16 tiles of 17x23 at full scale, 1-4 px tiles at 1/4 scale
    calls, handles = _record_conv_tiles(net)
    try:
        out = run_net_tiled(net, image, budget_pixels=budget)
    finally:
        for handle in handles:
            handle.remove()
    assert out.shape == ref.shape == (1, 3, 68, 92)
    max_abs = (out - ref).abs().max().item()
    print(f"random style net, {sum(map(len, calls.values()))} conv tiles: max abs diff {max_abs:.2g}")
    assert max_abs < 1e-2  # measured 2e-4 grey levels: float rounding
    for conv, tiles in calls.items():
        layer_pixels = sum(h * w for h, w in tiles)  # the tiles partition the layer's map
        assert len(tiles) > 1, conv
        # Every pass covers at most the budget's share of its layer: the memory bound of tiling.
        assert max(h * w for h, w in tiles) * 68 * 92 <= budget * layer_pixels, conv


def test_layer_by_layer_per_image_statistics_and_tiny_sizes() -> None:
    torch.manual_seed(0)
    net = build_network(NetworkConfig(kind="style", width=0.25, residual_blocks=1)).eval()
    batch = torch.cat([_image(37, 53, seed=4), _image(37, 53, seed=5) * 0.3])  # a dim image: other statistics
    assert (run_layer_by_layer(net, batch, 300) - run(net, batch)).abs().max().item() < 1e-2
    # Sizes the network pads up to its stride and minimum side, 1-px tiles (reflection resolved by index).
    for h, w in [(1, 1), (3, 2), (5, 5), (7, 9), (13, 4)]:
        image = _image(h, w, seed=h * w)
        out = run_net_tiled(net, image, budget_pixels=1)
        assert out.shape == (1, 3, h, w)
        assert (out - run(net, image)).abs().max().item() < 1e-2


def test_layer_by_layer_precision_and_device_arguments() -> None:
    torch.manual_seed(0)
    net = build_network(NetworkConfig(kind="style", width=0.25, residual_blocks=1)).eval()
    image = _image(40, 48, seed=6)
    ref = run(net, image)
    out = run_net_tiled(net, image, budget_pixels=500, device="cpu", dtype=torch.float32)
    assert (out - ref).abs().max().item() < 1e-2
    bf16 = run_net_tiled(net, image, budget_pixels=500, dtype=torch.bfloat16)  # autocast, as fp16 on CUDA
    assert bf16.dtype == torch.float32 and (bf16 - ref).abs().mean().item() < 2.0


def test_forward_is_used_within_the_budget_and_for_networks_without_instance_norm() -> None:
    torch.manual_seed(0)
    style = build_network(NetworkConfig(kind="style", width=0.25, residual_blocks=1)).eval()
    sr = build_network(NetworkConfig(kind="sr", factor=2, width=0.125, residual_blocks=1)).eval()
    shapes: list[tuple[int, ...]] = []

    def forward(net: nn.Module):
        def fn(t: torch.Tensor) -> torch.Tensor:
            shapes.append(tuple(t.shape))
            return run(net, t)

        return fn

    image = _image(40, 48, seed=7)
    out = run_net_tiled(style, image, budget_pixels=40 * 48, forward=forward(style))  # fits: one call
    assert shapes == [(1, 3, 40, 48)] and torch.equal(out, run(style, image))
    shapes.clear()
    run_net_tiled(style, image, budget_pixels=40 * 48 - 1, forward=forward(style))  # past it: layer by layer
    assert shapes == []
    # SR (no instance norm): overlapping tiles through `forward`, exact as the margin covers the receptive field.
    image = _image(90, 110, seed=8)
    out = run_net_tiled(sr, image, budget_pixels=4 * 64 * 64, forward=forward(sr))
    assert len(shapes) > 1 and all(h <= 64 and w <= 64 for _, _, h, w in shapes)
    assert out.shape == (1, 3, 180, 220)
    assert (out - run(sr, image)).abs().max().item() < 1e-2


def test_instance_norm_outside_the_modern_preset_needs_per_tile_statistics() -> None:
    net = build_network(NetworkConfig(kind="style", preset="paper", width=0.25, norm="instance")).eval()
    image = _image(64, 64, seed=9)
    with pytest.raises(ValueError, match="global_norm=False"):
        run_net_tiled(net, image, budget_pixels=1000)
    out = run_net_tiled(net, image, tile=160, global_norm=False)  # fits in one tile: one pass
    assert torch.equal(out, run(net, image))


def test_receptive_radius_of_the_presets() -> None:
    sr = build_network(NetworkConfig(kind="sr", factor=4, width=0.25))
    style = build_network(NetworkConfig(kind="style", width=0.25))
    assert receptive_radius(sr) == 14 <= DEFAULT_OVERLAP // 4  # run_tiled's default margin covers SR
    assert receptive_radius(style) == 54


# Budgets and arguments ---------------------------------------------------------------------------------------


def test_needs_tiling_and_tile_for_budget() -> None:
    assert not needs_tiling(500, 500, 4, 4_000_000)
    assert needs_tiling(501, 500, 4, 4_000_000)
    assert needs_tiling(2001, 2000, 1, 4_000_000)
    tile = tile_for_budget(4_000_000, 4)
    assert tile == 500 and (tile * 4) ** 2 <= 4_000_000
    assert tile_for_budget(1_000_000, 1, overlap=64, align=4) == 1000
    assert tile_for_budget(1_000_000, 3, overlap=64, align=4) == 332


@pytest.mark.parametrize(
    "kwargs",
    [
        {"tile": 0},
        {"tile": 32, "overlap": 32},
        {"tile": 32, "overlap": 40},
        {"overlap": -1},
        {"tile": 32, "overlap": 30, "align": 4},
        {"tile": 32, "overlap": 16, "margin": 8},
        {"tile": 32, "overlap": 0, "margin": 1},
        {"align": 0},
        {"factor": 0},
        {"tile": 32.0},
        {"factor": True},
    ],
)
def test_invalid_arguments_raise(kwargs: dict) -> None:
    args = {"tile": 32, "overlap": 8, "factor": 1, **kwargs}
    factor = args.pop("factor")
    with pytest.raises(ValueError):
        run_tiled(lambda t: t, _image(40, 40), factor, **args)


def test_invalid_images_budgets_and_fn_outputs_raise() -> None:
    with pytest.raises(ValueError):
        run_tiled(lambda t: t, torch.zeros(3, 40, 40), 1)
    with pytest.raises(ValueError):
        run_tiled(lambda t: t, torch.zeros(1, 3, 0, 40), 1)
    with pytest.raises(ValueError):  # fn does not upscale by `factor`
        run_tiled(lambda t: t, _image(40, 40), 2, tile=16, overlap=4)
    with pytest.raises(ValueError):
        needs_tiling(0, 10, 1, 100)
    with pytest.raises(ValueError):
        needs_tiling(10, 10, 1, 0)
    with pytest.raises(ValueError):  # a 16-px tile at x4 cannot hold a 64-px overlap
        tile_for_budget(4096, 4)
    with pytest.raises(ValueError):
        plan_spans(0, 16, 4)
