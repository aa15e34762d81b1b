"""Who may see and change what (SECURITY.md, "API keys and ownership").

Jobs, datasets and models belong to the API key that made them (its owner id, ``keys.owner_id``) and to
admins. A job (its record, progress, artifacts) is visible only to its owner; a dataset or model without
an owner (the demo model ``services init`` publishes, records of versions before ownership) or marked
``"public": true`` is readable by every key and changeable only by admins. Whatever a caller may not see
is answered like something that does not exist (404; 422 ``unknown_*`` in job parameters), so ids of
other keys' work do not leak.
"""

from __future__ import annotations

from typing import Any

from services.common.jobs import JobNotFound, JobStore
from services.common.keys import MANIFEST, dataset_prefix, model_prefix
from services.common.storage import ObjectNotFound, Storage
from services.gateway.deps import Caller
from services.gateway.errors import ApiError
from services.gateway.routes.common import check_id

DATASET_RECORD = "dataset.json"


def may_read(caller: Caller, record: dict[str, Any]) -> bool:
    """A dataset record or model manifest: shared ones for everybody, the rest for owner and admins."""
    return caller.may_read(record.get("owner"), public=record.get("public") is True)


def may_write(caller: Caller, record: dict[str, Any]) -> bool:
    """Changing a dataset (uploads, ground truth, preprocessing into it): its owner and admins only."""
    return caller.owns(record.get("owner"))


def dataset_record(storage: Storage, caller: Caller, dataset_id: str, *, write: bool = False) -> dict:
    """The dataset's record; 404 when it does not exist or the caller may not read it, 403 when the
    caller may read it (a shared dataset) but ``write`` is asked."""
    check_id(dataset_id, "dataset_id")
    try:
        rec = storage.get_json(dataset_prefix(dataset_id) + DATASET_RECORD)
    except ObjectNotFound as e:
        raise ApiError(404, "not_found", f"no dataset '{dataset_id}'") from e
    if not isinstance(rec, dict) or not may_read(caller, rec):
        raise ApiError(404, "not_found", f"no dataset '{dataset_id}'")
    if write and not may_write(caller, rec):
        raise ApiError(
            403,
            "forbidden",
            f"dataset '{dataset_id}' is shared: only admins may change it; create your own dataset",
        )
    return rec


def readable_dataset(storage: Storage, caller: Caller, dataset_id: str) -> dict | None:
    """The record when the dataset exists and the caller may read it, else None (no exception)."""
    try:
        rec = storage.get_json(dataset_prefix(dataset_id) + DATASET_RECORD)
    except ObjectNotFound:
        return None
    return rec if isinstance(rec, dict) and may_read(caller, rec) else None


def model_manifest(storage: Storage, caller: Caller | None, model_id: str) -> dict[str, Any]:
    """The committed model's manifest; 404 when there is none or the caller may not read it."""
    check_id(model_id, "model_id")
    m = storage.manifest(model_prefix(model_id))
    if m is None or (caller is not None and not may_read(caller, m)):
        raise ApiError(404, "not_found", f"no model '{model_id}'")
    return m


def readable_model(storage: Storage, caller: Caller, model_id: str) -> dict[str, Any] | None:
    m = storage.manifest(model_prefix(model_id))
    return m if m is not None and may_read(caller, m) else None


def job_record(jobs: JobStore, caller: Caller, job_id: str) -> dict[str, Any]:
    """The job's record; 404 when there is none or it is another key's (admins see every job)."""
    check_id(job_id, "job_id")
    try:
        rec = jobs.get(job_id)
    except JobNotFound as e:
        raise ApiError(404, "not_found", f"no job '{job_id}'") from e
    if not caller.owns(rec.get("owner")):
        raise ApiError(404, "not_found", f"no job '{job_id}'")
    return rec


def check_object_access(storage: Storage, jobs: JobStore, caller: Caller, key: str) -> None:
    """An object key a caller downloads: only below ``datasets/{id}/`` and ``models/{id}/`` it may read
    and ``jobs/{id}/`` it owns; 404 for anything else (validate the key first)."""
    parts = key.split("/")
    missing = ApiError(404, "not_found", f"no artifact '{key}'")
    if len(parts) < 3 or not parts[2]:
        raise missing
    area, ident = parts[0], parts[1]
    try:
        if area == "datasets":
            if readable_dataset(storage, caller, check_id(ident, "dataset_id")) is None:
                raise missing
        elif area == "models":
            if readable_model(storage, caller, check_id(ident, "model_id")) is None:
                raise missing
        elif area == "jobs":
            job_record(jobs, caller, ident)
        else:
            raise missing
    except ApiError as e:
        raise missing from e


def model_listing_key(key: str) -> str | None:
    """``models/{id}/manifest.json`` → id (a committed model), else None."""
    parts = key.split("/")
    return parts[1] if len(parts) == 3 and parts[0] == "models" and parts[2] == MANIFEST else None
