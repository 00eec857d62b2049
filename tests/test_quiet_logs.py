"""Quieter logs (issue 16): job polls at debug level in uvicorn's access log; the package metadata installs
without setuptools' license deprecation warning."""

from __future__ import annotations

import logging

import pytest

from service.app import QuietJobPolls, quiet_job_polls

ACCESS = '%s - "%s %s HTTP/%s" %d'


def _record(method: str, path: str, status: int) -> logging.LogRecord:
    return logging.LogRecord("test.access", logging.INFO, __file__, 1, ACCESS,
                             ("127.0.0.1:5000", method, path, "1.1", status), None)


@pytest.fixture
def access() -> logging.Logger:
    logger = logging.getLogger("test.access")
    logger.filters.clear()
    quiet_job_polls(logger)
    quiet_job_polls(logger)  # once only
    assert sum(isinstance(f, QuietJobPolls) for f in logger.filters) == 1
    return logger


def test_job_polls_are_debug_lines(access: logging.Logger, caplog: pytest.LogCaptureFixture) -> None:
    access.setLevel(logging.INFO)
    with caplog.at_level(logging.INFO, logger="test.access"):
        for method, path, status in [("GET", "/jobs/" + "a" * 32, 200), ("GET", "/jobs/" + "a" * 32 + "?x=1", 200),
                                     ("POST", "/stylize?style=muse", 202), ("GET", "/jobs/" + "b" * 32, 404),
                                     ("GET", "/jobs/" + "c" * 32 + "/result", 200), ("DELETE", "/jobs/x", 200),
                                     ("GET", "/styles", 200)]:
            access.handle(_record(method, path, status))
    logged = [(r.args[1], r.args[2].split("/")[1], r.args[4]) for r in caplog.records]
    # The polls are gone; a poll that failed, the result, a cancel and everything else stay.
    assert logged == [("POST", "stylize?style=muse", 202), ("GET", "jobs", 404), ("GET", "jobs", 200),
                      ("DELETE", "jobs", 200), ("GET", "styles", 200)]
    assert all(r.levelno == logging.INFO for r in caplog.records)


def test_job_polls_show_at_debug_level(access: logging.Logger, caplog: pytest.LogCaptureFixture) -> None:
    access.setLevel(logging.DEBUG)
    with caplog.at_level(logging.DEBUG, logger="test.access"):
        access.handle(_record("GET", "/jobs/" + "a" * 32, 200))
    [record] = caplog.records
    assert (record.levelno, record.levelname) == (logging.DEBUG, "DEBUG")
