"""Contact sheets: photos cropped square, labelled and laid out in rows (the report, previews and sweeps)."""

from __future__ import annotations

from PIL import Image, ImageDraw


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
