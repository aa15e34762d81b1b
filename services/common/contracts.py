"""The contract between the gateway and the workers: job types, job states, task names and the typed
parameters of every job type, each default stated here once.

The gateway validates a request's ``params`` with these models (``services.gateway.schemas`` re-exports
them, so the API documents them unchanged), stores the job's parameters as their JSON in the job record,
and queues the entry task of the job's type by its :class:`TaskName`. Workers get the parameters back as
the same models (``JobContext.params``, parsed once from the record) and read attributes, never string
keys with defaults of their own. Nothing here imports torch: the gateway imports it too.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from gmpi_core.config import PRESETS


class JobType(StrEnum):
    PREPROCESS = "preprocess"
    TRAIN = "train"
    EVALUATE = "evaluate"
    RENDER_VIDEO = "render_video"
    EXTRACT_MESH = "extract_mesh"


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL: frozenset[JobState] = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})

# the same values as Literal types, for API schemas (an inline enum in the OpenAPI document, as before)
# and for mypy; checked equal to the enums just below
JobTypeName = Literal["preprocess", "train", "evaluate", "render_video", "extract_mesh"]
JobStateName = Literal["queued", "running", "succeeded", "failed", "cancelled"]
if set(get_args(JobTypeName)) != set(JobType) or set(get_args(JobStateName)) != set(JobState):
    raise AssertionError("JobTypeName/JobStateName must list the values of JobType/JobState")


class TaskName(StrEnum):
    """Every Celery task of the stack; the part before the last dot picks its queue (:data:`TASK_QUEUES`)."""

    LANDMARKS_START = "gmpi.landmarks.start"  # entry of a preprocess job
    LANDMARKS_CHUNK = "gmpi.landmarks.chunk"
    LANDMARKS_DONE = "gmpi.landmarks.done"
    POSE_CHUNK = "gmpi.pose.chunk"
    POSE_DONE = "gmpi.pose.done"
    TRAIN = "gmpi.train.run"
    EVALUATE = "gmpi.eval.run"
    RENDER_VIDEO = "gmpi.render.video"
    EXTRACT_MESH = "gmpi.render.mesh"
    RENDER_VIEW = "gmpi.render.view"  # synchronous (the gateway waits): no job record
    EXPORT_MPI = "gmpi.render.mpi"
    IMPORT_MODEL = "gmpi.render.import_model"


# task family (a task name up to its last dot) -> Celery queue
TASK_QUEUES: dict[str, str] = {
    "gmpi.landmarks": "landmarks",
    "gmpi.pose": "pose",
    "gmpi.train": "train",
    "gmpi.eval": "eval",
    "gmpi.render": "render",
}
if any(name.rsplit(".", 1)[0] not in TASK_QUEUES for name in TaskName):
    raise AssertionError("every TaskName must belong to a family of TASK_QUEUES")

# the task POST /v1/jobs queues for each job type
ENTRY_TASK: dict[JobType, TaskName] = {
    JobType.PREPROCESS: TaskName.LANDMARKS_START,
    JobType.TRAIN: TaskName.TRAIN,
    JobType.EVALUATE: TaskName.EVALUATE,
    JobType.RENDER_VIDEO: TaskName.RENDER_VIDEO,
    JobType.EXTRACT_MESH: TaskName.EXTRACT_MESH,
}

# --- job parameters ---------------------------------------------------------------------------------------
# (no class docstrings on the request models: they would become descriptions in the OpenAPI document)

Id = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{0,63}$", description="a lower-case slug id")]
MetricName = Literal["fid", "kid", "identity", "depth", "pose"]
_METRICS: tuple[MetricName, ...] = get_args(MetricName)


def _all_metrics() -> list[MetricName]:
    return list(_METRICS)


def _default_formats() -> list[Literal["mp4", "gif"]]:
    return ["mp4"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PoseOptions(Strict):
    estimator: Literal["auto", "dlib68", "mtcnn5"] = Field(
        "auto",
        description="auto: dlib's 68 landmarks + PnP when dlib and its model are installed, else the "
        "5-point PnP (the reason is recorded in poses/pose_estimator.json); template, calibration and "
        "intrinsics apply to the 5-point path",
    )
    template: Literal["bfm", "synthetic"] = "bfm"
    calibration: Literal["none", "synthetic"] = "none"
    intrinsics: Literal["gmpi", "deep3dface"] = "gmpi"


class PreprocessParams(Strict):
    dataset_id: Id
    chunk_size: int | None = Field(None, ge=1, le=100_000, description="images per chunk task")
    resolution: int | None = Field(
        None, ge=16, le=4096, description="image side (default: read from the data)"
    )
    pose: PoseOptions = PoseOptions()


class TrainParams(Strict):
    dataset_id: Id
    preset: str = Field("synthetic32", description="an experiment preset of gmpi_core.config")
    steps: int = Field(..., ge=1, le=10_000_000)
    ckpt_every: int = Field(500, ge=1, le=1_000_000)
    log_every: int = Field(10, ge=1, le=100_000)
    batch: int | None = Field(None, ge=1, le=1024)
    planes: int | None = Field(None, ge=2, le=256)
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    use_poses: bool = Field(
        True,
        description="train with datasets/{id}/poses (required then); off only for a folder dataset whose "
        "poses.json sits among its images",
    )
    gpus: int | None = Field(None, ge=1, le=1024, description="GPUs wanted (above one node's: Kubernetes)")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    skip_bad: bool = Field(
        False,
        description="train without the images the data check finds bad (unreadable, truncated, wrong size, "
        "no pose) instead of failing the job with their list (`gmpi train --skip-bad`)",
    )

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, v: str) -> str:
        if v not in PRESETS:
            raise ValueError(f"unknown preset '{v}'; choose one of {', '.join(PRESETS)}")
        return v


class EvalParams(Strict):
    model_id: Id
    dataset_id: Id | None = Field(None, description="real images for FID/KID")
    metrics: list[MetricName] = Field(default_factory=_all_metrics, min_length=1)
    debug: bool = Field(False, description="the protocol's small debug counts")
    quick: bool = Field(
        False,
        description="smoke-test counts (`gmpi eval --quick`: minutes on a CPU); the report is labelled "
        "comparable_to_paper: false",
    )
    n_fid: int | None = Field(None, ge=2, le=100_000)
    n_real: int | None = Field(None, ge=2, le=100_000)
    n_identity: int | None = Field(None, ge=1, le=100_000)
    n_geometry: int | None = Field(None, ge=1, le=100_000)
    n_planes: int | None = Field(None, ge=2, le=256)
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    kid_subsets: int | None = Field(None, ge=1, le=1000)
    kid_subset_size: int | None = Field(None, ge=1, le=100_000)
    geometry_size: int | None = Field(None, ge=16, le=1024, description="render side for depth/pose (224)")
    depth_tolerance: float | None = Field(
        None, gt=0, le=1.0, description="rad: pose match of the synthetic ground-truth depth (0.05)"
    )
    keep_images: bool = Field(
        False,
        description="also store the geometry renders as jobs/{id}/geometry.zip (the input of "
        "Deep3DFaceRecon, whose outputs a dataset can then carry as ground truth 'deep3dface')",
    )

    @field_validator("quick")
    @classmethod
    def _one_mode(cls, v: bool, info: ValidationInfo) -> bool:
        if v and info.data.get("debug"):
            raise ValueError("quick and debug are two sets of small counts: choose one")
        return v

    def eval_options(self) -> dict[str, Any]:
        """The keyword arguments of ``gmpi_core.eval.protocol.EvalOptions`` the job asks for (the
        protocol's own defaults for every count left out)."""
        out = self.model_dump(exclude={"model_id", "dataset_id", "options"}, exclude_none=True)
        out["metrics"] = tuple(out["metrics"])
        return out


class VideoParams(Strict):
    model_id: Id
    seed: int = Field(0, ge=0, le=2**31 - 1)
    psi: float = Field(1.0, ge=0.0, le=2.0)
    planes: int | None = Field(None, ge=2, le=256)
    sweep: Literal["horizontal", "vertical"] = "horizontal"
    frames: int = Field(30, ge=2, le=600)
    size: int | None = Field(None, ge=16, le=2048)
    formats: list[Literal["mp4", "gif"]] = Field(default_factory=_default_formats, min_length=1, max_length=2)


class MeshParams(Strict):
    model_id: Id
    seed: int = Field(0, ge=0, le=2**31 - 1)
    psi: float = Field(1.0, ge=0.0, le=2.0)


# --- what a job record stores: the request's parameters plus what the gateway adds ------------------------
class TrainJobParams(TrainParams):
    """A train job's parameters: the request's, and the id of the model it trains (given by the gateway)."""

    model_id: Id


class EvalJobParams(EvalParams):
    """An evaluate job's parameters: the request's, and its protocol options as stored beside them for
    readers of the record (always :meth:`EvalParams.eval_options` of the fields; workers call that)."""

    options: dict[str, Any] = Field(default_factory=dict)


JobParams = PreprocessParams | TrainJobParams | EvalJobParams | VideoParams | MeshParams

JOB_PARAMS: dict[JobType, type[JobParams]] = {
    JobType.PREPROCESS: PreprocessParams,
    JobType.TRAIN: TrainJobParams,
    JobType.EVALUATE: EvalJobParams,
    JobType.RENDER_VIDEO: VideoParams,
    JobType.EXTRACT_MESH: MeshParams,
}


def job_params(job_type: str, request: BaseModel, **added: Any) -> JobParams:
    """The parameters a job record stores for a validated request of ``job_type`` (the request's fields,
    then what the gateway adds: a train job's ``model_id``; an evaluate job's ``options``)."""
    model = JOB_PARAMS[JobType(job_type)]
    if model is EvalJobParams and isinstance(request, EvalParams):
        options = request.eval_options()
        added = {"options": {**options, "metrics": list(options["metrics"])}, **added}  # as JSON has it
    return model.model_validate({**request.model_dump(), **added})


def parse_job_params(job_type: str, stored: dict[str, Any]) -> JobParams:
    """The typed parameters of a job record of ``job_type`` (a ValueError when they do not fit)."""
    try:
        model = JOB_PARAMS[JobType(job_type)]
    except ValueError:
        raise ValueError(f"unknown job type '{job_type}'") from None
    return model.model_validate(stored)
