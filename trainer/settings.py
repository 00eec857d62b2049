"""Trainer settings, read from the environment with defaults that work in a checkout next to ``../shared``.

A pydantic-settings class like the service's and the worker's (worker/settings.py): REDIS_URL (``--queue``) comes
from the shared `RedisSettings`; the paths below have their own variables.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from worker.settings import RedisSettings

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


class TrainerSettings(RedisSettings):
    model_config = SettingsConfigDict(frozen=True)  # merged with RedisSettings'

    # ImageNet VGG-16 conv1_1..conv4_3 in torchvision's `vgg16().features` layout (.safetensors or .pth).
    vgg_weights: Path = Field(SHARED_DATA / "weights" / "vgg16_relu4_3.safetensors",
                              validation_alias="PERCEPT_VGG_WEIGHTS")
    # caffe (RGB 0..255 minus mean, no std) | torchvision (0..1, mean/std) | auto (read from the file).
    vgg_convention: str = Field("auto", validation_alias="PERCEPT_VGG_CONVENTION")
    # Folder of training photos, searched recursively.
    data_dir: Path = Field(SHARED_DATA / "train", validation_alias="PERCEPT_DATA")
    # Where runs write checkpoints, previews, logs and plots: ./runs of the folder `percept train` starts in (as
    # pytorch/examples and most trainers do), never the source checkout; made absolute when read.
    runs_dir: Path = Field(default_factory=lambda: Path("runs"), validation_alias="PERCEPT_RUNS")
    # Fixed content images shown in training previews.
    preview_dir: Path = Field(SHARED_DATA / "content", validation_alias="PERCEPT_PREVIEW_DIR")

    @field_validator("vgg_weights", "data_dir", "runs_dir", "preview_dir")
    @classmethod
    def _expand_user(cls, value: Path) -> Path:
        return value.expanduser()

    @field_validator("runs_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.absolute()  # config.json and resume then work from any folder


def settings() -> TrainerSettings:
    return TrainerSettings()
