"""Tiled inference (worker.tiling): tile planning, seamless stitching, tiled vs untiled with the built-in models."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from model_store import store
from model_store.images import load_image
from model_store.inference import run
from model_store.networks import NetworkConfig, build_network
from worker.tiling import (
    DEFAULT_OVERLAP,
    needs_tiling,
    net_geometry,
    plan_spans,
    receptive_radius,
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
    image = load_image(path)
    return image[:, :, 100 : 100 + h, 200 : 200 + w].contiguous()


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
    # Measured: whole-image statistics max 5e-4, 135 dB; per-tile statistics max 126, mean 6.2 grey levels, 28.5 dB
    # (the instance-norm limitation: each tile's colours and textures shift; 8.9 mean on the top-left crop).
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
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in net.modules())  # hooks removed


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
