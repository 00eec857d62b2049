"""Image files in and out: validating and decoding untrusted bytes, the output formats, encoding.

Pillow and numpy only (no torch, no web framework): the API process validates uploads with it without loading
torch, and maps `ImageError` to a response (``error.status`` is the HTTP status to return). `imaging.tensors`
turns what this module decodes into the networks' tensors and back.

Upload validation (`check_upload`), in this order, each step before any pixel is decoded:

* empty body -> 400; more than ``max_bytes`` bytes -> 413;
* the real format is sniffed from the bytes (the declared Content-Type is never trusted for that); only PNG,
  JPEG, WEBP, GIF (first frame), BMP and TIFF (first page) are opened. Bytes no allowed decoder recognises:

  - 400 when they start with the signature of an allowed format (a file cut short or mangled in its header),
    or when ``declared_type`` names one of the allowed image types (the client says "this is a PNG" and it
    is not decodable);
  - 415 otherwise: text, PDF, SVG, ICO, random bytes without a declared image type, ...

* width x height read from the header > ``max_pixels`` -> 413 (Pillow's own decompression-bomb guard,
  ``Image.MAX_IMAGE_PIXELS``, stays in force and is reported as 413 too);
* the full decode failing (truncated or corrupt data) -> 400. `inspect_upload`, the API's variant, checks the
  data without decoding all of it (see there).
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

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


# ---------------------------------------------------------------------------------------------------------------
# Decoding


@dataclass(frozen=True)
class Checked:
    """A validated upload, decoded by Pillow but not yet converted to tensors."""

    image: Image.Image  # upright (EXIF orientation applied), pixels loaded
    format: str


def check_upload(data: bytes, *, max_bytes: int, max_pixels: int, declared_type: str | None = None) -> Checked:
    """Every check of the module docstring: an upright, fully decoded Pillow image, or an ImageError."""
    im, fmt = _open_within_limits(data, max_bytes, max_pixels, declared_type)
    try:
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


def inspect_upload(data: bytes, *, max_bytes: int, max_pixels: int,
                   declared_type: str | None = None) -> tuple[str, int, int]:
    """`check_upload`'s checks for the API, which keeps no pixels: (format, width, height) or an ImageError.

    The integrity check reads every byte but decodes less: a PNG's chunk checksums through IEND, without
    inflating (a 1024x768 photo in 0.4 ms instead of 23), a JPEG's entropy-coded data at 1/8 scale (12 MP in
    12 ms instead of 58); other formats decode in full. So a file cut short or damaged in transit is a 400 before it
    is queued. What passes here and fails to decode (a PNG whose deflate data is wrong under valid checksums:
    only a crafted file) fails in the worker's full decode with the same 400."""
    im, fmt = _open_within_limits(data, max_bytes, max_pixels, declared_type)
    with im:
        width, height = im.size
        try:
            # Upright, as the worker will see it, where the header has the orientation (a PNG's eXIf chunk may
            # follow the pixels: Pillow would decode them to reach it, and the API's checks do not need it).
            if (fmt != "png" or "exif" in im.info) and im.getexif().get(ExifTags.Base.Orientation) in (5, 6, 7, 8):
                width, height = height, width
            if fmt == "png":
                im.verify()
            else:
                if fmt == "jpeg":
                    im.draft(None, (max(1, im.width // 8), max(1, im.height // 8)))
                im.load()
        except Image.DecompressionBombError as e:
            raise ImageError(413, f"image too large: {e}") from None
        except _DECODE_ERRORS:
            raise ImageError(400, f"the {fmt.upper()} image is truncated or corrupt") from None
    return fmt, width, height


def _open_within_limits(data: bytes, max_bytes: int, max_pixels: int,
                        declared_type: str | None) -> tuple[Image.Image, str]:
    """The checks before any pixel is decoded (bytes, format, the header's pixel count): the opened image and
    its format, or an ImageError."""
    if not data:
        raise ImageError(400, "empty body: expected an image")
    if len(data) > max_bytes:
        raise ImageError(413, f"upload is {len(data)} bytes; the limit is {max_bytes} bytes")
    im = _open(data, declared_type)
    width, height = im.size
    if width * height > max_pixels:
        im.close()
        raise ImageError(413, f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels} pixels")
    return im, _INPUT_FORMATS[im.format or ""]


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


def to_arrays(im: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
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


def encode(pixels: np.ndarray, fmt: str, quality: int | None = None) -> tuple[bytes, str]:
    """HxWx3 (RGB) or HxWx4 (RGBA) array in [0, 255], float or uint8 -> (encoded bytes, media type).

    JPEG cannot hold alpha, so RGBA is composited over white for it (in float, before rounding); PNG and WEBP
    keep alpha. `quality` (1..100) applies to JPEG and WEBP, default 90; PNG is lossless and ignores it. A bad
    `fmt` or `quality` is an ImageError 400 (they come from the request).
    """
    fmt = _normalise_format(fmt)
    if fmt not in OUTPUT_FORMATS:
        raise ImageError(400, f"unsupported output format {fmt!r}; use one of {', '.join(OUTPUT_FORMATS)}")
    if quality is None:
        quality = DEFAULT_QUALITY
    elif not 1 <= quality <= 100:
        raise ImageError(400, f"quality must be between 1 and 100, got {quality}")
    if pixels.ndim != 3 or pixels.shape[2] not in (3, 4):
        raise ValueError(f"expected HxWx3 or HxWx4 pixels, got shape {pixels.shape}")
    if pixels.dtype == np.uint8 and not (pixels.shape[2] == 4 and fmt == "jpeg"):
        rounded = np.ascontiguousarray(pixels)  # already rounded (imaging.tensors.encode does it in torch)
    else:
        array = pixels.astype(np.float32).clip(0, 255)
        if array.shape[2] == 4 and fmt == "jpeg":
            alpha = array[..., 3:] / 255.0
            array = array[..., :3] * alpha + 255.0 * (1.0 - alpha)
        rounded = np.ascontiguousarray(array.round().astype(np.uint8))
    if fmt == "png":
        return png_fast(rounded), MEDIA_TYPES[fmt]
    pil = Image.fromarray(rounded, "RGBA" if rounded.shape[2] == 4 else "RGB")
    buffer = io.BytesIO()
    if fmt == "jpeg":
        pil.save(buffer, "JPEG", quality=quality)
    else:
        # exact=False (the default) lets the encoder discard colour under fully transparent pixels.
        pil.save(buffer, "WEBP", quality=quality)
    return buffer.getvalue(), MEDIA_TYPES[fmt]


def png_fast(pixels: np.ndarray, threads: int | None = None) -> bytes:
    """HxWx3 or HxWx4 uint8 -> an 8-bit RGB/RGBA PNG: every row Sub-filtered, deflated at level 1 with zlib's RLE
    strategy (OpenCV's fast PNG settings), one IDAT chunk; past 64 kB the deflate runs in up to `threads` pieces at
    once (default: the CPU count, at most 4).

    Why not Pillow: its PNG encoder tries all five filters on every row and has no switch to skip that. Measured
    on 2 cores (`python -m bench.encode`): a 512² stylized image in 6.7 ms instead of 20.8 ms
    (Pillow, zlib level 1) for 7 % more bytes; a 256² noise image in 1.7 ms instead of 8.5 ms, which was the
    largest cost of a request beyond the model (issue 15). imagecodecs has the same settings but weighs 80 MB."""
    height, width, channels = pixels.shape
    rows = pixels.reshape(height, width * channels)
    filtered = np.empty((height, width * channels + 1), np.uint8)
    filtered[:, 0] = 1  # filter type Sub: each byte minus the same channel of the pixel to its left, mod 256
    filtered[:, 1:channels + 1] = rows[:, :channels]
    np.subtract(rows[:, channels:], rows[:, :-channels], out=filtered[:, channels + 1:])
    colour_type = 2 if channels == 3 else 6  # truecolour, truecolour with alpha

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    idat = _zlib_stream(memoryview(filtered).cast("B"), threads or min(4, os.cpu_count() or 1))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


_PIECE_BYTES = 1 << 16  # below this a piece is not worth a thread (zlib takes ~0.5 ms per 64 kB here)
_deflaters: ThreadPoolExecutor | None = None


def _zlib_stream(data: memoryview, threads: int) -> bytes:
    """One zlib stream of `data` (level 1, RLE), deflated in pieces on `threads` threads, as pigz does: each piece a
    raw deflate ended on a byte boundary (a sync flush) and the last one finished, so that they concatenate into
    one valid stream, behind the zlib header and before the Adler-32 of the whole. zlib releases the GIL while it
    compresses; each piece loses only the matches across its start (its first 32 kB of history)."""
    pieces = max(1, min(threads, len(data) // _PIECE_BYTES))
    if pieces == 1:
        deflate = zlib.compressobj(1, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
        return deflate.compress(data) + deflate.flush()
    step = -(-len(data) // pieces)
    parts = [data[i:i + step] for i in range(0, len(data), step)]

    def raw(index: int) -> bytes:
        deflate = zlib.compressobj(1, zlib.DEFLATED, -15, 9, zlib.Z_RLE)
        last = index == len(parts) - 1
        return deflate.compress(parts[index]) + deflate.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)

    global _deflaters
    if _deflaters is None:
        _deflaters = ThreadPoolExecutor(max_workers=4, thread_name_prefix="percept-deflate")
    rest = _deflaters.map(raw, range(1, len(parts)))
    body = b"".join([raw(0), *rest])  # the first piece here: one thread hand-off fewer
    return b"\x78\x01" + body + struct.pack(">I", zlib.adler32(data))  # header: deflate, 32 kB window, fastest


def format_for_path(path: str | Path) -> str:
    """The output format a file name asks for (its suffix): an ImageError 400 for one we cannot write."""
    suffix = Path(path).suffix.lstrip(".")
    if not suffix:
        raise ImageError(400, f"{path}: no file extension; name the output .png, .jpg or .webp")
    return output_format(suffix, "png")


def fit_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """(width, height) shrunk (never enlarged) so the longer side is <= max_side; None: unchanged."""
    if max_side is None or max(width, height) <= max_side:
        return width, height
    if max_side < 1:
        raise ValueError(f"max_side must be >= 1, got {max_side}")
    scale = max_side / max(width, height)
    return max(1, min(max_side, round(width * scale))), max(1, min(max_side, round(height * scale)))
