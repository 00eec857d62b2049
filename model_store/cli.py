"""`percept models ...`: inspect and publish the model store."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from model_store import store
from model_store.options import TILE_PIXELS, Options

if TYPE_CHECKING:
    from model_store.networks import TransformNet

models_app = typer.Typer(help="List, show and publish models in the model store.", no_args_is_help=True)


@models_app.command("list")
def list_models(as_json: bool = typer.Option(False, "--json")) -> None:
    """Every model with its default version, kind and factor."""
    rows = []
    for name in store.list_models():
        entry = store.get(name)
        rows.append({"name": name, "default": entry.version, "versions": store.versions(name),
                     "kind": entry.manifest["kind"], "factor": entry.manifest["factor"], "path": str(entry.path)})
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo(f"no models (stores searched: {', '.join(map(str, store.roots()))})")
    for r in rows:
        kind = "style" if r["kind"] == "style" else f"sr x{r['factor']}"
        typer.echo(f"{r['name']:<20} v{r['default']:<4} {kind:<8} versions {r['versions']}  {r['path']}")


@models_app.command("show")
def show(name: str, version: int = typer.Option(None, "--version")) -> None:
    """A version's manifest (the default version unless --version)."""
    try:
        entry = store.get(name, version)
    except store.ModelStoreError as e:
        raise typer.BadParameter(str(e)) from e
    typer.echo(json.dumps(entry.manifest, indent=2))


def _load(model: str, device: str) -> tuple[TransformNet, str]:
    from model_store import pipeline

    try:
        return pipeline.load(model, device)
    except RuntimeError as e:
        raise typer.BadParameter(str(e), param_hint="--device") from None
    except store.ModelStoreError as e:
        raise typer.BadParameter(str(e), param_hint="--model") from None


def _outputs(src: Path, dst: Path, fmt: str | None) -> list[tuple[Path, Path | None]]:
    """(input, output) pairs: a file to a file, or every file of a folder to a folder. A folder's outputs keep
    their input's name with the --format's suffix (None: decided by the input's format, once decoded)."""
    if not src.is_dir():
        return [(src, dst)]
    dst.mkdir(parents=True, exist_ok=True)
    files = sorted(p for p in src.iterdir() if p.is_file() and not p.name.startswith("."))
    return [(p, dst / f"{p.stem}.{_suffix(fmt)}" if fmt else None) for p in files]


def _suffix(fmt: str) -> str:
    return "jpg" if fmt == "jpeg" else fmt


def _apply(model: str, src: Path, dst: Path, options: Options, device: str, tile_pixels: int,
           factor: int) -> None:
    """Every input through the pipeline; a bad file is reported and skipped, and the exit status is 1 if any."""
    from imaging import codec, tensors
    from model_store import pipeline

    if options.format:
        try:
            options = replace(options, format=codec.output_format(options.format, "png"))
        except codec.ImageError as e:
            raise typer.BadParameter(e.message, param_hint="--format") from None
    elif not src.is_dir():
        try:  # before the model runs: a bad output name is a message, not a wasted minute
            options = replace(options, format=codec.format_for_path(dst))
        except codec.ImageError as e:
            raise typer.BadParameter(e.message, param_hint="DST") from None
    net, label = _load(model, device)
    if net.config.factor != factor:
        what = "a style model" if net.config.factor == 1 else f"an x{net.config.factor} SR model"
        raise typer.BadParameter(f"{model} is {what}; this command needs " + (
            "a style model" if factor == 1 else f"an x{factor} SR model"), param_hint="--model")
    failed = 0
    for a, b in _outputs(src, dst, options.format):
        try:
            image = tensors.read(a)
            result = pipeline.run(net, image, options, tile_pixels=tile_pixels)
            fmt = codec.output_format(options.format, image.format)
            b = b or dst / f"{a.stem}.{_suffix(fmt)}"
            data, _ = pipeline.encode(result, image, replace(options, format=fmt))
        except codec.ImageError as e:
            typer.echo(f"skipped: {e.message}", err=True)
            failed += 1
            continue
        except (RuntimeError, MemoryError) as e:  # out of memory, mostly: a smaller --tile-pixels helps
            typer.echo(f"failed: {a}: {str(e).splitlines()[0]} (try a smaller --tile-pixels or --max-side)",
                       err=True)
            failed += 1
            continue
        b.parent.mkdir(parents=True, exist_ok=True)
        b.write_bytes(data)
        typer.echo(f"{a} -> {b}  ({label})")
    if failed:
        raise typer.Exit(1)


MAX_SIDE_O = typer.Option(None, "--max-side", min=1, help="Shrink inputs so the longer side is at most this.")
FORMAT_O = typer.Option(None, "--format", help="png | jpeg | webp (default: the output's suffix; for a folder, "
                                               "the input's format when png/jpeg/webp, else png).")
QUALITY_O = typer.Option(None, "--quality", min=1, max=100, help="JPEG/WEBP quality (default 90).")
TILE_O = typer.Option(TILE_PIXELS, "--tile-pixels", min=250_000,
                      help="Output pixels above which an image runs in tiles (less memory, same pixels).")
DEVICE_O = typer.Option("cpu", "--device", help="cpu | cuda | cuda:N | auto.")
SRC_A = typer.Argument(..., exists=True, help="An image, or a folder of images.")
DST_A = typer.Argument(..., help="Output image (its suffix names the format), or a folder.")


def stylize(
    src: Path = SRC_A,
    dst: Path = DST_A,
    model: str = typer.Option(..., "--model", help="A style model (muse, muse@1) or a training checkpoint (.pt)."),
    strength: float = typer.Option(1.0, "--strength", min=0.0, max=1.0, help="1 full style, 0 the input."),
    preserve_color: bool = typer.Option(False, "--preserve-color", help="Keep the input's colours."),
    max_side: int = MAX_SIDE_O,
    fmt: str = FORMAT_O,
    quality: int = QUALITY_O,
    tile_pixels: int = TILE_O,
    device: str = DEVICE_O,
) -> None:
    """Stylize images locally with the service's pipeline (same pixels as POST /stylize; no service needed)."""
    options = Options(max_side=max_side, strength=strength, preserve_color=preserve_color, format=fmt,
                      quality=quality)
    _apply(model, src, dst, options, device, tile_pixels, 1)


def upscale(
    src: Path = SRC_A,
    dst: Path = DST_A,
    factor: int = typer.Option(4, "--factor", help="4 | 8"),
    loss: str = typer.Option("feat", "--loss", help="feat (sr_x<factor>) | pixel (sr_x<factor>_pixel)."),
    model: str = typer.Option(None, "--model", help="An SR model or checkpoint (default: from --factor, --loss)."),
    histmatch: bool = typer.Option(False, "--histmatch", help="Match the output's histogram to the input's."),
    max_side: int = MAX_SIDE_O,
    fmt: str = FORMAT_O,
    quality: int = QUALITY_O,
    tile_pixels: int = TILE_O,
    device: str = DEVICE_O,
) -> None:
    """Upscale images locally with the service's pipeline (same pixels as POST /upscale)."""
    try:
        name = model or store.sr_model_name(factor, loss)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--loss") from e
    options = Options(max_side=max_side, histmatch=histmatch, format=fmt, quality=quality)
    _apply(name, src, dst, options, device, tile_pixels, factor)
