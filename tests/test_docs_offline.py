"""/docs and /redoc load their JavaScript and CSS from the service itself, never from a CDN (issue 16: a blank
page offline). tests/test_web_page.py renders them in Chromium with every other host refused."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import ServiceSettings
from worker.memory_queue import MemoryQueue


def test_docs_pages_use_only_local_assets() -> None:
    with TestClient(create_app(ServiceSettings(), queue=MemoryQueue(), start_worker=False)) as client:
        for page in ("/docs", "/redoc"):
            r = client.get(page)
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
            urls = re.findall(r'(?:src|href)="([^"]+)"', r.text)
            assert urls and all(u.startswith("/") for u in urls), (page, urls)
            for url in urls:
                if url != "/openapi.json":
                    asset = client.get(url)
                    assert asset.status_code == 200 and len(asset.content) > 1000, url
        js = client.get("/docs-assets/swagger-ui-bundle.js")
        assert "javascript" in js.headers["content-type"]
        assert re.search(rb'"5\.\d+\.\d+"', js.content)  # Swagger UI 5: renders the OpenAPI 3.1 schema
        assert "/docs" not in client.get("/openapi.json").json()["paths"]
