"""Super-resolution quality metrics as the SR literature reports them: PSNR and SSIM on the luma (Y) channel.

The conventions follow the MATLAB evaluation code behind the published tables (SRCNN, VDSR, Johnson et al.):

- images are first rounded and clamped to 8-bit values, as they would be once saved;
- Y is ITU-R BT.601 luma in the "studio" range [16, 235] (MATLAB ``rgb2ycbcr``);
- ``border`` pixels are shaved off every side (usually the scale factor) before measuring;
- PSNR uses a data range of 255;
- SSIM is Wang et al. (2004): 11x11 Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03, L = 255, population
  (not sample) statistics, averaged over the "valid" region where the window fits entirely inside the image
  (MATLAB ``ssim_index``; skimage with ``gaussian_weights=True, use_sample_covariance=False``).

Images are float RGB tensors, NCHW or CHW, values in [0, 255]. Everything is computed in float64 on the CPU:
evaluation images are small and the published figures are quoted to 0.01 dB.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

# MATLAB rgb2ycbcr's Y row for RGB in [0, 1]; divided by 255 below so it applies to [0, 255] values.
_Y_WEIGHTS = (65.481, 128.553, 24.966)
_Y_OFFSET = 16.0

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03
DATA_RANGE = 255.0


def _as_nchw(img: torch.Tensor) -> torch.Tensor:
    if img.dim() == 3:
        img = img.unsqueeze(0)
    if img.dim() != 4 or img.shape[1] != 3:
        raise ValueError(f"expected an RGB image shaped 3xHxW or Nx3xHxW, got {tuple(img.shape)}")
    return img


def quantize(img: torch.Tensor) -> torch.Tensor:
    """Round and clamp to 8-bit values (float64), i.e. what a saved PNG would hold."""
    return img.detach().to("cpu", torch.float64).clamp(0, 255).round()


def rgb_to_y(img: torch.Tensor) -> torch.Tensor:
    """BT.601 luma of RGB in [0, 255]: Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255, in [16, 235].

    Returns Nx1xHxW (or 1xHxW for a CHW input), float64 unless the input is already a float type.
    """
    squeeze = img.dim() == 3
    x = _as_nchw(img)
    if not x.is_floating_point():
        x = x.double()
    w = torch.tensor(_Y_WEIGHTS, dtype=x.dtype, device=x.device).view(1, 3, 1, 1) / 255.0
    y = _Y_OFFSET + (x * w).sum(dim=1, keepdim=True)
    return y[0] if squeeze else y


def _shave(y: torch.Tensor, border: int) -> torch.Tensor:
    if border < 0:
        raise ValueError(f"border must be >= 0, got {border}")
    if border == 0:
        return y
    h, w = y.shape[-2:]
    if h <= 2 * border or w <= 2 * border:
        raise ValueError(f"image {h}x{w} is too small to shave {border} px off each side")
    return y[..., border:-border, border:-border]


def _y_pair(sr: torch.Tensor, hr: torch.Tensor, border: int) -> tuple[torch.Tensor, torch.Tensor]:
    """8-bit-rounded, border-shaved Y channels (Nx1xHxW float64) of two equally sized RGB images."""
    sr, hr = _as_nchw(sr), _as_nchw(hr)
    if sr.shape != hr.shape:
        raise ValueError(f"SR and HR shapes differ: {tuple(sr.shape)} vs {tuple(hr.shape)}")
    return _shave(rgb_to_y(quantize(sr)), border), _shave(rgb_to_y(quantize(hr)), border)


def _f64(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    return torch.as_tensor(x).detach().to("cpu", torch.float64)


def psnr(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray, data_range: float = DATA_RANGE) -> float:
    """PSNR in dB of two equally shaped arrays; inf when they are identical (no error to measure)."""
    a64, b64 = _f64(a), _f64(b)
    if a64.shape != b64.shape:
        raise ValueError(f"shapes differ: {tuple(a64.shape)} vs {tuple(b64.shape)}")
    mse = torch.mean((a64 - b64) ** 2).item()
    if mse == 0:
        return math.inf
    return 10.0 * math.log10(data_range**2 / mse)


def _gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _filter_valid(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter of Nx1xHxW, keeping only positions where the window fits (MATLAB 'valid')."""
    x = F.conv2d(x, g.view(1, 1, 1, -1))
    return F.conv2d(x, g.view(1, 1, -1, 1))


def ssim(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray, data_range: float = DATA_RANGE) -> float:
    """Mean SSIM (Wang et al. 2004) of two single-channel images, HxW or Nx1xHxW (mean over the batch too)."""
    a64, b64 = _f64(a), _f64(b)
    if a64.shape != b64.shape:
        raise ValueError(f"shapes differ: {tuple(a64.shape)} vs {tuple(b64.shape)}")
    while a64.dim() < 4:
        a64, b64 = a64.unsqueeze(0), b64.unsqueeze(0)
    if min(a64.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW}, got {tuple(a64.shape[-2:])}")
    g = _gaussian_window()
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    mu_a, mu_b = _filter_valid(a64, g), _filter_valid(b64, g)
    # Population (biased) local statistics, as in the original paper's code.
    var_a = _filter_valid(a64 * a64, g) - mu_a**2
    var_b = _filter_valid(b64 * b64, g) - mu_b**2
    cov = _filter_valid(a64 * b64, g) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    return (num / den).mean().item()


def psnr_y(sr: torch.Tensor, hr: torch.Tensor, border: int = 0) -> float:
    """Y-channel PSNR (dB) of an SR result against its HR original, `border` px shaved off each side.

    For a batch, the mean of the per-image PSNRs.
    """
    ys, yh = _y_pair(sr, hr, border)
    return sum(psnr(s, h) for s, h in zip(ys, yh, strict=True)) / ys.shape[0]


def ssim_y(sr: torch.Tensor, hr: torch.Tensor, border: int = 0) -> float:
    """Y-channel SSIM of an SR result against its HR original, `border` px shaved off each side."""
    ys, yh = _y_pair(sr, hr, border)
    return ssim(ys, yh)


def mean_gradient_magnitude(img: torch.Tensor) -> float:
    """Sharpness: the mean of sqrt(gx^2 + gy^2) over the 8-bit Y channel, in Y units per pixel.

    gx and gy are forward differences (Y[i, j+1] - Y[i, j] and Y[i+1, j] - Y[i, j]) taken on the
    (H-1)x(W-1) grid where both exist. Blurry upsamplings score lower than their HR originals; hallucinated
    texture (perceptual-loss SR) can score as high or higher.
    """
    y = rgb_to_y(quantize(_as_nchw(img)))
    gx = y[..., :-1, 1:] - y[..., :-1, :-1]
    gy = y[..., 1:, :-1] - y[..., :-1, :-1]
    return torch.sqrt(gx**2 + gy**2).mean().item()
