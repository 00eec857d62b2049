"""The HTTP service end to end in embedded mode: FastAPI's TestClient, an in-memory queue and the real worker
thread running the built-in models on tiny images."""

from __future__ import annotations

import io
import json
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from helpers import wait_until
from PIL import Image

from model_store import store
from model_store.networks import NetworkConfig, build_network
from service.app import create_app
from service.jobs import job_failure
from service.settings import ServiceSettings
from worker.memory_queue import MemoryQueue
from worker.queue import JobParams, JobRecord

KEY = "admin-secret"
W, H = 40, 32
LIMITS = dict(max_upload_bytes=60_000, max_pixels=1_000_000, max_output_pixels=300_000)


def photo(w: int = W, h: int = H, fmt: str = "PNG", seed: int = 0, **save: Any) -> bytes:
    """A smooth colour field with some texture: the networks' outputs depend on it."""
    rng = np.random.default_rng(seed)
    base = Image.fromarray(rng.integers(0, 256, (3, 4, 3), dtype=np.uint8)).resize((w, h), Image.Resampling.BICUBIC)
    a = np.asarray(base).astype(np.float32) + rng.normal(0, 12, (h, w, 3))
    buf = io.BytesIO()
    Image.fromarray(a.clip(0, 255).astype(np.uint8)).save(buf, fmt, **save)
    return buf.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG that is only a (valid) header claiming width x height, and no pixel data: a decompression bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def decode(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(decode(data).convert("RGB"), dtype=np.float64)


def wait_ready(client: TestClient) -> None:
    wait_until(lambda: client.get("/readyz").status_code == 200)


def assert_error(response: Any, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"detail"} and isinstance(body["detail"], str) and body["detail"], body
    for word in words:
        assert word.lower() in body["detail"].lower(), body["detail"]


def post_image(client: TestClient, path: str, data: bytes, content_type: str = "image/png", **params: Any) -> Any:
    return client.post(path, params=params, content=data, headers={"Content-Type": content_type})


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    """One embedded service (built-in models, small limits, an admin key) shared by the module's tests."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MODEL_STORE", raising=False)
        mp.setenv("PERCEPT_WARMUP_SIZES", "32")
        mp.setenv("PERCEPT_HEARTBEAT_S", "0.2")
        mp.setenv("PERCEPT_MAX_BATCH_DELAY_MS", "2")
        settings = ServiceSettings(api_key=KEY, **LIMITS)
        with TestClient(create_app(settings)) as c:
            wait_ready(c)
            yield c


@pytest.fixture
def idle() -> Iterator[tuple[TestClient, MemoryQueue]]:
    """A service with no worker and room for two jobs: jobs stay queued until the test moves them."""
    queue = MemoryQueue(max_depth=2)
    with TestClient(create_app(ServiceSettings(api_key=KEY), queue=queue, start_worker=False)) as c:
        yield c, queue


# ---------------------------------------------------------------------------------------------------------------
# Images in, images out


def test_stylize_returns_an_image_of_the_same_size(client: TestClient) -> None:
    r = post_image(client, "/stylize", photo(), style="candy")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    assert decode(r.content).size == (W, H)
    assert len(r.headers["x-job-id"]) == 32 and r.headers["x-model"] == "candy"
    for header in ("x-queue-wait-ms", "x-compute-ms", "x-total-ms", "x-batch-size", "server-timing"):
        assert header in r.headers
    assert not np.allclose(pixels(r.content), pixels(photo()), atol=10)  # it did something

    # The same request as a multipart upload (field `file`), a JPEG: the output follows the input's format.
    r = client.post("/stylize", params={"style": "mosaic"},
                    files={"file": ("photo.jpg", photo(fmt="JPEG"), "image/jpeg")})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/jpeg" and decode(r.content).format == "JPEG"
    assert decode(r.content).size == (W, H)


def test_upscale_x4_returns_four_times_the_size(client: TestClient) -> None:
    src = photo()
    r = post_image(client, "/upscale", src, factor=4)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    assert decode(r.content).size == (4 * W, 4 * H)

    # loss=pixel selects the pixel-loss baseline: another network, the same size.
    pixel = post_image(client, "/upscale", src, factor=4, loss="pixel")
    assert pixel.status_code == 200, pixel.text
    assert decode(pixel.content).size == (4 * W, 4 * H)
    assert (r.headers["X-Model"], pixel.headers["X-Model"]) == ("sr_x4", "sr_x4_pixel")
    assert np.abs(np.asarray(decode(pixel.content), float) - np.asarray(decode(r.content), float)).mean() > 1


def test_format_quality_and_max_side(client: TestClient) -> None:
    src = photo()
    webp = post_image(client, "/stylize", src, style="wave", format="webp")
    assert webp.status_code == 200 and webp.headers["content-type"] == "image/webp"
    assert decode(webp.content).format == "WEBP"

    low = post_image(client, "/stylize", src, style="wave", format="jpeg", quality=5)
    high = post_image(client, "/stylize", src, style="wave", format="jpg", quality=100)
    assert low.headers["content-type"] == high.headers["content-type"] == "image/jpeg"
    assert len(low.content) < len(high.content)

    small = post_image(client, "/stylize", src, style="wave", max_side=20)
    assert decode(small.content).size == (20, 16)
    up = post_image(client, "/upscale", src, factor=4, max_side=20)
    assert decode(up.content).size == (80, 64)


def test_strength_and_preserve_color(client: TestClient) -> None:
    src = photo(seed=3)
    original = pixels(src)
    none = post_image(client, "/stylize", src, style="starry_night", strength=0)
    assert none.status_code == 200
    assert np.array_equal(pixels(none.content), original)  # strength 0: the input itself

    full = pixels(post_image(client, "/stylize", src, style="starry_night").content)
    half = pixels(post_image(client, "/stylize", src, style="starry_night", strength=0.5).content)
    assert np.abs(half - (full + original) / 2).max() <= 1.0

    def chroma(rgb: np.ndarray) -> np.ndarray:
        r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
        return np.stack([-0.168736 * r - 0.331264 * g + 0.5 * b, 0.5 * r - 0.418688 * g - 0.081312 * b])

    kept = pixels(post_image(client, "/stylize", src, style="starry_night", preserve_color="true").content)
    assert np.abs(chroma(kept) - chroma(original)).mean() < 0.5 * np.abs(chroma(full) - chroma(original)).mean()


def test_histmatch_changes_the_upscaled_image(client: TestClient) -> None:
    src = photo(seed=5)
    plain = post_image(client, "/upscale", src, factor=4)
    matched = post_image(client, "/upscale", src, factor=4, histmatch="true")
    assert plain.status_code == matched.status_code == 200
    assert decode(matched.content).size == (4 * W, 4 * H)
    assert not np.array_equal(pixels(plain.content), pixels(matched.content))


def test_async_job_then_poll_and_fetch(client: TestClient) -> None:
    r = post_image(client, "/stylize", photo(), style="udnie", **{"async": "true"})
    assert r.status_code == 202, r.text
    job = r.json()
    assert r.headers["location"] == f"/jobs/{job['id']}"
    assert job["status"] in ("queued", "running", "done") and job["model"] == "udnie"

    done = wait_until(lambda: (s := client.get(r.headers["location"]).json())["status"] == "done" and s)
    assert done["result_url"] == f"/jobs/{job['id']}/result"
    assert done["compute_ms"] > 0 and done["batch_size"] >= 1 and done["queue_wait_ms"] >= 0
    assert done["attempts"] == 1 and done["error"] is None and done["position"] is None

    result = client.get(done["result_url"])
    assert result.status_code == 200 and result.headers["content-type"] == "image/png"
    assert decode(result.content).size == (W, H) and result.headers["x-job-id"] == job["id"]

    assert_error(client.get("/jobs/0123456789abcdef0123456789abcdef"), 404, "no job")
    assert_error(client.get("/jobs/not-a-job/result"), 404, "no job")


# ---------------------------------------------------------------------------------------------------------------
# Bad requests: a clear status and message each, and the service carries on


BAD = [
    ("empty body", "/stylize", {"style": "candy"}, b"", "image/png", 400, "empty"),
    ("garbage bytes declared as PNG", "/stylize", {"style": "candy"}, b"\x00garbage" * 50, "image/png", 400,
     "decodable"),
    ("garbage bytes, no image type", "/stylize", {"style": "candy"}, b"\x00garbage" * 50, "application/octet-stream",
     415, "unsupported"),
    ("truncated PNG", "/stylize", {"style": "candy"}, photo()[:200], "image/png", 400, "truncated"),
    ("text/plain body", "/stylize", {"style": "candy"}, b"hello", "text/plain", 415, "content-type"),
    ("JSON body", "/upscale", {"factor": 4}, b'{"image": 1}', "application/json", 415, "content-type"),
    ("oversize body", "/stylize", {"style": "candy"}, b"\x89PNG" + bytes(LIMITS["max_upload_bytes"]), "image/png",
     413, "limit"),
    ("pixel bomb header", "/stylize", {"style": "candy"}, png_header(30_000, 30_000), "image/png", 413, "pixels"),
    ("output too large", "/upscale", {"factor": 8}, photo(100, 80), "image/png", 413, "max_side"),
    ("unknown style", "/stylize", {"style": "van_gogh"}, photo(), "image/png", 404, "candy"),
    ("path-like style", "/stylize", {"style": "../sr_x4"}, photo(), "image/png", 404, "known styles"),
    ("missing style", "/stylize", {}, photo(), "image/png", 422, "style"),
    ("factor 3", "/upscale", {"factor": 3}, photo(), "image/png", 404, "available factors: 4, 8 (loss=feat); 4, 8 "
     "(loss=pixel)"),
    ("loss l1", "/upscale", {"factor": 4, "loss": "l1"}, photo(), "image/png", 422, "loss"),
    ("strength 2", "/stylize", {"style": "candy", "strength": 2}, photo(), "image/png", 422, "strength"),
    ("quality 0", "/stylize", {"style": "candy", "quality": 0}, photo(), "image/png", 422, "quality"),
    ("format gif", "/stylize", {"style": "candy", "format": "gif"}, photo(), "image/png", 422, "format"),
    ("max_side 0", "/upscale", {"factor": 4, "max_side": 0}, photo(), "image/png", 422, "max_side"),
    ("wait over the maximum", "/stylize", {"style": "candy", "wait": 10_000}, photo(), "image/png", 422, "wait"),
    ("async not a boolean", "/stylize", {"style": "candy", "async": "maybe"}, photo(), "image/png", 422, "async"),
]


@pytest.mark.parametrize(("path", "params", "data", "content_type", "status", "word"),
                         [case[1:] for case in BAD], ids=[case[0] for case in BAD])
def test_bad_requests(client: TestClient, path: str, params: dict[str, Any], data: bytes, content_type: str,
                      status: int, word: str) -> None:
    assert_error(post_image(client, path, data, content_type, **params), status, word)


def test_service_survives_bad_requests(client: TestClient) -> None:
    for _, path, params, data, content_type, _, _ in BAD:
        post_image(client, path, data, content_type, **params)
    assert_error(client.post("/stylize", params={"style": "candy"}, files={"image": ("x.png", photo())}), 400,
                 "'file'")
    # Content-Length is checked before the body is read.
    r = client.post("/stylize", params={"style": "candy"}, content=iter([b"x" * 10]),
                    headers={"Content-Type": "image/png", "Content-Length": str(10**9)})
    assert_error(r, 413, "limit")
    # No Content-Length (chunked): refused while reading, once past the limit.
    r = client.post("/stylize", params={"style": "candy"}, content=iter([bytes(LIMITS["max_upload_bytes"]), b"x"]),
                    headers={"Content-Type": "image/png"})
    assert_error(r, 413, "limit")
    big = ("big.png", b"\x89PNG" + bytes(LIMITS["max_upload_bytes"]), "image/png")
    assert_error(client.post("/upscale", files={"file": big}), 413, "limit")
    assert client.get("/healthz").json()["status"] == "ok"
    assert client.get("/readyz").status_code == 200
    r = post_image(client, "/stylize", photo(), style="candy")
    assert r.status_code == 200 and decode(r.content).size == (W, H)


def test_unknown_route_and_method_are_json(client: TestClient) -> None:
    assert_error(client.get("/nope"), 404)
    assert_error(client.get("/stylize"), 405)


# ---------------------------------------------------------------------------------------------------------------
# Jobs that do not finish, fail or get cancelled (no worker: the test moves them)


def test_sync_request_times_out_into_a_job(idle: tuple[TestClient, MemoryQueue]) -> None:
    client, queue = idle
    start = time.monotonic()
    r = post_image(client, "/stylize", photo(), style="candy", wait=0.3)
    assert r.status_code == 202, r.text
    assert 0.25 <= time.monotonic() - start < 5
    assert r.json()["status"] == "queued" and r.json()["position"] == 0
    job_id = r.json()["id"]
    assert r.headers["location"] == f"/jobs/{job_id}"
    pending = client.get(f"/jobs/{job_id}/result")
    assert pending.status_code == 202 and pending.json()["status"] == "queued" and "retry-after" in pending.headers

    # Queue full: 503 with Retry-After.
    assert post_image(client, "/upscale", photo(), factor=4, **{"async": "true"}).status_code == 202
    full = post_image(client, "/stylize", photo(), style="candy", **{"async": "true"})
    assert_error(full, 503, "busy")
    assert int(full.headers["retry-after"]) > 0

    # No worker: not ready, with the reason.
    ready = client.get("/readyz")
    assert ready.status_code == 503 and "worker" in ready.json()["detail"]


def test_failed_and_cancelled_jobs(idle: tuple[TestClient, MemoryQueue]) -> None:
    client, queue = idle
    ids = [post_image(client, "/stylize", photo(), style="candy", **{"async": "true"}).json()["id"] for _ in range(2)]
    bad_input, broken = queue.reserve("test", 2, 0)
    queue.fail(bad_input, "could not read the image: cannot identify image", retry=False, status=422)
    queue.fail(broken, "inference failed: CUDA out of memory", retry=False, status=503)
    assert_error(client.get(f"/jobs/{ids[0]}/result"), 422, "could not read")
    r = client.get(f"/jobs/{ids[1]}/result")
    assert_error(r, 503, "inference failed")
    assert "retry-after" in r.headers
    assert client.get(f"/jobs/{ids[1]}").json()["status"] == "failed"

    job_id = post_image(client, "/stylize", photo(), style="candy", **{"async": "true"}).json()["id"]
    assert_error(client.post(f"/admin/jobs/{job_id}/cancel"), 401)
    auth = {"Authorization": f"Bearer {KEY}"}
    cancelled = client.post(f"/admin/jobs/{job_id}/cancel", headers=auth)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert_error(client.post(f"/admin/jobs/{job_id}/cancel", headers=auth), 409, "already ended")
    assert_error(client.post(f"/admin/jobs/{'f' * 32}/cancel", headers=auth), 404)
    assert_error(client.get(f"/jobs/{job_id}/result"), 410, "cancelled")
    listed = client.get("/admin/jobs", headers=auth)
    assert listed.status_code == 200 and [j["id"] for j in listed.json()][:1] == [job_id]


def test_internal_errors_are_json(idle: tuple[TestClient, MemoryQueue], monkeypatch: pytest.MonkeyPatch) -> None:
    client, queue = idle

    def broken(*args: Any) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(queue, "status", broken)
    assert_error(client.get(f"/jobs/{'a' * 32}"), 500, "internal error")
    assert "percept_http_requests_total" in client.get("/metrics").text


def test_unreachable_redis_is_503() -> None:
    settings = ServiceSettings().model_copy(update={"redis_url": "redis://127.0.0.1:1/0", "retry_after_s": 7})
    with TestClient(create_app(settings)) as c:
        ready = c.get("/readyz")
        assert ready.status_code == 503 and "queue" in ready.json()["detail"]
        r = post_image(c, "/stylize", photo(), style="candy")
        assert_error(r, 503, "queue is unavailable")
        assert r.headers["retry-after"] == "7"
        assert_error(c.get(f"/jobs/{'b' * 32}"), 503, "queue")
        assert "percept_queue_up 0.0" in c.get("/metrics").text
        assert c.get("/healthz").status_code == 200


def test_job_failure_mapping() -> None:
    settings = ServiceSettings()
    rec = {"id": "x", "status": "failed", "model": "candy", "params": JobParams(), "created_at": 0.0}
    # The worker records the status: 4xx when the input was at fault, 503 when the service was.
    assert job_failure(JobRecord(**rec, error="truncated", error_status=400), settings).status_code == 400
    assert job_failure(JobRecord(**rec, error="x", error_status=413), settings).status_code == 413
    for record in ({"error": "inference failed: boom", "error_status": 503}, {"error": "no status recorded"}):
        e = job_failure(JobRecord(**rec, **record), settings)
        assert e.status_code == 503 and e.headers and "Retry-After" in e.headers
    assert job_failure(JobRecord(**{**rec, "status": "cancelled", "error": "by an admin"}), settings).status_code == 410


# ---------------------------------------------------------------------------------------------------------------
# Models, styles, probes, metrics, OpenAPI


def test_models_and_styles(client: TestClient) -> None:
    models = {m["name"]: m for m in client.get("/models").json()}
    assert {"candy", "mosaic", "muse", "starry_night", "udnie", "wave", "sr_x4", "sr_x8"} <= set(models)
    assert models["sr_x8"]["kind"] == "sr" and models["sr_x8"]["factor"] == 8
    assert [models[n]["loss"] for n in ("sr_x4", "sr_x4_pixel", "muse")] == ["feat", "pixel", None]
    assert models["candy"]["version"] in models["candy"]["versions"]
    assert models["candy"]["serving_versions"] == [models["candy"]["version"]]
    assert models["candy"]["training"]["iterations"] > 0

    styles = client.get("/styles").json()
    assert {s["name"] for s in styles} == {"candy", "mosaic", "muse", "starry_night", "udnie", "wave"}
    thumb = client.get(styles[0]["thumbnail_url"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    im = decode(thumb.content)
    assert im.format == "JPEG" and max(im.size) <= 256
    assert client.get(styles[0]["thumbnail_url"]).content == thumb.content  # cached, identical
    assert_error(client.get("/styles/sr_x4/thumbnail"), 404)
    assert_error(client.get("/styles/nope/thumbnail"), 404)


def test_probes_and_metrics(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok", "detail": None, "mode": "embedded",
                                             "queue_depth": None, "workers": None, "backends": None}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready" and ready.json()["workers"] == 1

    post_image(client, "/stylize", photo(), style="candy")
    client.get(f"/jobs/{'0' * 32}")
    text = client.get("/metrics").text
    assert 'percept_http_requests_total{method="POST",route="/stylize",status="200"}' in text
    assert 'route="/jobs/{job_id}",status="404"' in text  # the template, not the raw path
    assert "0" * 32 not in text
    assert "percept_queue_depth 0.0" in text and "percept_queue_up 1.0" in text
    assert 'percept_queue_wait_seconds_count{model="candy"}' in text
    assert "percept_worker_jobs_done_total{worker=" in text
    assert "percept_worker_batch_size_mean{worker=" in text
    assert "percept_workers_live 1.0" in text


def test_openapi_schema(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert spec["openapi"].startswith("3.") and spec["info"]["title"] == "percept"
    paths = spec["paths"]
    for path in ("/stylize", "/upscale", "/jobs/{job_id}", "/jobs/{job_id}/result", "/styles",
                 "/styles/{name}/thumbnail", "/models", "/healthz", "/readyz", "/metrics",
                 "/admin/models/{name}/default", "/admin/models/{name}/versions/{version}",
                 "/admin/models/{name}/publish", "/admin/jobs", "/admin/jobs/{job_id}/cancel"):
        assert path in paths, path
    stylize = paths["/stylize"]["post"]
    names = {p["name"] for p in stylize["parameters"]}
    assert {"style", "format", "quality", "max_side", "strength", "preserve_color", "wait", "async"} <= names
    assert {"image/*", "multipart/form-data"} <= set(stylize["requestBody"]["content"])
    assert {"200", "202", "404", "413", "415", "422", "503"} <= set(stylize["responses"])
    schemas = spec["components"]["schemas"]
    assert {"JobStatus", "ModelInfo", "Health", "Error"} <= set(schemas)
    # PublicKey only when PERCEPT_PUBLIC_API_KEY is set (tests/test_schema.py): not claimed when not enforced.
    assert set(spec["components"]["securitySchemes"]) == {"AdminKey"} and "security" not in stylize

    def refs(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "$ref":
                    yield v
                else:
                    yield from refs(v)
        elif isinstance(node, list):
            for v in node:
                yield from refs(v)

    for ref in refs(spec):  # every reference resolves
        assert ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[1] in schemas, ref
    for path, ops in paths.items():
        for method, op in ops.items():
            assert method in ("get", "post", "delete") and op["responses"], (path, method)
            assert all(set(r) <= {"description", "content", "headers"} for r in op["responses"].values())
    json.dumps(spec)


# ---------------------------------------------------------------------------------------------------------------
# Keys


def test_admin_requires_the_key(client: TestClient) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"}):
        assert_error(client.get("/admin/jobs", headers=headers), 401)
        assert_error(client.post("/admin/models/candy/default", json={"version": 1}, headers=headers), 401)
        assert_error(client.delete("/admin/models/candy/versions/1", headers=headers), 401)
    assert client.get("/admin/jobs", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    workers = client.get("/admin/workers", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert len(workers) == 1 and workers[0]["ready"] and "candy" in workers[0]["models"]


def test_keys_disabled_and_public() -> None:
    with TestClient(create_app(ServiceSettings(), start_worker=False)) as c:
        assert_error(c.get("/admin/jobs", headers={"Authorization": "Bearer x"}), 403, "PERCEPT_API_KEY")
    settings = ServiceSettings(api_key=KEY, public_api_key="public")
    with TestClient(create_app(settings, start_worker=False)) as c:
        assert_error(c.get("/models"), 401)
        assert_error(post_image(c, "/stylize", photo(), style="candy"), 401)
        assert_error(c.get("/styles", headers={"Authorization": "Bearer nope"}), 401)
        assert c.get("/models", headers={"X-API-Key": "public"}).status_code == 200
        assert c.get("/styles", headers={"Authorization": "Bearer public"}).status_code == 200
        assert c.get("/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
        assert c.get("/healthz").status_code == 200 and c.get("/metrics").status_code == 200
        assert_error(c.get("/admin/jobs", headers={"Authorization": "Bearer public"}), 401)


# ---------------------------------------------------------------------------------------------------------------
# Model management without a restart


def _tiny_style(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_network(NetworkConfig(kind="style", preset="modern", width=0.25)).eval()


def _checkpoint(config: NetworkConfig, task: str) -> bytes:
    """A training checkpoint as percept's trainer writes it (see trainer.train._save_checkpoint)."""
    from trainer.train import TrainConfig

    torch.manual_seed(7)
    net = build_network(config)
    cfg = TrainConfig(task=task, name="uploaded", data="synthetic", width=config.width, factor=config.factor,
                      iterations=3, style_image="style.png" if task == "style" else None)
    buf = io.BytesIO()
    torch.save({"model": net.state_dict(), "optimizer": {}, "scaler": None, "iteration": 3,
                "config": json.dumps(cfg.to_dict()), "network": json.dumps(config.to_dict()),
                "extra": json.dumps({"losses": {"total": 1.0}})}, buf)
    return buf.getvalue()


def test_admin_models_served_without_restart(tmp_store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    style_png = io.BytesIO()
    Image.new("RGB", (64, 48), (30, 90, 200)).save(style_png, "PNG")
    store.publish("tiny", _tiny_style(1), {"iterations": 1}, extra_files={store.STYLE_FILE: style_png.getvalue()})
    for name, value in (("RELOAD_INTERVAL_S", "0.2"), ("HEARTBEAT_S", "0.2"), ("WARMUP_SIZES", "")):
        monkeypatch.setenv(f"PERCEPT_{name}", value)
    auth = {"Authorization": f"Bearer {KEY}"}
    src = photo(seed=9)

    def tiny() -> dict[str, Any]:
        return next(m for m in client.get("/models").json() if m["name"] == "tiny")

    def serving(version: int) -> None:
        wait_until(lambda: tiny()["serving_versions"] == [version] and tiny()["version"] == version)

    def run() -> np.ndarray:
        r = post_image(client, "/stylize", src, style="tiny")
        assert r.status_code == 200, r.text
        return pixels(r.content)

    with TestClient(create_app(ServiceSettings(api_key=KEY))) as client:
        wait_ready(client)
        assert tiny()["thumbnail_url"] == "/styles/tiny/thumbnail"
        assert decode(client.get("/styles/tiny/thumbnail").content).size == (64, 48)
        serving(1)
        first = run()

        store.publish("tiny", _tiny_style(2))  # a new version appears in the store: served without a restart
        serving(2)
        second = run()
        assert not np.array_equal(first, second)

        # Pin version 1 again, then delete version 2.
        assert_error(client.post("/admin/models/tiny/default", json={"version": 1}), 401)
        r = client.post("/admin/models/tiny/default", json={"version": 1}, headers=auth)
        assert r.status_code == 200 and r.json()["version"] == 1 and r.json()["versions"] == [1, 2]
        serving(1)
        assert np.array_equal(run(), first)
        assert_error(client.post("/admin/models/tiny/default", json={"version": 9}, headers=auth), 404, "version")
        assert_error(client.post("/admin/models/nope/default", json={"version": None}, headers=auth), 404)
        assert_error(client.post("/admin/models/tiny/default", json={"version": "x"}, headers=auth), 422)

        assert_error(client.delete("/admin/models/tiny/versions/2"), 401)
        r = client.delete("/admin/models/tiny/versions/2", headers=auth)
        assert r.status_code == 200 and r.json()["versions"] == [1]
        assert_error(client.delete("/admin/models/tiny/versions/2", headers=auth), 404)
        assert_error(client.delete("/admin/models/tiny/versions/1", headers=auth), 409, "only version")
        assert tiny()["versions"] == [1]

        # Publish a checkpoint upload: a new version of a style, a new SR factor; refusals.
        style_ckpt = _checkpoint(NetworkConfig(kind="style", preset="modern", width=0.25), "style")
        assert_error(client.post("/admin/models/tiny/publish", files={"file": ("c.pt", style_ckpt)}), 401)
        r = client.post("/admin/models/tiny/publish", files={"file": ("c.pt", style_ckpt)}, headers=auth)
        assert r.status_code == 201, r.text
        assert r.json()["published_version"] == 2 and r.json()["versions"] == [1, 2]
        assert r.json()["version"] == 1  # still pinned
        assert store.get("tiny", 2).manifest["training"]["iterations"] == 3
        r = client.post("/admin/models/tiny/default", json={"version": None}, headers=auth)
        assert r.status_code == 200 and r.json()["version"] == 2
        serving(2)
        assert run().shape == (H, W, 3)

        sr_ckpt = _checkpoint(NetworkConfig(kind="sr", preset="modern", width=0.25, factor=2), "sr")
        assert_error(client.post("/admin/models/tiny/publish", files={"file": ("c.pt", sr_ckpt)}, headers=auth),
                     409, "factor")
        r = client.post("/admin/models/sr_x2/publish", content=sr_ckpt, headers=auth)
        assert r.status_code == 201 and r.json()["kind"] == "sr" and r.json()["factor"] == 2
        up = post_image(client, "/upscale", src, factor=2)
        assert up.status_code == 200 and decode(up.content).size == (2 * W, 2 * H)

        assert_error(client.post("/admin/models/tiny/publish", files={"file": ("c.pt", b"not a checkpoint")},
                                 headers=auth), 400, "checkpoint")
        assert_error(client.post("/admin/models/Bad.Name/publish", content=style_ckpt, headers=auth), 422, "name")
        assert_error(client.post("/admin/models/tiny/publish", content=b"", headers=auth), 400, "empty")


# ---------------------------------------------------------------------------------------------------------------
# Redis mode: the API only enqueues; a separate worker (here a thread on its own connection) does the work.
# Redis is conftest's private server (`redis_db`: emptied before the test), never one the tests did not start.


def test_redis_mode_api_and_worker(redis_db: str) -> None:
    import threading

    from worker.redis_queue import RedisQueue
    from worker.runner import Worker
    from worker.settings import WorkerSettings

    stop = threading.Event()
    thread = None
    try:
        app = create_app(ServiceSettings(api_key=KEY, queue_max=8).model_copy(update={"redis_url": redis_db}))
        with TestClient(app) as client:
            assert client.get("/healthz").json()["mode"] == "redis"
            not_ready = client.get("/readyz")
            assert not_ready.status_code == 503 and "no live worker" in not_ready.json()["detail"]
            queued = post_image(client, "/stylize", photo(), style="muse", **{"async": "true"})
            assert queued.status_code == 202 and queued.json()["position"] == 0

            worker = Worker(RedisQueue(redis_db), WorkerSettings(warmup_sizes="", heartbeat_s=0.2, device="cpu"))
            thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
            thread.start()
            wait_ready(client)
            done = wait_until(lambda: (s := client.get(queued.headers["location"]).json())["status"] == "done" and s)
            assert decode(client.get(done["result_url"]).content).size == (W, H)
            r = post_image(client, "/upscale", photo(), factor=4, format="webp")
            assert r.status_code == 200 and r.headers["content-type"] == "image/webp"
            assert decode(r.content).size == (4 * W, 4 * H)
            assert "percept_workers_live 1.0" in client.get("/metrics").text
    finally:
        stop.set()
        if thread is not None:
            thread.join(10)


def test_stylize_serves_the_newest_muse(client: TestClient) -> None:
    """A fresh clone serves muse v2 (the balanced recipe); v1 stays in the store for comparison."""
    from imaging.tensors import to_tensor
    from model_store.pipeline import run

    info = next(m for m in client.get("/models").json() if m["name"] == "muse")
    assert info["version"] == max(info["versions"]) >= 2 and 1 in info["versions"]
    assert info["training"]["recipe"] == "balanced"
    r = post_image(client, "/stylize", photo(), style="muse")
    assert r.status_code == 200, r.text
    x = to_tensor(decode(photo()))
    served = pixels(r.content).astype(np.float32)
    for version, close in ((info["version"], True), (1, False)):
        expected = run(store.load("muse", version)[0], x)[0].permute(1, 2, 0).round().numpy()
        assert bool(np.abs(served - expected).mean() < 1.0) is close, version
