"""Video: flicker per style with and without `--smooth`, and end-to-end frames/s of `model_store.video.process`.

Clips are made here from shared/data/content/chicago.jpg (a random image without it):

* ``static``: the photo, still, with Gaussian sensor noise (sigma 3 of 255) drawn afresh for every frame;
* ``moving``: a window panning 2 px per frame across the photo, the same noise added.

Flicker (``static``) is the mean absolute difference between consecutive output frames (0..255), next to the
input's own; on ``moving`` it is the warping error, the mean |out_t - shift(out_t-1)| over the overlap, with the
known 2-px flow (no optical-flow estimate needed). Network outputs are computed once per style and clip; the
`Smoother` strengths are applied to the same outputs, so the columns differ only by the smoothing.

Speed: `video.process` on an H.264 clip (24 frames) at 256p and 480p, end to end (decode, network, encode
overlapped), next to the network alone on the same frames with the same (default) backend, best of
``--repeats``; on a shared CPU compare within one run.

Run from the repository root::

    python -m bench.video [--size 256] [--frames 12] [--styles muse,candy] [--speed 256,480] [--threads N]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image

from model_store import pipeline, store, video

CONTENT = Path(__file__).resolve().parents[2] / "shared" / "data" / "content" / "chicago.jpg"
STYLES = ("muse", "starry_night", "wave", "candy", "mosaic", "udnie")
SIGMA = 3.0
PAN = 2


def photo(width: int, height: int) -> np.ndarray:
    if CONTENT.is_file():
        with Image.open(CONTENT) as im:
            return np.asarray(im.convert("RGB").resize((width, height), Image.Resampling.LANCZOS), np.float64)
    rng = np.random.default_rng(1)
    small = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
    return np.asarray(small.resize((width, height), Image.Resampling.BICUBIC), np.float64)


def frames(kind: str, width: int, height: int, n: int, seed: int = 0) -> list[torch.Tensor]:
    rng = np.random.default_rng(seed)
    big = photo(width + PAN * n, height)
    out = []
    for i in range(n):
        x = PAN * i if kind == "moving" else 0
        rgb = (big[:, x:x + width] + rng.normal(0, SIGMA, (height, width, 3))).clip(0, 255).round()
        out.append(torch.from_numpy(rgb).permute(2, 0, 1)[None].float())
    return out


def flicker(outs: list[torch.Tensor], kind: str) -> float:
    diffs = []
    for a, b in zip(outs[:-1], outs[1:], strict=True):
        if kind == "moving":  # content moved PAN px left: b[..., x] shows what a showed at x + PAN
            a, b = a[..., PAN:], b[..., :-PAN]
        diffs.append((b - a).abs().mean())
    return float(torch.stack(diffs).mean())


def flicker_table(styles: list[str], size: int, n: int, strengths: tuple[float, ...]) -> None:
    width = size * 4 // 3 // 2 * 2
    clips = {kind: frames(kind, width, size, n) for kind in ("static", "moving")}
    head = " | ".join(f"smooth {s:g}" for s in strengths)
    print(f"\nFlicker at {width}x{size}, {n} frames, noise sigma {SIGMA}: mean |out_t - out_t-1| (static), warping "
          f"error with the known {PAN}-px pan (moving); 0..255; "
          "(n): mean |smoothed - unsmoothed| on the moving clip")
    print(f"| style | clip | input | {head} |")
    print("|---|---|---|" + "---|" * len(strengths))
    for style in styles:
        net = pipeline.load(style)[0]
        for kind, clip in clips.items():
            outs = [pipeline.infer(net, [x])[0] for x in clip]
            cells = []
            for s in strengths:
                smoother = video.Smoother(s)
                smoothed = [smoother(x, y) for x, y in zip(clip, outs, strict=True)]
                # how far smoothing moved the frames from their own stylization (lag, ghosting) on moving clips
                drift = float(torch.stack([(a - b).abs().mean() for a, b in zip(smoothed, outs, strict=True)]).mean())
                cells.append(f"{flicker(smoothed, kind):.2f}" + (f" ({drift:.1f})" if kind == "moving" and s else ""))
            print(f"| {style} | {kind} | {flicker(clip, kind):.2f} | " + " | ".join(cells) + " |")


def write_clip(path: Path, clip: list[torch.Tensor]) -> None:
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=30, options={"crf": "18", "preset": "veryfast"})
        s.height, s.width = clip[0].shape[-2:]
        s.pix_fmt = "yuv420p"
        for i, x in enumerate(clip):
            f = av.VideoFrame.from_ndarray(x[0].permute(1, 2, 0).to(torch.uint8).numpy(), format="rgb24")
            f.pts, f.time_base = i, Fraction(1, 30)
            out.mux(s.encode(f))
        out.mux(s.encode(None))


def speed_table(sizes: list[int], style: str, n: int, batch: int, repeats: int) -> None:
    from model_store import backends

    net = pipeline.load(style)[0]
    forward = backends.default_forward("cpu")  # what `process` and the CLI use
    choice = backends.choose("auto", "auto", "cpu")
    print(f"\nSpeed: {style}, {n} frames, batch {batch}, {torch.get_num_threads()} torch threads, backend "
          f"{choice.label}; frames/s")
    print("| size | network alone | without the network (decode, convert, encode) | process (all, overlapped) | "
          "serial estimate |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            width = size * 16 // 9 // 2 * 2
            clip = frames("moving", width, size, n)
            src, dst = Path(tmp) / f"in{size}.mp4", Path(tmp) / f"out{size}.mp4"
            write_clip(src, clip)
            pipeline.infer(net, clip[:batch], forward=forward)  # warm-up (compiles the backend for this shape)
            alone = whole = codec_only = float("inf")
            for _ in range(repeats):  # interleaved, best of: other work on a shared CPU only ever slows a run
                t = time.perf_counter()
                video.process(net, src, dst, batch=batch, forward=lambda _net, x: x)  # everything but the network
                codec_only = min(codec_only, time.perf_counter() - t)
                t = time.perf_counter()
                for i in range(0, n, batch):
                    pipeline.infer(net, clip[i:i + batch], forward=forward)
                alone = min(alone, time.perf_counter() - t)
                t = time.perf_counter()
                video.process(net, src, dst, batch=batch)
                whole = min(whole, time.perf_counter() - t)
            print(f"| {width}x{size} | {n / alone:.2f} | {n / codec_only:.2f} | {n / whole:.2f} | "
                  f"{n / (alone + codec_only):.2f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=256, help="flicker clips' height")
    p.add_argument("--frames", type=int, default=12)
    p.add_argument("--styles", default=",".join(STYLES))
    p.add_argument("--strengths", default="0,0.5,0.8")
    p.add_argument("--speed", default="256,480", help="heights for the speed table ('' to skip)")
    p.add_argument("--speed-frames", type=int, default=24)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3, help="speed: best of this many runs")
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    styles = [s for s in a.styles.split(",") if s and s in store.list_models()]
    if styles:
        flicker_table(styles, a.size, a.frames, tuple(float(s) for s in a.strengths.split(",")))
    if a.speed:
        speed_table([int(s) for s in a.speed.split(",")], styles[0] if styles else "muse", a.speed_frames, a.batch,
                    a.repeats)


if __name__ == "__main__":
    main()
