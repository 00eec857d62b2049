"""The OpenAPI schema says what the server does (issue 14): schemathesis runs every check (status codes, content
types, headers, response schemas, positive and negative data, auth) against the embedded app, a few examples per
operation, derandomized, so that drift between the schema and the handlers fails CI. No worker runs: jobs stay
queued, and `wait` is capped low so synchronous requests answer 202 at once."""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import not_a_server_error, positive_data_acceptance
from test_service_api import KEY, assert_error, photo

from service.app import create_app
from service.settings import ServiceSettings
from worker.memory_queue import MemoryQueue

AUTH = {"Authorization": f"Bearer {KEY}"}


def _app(public_key: str | None = None):  # noqa: ANN202
    limits = dict(max_upload_bytes=60_000, max_pixels=1_000_000, max_output_pixels=300_000, default_wait_s=0.0,
                  max_wait_s=0.05)
    return create_app(ServiceSettings(api_key=KEY, public_api_key=public_key, **limits),
                      queue=MemoryQueue(max_depth=100_000), start_worker=False)


schema = schemathesis.openapi.from_asgi("/openapi.json", _app())


@pytest.fixture(autouse=True)
def _isolated_store(tmp_store: Path) -> None:
    """Admin calls (delete a version, pin a default) change a throwaway store, not the built-in models."""


@schema.parametrize()
@settings(max_examples=10, derandomize=True, deadline=None, phases=[Phase.explicit, Phase.generate],
          suppress_health_check=list(HealthCheck))
def test_schema_matches_behaviour(case: schemathesis.Case) -> None:
    excluded = []
    if case.path == "/readyz":  # no worker here: 503 "not ready" is the documented answer
        excluded.append(not_a_server_error)
    if case.method == "POST" and case.path in ("/stylize", "/upscale", "/admin/models/{name}/publish"):
        # A schema cannot tell an image or a checkpoint from other bytes: those get 400/415, documented.
        excluded.append(positive_data_acceptance)
    case.call_and_validate(headers=AUTH if case.path.startswith("/admin") else None, excluded_checks=excluded)


# The mismatches schemathesis found, one by one.


def test_public_bearer_declared_only_when_enforced() -> None:
    with TestClient(_app()) as c:
        spec = c.get("/openapi.json").json()
        assert "security" not in spec["paths"]["/stylize"]["post"]
        assert "PublicKey" not in spec.get("components", {}).get("securitySchemes", {})
        assert c.get("/styles").status_code == 200
    with TestClient(_app(public_key="pub")) as c:
        spec = c.get("/openapi.json").json()
        assert spec["paths"]["/stylize"]["post"]["security"] == [{"PublicKey": []}]
        assert spec["components"]["securitySchemes"]["PublicKey"]["scheme"] == "bearer"
        assert_error(c.get("/styles"), 401)
        assert c.get("/styles", headers={"Authorization": "Bearer pub"}).status_code == 200
        assert c.get("/styles", headers={"X-API-Key": "pub"}).status_code == 200
        assert_error(c.get("/styles", headers={"Authorization": "Bearer nope"}), 401, "invalid")


def test_wait_maximum_is_in_the_schema() -> None:
    with TestClient(_app()) as c:
        params = {p["name"]: p for p in c.get("/openapi.json").json()["paths"]["/stylize"]["post"]["parameters"]}
        numbers = [s for s in params["wait"]["schema"]["anyOf"] if s.get("type") == "number"]
        assert numbers[0]["maximum"] == 0.05 and numbers[0]["minimum"] == 0
        r = c.post("/stylize", params={"style": "candy", "wait": 0.06}, content=photo(),
                   headers={"Content-Type": "image/png"})
        assert_error(r, 422, "wait")


def test_admin_auth_before_body() -> None:
    with TestClient(_app()) as c:
        for body in (b"garbage{", b'{"version": "x"}', b"[]"):
            assert_error(c.post("/admin/models/candy/default", content=body,
                                headers={"Content-Type": "application/json"}), 401)
            assert_error(c.post("/admin/models/candy/default", content=body,
                                headers={"Content-Type": "application/json", "Authorization": "Bearer x"}), 401)
        for body in (b"garbage{", b'{"version": true}', b'{"version": "1"}', b'{"version": 0}'):
            assert_error(c.post("/admin/models/candy/default", content=body, headers=AUTH), 422, "version"
                         if b"version" in body else "invalid")
