"""Job params that reach library features: ``evaluate``'s ``quick`` (``gmpi eval --quick``) and
``train``'s ``skip_bad`` (``gmpi train --skip-bad``), accepted by the gateway and handed to the workers."""

from __future__ import annotations

from fastapi.testclient import TestClient

from services.common.settings import Settings
from tests.services.conftest import KEY


def _model(settings: Settings, model_id: str = "m1") -> str:
    from services.common.storage import get_storage

    get_storage(settings).put_bytes(f"models/{model_id}/manifest.json", b"{}", "application/json")
    return model_id


def test_evaluate_accepts_quick_and_the_worker_options_run_the_quick_protocol(
    client: TestClient, settings: Settings
) -> None:
    from gmpi_core.config import preset
    from gmpi_core.eval.protocol import QUICK_COUNTS, EvalOptions, ResolvedProtocol

    model = _model(settings)
    r = client.post(
        "/v1/jobs", json={"type": "evaluate", "params": {"model_id": model, "quick": True}}, headers=KEY
    )
    assert r.status_code == 202, r.text
    options = r.json()["params"]["options"]
    assert options["quick"] is True and options["debug"] is False
    # what services/evaluator/tasks.py builds from the record
    proto = ResolvedProtocol.of(EvalOptions(**options, progress=False), preset("synthetic32"))
    assert proto.mode == "quick" and proto.n_fid <= QUICK_COUNTS["n_fid"]
    notice = proto.notice(preset("synthetic32"), options["metrics"])
    assert notice is not None and "NOT comparable" in notice  # → report comparable_to_paper: false


def test_evaluate_quick_and_debug_together_is_422_naming_quick(
    client: TestClient, settings: Settings
) -> None:
    model = _model(settings)
    body = {"type": "evaluate", "params": {"model_id": model, "quick": True, "debug": True}}
    r = client.post("/v1/jobs", json=body, headers=KEY)
    assert r.status_code == 422, r.text
    assert "params.quick" in r.json()["error"]["message"], r.text


def test_train_accepts_skip_bad(client: TestClient, settings: Settings, dataset: str) -> None:
    from services.common.storage import get_storage

    storage = get_storage(settings)
    storage.put_bytes(f"datasets/{dataset}/images.zip", b"PK\x05\x06" + bytes(18), "application/zip")
    storage.put_bytes(f"datasets/{dataset}/poses/00000/img00000000.mat", b"mat", "application/octet-stream")
    params = {"dataset_id": dataset, "steps": 2, "skip_bad": True}
    r = client.post("/v1/jobs", json={"type": "train", "params": params}, headers=KEY)
    assert r.status_code == 202, r.text
    assert r.json()["params"]["skip_bad"] is True
    params.pop("skip_bad")
    r = client.post("/v1/jobs", json={"type": "train", "params": params}, headers=KEY)
    assert r.status_code == 202 and r.json()["params"]["skip_bad"] is False
