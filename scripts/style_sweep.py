"""The recipe sweep behind the default style recipe (docs/training.md): the Gatys optimizer, from each photo, under
several settings of content layer, style weight, TV weight and style size, for several styles; one contact sheet
per style and a table of the relative errors.

    .venv/bin/python scripts/style_sweep.py --out docs/img/sweep \\
        --style la_muse --style wave --style udnie --style starry_night \\
        --photo chicago --photo stata --photo golden_gate --photo brad_pitt \\
        --setting "paper=recipe:paper" --setting "c33/s10=content_layer:relu3_3,style:10" ...

A setting is LABEL=key:value,... over the balanced recipe (keys: recipe, content, style, tv, content_layer,
normalization, style_size).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from imaging.tensors import to_pil
from trainer.data import load_style
from trainer.losses import DEFAULT_RECIPE, recipe
from trainer.preview import grid, stylize
from trainer.vgg import load_loss_network

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def parse_setting(text: str) -> tuple[str, dict[str, str]]:
    label, _, spec = text.partition("=")
    return label, dict(item.split(":", 1) for item in spec.split(",") if item)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--style", action="append", required=True, help="a file in shared/data/styles (no suffix)")
    ap.add_argument("--photo", action="append", required=True, help="a file in shared/data/content (no suffix)")
    ap.add_argument("--setting", action="append", required=True)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--iterations", type=int, default=50)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    vgg = load_loss_network()
    photos = [next((SHARED / "content").glob(f"{p}.*")) for p in args.photo]
    table = []
    for style_name in args.style:
        style_path = next((SHARED / "styles").glob(f"{style_name}.*"))
        columns = []
        for label, spec in map(parse_setting, args.setting):
            spec = dict(spec)
            style_size = int(spec.pop("style_size")) if "style_size" in spec else None
            name = spec.pop("recipe", DEFAULT_RECIPE)
            overrides = {k: (v if k in ("content_layer", "normalization") else float(v)) for k, v in spec.items()}
            chosen = recipe(name, **overrides)
            style = load_style(style_path, style_size)
            start = time.perf_counter()
            results = stylize(vgg, style, photos, chosen, args.size, args.iterations)
            seconds = time.perf_counter() - start
            for r in results:
                table.append({"style": style_name, "setting": label, "photo": r.photo.name, **r.errors})
                to_pil(r.image).save(args.out / f"{style_name}__{label.replace('/', '_')}__{r.photo.stem}.png")
            print(f"{style_name:14s} {label:18s} {seconds:6.1f} s  " + "  ".join(
                f"{k}={sum(r.errors[k] for r in results) / len(results):.4g}" for k in results[0].errors), flush=True)
            columns.append((label, results))
        grid(load_style(style_path, 256), columns).save(args.out / f"sheet_{style_name}.jpg", quality=85)
    (args.out / "errors.json").write_text(json.dumps(table, indent=1))


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()
