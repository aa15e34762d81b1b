"""``/v1/jobs``: submit typed jobs (idempotent with ``Idempotency-Key``), list, get, cancel."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Query, status

from services.common.contracts import (
    ENTRY_TASK,
    TERMINAL,
    JobState,
    JobStateName,
    JobType,
    JobTypeName,
    job_params,
)
from services.common.jobs import IdempotencyConflict, request_sha256
from services.common.keys import dataset_prefix
from services.common.storage import Storage
from services.gateway.access import job_record, readable_dataset, readable_model
from services.gateway.deps import ApiKey, Caller, CeleryDep, JobLimited, JobsDep, SettingsDep, StorageDep
from services.gateway.errors import ERROR_RESPONSES, ApiError
from services.gateway.routes.common import job_view
from services.gateway.schemas import EvalJob, Job, JobList, JobSubmit, PreprocessJob, TrainJob

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=ERROR_RESPONSES)


def _require_dataset(
    storage: Storage,
    caller: Caller,
    dataset_id: str | None,
    field: str = "params.dataset_id",
    *,
    write: bool = False,
) -> None:
    """A dataset the caller may read (another key's is unknown, like one that does not exist); with
    ``write`` (a preprocess job writes landmarks and poses into it) one the caller owns (403 for a
    shared dataset)."""
    if not dataset_id:
        return
    rec = readable_dataset(storage, caller, dataset_id)
    if rec is None:
        raise ApiError(
            422, "unknown_dataset", f"invalid field '{field}': no dataset '{dataset_id}'", {"field": field}
        )
    if write and not caller.owns(rec.get("owner")):
        raise ApiError(
            403,
            "forbidden",
            f"invalid field '{field}': dataset '{dataset_id}' is shared; only admins may preprocess it",
            {"field": field},
        )


def _require_training_data(storage: Storage, dataset_id: str, use_poses: bool) -> None:
    """Images, and the head poses GMPI's pose-conditioned discriminator needs (docs/method.md §7), before a
    training job is queued rather than as a failure minutes later."""
    prefix = dataset_prefix(dataset_id)
    if not (storage.exists(prefix + "images.zip") or storage.has_any(prefix + "images/")):
        raise ApiError(
            422,
            "no_images",
            f"dataset '{dataset_id}' has no images yet; upload them first",
            {"field": "params.dataset_id"},
        )
    if use_poses and not storage.has_any(prefix + "poses/", ".mat"):
        raise ApiError(
            422,
            "no_poses",
            f"dataset '{dataset_id}' has no poses yet: submit a preprocess job for it (landmarks, then "
            "poses) and train when it has succeeded, or upload Deep3DFace .mat files below poses/",
            {"field": "params.dataset_id"},
        )


def _require_model(storage: Storage, caller: Caller, model_id: str) -> None:
    if readable_model(storage, caller, model_id) is None:
        raise ApiError(
            422,
            "unknown_model",
            f"invalid field 'params.model_id': no model '{model_id}'",
            {"field": "params.model_id"},
        )


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    summary="submit a job (202; the same job again for a seen Idempotency-Key)",
    responses={
        403: {"description": "a preprocess job for a shared dataset (only admins may change it)"},
        409: {"description": "idempotency_key_reused: the key was used with a different body"},
        429: {"description": "GMPI_JOB_RATE_LIMIT reached (Retry-After says when to retry)"},
    },
)
def submit_job(
    body: Annotated[JobSubmit, Body()],
    caller: JobLimited,
    jobs: JobsDep,
    storage: StorageDep,
    celery: CeleryDep,
    settings: SettingsDep,
    idempotency_key: Annotated[str | None, Header(max_length=200, pattern=r"^[\x21-\x7e]+$")] = None,
) -> Job:
    """With ``Idempotency-Key`` (per API key, kept a day) a repeated request returns the job the key
    first created; the key with a different request (compared as the sha256 of the validated body's
    canonical JSON, so key order, spacing and spelled-out defaults do not matter) is refused with 409
    ``idempotency_key_reused``. Datasets and models in the parameters must be ones the caller may read
    (a preprocess job: a dataset it owns); GMPI_JOB_RATE_LIMIT submissions a minute per key."""
    body_sha256 = request_sha256({"type": body.type, "params": body.params.model_dump(mode="json")})
    added: dict[str, Any] = {}  # what the job record stores beside the request's params
    if isinstance(body, PreprocessJob):
        dataset_id = body.params.dataset_id
        _require_dataset(storage, caller, dataset_id, write=True)
        if not (
            storage.exists(dataset_prefix(dataset_id) + "images.zip")
            or storage.list(dataset_prefix(dataset_id) + "images/")
        ):
            raise ApiError(
                422,
                "no_images",
                f"dataset '{dataset_id}' has no images yet; upload them first",
                {"field": "params.dataset_id"},
            )
    elif isinstance(body, TrainJob):
        gpus = body.params.gpus
        if gpus is not None and gpus > settings.max_gpus_per_job:
            raise ApiError(
                422,
                "too_many_gpus",
                f"invalid field 'params.gpus': {gpus} GPUs asked, one job may use at most "
                f"{settings.max_gpus_per_job} (GMPI_MAX_GPUS_PER_JOB)",
                {"field": "params.gpus", "max": settings.max_gpus_per_job},
            )
        _require_dataset(storage, caller, body.params.dataset_id)
        _require_training_data(storage, body.params.dataset_id, body.params.use_poses)
        added["model_id"] = f"model-{uuid.uuid4().hex[:20]}"
    elif isinstance(body, EvalJob):
        _require_model(storage, caller, body.params.model_id)
        _require_dataset(storage, caller, body.params.dataset_id)
    else:
        _require_model(storage, caller, body.params.model_id)
    params = job_params(body.type, body.params, **added).model_dump(mode="json")
    try:
        rec, created = jobs.create(
            body.type, params, idempotency_key=idempotency_key, request_sha256=body_sha256, owner=caller.id
        )
    except IdempotencyConflict as e:
        raise ApiError(
            409,
            "idempotency_key_reused",
            str(e),
            {"field": "Idempotency-Key", "idempotency_key": e.key, "job_id": e.job_id},
        ) from e
    if created:
        celery.send_task(ENTRY_TASK[JobType(body.type)].value, kwargs={"job_id": rec["id"]})
    return job_view(rec, storage)


@router.get("", summary="list jobs, newest first")
def list_jobs(
    caller: ApiKey,
    jobs: JobsDep,
    type: Annotated[JobTypeName | None, Query()] = None,
    state: Annotated[JobStateName | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> JobList:
    """The caller's own jobs (an admin key: every key's)."""
    owner = None if caller.admin else caller.id
    items, total = jobs.list(job_type=type, state=state, owner=owner, limit=limit, offset=offset)
    return JobList(items=[job_view(r) for r in items], total=total, limit=limit, offset=offset)


@router.get("/{job_id}", summary="a job with progress, metrics and presigned artifact URLs")
def get_job(job_id: str, caller: ApiKey, jobs: JobsDep, storage: StorageDep) -> Job:
    return job_view(job_record(jobs, caller, job_id), storage)


@router.delete(
    "/{job_id}",
    summary="cancel a job (its processes are stopped)",
    responses={409: {"description": "already finished"}},
)
def cancel_job(job_id: str, caller: ApiKey, jobs: JobsDep, storage: StorageDep) -> Job:
    rec = job_record(jobs, caller, job_id)
    if rec["state"] in TERMINAL:
        raise ApiError(409, "job_finished", f"job '{job_id}' already {rec['state']}; nothing to cancel")
    jobs.transition(
        job_id,
        JobState.CANCELLED,
        error={"code": "cancelled", "message": "cancelled by request", "details": None},
    )
    return job_view(jobs.get(job_id), storage)


@router.get(
    "/-/dead-letters",
    summary="task messages given up on after repeated worker deaths (admin keys only)",
    responses={403: {"description": "not an admin key (GMPI_ADMIN_API_KEYS)"}},
)
def dead_letters(
    caller: ApiKey, jobs: JobsDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> dict[str, Any]:
    """The newest ``limit`` entries of the dead-letter list (``{task, job_id, queue, attempts, at, ...}``):
    messages whose worker died GMPI_MAX_DELIVERIES times; their jobs failed ``worker_lost_repeatedly``."""
    if not caller.admin:
        raise ApiError(403, "forbidden", "the dead-letter list is for admin keys (GMPI_ADMIN_API_KEYS)")
    items = jobs.dead_letters(limit)
    return {"items": items, "total": len(items)}
