"""`percept train ... --queue`: a training run as an RQ job on a real Redis (conftest's private server), progress in
the job's meta."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from trainer import jobs


@pytest.fixture
def redis_conn(redis_db):
    from redis import Redis

    conn = Redis.from_url(redis_db)
    yield conn
    conn.close()


def test_queued_training_runs_in_an_rq_worker(redis_db, redis_conn, tmp_path):
    from rq import Queue, SimpleWorker

    data = tmp_path / "data"
    data.mkdir()
    for i in range(4):
        buf = io.BytesIO()
        Image.effect_noise((48, 40), 30 + i).convert("RGB").save(buf, "PNG")
        (data / f"{i}.png").write_bytes(buf.getvalue())
    config = {"task": "sr", "name": "queued", "factor": 4, "loss": "pixel", "data": str(data), "iterations": 4,
              "batch_size": 2, "image_size": 32, "width": 0.25, "workers": 0, "val_images": 0, "log_every": 1,
              "preview_every": 0, "checkpoint_every": 0, "run_dir": str(tmp_path / "run"), "random_vgg": True}
    job_id = jobs.enqueue(config, redis_db)
    assert jobs.status(job_id, redis_db)["status"] == "queued"
    # SimpleWorker runs the job in this process (no fork), as a GPU training worker would.
    SimpleWorker([Queue(jobs.QUEUE_NAME, connection=redis_conn)], connection=redis_conn).work(burst=True)
    st = jobs.status(job_id, redis_db)
    assert st["status"] == "finished", st["error"]
    assert st["progress"]["iteration"] == 4 and st["progress"]["total_iterations"] == 4
    assert st["result"]["iteration"] == 4
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()
