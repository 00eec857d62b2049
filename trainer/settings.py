"""Trainer settings, read from the environment with defaults that work in a checkout next to ``../shared``."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def _env_path(var: str, default: Path) -> Path:
    value = os.environ.get(var)
    return Path(value).expanduser() if value else default


@dataclass(frozen=True)
class TrainerSettings:
    # ImageNet VGG-16 conv1_1..conv4_3 in torchvision's `vgg16().features` layout (.safetensors or .pth).
    vgg_weights: Path = field(
        default_factory=lambda: _env_path("PERCEPT_VGG_WEIGHTS", SHARED_DATA / "weights" / "vgg16_relu4_3.safetensors")
    )
    # caffe (RGB 0..255 minus mean, no std) | torchvision (0..1, mean/std) | auto (read from the file).
    vgg_convention: str = field(default_factory=lambda: os.environ.get("PERCEPT_VGG_CONVENTION", "auto"))
    # Folder of training photos, searched recursively.
    data_dir: Path = field(default_factory=lambda: _env_path("PERCEPT_DATA", SHARED_DATA / "train"))
    # Where runs write checkpoints, previews, logs and plots.
    runs_dir: Path = field(default_factory=lambda: _env_path("PERCEPT_RUNS", REPO_ROOT / "runs"))
    # Fixed content images shown in training previews.
    preview_dir: Path = field(default_factory=lambda: _env_path("PERCEPT_PREVIEW_DIR", SHARED_DATA / "content"))


def settings() -> TrainerSettings:
    return TrainerSettings()
