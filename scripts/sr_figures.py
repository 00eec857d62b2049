"""The super-resolution figures of docs/training.md ("Super-resolution: the grid and the dials").

    python scripts/sr_figures.py grid   --pixel sr_x4_pixel --old sr_x4@1 --new sr_x4@2 [--out docs/img/sr_grid_x4.jpg]
    python scripts/sr_figures.py detail --pixel sr_x4_pixel --new sr_x4@2 [--data ../shared/data/sr/Set5]
    python scripts/sr_figures.py stroke --style muse --photo ../shared/data/content/X.jpg   (S = 0.5, 1, 2, 4)

`grid`: crops of smooth areas of Set5/Set14 photos (never trained on) at 3x NEAREST zoom, so a 4-pixel grid shows:
bicubic, the old feature-loss net, the pixel-loss net, the new one, the original. `detail`: PSNR (Y, paper
degradation) and mean gradient along the detail dial, printed as a table, and a crop row. `stroke`: the stroke-size
dial on one photo. `lattice`: the grid's energy per period (docs/training.md). Models are store names
(name@version) or checkpoints (.pt); --new takes a comma-separated list for grid and lattice.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from PIL import Image

from imaging import sheets, tensors
from imaging.tensors import load_image
from model_store import pipeline
from model_store.options import Options
from trainer.data import crop_to_multiple, degrade, find_images, upsample_bicubic
from trainer.metrics import mean_gradient_magnitude, psnr_y

SR_DATA = Path("../shared/data/sr")
# (image, left, top) of 64x64 HR crops on smooth areas, where a grid shows first: wall, skin, sky, background.
CROPS = [("Set14/foreman.png", 40, 20), ("Set5/baby.png", 250, 60), ("Set14/face.png", 150, 20),
         ("Set5/head.png", 30, 120)]
ZOOM = 3


def _net(name: str):
    return pipeline.load(name, "cpu")[0]  # NAME, NAME@V or a training checkpoint (.pt)


def _crop(t: torch.Tensor, left: int, top: int, side: int = 64) -> Image.Image:
    im = tensors.to_pil(t[..., top:top + side, left:left + side])
    return im.resize((side * ZOOM, side * ZOOM), Image.Resampling.NEAREST)


def grid(args: argparse.Namespace) -> None:
    nets = [(label, _net(name)) for label, name in
            (("l_feat old " + args.old, args.old), ("l_pixel", args.pixel),
             *((f"l_feat {n}", n) for n in args.new.split(",")))]
    rows = []
    for rel, left, top in CROPS:
        hr = crop_to_multiple(load_image(SR_DATA / rel), 4)
        lr = degrade(hr, 4)
        tiles = [("bicubic", _crop(upsample_bicubic(lr, 4), left, top))]
        tiles += [(label, _crop(pipeline.run(net, lr), left, top)) for label, net in nets]
        tiles.append((f"original ({Path(rel).stem})", _crop(hr, left, top)))
        rows.append(sheets.labelled_row(tiles, 64 * ZOOM, Image.Resampling.NEAREST))
    sheets.stack(rows).save(args.out or "docs/img/sr_grid_x4.jpg", quality=92)


def lattice(args: argparse.Namespace) -> None:
    """The grid as a number: the luma high-pass residual (image minus its 5x5 box blur) averaged over the
    positions modulo P, its mean square (grey levels²), over the Set5 and Set14 photos. A network that paints one
    pattern into every LR pixel scores high at P = factor (and its multiples) only."""
    import torch.nn.functional as F

    paths = find_images(SR_DATA / "Set5") + find_images(SR_DATA / "Set14")
    print("| model | " + " | ".join(f"P={p}" for p in PERIODS) + " |")
    print("| --- |" + " --- |" * len(PERIODS))
    for name in ["original", "bicubic", *args.new.split(",")]:
        net = None if name in ("original", "bicubic") else _net(name)
        energy = dict.fromkeys(PERIODS, 0.0)
        for path in paths:
            f = args.factor
            hr = crop_to_multiple(load_image(path), f)
            x = hr if name == "original" else (upsample_bicubic(degrade(hr, f), f) if net is None
                                               else pipeline.run(net, degrade(hr, f)))
            y = x.mean(1, keepdim=True)
            r = y - F.avg_pool2d(F.pad(y, (2, 2, 2, 2), mode="reflect"), 5, 1)
            for p in PERIODS:
                h, w = (s - s % p for s in r.shape[-2:])
                energy[p] += r[..., :h, :w].reshape(h // p, p, w // p, p).mean((0, 2)).pow(2).mean().item() / len(paths)
        print(f"| {name} | " + " | ".join(f"{energy[p]:.3f}" for p in PERIODS) + " |", flush=True)


PERIODS = (2, 3, 4, 5, 8, 16)


def detail(args: argparse.Namespace) -> None:
    pixel, feat = _net(args.pixel), _net(args.new)
    images = [crop_to_multiple(load_image(p), 4) for p in find_images(args.data)]
    grad_hr = sum(mean_gradient_magnitude(hr) for hr in images) / len(images)
    print(f"| detail | PSNR (dB) | mean gradient (HR: {grad_hr:.2f}) |")
    print("| --- | --- | --- |")
    bic = [upsample_bicubic(degrade(hr, 4), 4) for hr in images]
    print(f"| bicubic | {sum(psnr_y(s, h, border=4) for s, h in zip(bic, images, strict=True)) / len(images):.2f} | "
          f"{sum(mean_gradient_magnitude(s) for s in bic) / len(bic):.2f} |")
    tiles = []
    rel, left, top = CROPS[1]
    hr0 = crop_to_multiple(load_image(SR_DATA / rel), 4)
    for d in (0.0, 0.25, 0.5, 0.75, 1.0):
        net = pipeline.detail_net(pixel, feat, d)
        outs = [pipeline.run(net, degrade(hr, 4)) for hr in images]
        psnr = sum(psnr_y(s, h, border=4) for s, h in zip(outs, images, strict=True)) / len(images)
        grad = sum(mean_gradient_magnitude(s) for s in outs) / len(outs)
        print(f"| {d:g} | {psnr:.2f} | {grad:.2f} |", flush=True)
        tiles.append((f"detail={d:g}", _crop(pipeline.run(net, degrade(hr0, 4)), left, top)))
    tiles.append(("original", _crop(hr0, left, top)))
    sheets.stack([sheets.labelled_row(tiles, 64 * ZOOM, Image.Resampling.NEAREST)]).save(
        args.out or "docs/img/sr_detail.jpg", quality=92)


def stroke(args: argparse.Namespace) -> None:
    style, sr = _net(args.style), _net(args.pixel)
    photo = tensors.read(args.photo)
    photo = tensors.resize_max_side(photo, 512)
    tiles = [("photo", tensors.to_pil(photo.rgb))]
    for s in (0.5, 1.0, 2.0, 4.0):
        out = pipeline.run(style, photo, Options(stroke=s), get=lambda name: sr)
        tiles.append((f"stroke={s:g}", tensors.to_pil(out)))
    sheets.stack([sheets.labelled_row(tiles, 256)]).save(args.out or "docs/img/stroke_row.jpg", quality=90)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("figure", choices=["grid", "detail", "stroke", "lattice"])
    p.add_argument("--pixel", default="sr_x4_pixel")
    p.add_argument("--old", default="sr_x4@1")
    p.add_argument("--new", default="sr_x4")
    p.add_argument("--style", default="muse")
    p.add_argument("--photo", type=Path)
    p.add_argument("--data", type=Path, default=SR_DATA / "Set5")
    p.add_argument("--out")
    p.add_argument("--factor", type=int, default=4, help="lattice: the SR factor of the --new models")
    args = p.parse_args()
    torch.set_num_threads(2)
    {"grid": grid, "detail": detail, "stroke": stroke, "lattice": lattice}[args.figure](args)


if __name__ == "__main__":
    main()
