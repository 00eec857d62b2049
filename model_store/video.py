"""Video files through the one image pipeline: decode (PyAV), stylize/upscale frames in batches, encode H.264.

`process` reads a clip, runs every frame through `pipeline.prepare` / `pipeline.infer` (batches of same-size
frames) / `pipeline.finish` with the same `Options` as images, and writes H.264 (yuv420p, so even sizes: an odd
output loses its last row/column) with

* each frame's timestamp kept (pts copied in the input's time base: variable-frame-rate phone clips stay in sync),
* every audio stream copied packet for packet (no re-encode, so no quality loss and no drift),
* the rotation (display matrix) kept, so a portrait phone clip still plays upright,
* progress reported as (frames done, frames expected),
* the file written under a temporary name next to the output and renamed into place only when complete: Ctrl-C or
  an error leaves nothing under the output name.

Decoding, inference and encoding overlap: a reader thread demuxes and decodes, the caller's thread runs the
network, a writer thread encodes and muxes (each container is touched by one thread only). On 2 CPU cores the
network dominates (see bench/video.py), so the overlap mainly hides the codec's share.

Flicker: a style network maps tiny frame-to-frame changes (sensor noise, compression) to large texture changes.
`smooth` > 0 blends each output with the previous output where the input did not change (`Smoother`); measured in
bench/video.py.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F

from imaging import codec
from imaging.video import VIDEO_SUFFIXES, Probe, VideoError, is_video, open_input, probe, sniff
from model_store import pipeline
from model_store.networks import TransformNet
from model_store.options import TILE_PIXELS, Options

__all__ = ["DEFAULT_SMOOTH", "VIDEO_SUFFIXES", "Probe", "Smoother", "VideoError", "is_video", "output_size", "probe",
           "process", "sniff"]

# H.264 goes into these containers (WebM allows only VP8/VP9/AV1, AVI has no B-frame timestamps).
_OUTPUT_FORMATS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}

Progress = Callable[[int, int], None]
# `--smooth` of `percept stylize` and of API style jobs: halves still-shot flicker for every built-in style
# (bench/video.py; README "Video"). SR runs unsmoothed.
DEFAULT_SMOOTH = 0.5


def output_size(width: int, height: int, factor: int, options: Options) -> tuple[int, int]:
    """The encoded size: the pipeline's (max_side, then x factor) rounded down to even for yuv420p."""
    w, h = codec.fit_size(width, height, options.max_side)
    return (w * factor) // 2 * 2, (h * factor) // 2 * 2


class Smoother:
    """Blend each output with the previous one where the input did not change (a cheap flicker reduction).

    weight = strength * exp(-|local mean of (input_t - input_t-1)| / tau), per pixel. The signed difference is
    averaged over 5x5 pixels and the channels before its magnitude is taken, so sensor noise (zero mean) cancels
    while a moving edge does not: static regions follow a running average of the stylized frames, moving ones
    take the new frame (no ghost trails). `tau` is in 0..255 units.
    """

    def __init__(self, strength: float, tau: float = 4.0):
        self.strength, self.tau = strength, tau
        self.prev_in: torch.Tensor | None = None
        self.prev_out: torch.Tensor | None = None

    def __call__(self, inp: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        if self.strength > 0 and self.prev_in is not None and self.prev_out is not None:
            diff = F.avg_pool2d((inp - self.prev_in).mean(1, keepdim=True), 5, stride=1, padding=2,
                                count_include_pad=False).abs()
            weight = self.strength * torch.exp(-diff / self.tau)
            if weight.shape[-2:] != out.shape[-2:]:  # SR: the output is factor x the input
                weight = F.interpolate(weight, size=out.shape[-2:], mode="bilinear", align_corners=False)
            out = weight * self.prev_out + (1 - weight) * out
        self.prev_in, self.prev_out = inp, out
        return out


_END = object()


class _Worker(threading.Thread):
    """A daemon thread whose exception is re-raised in the caller (`check`)."""

    def __init__(self, target: Callable[[], None], name: str):
        super().__init__(name=name, daemon=True)
        self._target_fn = target
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._target_fn()
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
            self.error = e

    def check(self) -> None:
        if self.error is not None:
            raise self.error


def _put(q: queue.Queue, item: object, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return
        except queue.Full:
            continue


def process(net: TransformNet, src: Path, dst: Path, options: Options = Options(), *, batch: int = 4,
            smooth: float = 0.0, crf: int = 20, preset: str = "veryfast", progress: Progress | None = None,
            tile_pixels: int = TILE_PIXELS, forward: pipeline.Forward | None = None,
            get: pipeline.GetNet | None = None) -> int:
    """Stylize or upscale the clip `src` into `dst` (.mp4/.m4v/.mov/.mkv); returns the number of frames written.

    `forward` None: the machine's default backend, and `get` loads the dials' other networks, as in
    `pipeline.run`, so a frame gets the pixels the same image would.

    Raises VideoError for a clip that cannot be read or an output that cannot hold its streams; on any error or
    interrupt the temporary file is removed and `dst` is untouched.
    """
    from model_store import backends

    src, dst = Path(src), Path(dst)
    forward = forward or backends.default_forward(next(net.parameters()).device)
    fmt = _OUTPUT_FORMATS.get(dst.suffix.lower())
    if fmt is None:
        raise VideoError(400, f"{dst.name}: write .mp4, .m4v, .mov or .mkv (H.264 output)")
    info = probe(src)
    factor = net.config.factor
    out_w, out_h = output_size(info.width, info.height, factor, options)
    if out_w < 2 or out_h < 2:
        raise VideoError(400, f"{src}: {info.width}x{info.height} is too small")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.stem}.partial-{os.getpid()}{dst.suffix}")
    inp = open_input(src)
    try:
        out = av.open(str(tmp), "w", format=fmt)
    except BaseException:
        inp.close()
        tmp.unlink(missing_ok=True)
        raise
    stop = threading.Event()
    threads: list[_Worker] = []
    done = 0
    try:
        vin = inp.streams.video[0]
        vin.thread_type = "AUTO"
        ains = list(inp.streams.audio)
        vout = out.add_stream("libx264", rate=vin.average_rate or vin.guessed_rate or 30,
                              options={"crf": str(crf), "preset": preset})
        vout.width, vout.height, vout.pix_fmt = out_w, out_h, "yuv420p"
        # The input's time base for the encoder and the stream, so each pts is copied exactly (the muxer may
        # still pick a finer stream time base; PyAV rescales).
        vout.codec_context.time_base = vin.time_base
        vout.time_base = vin.time_base
        if info.rotation:
            vout.set_display_rotation(info.rotation)
        aouts = {a.index: out.add_stream_from_template(a) for a in ains}
        decoded: queue.Queue = queue.Queue(maxsize=2 * batch)
        encoded: queue.Queue = queue.Queue(maxsize=2 * batch)

        def read() -> None:
            last: int | None = None
            for packet in inp.demux(vin, *ains):
                if stop.is_set():
                    return
                if packet.stream.type == "audio":
                    if packet.dts is not None:
                        _put(encoded, packet, stop)  # straight to the writer: nothing to do to it
                    continue
                for frame in packet.decode():
                    pts = frame.pts if frame.pts is not None else (0 if last is None else last + 1)
                    if last is not None and pts <= last:
                        continue  # a repeated timestamp: the muxer would refuse the file
                    last = pts
                    rgb = frame.to_ndarray(format="rgb24", width=info.width, height=info.height)
                    _put(decoded, (pts, rgb), stop)
            _put(decoded, _END, stop)

        def write() -> None:
            try:
                while True:
                    try:
                        item = encoded.get(timeout=0.1)
                    except queue.Empty:
                        if stop.is_set():  # interrupted or failed elsewhere: the file is being thrown away
                            return
                        continue
                    if item is _END:
                        break
                    if isinstance(item, av.Packet):
                        item.stream = aouts[item.stream.index]
                        out.mux(item)
                        continue
                    pts, rgb = item
                    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
                    frame.pts, frame.time_base = pts, vin.time_base
                    out.mux(vout.encode(frame))
                out.mux(vout.encode(None))
            except av.error.FFmpegError as e:
                raise VideoError(400, f"{dst.name}: cannot write the streams into this container ({e}); "
                                      ".mkv holds any audio codec") from None

        threads = [_Worker(read, "video-read"), _Worker(write, "video-write")]
        for t in threads:
            t.start()
        smoother = Smoother(smooth)
        total = max(info.frames, 1)
        pending: list[tuple[int, np.ndarray]] = []

        def send(item: object) -> None:
            while True:  # a writer that failed takes nothing more: its error, not a hang
                try:
                    encoded.put(item, timeout=0.1)
                    return
                except queue.Full:
                    threads[1].check()

        def run_batch() -> None:
            nonlocal done
            images = [pipeline.prepare(pipeline.wrap(torch.from_numpy(rgb).permute(2, 0, 1)[None].float()),
                                       options) for _, rgb in pending]
            outs = pipeline.infer_with(net, [im.rgb for im in images], options, get, tile_pixels=tile_pixels,
                                       forward=forward)
            for (pts, _), image, y in zip(pending, images, outs, strict=True):
                y = smoother(image.rgb, pipeline.finish(image, y, factor, options))[..., :out_h, :out_w]
                rgb = y[0].round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
                send((pts, rgb))
            done += len(pending)
            pending.clear()
            if progress:
                progress(done, max(total, done))

        while True:
            try:
                item = decoded.get(timeout=0.5)
            except queue.Empty:
                for t in threads:
                    t.check()
                continue
            if item is _END:
                break
            pending.append(item)
            if len(pending) == batch:
                run_batch()
        if pending:
            run_batch()
        send(_END)
        threads[1].join()
        for t in threads:
            t.check()
        out.close()
        if progress:
            progress(done, done)
        if done == 0:
            raise VideoError(400, f"{src}: no frame could be decoded")
        os.replace(tmp, dst)
        return done
    except av.error.FFmpegError as e:
        raise VideoError(400, f"{src}: cannot decode the clip ({e})") from None
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=5)
        for c in (inp, out):
            with contextlib.suppress(Exception):  # already closed, or broken by the error being handled
                c.close()
        tmp.unlink(missing_ok=True)
