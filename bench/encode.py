"""PNG encoding: `imaging.codec.png_fast` against Pillow at zlib level 1 (what the service used before), on a
stylized photo and on the noise images of `bench.load`; ms per image and bytes, interleaved repeats.

    python -m bench.encode [--repeats 30]
"""

from __future__ import annotations

import argparse
import io
import time

import numpy as np
from PIL import Image

from imaging import codec, tensors
from model_store import pipeline


def _pillow(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args(argv)
    net, _ = pipeline.load("muse", "cpu")
    styled = pipeline.run(net, tensors.load_image("../shared/data/content/chicago.jpg", 512))
    images = {"muse on chicago, 512 px": np.ascontiguousarray(tensors.to_array(styled).round().astype(np.uint8)),
              "noise 256²": np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)}
    print("| image | Pillow level 1 (ms, kB) | png_fast (ms, kB) | speed-up | size |")
    print("| --- | --- | --- | --- | --- |")
    for label, pixels in images.items():
        times = {"pillow": 0.0, "fast": 0.0}
        sizes = {}
        for _ in range(args.repeats):
            for name, encode in (("pillow", _pillow), ("fast", codec.png_fast)):
                start = time.perf_counter()
                data = encode(pixels)
                times[name] += time.perf_counter() - start
                sizes[name] = len(data)
        ms = {k: v / args.repeats * 1000 for k, v in times.items()}
        print(f"| {label} | {ms['pillow']:.1f}, {sizes['pillow'] / 1000:.0f} | {ms['fast']:.1f}, "
              f"{sizes['fast'] / 1000:.0f} | {ms['pillow'] / ms['fast']:.1f}x | "
              f"{sizes['fast'] / sizes['pillow'] - 1:+.0%} |")


if __name__ == "__main__":
    main()
