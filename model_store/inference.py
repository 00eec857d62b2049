"""Running a stored network on one image, shared by the evaluation code and the worker.

Images are float RGB tensors, 1x3xHxW, values in [0, 255].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from model_store.networks import TransformNet


def _match_channel(source: np.ndarray, template: np.ndarray) -> np.ndarray:
    """Map `source`'s values so that their empirical CDF follows `template`'s (skimage's algorithm)."""
    src_values, src_lookup, src_counts = np.unique(source.ravel(), return_inverse=True, return_counts=True)
    tmpl_values, tmpl_counts = np.unique(template.ravel(), return_counts=True)
    src_quantiles = np.cumsum(src_counts) / source.size
    tmpl_quantiles = np.cumsum(tmpl_counts) / template.size
    # Each source value goes to the template value at the same quantile, interpolating between template values.
    matched = np.interp(src_quantiles, tmpl_quantiles, tmpl_values)
    return matched[src_lookup].reshape(source.shape)


def match_histograms(image: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per-channel histogram matching of `image` to `reference` (sizes may differ).

    Same result as ``skimage.exposure.match_histograms(image, reference, channel_axis=...)``; returns a float32
    tensor shaped and placed like `image`.
    """
    if image.dim() != 4 or reference.dim() != 4 or image.shape[:2] != reference.shape[:2] or image.shape[0] != 1:
        raise ValueError(
            f"expected 1xCxHxW tensors with the same channels, got {tuple(image.shape)} and {tuple(reference.shape)}"
        )
    src = image[0].detach().to("cpu", torch.float64).numpy()
    ref = reference[0].detach().to("cpu", torch.float64).numpy()
    out = np.stack([_match_channel(s, r) for s, r in zip(src, ref, strict=True)])
    return torch.from_numpy(out).to(image.device, torch.float32).unsqueeze(0)


def resolve_device(name: str) -> torch.device:
    """'auto' = CUDA when present, else the CPU; asking for CUDA without it is an error, not a silent fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} was asked for but CUDA is not available")
    return torch.device(name)


def run(net: TransformNet, image: torch.Tensor, histmatch: bool = False) -> torch.Tensor:
    """Apply `net` to a 1x3xHxW image; the output is clamped to [0, 255], float32, on the image's device.

    The net's train/eval mode is left as it is: `model_store.store.load` returns nets in eval mode, which is
    what inference wants (a paper-preset net in train mode would normalize with the image's own statistics).

    With `histmatch`, the output's colour histogram is matched to the input's, which undoes the colour shifts
    perceptual-loss networks are prone to (at the cost of some contrast in the style case).
    """
    param = next(net.parameters())
    with torch.inference_mode():
        out = net(image.to(param.device, param.dtype)).float().clamp(0, 255)
    out = out.to(image.device)
    if histmatch:
        out = match_histograms(out, image).clamp(0, 255)
    return out


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), where bf16 is faster than fp32; elsewhere
    PyTorch emulates it and it is several times slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: ask oneDNN
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return "avx512_bf16" in flags or "amx_bf16" in flags
