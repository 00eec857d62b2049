"""Builds docs/img/hero.jpg (the README picture): a photo, three built-in styles, and a Set14 crop upscaled x4
(bicubic vs sr_x4 vs the original). Run: .venv/bin/python scripts/make_hero.py"""

from PIL import Image, ImageDraw

from imaging.tensors import load_image, to_pil
from model_store import store
from model_store.pipeline import run
from trainer.data import crop_to_multiple, degrade, upsample_bicubic

SHARED = "../shared/data"


def labelled(im: Image.Image, label: str, size: tuple[int, int], colour: str) -> Image.Image:
    im = im.resize(size, Image.Resampling.NEAREST)
    ImageDraw.Draw(im).text((6, size[1] - 16), label, fill=colour)
    return im


def row(tiles: list[Image.Image]) -> Image.Image:
    out = Image.new("RGB", (sum(t.width for t in tiles), tiles[0].height), "white")
    x = 0
    for t in tiles:
        out.paste(t, (x, 0))
        x += t.width
    return out


def main() -> None:
    photo = load_image(f"{SHARED}/content/chicago.jpg", max_side=480)
    styled = [("photo", photo)] + [(n, run(store.load(n)[0], photo)) for n in ("muse", "starry_night", "mosaic")]
    h, w = photo.shape[-2:]
    top = row([labelled(to_pil(t), name, (w, h), "white") for name, t in styled])

    hr = crop_to_multiple(load_image(f"{SHARED}/sr/Set14/monarch.png"), 4)
    lr = degrade(hr, 4)
    crops = [("bicubic x4", upsample_bicubic(lr, 4)), ("sr_x4 (feature loss)", run(store.load("sr_x4")[0], lr)),
             ("original", hr)]
    tw = top.width // 3
    bottom = row([labelled(to_pil(t[..., 150:310, 120:440]), name, (tw, tw // 2), "black") for name, t in crops])

    out = Image.new("RGB", (top.width, top.height + bottom.height + 8), "white")
    out.paste(top, (0, 0))
    out.paste(bottom, (0, top.height + 8))
    out.thumbnail((1600, 1600))
    out.save("docs/img/hero.jpg", quality=85)


if __name__ == "__main__":
    main()
