"""The frozen VGG-16 loss network (conv1_1 .. relu4_3) and its input convention.

Weights come from a local file in torchvision's ``vgg16().features`` state-dict layout: a ``.safetensors`` file
(loaded without pickle) or a torchvision ``.pth`` checkpoint (loaded with ``weights_only=True``). Two input
conventions exist and the file decides which one applies:

- ``caffe``: RGB in 0..255 minus the ImageNet mean, no std (the shared ``vgg16_relu4_3.safetensors``,
  Caffe/Keras VGG-16, what Johnson et al. used);
- ``torchvision``: RGB in 0..1, normalized by mean and std (torchvision's ``VGG16_Weights.IMAGENET1K_V1``).

A safetensors file may state its convention in its metadata (``input_convention``); otherwise ``.safetensors``
means caffe and ``.pth`` means torchvision, unless ``PERCEPT_VGG_CONVENTION`` says otherwise.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn
from torchvision.models.vgg import cfgs, make_layers

from trainer.settings import settings

# Indices into torchvision's vgg16().features of the ReLUs whose outputs the losses read.
LAYERS = {"relu1_2": 3, "relu2_2": 8, "relu3_3": 15, "relu4_3": 22}
CONVENTIONS = {
    "caffe": {"scale": 255.0, "mean": (123.68, 116.779, 103.939), "std": (1.0, 1.0, 1.0)},
    "torchvision": {"scale": 1.0, "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)},
}
TORCHVISION_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"


class LossNetworkError(Exception):
    pass


class LossNetwork(nn.Module):
    """VGG-16 through relu4_3, frozen and in eval mode. Input: RGB in [0, 255]; output: named features."""

    def __init__(self, features: nn.Sequential, convention: str, source: str):
        super().__init__()
        if convention not in CONVENTIONS:
            raise LossNetworkError(f"unknown VGG input convention {convention!r}; use one of {sorted(CONVENTIONS)}")
        self.features = features
        self.convention = convention
        self.source = source
        c = CONVENTIONS[convention]
        self.register_buffer("mean", torch.tensor(c["mean"]).view(1, 3, 1, 1) * 255.0 / c["scale"], persistent=False)
        self.register_buffer("std", torch.tensor(c["std"]).view(1, 3, 1, 1) * 255.0 / c["scale"], persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> LossNetwork:  # always frozen
        return super().train(False)

    def forward(self, x: torch.Tensor, layers: tuple[str, ...] = tuple(LAYERS)) -> dict[str, torch.Tensor]:
        x = (x - self.mean) / self.std
        wanted = {LAYERS[name]: name for name in layers}
        out: dict[str, torch.Tensor] = {}
        last = max(wanted)
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in wanted:
                out[wanted[i]] = x
            if i == last:
                break
        return out


def _features() -> nn.Sequential:
    # vgg16().features without building (and randomly initializing) the 120M-parameter classifier.
    features = make_layers(cfgs["D"])[: LAYERS["relu4_3"] + 1]
    for m in features:
        if isinstance(m, nn.ReLU):
            m.inplace = False  # the losses read intermediate activations
    return features


def _read_state(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, (f.metadata() or {})  # noqa: SIM118
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state), {}


def load_loss_network(
    path: str | Path | None = None, convention: str | None = None, *, random_weights: bool = False
) -> LossNetwork:
    """Load the loss network from `path` (default: the PERCEPT_VGG_WEIGHTS setting).

    `random_weights=True` builds an untrained network and exists for tests only.
    """
    if random_weights:
        with torch.random.fork_rng():  # reproducible, without touching the caller's random state
            torch.manual_seed(0)
            return LossNetwork(_features(), convention or "caffe", "random (test only)")
    cfg = settings()
    path = Path(path) if path else cfg.vgg_weights
    if not path.is_file():
        raise LossNetworkError(
            f"VGG-16 loss-network weights not found at {path}. Put the file there or point PERCEPT_VGG_WEIGHTS at "
            f"one: the shared vgg16_relu4_3.safetensors (caffe convention), or torchvision's {TORCHVISION_URL} "
            "(torchvision convention)."
        )
    state, metadata = _read_state(path)
    features = _features()
    # Accept both `features.N.weight` (a whole VGG-16) and `N.weight` (just the features); drop the classifier.
    keys = {f"{i}" for i in range(len(features))}
    state = {k.removeprefix("features."): v for k, v in state.items() if not k.startswith("classifier.")}
    state = {k: v for k, v in state.items() if k.split(".")[0] in keys}
    expected = features.state_dict()
    missing = sorted(set(expected) - set(state))
    wrong = [
        f"{k}: {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or wrong:
        raise LossNetworkError(
            f"{path} is not a VGG-16 conv1_1..conv4_3 state dict in torchvision's vgg16().features layout: "
            + "; ".join(([f"missing {missing}"] if missing else []) + ([f"wrong shapes {wrong}"] if wrong else []))
        )
    features.load_state_dict({k: state[k].float() for k in expected}, strict=True)
    convention = convention or cfg.vgg_convention
    if convention == "auto":
        convention = metadata.get("input_convention") or ("caffe" if path.suffix == ".safetensors" else "torchvision")
    return LossNetwork(features, convention, str(path))
