"""The detail dial (SR network interpolation) and the stroke-size dial (stylize small, super-resolve back)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

import percept
from imaging import tensors
from model_store import pipeline, store
from model_store.networks import NetworkConfig, build_network
from model_store.options import Options
from service.app import create_app
from service.settings import ServiceSettings
from tests.helpers import wait_until

SR = NetworkConfig(kind="sr", preset="modern", width=0.125, factor=4)


def _net(config: NetworkConfig, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_network(config).eval()


@pytest.fixture
def sr_pair(tmp_store: Path) -> Iterator[tuple[torch.nn.Module, torch.nn.Module]]:
    """sr_x4_pixel and an sr_x4 'fine-tuned' from it (its weights moved away), in an empty store (fp32)."""
    pixel = _net(SR, 0)
    feat = _net(SR, 0)
    with torch.no_grad():
        for p in feat.parameters():
            p.add_(0.05 * torch.randn_like(p))
    store.publish("sr_x4_pixel", pixel, {"task": "sr", "loss": "pixel"}, half=False)
    store.publish("sr_x4", feat, {"task": "sr", "loss": "feat", "init_from": "sr_x4_pixel@1"}, half=False)
    yield pixel, feat


def _rgb(h: int = 12, w: int = 9) -> Image.Image:
    torch.manual_seed(1)
    return tensors.to_pil(torch.rand(1, 3, h, w) * 255)


def _arr(im: Image.Image) -> torch.Tensor:
    return tensors.to_tensor(im)


def test_detail_endpoints_are_the_two_networks_and_half_is_between(sr_pair) -> None:
    im = _rgb()
    pixel, feat = (_arr(percept.upscale(im, 4, loss=loss)) for loss in ("pixel", "feat"))
    assert not torch.equal(pixel, feat)
    assert torch.equal(_arr(percept.upscale(im, 4, detail=0.0)), pixel)
    assert torch.equal(_arr(percept.upscale(im, 4, detail=1.0)), feat)
    half = _arr(percept.upscale(im, 4, detail=0.5))
    d_pixel, d_feat, d_ends = ((half - pixel).abs().mean(), (half - feat).abs().mean(), (pixel - feat).abs().mean())
    assert 0 < d_pixel < d_ends and 0 < d_feat < d_ends  # neither end: somewhere along the way
    # The weights themselves are the midpoint.
    blended = pipeline.detail_net(*sr_pair, 0.5)
    for (k, w), a, b in zip(blended.state_dict().items(), sr_pair[0].state_dict().values(),
                            sr_pair[1].state_dict().values(), strict=True):
        assert torch.allclose(w, (a + b) / 2, atol=1e-6), k


def test_interpolated_nets_are_cached_and_bounded(sr_pair) -> None:
    pixel, feat = sr_pair
    first = pipeline.detail_net(pixel, feat, 0.3)
    assert pipeline.detail_net(pixel, feat, 0.3) is first
    assert pipeline.detail_net(pixel, feat, 0.301) is first  # 2 decimals: a float cannot grow the cache
    for i in range(pipeline.BLEND_CACHE + 5):
        pipeline.detail_net(pixel, feat, 0.01 * (i + 40))
    assert len(pipeline._blends) <= pipeline.BLEND_CACHE
    assert pipeline.detail_net(pixel, feat, 0.3) is not first  # evicted, rebuilt


def test_detail_needs_a_feat_net_fine_tuned_from_the_pixel_net(tmp_store: Path) -> None:
    store.publish("sr_x4_pixel", _net(SR, 0), {"task": "sr"}, half=False)
    store.publish("sr_x4", _net(SR, 1), {"task": "sr"}, half=False)  # trained from scratch: no dial
    with pytest.raises(store.ModelStoreError, match="fine-tuned from sr_x4_pixel"):
        store.sr_detail_pair(4)
    with pytest.raises(store.ModelStoreError, match="no sr_x2"):
        store.sr_detail_pair(2)
    with pytest.raises(ValueError, match="one architecture"):
        pipeline.detail_net(_net(SR, 0), _net(NetworkConfig(kind="sr", width=0.25, factor=4), 0), 0.5)


def _style(tmp_store: Path) -> torch.nn.Module:
    net = _net(NetworkConfig(kind="style", preset="modern", width=0.125), 2)
    store.publish("tiny_style", net, {"task": "style"}, half=False)
    return net


@pytest.mark.parametrize("stroke", [2.0, 4.0, 3.0])
def test_stroke_keeps_odd_sizes_and_alpha_and_runs_both_nets(sr_pair, tmp_store: Path, stroke: float) -> None:
    style = _style(tmp_store)
    pixel, _ = sr_pair
    seen: dict[str, list[tuple[int, int]]] = {"style": [], "sr": []}
    hooks = [style.register_forward_hook(lambda m, i, o: seen["style"].append(tuple(i[0].shape[-2:]))),
             pixel.register_forward_hook(lambda m, i, o: seen["sr"].append(tuple(i[0].shape[-2:])))]
    try:
        x = torch.rand(1, 3, 37, 23) * 255
        (out,) = pipeline.infer_with(style, [x], Options(stroke=stroke), {"sr_x4_pixel": pixel}.__getitem__)
    finally:
        for h in hooks:
            h.remove()
    assert out.shape == (1, 3, 37, 23)
    small = (round(37 / stroke), round(23 / stroke))
    assert seen == {"style": [small], "sr": [small]}  # styled small, then the SR net on the styled image
    # End to end with alpha, through the Python API.
    rgba = Image.new("RGBA", (23, 37), (200, 100, 50, 255))
    rgba.putpixel((3, 4), (0, 0, 0, 0))
    result = percept.stylize(rgba, "tiny_style", stroke=stroke)
    assert result.size == (23, 37) and result.mode == "RGBA" and result.getpixel((3, 4))[3] == 0


def test_finer_strokes_stylize_larger_and_keep_the_size(tmp_store: Path) -> None:
    """stroke < 1: the style net runs at 1/stroke of the size (no SR net), tiled past the budget, and the result
    is downsampled to exactly the input's size."""
    style = _style(tmp_store)
    seen: list[tuple[int, int]] = []
    hook = style.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape[-2:])))
    try:
        x = torch.rand(1, 3, 37, 23) * 255
        (out,) = pipeline.infer_with(style, [x], Options(stroke=0.5))
    finally:
        hook.remove()
    assert out.shape == (1, 3, 37, 23) and seen == [(74, 46)]
    (tiled,) = pipeline.infer_with(style, [x], Options(stroke=0.5), tile_pixels=40 * 40)
    assert (out - tiled).abs().max() < 1.0  # grey levels: the tiled larger pass changes nothing visible
    assert not torch.equal(out, pipeline.infer(style, [x])[0])  # finer strokes are another picture
    rgba = Image.new("RGBA", (23, 37), (200, 100, 50, 255))
    assert percept.stylize(rgba, "tiny_style", stroke=0.5).size == (23, 37)


def test_stroke_one_is_plain_stylization(tmp_store: Path) -> None:
    style = _style(tmp_store)
    x = torch.rand(1, 3, 16, 20) * 255
    assert torch.equal(pipeline.infer_with(style, [x], Options())[0], pipeline.infer(style, [x])[0])
    with pytest.raises(ValueError, match="between 0.5 and 4"):
        pipeline.infer_with(style, [x], Options(stroke=5.0), lambda n: style)


def _png(h: int = 10, w: int = 7) -> bytes:
    buf = io.BytesIO()
    _rgb(h, w).save(buf, "PNG")
    return buf.getvalue()


def test_api_dials_validate_and_run(sr_pair, tmp_store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _style(tmp_store)
    # An x8 feature-loss net trained from scratch (it shadows the built-in one): no detail dial at x8.
    store.publish("sr_x8", _net(NetworkConfig(kind="sr", preset="modern", width=0.125, factor=8), 3),
                  {"task": "sr", "loss": "feat"}, half=False)
    monkeypatch.setenv("PERCEPT_WARMUP_SIZES", "")
    monkeypatch.setenv("PERCEPT_MAX_BATCH_DELAY_MS", "2")
    headers = {"Content-Type": "image/png"}
    with TestClient(create_app(ServiceSettings())) as c:
        wait_until(lambda: c.get("/readyz").status_code == 200, timeout=60)
        for path, params, words in [("/upscale", {"factor": 4, "detail": 1.5}, "less than or equal"),
                                    ("/upscale", {"factor": 8, "detail": 0.5}, "fine-tuned from sr_x8_pixel"),
                                    ("/stylize", {"style": "tiny_style", "stroke": 5}, "less than or equal"),
                                    ("/stylize", {"style": "tiny_style", "stroke": 0.25}, "greater than")]:
            r = c.post(path, params=params, content=_png(), headers=headers)
            assert r.status_code == 422, (params, r.text)
            assert words in str(r.json()["detail"]), r.json()
        flags = {m["name"]: m["detail"] for m in c.get("/models").json()}
        assert flags["sr_x4"] is True and flags["sr_x4_pixel"] is False  # the web page's Detail slider reads this
        r = c.post("/upscale", params={"factor": 4, "detail": 0.5}, content=_png(), headers=headers)
        assert r.status_code == 200, r.text
        assert Image.open(io.BytesIO(r.content)).size == (28, 40)
        expected = percept.upscale(_rgb(10, 7), 4, detail=0.5)
        assert torch.equal(_arr(Image.open(io.BytesIO(r.content)).convert("RGB")), _arr(expected))
        r = c.post("/stylize", params={"style": "tiny_style", "stroke": 2}, content=_png(11, 9), headers=headers)
        assert r.status_code == 200, r.text
        assert Image.open(io.BytesIO(r.content)).size == (9, 11)


def test_eval_sr_detail_ends_are_the_two_models(sr_pair, tmp_path: Path) -> None:
    from trainer.evaluate import evaluate_sr

    data = tmp_path / "hr"
    data.mkdir()
    for i in range(2):
        _rgb(24 + 4 * i, 28).save(data / f"{i}.png")
    ends = {loss: evaluate_sr(store.sr_model_name(4, loss), 4, data)["psnr"] for loss in ("pixel", "feat")}
    assert ends["pixel"] != ends["feat"]
    assert evaluate_sr(None, 4, data, detail=0.0)["psnr"] == ends["pixel"]
    one = evaluate_sr(None, 4, data, detail=1.0)
    assert one["psnr"] == ends["feat"] and one["model"] == "sr_x4 detail=1"


def test_shipped_dial_trades_psnr_for_sharpness_monotonically(shared_data: Path, monkeypatch) -> None:
    """The built-in pair: PSNR falls and the mean gradient rises along the dial (96² crops of three Set5
    photos, the paper's degradation)."""
    from trainer.data import crop_to_multiple, degrade
    from trainer.metrics import mean_gradient_magnitude, psnr_y

    monkeypatch.delenv("MODEL_STORE", raising=False)
    try:
        pixel_name, feat_name = store.sr_detail_pair(4)
    except store.ModelStoreError as e:
        pytest.skip(str(e))
    pixel, feat = store.load(pixel_name)[0], store.load(feat_name)[0]
    hrs = [crop_to_multiple(tensors.load_image(shared_data / "sr" / "Set5" / f"{n}.png"), 4)[..., 100:196, 100:196]
           for n in ("baby", "bird", "head")]
    psnr, grad = [], []
    for d in (0.0, 0.5, 1.0):
        outs = [pipeline.run(pipeline.detail_net(pixel, feat, d), degrade(hr, 4)) for hr in hrs]
        psnr.append(sum(psnr_y(o, h, border=4) for o, h in zip(outs, hrs, strict=True)))
        grad.append(sum(mean_gradient_magnitude(o) for o in outs))
    assert psnr[0] > psnr[1] > psnr[2], psnr
    assert grad[0] < grad[1] < grad[2], grad
