"""Bad input against the running stack: forbidden pickles, and a bounded schemathesis run."""

from __future__ import annotations

import pickle
from typing import Any

import pytest

from tests.e2e.conftest import API_KEY, Stack

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


class _Evil:
    def __reduce__(self) -> tuple[Any, ...]:
        import os

        return (os.system, ("touch /tmp/gmpi-pwned",))


def test_pickle_with_a_forbidden_global_is_refused_and_leaves_nothing(stack: Stack) -> None:
    before = {m["id"] for m in stack.client.get("/v1/models").json()["items"]}
    body = pickle.dumps({"G_ema": _Evil()})
    r = stack.client.post("/v1/models/import", params={"kind": "stylegan2_pkl"}, content=body)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_checkpoint" and "system" in err["message"], err
    after = {m["id"] for m in stack.client.get("/v1/models").json()["items"]}
    assert after == before
    keys_left = stack.client.get("/v1/jobs").json()  # nothing was queued as a job either
    assert all(j["type"] != "import" for j in keys_left["items"])


def test_unknown_import_kind_is_422(stack: Stack) -> None:
    r = stack.client.post("/v1/models/import", params={"kind": "onnx"}, content=b"x")
    assert r.status_code == 422 and "kind" in r.json()["error"]["message"]


@pytest.mark.slow
def test_schemathesis_bounded_run_finds_no_server_errors(stack: Stack) -> None:
    import schemathesis
    from hypothesis import HealthCheck, given, settings

    schema = schemathesis.openapi.from_url(f"{stack.base_url}/openapi.json")
    failures: list[str] = []
    for op in schema.get_all_operations():
        operation = op.ok()
        if operation.method.upper() == "DELETE":
            continue  # cancelling random jobs is covered explicitly

        @settings(max_examples=4, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def run(case: Any) -> None:
            response = case.call(base_url=stack.base_url, headers={"X-API-Key": API_KEY}, timeout=60)
            if response.status_code >= 500:
                failures.append(
                    f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:200]}"
                )

        run()
    assert not failures, failures
