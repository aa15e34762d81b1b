"""Request and response bodies of the REST API (separate from the domain code)."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from services.common.contracts import EvalParams as EvalParams

# the job parameters are the contract with the workers: defined once there, documented here
from services.common.contracts import Id as Id
from services.common.contracts import JobStateName
from services.common.contracts import MeshParams as MeshParams
from services.common.contracts import MetricName as MetricName
from services.common.contracts import PoseOptions as PoseOptions
from services.common.contracts import PreprocessParams as PreprocessParams
from services.common.contracts import Strict as Strict
from services.common.contracts import TrainParams as TrainParams
from services.common.contracts import VideoParams as VideoParams


# --- datasets ---------------------------------------------------------------------------------------------
class DatasetCreate(Strict):
    name: str = Field("", max_length=100, description="a label for people")


class GroundTruth(BaseModel):
    kind: Literal["synthetic", "deep3dface"]
    key: str = Field(..., description="store key of the zip (datasets/{id}/ground-truth/{kind}.zip)")
    size: int
    sha256: str | None = None
    summary: dict[str, Any] = Field(
        {}, description="what the check found: views and resolution (synthetic), images (deep3dface)"
    )


class Dataset(BaseModel):
    id: str
    name: str
    created_at: float
    images: str | None = Field(None, description="store key of the images (images.zip or images/)")
    size: int | None = None
    sha256: str | None = None
    landmarks: int = 0
    poses: int = 0
    ground_truth: dict[str, GroundTruth] = Field(
        {},
        description="geometry ground truth the dataset carries, by kind (PUT /v1/datasets/{id}/ground-truth/"
        "{kind}): an evaluate job of this dataset computes the depth metrics from it",
    )


class DatasetFile(BaseModel):
    key: str = Field(..., description="full store key")
    path: str = Field(..., description="the key relative to the dataset (datasets/{id}/)")
    size: int
    url: str = Field(..., description="presigned GET URL (S3) or the gateway's /v1/files/{key}")


class DatasetFileList(BaseModel):
    items: list[DatasetFile]
    prefix: str = Field(..., description="the prefix listed, relative to the dataset")
    next_cursor: str | None = Field(
        None, description="pass as ?cursor= for the next page; null on the last page"
    )


class DatasetList(BaseModel):
    items: list[Dataset]


class UploadUrl(BaseModel):
    url: str
    method: Literal["PUT"] = "PUT"
    key: str
    expires_in: int


MIB = 1024 * 1024
MIN_PART_SIZE = 5 * MIB  # S3's minimum for every part but the last
MAX_PART_SIZE = 5 * 1024 * MIB
MAX_PARTS = 10_000
MAX_MULTIPART_SIZE = 5 * 1024**4  # S3's largest object (5 TiB)


class MultipartCreate(Strict):
    size: int = Field(..., ge=1, le=MAX_MULTIPART_SIZE, description="bytes of the whole zip (at most 5 TiB)")
    part_size: int | None = Field(
        None,
        ge=MIN_PART_SIZE,
        le=MAX_PART_SIZE,
        description="bytes per part (5 MiB … 5 GiB; default 64 MiB, more if 10,000 parts would not do)",
    )


class UploadPartUrl(BaseModel):
    part_number: int
    url: str


class MultipartUpload(BaseModel):
    upload_id: str
    key: str
    size: int
    part_size: int = Field(..., description="every part but the last has exactly this many bytes")
    method: Literal["PUT"] = "PUT"
    parts: list[UploadPartUrl]
    expires_in: int


class CompletedPart(Strict):
    part_number: int = Field(..., ge=1, le=MAX_PARTS)
    etag: str = Field(..., min_length=1, max_length=200, description="the ETag header of the part's PUT")


class MultipartComplete(Strict):
    parts: list[CompletedPart] = Field(..., min_length=1, max_length=MAX_PARTS)


class RegisterPrefix(Strict):
    prefix: str = Field(
        ..., min_length=1, max_length=512, description="existing bucket prefix holding images.zip or images/"
    )


# --- jobs -------------------------------------------------------------------------------------------------
class PreprocessJob(Strict):
    type: Literal["preprocess"]
    params: PreprocessParams


class TrainJob(Strict):
    type: Literal["train"]
    params: TrainParams


class EvalJob(Strict):
    type: Literal["evaluate"]
    params: EvalParams


class VideoJob(Strict):
    type: Literal["render_video"]
    params: VideoParams


class MeshJob(Strict):
    type: Literal["extract_mesh"]
    params: MeshParams


JobSubmit = Annotated[PreprocessJob | TrainJob | EvalJob | VideoJob | MeshJob, Field(discriminator="type")]


class Progress(BaseModel):
    """Where a job is. Units of ``step``/``total`` depend on the type: preprocess chunks, training
    steps, evaluation images over all metric stages, video frames (+ encoding), mesh phases."""

    model_config = ConfigDict(extra="allow")  # e.g. a training job's kimg
    step: int = Field(0, description="units done")
    total: int | None = Field(None, description="units in all (null while still unknown)")
    eta_s: float | None = Field(
        None,
        description="estimated seconds until the job is done, from the rate of the current stage "
        "(null where it cannot be estimated yet, e.g. before the first training step)",
    )
    message: str = Field("", description="what is happening now, e.g. 'step 12/2000'")
    stage: str | None = Field(None, description="the current stage, e.g. setup, steps, frames, geometry")


class Artifact(BaseModel):
    key: str
    size: int | None = None
    sha256: str | None = None
    url: str = Field(..., description="presigned GET URL (S3) or a gateway download path")


class JobError(BaseModel):
    code: str
    message: str
    details: Any = None


class Job(BaseModel):
    id: str
    type: str
    state: JobStateName
    params: dict[str, Any]
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    updated_at: float | None = None
    progress: Progress
    result: Any = None
    error: JobError | None = None
    metrics: dict[str, Any] = {}
    info: dict[str, Any] = {}
    attempts: int = Field(
        0,
        description="how many times the job's own task started: its first run, Celery retries and "
        "re-deliveries after a worker died (sub-tasks such as preprocess chunks do not count)",
    )
    artifacts: list[Artifact] = []


class JobList(BaseModel):
    items: list[Job]
    total: int
    limit: int
    offset: int


# --- models -----------------------------------------------------------------------------------------------
class Model(BaseModel):
    id: str
    source: str | None = None
    preset: str | None = None
    committed_utc: str | None = None
    job_id: str | None = None
    dataset_id: str | None = None
    steps: int | None = None
    files: dict[str, Any] = {}


class ModelList(BaseModel):
    items: list[Model]


class RenderRequest(Strict):
    seed: int = Field(0, ge=0, le=2**31 - 1)
    yaw: float = Field(0.0, ge=-math.pi / 2, le=math.pi / 2, description="radians, 0 = frontal")
    pitch: float = Field(0.0, ge=-math.pi / 4, le=math.pi / 4, description="radians")
    psi: float = Field(1.0, ge=0.0, le=2.0, description="truncation ψ")
    planes: int | None = Field(None, ge=2, le=128)
    size: int | None = Field(None, ge=16, le=1024, description="output side in pixels")
    kind: Literal["rgb", "depth"] = Field("rgb", validation_alias=AliasChoices("kind", "output"))


class MpiPlane(BaseModel):
    model_config = ConfigDict(extra="allow")
    index: int
    depth: float
    height: float
    width: float
    file: str
    url: str = Field(..., description="same-origin gateway URL of the texture (send X-API-Key)")
    presigned_url: str | None = Field(None, description="direct object-store URL (S3 backend)")


class MpiExport(BaseModel):
    """``mpi.json`` of ``gmpi_core.render.export`` (all its fields), each plane with its URLs."""

    model_config = ConfigDict(extra="allow")
    model_id: str
    key: str = Field(..., description="store prefix of the export")
    format: str
    n_planes: int
    texture_size: int
    camera: dict[str, Any]
    planes: list[MpiPlane]
