"""How `percept stylize/upscale` run a network (images and clips alike): --device, --backend, --precision,
--tile-pixels; what this machine lacks is a one-line usage error, not a traceback."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import typer

from model_store import store
from model_store.options import TILE_PIXELS

if TYPE_CHECKING:
    from model_store.networks import TransformNet
    from model_store.pipeline import Forward


@dataclass(frozen=True)
class Engine:
    """Where and how `stylize`/`upscale` run a network: --device, --backend, --precision, --tile-pixels."""

    device: str = "auto"
    backend: str = "auto"
    precision: str = "auto"
    tile_pixels: int = TILE_PIXELS

    def load(self, model: str) -> tuple[TransformNet, str]:
        from model_store import pipeline

        try:
            return pipeline.load(model, self.device)
        except RuntimeError as e:
            raise typer.BadParameter(str(e), param_hint="--device") from None
        except store.ModelStoreError as e:
            raise typer.BadParameter(str(e), param_hint="--model") from None

    def forward(self, net: TransformNet) -> tuple[Forward, str]:
        """The backend's forward for `net`'s device and its label (torch/fp32, openvino/bf16...); asking for
        what this machine lacks is a one-line error."""
        from model_store import backends

        try:
            choice = backends.choose(self.backend, self.precision, next(net.parameters()).device)
        except ValueError as e:
            raise typer.BadParameter(str(e), param_hint="--backend/--precision") from None
        return backends.shared_forward(choice), choice.label
