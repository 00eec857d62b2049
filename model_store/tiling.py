"""Tiled inference: run an image network on an image too large for one forward pass, in overlapping tiles.

What for: a forward pass's memory grows with its output pixels (sr_x4 holds 64-channel activations at four times
the input's size), so the worker caps each pass at a pixel budget (`needs_tiling`, `tile_for_budget`) and runs
bigger requests tile by tile with `run_tiled`, which stitches the tiles' outputs back into one image without
visible seams. The networks are fully convolutional, so a tile's output is the corresponding crop of the untiled
output except near the tile's cut edges, where the network sees reflection padding instead of the real
neighbourhood.

How the stitching works (sizes in input pixels; the output is `factor` times larger):

- Tiles are at most `tile` x `tile`, neighbours share at least `overlap` pixels, the first tile of a row/column
  starts at 0 and the last ends exactly at the image border (no padding, no partial coverage). Tile origins are
  multiples of `align` (4 by default: the style networks downsample twice by 2, and a tile whose origin is not a
  multiple of 4 sees a different sampling phase than the untiled pass).
- Each tile's output is weighted by a separable window and the weighted outputs are summed and divided by the
  summed weights. Along a cut edge the window is 0 for the first `margin` pixels (context only: the receptive
  field of those pixels reaches past the cut, so their values are wrong), then rises along a raised-cosine ramp
  across the rest of the shared band, mirrored by the neighbour's window. Image borders get weight 1 up to the
  edge. With `margin` >= the network's receptive-field radius, every output pixel that gets any weight is exact,
  so for a network without image-wide normalization (the SR networks) tiled == untiled up to float rounding.

Receptive fields (`receptive_radius`; input pixels from an output pixel to the farthest input pixel it sees):

- sr_x4 / sr_x8 (modern preset): 9x9 head (4) + 4 residual blocks of two 3x3 convs (8) + the 3x3 convs after
  each x2 upsampling (0.5 + 0.25 [+ 0.125]) + the final 9x9 at the output scale (1 or 0.5): 14 px. The default
  `overlap=64` gives `margin=16` >= 14 plus a 32-px blending ramp.
- style networks (modern preset): 9x9 head (4) + two stride-2 3x3 convs (1 + 2) + 5 residual blocks at 1/4 scale
  (10 x 4 = 40) + the two upsampling 3x3 convs (2 + 1) + the final 9x9 (4): 54 px. `run_net_tiled` derives the
  margin from the network, so it uses 54 there.

Instance norm (the modern style networks): every feature map is normalized with the mean and variance of the
image the network is given, so a tile run on its own normalizes with its own statistics, and its colours,
contrast and brush strokes shift (a sky-only tile is stretched differently from one that also holds buildings).
No margin removes this, and it is not small for a strong style: muse on chicago.jpg (474x712), per-tile
statistics vs untiled, measured mean abs difference 24 grey levels with 256-px tiles and 12 with 384-px tiles
(max > 150, PSNR 18-23 dB); the cosine ramp only turns hard seams into soft transitions. `run_tiled` with an
opaque `fn` has exactly this limitation: use tiles as large as the budget allows for style models.
`run_net_tiled`, given the network itself, fixes it (`global_norm=True`, the default) by running the network
layer by layer instead of tile by tile (`run_layer_by_layer`): each convolution's whole output map is computed
in tiles, each tile reading its input plus the kernel's halo (1-4 px) from the previous layer's whole map
(reflection padding and nearest upsampling resolved at the map's borders), and kept in host memory; each
instance-norm layer then takes its mean and variance over that whole map once and normalizes it in place. That
is the untiled computation in another order, so the result is the untiled output up to float rounding, and the
work is one untiled pass plus the halos and the tile copies at borders and upsamplings.

Cost and memory, measured with ``python -m bench.tiling --sizes 1024,2048 --repeats 3`` (muse v2, width 0.5, on
chicago.jpg resized; 2 shared CPU cores, medians of 3 interleaved runs; peak = the run's process peak RSS, base =
its peak before the run: torch, the model, the image and a warm-up):

     size     budget  untiled s  tiled s  ratio  untiled peak MB  tiled peak MB  base MB  max abs diff  mean abs diff
    -----  ---------  ---------  -------  -----  ---------------  -------------  -------  ------------  -------------
    1024²  1,000,000       1.49     1.32  0.88x             1281           1052      760       0.00049        1.7e-05
    2048²  1,000,000       7.43     5.47  0.74x             2825           1712      798       0.00076        2.4e-05
    2048²  4,000,000       8.52     9.30  1.09x             2823           1785      797       0.00076        2.4e-05

(the last row from ``--sizes 2048 --budget 4000000``, the worker's default budget). On this CPU the layer-by-layer
pass costs about one untiled pass (less with 1M-pixel tiles: presumably smaller tensors run faster per pixel here
than whole-image ones), where the method it replaced (one partial pass over all tiles per instance-norm layer, to
gather each layer's statistics) took 95 s for 3.6 s untiled at 1024² and 415 s for 6.6 s at 2048². Memory: every
tensor computed at once (a convolution's input tile, its output tile) covers at most the budget's share of its
layer, as in an untiled pass of `budget_pixels`; what is not bounded by the budget is the whole maps between layers,
float32 in host memory, at most a layer's input, its output and a residual block's identity at a time: for muse at
2048² the largest is 16 channels x 2048² (256 MiB), and the process peaks at ~0.9 GB over its base against ~2 GB for
the untiled pass. On a GPU the device holds only tiles and the maps stay on the host, so each layer's map crosses
the bus once each way (not measured: no GPU here). The whole-map passes (statistics, normalization) work in 16-MB
blocks (`_CHUNK`): with 1-MB blocks they took 4-20x longer on the loaded 2-core machine (thousands of small
parallel ops, each waiting for both cores).

The SR networks have no normalization layers (modern preset) and paper-preset networks in eval mode use stored
batch-norm statistics, so neither needs this: they go through `run_tiled` and `forward`. A paper-preset network
built with instance norm cannot run layer by layer (unpadded convs, transposed convs): `run_net_tiled` raises
ValueError for it unless `global_norm=False`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from model_store.networks import ResidualBlock, ScaledTanh, TransformNet, _reflect_pad

DEFAULT_TILE = 512
# >= 2 x the SR networks' receptive-field radius (14 px) + a 32-px ramp; see the module docstring.
DEFAULT_OVERLAP = 64
DEFAULT_RAMP = 32  # width of the cross-fade band used by run_net_tiled, in input pixels
DEFAULT_ALIGN = 4  # the style networks' total stride; harmless for SR networks

TileFn = Callable[[torch.Tensor], torch.Tensor]
# Called as progress(done, total) after each tile (and each layer step): a worker reports it, and may raise
# from it to stop the computation there (a cancelled job).
Progress = Callable[[int, int], None]


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _check_geometry(tile: int, overlap: int, margin: int | None, align: int) -> int:
    """Validate the tiling parameters; return the margin (default: a quarter of the overlap)."""
    _check_int("tile", tile, 1)
    _check_int("overlap", overlap, 0)
    _check_int("align", align, 1)
    if overlap >= tile:
        raise ValueError(f"overlap ({overlap}) must be smaller than tile ({tile})")
    if tile - overlap < align:
        raise ValueError(f"tile - overlap ({tile - overlap}) must be at least align ({align})")
    margin = overlap // 4 if margin is None else _check_int("margin", margin, 0)
    if overlap and 2 * margin >= overlap:
        raise ValueError(f"2 x margin ({2 * margin}) must be smaller than overlap ({overlap}) to leave a ramp")
    if not overlap and margin:
        raise ValueError("margin needs an overlap")
    return margin


def plan_spans(length: int, tile: int, overlap: int = DEFAULT_OVERLAP, align: int = 1) -> list[tuple[int, int]]:
    """Split [0, length) into spans of at most `tile`, neighbours sharing >= `overlap`, starts multiples of `align`.

    The first span starts at 0 and the last ends at `length`; the starts are spread evenly, so the spans have
    (nearly) equal overlaps. A length that fits in one tile gives one span.
    """
    _check_int("length", length, 1)
    _check_geometry(tile, overlap, None, align)
    if length <= tile:
        return [(0, length)]
    last = -(-(length - tile) // align) * align  # aligned start of the last span; it ends at `length`
    n = 2
    while True:
        starts = sorted({(i * last) // (n - 1) // align * align for i in range(n)})
        if all(a + tile - b >= overlap for a, b in zip(starts, starts[1:], strict=False)):
            return [(s, min(s + tile, length)) for s in starts]
        # Terminates: once the spacing is under `align`, consecutive starts differ by <= align <= tile - overlap.
        n += 1


def _ramp(t: torch.Tensor) -> torch.Tensor:
    """Raised cosine from 0 (t <= 0) to 1 (t >= 1)."""
    return 0.5 - 0.5 * torch.cos(math.pi * t.clamp(0.0, 1.0))


def _window(start: int, end: int, length: int, factor: int, margin: int, ramp: int) -> torch.Tensor:
    """1-D weights of one span's output pixels: 0 over `margin` at a cut edge, then a ramp of width `ramp`."""
    pos = (torch.arange((end - start) * factor, dtype=torch.float64) + 0.5) / factor  # from the span's start
    weight = torch.ones_like(pos)
    if start > 0:
        weight *= _ramp((pos - margin) / ramp)
    if end < length:
        weight *= _ramp(((end - start) - pos - margin) / ramp)
    return weight


def run_tiled(
    fn: TileFn,
    image: torch.Tensor,
    factor: int,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    *,
    margin: int | None = None,
    align: int = DEFAULT_ALIGN,
    progress: Progress | None = None,
) -> torch.Tensor:
    """Apply `fn` to `image` (NxCxHxW) in overlapping tiles and stitch the outputs; returns Nx C' x H*factor x W*factor.

    `fn` maps a tile NxCxhxw to NxC'x(h*factor)x(w*factor). Tiles are at most `tile` x `tile` input pixels and
    neighbours share at least `overlap` pixels; in each shared band the first `margin` pixels from the cut are
    discarded (default: overlap // 4) and the rest is cross-faded with a raised-cosine window. Tile origins are
    multiples of `align`. An image that fits in one tile is passed to `fn` whole, so the result is exactly
    ``fn(image)``. The stitched output is float32 (or `fn`'s dtype when wider) on `image`'s device; gradients
    are not tracked. `progress(done, total)` is called after each tile.
    """
    if not isinstance(image, torch.Tensor) or image.dim() != 4 or min(image.shape) < 1:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"image must be a non-empty NxCxHxW tensor, got {shape}")
    _check_int("factor", factor, 1)
    margin = _check_geometry(tile, overlap, margin, align)
    n, _, h, w = image.shape
    rows, cols = plan_spans(h, tile, overlap, align), plan_spans(w, tile, overlap, align)

    def call(y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
        out = fn(image[:, :, y0:y1, x0:x1])
        expected = (n, (y1 - y0) * factor, (x1 - x0) * factor)
        if not isinstance(out, torch.Tensor) or out.dim() != 4 or (out.shape[0], *out.shape[2:]) != expected:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(
                f"fn must map a {y1 - y0}x{x1 - x0} tile to N x C x {expected[1]}x{expected[2]}, got {got}"
            )
        return out

    with torch.no_grad():
        if len(rows) == 1 and len(cols) == 1:
            whole = call(0, h, 0, w)
            if progress is not None:
                progress(1, 1)
            return whole
        ramp = max(overlap - 2 * margin, 1)
        f = factor
        wy = [_window(y0, y1, h, f, margin, ramp) for y0, y1 in rows]
        wx = [_window(x0, x1, w, f, margin, ramp) for x0, x1 in cols]
        out: torch.Tensor | None = None
        done = 0
        for (y0, y1), wyy in zip(rows, wy, strict=True):
            for (x0, x1), wxx in zip(cols, wx, strict=True):
                piece = call(y0, y1, x0, x1)
                if progress is not None:
                    done += 1
                    progress(done, len(rows) * len(cols))
                if out is None:
                    dtype = torch.promote_types(piece.dtype, torch.float32)
                    out = torch.zeros((n, piece.shape[1], h * f, w * f), dtype=dtype, device=image.device)
                weight = (wyy[:, None] * wxx[None, :]).to(out.device, out.dtype)
                out[:, :, y0 * f : y1 * f, x0 * f : x1 * f] += piece.to(out.device, out.dtype) * weight
        assert out is not None
        # The windows are separable and the tiles form a grid, so the summed weight is an outer product.
        sum_y, sum_x = torch.zeros(h * f, dtype=torch.float64), torch.zeros(w * f, dtype=torch.float64)
        for (y0, y1), wyy in zip(rows, wy, strict=True):
            sum_y[y0 * f : y1 * f] += wyy
        for (x0, x1), wxx in zip(cols, wx, strict=True):
            sum_x[x0 * f : x1 * f] += wxx
        # Cannot happen when 2 x margin < overlap (each pixel is past the margin of some tile); kept as a guard.
        if sum_y.min() <= 0 or sum_x.min() <= 0:
            raise RuntimeError("tiling left output pixels without weight")
        out /= (sum_y[:, None] * sum_x[None, :]).to(out.device, out.dtype)
        return out


def needs_tiling(h: int, w: int, factor: int, budget_pixels: int) -> bool:
    """Whether an HxW request's output (H*factor x W*factor) exceeds a per-forward-pass pixel budget."""
    for name, value in (("h", h), ("w", w), ("factor", factor), ("budget_pixels", budget_pixels)):
        _check_int(name, value, 1)
    return h * w * factor * factor > budget_pixels


def tile_for_budget(budget_pixels: int, factor: int, overlap: int = DEFAULT_OVERLAP, align: int = DEFAULT_ALIGN) -> int:
    """The largest square tile (input pixels, a multiple of `align`) whose output fits in `budget_pixels`.

    Raises ValueError when that tile would not exceed `overlap` by at least `align` (the budget is too small
    for tiling with that overlap).
    """
    _check_int("budget_pixels", budget_pixels, 1)
    _check_int("factor", factor, 1)
    _check_int("overlap", overlap, 0)
    _check_int("align", align, 1)
    tile = math.isqrt(budget_pixels) // factor // align * align
    if tile - overlap < align:
        raise ValueError(
            f"a budget of {budget_pixels} output pixels allows {tile}-px tiles at factor {factor}, too small for an "
            f"overlap of {overlap} px"
        )
    return tile


def receptive_radius(net: nn.Module) -> int:
    """How far (input pixels) an output pixel of `net` sees, from its convolutions, strides and upsamplings.

    Walks the modules in registration order, which is the forward order for `TransformNet` (head, body, tail)
    and for plain sequential stacks; residual identities add nothing. Normalization layers are ignored: instance
    norm sees the whole input (see the module docstring).
    """
    radius, scale = 0.0, 1.0  # scale: input pixels per feature pixel at the current layer
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            k, d = max(module.kernel_size), max(module.dilation)
            radius += (k - 1) * d / 2 * scale
            scale *= max(module.stride)
        elif isinstance(module, nn.ConvTranspose2d):
            scale /= max(module.stride)
            radius += (max(module.kernel_size) - 1) * max(module.dilation) / 2 * scale
        elif isinstance(module, nn.Upsample):
            sf = module.scale_factor
            scale /= float(max(sf) if isinstance(sf, tuple) else sf or 1)
        elif isinstance(module, nn.MaxPool2d | nn.AvgPool2d):
            k = module.kernel_size if isinstance(module.kernel_size, int) else max(module.kernel_size)
            s = module.stride if isinstance(module.stride, int) else max(module.stride)
            radius += (k - 1) / 2 * scale
            scale *= s
    return math.ceil(radius - 1e-9)


def net_geometry(net: nn.Module, ramp: int = DEFAULT_RAMP) -> tuple[int, int, int]:
    """(overlap, margin, align) for tiling `net`: margin = receptive radius, overlap = 2 x margin + ramp."""
    _check_int("ramp", ramp, 1)
    margin = receptive_radius(net)
    return 2 * margin + ramp, margin, int(getattr(net, "multiple", 1))


# Instance norm with whole-image statistics: the network layer by layer ---------------------------------------


def _instance_norms(net: nn.Module) -> list[nn.InstanceNorm2d]:
    """The instance-norm layers that normalize with their input's own statistics, in forward order."""
    return [m for m in net.modules() if isinstance(m, nn.InstanceNorm2d) and (m.training or not m.track_running_stats)]


_CHUNK = 1 << 22  # elements per block of the in-place passes over a whole map (16 MB; see `_mean_var`)


def _chunks(x: torch.Tensor) -> Iterator[torch.Tensor]:
    """A contiguous NxCxHxW map as (N*C) x k column blocks of its planes, ~_CHUNK elements each (views)."""
    planes = x.view(x.shape[0] * x.shape[1], -1)
    step = max(1, _CHUNK // planes.shape[0])
    for i in range(0, planes.shape[1], step):
        yield planes[:, i : i + step]


def _mean_var(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image and channel mean and (biased) variance of a contiguous map, float64, shape N*C x 1.

    Two passes: the mean from float32 sums (pairwise, accurate), then the squared deviations from it, in
    `_CHUNK` blocks. torch's var_mean gives the same numbers but is ~5x slower on a large map (Welford's update
    is compute-bound).
    """
    count = x.shape[2] * x.shape[3]
    mean = x.view(x.shape[0] * x.shape[1], -1).sum(1, keepdim=True) / count
    shift = torch.zeros_like(mean, dtype=torch.float64)
    squares = torch.zeros_like(shift)
    for chunk in _chunks(x):
        d = chunk - mean
        shift += d.sum(1, keepdim=True)
        squares += d.square_().sum(1, keepdim=True)
    shift /= count  # the float32 mean's rounding error
    return mean.double() + shift, (squares / count - shift * shift).clamp_min(0.0)


def _reflect_index(pos: torch.Tensor, length: int) -> torch.Tensor:
    """Where positions `pos` of a reflection-padded axis of `length` pixels read from (as nn.ReflectionPad2d)."""
    if length == 1:
        return torch.zeros_like(pos)
    period = 2 * (length - 1)
    m = pos.remainder(period)
    return torch.where(m < length, m, period - m)


def _spans(length: int, side: int) -> list[tuple[int, int]]:
    """[0, length) in ceil(length / side) nearly equal parts."""
    parts = -(-length // side)
    cuts = [i * length // parts for i in range(parts + 1)]
    return list(itertools.pairwise(cuts))


def _read(x: torch.Tensor, rows: tuple[int, int], cols: tuple[int, int], up: int) -> torch.Tensor:
    """Rows x cols of `x` upsampled `up` times (nearest), coordinates past its border reflected (ReflectionPad2d).

    A view or a tile-sized copy, never a copy of the whole map.
    """
    h, w = x.shape[2] * up, x.shape[3] * up
    (top, bottom), (left, right) = rows, cols
    y0, y1, x0, x1 = max(top, 0), min(bottom, h), max(left, 0), min(right, w)
    pads = (x0 - left, right - x1, y0 - top, bottom - y1)
    if y1 - y0 <= max(pads[2:]) or x1 - x0 <= max(pads[:2]):  # tiny map or tile: reflection by index
        iy = _reflect_index(torch.arange(top, bottom), h) // up
        ix = _reflect_index(torch.arange(left, right), w) // up
        return x.index_select(2, iy).index_select(3, ix)
    ly0, lx0 = y0 // up, x0 // up
    tile = x[:, :, ly0 : -(-y1 // up), lx0 : -(-x1 // up)]
    if up > 1:
        tile = F.interpolate(tile, scale_factor=up, mode="nearest")
        tile = tile[:, :, y0 - ly0 * up : y1 - ly0 * up, x0 - lx0 * up : x1 - lx0 * up]
    return F.pad(tile, pads, mode="reflect") if any(pads) else tile


PointwiseOp = Callable[[torch.Tensor], torch.Tensor]  # in place on an (N*C) x k block of a map; returns it


class _Map:
    """A whole feature map (NxCxHxW, float32, contiguous, host memory) plus pointwise ops not applied to it yet.

    `materialize` applies the pending ops (normalization, ReLU, ...) in one in-place pass, block by block.
    """

    def __init__(self, data: torch.Tensor):
        self.data = data
        self.ops: list[PointwiseOp] = []

    def materialize(self, add: torch.Tensor | None = None) -> torch.Tensor:
        if self.ops or add is not None:
            blocks = _chunks(self.data)
            for chunk, extra in zip(blocks, _chunks(add) if add is not None else itertools.repeat(None), strict=False):
                for op in self.ops:
                    chunk = op(chunk)
                if extra is not None:
                    chunk.add_(extra)
            self.ops = []
        return self.data


class _LayerByLayer:
    """Runs a modern-preset `TransformNet` one convolution at a time, over tiles of whole-image feature maps.

    Each convolution's output map is computed tile by tile (output tiles covering at most `budget_pixels` of
    the network's output: the same share of every layer's map), each tile reading its input plus the halo the
    kernel needs from the previous map (reflection padding and nearest upsampling resolved at the map's
    borders), so every tile gets exactly the values of the untiled pass. Instance norm takes its statistics
    over the whole map, as in the untiled pass, and normalizes it in place.
    """

    def __init__(self, budget_pixels: int, output_pixels: int, device: torch.device, dtype: torch.dtype | None,
                 progress: Progress | None = None, convs: int = 1):
        self.budget, self.output_pixels = budget_pixels, output_pixels
        # Progress in convolutions done of `convs`; reported after every tile too (the same count), so a caller
        # that stops the work from its callback does not wait for a whole layer.
        self.progress, self.convs, self.convs_done = progress, convs, 0
        self.device, self.dtype = device, dtype
        self.pad: tuple[int, int, int, int] | None = None  # pending ReflectionPad2d (left, right, top, bottom)
        self.up = 1  # pending nearest upsampling factor

    def unsupported(self, module: nn.Module) -> ValueError:
        return ValueError(
            f"whole-image instance norm runs modern-preset TransformNets layer by layer and cannot run "
            f"{type(module).__name__} here; pass global_norm=False for per-tile statistics"
        )

    def __call__(self, module: nn.Module, x: _Map) -> _Map:
        if isinstance(module, nn.Sequential):
            for child in module:
                x = self(child, x)
            return x
        if isinstance(module, nn.Conv2d):
            return self.conv(module, x)
        if isinstance(module, nn.Upsample):
            sf = set(module.scale_factor) if isinstance(module.scale_factor, tuple) else {module.scale_factor}
            factor = sf.pop() if len(sf) == 1 else None
            if self.pad is not None or module.mode != "nearest" or not factor or factor != int(factor):
                raise self.unsupported(module)
            self.up *= int(factor)
            return x
        if isinstance(module, nn.ReflectionPad2d):
            if self.pad is not None:
                raise self.unsupported(module)
            self.pad = tuple(module.padding)
            return x
        if self.pad is not None or self.up != 1:  # a pad or an upsampling not followed by a convolution
            raise self.unsupported(module)
        if isinstance(module, nn.Identity):
            return x
        if isinstance(module, nn.ReLU):
            x.ops.append(torch.relu_)
            return x
        if isinstance(module, ScaledTanh):
            x.ops.append(lambda t: t.tanh_().add_(1.0).mul_(127.5))
            return x
        if isinstance(module, nn.InstanceNorm2d | nn.BatchNorm2d):
            return self.norm(module, x)
        if isinstance(module, ResidualBlock) and module.pad:
            identity = x.materialize()
            y = self(module.body, _Map(identity))
            return _Map(y.materialize(add=identity))
        raise self.unsupported(module)

    def norm(self, module: nn.InstanceNorm2d | nn.BatchNorm2d, x: _Map) -> _Map:
        n, c = x.data.shape[:2]
        if module.training or not module.track_running_stats:
            if isinstance(module, nn.BatchNorm2d):
                raise self.unsupported(module)  # batch statistics (training mode): not an inference network
            mean, var = _mean_var(x.materialize())  # whole-map statistics, per image and channel
        else:
            assert module.running_mean is not None and module.running_var is not None
            mean = module.running_mean.detach().double().cpu().repeat(n)[:, None]
            var = module.running_var.detach().double().cpu().repeat(n)[:, None]
        scale = torch.rsqrt(var + module.eps)
        shift = -mean * scale
        if module.affine:
            weight = module.weight.detach().double().cpu().repeat(n)[:, None]
            scale, shift = scale * weight, shift * weight + module.bias.detach().double().cpu().repeat(n)[:, None]
        a, b = scale.float(), shift.float()
        x.ops.append(lambda t: t.mul_(a).add_(b))
        return x

    def conv(self, conv: nn.Conv2d, x: _Map) -> _Map:
        if conv.padding not in ((0, 0), "valid"):
            raise self.unsupported(conv)
        left, right, top, bottom = self.pad or (0, 0, 0, 0)
        up, self.pad, self.up = self.up, None, 1
        data = x.materialize()
        n, _, h, w = data.shape
        (kh, kw), (sh, sw), (dh, dw) = conv.kernel_size, conv.stride, conv.dilation
        ho = (h * up + top + bottom - dh * (kh - 1) - 1) // sh + 1
        wo = (w * up + left + right - dw * (kw - 1) - 1) // sw + 1
        out = torch.empty((n, conv.out_channels, ho, wo), dtype=torch.float32)
        # This layer's share of the pixel budget, as square tiles (the last row/column of tiles may be narrower).
        side = max(1, math.isqrt(self.budget * ho * wo // self.output_pixels))
        for y0, y1 in _spans(ho, side):
            rows = (y0 * sh - top, (y1 - 1) * sh + dh * (kh - 1) + 1 - top)
            for x0, x1 in _spans(wo, side):
                cols = (x0 * sw - left, (x1 - 1) * sw + dw * (kw - 1) + 1 - left)
                out[:, :, y0:y1, x0:x1] = self.run_conv(conv, _read(data, rows, cols, up))
                if self.progress is not None:
                    self.progress(self.convs_done, self.convs)
        self.convs_done += 1
        if self.progress is not None:
            self.progress(self.convs_done, self.convs)
        return _Map(out)

    def run_conv(self, conv: nn.Conv2d, tile: torch.Tensor) -> torch.Tensor:
        tile = tile.to(self.device, conv.weight.dtype)
        if self.dtype is None or self.dtype == tile.dtype:
            return conv(tile)
        with torch.autocast(self.device.type, dtype=self.dtype):
            y = conv(tile)
        # As the worker's fp16 forward: an overflow is recomputed at full precision.
        return y if bool(torch.isfinite(y).all()) else conv(tile)


def run_layer_by_layer(
    net: nn.Module,
    image: torch.Tensor,
    budget_pixels: int,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    progress: Progress | None = None,
) -> torch.Tensor:
    """`net`'s output for `image` (clamped to [0, 255], float32, on `image`'s device), computed layer by layer.

    Every convolution runs over tiles covering at most `budget_pixels` of the output (as a share of its own
    map), on `device` (default: where `net`'s parameters are), under autocast to `dtype` when given (e.g.
    torch.float16 on CUDA; a tile that overflows is recomputed in full precision). The whole feature maps
    between layers live in host memory as float32, and instance norm normalizes with their whole-image
    statistics, so the result is the untiled output up to float rounding. Supports the modern-preset
    `TransformNet` (reflection-padded convs, nearest upsampling, instance norm, residual blocks); raises
    ValueError for anything else.
    """
    if not isinstance(net, TransformNet) or net.input_pad:
        raise ValueError("whole-image instance norm needs a modern-preset TransformNet; use global_norm=False")
    if not isinstance(image, torch.Tensor) or image.dim() != 4 or min(image.shape) < 1:
        raise ValueError(f"image must be a non-empty NxCxHxW tensor, got {getattr(image, 'shape', image)!r}")
    _check_int("budget_pixels", budget_pixels, 1)
    param = next(net.parameters())
    device = param.device if device is None else torch.device(device)
    f = net.config.factor
    h, w = image.shape[-2:]
    # As TransformNet.forward: scale to [-1, 1], reflect-pad to a multiple of the stride, crop the output back.
    hp, wp = max(h, net.min_side), max(w, net.min_side)
    ph, pw = hp - h + (-hp) % net.multiple, wp - w + (-wp) % net.multiple
    with torch.no_grad():
        x = image.detach().to("cpu", torch.float32) / 127.5 - 1.0
        if ph or pw:
            x = _reflect_pad(x, (0, pw, 0, ph))
        convs = sum(isinstance(m, nn.Conv2d) for m in net.modules())
        run = _LayerByLayer(budget_pixels, x.shape[2] * x.shape[3] * f * f, device, dtype, progress, convs)
        y = _Map(x.contiguous())
        for part in (net.head, net.body, net.tail, net.output):
            y = run(part, y)
        out = y.materialize()[:, :, : h * f, : w * f].clamp_(0, 255)
    return out.contiguous().to(image.device)


def _plain_forward(net: nn.Module) -> TileFn:
    """`net` on one tile: on the net's device and dtype, float32 out on the tile's device, no autograd."""
    param = next(net.parameters())

    def fn(t: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return net(t.to(param.device, param.dtype)).float().to(t.device)

    return fn


def run_net_tiled(
    net: nn.Module,
    image: torch.Tensor,
    tile: int | None = None,
    *,
    budget_pixels: int | None = None,
    ramp: int = DEFAULT_RAMP,
    global_norm: bool = True,
    forward: TileFn | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    progress: Progress | None = None,
) -> torch.Tensor:
    """Run `net` on `image` within a per-pass pixel budget; float32, clamped to [0, 255], on `image`'s device.

    The budget is `budget_pixels` output pixels, else a `tile` x `tile` input tile, else DEFAULT_TILE. An image
    within it is one call of `forward` (default: `net` on its own device and dtype); pass the worker's forward
    (device, fp16) to reuse it.

    A network with instance norm, with `global_norm` (the default), runs layer by layer (`run_layer_by_layer`)
    on `device` (default: where `net`'s parameters are) under autocast to `dtype` when given (the worker's
    fp16: ``dtype=torch.float16``); `forward` is not used for it past the budget. Each layer's tiles normalize
    with whole-image statistics, so the result is the untiled output, at about the untiled pass's cost (see the
    module docstring). Every other case goes through `run_tiled` with `forward` on overlapping tiles, with the
    margin (receptive radius) and alignment from `net_geometry` and a cross-fade `ramp`: exact for networks
    without instance norm (the SR networks); with `global_norm=False` each tile normalizes with its own
    statistics (see the module docstring). No hooks are installed on `net`. `progress(done, total)`: called
    after each tile (layer by layer: after each tile with the convolutions done of all), (1, 1) for one call.
    """
    factor = int(getattr(getattr(net, "config", None), "factor", 1))
    fn: TileFn = forward if forward is not None else _plain_forward(net)
    h, w = image.shape[-2:]
    if global_norm and _instance_norms(net):
        budget = budget_pixels if budget_pixels else ((tile or DEFAULT_TILE) * factor) ** 2
        fits = not needs_tiling(h, w, factor, budget) if budget_pixels else max(h, w) <= (tile or DEFAULT_TILE)
        if fits:
            out = fn(image)
            if progress is not None:
                progress(1, 1)
        else:
            out = run_layer_by_layer(net, image, budget, device=device, dtype=dtype, progress=progress)
    else:
        overlap, margin, align = net_geometry(net, ramp)
        if tile is None:
            tile = tile_for_budget(budget_pixels, factor, overlap, align) if budget_pixels else DEFAULT_TILE
        out = run_tiled(fn, image, factor, tile, overlap, margin=margin, align=align, progress=progress)
    return out.float().clamp(0, 255).to(image.device)
