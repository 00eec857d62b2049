"""The perceptual losses of Johnson et al. (2016), on images in [0, 255] and VGG-16 features, and the recipes
that combine them into a style objective.

Definitions follow the paper (section 3), averaged over the batch:
- feature reconstruction loss: ||phi_j(y) - phi_j(y_hat)||^2 / (C_j H_j W_j)
- Gram matrix: G_j(x) = psi psi^T / (C_j H_j W_j), psi the C_j x H_j W_j feature matrix
- style reconstruction loss: sum over layers of ||G_j(y) - G_j(y_s)||_F^2 (squared Frobenius norm)
- total variation: sum of absolute differences between neighbouring pixels (anisotropic TV)
- pixel loss: ||y - y_hat||^2 / (C H W)

A `StyleRecipe` says which layers, weights and normalization make the objective. ``paper`` is the paper's
recipe, exactly. ``balanced`` divides every term by its target's size so that each layer counts: with the shared
(caffe-convention) VGG-16 the paper's raw Gram distances are ~1e9 at relu1_2/relu2_2 and ~1e2 at relu4_3, so
the deep layers, which carry a painting's shapes and strokes, barely train (docs/training.md).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal

import torch

from trainer.vgg import LAYERS, LossNetwork

CONTENT_LAYER = "relu2_2"  # the paper's content layer (and the SR feature loss's)
STYLE_LAYERS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3")
Normalization = Literal["none", "relative"]


def feature_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).pow(2).flatten(1).mean(1).mean()


pixel_loss = feature_loss  # same normalization, applied to pixels


def relative_loss(a: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """||a - target||^2 / ||target||^2 per sample, averaged over the batch: 0 is a perfect match, 1 is as far as
    predicting zeros. A target of batch 1 broadcasts over the batch."""
    a, target = a.float(), target.float()
    dims = tuple(range(1, a.dim()))
    return ((a - target).pow(2).sum(dims) / target.pow(2).sum(dims).clamp_min(1e-12)).mean()


def gram(x: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape
    # fp32 even under autocast: Gram sums overflow half precision and lose the deep layers' small values in bf16.
    with torch.autocast(x.device.type, enabled=False):
        psi = x.reshape(n, c, h * w).float()
        return psi @ psi.transpose(1, 2) / (c * h * w)


def style_loss(grams: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum over layers of squared Frobenius distances; a target Gram of batch 1 broadcasts over the batch."""
    total = 0.0
    for name, g in grams.items():
        total = total + (g - targets[name]).pow(2).sum((1, 2)).mean()
    return total  # type: ignore[return-value]


def tv_loss(y: torch.Tensor) -> torch.Tensor:
    dh = (y[:, :, 1:, :] - y[:, :, :-1, :]).abs().sum((1, 2, 3))
    dw = (y[:, :, :, 1:] - y[:, :, :, :-1]).abs().sum((1, 2, 3))
    return (dh + dw).mean()


def lattice_loss(y: torch.Tensor, target: torch.Tensor, period: int) -> torch.Tensor:
    """The SR grid as a loss: the high-pass residual (image minus its 5x5 box blur) of the error y - target,
    averaged over each crop per position modulo `period`, squared (grey levels²).

    A x`period` network can add one sub-pixel pattern to every LR pixel's block, and the relu2_2 feature loss is
    nearly blind to it (docs/training.md: 257 for that pattern against 517 for white noise of the same MSE). Real
    texture and its errors average out over a crop's thousand-odd blocks; a lattice does not. On 144² crops of six
    Set14 photos this scores 2-50 for sr_x4 v1's grid, 0.06-1.8 for sr_x4_pixel and 0 for the HR image; windows
    of 9x9 LR pixels instead of the whole crop could not tell the grid from missing texture (72 against 19)."""
    e = (y.float() - target.float())
    r = e - torch.nn.functional.avg_pool2d(torch.nn.functional.pad(e, (2, 2, 2, 2), mode="reflect"), 5, 1)
    h, w = (s - s % period for s in r.shape[-2:])
    return torch.nn.functional.pixel_unshuffle(r[..., :h, :w], period).mean((2, 3)).pow(2).mean()


def mean_tv(y: torch.Tensor) -> torch.Tensor:
    """TV per pixel and channel in units of the full range (a photo scores ~0.05): independent of image size."""
    return tv_loss(y) / (y[0].numel() * 255.0)


@dataclass(frozen=True)
class StyleRecipe:
    """Everything that defines a style objective: content * C + style * sum_j layer_weight_j * S_j + tv * TV.

    normalization ``none`` (the paper): C = feature loss at `content_layer`, S_j = squared Gram distance, TV = the
    summed absolute neighbour differences. ``relative``: C and S_j are divided by their target's squared norm
    (each S_j is then ~1 for an unrelated image whatever the layer's scale) and TV is per pixel (`mean_tv`).
    """

    content: float
    style: float
    tv: float
    content_layer: str = CONTENT_LAYER
    style_layers: tuple[str, ...] = STYLE_LAYERS
    layer_weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)
    normalization: Normalization = "none"

    def __post_init__(self) -> None:
        object.__setattr__(self, "style_layers", tuple(self.style_layers))  # JSON gives lists back
        object.__setattr__(self, "layer_weights", tuple(float(w) for w in self.layer_weights))
        unknown = [n for n in (self.content_layer, *self.style_layers) if n not in LAYERS]
        if unknown:
            raise ValueError(f"unknown VGG layer(s) {unknown}; use {sorted(LAYERS)}")
        if len(self.layer_weights) != len(self.style_layers):
            raise ValueError(f"{len(self.style_layers)} style layers but {len(self.layer_weights)} layer weights")
        if self.normalization not in ("none", "relative"):
            raise ValueError(f"normalization must be none or relative, got {self.normalization!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StyleRecipe:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


RECIPES: dict[str, StyleRecipe] = {
    # Johnson et al.: content relu2_2, unweighted raw Gram distances. The weights were chosen for the shared
    # caffe-convention VGG-16 (docs/training.md); this is what the v1 built-in styles were trained with.
    "paper": StyleRecipe(content=1.0, style=1e-4, tv=1e-5),
    # Chosen by the Gatys sweep in docs/training.md: every layer relative to its target, content at relu3_3
    # so that the photo keeps its objects but not its fine texture. TV 1.0, not the sweep's 0.2: a network
    # trained at 0.2 grew a fine cross-hatch over everything (the optimizer does not), at 1.0 it did not.
    "balanced": StyleRecipe(content=1.0, style=10.0, tv=1.0, content_layer="relu3_3",
                            layer_weights=(0.25, 0.25, 0.25, 0.25), normalization="relative"),
}
DEFAULT_RECIPE = "balanced"


def recipe(name: str, **overrides: Any) -> StyleRecipe:
    """A named recipe with some fields replaced (None = keep the recipe's)."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; use one of {sorted(RECIPES)}")
    return replace(RECIPES[name], **{k: v for k, v in overrides.items() if v is not None})


class StyleObjective:
    """The weighted content, style and TV terms for one style image; the trainer, the Gatys optimizer, the preview
    and the evaluation all use this one object so that their numbers compare."""

    def __init__(self, vgg: LossNetwork, style_image: torch.Tensor, recipe: StyleRecipe):
        self.vgg = vgg
        self.recipe = recipe
        self.layers = tuple(dict.fromkeys((*recipe.style_layers, recipe.content_layer)))
        with torch.no_grad():
            feats = vgg(style_image, recipe.style_layers)
            self.style_grams = {k: gram(v) for k, v in feats.items()}

    def content_features(self, content: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.vgg(content, (self.recipe.content_layer,))[self.recipe.content_layer]

    def layer_errors(self, y: torch.Tensor, content_features: torch.Tensor) -> dict[str, torch.Tensor]:
        """Unweighted terms: 'content', 'style_<layer>' for each style layer, 'tv' (normalized as the recipe says)."""
        r = self.recipe
        feats = self.vgg(y, self.layers)
        relative = r.normalization == "relative"
        out = {"content": (relative_loss if relative else feature_loss)(feats[r.content_layer], content_features)}
        for name in r.style_layers:
            g, target = gram(feats[name]), self.style_grams[name]
            out[f"style_{name}"] = relative_loss(g, target) if relative else (g - target).pow(2).sum((1, 2)).mean()
        out["tv"] = mean_tv(y) if relative else tv_loss(y)
        return out

    def __call__(self, y: torch.Tensor, content_features: torch.Tensor) -> dict[str, torch.Tensor]:
        """Weighted terms and their sum ('total') for outputs `y` against precomputed content features."""
        r = self.recipe
        errors = self.layer_errors(y, content_features)
        style = sum(w * errors[f"style_{n}"] for n, w in zip(r.style_layers, r.layer_weights, strict=True))
        terms = {"content": r.content * errors["content"], "style": r.style * style, "tv": r.tv * errors["tv"]}
        terms["total"] = terms["content"] + terms["style"] + terms["tv"]
        return terms
