"""Conversions between PIL images and the networks' tensors (float RGB, NCHW, values in [0, 255])."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageOps


def to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL image (any mode) -> 1x3xHxW float tensor in [0, 255]."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32)
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).contiguous()


def to_pil(tensor: torch.Tensor) -> Image.Image:
    """3xHxW or 1x3xHxW tensor in [0, 255] -> RGB PIL image (rounded and clamped)."""
    if tensor.dim() == 4:
        tensor = tensor[0]
    array = tensor.detach().float().clamp(0, 255).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array, "RGB")


def load_image(path: str | Path, max_side: int | None = None) -> torch.Tensor:
    """Read an image file (EXIF orientation applied), optionally shrunk so its longer side is <= max_side."""
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im).convert("RGB")
    if max_side and max(im.size) > max_side:
        im.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return to_tensor(im)


def save_image(tensor: torch.Tensor, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    to_pil(tensor).save(path)


def square(im: Image.Image) -> Image.Image:
    """The centred square crop: grids of squares line up whatever the photos' orientation."""
    side = min(im.size)
    left, top = (im.width - side) // 2, (im.height - side) // 2
    return im.crop((left, top, left + side, top + side))


def labelled_row(tiles: list[tuple[str, Image.Image]], height: int,
                 resample: Image.Resampling = Image.Resampling.LANCZOS) -> Image.Image:
    """Images side by side at one height, each with its label in its bottom-left corner (NEAREST shows pixels)."""
    scaled = [(label, im.resize((max(1, im.width * height // im.height), height), resample))
              for label, im in tiles]
    out = Image.new("RGB", (sum(im.width for _, im in scaled), height), "white")
    x = 0
    for label, im in scaled:
        out.paste(im, (x, 0))
        ImageDraw.Draw(out).text((x + 5, height - 15), label, fill="white", stroke_width=1, stroke_fill="black")
        x += im.width
    return out


def stack(rows: list[Image.Image]) -> Image.Image:
    """Rows one under the other, left-aligned on white."""
    out = Image.new("RGB", (max(r.width for r in rows), sum(r.height for r in rows)), "white")
    y = 0
    for r in rows:
        out.paste(r, (0, y))
        y += r.height
    return out
