"""`percept models ...`: inspect and publish the model store."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from model_store import store

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


@models_app.command("publish")
def publish(
    checkpoint: Path = typer.Argument(..., exists=True, help="A training checkpoint (.pt) or a run folder."),
    name: str = typer.Option(..., "--name"),
    fp32: bool = typer.Option(False, "--fp32", help="Store fp32 weights (default: fp16, half the size)."),
    last: bool = typer.Option(False, "--last", help="Publish last.pt as given, not the run's best.pt."),
) -> None:
    """Publish a trained checkpoint as the next version of NAME: the run's best (lowest validation objective)
    checkpoint when given its last.pt or its folder, unless --last."""
    from trainer.train import best_checkpoint, publish_checkpoint

    if checkpoint.is_dir() and last:
        checkpoint = checkpoint / "checkpoints" / "last.pt"
    chosen = checkpoint if last else best_checkpoint(checkpoint)
    if not chosen.is_file():
        raise typer.BadParameter(f"no checkpoint at {chosen}")
    try:
        typer.echo(json.dumps({"checkpoint": str(chosen), **publish_checkpoint(chosen, name, half=not fp32)},
                              indent=2))
    except store.ModelStoreError as e:
        raise typer.BadParameter(str(e)) from e


def _pairs(src: Path, dst: Path) -> list[tuple[Path, Path]]:
    """(input, output) files: a file to a file, or every image in a folder to the same name in another."""
    if src.is_dir():
        from trainer.data import IMAGE_SUFFIXES

        dst.mkdir(parents=True, exist_ok=True)
        files = sorted(p for p in src.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        return [(p, dst / p.name) for p in files]
    return [(src, dst)]


def _apply(
    model: str, src: Path, dst: Path, histmatch: bool, max_side: int | None, device: str, factor: int = 1
) -> None:
    from model_store.images import load_image, save_image
    from model_store.inference import run

    try:
        net, entry = store.load(model, device=device)
    except store.ModelStoreError as e:
        raise typer.BadParameter(str(e)) from e
    if net.config.factor != factor:
        what = "a style model" if net.config.factor == 1 else f"an x{net.config.factor} SR model"
        raise typer.BadParameter(f"{model} is {what}; this command needs " + (
            "a style model" if factor == 1 else f"an x{factor} SR model"))
    for a, b in _pairs(src, dst):
        save_image(run(net, load_image(a, max_side=max_side).to(device), histmatch=histmatch), b)
        typer.echo(f"{a} -> {b}  ({model} v{entry.version})")


def stylize(
    src: Path = typer.Argument(..., exists=True, help="An image, or a folder of images."),
    dst: Path = typer.Argument(..., help="Output image (or folder)."),
    model: str = typer.Option(..., "--model", help="Style model name, e.g. muse."),
    max_side: int = typer.Option(None, "--max-side", help="Shrink inputs so the longer side is at most this."),
    device: str = typer.Option("cpu", "--device"),
) -> None:
    """Stylize images locally with a model from the store (no service needed)."""
    _apply(model, src, dst, False, max_side, device)


def upscale(
    src: Path = typer.Argument(..., exists=True, help="An image, or a folder of images."),
    dst: Path = typer.Argument(..., help="Output image (or folder)."),
    factor: int = typer.Option(4, "--factor", help="4 | 8"),
    loss: str = typer.Option("feat", "--loss", help="feat (sr_x<factor>) | pixel (sr_x<factor>_pixel)."),
    model: str = typer.Option(None, "--model", help="SR model name (default: from --factor and --loss)."),
    histmatch: bool = typer.Option(False, "--histmatch", help="Match the output's histogram to the input's."),
    device: str = typer.Option("cpu", "--device"),
) -> None:
    """Upscale images locally with a super-resolution model from the store."""
    try:
        name = model or store.sr_model_name(factor, loss)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--loss") from e
    _apply(name, src, dst, histmatch, None, device, factor)
