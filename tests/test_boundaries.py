"""What the import contracts (`lint-imports`, [tool.importlinter] in pyproject.toml) cannot see: which modules a
process really loads at import time. The API process must start without torch so that its image can drop it."""

from __future__ import annotations

import subprocess
import sys

import pytest


def loaded_after(code: str) -> set[str]:
    probe = f"import sys; {code}; print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    return set(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split())


def test_the_api_starts_without_torch() -> None:
    from_api = loaded_after("from service.app import create_app; from service.settings import ServiceSettings; "
                            "create_app(ServiceSettings(redis_url='redis://127.0.0.1:1/0'))")
    assert "fastapi" in from_api  # the probe did import the app
    assert not {"torch", "torchvision", "trainer"} & from_api


@pytest.mark.parametrize("module", ["imaging.codec", "model_store.store", "model_store.options", "worker.queue",
                                    "worker.memory_queue", "worker.redis_queue"])
def test_leaves_the_api_uses_load_no_torch(module: str) -> None:
    assert "torch" not in loaded_after(f"import {module}")
