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
`run_net_tiled`, given the network itself, fixes it (`global_norm=True`, the default): it first computes each
instance-norm layer's whole-image statistics tile by tile (`global_norm_stats`, one partial pass over the tiles
per layer, about 7x the cost of the plain tiled pass) and then runs the tiles with those statistics frozen, which
reproduces the untiled output (measured max abs difference < 1e-3 grey levels). The SR networks have no
normalization layers (modern preset) and paper-preset networks in eval mode use stored batch-norm statistics, so
neither needs this.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

import torch
from torch import nn

DEFAULT_TILE = 512
# >= 2 x the SR networks' receptive-field radius (14 px) + a 32-px ramp; see the module docstring.
DEFAULT_OVERLAP = 64
DEFAULT_RAMP = 32  # width of the cross-fade band used by run_net_tiled, in input pixels
DEFAULT_ALIGN = 4  # the style networks' total stride; harmless for SR networks

TileFn = Callable[[torch.Tensor], torch.Tensor]


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
) -> torch.Tensor:
    """Apply `fn` to `image` (NxCxHxW) in overlapping tiles and stitch the outputs; returns Nx C' x H*factor x W*factor.

    `fn` maps a tile NxCxhxw to NxC'x(h*factor)x(w*factor). Tiles are at most `tile` x `tile` input pixels and
    neighbours share at least `overlap` pixels; in each shared band the first `margin` pixels from the cut are
    discarded (default: overlap // 4) and the rest is cross-faded with a raised-cosine window. Tile origins are
    multiples of `align`. An image that fits in one tile is passed to `fn` whole, so the result is exactly
    ``fn(image)``. The stitched output is float32 (or `fn`'s dtype when wider) on `image`'s device; gradients
    are not tracked.
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
            return call(0, h, 0, w)
        ramp = max(overlap - 2 * margin, 1)
        f = factor
        wy = [_window(y0, y1, h, f, margin, ramp) for y0, y1 in rows]
        wx = [_window(x0, x1, w, f, margin, ramp) for x0, x1 in cols]
        out: torch.Tensor | None = None
        for (y0, y1), wyy in zip(rows, wy, strict=True):
            for (x0, x1), wxx in zip(cols, wx, strict=True):
                piece = call(y0, y1, x0, x1)
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


# Instance norm with whole-image statistics ------------------------------------------------------------------


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the layer of interest has been reached."""


def _instance_norms(net: nn.Module) -> list[nn.InstanceNorm2d]:
    """The instance-norm layers that normalize with their input's own statistics, in forward order."""
    return [m for m in net.modules() if isinstance(m, nn.InstanceNorm2d) and (m.training or not m.track_running_stats)]


def _normalize(module: nn.InstanceNorm2d, x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    dtype = torch.promote_types(x.dtype, torch.float32)
    y = (x.to(dtype) - mean.to(x.device, dtype)) * torch.rsqrt(var.to(x.device, dtype) + module.eps)
    if module.affine:
        y = y * module.weight.to(dtype)[None, :, None, None] + module.bias.to(dtype)[None, :, None, None]
    return y


@contextmanager
def _fixed_norms(norms: list[nn.InstanceNorm2d], stats: list[tuple[torch.Tensor, torch.Tensor]]) -> Iterator[None]:
    """Make `norms[i]` normalize with `stats[i]` (mean, var) instead of its input's own statistics."""
    handles = []
    try:
        for module, (mean, var) in zip(norms, stats, strict=False):
            handles.append(
                module.register_forward_hook(lambda mod, args, _out, m=mean, v=var: _normalize(mod, args[0], m, v))
            )
        yield
    finally:
        for handle in handles:
            handle.remove()


def _owned(spans: list[tuple[int, int]], align: int) -> list[tuple[int, int]]:
    """Split [0, length) among the spans: each owns from the (aligned) middle of its bands with its neighbours."""
    cuts = [0] + [(s + e_prev) // 2 // align * align for (_, e_prev), (s, _) in zip(spans, spans[1:], strict=False)]
    return list(zip(cuts, cuts[1:] + [spans[-1][1]], strict=True))


def global_norm_stats(
    net: nn.Module,
    forward: TileFn,
    image: torch.Tensor,
    rows: list[tuple[int, int]],
    cols: list[tuple[int, int]],
    align: int,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Whole-image mean and variance of every instance-norm layer's input, computed tile by tile.

    Layer k's statistics need layers 1..k-1 to normalize with whole-image statistics already, so there is one
    pass over the tiles per layer (each stopped at that layer): about 7 forward passes' worth for a style
    network. Each tile contributes the features of the part of the image it owns (the middle of the shared bands
    splits them), which lies at least `margin` away from its cut edges; the last tile owns the bottom/right
    padding the network adds, as the untiled pass does. Exact when the margin covers the receptive field.
    """
    norms = _instance_norms(net)
    if getattr(net, "input_pad", 0):
        raise ValueError("whole-image instance-norm statistics need a network without input padding (modern preset)")
    multiple, min_side = int(getattr(net, "multiple", 1)), int(getattr(net, "min_side", 1))

    def feature_range(span: tuple[int, int], own: tuple[int, int], length: int, size: int) -> tuple[int, int]:
        padded = max(span[1] - span[0], min_side)
        padded += -padded % multiple
        ratio = size / padded  # feature pixels per input pixel at this layer
        lo, hi = (own[0] - span[0]) * ratio, size if own[1] == length else (own[1] - span[0]) * ratio
        if abs(lo - round(lo)) > 1e-6 or abs(hi - round(hi)) > 1e-6:
            raise ValueError(f"tile origins must be multiples of the network's stride ({multiple}): use align")
        return round(lo), round(hi)

    h, w = image.shape[-2:]
    own_rows, own_cols = _owned(rows, align), _owned(cols, align)
    stats: list[tuple[torch.Tensor, torch.Tensor]] = []
    for target in norms:
        captured: list[torch.Tensor] = []

        def stop(_module: nn.Module, args: tuple[torch.Tensor, ...], box: list[torch.Tensor] = captured) -> None:
            box.append(args[0])
            raise _Stop

        count, total, squares = 0, 0.0, 0.0
        handle = target.register_forward_pre_hook(stop)
        try:
            with _fixed_norms(norms, stats):
                for row, own_row in zip(rows, own_rows, strict=True):
                    for col, own_col in zip(cols, own_cols, strict=True):
                        if own_row[0] == own_row[1] or own_col[0] == own_col[1]:
                            continue
                        captured.clear()
                        with suppress(_Stop):
                            forward(image[:, :, row[0] : row[1], col[0] : col[1]])
                        if not captured:
                            raise RuntimeError("the forward function never reached an instance-norm layer")
                        x = captured[0]
                        y0, y1 = feature_range(row, own_row, h, x.shape[2])
                        x0, x1 = feature_range(col, own_col, w, x.shape[3])
                        part = x[:, :, y0:y1, x0:x1].to(torch.float64)
                        count += part.shape[2] * part.shape[3]
                        total = total + part.sum((2, 3), keepdim=True)
                        squares = squares + (part * part).sum((2, 3), keepdim=True)
        finally:
            handle.remove()
        mean = total / count
        stats.append((mean, (squares / count - mean * mean).clamp_min(0.0)))
    return stats


def run_net_tiled(
    net: nn.Module,
    image: torch.Tensor,
    tile: int | None = None,
    *,
    budget_pixels: int | None = None,
    ramp: int = DEFAULT_RAMP,
    global_norm: bool = True,
    forward: TileFn | None = None,
    histmatch: bool = False,
) -> torch.Tensor:
    """Run `net` on `image` in tiles, with the margin (receptive radius) and tile alignment derived from `net`.

    The tile is `tile`, else the largest whose output fits `budget_pixels`, else DEFAULT_TILE. `forward` runs
    the network on one tile (default: `model_store.inference.run`, which clamps to [0, 255]); pass the worker's
    own forward (device, fp16) to reuse it.

    With `global_norm` (the default) a network with instance norm first gathers whole-image statistics for
    each instance-norm layer (`global_norm_stats`, ~7x the cost of the plain tiled pass) and the tiles then
    normalize with those, so the result matches the untiled pass instead of shifting colours per tile. Without
    it, each tile uses its own statistics (see the module docstring). The hooks this installs make the call
    unsafe to overlap with other uses of the same `net` in other threads.

    With `histmatch`, the stitched output's histogram is matched to the whole input's.
    """
    from model_store.inference import match_histograms, run

    factor = int(getattr(getattr(net, "config", None), "factor", 1))
    overlap, margin, align = net_geometry(net, ramp)
    if tile is None:
        tile = tile_for_budget(budget_pixels, factor, overlap, align) if budget_pixels else DEFAULT_TILE
    fn: TileFn = forward if forward is not None else (lambda t: run(net, t))
    norms = _instance_norms(net) if global_norm else []
    stats: list[tuple[torch.Tensor, torch.Tensor]] = []
    if norms:
        _check_geometry(tile, overlap, margin, align)
        rows, cols = (
            plan_spans(image.shape[-2], tile, overlap, align),
            plan_spans(image.shape[-1], tile, overlap, align),
        )
        if len(rows) * len(cols) > 1:
            with torch.no_grad():
                stats = global_norm_stats(net, fn, image, rows, cols, align)
    with _fixed_norms(norms, stats):
        out = run_tiled(fn, image, factor, tile, overlap, margin=margin, align=align)
    if histmatch:
        out = match_histograms(out, image).clamp(0, 255)
    return out
