"""Reading and validating uploads: raw or multipart bodies, byte limits while streaming, image checks."""

from __future__ import annotations

import math
from collections.abc import AsyncGenerator

import anyio
from fastapi import HTTPException, Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from imaging import codec
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
    """The uploaded image's bytes and declared type: a raw body (image/*, application/octet-stream or no
    Content-Type) or the ``file`` field of a multipart form."""
    mime, limit = media_type(request), settings.max_upload_bytes
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
        if len(data) > limit:
            raise HTTPException(413, f"upload is {len(data)} bytes; the limit is {limit} bytes")
        return data, upload.content_type
    if mime and not mime.startswith("image/") and mime != "application/octet-stream":
        hint = " (curl --data-binary sends this type: add -H 'Content-Type: image/jpeg')" if mime.endswith(
            "x-www-form-urlencoded") else ""
        raise HTTPException(415, f"unsupported Content-Type {mime!r}: send the image as the raw body with an image/* "
                                 f"Content-Type, or as multipart/form-data with a field named 'file'{hint}")
    data = await read_limited(request, limit)
    return data, mime if mime.startswith("image/") else None


async def validate_image(data: bytes, declared: str | None, settings: ServiceSettings) -> tuple[int, int]:
    """Every upload check (decoded by Pillow, no tensors: the worker converts); the upright (width, height)."""

    def check() -> tuple[int, int]:
        checked = codec.check_upload(data, max_bytes=settings.max_upload_bytes, max_pixels=settings.max_pixels,
                                      declared_type=declared)
        with checked.image as im:
            return im.size

    try:
        return await anyio.to_thread.run_sync(check)
    except codec.ImageError as e:
        raise HTTPException(e.status, e.message) from None


def check_output_size(size: tuple[int, int], max_side: int | None, factor: int, settings: ServiceSettings) -> None:
    w, h = codec.fit_size(*size, max_side)  # the size the worker runs the network at
    out = w * h * factor * factor
    if out > settings.max_output_pixels:
        hint = int(max(w, h) * math.sqrt(settings.max_output_pixels / out))
        raise HTTPException(413, f"the output would be {w * factor}x{h * factor} = {out} pixels; the limit is "
                                 f"{settings.max_output_pixels} pixels: pass max_side={max(1, hint)} or less")
