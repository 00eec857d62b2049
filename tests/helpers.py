"""Small helpers several test modules share (imported as `helpers`: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_until(check: Callable[[], Any], timeout: float = 20.0, what: str = "the condition",
               every: float = 0.05) -> Any:
    """Poll `check` until it returns something truthy (returned), or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (bind to port 0)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_serve(port: int, *args: str, env: dict[str, str], ready: str = "/healthz", timeout: float = 60.0,
                log: Any = None) -> Any:
    """`percept serve --port PORT ARGS...` in a subprocess, returned once GET `ready` answers 200.

    Its output goes to `log` (an open file) or nowhere; a server that exits or is not ready within `timeout` fails
    the test with the log's tail when there is one."""
    import subprocess
    import sys
    import urllib.error
    import urllib.request

    import pytest

    out = log if log is not None else subprocess.DEVNULL
    proc = subprocess.Popen([sys.executable, "-m", "percept.cli", "serve", "--port", str(port),
                             "--log-level", "warning", *args], env=env, stdout=out, stderr=subprocess.STDOUT)

    def tail() -> str:
        if log is None:
            return ""
        log.flush()
        with open(log.name, errors="replace") as f:
            return ":\n" + f.read()[-4000:]

    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            pytest.fail(f"percept serve exited with {proc.returncode}{tail()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{ready}", timeout=2) as r:
                if r.status == 200:
                    return proc
        except (OSError, urllib.error.URLError):
            pass
        if time.monotonic() > deadline:
            stop(proc)
            pytest.fail(f"percept serve not ready on {ready} within {timeout:.0f} s{tail()}")
        time.sleep(0.2)


def stop(proc: Any, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL when the process has not exited within `timeout` seconds."""
    import subprocess

    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
