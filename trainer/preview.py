"""What a style network trained on a style image will approximate, in about a minute on a CPU: the Gatys
optimizer, started from each photo, minimizing the same objective the trainer would (`StyleObjective`).

A feed-forward network trained for hours on a recipe converges towards what this optimizer finds in a few dozen
iterations, so a user can judge a style image and a recipe (weights, content layer, style size = stroke size)
before training. `percept style preview` writes one grid; `scripts/style_sweep.py` writes the recipe sweep's
contact sheet with the same function.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from imaging.sheets import labelled_row, square, stack
from imaging.tensors import load_image, to_pil
from trainer.gatys import optimize
from trainer.losses import StyleObjective, StyleRecipe
from trainer.vgg import LossNetwork

# Measured on 2 CPU cores: 60 L-BFGS-B iterations of a 256-px photo take ~23 s when nothing else runs; three
# photos at 224 px and 40 iterations keep the command well inside two minutes with the loss network's loading.
DEFAULT_SIZE = 224
DEFAULT_ITERATIONS = 40


@dataclass
class Stylized:
    photo: Path
    image: torch.Tensor  # 1x3xHxW in [0, 255]
    errors: dict[str, float]  # unweighted terms of the recipe (content, style_<layer>, tv)


def stylize(vgg: LossNetwork, style: torch.Tensor, photos: Sequence[Path], recipe: StyleRecipe,
            size: int = DEFAULT_SIZE, iterations: int = DEFAULT_ITERATIONS,
            on_iteration: Callable[[int, float], None] | None = None) -> list[Stylized]:
    """Each photo (longer side `size`) optimized towards `style` under `recipe`, from the photo itself."""
    objective = StyleObjective(vgg, style, recipe)
    out = []
    for path in photos:
        content = load_image(path, max_side=size).to(style.device)
        result = optimize(objective, content, iterations, init="content", on_iteration=on_iteration)
        with torch.no_grad():
            errors = objective.layer_errors(result.image, objective.content_features(content))
        out.append(Stylized(path, result.image.cpu(), {k: v.item() for k, v in errors.items()}))
    return out


def grid(style: torch.Tensor, columns: Sequence[tuple[str, list[Stylized]]], tile: int = 192) -> Image.Image:
    """One row per photo: the photo, then one stylized tile per column (a recipe); the style image on top."""
    rows = [labelled_row([("style", to_pil(style))], tile)]
    for i, first in enumerate(columns[0][1]):
        tiles = [("photo", square(Image.open(first.photo).convert("RGB")))]
        tiles += [(label, square(to_pil(results[i].image))) for label, results in columns]
        rows.append(labelled_row(tiles, tile))
    return stack(rows)
