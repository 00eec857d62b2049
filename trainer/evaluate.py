"""The paper's evaluations. Super-resolution: Y-channel PSNR/SSIM of a stored SR model (or the bicubic
baseline) on a folder of HR images such as Set5 or Set14, and a plain-text table laid out like Johnson et al.'s
Table 2.

Per image: the HR original is cropped to a multiple of the factor, degraded to LR (`trainer.data.degrade`),
upscaled again (bicubic or the network) and compared with the HR image on Y, shaving `factor` pixels per side.

Degradations:
- ``paper``: Gaussian blur sigma 1.0 before bicubic downsampling, as Johnson et al. trained and tested.
- ``standard``: bicubic downsampling only, the protocol of the SR literature's tables (SRCNN, VDSR, ...).

Style: the objective a style network reaches in one forward pass against the Gatys optimizer's after N
iterations on the same images (the paper's Fig. 5), see `evaluate_style`; and what a user sees in numbers, the
relative Gram error per layer and the relative content error of its outputs, whatever recipe trained it, see
`style_errors`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from imaging.tensors import load_image
from model_store import store
from model_store.options import Options
from model_store.pipeline import load, run
from model_store.store import STYLE_FILE
from trainer.data import crop_to_multiple, degrade, find_images, upsample_bicubic
from trainer.metrics import mean_gradient_magnitude, psnr_y, ssim_y

BICUBIC = "bicubic"
BLUR_SIGMA = {"paper": 1.0, "standard": 0.0}
METRICS = ("psnr", "ssim", "grad_sr", "grad_hr")


def _load_sr_model(model: str, factor: int, device: str):
    """(network, label): a store model (NAME or NAME@V) or a training checkpoint (.pt), checked to be x`factor`."""
    net, label = load(model, device)
    config = net.config
    if config.kind != "sr":
        raise ValueError(f"model {label} is a {config.kind} network, not a super-resolution one")
    if config.factor != factor:
        raise ValueError(f"model {label} upscales by x{config.factor}, but x{factor} was requested")
    return net, label


def _version(label: str) -> int | None:
    """The store version in a `pipeline.load` label ("sr_x4 v2"); None for a checkpoint."""
    tail = label.rpartition(" v")[2]
    return int(tail) if tail.isdigit() else None


def evaluate_sr(
    model: str,
    factor: int,
    data_dir: str | Path,
    degradation: str = "paper",
    histmatch: bool = False,
    device: str = "cpu",
    detail: float | None = None,
) -> dict[str, Any]:
    """Evaluate `model` (a model-store name, or "bicubic" for the baseline) at x`factor` on `data_dir`; with
    `detail`, the detail dial's network instead (the store's pixel/feat pair for `factor`, interpolated).

    Returns ``{"model", "version", "factor", "dataset", "degradation", "histmatch", "images": [rows],
    "psnr", "ssim", "grad_sr", "grad_hr"}``; each row has ``image`` (file name) and the four metrics, and the
    top-level metrics are their means over the images.
    """
    if degradation not in BLUR_SIGMA:
        raise ValueError(f"degradation must be one of {sorted(BLUR_SIGMA)}, got {degradation!r}")
    if factor < 2:
        raise ValueError(f"factor must be >= 2, got {factor}")
    net, version = None, None
    if detail is not None:
        from model_store.pipeline import detail_net

        pixel_name, feat_name = store.sr_detail_pair(factor)
        (pixel, _), (feat, label) = (_load_sr_model(n, factor, device) for n in (pixel_name, feat_name))
        net, version, model = detail_net(pixel, feat, detail), _version(label), f"{feat_name} detail={detail:g}"
    elif model != BICUBIC:
        net, label = _load_sr_model(model, factor, device)
        version = _version(label)

    rows = []
    for path in find_images(data_dir):
        hr = crop_to_multiple(load_image(path), factor)
        lr = degrade(hr, factor, blur_sigma=BLUR_SIGMA[degradation])
        sr = upsample_bicubic(lr, factor) if net is None else run(net, lr, Options(histmatch=histmatch))
        rows.append(
            {
                "image": path.name,
                "psnr": psnr_y(sr, hr, border=factor),
                "ssim": ssim_y(sr, hr, border=factor),
                "grad_sr": mean_gradient_magnitude(sr),
                "grad_hr": mean_gradient_magnitude(hr),
            }
        )

    result: dict[str, Any] = {
        "model": model,
        "version": version,
        "factor": factor,
        "dataset": Path(data_dir).name,
        "degradation": degradation,
        # Histogram matching only applies to network outputs; the baseline ignores it.
        "histmatch": histmatch and net is not None,
        "images": rows,
    }
    result.update({k: sum(r[k] for r in rows) / len(rows) for k in METRICS})
    return result


def _method(result: dict[str, Any]) -> str:
    name = result["model"]
    if result.get("version") is not None:
        name += f" v{result['version']}"
    return name + (" +hm" if result.get("histmatch") else "")


def _row(result: dict[str, Any]) -> str:
    row = f"{result['dataset']} x{result['factor']}"
    return row if result.get("degradation", "paper") == "paper" else f"{row} ({result['degradation']})"


def format_sr_table(results: list[dict[str, Any]]) -> str:
    """Results of `evaluate_sr` as a plain-text table: one row per dataset and factor, one column per method,
    cells "PSNR / SSIM" (as in Johnson et al., Table 2). Rows and columns keep their first-seen order."""
    rows: list[str] = []
    methods: list[str] = []
    cells: dict[tuple[str, str], str] = {}
    for r in results:
        row, method = _row(r), _method(r)
        if row not in rows:
            rows.append(row)
        if method not in methods:
            methods.append(method)
        cells[row, method] = f"{r['psnr']:.2f} / {r['ssim']:.4f}"

    header = ["", *methods]
    body = [[row, *(cells.get((row, m), "-") for m in methods)] for row in rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def fmt(line: list[str]) -> str:
        return "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths, strict=True))
        ).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(header), sep, *(fmt(line) for line in body), "(Y-channel PSNR dB / SSIM)"])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _progress(bar: tqdm) -> Callable[[int, float], None]:
    def update(iteration: int, value: float) -> None:
        bar.set_postfix(objective=f"{value:.4g}", refresh=False)
        bar.update(iteration - bar.n)
    return update


def _style_model(model: str, version: int | None, device: torch.device, vgg_weights: str | Path | None):
    """The network, its store entry, the loss network and the style image it was trained on."""
    from trainer.vgg import load_loss_network

    net, entry = store.load(model, version, device=device)
    if net.config.kind != "style":
        raise ValueError(f"model {model!r} is a {net.config.kind} network, not a style one")
    style_path = entry.path / STYLE_FILE
    if not style_path.is_file():
        raise FileNotFoundError(f"{model} v{entry.version} has no {STYLE_FILE}: cannot rebuild its objective")
    return net, entry, load_loss_network(vgg_weights).to(device), load_image(style_path).to(device)


def style_errors(
    model: str,
    content_dir: str | Path,
    version: int | None = None,
    image_size: int = 256,
    limit: int | None = None,
    device: str = "cpu",
    vgg_weights: str | Path | None = None,
) -> dict[str, Any]:
    """Mean relative errors of a style network's outputs on the content photos, one fixed measure for every
    recipe: ||G(y) - G(s)||^2 / ||G(s)||^2 at each style layer (lower = closer to the painting's statistics) and
    ||phi(y) - phi(x)||^2 / ||phi(x)||^2 at relu2_2 and relu3_3 (higher = further from the photo)."""
    from trainer.losses import STYLE_LAYERS, gram, relative_loss

    dev = torch.device(device)
    net, entry, vgg, style = _style_model(model, version, dev, vgg_weights)
    content_layers = ("relu2_2", "relu3_3")
    with torch.no_grad():
        targets = {n: gram(f) for n, f in vgg(style, STYLE_LAYERS).items()}
    sums: dict[str, float] = {}
    photos = find_images(content_dir)[:limit]
    for path in photos:
        content = load_image(path, max_side=image_size).to(dev)
        with torch.no_grad():
            out, photo = vgg(run(net, content), STYLE_LAYERS), vgg(content, content_layers)  # one pass each
            values = {n: relative_loss(gram(out[n]), targets[n]) for n in STYLE_LAYERS}
            values.update({f"content_{n}": relative_loss(out[n], photo[n]) for n in content_layers})
        for k, v in values.items():
            sums[k] = sums.get(k, 0.0) + v.item() / len(photos)
    return {"model": model, "version": entry.version, "recipe": entry.manifest.get("training", {}).get("recipe",
            "paper"), "images": len(photos), "image_size": image_size, **sums}


def evaluate_style(
    model: str,
    content_dir: str | Path,
    gatys_iterations: tuple[int, ...] = (50, 100, 300, 500),
    image_size: int = 256,
    limit: int | None = None,
    device: str = "cpu",
    vgg_weights: str | Path | None = None,
    version: int | None = None,
) -> dict[str, Any]:
    """The paper's Fig. 5 comparison for a style model: on each content image (longer side `image_size`), the
    objective the model was trained on (its recipe and weights from its manifest, its style image) of the
    network's output, next to the Gatys optimizer's after each of `gatys_iterations`, with the time each took."""
    from trainer.gatys import optimize
    from trainer.losses import StyleObjective
    from trainer.train import recipe_of

    dev = torch.device(device)
    net, entry, vgg, style = _style_model(model, version, dev, vgg_weights)
    chosen = recipe_of(entry.manifest.get("training", {}))
    objective = StyleObjective(vgg, style, chosen)
    rows = []
    for path in find_images(content_dir)[:limit]:
        content = load_image(path, max_side=image_size).to(dev)
        run(net, content)  # warm-up: the first pass at a size pays for allocation and kernel selection
        _sync(dev)
        start = time.perf_counter()
        out = run(net, content)
        _sync(dev)
        net_seconds = time.perf_counter() - start
        with torch.no_grad():
            net_value = objective(out, objective.content_features(content))["total"].item()
        with tqdm(total=max(gatys_iterations), desc=f"{model}: Gatys on {path.name}", unit="it", leave=False,
                  dynamic_ncols=True) as bar:
            gatys = optimize(objective, content, max(gatys_iterations), on_iteration=_progress(bar))
        rows.append({
            "image": path.name,
            "size": list(content.shape[-2:]),
            "network": net_value,
            "network_seconds": net_seconds,
            "gatys": {n: gatys.objective[min(n, len(gatys.objective) - 1)] for n in gatys_iterations},
            "gatys_seconds": {n: gatys.seconds[min(n, len(gatys.seconds) - 1)] for n in gatys_iterations},
        })
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return {
        "model": model,
        "version": entry.version,
        "recipe": chosen.to_dict(),
        "image_size": image_size,
        "images": rows,
        "network": mean([r["network"] for r in rows]),
        "network_seconds": mean([r["network_seconds"] for r in rows]),
        "gatys": {n: mean([r["gatys"][n] for r in rows]) for n in gatys_iterations},
        "gatys_seconds": {n: mean([r["gatys_seconds"][n] for r in rows]) for n in gatys_iterations},
    }


def format_style_table(results: list[dict[str, Any]]) -> str:
    """Mean objective (and seconds) of each style network next to the Gatys optimizer's after N iterations."""
    iters = list(results[0]["gatys"]) if results else []
    header = ["model", "network", *(f"gatys@{n}" for n in iters)]
    body = []
    for r in results:
        cells = [f"{r['model']} v{r['version']}", f"{r['network']:.4g} ({r['network_seconds']:.3f}s)"]
        cells += [f"{r['gatys'][n]:.4g} ({r['gatys_seconds'][n]:.1f}s)" for n in iters]
        body.append(cells)
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in [header, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join([*lines, "(objective = content + style + TV at the model's training weights; lower is better)"])
