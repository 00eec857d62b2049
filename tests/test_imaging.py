"""Tests for imaging (codec, tensors): upload validation (statuses), modes, resizing, blending, colour, encoding.

All images are generated here with Pillow into memory.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from imaging import codec, tensors
from imaging.codec import ImageError, output_format
from imaging.tensors import (
    Decoded,
    attach_alpha,
    blend,
    encode,
    preserve_color,
    resize_max_side,
    rgb_to_ycbcr,
)
from imaging.tensors import decode as decode_upload

MAX_BYTES = 1_000_000
MAX_PIXELS = 1_000_000


def save(im: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    im.save(buffer, fmt, **params)
    return buffer.getvalue()


def decode(data: bytes, declared_type: str | None = None, **limits) -> Decoded:
    limits = {"max_bytes": MAX_BYTES, "max_pixels": MAX_PIXELS, **limits}
    return decode_upload(data, declared_type=declared_type, **limits)


def gradient(width: int = 32, height: int = 24) -> Image.Image:
    """A smooth RGB image: lossy codecs reproduce it closely."""
    x = np.linspace(40, 210, width)[None, :].repeat(height, 0)
    y = np.linspace(40, 210, height)[:, None].repeat(width, 1)
    return Image.fromarray(np.stack([x, y, (x + y) / 2], axis=2).astype(np.uint8), "RGB")


def with_ihdr_size(png: bytes, width: int, height: int) -> bytes:
    """The PNG with its IHDR's dimensions replaced (and the chunk's CRC fixed): the header lies, the data is tiny."""
    assert png[12:16] == b"IHDR"
    ihdr = png[16:29]
    patched = struct.pack(">II", width, height) + ihdr[8:]
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + patched))
    return png[:16] + patched + crc + png[33:]


SMALL_PNG = save(gradient(), "PNG")
SMALL_JPEG = save(gradient(), "JPEG", quality=90)
NOISE = bytes([0]) + np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes()


def corrupt_idat(png: bytes) -> bytes:
    i = png.index(b"IDAT") + 10
    return png[:i] + bytes([png[i] ^ 0xFF]) + png[i + 1 :]


# ---------------------------------------------------------------------------------------------------------------
# Bad uploads


@pytest.mark.parametrize(
    ("data", "declared_type", "status"),
    [
        pytest.param(b"", None, 400, id="empty"),
        pytest.param(b"", "image/png", 400, id="empty-declared-png"),
        pytest.param(NOISE, None, 415, id="random-bytes-undeclared"),
        pytest.param(NOISE, "application/octet-stream", 415, id="random-bytes-octet-stream"),
        pytest.param(NOISE, "image/jpeg", 400, id="random-bytes-declared-jpeg"),
        pytest.param(b"hello, world\n", "text/plain; charset=utf-8", 415, id="text"),
        pytest.param(b"hello, world\n", None, 415, id="text-undeclared"),
        pytest.param(b"hello, world\n", "image/png", 400, id="text-declared-png"),
        pytest.param(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", "application/pdf", 415, id="pdf"),
        pytest.param(b"<svg xmlns='http://www.w3.org/2000/svg'/>", "image/svg+xml", 415, id="svg"),
        pytest.param(save(Image.new("RGB", (16, 16)), "ICO"), "image/x-icon", 415, id="ico"),
        pytest.param(save(Image.new("RGB", (16, 16)), "PPM"), None, 415, id="ppm"),
        pytest.param(SMALL_PNG[: len(SMALL_PNG) // 2], "image/png", 400, id="truncated-png"),
        pytest.param(SMALL_PNG[:20], None, 400, id="truncated-png-header"),
        pytest.param(SMALL_JPEG[: len(SMALL_JPEG) // 2], "image/jpeg", 400, id="truncated-jpeg"),
        pytest.param(SMALL_JPEG[:30], None, 400, id="truncated-jpeg-header"),
        pytest.param(corrupt_idat(SMALL_PNG), None, 400, id="png-bad-crc"),
        pytest.param(b"GIF89a\x10\x00", None, 400, id="truncated-gif"),
        pytest.param(b"RIFF\x10\x00\x00\x00WEBPVP8 ", None, 400, id="truncated-webp"),
    ],
)
@pytest.mark.parametrize("check", ["decode", "inspect"])
def test_bad_uploads(data: bytes, declared_type: str | None, status: int, check: str):
    """The worker's full decode and the API's lighter `inspect_upload` refuse the same files the same way."""
    with pytest.raises(ImageError) as info:
        if check == "decode":
            decode(data, declared_type)
        else:
            codec.inspect_upload(data, max_bytes=MAX_BYTES, max_pixels=MAX_PIXELS, declared_type=declared_type)
    assert info.value.status == status
    assert info.value.message


def _rotated(fmt: str, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation  # 5-8: stored 40x20, shown 20x40
    return save(gradient(40, 20), fmt, exif=exif)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(SMALL_PNG, id="png"),
        pytest.param(SMALL_JPEG, id="jpeg"),
        pytest.param(_rotated("JPEG", 6), id="jpeg-exif-rotated"),
        pytest.param(save(Image.new("CMYK", (30, 10), (0, 255, 255, 0)), "JPEG"), id="jpeg-cmyk"),
        pytest.param(save(gradient().convert("L"), "JPEG", progressive=True), id="jpeg-gray-progressive"),
        pytest.param(save(gradient(), "WEBP"), id="webp"),
        pytest.param(save(gradient().convert("P"), "GIF"), id="gif"),
        pytest.param(_rotated("PNG", 8), id="png-exif-rotated"),
    ],
)
def test_inspect_upload_agrees_with_the_full_decode(data: bytes):
    """What the API reads without decoding (format, upright size) is what the worker's decode gives."""
    decoded = decode(data)
    fmt, width, height = codec.inspect_upload(data, max_bytes=MAX_BYTES, max_pixels=MAX_PIXELS)
    assert (fmt, width, height) == (decoded.format, decoded.width, decoded.height)


def test_a_large_jpeg_cut_short_is_refused_by_inspect_upload():
    """The 1/8-scale pass still reads the whole entropy-coded stream: a photo-sized JPEG missing its end is a 400."""
    data = save(Image.fromarray(np.random.default_rng(1).integers(0, 256, (600, 800, 3), dtype=np.uint8)), "JPEG")
    assert codec.inspect_upload(data, max_bytes=MAX_BYTES * 10, max_pixels=MAX_PIXELS)[1:] == (800, 600)
    with pytest.raises(ImageError) as info:
        codec.inspect_upload(data[: len(data) * 9 // 10], max_bytes=MAX_BYTES * 10, max_pixels=MAX_PIXELS)
    assert info.value.status == 400 and "truncated" in info.value.message


def test_a_png_lying_about_its_size_passes_inspection_and_fails_the_decode():
    """The trade `inspect_upload` makes: PNG checksums are checked, the deflate data is not inflated. A crafted
    file (valid checksums, a header bigger than its data) reaches the worker, whose decode refuses it with 400."""
    lying = with_ihdr_size(SMALL_PNG, 500, 400)
    assert codec.inspect_upload(lying, max_bytes=MAX_BYTES, max_pixels=MAX_PIXELS) == ("png", 500, 400)
    with pytest.raises(ImageError) as info:
        decode(lying)
    assert info.value.status == 400


def test_too_many_bytes_is_413_before_sniffing():
    with pytest.raises(ImageError) as info:
        decode(SMALL_PNG, max_bytes=len(SMALL_PNG) - 1)
    assert info.value.status == 413
    assert str(len(SMALL_PNG) - 1) in info.value.message
    # Exactly at the limit is fine.
    assert decode(SMALL_PNG, max_bytes=len(SMALL_PNG)).width == 32


def test_too_many_pixels_is_413_from_the_header():
    # The header says 5000x5000, the file holds 32x24 pixels of data: decoding it would fail with a 400, so a
    # 413 shows the size was refused from the header alone.
    lying = with_ihdr_size(SMALL_PNG, 5000, 5000)
    assert len(lying) < 10_000
    with pytest.raises(ImageError) as info:
        decode(lying, "image/png")
    assert info.value.status == 413
    assert "5000x5000" in info.value.message and str(MAX_PIXELS) in info.value.message
    with pytest.raises(ImageError) as info:
        decode(lying, max_pixels=25_000_000)
    assert info.value.status == 400  # allowed by size, but the data is not there


def test_decompression_bomb_beyond_pillows_limit_is_413():
    # 20000x20000 = 4e8 pixels: over 2 * Image.MAX_IMAGE_PIXELS, Pillow refuses it while opening.
    with pytest.raises(ImageError) as info:
        decode(with_ihdr_size(SMALL_PNG, 20000, 20000), max_pixels=10**12)
    assert info.value.status == 413


def test_real_compressed_bomb_is_413():
    # A genuine 1-bit 4000x4000 PNG: a couple of KB on disk, 16 million pixels.
    bomb = save(Image.new("1", (4000, 4000)), "PNG")
    assert len(bomb) < 10_000
    with pytest.raises(ImageError) as info:
        decode(bomb)
    assert info.value.status == 413
    assert "4000x4000" in info.value.message


def test_image_error_carries_status_and_message():
    error = ImageError(415, "nope")
    assert (error.status, error.message, str(error)) == (415, "nope", "nope")


# ---------------------------------------------------------------------------------------------------------------
# Good uploads


def test_rgb_jpeg():
    decoded = decode(SMALL_JPEG, "image/jpeg")
    assert decoded.format == "jpeg" and decoded.alpha is None
    assert (decoded.width, decoded.height) == (32, 24)
    assert decoded.rgb.shape == (1, 3, 24, 32) and decoded.rgb.dtype == torch.float32
    expected = torch.from_numpy(np.asarray(gradient(), dtype=np.float32)).permute(2, 0, 1)
    assert (decoded.rgb[0] - expected).abs().mean() < 3


def test_declared_type_does_not_override_the_sniffed_format():
    assert decode(SMALL_JPEG, "image/png").format == "jpeg"


def test_rgba_png_keeps_alpha():
    rgba = np.zeros((6, 5, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = np.arange(30).reshape(6, 5) * 8
    decoded = decode(save(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert decoded.format == "png"
    assert decoded.alpha is not None and decoded.alpha.shape == (1, 1, 6, 5)
    assert torch.equal(decoded.alpha[0, 0], torch.from_numpy(rgba[..., 3].astype(np.float32)))
    assert torch.equal(decoded.rgb[0, 0], torch.full((6, 5), 200.0))


def test_grayscale_l():
    gray = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5
    decoded = decode(save(Image.fromarray(gray, "L"), "PNG"))
    assert decoded.rgb.shape == (1, 3, 6, 8) and decoded.alpha is None
    for channel in range(3):
        assert torch.equal(decoded.rgb[0, channel], torch.from_numpy(gray.astype(np.float32)))


def test_gray_alpha_la():
    im = Image.merge("LA", [Image.new("L", (4, 3), 90), Image.new("L", (4, 3), 30)])
    decoded = decode(save(im, "PNG"))
    assert torch.equal(decoded.rgb, torch.full((1, 3, 3, 4), 90.0))
    assert torch.equal(decoded.alpha, torch.full((1, 1, 3, 4), 30.0))


def test_16_bit_grayscale_png_is_scaled_to_8_bit():
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    im = Image.fromarray(values)
    assert im.mode == "I;16"
    decoded = decode(save(im, "PNG"))
    assert decoded.alpha is None
    torch.testing.assert_close(decoded.rgb[0, 0, 0], torch.tensor([0.0, 1.0, 128.0, 255.0]))
    assert torch.equal(decoded.rgb[0, 0], decoded.rgb[0, 2])


def test_float_tiff_in_unit_range_is_scaled():
    decoded = decode(save(Image.new("F", (3, 2), 0.5), "TIFF"))
    assert decoded.format == "tiff"
    torch.testing.assert_close(decoded.rgb, torch.full((1, 3, 2, 3), 127.5))


def test_one_bit_png():
    im = Image.new("1", (4, 4))
    im.putpixel((1, 2), 1)
    decoded = decode(save(im, "PNG"))
    assert decoded.rgb[0, :, 2, 1].tolist() == [255.0] * 3
    assert decoded.rgb.sum() == 3 * 255


def test_palette_with_transparency_becomes_alpha():
    im = Image.new("P", (4, 2), 0)
    im.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    im.putpixel((3, 1), 1)
    decoded = decode(save(im, "PNG", transparency=0))
    assert decoded.alpha is not None
    expected_alpha = torch.zeros(2, 4)
    expected_alpha[1, 3] = 255
    assert torch.equal(decoded.alpha[0, 0], expected_alpha)
    assert decoded.rgb[0, :, 1, 3].tolist() == [200.0, 100.0, 50.0]


def test_palette_without_transparency_has_no_alpha():
    im = Image.new("P", (4, 2), 1)
    im.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    decoded = decode(save(im, "PNG"))
    assert decoded.alpha is None
    assert decoded.rgb[0, :, 0, 0].tolist() == [200.0, 100.0, 50.0]


def test_cmyk_jpeg_becomes_rgb():
    data = save(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95)  # pure red in CMYK
    decoded = decode(data, "image/jpeg")
    assert decoded.format == "jpeg" and decoded.rgb.shape == (1, 3, 16, 16)
    r, g, b = decoded.rgb[0].mean(dim=(1, 2)).tolist()
    assert r > 240 and g < 15 and b < 15


def test_exif_orientation_is_applied():
    # Stored 16 wide x 8 high: top half red, bottom half blue. Orientation 6 = rotate 90 degrees clockwise
    # for display, so the upright image is 8 wide x 16 high with red on the right.
    stored = np.zeros((8, 16, 3), dtype=np.uint8)
    stored[:4, :, 0] = 255
    stored[4:, :, 2] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    decoded = decode(save(Image.fromarray(stored, "RGB"), "JPEG", quality=95, exif=exif))
    assert (decoded.width, decoded.height) == (8, 16)
    assert decoded.rgb.shape == (1, 3, 16, 8)
    right, left = decoded.rgb[0, :, :, -1].mean(dim=1), decoded.rgb[0, :, :, 0].mean(dim=1)
    assert right[0] > 200 and right[2] < 60
    assert left[2] > 200 and left[0] < 60


def test_gif_first_frame():
    frames = [Image.new("RGB", (6, 4), (255, 0, 0)), Image.new("RGB", (6, 4), (0, 255, 0))]
    data = save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    decoded = decode(data, "image/gif")
    assert decoded.format == "gif" and decoded.rgb.shape == (1, 3, 4, 6)
    assert decoded.rgb[0, :, 0, 0].tolist() == [255.0, 0.0, 0.0]


def test_gif_transparency():
    im = Image.new("P", (4, 4), 0)
    im.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    im.putpixel((0, 0), 1)
    decoded = decode(save(im, "GIF", transparency=0))
    assert decoded.alpha is not None
    assert decoded.alpha[0, 0, 0, 0] == 255 and decoded.alpha[0, 0, 3, 3] == 0


def test_webp():
    decoded = decode(save(gradient(), "WEBP", quality=95), "image/webp")
    assert decoded.format == "webp" and decoded.rgb.shape == (1, 3, 24, 32)
    expected = torch.from_numpy(np.asarray(gradient(), dtype=np.float32)).permute(2, 0, 1)
    assert (decoded.rgb[0] - expected).abs().mean() < 4


@pytest.mark.parametrize("fmt", ["BMP", "TIFF"])
def test_lossless_formats(fmt: str):
    decoded = decode(save(gradient(), fmt))
    assert decoded.format == fmt.lower()
    expected = torch.from_numpy(np.asarray(gradient(), dtype=np.float32)).permute(2, 0, 1)
    assert torch.equal(decoded.rgb[0], expected)


# ---------------------------------------------------------------------------------------------------------------
# Geometry and colour


def decoded_of(height: int, width: int, alpha: bool) -> Decoded:
    rgb = torch.rand(1, 3, height, width) * 255
    a = torch.full((1, 1, height, width), 128.0) if alpha else None
    return Decoded(rgb=rgb, alpha=a, format="png", width=width, height=height)


def test_resize_max_side_shrinks_longer_side_and_alpha():
    out = resize_max_side(decoded_of(200, 300, alpha=True), 100)
    assert (out.width, out.height) == (100, 67)
    assert out.rgb.shape == (1, 3, 67, 100) and out.alpha.shape == (1, 1, 67, 100)
    torch.testing.assert_close(out.alpha, torch.full((1, 1, 67, 100), 128.0))
    assert out.rgb.min() >= 0 and out.rgb.max() <= 255
    tall = resize_max_side(decoded_of(300, 30, alpha=False), 100)
    assert (tall.width, tall.height) == (10, 100) and tall.alpha is None


def test_resize_max_side_never_enlarges():
    small = decoded_of(50, 60, alpha=False)
    assert resize_max_side(small, 100) is small
    assert resize_max_side(small, 60) is small
    assert resize_max_side(small, None) is small
    with pytest.raises(ValueError):
        resize_max_side(small, 0)


def test_blend_endpoints_and_midpoint():
    stylized, original = torch.rand(1, 3, 5, 7) * 255, torch.rand(1, 3, 5, 7) * 255
    assert torch.equal(blend(stylized, original, 0.0), original)
    assert torch.equal(blend(stylized, original, 1.0), stylized)
    torch.testing.assert_close(blend(stylized, original, 0.5), (stylized + original) / 2)
    torch.testing.assert_close(blend(stylized, original, 0.25), 0.75 * original + 0.25 * stylized)
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError):
            blend(stylized, original, bad)
    with pytest.raises(ValueError):
        blend(stylized, original[:, :, :4], 0.5)


def test_ycbcr_matches_pillow():
    im = gradient()
    ours = rgb_to_ycbcr(torch.from_numpy(np.asarray(im, dtype=np.float32)).permute(2, 0, 1)[None])
    pillow = torch.from_numpy(np.asarray(im.convert("YCbCr"), dtype=np.float32)).permute(2, 0, 1)[None]
    assert (ours - pillow).abs().max() <= 1.0


def test_preserve_color_keeps_original_chroma_and_stylized_luma():
    generator = torch.Generator().manual_seed(0)
    # Mid-range colours: the recombined image stays inside [0, 255], so nothing is clamped.
    original = 100 + torch.rand(1, 3, 8, 9, generator=generator) * 50
    stylized = 100 + torch.rand(1, 3, 8, 9, generator=generator) * 50
    out = preserve_color(stylized, original)
    out_ycc, sty_ycc, orig_ycc = rgb_to_ycbcr(out), rgb_to_ycbcr(stylized), rgb_to_ycbcr(original)
    torch.testing.assert_close(out_ycc[:, 0], sty_ycc[:, 0], atol=1e-3, rtol=0)
    torch.testing.assert_close(out_ycc[:, 1:], orig_ycc[:, 1:], atol=1e-3, rtol=0)


def test_preserve_color_clamps():
    original = torch.zeros(1, 3, 2, 2)
    original[:, 0] = 255  # saturated red
    out = preserve_color(torch.full((1, 3, 2, 2), 255.0), original)
    assert out.min() >= 0 and out.max() <= 255


def test_attach_alpha_upscales_for_super_resolution():
    alpha = torch.full((1, 1, 5, 7), 200.0)
    alpha[..., 0, 0] = 0
    rgb = torch.rand(1, 3, 20, 28) * 255
    out = attach_alpha(rgb, alpha, 4)
    assert out.shape == (1, 4, 20, 28)
    assert torch.equal(out[:, :3], rgb)
    assert out[:, 3].min() >= 0 and out[:, 3].max() <= 255
    assert out[0, 3, 19, 27] == pytest.approx(200.0)
    with pytest.raises(ValueError):
        attach_alpha(rgb, alpha, 2)


def test_attach_alpha_keeps_alpha_for_styles():
    alpha = torch.rand(1, 1, 6, 5) * 255
    rgb = torch.rand(1, 3, 6, 5) * 255
    out = attach_alpha(rgb, alpha, 1)
    assert torch.equal(out[:, 3:], alpha)
    assert attach_alpha(rgb, None, 4) is rgb


# ---------------------------------------------------------------------------------------------------------------
# Encoding


def smooth_tensor(alpha: bool) -> torch.Tensor:
    rgb = torch.from_numpy(np.asarray(gradient(), dtype=np.float32)).permute(2, 0, 1)[None]
    if not alpha:
        return rgb
    a = torch.full((1, 1, 24, 32), 255.0)
    a[..., :, :8] = 0
    a[..., :, 8:16] = 128
    return torch.cat([rgb, a], dim=1)


@pytest.mark.parametrize("alpha", [False, True], ids=["rgb", "rgba"])
@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_encode_round_trip(fmt: str, alpha: bool):
    image = smooth_tensor(alpha)
    data, media_type = encode(image, fmt, None)
    assert media_type == f"image/{fmt}"
    decoded = decode(data)
    assert decoded.format == fmt and decoded.rgb.shape == (1, 3, 24, 32)
    if fmt == "png":
        assert torch.equal(decoded.rgb, image[:, :3])
        assert (decoded.alpha is None) == (not alpha)
        if alpha:
            assert torch.equal(decoded.alpha, image[:, 3:])
    elif fmt == "webp":
        assert (decoded.alpha is None) == (not alpha)
        if alpha:
            assert torch.equal(decoded.alpha, image[:, 3:])
        opaque = slice(16, None)
        assert (decoded.rgb[..., opaque] - image[:, :3, :, opaque]).abs().mean() < 4
    else:  # jpeg: no alpha, composited over white
        assert decoded.alpha is None
        if alpha:
            assert decoded.rgb[..., 2:-2, 1:6].min() > 245  # fully transparent -> white
            expected = image[:, :3, :, 16:]
        else:
            expected = image[:, :3]
        width = expected.shape[-1]
        assert (decoded.rgb[..., -width:] - expected).abs().mean() < 3


def test_encode_jpeg_composites_half_transparent_over_white():
    rgba = torch.zeros(1, 4, 16, 16)
    rgba[:, 3] = 127.5
    data, _ = encode(rgba, "jpeg", 95)
    assert decode(data).rgb.mean() == pytest.approx(127.5, abs=2)


def test_encode_quality():
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 255
    assert len(encode(image, "jpeg", 20)[0]) < len(encode(image, "jpeg", 95)[0])
    assert len(encode(image, "webp", 20)[0]) < len(encode(image, "webp", 95)[0])
    assert encode(image, "jpeg", None)[0] == encode(image, "jpeg", 90)[0]
    assert encode(image, "png", 5)[0] == encode(image, "png", None)[0]
    assert encode(image, "jpg", None)[1] == "image/jpeg"
    assert encode(image[0], "png")[1] == "image/png"  # 3xHxW works too


@pytest.mark.parametrize(("fmt", "quality"), [("gif", None), ("bmp", 90), ("jpeg", 0), ("webp", 101)])
def test_encode_rejects_bad_format_or_quality(fmt: str, quality: int | None):
    with pytest.raises(ImageError) as info:
        encode(torch.zeros(1, 3, 4, 4), fmt, quality)
    assert info.value.status == 400


@pytest.mark.parametrize(
    ("requested", "input_format", "expected"),
    [
        (None, "png", "png"),
        (None, "jpeg", "jpeg"),
        (None, "webp", "webp"),
        (None, "gif", "png"),
        (None, "bmp", "png"),
        (None, "tiff", "png"),
        ("jpeg", "png", "jpeg"),
        ("JPG", "png", "jpeg"),
        ("webp", "gif", "webp"),
        ("png", "jpeg", "png"),
        ("", "jpeg", "jpeg"),
    ],
)
def test_output_format(requested: str | None, input_format: str, expected: str):
    assert output_format(requested, input_format) == expected


def test_output_format_rejects_unknown():
    with pytest.raises(ImageError) as info:
        output_format("gif", "png")
    assert info.value.status == 400


def test_multi_picture_jpeg_is_a_jpeg():
    # Phone cameras write MPO files (a JPEG with extra pictures appended); Pillow opens them as "MPO".
    frames = [gradient(), Image.new("RGB", (32, 24), (0, 0, 255))]
    data = save(frames[0], "MPO", save_all=True, append_images=frames[1:])
    assert Image.open(io.BytesIO(data)).format == "MPO"
    decoded = decode(data, "image/jpeg")
    assert decoded.format == "jpeg" and decoded.rgb.shape == (1, 3, 24, 32)
    assert output_format(None, decoded.format) == "jpeg"


@pytest.mark.parametrize("shape", [(1, 1, 3), (1, 7, 4), (7, 1, 3), (33, 18, 4), (64, 48, 3)])
def test_png_fast_is_a_lossless_png_any_decoder_reads(shape: tuple[int, int, int]) -> None:
    """The hand-written PNG (Sub filter, zlib RLE) decodes with Pillow to exactly the pixels, RGB and RGBA, even
    one pixel wide or tall; a smooth image compresses (its rows are mostly small differences)."""
    rng = np.random.default_rng(sum(shape))
    pixels = rng.integers(0, 256, shape, dtype=np.uint8)
    with Image.open(io.BytesIO(codec.png_fast(pixels))) as im:
        assert im.format == "PNG" and im.mode == ("RGBA" if shape[2] == 4 else "RGB")
        assert np.array_equal(np.asarray(im), pixels)
    ramp = np.broadcast_to(np.arange(256, dtype=np.uint8)[None, :, None], (64, 256, 3)).copy()
    assert len(codec.png_fast(ramp)) < ramp.nbytes / 20


@pytest.mark.parametrize("threads", [2, 3])
def test_png_fast_deflated_in_pieces_is_one_valid_zlib_stream(threads: int) -> None:
    """Past 64 kB the deflate runs in pieces on threads: they join into one stream whose checksum zlib verifies,
    holding exactly the bytes one piece would."""
    pixels = np.random.default_rng(threads).integers(0, 256, (200, 400, 4), dtype=np.uint8)  # 320 kB of rows
    data = codec.png_fast(pixels, threads=threads)

    def idat(png: bytes) -> bytes:  # png_fast writes one IDAT chunk, then the 12-byte IEND
        return png[png.index(b"IDAT") + 4 : -12 - 4]

    assert idat(data) != idat(codec.png_fast(pixels, threads=1))  # deflated differently...
    assert zlib.decompress(idat(data)) == zlib.decompress(idat(codec.png_fast(pixels, threads=1)))  # ...same bytes
    with Image.open(io.BytesIO(data)) as im:
        assert np.array_equal(np.asarray(im), pixels)


def test_tensor_encode_rounds_like_numpy() -> None:
    """tensors.encode rounds in torch (half to even, clamped), as codec.encode does from float pixels."""
    t = torch.tensor([[[0.5, 1.5, 2.49, 254.5, 300.0, -4.0]]]).expand(3, 1, 6).clone()
    data, _ = tensors.encode(t, "png")
    via_numpy, _ = codec.encode(tensors.to_array(t), "png")
    assert data == via_numpy
    with Image.open(io.BytesIO(data)) as im:
        assert list(np.asarray(im)[0, :, 0]) == [0, 2, 2, 254, 255, 0]
