"""Speed benchmark: feed-forward style network vs. the Gatys et al. optimization (Johnson et al. 2016, Table 1).

Measures, on each device, in one run:

- inference ms/image of the style network (the built-in ``muse`` model; a fresh width-0.5 ``modern`` style net
  if the store has none) at 256², 512², 1024² with batch 1, and at 256² with batch 4 (per image); on CUDA also
  the same under fp16 autocast; on the CPU each backend/precision of `model_store.backends` this machine has
  (OpenVINO fp32/bf16, torch bf16 autocast where bf16 is native) at each size, with its speed-up over eager fp32
  measured alongside;
- on the CPU, the same-network row: the pytorch/examples ``fast_neural_style`` TransformerNet layout
  (`bench.examples_net`) against the project's network at width 1, both eager fp32, and the shipped model in the
  default backend, at each size, ratios in one run (the three alternate call by call);
- one style-training iteration (batch 4, 256²): transform net forward, `StyleObjective` with the real VGG-16,
  backward and an Adam step, as `trainer.train` does it (on CUDA with channels_last, cuDNN benchmark and TF32,
  plus a mixed-precision row like ``--amp``);
- one Gatys L-BFGS-B iteration at 256² with `trainer.gatys.optimize`: the time of its iterations (from
  `GatysResult.seconds`, setup and the initial evaluation excluded) divided by their number; the whole call's
  wall time divided by the iteration count is printed next to it;
- the paper's headline ratio: 500 Gatys iterations / one forward pass at 256² (batch 1, fp32).

Every figure is the median of several timed repeats after warm-up; CUDA is synchronized around each repeat.
Inputs are random images (speed does not depend on content). Thread count is torch's default.

Run from the repository root::

    python -m bench.bench [--device cpu|cuda|all] [--quick] [--json PATH]

``--device all`` (the default) runs the CPU and, when available, CUDA. ``--quick`` shrinks sizes and repeats for a
smoke run (under a minute on a 2-core CPU); the full CPU run takes a few minutes there.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import torchvision

from model_store import store
from model_store.networks import NetworkConfig, TransformNet, build_network
from trainer.gatys import optimize
from trainer.losses import RECIPES, StyleObjective
from trainer.train import optimizer_step
from trainer.vgg import LossNetwork, load_loss_network

FALLBACK = NetworkConfig(kind="style", preset="modern", width=0.5)
GATYS_ITERATIONS = 500  # the paper's comparison


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def images(batch: int, size: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, 3, size, size, generator=generator) * 255.0).to(device)


def style_network(device: torch.device) -> tuple[TransformNet, str]:
    try:
        net, entry = store.load("muse", device=device)
        return net, f"muse v{entry.version} {entry.config.to_dict()}"
    except store.ModelStoreError:
        return build_network(FALLBACK).eval().to(device), f"untrained {FALLBACK.to_dict()}"


def bench_inference(net: TransformNet, device: torch.device, size: int, batch: int, repeats: int, warmup: int,
                    fp16: bool = False) -> float:
    """Median ms per image of one forward pass."""
    x = images(batch, size, device)

    def step() -> None:
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16) if fp16 else nullcontext():
            net(x)

    return 1000 * median_seconds(step, device, repeats, warmup) / batch


def bench_backends(net: TransformNet, sizes: tuple[int, ...], quick: bool) -> list[dict[str, Any]]:
    """ms/image (batch 1) of each CPU backend/precision this machine has, and its speed-up over eager fp32 measured
    right before it at the same size (the machine's load drifts; adjacent measurements share it)."""
    from bench.backends import combinations
    from model_store import backends

    cpu = torch.device("cpu")
    out = []
    eager_fwd = backends.make_forward(combinations()[0])  # torch/fp32
    for size in sizes:
        x = images(1, size, cpu)
        repeats = 2 if quick else max(3, 7 * 256 * 256 // (size * size))
        for choice in combinations()[1:]:
            fwd = backends.make_forward(choice)
            eager = 1000 * median_seconds(lambda x=x: eager_fwd(net, x), cpu, repeats, 1)
            ms = 1000 * median_seconds(lambda fwd=fwd, x=x: fwd(net, x), cpu, repeats, 2)
            out.append(row(cpu, f"inference {choice.label}", size, 1, ms, "ms/image", repeats,
                           f"{eager / ms:.2f}x eager fp32 ({eager:.1f} ms alongside)"))
    return out


def bench_examples(muse: TransformNet, muse_name: str, sizes: tuple[int, ...], quick: bool) -> list[dict[str, Any]]:
    """The same-network row: pytorch/examples' TransformerNet layout (`bench.examples_net`, eager fp32, as that
    project runs it) against the project's network at width 1 (random weights) in eager fp32 and in this
    machine's default backend (what percept serves with), and the shipped model in the default backend, batch 1.
    The three alternate call by call at each size, so that the machine's load drift falls on all of them."""
    from bench.examples_net import ExamplesTransformerNet
    from model_store import backends, inference

    cpu = torch.device("cpu")
    examples = ExamplesTransformerNet().eval()
    ours = build_network(NetworkConfig(kind="style", preset="modern", width=1.0)).eval()
    choice = backends.choose("auto", "auto", cpu)
    default_fwd = backends.make_forward(choice)

    def eager(net: torch.nn.Module, x: torch.Tensor) -> None:
        with torch.inference_mode():
            net(x)

    out = []
    for size in sizes:
        x = images(1, size, cpu)
        repeats = 2 if quick else max(3, 7 * 256 * 256 // (size * size))
        runs: dict[str, Callable[[], Any]] = {
            "examples": lambda x=x: eager(examples, x),
            "ours": lambda x=x: inference.forward(ours, x, half=False),
            "ours_default": lambda x=x: default_fwd(ours, x),
            "default": lambda x=x: default_fwd(muse, x),
        }
        for fn in runs.values():  # warm-up (OpenVINO compiles per shape here)
            fn()
            fn()
        times: dict[str, list[float]] = {k: [] for k in runs}
        for _ in range(repeats):
            for k, fn in runs.items():
                start = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - start)
        ms = {k: 1000 * statistics.median(v) for k, v in times.items()}
        base = ms["examples"]
        out.append(row(cpu, "pytorch/examples TransformerNet fp32", size, 1, ms["examples"], "ms/image", repeats,
                       "random weights, eager"))
        out.append(row(cpu, "ours modern width 1 fp32 (same net)", size, 1, ms["ours"], "ms/image", repeats,
                       f"{base / ms['ours']:.2f}x the examples layout"))
        out.append(row(cpu, f"ours width 1 (same net), default backend {choice.label}", size, 1,
                       ms["ours_default"], "ms/image", repeats,
                       f"{base / ms['ours_default']:.2f}x the examples layout"))
        out.append(row(cpu, f"{muse_name.split()[0]} default backend {choice.label}", size, 1, ms["default"],
                       "ms/image", repeats, f"{base / ms['default']:.2f}x the examples layout"))
    return out


def bench_train(config: NetworkConfig, vgg: LossNetwork, device: torch.device, size: int, batch: int,
                repeats: int, warmup: int, amp: bool = False) -> float:
    """Median ms per training iteration (forward, losses, backward, Adam step), as trainer.train runs it."""
    torch.manual_seed(0)
    net = build_network(config).to(device).train()
    objective = StyleObjective(vgg, images(1, size, device, seed=1), RECIPES["balanced"])
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x = images(batch, size, device, seed=2)
    channels_last = device.type == "cuda"
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    dtype = torch.bfloat16 if amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda") if amp and dtype == torch.float16 else None

    def step() -> None:
        ctx = torch.autocast(device.type, dtype=dtype) if amp else nullcontext()
        with ctx:
            y = net(x)
            total = objective(y.float(), objective.content_features(x))["total"]
        optimizer_step(total, opt, scaler)

    return 1000 * median_seconds(step, device, repeats, warmup)


def bench_gatys(vgg: LossNetwork, device: torch.device, size: int, iterations: int) -> dict[str, float]:
    """ms per L-BFGS-B iteration: steady state (from the result's timestamps) and whole call / iterations."""
    objective = StyleObjective(vgg, images(1, size, device, seed=1), RECIPES["balanced"])
    content = images(1, size, device, seed=2)
    optimize(objective, content, 1)  # warm-up
    start = time.perf_counter()
    result = optimize(objective, content, iterations)
    wall = time.perf_counter() - start
    done = len(result.objective) - 1  # iterations actually run
    return {
        "ms_per_iter": 1000 * (result.seconds[-1] - result.seconds[0]) / done,
        "ms_per_iter_wall": 1000 * wall / iterations,
        "iterations": done,
        "evals_per_iter": (result.evaluations - 1) / done,
    }


def row(device: torch.device, bench: str, size: int, batch: int, ms: float, unit: str, repeats: int,
        note: str = "") -> dict[str, Any]:
    return {"device": device.type, "benchmark": bench, "size": size, "batch": batch, "ms": round(ms, 2),
            "unit": unit, "repeats": repeats, "note": note}


def bench_device(device: torch.device, quick: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    cuda = device.type == "cuda"
    if cuda:  # as trainer.train sets them
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    base = 128 if quick else 256
    sizes = (base, 2 * base) if quick else (base, 2 * base, 4 * base)
    net, model = style_network(device)
    rows = []
    forward_ms = 0.0
    for fp16 in (False, True) if cuda else (False,):
        precision = "fp16 autocast" if fp16 else "fp32"
        for size, batch in [(s, 1) for s in sizes] + [(base, 4)]:
            repeats = 30 if cuda else (2 if quick else max(3, 7 * base * base // (size * size)))
            warmup = 5 if cuda else 2
            ms = bench_inference(net, device, size, batch, repeats, warmup, fp16=fp16)
            rows.append(row(device, f"inference {precision}", size, batch, ms, "ms/image", repeats))
            if size == base and batch == 1 and not fp16:
                forward_ms = ms
        print(f"  {device.type}: inference {precision} done", file=sys.stderr, flush=True)
    if not cuda:  # the CPU backends (model_store.backends), interleaved per size with eager fp32: ratios in one run
        rows += bench_backends(net, sizes, quick)
        print("  cpu: backends done", file=sys.stderr, flush=True)
        rows += bench_examples(net, model, sizes, quick)
        print("  cpu: pytorch/examples layout done", file=sys.stderr, flush=True)

    vgg = load_loss_network().to(device)
    gatys_n = 2 if quick else 5
    g = bench_gatys(vgg, device, base, gatys_n)
    rows.append(row(device, "gatys L-BFGS-B iteration", base, 1, g["ms_per_iter"], "ms/iter", g["iterations"],
                    f"{g['evals_per_iter']:.1f} evals/iter; whole call / N: {g['ms_per_iter_wall']:.1f} ms"))
    print(f"  {device.type}: gatys done", file=sys.stderr, flush=True)

    train_batch, train_repeats = (2, 1) if quick else (4, 20 if cuda else 2)
    if cuda:
        vgg = vgg.to(memory_format=torch.channels_last)
    for amp in (False, True) if cuda else (False,):
        ms = bench_train(net.config, vgg, device, base, train_batch, train_repeats, 3 if cuda else 1, amp=amp)
        name = "train iteration (Adam)" + (" amp" if amp else "")
        rows.append(row(device, name, base, train_batch, ms, "ms/iter", train_repeats))
    print(f"  {device.type}: training done", file=sys.stderr, flush=True)

    ratio = GATYS_ITERATIONS * g["ms_per_iter"] / forward_ms
    extra = {"device": device.type, "model": model, "size": base, "gatys_ms_per_iter": round(g["ms_per_iter"], 2),
             "forward_ms": round(forward_ms, 2), "gatys500_over_forward": round(ratio, 1)}
    return rows, extra


def machine() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "gpu": ", ".join(gpus) or "none",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "threads": torch.get_num_threads(),
        "load average": " ".join(f"{x:.2f}" for x in os.getloadavg()),  # other work on the machine skews CPU times
    }


def table(rows: list[dict[str, Any]]) -> str:
    head = ["device", "benchmark", "size", "batch", "median", "unit", "n", "note"]
    cells = [[r["device"], r["benchmark"], f"{r['size']}²", str(r["batch"]), f"{r['ms']:.1f}", r["unit"],
              str(r["repeats"]), r["note"]] for r in rows]
    widths = [max(len(c[i]) for c in [head, *cells]) for i in range(len(head))]
    right = {2, 3, 4, 6}
    lines = []
    for c in [head, *cells]:
        lines.append("  ".join(c[i].rjust(w) if i in right else c[i].ljust(w) for i, w in enumerate(widths)))
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    parser.add_argument("--quick", action="store_true", help="small sizes and few repeats: a smoke run")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    devices = {"cpu": ["cpu"], "cuda": ["cuda"], "all": ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])}

    info = machine()
    print("percept speed benchmark" + (" (--quick)" if args.quick else ""))
    for k, v in info.items():
        print(f"  {k:13} {v}")
    print(flush=True)
    rows, ratios = [], []
    for name in devices[args.device]:
        r, extra = bench_device(torch.device(name), args.quick)
        rows += r
        ratios.append(extra)
    print(table(rows))
    print(f"\nload average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for e in ratios:
        print(f"{e['device']}: Gatys {GATYS_ITERATIONS} iterations / one forward pass at {e['size']}² = "
              f"{GATYS_ITERATIONS} x {e['gatys_ms_per_iter']:.1f} ms / {e['forward_ms']:.1f} ms = "
              f"{e['gatys500_over_forward']:.0f}x   (model: {e['model']})")
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "quick": args.quick, "results": rows, "ratios": ratios},
                                        indent=2) + "\n")
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
