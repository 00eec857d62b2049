"""How far each CPU backend/precision's output is from eager fp32, on real photos: the numbers behind
`model_store.backends.TOLERANCE` and its ranking.

    python -m bench.backends [--model muse] [--size 512] [--photos ../shared/data/content]

For each photo (resized to `--size` on the long side) and each combination this machine has: the PSNR of the
output against eager fp32 (both clamped to [0, 255]) and the largest per-pixel difference in grey levels. Prints
the minimum PSNR and the largest difference (max, 99.9th percentile, mean) over the photos.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from imaging import tensors
from model_store import backends, inference, pipeline
from model_store.options import Options

DEFAULT_PHOTOS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "content"


def combinations() -> list[backends.Choice]:
    out = [backends.Choice("torch", "fp32", "reference")]
    native = inference.cpu_has_native_bf16()
    if native:
        out.append(backends.Choice("torch", "bf16", ""))
    if backends.openvino_available():
        out.append(backends.Choice("openvino", "fp32", ""))
        if native:
            out.append(backends.Choice("openvino", "bf16", ""))
    return out


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a - b) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def measure(model: str, size: int, photos: list[Path]) -> dict[str, dict[str, float]]:
    net, _ = pipeline.load(model)
    forwards = {c.label: backends.make_forward(c) for c in combinations()}
    stats = {label: {"psnr_db": math.inf, "max_diff": 0.0, "p999_diff": 0.0, "mean_diff": 0.0} for label in forwards}
    for path in photos:
        image = pipeline.prepare(tensors.decode(path.read_bytes()), Options(max_side=size))
        ref = forwards["torch/fp32"](net, image.rgb).clamp(0, 255)
        for label, fwd in forwards.items():
            out = fwd(net, image.rgb).clamp(0, 255)
            stats[label]["psnr_db"] = min(stats[label]["psnr_db"], psnr(out, ref))
            diff = (out - ref).abs()
            stats[label]["max_diff"] = max(stats[label]["max_diff"], float(diff.max()))
            stats[label]["p999_diff"] = max(stats[label]["p999_diff"], float(diff.flatten().quantile(0.999)))
            stats[label]["mean_diff"] = max(stats[label]["mean_diff"], float(diff.mean()))
    return stats


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="muse")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS)
    args = parser.parse_args(argv)
    photos = sorted(args.photos.glob("*.jpg"))
    if not photos:
        parser.error(f"no .jpg photos in {args.photos}")
    stats = measure(args.model, args.size, photos)
    print(f"{args.model}, {len(photos)} photos at {args.size} px (long side), against eager fp32:")
    print(f"{'backend/precision':18}  {'min PSNR (dB)':>13}  {'max |diff|':>10}  {'99.9% |diff|':>12}  "
          f"{'mean |diff|':>11}  within {backends.TOLERANCE}")
    for label, s in stats.items():
        ok = s["psnr_db"] >= backends.TOLERANCE["psnr_db"] and s["max_diff"] <= backends.TOLERANCE["max_diff"]
        print(f"{label:18}  {s['psnr_db']:13.1f}  {s['max_diff']:10.3f}  {s['p999_diff']:12.3f}  "
              f"{s['mean_diff']:11.3f}  {'yes' if ok else 'NO'}")


if __name__ == "__main__":
    main()
