"""The one inference pipeline: an image in, the finished image out, the same pixels from every caller.

The worker (API jobs), the CLI (`percept stylize/upscale`), `percept eval`/`report` and the Python API
(`percept.stylize`) all go through these three steps, so one model with one set of options gives one result:

1. `prepare`: the decoded image (orientation applied, alpha split off by `imaging`) shrunk to `max_side`;
2. `infer`: a batch of same-size inputs through the network, each input tiled when its output passes the pixel
   budget (tiling keeps whole-image instance-norm statistics, so the result is seam-free);
3. `finish`: strength, colour preservation, histogram matching, alpha put back; `imaging.tensors.encode` then
   writes the bytes.
"""

from __future__ import annotations

import copy
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import torch

from imaging import codec, tensors
from imaging.tensors import Decoded
from model_store import inference, store
from model_store.networks import TransformNet
from model_store.options import TILE_PIXELS, Options
from model_store.tiling import Progress, run_net_tiled

Forward = Callable[[TransformNet, torch.Tensor], torch.Tensor]


def load(model: str, device: str = "cpu") -> tuple[TransformNet, str]:
    """A store model (``muse``, ``muse@1``) or a training checkpoint (a .pt path) on `device`, and its label.

    Raises `store.ModelStoreError` for a model or checkpoint that cannot be read, RuntimeError for a device that
    is not there.
    """
    from model_store import checkpoints

    where = inference.resolve_device(device)
    if model.endswith(".pt") or Path(model).is_file():
        try:
            net, ckpt = checkpoints.network(model)
        except (OSError, RuntimeError, KeyError, ValueError) as e:
            raise store.ModelStoreError(f"cannot read the checkpoint {model}: {e}") from None
        return net.to(where), f"{model} (iteration {ckpt.get('iteration')})"
    name, _, version = model.partition("@")
    net, entry = store.load(name, int(version) if version.isdigit() else None, device=where)
    return net, f"{name} v{entry.version}"


def wrap(rgb: torch.Tensor) -> Decoded:
    """A 1x3xHxW tensor as a decoded image without alpha (the trainer's and evaluation's inputs)."""
    return Decoded(rgb=rgb, alpha=None, format="png", width=rgb.shape[-1], height=rgb.shape[-2])


def prepare(image: Decoded, options: Options) -> Decoded:
    return tensors.resize_max_side(image, options.max_side)


def needs_tiling(image: Decoded | torch.Tensor, factor: int, tile_pixels: int = TILE_PIXELS) -> bool:
    h, w = (image.height, image.width) if isinstance(image, Decoded) else image.shape[-2:]
    return h * w * factor * factor > tile_pixels


def infer(net: TransformNet, inputs: list[torch.Tensor], *, tile_pixels: int = TILE_PIXELS,
          forward: Forward = inference.forward, half: bool = False,
          progress: Progress | None = None) -> list[torch.Tensor]:
    """Same-size 1x3xHxW inputs -> outputs clamped to [0, 255], float32 on the CPU.

    Inputs whose output passes `tile_pixels` run one by one in tiles (style networks layer by layer under fp16
    autocast when `half`, on CUDA; SR networks tile by tile through `forward`); the others share one pass.
    `progress(done, total)`: the work done over all inputs, after each tile (0 then 1 of 1 for one pass); an
    exception it raises stops the work there.
    """
    factor = net.config.factor
    if needs_tiling(inputs[0], factor, tile_pixels):
        cuda_half = half and next(net.parameters()).device.type == "cuda"
        outs = []
        for k, x in enumerate(inputs):
            step = None if progress is None else (
                lambda done, total, k=k: progress(k * total + done, len(inputs) * total))
            outs.append(run_net_tiled(net, x, budget_pixels=tile_pixels, forward=lambda t: forward(net, t).cpu(),
                                      dtype=torch.float16 if cuda_half else None, progress=step).clamp(0, 255))
        return outs
    if progress is not None:
        progress(0, 1)
    outs = list(forward(net, torch.cat(inputs)).cpu().clamp(0, 255).split(1))
    if progress is not None:
        progress(1, 1)
    return outs


def finish(image: Decoded, out: torch.Tensor, factor: int, options: Options) -> torch.Tensor:
    """The network's output for `image` -> the finished RGB (1x3xHxW) or RGBA (1x4xHxW) result in [0, 255]."""
    if factor == 1:
        if options.preserve_color:
            out = tensors.preserve_color(out, image.rgb)
        if options.strength < 1.0:
            out = tensors.blend(out, image.rgb, options.strength)
    if options.histmatch:
        out = tensors.match_histograms(out, image.rgb).clamp(0, 255)
    return tensors.attach_alpha(out, image.alpha, factor)


def run(net: TransformNet, image: Decoded | torch.Tensor, options: Options = Options(), *,
        tile_pixels: int = TILE_PIXELS, forward: Forward | None = None,
        get: Callable[[str], TransformNet] | None = None) -> torch.Tensor:
    """`prepare`, `infer` and `finish` for one image; a bare tensor is an image without alpha. `get` loads the
    other store models the dials (`detail`, `stroke`) need.

    `forward` None: this machine's default backend (`backends.default_forward`: ``auto``, what a worker with the
    default settings runs), so the CLI, the Python API and evaluation give the service's pixels.
    """
    from model_store import backends

    image = prepare(wrap(image) if isinstance(image, torch.Tensor) else image, options)
    forward = forward or backends.default_forward(next(net.parameters()).device)
    (out,) = infer_with(net, [image.rgb], options, get, tile_pixels=tile_pixels, forward=forward)
    return finish(image, out.to(image.rgb.device), net.config.factor, options)


def encode(result: torch.Tensor, image: Decoded, options: Options) -> tuple[bytes, str]:
    """The finished result as bytes in the requested format (default: the input's, else PNG)."""
    return tensors.encode(result, codec.output_format(options.format, image.format), options.quality)


# The dials -------------------------------------------------------------------------------------------------
# Interpolated networks kept per (pixel net, feat net, detail): building one copies ~1.7 MB of weights and
# takes milliseconds, but a request must not pay it every time nor let a client grow memory without bound
# (detail is a float: 2 decimals are kept, so at most 101 values per pair; the 16 most recent stay).
BLEND_CACHE = 16
_blends: OrderedDict[tuple[int, int, float], tuple[TransformNet, TransformNet, TransformNet]] = OrderedDict()
_blends_lock = threading.Lock()
# The stroke dial's range: 4 is the largest pixel-loss SR factor shipped; 0.5 stylizes at twice the size, i.e.
# four times the compute (tiled by `infer` past the tile budget, so memory stays bounded).
STROKES = (0.5, 4.0)
# The SR factor the stroke dial brings the small stylized image back with: x4, the one pixel-loss factor shipped,
# serves every stroke in (1, 4] (the remainder is an antialiased bicubic resize, which loses nothing the SR net
# made up).
STROKE_SR_FACTOR = 4


def detail_net(pixel: TransformNet, feat: TransformNet, detail: float) -> TransformNet:
    """Network interpolation (Wang et al., ESRGAN): weights (1 - detail) * pixel + detail * feat, cached.
    0 and 1 return the networks themselves (bit-identical outputs). Raises ValueError for two architectures."""
    if not 0.0 <= detail <= 1.0:
        raise ValueError(f"detail must be between 0 and 1, got {detail}")
    if pixel.config != feat.config:
        raise ValueError(f"detail needs two networks of one architecture, got {pixel.config} and {feat.config}")
    detail = round(detail, 2)
    if detail in (0.0, 1.0):
        return pixel if detail == 0.0 else feat
    key = (id(pixel), id(feat), detail)
    with _blends_lock:
        hit = _blends.get(key)
        if hit is not None and hit[0] is pixel and hit[1] is feat:  # ids of live objects (the entry holds them)
            _blends.move_to_end(key)
            return hit[2]
    a, b = pixel.state_dict(), feat.state_dict()
    net = copy.deepcopy(feat)
    net.load_state_dict({k: (a[k].float() * (1.0 - detail) + b[k].float() * detail).to(b[k].dtype) for k in b})
    net.eval()
    with _blends_lock:
        _blends[key] = (pixel, feat, net)
        while len(_blends) > BLEND_CACHE:
            _blends.popitem(last=False)
    return net


GetNet = Callable[[str], TransformNet]


def dialled(net: TransformNet, options: Options, get: GetNet | None) -> tuple[TransformNet, TransformNet | None]:
    """(the network to run, the SR network the stroke dial needs or None). `net` is the model the request named
    (for `detail`: the feature-loss SR model); `get` loads another store model by name."""
    factor = net.config.factor
    if options.detail is not None and factor > 1:
        if get is None:
            raise ValueError("detail needs the store's pixel-loss network")
        pixel, _ = store.sr_detail_pair(factor)
        return detail_net(get(pixel), net, options.detail), None
    if options.stroke != 1.0 and factor == 1:
        if not STROKES[0] <= options.stroke <= STROKES[1]:
            raise ValueError(f"stroke must be between {STROKES[0]:g} and {STROKES[1]:g}, got {options.stroke:g}")
        if options.stroke < 1.0:  # finer strokes: stylized larger, then downsampled; no SR net
            return net, None
        if get is None:
            raise ValueError("stroke needs the store's pixel-loss SR network")
        return net, get(store.sr_model_name(STROKE_SR_FACTOR, "pixel"))
    return net, None


def infer_with(net: TransformNet, inputs: list[torch.Tensor], options: Options, get: GetNet | None = None,
               **kw) -> list[torch.Tensor]:
    """`infer` with the dials applied: `detail` runs the interpolated SR network; `stroke` S stylizes at 1/S
    of the input's size (S > 1: then super-resolves the result) and resizes it to exactly the input's size."""
    net, sr = dialled(net, options, get)
    stroke = options.stroke if net.config.factor == 1 else 1.0
    if stroke == 1.0:
        return infer(net, inputs, **kw)
    h, w = inputs[0].shape[-2:]
    scaled = [tensors.resize(x, (max(1, round(h / stroke)), max(1, round(w / stroke)))) for x in inputs]
    styled = infer(net, scaled, **kw)
    if sr is not None:
        styled = infer(sr, styled, **kw)
    return [tensors.resize(s, (h, w)) for s in styled]
