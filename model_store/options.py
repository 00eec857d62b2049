"""What a request may ask for besides the model: the pipeline's options and its tiling budget.

Plain data, no torch: the API validates and enqueues these, the queue carries them, the CLI builds them from its
flags, and `model_store.pipeline` applies them.
"""

from __future__ import annotations

from dataclasses import dataclass

# Output pixels above which one forward pass is run in tiles. 4 MP is a 2048² style output (2.9 GB peak
# untiled in fp32 on the CPU) or a 512² input to sr_x4.
TILE_PIXELS = 4_000_000

@dataclass(frozen=True)
class Options:
    """What a request may ask for besides the model; every field's default leaves the network's output as is."""

    max_side: int | None = None  # shrink the input so its longer side is at most this
    strength: float = 1.0  # styles: 1 = the stylized image, 0 = the photo, linear in between
    preserve_color: bool = False  # styles: luminance from the network, colours from the photo
    histmatch: bool = False  # match the output's colour histogram to the input's
    format: str | None = None  # png | jpeg | webp; None = the input's when it is one of those, else png
    quality: int | None = None  # JPEG/WEBP quality, 1..100 (default 90)
    # SR: None = the named model as is; 0..1 = network interpolation between the pixel-loss network (0, faithful)
    # and the feature-loss network fine-tuned from it (1, sharp): model_store.pipeline.detail_net.
    detail: float | None = None
    # Styles: brush strokes this many times larger: stylize at 1/stroke of the size, then bring the result back
    # with the pixel-loss SR network (model_store.pipeline.infer_with). 1 = off.
    stroke: float = 1.0


