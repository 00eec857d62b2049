"""`percept stylize/upscale in.mp4 out.mp4`: a video file through `model_store.video` with a progress bar."""

from __future__ import annotations

import functools
from pathlib import Path

import typer
from tqdm import tqdm

from model_store.engine import Engine
from model_store.options import Options


def run(model: str, src: Path, dst: Path, options: Options, engine: Engine, factor: int, *,
        smooth: float = 0.0, batch: int = 4) -> None:
    """Load the model, check its kind, and write `dst`; a clip that cannot be read is a message and exit 1."""
    from model_store import video

    if Path(dst).suffix.lower() not in (".mp4", ".m4v", ".mov", ".mkv"):  # before the model loads
        raise typer.BadParameter(f"{Path(dst).name}: write .mp4, .m4v, .mov or .mkv (H.264 output)",
                                 param_hint="DST")
    if options.format or options.quality:
        raise typer.BadParameter("--format/--quality are for images; a video is written as H.264",
                                 param_hint="--format")
    net, label = engine.load(model)
    if net.config.factor != factor:
        what = "a style model" if net.config.factor == 1 else f"an x{net.config.factor} SR model"
        raise typer.BadParameter(f"{model} is {what}; this command needs " + (
            "a style model" if factor == 1 else f"an x{factor} SR model"), param_hint="--model")
    try:
        total = video.probe(src).frames
    except video.VideoError as e:
        typer.echo(f"failed: {e.message}", err=True)
        raise typer.Exit(1) from None
    forward, how = engine.forward(net)
    label = f"{label}, {how}"
    others = functools.cache(lambda name: engine.load(name)[0])  # the dials' other networks, loaded once
    with tqdm(total=total or None, unit="frame", desc=Path(src).name, dynamic_ncols=True) as bar:

        def progress(done: int, expected: int) -> None:
            bar.total = max(expected, bar.total or 0)
            bar.update(done - bar.n)

        try:
            n = video.process(net, src, dst, options, batch=batch, smooth=smooth, progress=progress,
                              tile_pixels=engine.tile_pixels, forward=forward, get=others)
        except video.VideoError as e:
            bar.close()
            typer.echo(f"failed: {e.message}", err=True)
            raise typer.Exit(1) from None
    typer.echo(f"{src} -> {dst}  ({label}, {n} frames)")
