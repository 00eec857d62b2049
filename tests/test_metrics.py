"""Y-channel PSNR/SSIM and histogram matching, checked against scikit-image (a dev-only dependency)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.exposure import match_histograms as sk_match_histograms
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from imaging.tensors import match_histograms
from model_store.networks import NetworkConfig, build_network
from model_store.options import Options
from model_store.pipeline import run
from trainer.metrics import mean_gradient_magnitude, psnr, psnr_y, rgb_to_y, ssim, ssim_y


def _image(seed: int, h: int = 40, w: int = 48) -> torch.Tensor:
    """A smooth-ish random RGB image in [0, 255] (noise on a gradient, so SSIM is not degenerate)."""
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0, 200, w).expand(h, w)
    return (ramp + 55 * torch.rand(1, 3, h, w, generator=g)).clamp(0, 255)


def _y_numpy(img: torch.Tensor, border: int) -> np.ndarray:
    y = rgb_to_y(img.clamp(0, 255).round().double())[0, 0].numpy()
    return y[border:-border, border:-border] if border else y


def test_rgb_to_y_known_values():
    colours = torch.tensor([[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255]], dtype=torch.float64)
    y = rgb_to_y(colours.T.reshape(1, 3, 1, 5)).flatten()
    expected = torch.tensor([16.0, 235.0, 16 + 65.481, 16 + 128.553, 16 + 24.966], dtype=torch.float64)
    assert torch.allclose(y, expected, atol=1e-9)


def test_rgb_to_y_keeps_chw_layout():
    assert rgb_to_y(torch.zeros(3, 5, 7)).shape == (1, 5, 7)
    assert rgb_to_y(torch.zeros(2, 3, 5, 7)).shape == (2, 1, 5, 7)


@pytest.mark.parametrize("border", [0, 4])
def test_psnr_and_ssim_match_skimage(border):
    hr = _image(0)
    sr = (hr + 12 * torch.randn(hr.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 255)
    y_sr, y_hr = _y_numpy(sr, border), _y_numpy(hr, border)

    expected_psnr = peak_signal_noise_ratio(y_hr, y_sr, data_range=255)
    expected_ssim = structural_similarity(
        y_hr, y_sr, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255
    )
    assert psnr(y_sr, y_hr) == pytest.approx(expected_psnr, abs=1e-9)
    assert ssim(y_sr, y_hr) == pytest.approx(expected_ssim, abs=1e-9)
    assert psnr_y(sr, hr, border) == pytest.approx(expected_psnr, abs=1e-9)
    assert ssim_y(sr, hr, border) == pytest.approx(expected_ssim, abs=1e-9)


def test_metrics_round_to_8_bit_first():
    hr = _image(2).round()
    # Sub-half-level errors vanish once the SR image is saved as 8-bit.
    assert psnr_y(hr + 0.4, hr) == math.inf
    assert ssim_y(hr + 0.4, hr) == pytest.approx(1.0)


def test_psnr_of_identical_images_is_inf():
    hr = _image(3)
    assert psnr_y(hr, hr.clone()) == math.inf
    assert ssim_y(hr, hr.clone(), border=2) == pytest.approx(1.0)


def test_metric_input_errors():
    with pytest.raises(ValueError, match="shapes differ"):
        psnr_y(_image(0, 40, 48), _image(0, 40, 44))
    with pytest.raises(ValueError, match="too small"):
        psnr_y(_image(0, 8, 8), _image(1, 8, 8), border=4)
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim_y(_image(0, 10, 30), _image(1, 10, 30))


def test_mean_gradient_magnitude():
    flat = torch.full((1, 3, 16, 16), 128.0)
    assert mean_gradient_magnitude(flat) == 0.0
    # A horizontal ramp of 3 grey levels per pixel has a Y gradient of 3 * 219 / 255 everywhere.
    ramp = torch.arange(16.0).mul(3).expand(1, 3, 16, 16)
    assert mean_gradient_magnitude(ramp) == pytest.approx(3 * 219 / 255)
    hr = _image(4)
    blurred = torch.nn.functional.avg_pool2d(hr, 3, stride=1, padding=1, count_include_pad=False)
    assert mean_gradient_magnitude(blurred) < mean_gradient_magnitude(hr)


def test_match_histograms_agrees_with_skimage():
    image = _image(5, 30, 36) * 0.5 + 20.3  # float values, different range
    reference = _image(6, 24, 20).round()  # different size
    ours = match_histograms(image, reference)
    expected = sk_match_histograms(
        image[0].permute(1, 2, 0).double().numpy(), reference[0].permute(1, 2, 0).double().numpy(), channel_axis=-1
    )
    assert ours.shape == image.shape and ours.dtype == torch.float32
    np.testing.assert_allclose(ours[0].permute(1, 2, 0).numpy(), expected, atol=1e-4)


def test_match_histograms_takes_on_the_reference_distribution():
    image = torch.linspace(0, 1, 64 * 64).reshape(1, 1, 64, 64).expand(1, 3, 64, 64) * 255
    # Reference: per channel, half its pixels at one value and half at another.
    reference = torch.zeros(1, 3, 8, 8)
    for c, (lo, hi) in enumerate([(10, 200), (50, 60), (0, 255)]):
        reference[0, c, :4] = lo
        reference[0, c, 4:] = hi
    out = match_histograms(image, reference)
    for c, (lo, hi) in enumerate([(10, 200), (50, 60), (0, 255)]):
        values = out[0, c].flatten()
        assert values.min() == pytest.approx(lo) and values.max() == pytest.approx(hi)
        # The dark half of the image maps onto the low value, keeping the ordering of pixels.
        assert torch.all(values[: values.numel() // 2] == lo)
        assert torch.all(values[:-1] <= values[1:])


def test_run_clamps_and_keeps_size():
    net = build_network(NetworkConfig(kind="sr", factor=4, width=0.25)).eval()
    lr = _image(7, 8, 10)
    out = run(net, lr)
    assert out.shape == (1, 3, 32, 40) and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 255
    # Matched to the input's histogram, the output stays within the input's value range.
    matched = run(net, lr, Options(histmatch=True))
    assert matched.min() >= lr.min() - 1e-4 and matched.max() <= lr.max() + 1e-4
