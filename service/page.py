"""``GET /``: the web page (``service/static/index.html``), one self-contained file calling the public API.

The page needs no build step and loads nothing from outside the service; it is left out of the OpenAPI schema.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

INDEX = Path(__file__).resolve().parent / "static" / "index.html"

# Inline script and styles only; images are the service's own (thumbnails) or blob: URLs of the user's files,
# and so is a video result (media-src blob:).
CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' blob: data:; "
       "media-src blob:; connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'")

router = APIRouter(include_in_schema=False)


@router.api_route("/", methods=["GET", "HEAD"], response_class=FileResponse)
def index() -> FileResponse:
    """The web page: pick an image, a style or an upscaling factor, and compare the result with the input."""
    if not INDEX.is_file():  # an install without the package data (pyproject: service = ["static/*"])
        raise HTTPException(404, "the web page is not installed (service/static/index.html is missing); "
                                 "the API is at /docs")
    return FileResponse(INDEX, media_type="text/html; charset=utf-8", headers={
        "Cache-Control": "no-cache", "Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer"})
