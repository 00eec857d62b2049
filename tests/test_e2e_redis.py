"""End to end over real processes: HTTP -> API process -> Redis -> worker process -> HTTP, for both endpoints.

Redis is conftest's private server (`redis_server`), emptied before the processes start."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from helpers import free_port
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def _png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.effect_noise((w, h), 50).convert("RGB").save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def service(redis_server):
    redis_server.start()  # a no-op unless a test stopped it
    redis_server.flush()
    redis_url = redis_server.url
    port = free_port()
    env = {**os.environ, "REDIS_URL": redis_url, "PERCEPT_WARMUP_SIZES": "32", "PERCEPT_DEVICE": "cpu",
           "PERCEPT_HEARTBEAT_S": "0.5", "PERCEPT_MAX_BATCH_DELAY_MS": "50"}
    cli = [sys.executable, "-m", "percept.cli"]
    api = subprocess.Popen([*cli, "serve", "--port", str(port), "--redis-url", redis_url], cwd=ROOT, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    worker = subprocess.Popen([*cli, "worker", "--redis-url", redis_url], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
    try:
        deadline = time.monotonic() + 120
        while True:
            for p in (api, worker):
                if p.poll() is not None:
                    raise AssertionError(p.stderr.read().decode()[-3000:])
            try:
                if client.get("/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "service not ready in time"
            time.sleep(0.2)
        yield client
    finally:
        client.close()
        for p in (api, worker):
            p.send_signal(signal.SIGTERM)
        for p in (api, worker):
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()


def test_stylize_through_redis(service):
    resp = service.post("/stylize", params={"style": "muse"}, content=_png(40, 28),
                        headers={"Content-Type": "image/png"})
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(resp.content)).size == (40, 28)


def test_upscale_through_redis(service):
    resp = service.post("/upscale", params={"factor": 4, "format": "jpeg"}, files={"file": ("a.png", _png(20, 12))})
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(resp.content)).size == (80, 48)


def test_async_job_through_redis(service):
    resp = service.post("/upscale", params={"factor": 8, "async": "true"}, content=_png(10, 10),
                        headers={"Content-Type": "image/png"})
    assert resp.status_code == 202, resp.text
    location = resp.headers["location"]
    deadline = time.monotonic() + 60
    while (status := service.get(location).json())["status"] not in ("done", "failed"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert status["status"] == "done", status
    result = service.get(f"{location}/result")
    assert result.status_code == 200
    assert Image.open(io.BytesIO(result.content)).size == (80, 80)
