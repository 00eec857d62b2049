"""The perceptual losses of Johnson et al. (2016), on images in [0, 255] and VGG-16 features.

Definitions follow the paper (section 3), averaged over the batch:
- feature reconstruction loss: ||phi_j(y) - phi_j(y_hat)||^2 / (C_j H_j W_j)
- Gram matrix: G_j(x) = psi psi^T / (C_j H_j W_j), psi the C_j x H_j W_j feature matrix
- style reconstruction loss: sum over layers of ||G_j(y) - G_j(y_s)||_F^2 (squared Frobenius norm)
- total variation: sum of absolute differences between neighbouring pixels (anisotropic TV)
- pixel loss: ||y - y_hat||^2 / (C H W)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from trainer.vgg import LossNetwork

CONTENT_LAYER = "relu2_2"
STYLE_LAYERS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3")


def feature_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).pow(2).flatten(1).mean(1).mean()


pixel_loss = feature_loss  # same normalization, applied to pixels


def gram(x: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape
    psi = x.reshape(n, c, h * w).float()  # fp32: Gram sums overflow half precision
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


@dataclass(frozen=True)
class StyleWeights:
    content: float
    style: float
    tv: float


class StyleObjective:
    """lambda_c * content + lambda_s * style + lambda_tv * TV for one style image; the trainer, the Gatys optimizer
    and the evaluation all use this one object so that their numbers compare."""

    def __init__(self, vgg: LossNetwork, style_image: torch.Tensor, weights: StyleWeights):
        self.vgg = vgg
        self.weights = weights
        with torch.no_grad():
            feats = vgg(style_image, STYLE_LAYERS)
            self.style_grams = {k: gram(v) for k, v in feats.items()}

    def content_features(self, content: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.vgg(content, (CONTENT_LAYER,))[CONTENT_LAYER]

    def __call__(self, y: torch.Tensor, content_features: torch.Tensor) -> dict[str, torch.Tensor]:
        """Weighted terms and their sum ('total') for outputs `y` against precomputed content features."""
        feats = self.vgg(y, STYLE_LAYERS)
        content = feature_loss(feats[CONTENT_LAYER], content_features)
        style = style_loss({k: gram(v) for k, v in feats.items()}, self.style_grams)
        tv = tv_loss(y)
        terms = {
            "content": self.weights.content * content,
            "style": self.weights.style * style,
            "tv": self.weights.tv * tv,
        }
        terms["total"] = terms["content"] + terms["style"] + terms["tv"]
        return terms
