"""Image handling for the HTTP service: decoding uploads safely, resizing, blending, colour preservation, encoding.

Everything here is plain Pillow/numpy/torch with no web framework, so the API layer only maps `ImageError`
to a response (``error.status`` is the HTTP status to return) and the functions can be tested on their own.

Tensors follow `model_store.images`: float32, RGB, 1x3xHxW, values in [0, 255]; alpha planes are 1x1xHxW,
also in [0, 255].

Upload validation (`decode_upload`), in this order, each step before any pixel is decoded:

* empty body -> 400; more than ``max_bytes`` bytes -> 413;
* the real format is sniffed from the bytes (the declared Content-Type is never trusted for that); only PNG,
  JPEG, WEBP, GIF (first frame), BMP and TIFF (first page) are opened. Bytes no allowed decoder recognises:

  - 400 when they start with the signature of an allowed format (a file cut short or mangled in its header),
    or when ``declared_type`` names one of the allowed image types (the client says "this is a PNG" and it
    is not decodable);
  - 415 otherwise: text, PDF, SVG, ICO, random bytes without a declared image type, ...

* width x height read from the header > ``max_pixels`` -> 413 (Pillow's own decompression-bomb guard,
  ``Image.MAX_IMAGE_PIXELS``, stays in force and is reported as 413 too);
* the full decode failing (truncated or corrupt data) -> 400.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

# Pillow format names we decode -> the service's format names. MPO is how Pillow opens the multi-picture
# JPEGs many phone cameras write; for us it is a JPEG.
_INPUT_FORMATS = {
    "PNG": "png",
    "JPEG": "jpeg",
    "MPO": "jpeg",
    "WEBP": "webp",
    "GIF": "gif",
    "BMP": "bmp",
    "TIFF": "tiff",
}
# The decoders Image.open may try (MPO has none of its own: Pillow's JPEG decoder turns into it).
_OPEN_FORMATS = ["PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF"]

# Signatures of the allowed formats: bytes that start like one of these but do not open are a broken image
# (400), not an unsupported type (415).
_SIGNATURES = (
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff",
    b"GIF87a",
    b"GIF89a",
    b"BM",
    b"II*\x00",
    b"MM\x00*",
    b"II+\x00",  # BigTIFF
    b"MM\x00+",
)

# Declared Content-Types naming an allowed format (parameters such as "; charset=" are stripped first).
_IMAGE_MEDIA_TYPES = {
    "image/png",
    "image/apng",
    "image/jpeg",
    "image/jpg",
    "image/pjpeg",
    "image/webp",
    "image/gif",
    "image/bmp",
    "image/x-bmp",
    "image/x-ms-bmp",
    "image/tiff",
    "image/tiff-fx",
}

OUTPUT_FORMATS = ("png", "jpeg", "webp")
MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
DEFAULT_QUALITY = 90

# What a failing decoder may raise: Pillow uses OSError for truncation, SyntaxError for broken PNG chunks,
# and plugins leak struct/zlib/value errors on malformed fields.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct.error, zlib.error)


class ImageError(Exception):
    """A client error about an image; `status` is the HTTP status the API returns, `message` its detail."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message

    def __repr__(self) -> str:
        return f"ImageError({self.status}, {self.message!r})"


@dataclass(frozen=True)
class Decoded:
    """A decoded upload: RGB 1x3xHxW float in [0, 255], its alpha plane (1x1xHxW) or None, the sniffed format."""

    rgb: torch.Tensor
    alpha: torch.Tensor | None
    format: str  # 'png' | 'jpeg' | 'webp' | 'gif' | 'bmp' | 'tiff'
    width: int
    height: int


# ---------------------------------------------------------------------------------------------------------------
# Decoding


@dataclass(frozen=True)
class Checked:
    """A validated upload, decoded by Pillow but not yet converted to tensors."""

    image: Image.Image  # upright (EXIF orientation applied), pixels loaded
    format: str


def check_upload(data: bytes, *, max_bytes: int, max_pixels: int, declared_type: str | None = None) -> Checked:
    """Every check of `decode_upload`, without the float conversion: what the API needs to accept a job."""
    if not data:
        raise ImageError(400, "empty body: expected an image")
    if len(data) > max_bytes:
        raise ImageError(413, f"upload is {len(data)} bytes; the limit is {max_bytes} bytes")

    im = _open(data, declared_type)
    try:
        width, height = im.size
        if width * height > max_pixels:
            raise ImageError(
                413, f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels} pixels"
            )
        fmt = _INPUT_FORMATS[im.format or ""]
        try:
            # Image.open leaves multi-frame files (GIF, animated WEBP, multi-page TIFF) on their first frame:
            # only that one is decoded and used.
            im.load()
            upright = ImageOps.exif_transpose(im)
        except Image.DecompressionBombError as e:
            raise ImageError(413, f"image too large: {e}") from None
        except _DECODE_ERRORS:
            raise ImageError(400, f"the {fmt.upper()} image is truncated or corrupt") from None
    except BaseException:
        im.close()
        raise
    if upright is not im:  # exif_transpose made a rotated copy
        im.close()
    return Checked(upright, fmt)


def decode_upload(data: bytes, *, max_bytes: int, max_pixels: int, declared_type: str | None = None) -> Decoded:
    """Validate and decode an uploaded image (see the module docstring for the checks and their statuses).

    EXIF orientation is applied (width/height are those of the upright image). Grayscale, 16-bit, float,
    palette, CMYK and premultiplied modes become RGB; an alpha channel (or palette/colour-key transparency)
    is returned separately in `Decoded.alpha`, otherwise `alpha` is None.
    """
    checked = check_upload(data, max_bytes=max_bytes, max_pixels=max_pixels, declared_type=declared_type)
    fmt = checked.format
    with checked.image as upright:
        rgb, alpha = _to_arrays(upright)
    height, width = rgb.shape[:2]
    return Decoded(
        rgb=torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0).contiguous(),
        alpha=None if alpha is None else torch.from_numpy(alpha)[None, None].contiguous(),
        format=fmt,
        width=width,
        height=height,
    )


def _open(data: bytes, declared_type: str | None) -> Image.Image:
    """Image.open restricted to the allowed formats: parses the header only, maps failures to statuses."""
    try:
        # `formats` keeps Pillow from trying its other ~40 parsers on untrusted bytes.
        return Image.open(io.BytesIO(data), formats=_OPEN_FORMATS)
    except Image.DecompressionBombError as e:
        # Pillow refuses headers over 2 * MAX_IMAGE_PIXELS outright, before our own check can run.
        raise ImageError(413, f"image too large: {e}") from None
    except UnidentifiedImageError:
        pass
    except _DECODE_ERRORS:
        # An allowed decoder recognised the file and then failed inside its header.
        raise ImageError(400, "not a decodable image: the header is truncated or corrupt") from None
    if _has_signature(data) or _declared_image(declared_type):
        raise ImageError(400, "not a decodable image")
    shown = f" ({declared_type})" if declared_type else ""
    raise ImageError(415, f"unsupported media type{shown}: upload a PNG, JPEG, WEBP, GIF, BMP or TIFF image")


def _has_signature(data: bytes) -> bool:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return True
    return data.startswith(_SIGNATURES)


def _declared_image(declared_type: str | None) -> bool:
    if not declared_type:
        return False
    return declared_type.split(";", 1)[0].strip().lower() in _IMAGE_MEDIA_TYPES


def _to_arrays(im: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """Any decoded mode -> (HxWx3 float32 RGB, HxW float32 alpha or None), both in [0, 255]."""
    mode = im.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        return _high_depth_gray(im), None
    try:
        if mode == "La":
            # Premultiplied gray+alpha: Pillow only converts it to LA directly.
            im = im.convert("LA")
        if im.mode in ("1", "L", "P", "RGB") and "transparency" in im.info:
            # Palette/colour-key transparency (GIF, PNG tRNS): Pillow turns it into a real alpha channel.
            im = im.convert("RGBA")
        elif im.mode in ("LA", "PA", "RGBa"):
            # Gray+alpha and palette+alpha expanded, premultiplied RGBa un-premultiplied.
            im = im.convert("RGBA")
        elif im.mode not in ("RGB", "RGBA"):
            # 1, L, P without transparency, CMYK (Pillow undoes Adobe's inverted CMYK JPEGs), YCbCr, RGBX, ...
            im = im.convert("RGB")
    except ValueError:
        raise ImageError(415, f"unsupported pixel format {mode!r}") from None
    array = np.asarray(im, dtype=np.float32)
    if im.mode == "RGBA":
        return np.ascontiguousarray(array[..., :3]), np.ascontiguousarray(array[..., 3])
    return array, None


def _high_depth_gray(im: Image.Image) -> np.ndarray:
    """16-bit, 32-bit integer and float grayscale -> HxWx3 float32 in [0, 255].

    I;16*: 0..65535 maps linearly to 0..255 (65535 -> 255, 257 -> 1). Mode I is what older Pillows and some
    TIFFs give 16-bit data in, so it is read on the same 0..65535 scale (clipped). Mode F: images whose
    values all lie in [0, 1] are taken as normalised, anything else as 0..255 (clipped); NaNs become 0.
    """
    values = np.asarray(im).astype(np.float64)
    if im.mode == "F":
        values = np.nan_to_num(values, nan=0.0, posinf=255.0, neginf=0.0)
        if values.size and values.min() >= 0 and values.max() <= 1:
            values = values * 255.0
        gray = values.clip(0, 255)
    else:
        gray = values.clip(0, 65535) * (255.0 / 65535.0)
    return np.repeat(gray.astype(np.float32)[..., None], 3, axis=2)


# ---------------------------------------------------------------------------------------------------------------
# Geometry and colour


def resize_max_side(decoded: Decoded, max_side: int | None) -> Decoded:
    """Shrink (never enlarge) so that the longer side is <= max_side; alpha follows. None: unchanged.

    Antialiased bicubic on the float tensors (Pillow's LANCZOS would need a round trip through 8 bits).
    """
    if max_side is None:
        return decoded
    if max_side < 1:
        raise ValueError(f"max_side must be >= 1, got {max_side}")
    h, w = decoded.height, decoded.width
    if max(h, w) <= max_side:
        return decoded
    scale = max_side / max(h, w)
    size = (max(1, min(max_side, round(h * scale))), max(1, min(max_side, round(w * scale))))
    alpha = None if decoded.alpha is None else resize(decoded.alpha, size)
    return replace(decoded, rgb=resize(decoded.rgb, size), alpha=alpha, width=size[1], height=size[0])


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
# Encoding


def output_format(requested: str | None, input_format: str) -> str:
    """The response format: the requested one ('jpg' means 'jpeg'), else the input's when it is png/jpeg/webp,
    else png. An unknown requested format is a 400."""
    if requested:
        fmt = _normalise_format(requested)
        if fmt not in OUTPUT_FORMATS:
            raise ImageError(400, f"unsupported output format {requested!r}; use one of {', '.join(OUTPUT_FORMATS)}")
        return fmt
    fmt = _normalise_format(input_format)
    return fmt if fmt in OUTPUT_FORMATS else "png"


def _normalise_format(name: str) -> str:
    name = name.strip().lower()
    return "jpeg" if name in ("jpg", "jpe") else name


def encode(image: torch.Tensor, fmt: str, quality: int | None = None) -> tuple[bytes, str]:
    """RGB (1x3xHxW) or RGBA (1x4xHxW) tensor in [0, 255] -> (encoded bytes, media type).

    JPEG cannot hold alpha, so RGBA is composited over white for it; PNG and WEBP keep alpha. `quality`
    (1..100) applies to JPEG and WEBP, default 90; PNG is lossless and ignores it. A bad `fmt` or
    `quality` is an ImageError 400 (they come from the request).
    """
    fmt = _normalise_format(fmt)
    if fmt not in OUTPUT_FORMATS:
        raise ImageError(400, f"unsupported output format {fmt!r}; use one of {', '.join(OUTPUT_FORMATS)}")
    if quality is None:
        quality = DEFAULT_QUALITY
    elif not 1 <= quality <= 100:
        raise ImageError(400, f"quality must be between 1 and 100, got {quality}")
    if image.dim() == 4:
        image = image[0]
    if image.shape[0] not in (3, 4):
        raise ValueError(f"expected 3 or 4 channels, got shape {tuple(image.shape)}")
    array = image.detach().float().cpu().clamp(0, 255)
    if array.shape[0] == 4 and fmt == "jpeg":
        array = _over_white(array)
    pixels = array.round().to(torch.uint8).permute(1, 2, 0).numpy()
    pil = Image.fromarray(np.ascontiguousarray(pixels), "RGBA" if pixels.shape[2] == 4 else "RGB")
    buffer = io.BytesIO()
    if fmt == "png":
        pil.save(buffer, "PNG")
    elif fmt == "jpeg":
        pil.save(buffer, "JPEG", quality=quality)
    else:
        # exact=False (the default) lets the encoder discard colour under fully transparent pixels.
        pil.save(buffer, "WEBP", quality=quality)
    return buffer.getvalue(), MEDIA_TYPES[fmt]


def _over_white(rgba: torch.Tensor) -> torch.Tensor:
    """3xHxW result of compositing a (non-premultiplied) 4xHxW RGBA image over a white background."""
    a = rgba[3:4] / 255.0
    return rgba[:3] * a + 255.0 * (1.0 - a)
