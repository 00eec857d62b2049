"""Limits and publish hardening (issue 14): a request header size limit in `percept serve`; PERCEPT_TILE_PIXELS
refused with one readable line; an admin publish never opens a path a checkpoint names, takes its style image only
from the upload, and answers every decode error with a 4xx."""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from helpers import free_port, start_serve, stop
from PIL import Image
from test_service_api import KEY, assert_error

from model_store import store
from model_store.networks import NetworkConfig, build_network
from service.app import create_app
from service.settings import ServiceSettings
from worker.memory_queue import MemoryQueue

AUTH = {"Authorization": f"Bearer {KEY}"}
CLI = "from percept.cli import app; app()"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERCEPT_") and k != "REDIS_URL"}
    return {**env, "PERCEPT_WARMUP_SIZES": "", **extra}


def _request(port: int, head: bytes, timeout: float = 10.0) -> bytes:
    """Send raw bytes, return what the server answers (its status line first) until it closes or stalls."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(head)  # the server may answer and close before the whole header is sent
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
                if b"\r\n\r\n" in out:
                    break
        except (ConnectionResetError, TimeoutError):
            pass
        return out


@pytest.fixture(scope="module")
def server() -> Iterator[int]:
    """`percept serve` in a subprocess (embedded, no worker warm-up) on a free port."""
    port = free_port()
    proc = start_serve(port, env=_env())
    try:
        yield port
    finally:
        stop(proc)


def _try_health(port: int) -> bytes:
    try:
        return _request(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", timeout=2)
    except OSError:
        return b""


def test_serve_refuses_a_huge_header_and_stays_up(server: int) -> None:
    big = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 2**20 + b"\r\n\r\n"
    answer = _request(server, big)
    assert answer.split(b"\r\n", 1)[0].split()[1:2] in ([b"431"], [b"400"]), answer[:200]
    # Headers within the limit (64 KiB in all) still work, and the server answers afterwards.
    ok = _request(server, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Some: " + b"a" * 16_000 + b"\r\n\r\n")
    assert ok.startswith(b"HTTP/1.1 200"), ok[:200]
    assert _try_health(server).startswith(b"HTTP/1.1 200")


def test_tile_pixels_below_the_minimum_is_one_readable_line() -> None:
    r = subprocess.run([sys.executable, "-c", CLI, "serve", "--port", "0"], env=_env(PERCEPT_TILE_PIXELS="5000"),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert lines[-1] == "percept: invalid configuration: PERCEPT_TILE_PIXELS must be at least 1,000,000 (output " \
                        "pixels per tile), got 5,000", r.stderr
    assert "Traceback" not in r.stderr and "pydantic" not in r.stderr


# ---------------------------------------------------------------------------------------------------------------
# Publish hardening


def _checkpoint(style_image: str | None, kind: str = "style") -> bytes:
    config = NetworkConfig(kind=kind, preset="modern", width=0.25, **({"factor": 2} if kind == "sr" else {}))
    torch.manual_seed(7)
    net = build_network(config)
    cfg = {"task": kind, "name": "uploaded", "data": "/srv/data/coco", "iterations": 3, "recipe": "paper",
           "style_image": style_image}
    buf = io.BytesIO()
    torch.save({"model": net.state_dict(), "optimizer": {}, "scaler": None, "iteration": 3,
                "config": json.dumps(cfg), "network": json.dumps(config.to_dict()),
                "extra": json.dumps({"losses": {"total": 1.0}})}, buf)
    return buf.getvalue()


def _png(color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), color).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def admin(tmp_store: Path) -> Iterator[TestClient]:
    settings = ServiceSettings(api_key=KEY)
    with TestClient(create_app(settings, queue=MemoryQueue(), start_worker=False)) as c:
        yield c


def test_publish_never_opens_paths_the_checkpoint_names(admin: TestClient, tmp_path: Path) -> None:
    server_image = tmp_path / "secret.png"
    server_image.write_bytes(_png())
    for i, path in enumerate(("/etc/passwd", str(server_image), "../../../../etc/shadow")):
        r = admin.post("/admin/models/tiny/publish", files={"file": ("c.pt", _checkpoint(path))}, headers=AUTH)
        assert r.status_code == 201, r.text
        version = store.get("tiny", i + 1)
        assert not (version.path / store.STYLE_FILE).exists()  # nothing read from the server's disk
        assert version.manifest["training"]["style_image"] == Path(path).name
        assert version.manifest["training"]["iterations"] == 3 and version.manifest["training"]["recipe"] == "paper"
        assert_error(admin.get("/styles/tiny/thumbnail"), 404)


def test_publish_takes_the_style_image_from_the_upload(admin: TestClient) -> None:
    files = {"file": ("c.pt", _checkpoint("/etc/passwd")), "style": ("s.png", _png((10, 200, 10)))}
    r = admin.post("/admin/models/tiny/publish", files=files, headers=AUTH)
    assert r.status_code == 201, r.text
    thumb = admin.get("/styles/tiny/thumbnail")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(thumb.content)).convert("RGB").getpixel((5, 5))[1] > 150


@pytest.mark.parametrize("style", [b"", b"not an image", _png()[:60], b"root:x:0:0:root:/root:/bin/bash\n" * 40,
                                   b"\x89PNG\r\n\x1a\n" + b"\xff" * 200])
def test_publish_style_decode_errors_are_4xx(admin: TestClient, style: bytes) -> None:
    files = {"file": ("c.pt", _checkpoint(None)), "style": ("s.png", style, "image/png")}
    r = admin.post("/admin/models/tiny/publish", files=files, headers=AUTH)
    assert 400 <= r.status_code < 500, r.text
    assert r.json()["detail"].startswith("style image")
    with pytest.raises(store.ModelNotFound):
        store.get("tiny")


def test_publish_style_image_for_an_sr_model_is_refused(admin: TestClient) -> None:
    files = {"file": ("c.pt", _checkpoint(None, "sr")), "style": ("s.png", _png())}
    assert_error(admin.post("/admin/models/sr_x2/publish", files=files, headers=AUTH), 400, "style model")
