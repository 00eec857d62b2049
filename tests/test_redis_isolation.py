"""The Redis tests own their Redis: conftest's server is a child of this session, never one on 6379."""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urlsplit

TESTS = Path(__file__).resolve().parent


def test_the_fixture_server_is_ours(redis_server, redis_url):
    parts = urlsplit(redis_url)
    assert parts.hostname == "127.0.0.1" and parts.port == redis_server.port != 6379
    r = redis_server.client()
    try:
        info = r.info("server")
        # The server answering on that port is the process the fixture started, listening where it says.
        assert info["process_id"] == redis_server.proc.pid
        assert info["tcp_port"] == parts.port
        # Nothing it holds can reach the disk.
        assert r.config_get("save") == {"save": ""} and r.config_get("appendonly") == {"appendonly": "no"}
        assert Path(r.config_get("dir")["dir"]).resolve() == redis_server.workdir.resolve()
    finally:
        r.close()


def test_a_shell_redis_url_is_not_inherited():
    assert "REDIS_URL" not in os.environ and "PERCEPT_REDIS_URL" not in os.environ


def test_no_test_names_a_local_redis_port():
    """The tests reach Redis only through the fixtures: no hard-coded local server."""
    pattern = re.compile(r"(127\.0\.0\.1|localhost):" + "63" + "79")
    offenders = [f"{p.name}:{n}" for p in sorted(TESTS.glob("*.py"))
                 for n, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert offenders == []


def test_restart_comes_back_empty_on_the_same_port(fresh_redis_server):
    """The helper fault tests use: a killed or stopped server restarts at the same URL with no data."""
    url = fresh_redis_server.url
    r = fresh_redis_server.client()
    r.set("k", "v")
    fresh_redis_server.kill()
    assert not fresh_redis_server.running
    fresh_redis_server.start()
    assert fresh_redis_server.url == url and r.get("k") is None  # redis-py reconnects
    r.set("k", "v")
    fresh_redis_server.stop()
    fresh_redis_server.start()
    assert r.dbsize() == 0
    r.close()


def test_redis_db_starts_empty(redis_db, redis_server):
    r = redis_server.client()
    try:
        assert r.dbsize() == 0
        r.set("left-behind", "1")  # the next test's redis_db flushes it
    finally:
        r.close()
