"""Training as RQ jobs: `percept train ... --queue` enqueues a run on Redis for an RQ worker to execute.

RQ fits here: one training run is one long job. Progress (iteration, losses, it/s) goes into the job's meta,
where `rq info`, rq-dashboard and `percept train status JOB_ID` show it. Run a worker with
``rq worker percept-training --url $REDIS_URL`` on a machine that has the data and a GPU.
"""

from __future__ import annotations

from typing import Any

QUEUE_NAME = "percept-training"


def run_training(config: dict[str, Any], resume: str | None = None) -> dict[str, Any]:
    """The RQ job: train, recording progress in the job's meta."""
    from rq import get_current_job

    from trainer.train import TrainConfig, train

    job = get_current_job()

    def report(record: dict[str, Any]) -> None:
        if job is not None:
            job.meta["progress"] = record
            job.save_meta()

    return train(TrainConfig.from_dict(config), resume=resume, on_log=report)


def enqueue(config: dict[str, Any], redis_url: str, resume: str | None = None) -> str:
    from redis import Redis
    from rq import Queue

    queue = Queue(QUEUE_NAME, connection=Redis.from_url(redis_url))
    # No RQ timeout: a paper-length run takes hours; Ctrl-C / SIGTERM of the worker still checkpoints.
    job = queue.enqueue(run_training, config, resume, job_timeout=-1, result_ttl=7 * 86400,
                        description=f"train {config['task']} {config['name']}")
    return job.id


def status(job_id: str, redis_url: str) -> dict[str, Any]:
    from redis import Redis
    from rq.job import Job

    job = Job.fetch(job_id, connection=Redis.from_url(redis_url))
    return {"id": job.id, "status": job.get_status(refresh=True), "description": job.description,
            "progress": job.meta.get("progress"), "result": job.return_value(),
            "error": (job.latest_result().exc_string if job.is_failed and job.latest_result() else None)}
