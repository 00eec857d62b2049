"""Images as the networks see them, and the operations on them before and after a network runs.

Tensors are float32, RGB, 1x3xHxW, values in [0, 255]; alpha planes are 1x1xHxW, also in [0, 255]. Pixels come
in through `imaging.codec` (decoded, validated) and go out through it (encoded); everything in between lives
here: the one resize policy (antialiased bicubic on floats), blending, colour preservation, histogram matching,
alpha. The trainer, the inference pipeline and the report all use these, so an image is treated the same way
wherever it is processed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from imaging import codec

# Files read by the trainer and the CLI are the user's own: no byte or pixel limit beyond Pillow's bomb guard.
_NO_LIMIT = 1 << 62


@dataclass(frozen=True)
class Decoded:
    """A decoded image: RGB 1x3xHxW float in [0, 255], its alpha plane (1x1xHxW) or None, the sniffed format."""

    rgb: torch.Tensor
    alpha: torch.Tensor | None
    format: str  # 'png' | 'jpeg' | 'webp' | 'gif' | 'bmp' | 'tiff'
    width: int
    height: int


def from_checked(checked: codec.Checked) -> Decoded:
    """A validated Pillow image -> tensors. Grayscale, 16-bit, float, palette, CMYK and premultiplied modes
    become RGB; an alpha channel (or palette/colour-key transparency) goes to `Decoded.alpha`."""
    with checked.image as upright:
        rgb, alpha = codec.to_arrays(upright)
    height, width = rgb.shape[:2]
    return Decoded(
        rgb=torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0).contiguous(),
        alpha=None if alpha is None else torch.from_numpy(alpha)[None, None].contiguous(),
        format=checked.format,
        width=width,
        height=height,
    )


def decode(data: bytes, *, max_bytes: int = _NO_LIMIT, max_pixels: int = _NO_LIMIT,
           declared_type: str | None = None) -> Decoded:
    """Validate (`codec.check_upload`, every check and status) and decode to tensors, EXIF orientation applied."""
    return from_checked(codec.check_upload(data, max_bytes=max_bytes, max_pixels=max_pixels,
                                           declared_type=declared_type))


def read(path: str | Path) -> Decoded:
    """An image file, validated like an upload (a non-image or truncated file is an ImageError, not a crash)."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise codec.ImageError(400, f"{path}: cannot read: {e.strerror or e}") from None
    try:
        return decode(data)
    except codec.ImageError as e:
        raise codec.ImageError(e.status, f"{path}: {e.message}") from None


def load_image(path: str | Path, max_side: int | None = None) -> torch.Tensor:
    """An image file's RGB (alpha dropped), shrunk by the resize policy so its longer side is <= max_side."""
    return resize_max_side(read(path), max_side).rgb


# ---------------------------------------------------------------------------------------------------------------
# Geometry and colour


def resize_max_side(decoded: Decoded, max_side: int | None) -> Decoded:
    """Shrink (never enlarge) so that the longer side is <= max_side; alpha follows. None: unchanged.

    Antialiased bicubic on the float tensors (Pillow's LANCZOS would need a round trip through 8 bits).
    """
    width, height = codec.fit_size(decoded.width, decoded.height, max_side)
    if (width, height) == (decoded.width, decoded.height):
        return decoded
    size = (height, width)
    alpha = None if decoded.alpha is None else resize(decoded.alpha, size)
    return replace(decoded, rgb=resize(decoded.rgb, size), alpha=alpha, width=width, height=height)


def resize(tensor: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """1xCxHxW -> 1xCx(size) bicubic (antialiased when shrinking), clamped to [0, 255]; same size: unchanged."""
    if tuple(tensor.shape[-2:]) == tuple(size):
        return tensor
    out = F.interpolate(tensor.float(), size=size, mode="bicubic", align_corners=False, antialias=True)
    # Bicubic overshoots at edges; values outside [0, 255] would wrap or saturate oddly when encoded.
    return out.clamp(0, 255)


def blend(stylized: torch.Tensor, original: torch.Tensor, strength: float) -> torch.Tensor:
    """Linear blend: strength 1 -> the stylized image, 0 -> the original (both exactly), in between linear."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    _check_same_shape(stylized, original)
    # torch.lerp is exact at both endpoints (start + w * (end - start) is not at w = 1).
    return torch.lerp(original.float(), stylized.float(), float(strength))


# BT.601 full-range (JFIF) RGB <-> YCbCr; chroma is offset by 128.
_RGB_TO_YCBCR = torch.tensor(
    [
        [0.299, 0.587, 0.114],
        [-0.168736, -0.331264, 0.5],
        [0.5, -0.418688, -0.081312],
    ]
)
_YCBCR_TO_RGB = torch.tensor(
    [
        [1.0, 0.0, 1.402],
        [1.0, -0.344136, -0.714136],
        [1.0, 1.772, 0.0],
    ]
)


def rgb_to_ycbcr(rgb: torch.Tensor) -> torch.Tensor:
    """1x3xHxW RGB in [0, 255] -> 1x3xHxW (Y, Cb, Cr), BT.601 full range (Cb, Cr centred on 128)."""
    out = torch.einsum("ij,njhw->nihw", _RGB_TO_YCBCR.to(rgb.device), rgb.float())
    return out + torch.tensor([0.0, 128.0, 128.0], device=rgb.device).view(1, 3, 1, 1)


def ycbcr_to_rgb(ycbcr: torch.Tensor) -> torch.Tensor:
    """Inverse of `rgb_to_ycbcr` (not clamped)."""
    centred = ycbcr.float() - torch.tensor([0.0, 128.0, 128.0], device=ycbcr.device).view(1, 3, 1, 1)
    return torch.einsum("ij,njhw->nihw", _YCBCR_TO_RGB.to(ycbcr.device), centred)


def preserve_color(stylized: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """Keep the original's colours and take only the luminance from the stylized image.

    The simple luminance-only variant of Gatys et al., "Preserving color in neural artistic style transfer"
    (2016): Y from the stylized image, Cb/Cr from the original, back to RGB and clamped to [0, 255].
    """
    _check_same_shape(stylized, original)
    ycbcr = torch.cat([rgb_to_ycbcr(stylized)[:, :1], rgb_to_ycbcr(original)[:, 1:]], dim=1)
    return ycbcr_to_rgb(ycbcr).clamp(0, 255)


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


def attach_alpha(rgb: torch.Tensor, alpha: torch.Tensor | None, factor: int = 1) -> torch.Tensor:
    """Put the input's alpha back on a network output: 1x4xHxW RGBA, or `rgb` unchanged when alpha is None.

    Styles (factor 1) keep the original alpha as is, at the same size; super-resolution (factor = the net's
    upscaling factor) upscales it by that factor with bicubic interpolation, clamped to [0, 255]. The output
    must be exactly `factor` times the alpha's size.
    """
    if alpha is None:
        return rgb
    if factor < 1:
        raise ValueError(f"factor must be >= 1, got {factor}")
    h, w = alpha.shape[-2:]
    size = (h * factor, w * factor)
    if tuple(rgb.shape[-2:]) != size:
        raise ValueError(f"output is {tuple(rgb.shape[-2:])}, expected {size} for an alpha of {(h, w)} x{factor}")
    return torch.cat([rgb.float(), resize(alpha, size).to(rgb.device)], dim=1)


def _check_same_shape(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {tuple(a.shape)} and {tuple(b.shape)}")


# ---------------------------------------------------------------------------------------------------------------
# Back to pixels


def to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL image (any mode) -> 1x3xHxW float tensor in [0, 255] (alpha dropped)."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32)
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).contiguous()


def to_array(tensor: torch.Tensor) -> np.ndarray:
    """1xCxHxW or CxHxW tensor (C = 3 or 4) -> HxWxC float32 array clamped to [0, 255], for `codec.encode`."""
    if tensor.dim() == 4:
        tensor = tensor[0]
    return tensor.detach().float().clamp(0, 255).permute(1, 2, 0).cpu().numpy()


def to_pil(tensor: torch.Tensor) -> Image.Image:
    """3xHxW / 4xHxW (or with a batch axis of 1) tensor in [0, 255] -> RGB / RGBA PIL image, rounded."""
    array = np.ascontiguousarray(to_array(tensor).round().astype(np.uint8))
    return Image.fromarray(array, "RGBA" if array.shape[2] == 4 else "RGB")


def encode(tensor: torch.Tensor, fmt: str, quality: int | None = None) -> tuple[bytes, str]:
    """`codec.encode` of an RGB or RGBA tensor. Rounded to uint8 here, in torch, unless it is RGBA for a JPEG
    (composited over white first, in float): 0.2 ms instead of numpy's 1.5 ms at 256² (issue 15)."""
    if tensor.shape[-3] == 4 and codec.output_format(fmt, "png") == "jpeg":
        return codec.encode(to_array(tensor), fmt, quality)
    image = tensor[0] if tensor.dim() == 4 else tensor
    pixels = image.detach().float().clamp(0, 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return codec.encode(pixels, fmt, quality)


def save_image(tensor: torch.Tensor, path: str | Path, quality: int | None = None) -> None:
    """Write a tensor to `path` in the format its suffix names (parent folders created)."""
    data, _ = encode(tensor, codec.format_for_path(path), quality)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(data)
