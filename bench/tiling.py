"""Tiled vs untiled inference of a style network: time, peak memory, and how far the tiled output is from the untiled.

For each size, the built-in ``muse`` style model (instance norm; a fresh width-0.5 ``modern`` style net if the store
has none) stylizes one square image (shared/data/content/chicago.jpg resized, or a random image without it) twice:
untiled (one forward pass) and with `model_store.tiling.run_net_tiled` under a per-pass budget of ``--budget`` output
pixels (whole-image instance-norm statistics, layer by layer). Each run is a fresh subprocess, so its peak resident
memory (``ru_maxrss``) is its own; ``base`` is the process's peak before the run (torch, the model, the image and a
256-px warm-up pass), ``peak`` the peak after it. Times are single wall-clock runs (``--repeats`` > 1: the median,
untiled and tiled interleaved): on a shared CPU compare the ratio within one run, not absolute times across runs.

Run from the repository root::

    python -m bench.tiling [--sizes 1024,2048] [--budget 1000000] [--repeats 1] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

CONTENT = Path(__file__).resolve().parents[2] / "shared" / "data" / "content" / "chicago.jpg"
DEFAULT_BUDGET = 1_000_000  # the worker's smallest allowed tile_pixels; 1024² and 2048² both need tiling under it


def load_net() -> tuple[torch.nn.Module, str]:
    from model_store import store
    from model_store.networks import NetworkConfig, build_network

    try:
        net, entry = store.load("muse", device="cpu")
        return net, f"muse v{entry.version}"
    except store.ModelStoreError:
        return build_network(NetworkConfig(kind="style", width=0.5)).eval(), "untrained width-0.5 style net"


def load_image(size: int) -> tuple[torch.Tensor, str]:
    if CONTENT.is_file():
        from PIL import Image

        with Image.open(CONTENT) as im:
            rgb = im.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
            data = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8)
        return data.view(size, size, 3).permute(2, 0, 1)[None].float().contiguous(), CONTENT.name
    generator = torch.Generator().manual_seed(0)
    return torch.rand(1, 3, size, size, generator=generator) * 255.0, "random"


def maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def child(size: int, mode: str, budget: int, out_path: str) -> None:
    """One measured run in this process; prints a JSON line and saves the output for the parent's comparison."""
    from model_store.tiling import run_net_tiled

    net, model = load_net()
    image, source = load_image(size)

    def untiled(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return net(x).clamp(0, 255)

    def tiled(x: torch.Tensor) -> torch.Tensor:
        return run_net_tiled(net, x, budget_pixels=budget)

    fn = untiled if mode == "untiled" else tiled
    warm = load_image(256)[0]
    fn(warm)  # one-off costs (allocator, oneDNN primitives) out of the timing
    run_net_tiled(net, warm, budget_pixels=256 * 256 // 4)
    del warm
    base = maxrss_mb()
    start = time.perf_counter()
    out = fn(image)
    seconds = time.perf_counter() - start
    peak = maxrss_mb()
    torch.save(out, out_path)
    print(json.dumps({"seconds": seconds, "base_mb": base, "peak_mb": peak, "model": model, "image": source}))


def measure(size: int, mode: str, budget: int, out_path: str, threads: int | None) -> dict[str, Any]:
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    cmd = [sys.executable, "-m", "bench.tiling", "--child", mode, "--sizes", str(size), "--budget", str(budget),
           "--out", out_path]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(rows: list[dict[str, Any]]) -> str:
    head = ["size", "budget", "untiled s", "tiled s", "ratio", "untiled peak MB", "tiled peak MB", "base MB",
            "max abs diff", "mean abs diff"]
    cells = [[f"{r['size']}²", f"{r['budget']:,}", f"{r['untiled_s']:.2f}", f"{r['tiled_s']:.2f}",
              f"{r['ratio']:.2f}x", f"{r['untiled_peak_mb']:.0f}", f"{r['tiled_peak_mb']:.0f}",
              f"{r['base_mb']:.0f}", f"{r['max_abs']:.2g}", f"{r['mean_abs']:.2g}"] for r in rows]
    widths = [max(len(c[i]) for c in [head, *cells]) for i in range(len(head))]
    lines = ["  ".join(c[i].rjust(w) for i, w in enumerate(widths)) for c in [head, *cells]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1024,2048", help="comma-separated square image sides")
    parser.add_argument("--budget", type=int, default=DEFAULT_BUDGET, help="output pixels per pass when tiled")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each mode per size (median)")
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS for the runs (default: torch's)")
    parser.add_argument("--child", choices=["untiled", "tiled"], help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    if args.child:
        child(sizes[0], args.child, args.budget, args.out)
        return

    print(f"tiled vs untiled style inference; torch {torch.__version__}, {os.cpu_count()} cores, "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            runs: dict[str, list[dict[str, Any]]] = {"untiled": [], "tiled": []}
            for i in range(args.repeats):
                for mode in runs:
                    runs[mode].append(measure(size, mode, args.budget, f"{tmp}/{mode}{i}.pt", args.threads))
            untiled, tiled = torch.load(f"{tmp}/untiled0.pt"), torch.load(f"{tmp}/tiled0.pt")
            diff = (untiled.double() - tiled.double()).abs()
            u_s = statistics.median(r["seconds"] for r in runs["untiled"])
            t_s = statistics.median(r["seconds"] for r in runs["tiled"])
            rows.append({
                "size": size, "budget": args.budget, "untiled_s": u_s, "tiled_s": t_s, "ratio": t_s / u_s,
                "untiled_peak_mb": max(r["peak_mb"] for r in runs["untiled"]),
                "tiled_peak_mb": max(r["peak_mb"] for r in runs["tiled"]),
                "base_mb": max(r["base_mb"] for r in runs["untiled"] + runs["tiled"]),
                "max_abs": diff.max().item(), "mean_abs": diff.mean().item(),
            })
            print(f"  {size}²: untiled {u_s:.2f} s, tiled {t_s:.2f} s", file=sys.stderr, flush=True)
    first = runs["untiled"][0]
    print(f"model: {first['model']}; image: {first['image']}; repeats: {args.repeats}\n")
    print(table(rows))
    print(f"\nload average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
