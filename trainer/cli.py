"""`percept train|optimize|eval|stylize|upscale`: the trainer's command line."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import typer

from trainer.settings import settings

train_app = typer.Typer(help="Train style and super-resolution networks.", no_args_is_help=True)
eval_app = typer.Typer(help="The paper's evaluations.", no_args_is_help=True)
style_app = typer.Typer(help="Try a style image and a recipe before training.", no_args_is_help=True)

Device = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N")


Queue = typer.Option(False, "--queue", help="Enqueue the run on Redis (REDIS_URL) for an RQ training worker.")
Overwrite = typer.Option(False, "--overwrite", help="Replace the run already in the run folder (its log, "
                         "checkpoints and previews); without it a reused name is refused.")


def _abs(path: Path | None) -> str | None:
    return str(path.expanduser().absolute()) if path else None
Recipe = typer.Option("balanced", "--recipe", help="The style objective: balanced (every layer relative to its "
                      "target; the default) | paper (Johnson et al. exactly). docs/training.md says why.")
ContentLayer = typer.Option(None, "--content-layer", help="relu1_2 | relu2_2 | relu3_3 | relu4_3 (default: the "
                            "recipe's)")
LayerWeights = typer.Option(None, "--layer-weights", help="Style weight per layer relu1_2,relu2_2,relu3_3,relu4_3, "
                            "e.g. 0.25,0.25,0.25,0.25 (default: the recipe's)")
ContentWeight = typer.Option(None, "--content-weight", help="lambda_c (default: the recipe's)")
StyleWeight = typer.Option(None, "--style-weight", help="lambda_s (default: the recipe's)")
TvWeight = typer.Option(None, "--tv-weight", help="lambda_TV (default: the recipe's)")


def _recipe(name: str, content: float | None, style: float | None, tv: float | None, content_layer: str | None,
            layer_weights: str | None) -> Any:
    """A named recipe with the options given on the command line; a bad choice is a usage error."""
    from trainer.losses import recipe

    try:
        return recipe(name, content=content, style=style, tv=tv, content_layer=content_layer,
                      layer_weights=_floats(layer_weights))
    except (ValueError, TypeError) as e:
        raise typer.BadParameter(str(e)) from e


def _floats(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",")]
    except ValueError as e:
        raise typer.BadParameter(f"expected comma-separated numbers, got {text!r}") from e


def _run(cfg: Any, resume: Path | None, overrides: dict[str, Any], queue: bool = False,
         overwrite: bool = False) -> None:
    from trainer.train import RunExistsError, clear_run, resume_config, run_dir_for, run_exists, train

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if resume:
        try:
            cfg = resume_config(resume, **overrides)
        except (ValueError, KeyError, OSError) as e:
            raise typer.BadParameter(str(e), param_hint="--resume") from None
    if queue:  # the training worker picks the run folder (its PERCEPT_RUNS) unless --run-dir
        from trainer.jobs import QUEUE_NAME, enqueue

        redis_url = settings().redis_url
        if not redis_url:
            raise typer.BadParameter("--queue needs REDIS_URL (e.g. redis://localhost:6379/0)")
        job_id = enqueue(cfg.to_dict(), redis_url, str(resume) if resume else None)
        typer.echo(f"queued {job_id} on {QUEUE_NAME}; follow it with: percept train status {job_id}")
        return
    run_dir = run_dir_for(cfg)
    if not resume and run_exists(run_dir):
        if not overwrite:
            raise typer.BadParameter(
                f"{run_dir} holds another run: choose another --name or --run-dir, continue it with --resume "
                f"{run_dir / 'checkpoints' / 'last.pt'}, or pass --overwrite", param_hint="--name")
        clear_run(run_dir)
    cfg.run_dir = str(run_dir)
    typer.echo(f"run folder: {run_dir}")  # at the start: checkpoints and previews appear there as it runs
    _warn_if_long_on_cpu(cfg)
    try:  # an empty or missing --data folder is one line, and leaves no config.json
        summary = train(cfg, resume=resume)
    except (RunExistsError, FileNotFoundError) as e:
        raise typer.BadParameter(str(e)) from None
    typer.echo(json.dumps(summary, indent=2))


# muse v2's fine-tune on 2 CPU cores: width 0.5, batch 4, 192² crops, bf16 (docs/training.md).
CPU_IT_PER_S = 1.15


def _warn_if_long_on_cpu(cfg: Any) -> None:
    """The default 40,000 iterations are a GPU budget: on a CPU say how long before hours go by."""
    from model_store.inference import resolve_device

    try:
        on_cpu = resolve_device(cfg.device).type == "cpu"
    except RuntimeError:
        return  # train() reports the device
    if on_cpu and cfg.iterations >= 5_000:
        hours = cfg.iterations / CPU_IT_PER_S / 3600
        typer.echo(f"note: {cfg.iterations:,} iterations on the CPU take about {hours:.0f} h at the "
                   f"{CPU_IT_PER_S} it/s measured on 2 cores (width 0.5, 192² crops; docs/training.md), longer at "
                   "full width or 256²; --iterations N for a shorter run", err=True)


@train_app.command("status")
def train_status(job_id: str) -> None:
    """Status and progress of a queued training run (--queue)."""
    from trainer.jobs import status

    redis_url = settings().redis_url
    if not redis_url:
        raise typer.BadParameter("REDIS_URL is not set")
    typer.echo(json.dumps(status(job_id, redis_url), indent=2, default=str))


def _common(name: str, data: Path | None, iterations: int | None, batch_size: int, preset: str, width: float,
            lr: float, seed: int, device: str, amp: bool, workers: int, run_dir: Path | None, publish: bool,
            checkpoint_every: int, preview_every: int, val_every: int) -> dict[str, Any]:
    # Absolute paths: config.json (and --resume) then work from any folder.
    return dict(name=name, data=str((data or settings().data_dir).absolute()), iterations=iterations or 40_000,
                batch_size=batch_size, preset=preset, width=width, lr=lr, seed=seed, device=device, amp=amp,
                workers=workers, run_dir=str(run_dir) if run_dir else None, publish=publish,
                checkpoint_every=checkpoint_every, preview_every=preview_every, val_every=val_every)


@train_app.command("style")
def train_style(
    style_image: Path = typer.Option(None, "--style-image", exists=True, dir_okay=False,
                                     help="The style image. [required unless --resume]"),
    name: str = typer.Option(None, "--name", help="Model name (also the run folder's name). [required unless "
                             "--resume]"),
    data: Path = typer.Option(None, "--data", help="Training photos, recursive; with --resume, where the run's "
                              "photos are now. (default: shared/data/train)"),
    iterations: int = typer.Option(None, "--iterations", help="Total iterations. (default: 40000)"),
    batch_size: int = typer.Option(4, "--batch-size"),
    image_size: int = typer.Option(256, "--image-size", help="Training crop side."),
    style_size: int = typer.Option(None, "--style-size", help="Longer side of the style image. (default: own, <=512)"),
    recipe: str = Recipe,
    content_weight: float = ContentWeight,
    style_weight: float = StyleWeight,
    tv_weight: float = TvWeight,
    content_layer: str = ContentLayer,
    layer_weights: str = LayerWeights,
    normalization: str = typer.Option(None, "--normalization", help="none | relative (default: the recipe's)"),
    init_from: str = typer.Option(None, "--init-from",
                                  help="Start from these weights: a store model (NAME or NAME@VERSION) or a .pt."),
    preset: str = typer.Option("modern", "--preset", help="modern | paper"),
    width: float = typer.Option(1.0, "--width", help="Channel width multiplier (0.5 = small model)."),
    lr: float = typer.Option(1e-3, "--lr"),
    seed: int = typer.Option(0, "--seed"),
    device: str = Device,
    amp: bool = typer.Option(False, "--amp", help="Mixed precision: CUDA bf16 (else fp16), or bf16 on a CPU that "
                             "has it natively; fp32 fallback after repeated non-finite losses."),
    workers: int = typer.Option(2, "--workers", help="Data loader processes."),
    run_dir: Path = typer.Option(None, "--run-dir", help="(default: ./runs/NAME, or $PERCEPT_RUNS/NAME)"),
    checkpoint_every: int = typer.Option(1000, "--checkpoint-every"),
    preview_every: int = typer.Option(500, "--preview-every"),
    val_every: int = typer.Option(500, "--val-every"),
    publish: bool = typer.Option(False, "--publish", help="Publish to the model store when the run completes."),
    resume: Path = typer.Option(None, "--resume", exists=True, help="Continue from this checkpoint."),
    overwrite: bool = Overwrite,
    queue: bool = Queue,
) -> None:
    """Train a style network (style relu1_2, relu2_2, relu3_3, relu4_3; content and TV). The recipe sets the
    layers, weights and normalization; `percept style preview` shows what a recipe does to a style first."""
    from trainer.train import TrainConfig

    if resume:
        overrides = dict(iterations=iterations, publish=publish or None, device=device, workers=workers,
                         data=_abs(data), style_image=_abs(style_image), run_dir=_abs(run_dir))
        return _run(None, resume, overrides, queue)
    if not style_image or not name:
        raise typer.BadParameter("--style-image and --name are required (or --resume CHECKPOINT)")
    try:
        cfg = TrainConfig(
            task="style", style_image=_abs(style_image), image_size=image_size, style_size=style_size, recipe=recipe,
            content_weight=content_weight, style_weight=style_weight, tv_weight=tv_weight,
            content_layer=content_layer, layer_weights=_floats(layer_weights), normalization=normalization,
            init_from=init_from,
            **_common(name, data, iterations, batch_size, preset, width, lr, seed, device, amp, workers, run_dir,
                      publish, checkpoint_every, preview_every, val_every),
        )
        cfg.style_recipe()  # validates layers and weights before anything is loaded
        cfg.network_config()
    except ValueError as e:
        raise typer.BadParameter(str(e)) from e
    _run(cfg, None, {}, queue, overwrite)


@train_app.command("sr")
def train_sr(
    factor: int = typer.Option(4, "--factor", help="4 | 8"),
    loss: str = typer.Option("feat", "--loss", help="feat (relu2_2 feature loss) | pixel (the baseline)"),
    name: str = typer.Option(None, "--name", help="Model name (also the run folder's name). [required unless "
                             "--resume]"),
    data: Path = typer.Option(None, "--data", help="Folder of training photos (recursive); with --resume, where "
                              "the run's photos are now."),
    iterations: int = typer.Option(None, "--iterations", help="(default: 40000)"),
    batch_size: int = typer.Option(4, "--batch-size"),
    image_size: int = typer.Option(288, "--image-size", help="HR patch side."),
    tv_weight: float = typer.Option(0.0, "--tv-weight", help="lambda_TV (total variation, summed per image)"),
    pixel_weight: float = typer.Option(0.0, "--pixel-weight",
                                       help="With --loss feat: weight of an added pixel (MSE) term (0 = off)"),
    feat_weight: float = typer.Option(1.0, "--feat-weight", help="With --loss feat: weight of the feature loss"),
    lattice_weight: float = typer.Option(0.0, "--lattice-weight",
                                         help="Weight of the grid penalty at the upsampling period (0 = off; "
                                              "docs/training.md)"),
    init_from: str = typer.Option(None, "--init-from",
                                  help="Start from a stored SR model (NAME or NAME@V) or a .pt of the same "
                                       "network, e.g. sr_x4_pixel: the ESRGAN recipe, and what the detail dial "
                                       "needs (both ends share one architecture)"),
    preset: str = typer.Option("modern", "--preset", help="modern | paper"),
    width: float = typer.Option(1.0, "--width"),
    lr: float = typer.Option(1e-3, "--lr"),
    grad_clip: float = typer.Option(0.0, "--grad-clip", help="Max global gradient norm (0 = off)."),
    seed: int = typer.Option(0, "--seed"),
    device: str = Device,
    amp: bool = typer.Option(False, "--amp"),
    workers: int = typer.Option(2, "--workers"),
    run_dir: Path = typer.Option(None, "--run-dir", help="(default: ./runs/NAME, or $PERCEPT_RUNS/NAME)"),
    checkpoint_every: int = typer.Option(1000, "--checkpoint-every"),
    preview_every: int = typer.Option(500, "--preview-every"),
    val_every: int = typer.Option(500, "--val-every"),
    publish: bool = typer.Option(False, "--publish"),
    resume: Path = typer.Option(None, "--resume", exists=True, help="Continue from this checkpoint."),
    overwrite: bool = Overwrite,
    queue: bool = Queue,
) -> None:
    """Train a super-resolution network on 288x288 patches (LR = blur sigma 1 + bicubic downsampling)."""
    from trainer.train import TrainConfig

    if resume:
        overrides = dict(iterations=iterations, publish=publish or None, device=device, workers=workers,
                         data=_abs(data), run_dir=_abs(run_dir))
        return _run(None, resume, overrides, queue)
    if factor not in (4, 8) or loss not in ("feat", "pixel"):
        raise typer.BadParameter("--factor must be 4 or 8 and --loss feat or pixel")
    if not name:
        raise typer.BadParameter("--name is required (or --resume CHECKPOINT)")
    cfg = TrainConfig(
        task="sr", factor=factor, loss=loss, image_size=image_size, tv_weight=tv_weight, content_weight=feat_weight,
        pixel_weight=pixel_weight, lattice_weight=lattice_weight, init_from=init_from, grad_clip=grad_clip,
        **_common(name, data, iterations, batch_size, preset, width, lr, seed, device, amp, workers, run_dir,
                  publish, checkpoint_every, preview_every, val_every),
    )
    _run(cfg, None, {}, queue, overwrite)


def optimize(
    content: Path = typer.Option(..., "--content", exists=True, dir_okay=False),
    style: Path = typer.Option(..., "--style", exists=True, dir_okay=False),
    output: Path = typer.Option(..., "--output", help="Where to write the optimized image."),
    iterations: int = typer.Option(500, "--iterations"),
    image_size: int = typer.Option(256, "--image-size", help="Longer side of the content image."),
    style_size: int = typer.Option(None, "--style-size", help="(default: own, <=512)"),
    recipe: str = Recipe,
    content_weight: float = ContentWeight,
    style_weight: float = StyleWeight,
    tv_weight: float = TvWeight,
    content_layer: str = ContentLayer,
    layer_weights: str = LayerWeights,
    init: str = typer.Option("noise", "--init", help="noise (the paper's baseline) | content (start from the photo)"),
    print_every: int = typer.Option(50, "--print-every"),
    seed: int = typer.Option(0, "--seed"),
    device: str = Device,
    as_json: bool = typer.Option(False, "--json", help="Print the objective trace as JSON."),
) -> None:
    """The Gatys et al. baseline: L-BFGS-B on the image, kept in [0, 255], minimizing the training objective."""
    from imaging.tensors import load_image, save_image
    from model_store.inference import resolve_device
    from trainer.gatys import optimize as run_gatys
    from trainer.losses import StyleObjective
    from trainer.vgg import load_loss_network

    if init not in ("noise", "content"):
        raise typer.BadParameter("--init must be noise or content")
    chosen = _recipe(recipe, content_weight, style_weight, tv_weight, content_layer, layer_weights)
    dev = resolve_device(device)
    c = load_image(content, max_side=image_size).to(dev)
    s = load_image(style, max_side=style_size or 512).to(dev)
    objective = StyleObjective(load_loss_network().to(dev), s, chosen)

    def show(i: int, value: float) -> None:
        if not as_json and (i % print_every == 0 or i == iterations):
            typer.echo(f"iteration {i:5d}  objective {value:.6g}")

    result = run_gatys(objective, c, iterations, seed=seed, init=init, on_iteration=show)
    save_image(result.image, output)
    if as_json:
        typer.echo(json.dumps({"output": str(output), "recipe": chosen.to_dict(), "objective": result.objective,
                               "seconds": [round(t, 4) for t in result.seconds]}))
    else:
        typer.echo(f"wrote {output} ({result.seconds[-1]:.1f} s)")


@eval_app.command("sr")
def eval_sr(
    model: str = typer.Option(None, "--model", help="SR model (NAME or NAME@V), a training checkpoint (.pt), "
                              "or 'bicubic' for the baseline."),
    factor: int = typer.Option(4, "--factor", help="4 | 8"),
    detail: float = typer.Option(None, "--detail", min=0.0, max=1.0,
                                 help="Instead of --model: the detail dial's network (0 pixel .. 1 feat)."),
    data: list[Path] = typer.Option(..., "--data", exists=True, file_okay=False, help="HR image folder(s)."),
    degradation: str = typer.Option("paper", "--degradation", help="paper (blur sigma 1 + bicubic) | standard"),
    histmatch: bool = typer.Option(False, "--histmatch/--no-histmatch",
                                   help="Match outputs' histograms to the LR inputs."),
    device: str = Device,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """PSNR / SSIM on the Y channel (BT.601), `factor` border pixels shaved, averaged over each folder."""
    from model_store.inference import resolve_device
    from model_store.store import ModelStoreError
    from trainer.evaluate import evaluate_sr, format_sr_table

    try:
        dev = str(resolve_device(device))
        if model is None and detail is None:
            raise ValueError("give --model (or 'bicubic') or --detail")
        results = [evaluate_sr(model, factor, d, degradation, histmatch, dev, detail) for d in data]
    except (ValueError, LookupError, RuntimeError, ModelStoreError) as e:
        raise typer.BadParameter(str(e)) from e
    typer.echo(json.dumps(results, indent=2) if as_json else format_sr_table(results))


@eval_app.command("style")
def eval_style(
    model: str = typer.Option(..., "--model", help="Style model name."),
    content_dir: Path = typer.Option(..., "--content-dir", exists=True, file_okay=False),
    gatys_iterations: str = typer.Option("50,100,300,500", "--gatys-iterations"),
    image_size: int = typer.Option(256, "--image-size", help="Longer side of each content image."),
    limit: int = typer.Option(None, "--limit", help="Use only the first N content images."),
    device: str = Device,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """The network's objective in one pass vs the Gatys optimizer's after N iterations (the paper's Fig. 5)."""
    from model_store.inference import resolve_device
    from trainer.evaluate import evaluate_style, format_style_table

    iters = tuple(sorted(int(n) for n in gatys_iterations.split(",") if n.strip()))
    try:
        result = evaluate_style(model, content_dir, iters, image_size, limit, str(resolve_device(device)))
    except (ValueError, LookupError, FileNotFoundError) as e:
        raise typer.BadParameter(str(e)) from e
    typer.echo(json.dumps(result, indent=2) if as_json else format_style_table([result]))


def report(
    out: Path = typer.Option(Path("docs"), "--out", help="Folder for RESULTS.md and img/."),
    sr_data: list[Path] = typer.Option(None, "--sr-data", exists=True, file_okay=False,
                                       help="HR folders (default: shared Set5 and Set14)."),
    content_dir: Path = typer.Option(None, "--content-dir", exists=True, file_okay=False),
    styles: str = typer.Option(None, "--styles", help="Comma-separated style models (default: all)."),
    gatys_iterations: str = typer.Option("50,100,300,500", "--gatys-iterations"),
    image_size: int = typer.Option(256, "--image-size", help="Longer side of the content images."),
    limit: int = typer.Option(4, "--limit", help="Content images per style."),
    device: str = Device,
) -> None:
    """Regenerate docs/RESULTS.md: SR table, style objective vs Gatys, crops and gallery."""
    from model_store.inference import resolve_device
    from trainer.report import build_report

    path = build_report(out, sr_data or None, content_dir,
                        [s.strip() for s in styles.split(",") if s.strip()] if styles else None,
                        tuple(sorted(int(n) for n in gatys_iterations.split(",") if n.strip())), image_size, limit,
                        str(resolve_device(device)))
    typer.echo(f"wrote {path}")


@style_app.command("preview")
def style_preview(
    style_image: Path = typer.Argument(..., exists=True, dir_okay=False, help="The style image."),
    output: Path = typer.Option(Path("preview.png"), "--output", "-o", help="Where to write the grid."),
    photos: list[Path] = typer.Option(None, "--photo", exists=True, dir_okay=False,
                                      help="Photos to stylize (repeatable; default: three of PERCEPT_PREVIEW_DIR)."),
    recipe: str = Recipe,
    content_weight: float = ContentWeight,
    style_weight: float = StyleWeight,
    tv_weight: float = TvWeight,
    content_layer: str = ContentLayer,
    layer_weights: str = LayerWeights,
    style_size: int = typer.Option(None, "--style-size", help="Longer side of the style image: smaller = larger "
                                   "strokes. (default: own, <=512)"),
    image_size: int = typer.Option(224, "--image-size", help="Longer side of each photo."),
    iterations: int = typer.Option(40, "--iterations", help="L-BFGS-B iterations per photo."),
    device: str = Device,
) -> None:
    """What a network trained on STYLE_IMAGE with this recipe will approximate, in about a minute on a CPU: the
    Gatys optimizer from each photo under the training objective, written as a grid (photo | result)."""
    from tqdm import tqdm

    from model_store.inference import resolve_device
    from trainer.data import find_images, load_style
    from trainer.preview import grid, stylize
    from trainer.vgg import LossNetworkError, load_loss_network

    if output.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp"):
        raise typer.BadParameter(f"--output must end in .png, .jpg or .webp, got {output.name!r}")
    chosen = _recipe(recipe, content_weight, style_weight, tv_weight, content_layer, layer_weights)
    try:
        style = load_style(style_image, style_size)
    except (ValueError, OSError) as e:
        raise typer.BadParameter(f"cannot read the style image {style_image}: {e}") from e
    if not photos:
        folder = settings().preview_dir
        photos = find_images(folder)[:3] if folder.is_dir() else []
        if not photos:
            raise typer.BadParameter(f"no photos in {folder}: pass --photo (or set PERCEPT_PREVIEW_DIR)")
    try:
        dev = resolve_device(device)
        vgg = load_loss_network().to(dev)
    except (RuntimeError, LossNetworkError) as e:
        raise typer.BadParameter(str(e)) from e
    with tqdm(total=iterations * len(photos), desc="preview", unit="it", dynamic_ncols=True) as bar:
        results = stylize(vgg, style.to(dev), photos, chosen, image_size, iterations,
                          on_iteration=lambda i, _: bar.update(1 if i else 0))
    output.parent.mkdir(parents=True, exist_ok=True)
    grid(style, [(recipe, results)]).save(output)
    typer.echo(f"wrote {output}")
    for r in results:
        typer.echo(f"  {r.photo.name}: " + "  ".join(f"{k} {v:.3g}" for k, v in r.errors.items()))


# `percept models publish`: registered on the model store's command group by percept/cli.py (publishing a
# checkpoint means reading the training run, which is the trainer's business).
def publish(
    checkpoint: Path = typer.Argument(..., exists=True, help="A training checkpoint (.pt) or a run folder."),
    name: str = typer.Option(..., "--name"),
    fp32: bool = typer.Option(False, "--fp32", help="Store fp32 weights (default: fp16, half the size)."),
    last: bool = typer.Option(False, "--last", help="Publish last.pt as given, not the run's best.pt."),
) -> None:
    """Publish a trained checkpoint as the next version of NAME: the run's best (lowest validation objective)
    checkpoint when given its last.pt or its folder, unless --last."""
    from model_store import store
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
