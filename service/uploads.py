"""Reading and validating uploads: raw or multipart bodies, byte limits while streaming, image checks."""

from __future__ import annotations

import math
from collections.abc import AsyncGenerator

from fastapi import HTTPException, Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from imaging import codec
from imaging import video as imaging_video
from service.deps import MULTIPART_SLACK
from service.settings import ServiceSettings

# Uploads


async def read_limited(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes `limit` bytes (Content-Length is checked first)."""
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit:
        raise HTTPException(413, f"upload is {int(length)} bytes; the limit is {limit} bytes")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise HTTPException(413, f"upload is over the limit of {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        raise HTTPException(400, "the client disconnected before sending the whole body") from None
    return b"".join(chunks)


async def _once(data: bytes) -> AsyncGenerator[bytes, None]:
    yield data


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def read_image(request: Request, settings: ServiceSettings) -> tuple[bytes, str | None]:
    """The uploaded image's (or video's) bytes and declared type: a raw body (image/*, video/*,
    application/octet-stream or no Content-Type) or the ``file`` field of a multipart form. A body passing
    max_upload_bytes is read on up to max_video_bytes and kept only when its bytes are a video container."""
    mime = media_type(request)
    limit = max(settings.max_upload_bytes, settings.max_video_bytes)
    if mime == "multipart/form-data":
        body = await read_limited(request, limit + MULTIPART_SLACK)
        try:
            form = await MultiPartParser(request.headers, _once(body), max_files=1, max_fields=16).parse()
        except MultiPartException as e:
            raise HTTPException(400, f"malformed multipart body: {e.message}") from None
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise HTTPException(400, "the multipart form has no file field named 'file'")
        data = await upload.read()
        await upload.close()
        _check_size(data, settings)
        return data, upload.content_type
    if mime and not mime.startswith(("image/", "video/")) and mime != "application/octet-stream":
        hint = " (curl --data-binary sends this type: add -H 'Content-Type: image/jpeg')" if mime.endswith(
            "x-www-form-urlencoded") else ""
        raise HTTPException(415, f"unsupported Content-Type {mime!r}: send the image as the raw body with an image/* "
                                 f"Content-Type, or as multipart/form-data with a field named 'file'{hint}")
    data = await read_limited(request, limit)
    _check_size(data, settings)
    return data, mime if mime.startswith("image/") else None


def _check_size(data: bytes, settings: ServiceSettings) -> None:
    video = imaging_video.sniff(data[:16]) is not None
    limit = settings.max_video_bytes if video else settings.max_upload_bytes
    if len(data) > limit:
        raise HTTPException(413, f"upload is {len(data)} bytes; the limit is {limit} bytes"
                                 + (" for a video" if video else ""))


def check_video(data: bytes, settings: ServiceSettings) -> tuple[int, int]:
    """A video upload's checks (it opens, its first frame decodes, duration and frames x pixels within the
    limits: VideoError's status, 400/413/415, as an HTTPException); the frame (width, height). Blocking."""
    try:
        info = imaging_video.probe(data, max_seconds=settings.max_video_seconds,
                                   max_frame_pixels=settings.max_video_frame_pixels)
    except imaging_video.VideoError as e:
        raise HTTPException(e.status, e.message) from None
    return info.width, info.height


def check_image(data: bytes, declared: str | None, settings: ServiceSettings) -> tuple[int, int]:
    """Every upload check (`codec.inspect_upload`: no pixels kept, the worker decodes; ImageError's status as an
    HTTPException); the upright (width, height). Blocking."""
    try:
        _, width, height = codec.inspect_upload(data, max_bytes=settings.max_upload_bytes,
                                                max_pixels=settings.max_pixels, declared_type=declared)
    except codec.ImageError as e:
        raise HTTPException(e.status, e.message) from None
    return width, height


def check_output_size(size: tuple[int, int], max_side: int | None, factor: int, settings: ServiceSettings) -> None:
    w, h = codec.fit_size(*size, max_side)  # the size the worker runs the network at
    out = w * h * factor * factor
    if out > settings.max_output_pixels:
        hint = int(max(w, h) * math.sqrt(settings.max_output_pixels / out))
        raise HTTPException(413, f"the output would be {w * factor}x{h * factor} = {out} pixels; the limit is "
                                 f"{settings.max_output_pixels} pixels: pass max_side={max(1, hint)} or less")
