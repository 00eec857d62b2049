"""Video uploads through the API and a worker: always a 202 job with progress in frames, the H.264 result with the
audio copied, each limit a clear 4xx, a truncated clip refused with the service still healthy, cancellation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import av
import pytest
from fastapi.testclient import TestClient
from test_video import PTS, audio_packets, make_clip, video_pts_seconds

from service.app import create_app
from service.settings import ServiceSettings
from worker.memory_queue import MemoryQueue
from worker.queue import JobQueue
from worker.redis_queue import RedisQueue
from worker.runner import Worker
from worker.settings import WorkerSettings

MP4 = {"Content-Type": "video/mp4"}


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_clip(tmp_path_factory.mktemp("clips") / "in.mp4", pts=PTS[:10])


def service(queue: JobQueue | None = None, **limits) -> tuple[TestClient, JobQueue]:
    queue = queue or MemoryQueue()
    return TestClient(create_app(ServiceSettings(**limits), queue=queue, start_worker=False)), queue


@pytest.fixture(params=["memory", "redis"])
def api(request: pytest.FixtureRequest, tmp_store: Path) -> Iterator[tuple[TestClient, JobQueue, Worker]]:
    """The service and a worker the test steps, on either queue (the clip's bytes and result travel through it)."""
    queue = RedisQueue(request.getfixturevalue("redis_db"), ttl_s=60) if request.param == "redis" else None
    client, queue = service(queue)
    worker = Worker(queue, WorkerSettings(device="cpu", warmup_sizes="", max_batch_delay_ms=1))
    worker.ready = True
    with client:
        yield client, queue, worker


def test_video_job_gives_the_clip_with_its_audio(api, clip: Path, tmp_path: Path) -> None:
    client, queue, worker = api
    seen: list[tuple[int, int]] = []
    real = queue.progress

    def spy(job_id: str, done: int, total: int) -> bool:
        seen.append((done, total))
        return real(job_id, done, total)

    queue.progress = spy
    r = client.post("/stylize?style=muse&wait=30", content=clip.read_bytes(), headers=MP4)
    assert r.status_code == 202  # even when asked to wait: a clip is minutes of work
    job_id = r.json()["id"]
    assert r.headers["Location"] == f"/jobs/{job_id}"
    assert worker.step(first_wait_ms=100) == 0  # the clip ran inside the step, outside the image batches
    assert seen[-1] == (10, 10) and seen[0][0] == 4  # frames done of the total, batch by batch
    assert client.get(f"/jobs/{job_id}").json()["status"] == "done"
    result = client.get(f"/jobs/{job_id}/result")
    assert result.status_code == 200
    assert result.headers["content-type"] == "video/mp4"
    assert result.headers["content-disposition"].endswith('.mp4"')
    out = tmp_path / "out.mp4"
    out.write_bytes(result.content)
    assert video_pts_seconds(out) == pytest.approx(video_pts_seconds(clip), abs=1e-3)
    assert audio_packets(out) == audio_packets(clip)


def test_upscale_video_job(api, tmp_path: Path) -> None:
    client, _, worker = api
    small = make_clip(tmp_path / "small.mkv", width=16, height=12, pts=PTS[:3], audio=False)
    r = client.post("/upscale?factor=4", content=small.read_bytes(), headers={"Content-Type": "video/x-matroska"})
    assert r.status_code == 202
    worker.step(first_wait_ms=100)
    result = client.get(f"/jobs/{r.json()['id']}/result")
    assert result.status_code == 200
    (tmp_path / "big.mp4").write_bytes(result.content)
    with av.open(str(tmp_path / "big.mp4")) as c:
        assert (c.streams.video[0].width, c.streams.video[0].height) == (64, 48)


def test_truncated_clip_is_a_4xx_and_the_service_stays_healthy(api, clip: Path) -> None:
    client, queue, _ = api
    data = clip.read_bytes()
    for bad in (data[:400], data[: len(data) // 2]):
        r = client.post("/stylize?style=muse", content=bad, headers=MP4)
        assert 400 <= r.status_code < 500, r.text
        assert r.json()["detail"]
    assert client.get("/healthz").status_code == 200
    assert client.post("/stylize?style=muse", content=data, headers=MP4).status_code == 202


@pytest.mark.parametrize(("limits", "needle"), [
    ({"max_video_bytes": 1000}, "bytes for a video"),
    ({"max_video_seconds": 0.1}, "the limit is 0.1 s"),
    ({"max_video_frame_pixels": 5 * 64 * 48}, "pixels in all"),
])
def test_video_limits_are_413(tmp_store: Path, clip: Path, limits: dict, needle: str) -> None:
    client, _ = service(**limits)
    with client:
        r = client.post("/stylize?style=muse", content=clip.read_bytes(), headers=MP4)
    assert r.status_code == 413
    assert needle in r.json()["detail"]


def test_cancelling_a_running_video_job_stops_it(api, clip: Path) -> None:
    client, queue, worker = api
    job_id = client.post("/stylize?style=muse", content=clip.read_bytes(), headers=MP4).json()["id"]
    calls = 0
    real = worker._forward

    def cancel_midway(net, x):
        nonlocal calls
        calls += 1
        if calls == 1:
            assert client.delete(f"/jobs/{job_id}").status_code == 200
        return real(net, x)

    worker._forward = cancel_midway
    worker.step(first_wait_ms=100)
    assert calls == 1  # stopped at the first batch's progress report: the later batches never ran
    assert client.get(f"/jobs/{job_id}").json()["status"] == "cancelled"
    assert client.get(f"/jobs/{job_id}/result").status_code == 410
