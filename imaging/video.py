"""Video containers without torch: sniffing an upload's bytes, probing a clip's size, length and streams, limits.

The API checks an upload with these (no torch in the service); `model_store.video` decodes and encodes.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import av

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".m4v", ".avi")
class VideoError(Exception):
    """A clip that cannot be read or written: `status` is the HTTP status the API answers with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Probe:
    width: int
    height: int
    frames: int  # from the container's frame count, else duration x average rate (an estimate)
    seconds: float
    rotation: int  # degrees, as the display matrix says
    codec: str
    audio: tuple[str, ...]  # audio codec names, one per stream


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def sniff(head: bytes) -> str | None:
    """The container a file's first bytes name ('mp4' for MP4/MOV/M4V, 'matroska' for MKV/WebM, 'avi'), or None:
    how an upload is told from an image without trusting its Content-Type."""
    if head[4:8] == b"ftyp" or head[4:8] in (b"moov", b"mdat", b"wide", b"free"):  # ISO BMFF / QuickTime boxes
        return "mp4"
    if head[:4] == b"\x1a\x45\xdf\xa3":  # the EBML magic of Matroska and WebM
        return "matroska"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "avi"
    return None


def open_input(src: Path | bytes) -> av.container.InputContainer:
    """A clip from a file or from an upload's bytes; VideoError 400 when FFmpeg cannot read it."""
    name = "the upload" if isinstance(src, bytes) else str(src)
    try:
        return av.open(io.BytesIO(src) if isinstance(src, bytes) else str(src), "r")
    except FileNotFoundError:
        raise VideoError(400, f"{name}: no such file") from None
    except (av.error.FFmpegError, UnicodeDecodeError) as e:
        raise VideoError(400, f"{name}: not a video that can be read ({e})") from None


def probe(src: Path | bytes, *, max_seconds: float | None = None, max_frame_pixels: int | None = None) -> Probe:
    """What `process` will need, read from the header and the first frame; limits raise VideoError 413/400."""
    name = "the upload" if isinstance(src, bytes) else str(src)
    with open_input(src) as inp:
        if not inp.streams.video:
            raise VideoError(400, f"{name}: no video stream")
        stream = inp.streams.video[0]
        ctx = stream.codec_context
        if ctx.codec is None or not ctx.width:
            raise VideoError(415, f"{name}: the video codec cannot be decoded")
        seconds = float(inp.duration / av.time_base) if inp.duration else (
            float(stream.duration * stream.time_base) if stream.duration else 0.0)
        rate = stream.average_rate or stream.guessed_rate or 30
        frames = stream.frames or round(seconds * float(rate))
        if max_seconds is not None and seconds > max_seconds:
            raise VideoError(413, f"the clip lasts {seconds:.1f} s; the limit is {max_seconds:g} s")
        if max_frame_pixels is not None and frames * ctx.width * ctx.height > max_frame_pixels:
            raise VideoError(413, f"{frames} frames of {ctx.width}x{ctx.height} pass the limit of "
                                  f"{max_frame_pixels:,} pixels in all; send a shorter or smaller clip")
        try:
            first = next(inp.decode(stream))
        except StopIteration:
            raise VideoError(400, f"{name}: the video stream has no frames") from None
        except av.error.FFmpegError as e:
            raise VideoError(400, f"{name}: the first frame cannot be decoded ({e})") from None
        return Probe(width=first.width, height=first.height, frames=frames, seconds=seconds,
                     rotation=round(first.rotation or 0), codec=ctx.name,
                     audio=tuple(a.codec_context.name for a in inp.streams.audio))
