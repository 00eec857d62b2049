"""Training data: a folder of photos searched recursively, random crops, a held-out split, the SR degradation.

Sampling is a pure function of (seed, sample number), so a resumed run sees exactly the batches an
uninterrupted run would have seen, with any number of loader workers or DDP ranks.
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, Sampler
from torchvision.transforms.functional import gaussian_blur

from imaging.tensors import load_image, to_tensor

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def find_images(root: str | Path, min_side: int = 1) -> list[Path]:
    """Image files under `root`, sorted; files that cannot be opened or whose short side < min_side are skipped
    with a warning (reading only the header, so this is quick)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"training data folder not found: {root}")
    found: list[Path] = []
    skipped = 0
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()):
        try:
            with Image.open(path) as im:
                if min(im.size) < min_side:
                    log.warning("skipping %s: %dx%d is smaller than %d px", path, *im.size, min_side)
                    skipped += 1
                    continue
        except (OSError, UnidentifiedImageError) as e:
            log.warning("skipping unreadable image %s: %s", path, e)
            skipped += 1
            continue
        found.append(path)
    if not found:
        raise FileNotFoundError(f"no usable images (short side >= {min_side} px) under {root}")
    if skipped:
        log.warning("skipped %d of %d files under %s", skipped, skipped + len(found), root)
    return found


def split(files: Sequence[Path], val_count: int) -> tuple[list[Path], list[Path]]:
    """Deterministic train/validation split: the `val_count` files with the smallest name hashes."""
    if val_count <= 0 or len(files) < 2:
        return list(files), []
    val_count = min(val_count, len(files) // 2)
    ranked = sorted(files, key=lambda p: hashlib.sha1(p.name.encode()).hexdigest())
    val = set(ranked[:val_count])
    return [f for f in files if f not in val], sorted(val)


class SampleOrder(Sampler[tuple[int, int]]):
    """Yields (file index, crop seed) for global sample numbers start, start+1, ... of rank `rank` of `world`.

    Epochs are seeded permutations of the files; each sample's crop seed is derived from its number.
    """

    def __init__(self, n_files: int, seed: int, start_sample: int = 0, rank: int = 0, world: int = 1):
        self.n, self.seed, self.start, self.rank, self.world = n_files, seed, start_sample, rank, world

    def _perm(self, epoch: int) -> list[int]:
        return torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)).tolist()

    def __iter__(self) -> Iterator[tuple[int, int]]:
        g = self.start + self.rank
        epoch, perm = -1, []
        while True:
            if g // self.n != epoch:
                epoch = g // self.n
                perm = self._perm(epoch)
            yield perm[g % self.n], self.seed * 7_919 + g
            g += self.world

    def __len__(self) -> int:  # infinite stream; DataLoader only needs a number
        return 2**62


class CropDataset(Dataset):
    """Random `size`x`size` crops. With resize=True the short side is first scaled to `size` (style training);
    with resize=False crops come from the original pixels (SR training needs real high-resolution patches)."""

    def __init__(self, files: Sequence[Path], size: int, resize: bool = True):
        self.files, self.size, self.resize = list(files), size, resize

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int, rng: random.Random | None) -> torch.Tensor:
        with Image.open(self.files[index]) as im:
            im = im.convert("RGB")
            w, h = im.size
            if self.resize or min(w, h) < self.size:
                s = self.size / min(w, h)
                im = im.resize((max(self.size, round(w * s)), max(self.size, round(h * s))), Image.Resampling.BICUBIC)
                w, h = im.size
            if rng is None:  # validation: centre crop
                x, y = (w - self.size) // 2, (h - self.size) // 2
            else:
                x, y = rng.randint(0, w - self.size), rng.randint(0, h - self.size)
            return to_tensor(im.crop((x, y, x + self.size, y + self.size)))[0]

    def __getitem__(self, item: tuple[int, int] | int) -> torch.Tensor:
        index, seed = item if isinstance(item, tuple) else (item, None)
        rng = random.Random(seed) if seed is not None else None
        # A file that fails to decode mid-run (truncated, changed on disk) is replaced by the next one.
        for attempt in range(len(self.files)):
            i = (index + attempt) % len(self.files)
            try:
                return self.load(i, rng)
            except (OSError, ValueError) as e:
                log.warning("skipping %s: %s", self.files[i], e)
        raise RuntimeError("no readable image in the dataset")


def degrade(hr: torch.Tensor, factor: int, blur_sigma: float = 1.0, quantize: bool = True) -> torch.Tensor:
    """The paper's SR degradation: Gaussian blur (sigma=1.0; 0 disables it), then bicubic downsampling by
    `factor` (antialiased, as MATLAB's and PIL's imresize), then rounding to 8-bit values.

    `hr` is NCHW in [0, 255] with H and W multiples of `factor`.
    """
    h, w = hr.shape[-2:]
    if h % factor or w % factor:
        raise ValueError(f"HR size {h}x{w} is not a multiple of {factor}; crop it first")
    x = hr.float()
    if blur_sigma > 0:
        radius = max(1, int(3 * blur_sigma + 0.5))
        x = gaussian_blur(x, [2 * radius + 1] * 2, [blur_sigma] * 2)
    x = F.interpolate(x, size=(h // factor, w // factor), mode="bicubic", antialias=True, align_corners=False)
    x = x.clamp(0, 255)
    return x.round() if quantize else x


def upsample_bicubic(lr: torch.Tensor, factor: int) -> torch.Tensor:
    """The bicubic baseline (PIL/MATLAB kernel, a=-0.5), clamped to [0, 255]."""
    h, w = lr.shape[-2:]
    out = F.interpolate(lr.float(), size=(h * factor, w * factor), mode="bicubic", antialias=True, align_corners=False)
    return out.clamp(0, 255)


def crop_to_multiple(image: torch.Tensor, factor: int) -> torch.Tensor:
    h, w = image.shape[-2:]
    return image[..., : h - h % factor, : w - w % factor]


def load_style(path: str | Path, style_size: int | None = None) -> torch.Tensor:
    """A style image as training sees it: longer side exactly `style_size`, else its own size capped at 512 px.
    The style size sets the stroke size: the Gram statistics of a smaller style image describe larger shapes."""
    style = load_image(path, max_side=style_size or 512)
    if style_size and max(style.shape[-2:]) != style_size:
        scale = style_size / max(style.shape[-2:])
        style = F.interpolate(style, scale_factor=scale, mode="bicubic", antialias=True)
        style = style.clamp(0, 255).round()  # whole grey levels, so the stored PNG is exactly what was used
    return style
