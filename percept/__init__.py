"""percept: perceptual-loss style transfer and super-resolution, from Python and from the `percept` command.

    >>> from percept import stylize, upscale
    >>> stylize("photo.jpg", "muse", strength=0.8).save("muse.png")
    >>> upscale(Image.open("small.png"), factor=4).save("big.png")

Both run the service's inference pipeline (`model_store.pipeline`), so they give the pixels `POST /stylize` and
`POST /upscale` give for the same options. Models stay loaded between calls (one per model and device).
"""

from __future__ import annotations

from contextlib import suppress
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch loads on the first call, not on `import percept` (the CLI's --help stays fast)
    from PIL import Image

    from model_store.networks import TransformNet

__all__ = ["stylize", "upscale"]


def stylize(image: str | Path | Image.Image, model: str = "muse", *, strength: float = 1.0,
            preserve_color: bool = False, max_side: int | None = None, stroke: float = 1.0,
            device: str = "cpu") -> Image.Image:
    """`image` (a path or a PIL image) in the style of `model` (a style name, ``name@version`` or a .pt
    checkpoint). `stroke` 0.5..4: brush strokes that many times larger (stylized at 1/stroke of the size, then
    brought back: super-resolved above 1, downsampled below). Alpha is kept; returns an RGB or RGBA PIL image."""
    from model_store.options import Options

    return _run(image, model, 1, Options(max_side=max_side, strength=strength, preserve_color=preserve_color,
                                         stroke=stroke), device)


def upscale(image: str | Path | Image.Image, factor: int = 4, *, loss: str = "feat", model: str | None = None,
            detail: float | None = None, histmatch: bool = False, max_side: int | None = None,
            device: str = "cpu") -> Image.Image:
    """`image` enlarged `factor` times by the super-resolution model for `loss` (``feat``: sharper, ``pixel``:
    more faithful), or by `model`. `detail` 0..1 dials between the two (0 = pixel, 1 = feat; overrides
    `loss`). Returns an RGB or RGBA PIL image."""
    from model_store import store
    from model_store.options import Options

    if detail is not None:
        model = store.sr_detail_pair(factor)[1]
    return _run(image, model or store.sr_model_name(factor, loss), factor,
                Options(max_side=max_side, histmatch=histmatch, detail=detail), device)


def _network(model: str, device: str) -> TransformNet:
    """The loaded network, kept between calls. A store model is keyed by the version it resolves to now (its
    folder and weights' sha256: a manifest read, not a reload), so a newly published default version, or another
    MODEL_STORE, is picked up by the next call."""
    from model_store import store

    where = ""
    if not model.endswith(".pt") and not Path(model).is_file():
        name, _, version = model.partition("@")
        with suppress(store.ModelStoreError, ValueError):  # unknown: pipeline.load reports it
            entry = store.get(name, int(version) if version else None)
            model, where = f"{name}@{entry.version}", f"{entry.path}:{entry.manifest.get('sha256')}"
    return _loaded(model, device, where)


@lru_cache(maxsize=8)
def _loaded(model: str, device: str, where: str) -> TransformNet:
    from model_store import pipeline

    return pipeline.load(model, device)[0]


def _run(image: str | Path | Image.Image, model: str, factor: int, options, device: str) -> Image.Image:
    from PIL import Image as PILImage

    from imaging import codec, tensors
    from model_store import pipeline

    net = _network(model, device)
    if net.config.factor != factor:
        raise ValueError(f"{model} is an x{net.config.factor} model, not x{factor}" if factor > 1
                         else f"{model} is a super-resolution model, not a style")
    if isinstance(image, PILImage.Image):
        decoded = tensors.from_checked(codec.Checked(image.copy(), "png"))
    else:
        decoded = tensors.read(image)
    return tensors.to_pil(pipeline.run(net, decoded, options, get=lambda name: _network(name, device)))
