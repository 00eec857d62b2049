"""`percept models ...`: inspect and publish the model store."""

from __future__ import annotations

import functools
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from model_store import store
from model_store.engine import Engine
from model_store.options import TILE_PIXELS, Options

if TYPE_CHECKING:
    pass

models_app = typer.Typer(help="List, show and publish models in the model store.", no_args_is_help=True)


@models_app.command("list")
def list_models(as_json: bool = typer.Option(False, "--json", help="Print the rows as JSON.")) -> None:
    """Every model with its default version, kind, factor and (SR models) the loss it was trained with."""
    rows = []
    for name in store.list_models():
        entry = store.get(name)
        m = entry.manifest
        rows.append({"name": name, "default": entry.version, "versions": store.versions(name),
                     "kind": m["kind"], "factor": m["factor"], "loss": _loss(name, m), "path": str(entry.path)})
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo(f"no models (stores searched: {', '.join(map(str, store.roots()))})")
        return
    typer.echo(f"{'NAME':<20} {'DEFAULT':<7} {'KIND':<8} {'LOSS':<6} {'VERSIONS':<9} PATH")
    for r in rows:
        kind = "style" if r["kind"] == "style" else f"sr x{r['factor']}"
        versions = ",".join(map(str, r["versions"]))
        typer.echo(f"{r['name']:<20} v{r['default']:<6} {kind:<8} {r['loss'] or '-':<6} {versions:<9} {r['path']}")


def _loss(name: str, manifest: dict) -> str | None:
    """An SR model's training loss (feat | pixel): what `upscale --loss` picks it by; None for style models."""
    if manifest["kind"] != "sr":
        return None
    return manifest.get("training", {}).get("loss") or store.sr_loss(name, manifest["factor"])


@models_app.command("show")
def show(name: str = typer.Argument(..., help="A model name (see `percept models list`)."),
         version: int = typer.Option(None, "--version", help="(default: the default version)"),
         as_json: bool = typer.Option(False, "--json", help="Print the whole manifest as JSON.")) -> None:
    """A version's model card: what it does, its style image (title, artist, licence), how it was trained, its
    evaluation numbers and a sample (the default version unless --version; --json for the manifest)."""
    try:
        entry = store.get(name, version)
    except store.ModelStoreError as e:
        raise typer.BadParameter(str(e)) from e
    if as_json:
        typer.echo(json.dumps(entry.manifest, indent=2))
        return
    typer.echo("\n".join(card_lines(entry)))


def card_lines(entry: store.ModelVersion) -> list[str]:
    """The card as text: a few labelled lines, numbers as in docs/RESULTS.md."""
    m, card = entry.manifest, entry.manifest.get("card") or {}
    t = m.get("training") or {}
    kind = "style" if m["kind"] == "style" else f"super-resolution x{m['factor']} ({_loss(entry.name, m)} loss)"
    out = [f"{entry.name} v{entry.version}  {kind}", f"  {card.get('description', '(no model card)')}"]
    style = card.get("style")
    if style:
        who = ", ".join(str(v) for v in (style.get("artist"), style.get("title") and f"'{style['title']}'",
                                        style.get("year")) if v) or "origin not stated"
        out += [f"style image   {style.get('file')}: {who}",
                f"  artwork     {style.get('artwork_licence')}; use: {style.get('use')}",
                f"  this copy   {style.get('source')}", f"  terms       {style.get('image_terms')}"]
    if t:
        facts = [f"{t['iterations']:,} iterations" if t.get("iterations") else None,
                 t.get("recipe") and f"{t['recipe']} recipe", f"width {m['network'].get('width')}",
                 t.get("hardware"), t.get("wall_seconds") and f"{t['wall_seconds'] / 3600:.1f} h"]
        out.append("trained       " + ", ".join(f for f in facts if f))
    ev = card.get("evaluation") or {}
    for dataset in ("Set5", "Set14"):
        if dataset in ev:
            e = ev[dataset]
            line = (f"{dataset:<14}PSNR {e['psnr']:.2f} dB / SSIM {e['ssim']:.4f} (bicubic {e['bicubic_psnr']:.2f} / "
                    f"{e['bicubic_ssim']:.4f}), sharpness {e['sharpness']} (HR {e['hr_sharpness']})")
            if "paper_psnr" in e:
                line += f"; paper {e['paper_psnr']:.2f} / {e['paper_ssim']:.4f}"
            out.append(line)
    if "gram_error" in ev:
        out.append("Gram error    " + "  ".join(f"{k} {v:.3g}" for k, v in ev["gram_error"].items())
                   + "  (lower = closer to the painting)")
        out.append("content error " + "  ".join(f"{k} {v:.3g}" for k, v in ev["content_error"].items())
                   + "  (higher = further from the photo)")
    if "objective" in ev:
        o = ev["objective"]
        out.append(f"objective     network {o['network']:.4g} in {o['network_ms']} ms; Gatys optimizer "
                   f"{o['gatys_100']:.4g} after 100 iterations ({o['gatys_100_s']} s): {o['network_vs_gatys_100']}")
    if ev.get("measured"):
        out.append(f"  measured    {ev['measured']}")
    sample = card.get("sample")
    if sample:
        out.append(f"sample        {entry.path / sample['file']}  ({sample.get('command')})")
    out.append(f"files         {entry.path}")
    return out


@models_app.command("export")
def export_model(
    name: str = typer.Argument(..., help="A store model (muse, muse@2) or a training checkpoint (.pt)."),
    fmt: str = typer.Option("onnx", "--format", help="onnx | openvino (IR: .xml and .bin)."),
    output: Path = typer.Option(None, "--output", help="Where to write (default: NAME.onnx or NAME.xml here)."),
) -> None:
    """Export a model with dynamic batch, height and width. The graph takes float32 NCHW RGB in [0, 255] whose
    sides are padded to a multiple of 4 (style) and gives [0, 255] out: `model_store.export` says why."""
    from model_store import export, pipeline

    if fmt not in export.FORMATS:
        raise typer.BadParameter(f"one of {', '.join(export.FORMATS)}", param_hint="--format")
    try:
        net, label = pipeline.load(name, "cpu")
    except store.ModelStoreError as e:
        raise typer.BadParameter(str(e), param_hint="NAME") from None
    stem = Path(name).stem if name.endswith(".pt") else name.replace("@", "_v")
    output = output or Path(f"{stem}.{'onnx' if fmt == 'onnx' else 'xml'}")
    try:
        written = export.export(net, fmt, output)
    except ImportError as e:
        raise typer.BadParameter(f"{fmt} export needs {e.name}: pip install {e.name}", param_hint="--format") from None
    typer.echo(f"{label} -> {', '.join(str(p) for p in written)} (multiple of {net.multiple} px per side)")


def _outputs(src: Path, dst: Path, fmt: str | None, suffix: str) -> list[tuple[Path, Path]]:
    """(input, output) pairs. A file goes to DST (or into DST when it is a folder). A folder's files, subfolders
    included, go to the same relative place under DST as NAME<suffix>.<ext>: ext from --format, else the input's
    when png/jpg/webp, else png. Hidden files and anything already under DST (outputs written into the input
    folder) are not inputs."""
    if not src.is_dir():
        if dst.is_dir():
            return [(src, dst / f"{src.stem}{suffix}.{_ext(src, fmt)}")]
        return [(src, dst)]
    src_r, dst_r = src.resolve(), dst.resolve()
    if src_r == dst_r and not suffix:
        raise typer.BadParameter("writing into the input folder needs a --suffix (it would replace the inputs)",
                                 param_hint="DST")
    pairs = []
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        if dst_r != src_r and path.resolve().is_relative_to(dst_r):
            continue
        ext = _ext(path, fmt)
        if src_r == dst_r and path.name.endswith(f"{suffix}.{ext}"):
            continue  # an earlier run's output
        pairs.append((path, dst / rel.parent / f"{path.stem}{suffix}.{ext}"))
    return pairs


def _ext(path: Path, fmt: str | None) -> str:
    if fmt:
        return _suffix(fmt)
    ext = path.suffix.lower().lstrip(".")
    return ext if ext in ("png", "jpg", "jpeg", "webp") else "png"


def _suffix(fmt: str) -> str:
    return "jpg" if fmt == "jpeg" else fmt


def _default_suffix(model: str) -> str:
    """`_muse` for muse or muse@2, `_x4` for sr_x4, `_x4_pixel` for sr_x4_pixel, the file's stem for a .pt."""
    name = Path(model).stem if model.endswith(".pt") else model.split("@")[0]
    return "_" + name.removeprefix("sr_")


def _apply(model: str, src: Path, dst: Path, options: Options, engine: Engine, factor: int,
           suffix: str | None = None, skip_existing: bool = False) -> None:
    """Every input through the pipeline; a bad file is reported and skipped, and the exit status is 1 if any."""
    from tqdm import tqdm

    from imaging import codec, tensors
    from model_store import pipeline

    if options.format:
        try:
            options = replace(options, format=codec.output_format(options.format, "png"))
        except codec.ImageError as e:
            raise typer.BadParameter(e.message, param_hint="--format") from None
    folder = src.is_dir()
    if not folder and dst.exists() and not dst.is_dir() and skip_existing:
        typer.echo(f"skipped: {dst} exists (--skip-existing)")
        return
    pairs = _outputs(src, dst, options.format, _default_suffix(model) if suffix is None else suffix)
    if not folder:
        try:  # before the model runs: a bad output name is a message, not a wasted minute
            codec.format_for_path(pairs[0][1])
        except codec.ImageError as e:
            raise typer.BadParameter(e.message, param_hint="DST") from None
    if folder and not pairs:
        raise typer.BadParameter(f"no files in {src}", param_hint="SRC")
    todo = [(a, b) for a, b in pairs if not (skip_existing and b.exists())]
    skipped = len(pairs) - len(todo)
    net, label = engine.load(model)
    others = functools.cache(lambda name: engine.load(name)[0])  # the dials' other networks, loaded once
    if net.config.factor != factor:
        what = "a style model" if net.config.factor == 1 else f"an x{net.config.factor} SR model"
        raise typer.BadParameter(f"{model} is {what}; this command needs " + (
            "a style model" if factor == 1 else f"an x{factor} SR model"), param_hint="--model")
    forward, how = engine.forward(net)
    label = f"{label}, {how}"
    done = failed = 0
    # The bar goes to stderr and only on a terminal (disable=None), so piped output stays one summary line.
    with tqdm(todo, desc=label, unit="img", disable=None if folder else True, dynamic_ncols=True) as bar:
        for a, b in bar:
            try:
                image = tensors.read(a)
                fmt = codec.format_for_path(b)
                result = pipeline.run(net, image, options, tile_pixels=engine.tile_pixels, forward=forward,
                                      get=others)
                data, _ = pipeline.encode(result, image, replace(options, format=fmt))
            except codec.ImageError as e:
                bar.write(f"failed: {e.message}", file=sys.stderr)
                failed += 1
                continue
            except (RuntimeError, MemoryError) as e:  # out of memory, mostly: a smaller --tile-pixels helps
                bar.write(f"failed: {a}: {str(e).splitlines()[0] if str(e) else type(e).__name__} (try a smaller "
                          "--tile-pixels or --max-side)", file=sys.stderr)
                failed += 1
                continue
            b.parent.mkdir(parents=True, exist_ok=True)
            b.write_bytes(data)
            done += 1
            if not folder:
                typer.echo(f"{a} -> {b}  ({label})")
    if folder:
        typer.echo(f"{done} done, {skipped} skipped (output exists), {failed} failed: {src} -> {dst}  ({label})")
    if failed:
        raise typer.Exit(1)


MAX_SIDE_O = typer.Option(None, "--max-side", min=1, help="Shrink inputs so the longer side is at most this.")
FORMAT_O = typer.Option(None, "--format", help="png | jpeg | webp (default: the output's suffix; for a folder, "
                                               "the input's format when png/jpeg/webp, else png).")
QUALITY_O = typer.Option(None, "--quality", min=1, max=100, help="JPEG/WEBP quality (default 90).")
TILE_O = typer.Option(TILE_PIXELS, "--tile-pixels", min=250_000,
                      help="Output pixels above which an image runs in tiles (less memory, same pixels).")
DEVICE_O = typer.Option("auto", "--device", help="auto (CUDA when present, else cpu) | cpu | cuda | cuda:N.")
BACKEND_O = typer.Option("auto", "--backend", envvar="PERCEPT_BACKEND",
                         help="CPU engine: auto (the fastest within tolerance of fp32 on this machine) | torch | "
                              "openvino.")
PRECISION_O = typer.Option("auto", "--precision", envvar="PERCEPT_PRECISION",
                           help="CPU precision: auto | fp32 | bf16 (only where the CPU computes bf16 natively).")
SUFFIX_O = typer.Option(None, "--suffix", help="Added to each output's name when DST is a folder: NAME<suffix>.ext "
                        "(default: _<model>, e.g. photo_muse.jpg, photo_x4.png; '' keeps the name).")
SKIP_O = typer.Option(False, "--skip-existing/--no-skip-existing",
                      help="Leave outputs that already exist alone (resume an interrupted folder run).")
SRC_A = typer.Argument(..., exists=True, help="An image, or a folder of images (subfolders included).")
DST_A = typer.Argument(..., help="Output image (its suffix names the format), or a folder.")


# Video suffixes (model_store.video.VIDEO_SUFFIXES, repeated so images never import PyAV).
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".m4v", ".avi")
SMOOTH_O = typer.Option(0.5, "--smooth", min=0.0, max=0.95,
                        help="Videos: blend each frame with the previous output where the input did not change "
                             "(0 off: every frame as an image; 0.5 halves flicker on still shots, 0.8 quarters "
                             "it; bench/video.py).")


def stylize(
    src: Path = SRC_A,
    dst: Path = DST_A,
    model: str = typer.Option(..., "--model", help="A style model (muse, muse@1) or a training checkpoint (.pt)."),
    strength: float = typer.Option(1.0, "--strength", min=0.0, max=1.0, help="1 full style, 0 the input."),
    preserve_color: bool = typer.Option(False, "--preserve-color/--no-preserve-color",
                                        help="Keep the input's colours."),
    max_side: int = MAX_SIDE_O,
    fmt: str = FORMAT_O,
    quality: int = QUALITY_O,
    tile_pixels: int = TILE_O,
    device: str = DEVICE_O,
    backend: str = BACKEND_O,
    precision: str = PRECISION_O,
    suffix: str = SUFFIX_O,
    skip_existing: bool = SKIP_O,
    smooth: float = SMOOTH_O,
    stroke: float = typer.Option(1.0, "--stroke", min=0.5, max=4.0,
                                 help="Brush strokes this many times larger (0.5..4): stylized at 1/stroke of "
                                      "the size (above 1 brought back by the pixel-loss SR network), output at "
                                      "the input's size."),
) -> None:
    """Stylize an image or a folder locally with the service's pipeline (same pixels as POST /stylize; no service
    needed). A folder's outputs are named NAME_<model>.ext under DST, subfolders kept."""
    options = Options(max_side=max_side, strength=strength, preserve_color=preserve_color, format=fmt,
                      quality=quality, stroke=stroke)
    if src.is_file() and src.suffix.lower() in VIDEO_SUFFIXES:  # a clip: frames in batches, audio copied
        from model_store import video_cli

        video_cli.run(model, src, dst, options, Engine(device, backend, precision, tile_pixels), 1, smooth=smooth)
        return
    _apply(model, src, dst, options, Engine(device, backend, precision, tile_pixels), 1, suffix, skip_existing)


def _sr_model(factor: int, loss: str) -> str:
    """The store's model for `upscale --factor --loss`; one line naming the factors there are when none fits."""
    try:
        name = store.sr_model_name(factor, loss)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--loss") from None
    if name in store.list_models():
        return name
    available = {}
    for other in store.list_models():
        m = store.get(other).manifest
        if m["kind"] == "sr" and store.sr_loss(other, m["factor"]):
            available.setdefault(store.sr_loss(other, m["factor"]), []).append(m["factor"])
    have = "; ".join(f"{lo}: " + ", ".join(f"x{f}" for f in sorted(fs)) for lo, fs in sorted(available.items()))
    raise typer.BadParameter(f"no x{factor} SR model with the {loss} loss (available: {have or 'none'})",
                             param_hint="--factor")


def upscale(
    src: Path = SRC_A,
    dst: Path = DST_A,
    factor: int = typer.Option(4, "--factor", help="4 | 8 (the SR models in the store)."),
    loss: str = typer.Option("feat", "--loss", help="feat (sr_x<factor>) | pixel (sr_x<factor>_pixel)."),
    model: str = typer.Option(None, "--model", help="An SR model or checkpoint (default: from --factor, --loss)."),
    histmatch: bool = typer.Option(False, "--histmatch/--no-histmatch",
                                   help="Match the output's histogram to the input's."),
    detail: float = typer.Option(None, "--detail", min=0.0, max=1.0,
                                 help="0 faithful (the pixel-loss net) .. 1 sharp (the feature-loss net fine-tuned "
                                      "from it), interpolated in between; overrides --loss."),
    max_side: int = MAX_SIDE_O,
    fmt: str = FORMAT_O,
    quality: int = QUALITY_O,
    tile_pixels: int = TILE_O,
    device: str = DEVICE_O,
    backend: str = BACKEND_O,
    precision: str = PRECISION_O,
    suffix: str = SUFFIX_O,
    skip_existing: bool = SKIP_O,
) -> None:
    """Upscale an image or a folder locally with the service's pipeline (same pixels as POST /upscale). A
    folder's outputs are named NAME_x<factor>.ext under DST, subfolders kept."""
    if detail is not None and not model:
        try:
            model = store.sr_detail_pair(factor)[1]
        except store.ModelStoreError as e:
            raise typer.BadParameter(str(e), param_hint="--detail") from None
    name = model or _sr_model(factor, loss)
    options = Options(max_side=max_side, histmatch=histmatch, format=fmt, quality=quality, detail=detail)
    if src.is_file() and src.suffix.lower() in VIDEO_SUFFIXES:  # a clip: frames in batches, audio copied
        from model_store import video_cli

        video_cli.run(name, src, dst, options, Engine(device, backend, precision, tile_pixels), factor)
        return
    _apply(name, src, dst, options, Engine(device, backend, precision, tile_pixels), factor, suffix, skip_existing)
