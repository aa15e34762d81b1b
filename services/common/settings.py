"""Every setting of the service stack, read once from ``GMPI_*`` variables (table: services/README.md)."""

from __future__ import annotations

import functools
import os
import urllib.parse
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GMPI_", extra="ignore")

    host: str = "0.0.0.0"
    port: int = 8000
    redis_url: str = "redis://localhost:6379/0"
    # from a secret; put into redis_url (percent-encoded) unless the URL names a password itself
    redis_password: str = Field("", repr=False)

    storage: Literal["s3", "dir"] = "s3"
    storage_dir: str = "/var/lib/gmpi/storage"
    s3_endpoint: str = "localhost:9000"
    s3_public_endpoint: str = ""  # empty: same as s3_endpoint
    s3_access_key: str = ""
    s3_secret_key: str = ""
    s3_bucket: str = "gmpi"
    s3_secure: bool = False
    s3_region: str = "us-east-1"
    presign_expiry_s: int = Field(3600, ge=1, le=604_800)

    api_keys: str = Field("", repr=False)  # comma-separated
    # comma-separated keys that also see and cancel every key's jobs, datasets and models (SECURITY.md)
    admin_api_keys: str = Field("", repr=False)
    auth_disabled: bool = False
    # requests per minute per API key (per client address with auth disabled); 429 + Retry-After above
    render_rate_limit: int = Field(120, ge=1, description="render requests per minute per API key")
    mpi_rate_limit: int = Field(30, ge=1, description="MPI export requests per minute per API key")
    import_rate_limit: int = Field(6, ge=1, description="checkpoint imports per minute per API key")
    job_rate_limit: int = Field(60, ge=1, description="job submissions per minute per API key")
    upload_rate_limit: int = Field(
        30, ge=1, description="dataset uploads (zip, ground truth, presigned, register) a minute per key"
    )
    mpi_exports_per_model: int = Field(
        32, ge=1, le=10_000, description="browser MPI exports kept per model in the store (oldest pruned)"
    )
    max_upload_bytes: int = Field(2 * 1024**3, ge=1)
    render_timeout_s: float = 30.0
    import_timeout_s: float = Field(300.0, gt=0, description="how long the gateway waits for an import")
    # the gateway's blocking calls from its async routes (object store, Celery sends and result polls) run
    # in a bounded pool of their own, never in the threadpool of the sync routes: 503 ``busy`` when this
    # many are running and this many more are queued
    gateway_io_threads: int = Field(32, ge=1, le=1024)
    gateway_io_queue: int = Field(256, ge=0, le=100_000)

    cache_dir: str = "/var/cache/gmpi"
    train_nproc: str = "auto"
    task_time_limit_s: int = Field(24 * 3600, ge=10)
    visibility_timeout_s: int = Field(26 * 3600, ge=10)
    landmark_chunk_size: int = Field(256, ge=1)
    render_cache_models: int = Field(4, ge=1, le=64)
    render_cache_mpis: int = Field(64, ge=1, le=4096)
    orphan_after_s: float = Field(120.0, ge=1, description="heartbeat age after which a task is re-queued")
    orphan_check_s: float = Field(15.0, ge=0.5)
    max_deliveries: int = Field(
        3, ge=1, description="lost starts of one task message (its worker died) before it is dead-lettered"
    )

    # the gateway's API description (/docs, /redoc, /openapi.json) and Prometheus metrics (/metrics):
    # off unless enabled (SECURITY.md, "Without an API key")
    expose_docs: bool = False
    expose_metrics: bool = False

    k8s_enabled: bool = False
    k8s_namespace: str = "gmpi"
    # image of the PyTorchJob pods; empty: the trainer pod's own (read from the API: needs `get pods`)
    trainer_image: str = ""
    max_gpus_per_job: int = Field(
        16, ge=1, description="GPUs one multi-node training job may request in total (nodes x GPUs per node)"
    )

    # untrusted zips (services/common/zips.py; its module constants are these defaults, a test keeps them
    # equal): entries, uncompressed sizes, compression ratio above a floor, central directory read from
    # the store; one image member read into memory by the library (gmpi_core/data/ziplimits.py, which reads
    # GMPI_ZIP_MAX_IMAGE_BYTES, GMPI_ZIP_MAX_RATIO and GMPI_ZIP_RATIO_FLOOR_BYTES from the environment itself)
    zip_max_members: int = Field(1_000_000, ge=1)
    zip_max_member_bytes: int = Field(4 * 1024**3, ge=1)
    zip_max_total_bytes: int = Field(1024**4, ge=1)
    zip_max_ratio: int = Field(100, ge=1)
    zip_ratio_floor_bytes: int = Field(1024**2, ge=0)
    zip_max_central_directory_bytes: int = Field(256 * 1024**2, ge=1)
    zip_max_image_bytes: int = Field(256 * 1024**2, ge=1)

    @field_validator("train_nproc")
    @classmethod
    def _check_nproc(cls, value: str) -> str:
        if value != "auto" and not (value.isdigit() and int(value) >= 1):
            raise ValueError(f"GMPI_TRAIN_NPROC must be 'auto' or an integer >= 1, got {value!r}")
        return value

    @model_validator(mode="after")
    def _redis_auth(self) -> Settings:
        if self.redis_password:
            parts = urllib.parse.urlsplit(self.redis_url)
            if parts.password is None:
                user = parts.username or ""
                host = parts.netloc.rpartition("@")[2]
                netloc = f"{user}:{urllib.parse.quote(self.redis_password, safe='')}@{host}"
                self.redis_url = urllib.parse.urlunsplit(parts._replace(netloc=netloc))
        return self

    @property
    def api_key_set(self) -> frozenset[str]:
        return frozenset(k.strip() for k in self.api_keys.split(",") if k.strip())

    @property
    def admin_key_set(self) -> frozenset[str]:
        return frozenset(k.strip() for k in self.admin_api_keys.split(",") if k.strip())

    @property
    def public_endpoint(self) -> str:
        return self.s3_public_endpoint or self.s3_endpoint

    def resolved_train_nproc(self) -> int:
        """``auto``: the visible GPUs (CUDA_VISIBLE_DEVICES, else nvidia device nodes), 1 on CPU."""
        if self.train_nproc != "auto":
            return int(self.train_nproc)
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible is not None:
            return max(1, len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"]))
        try:
            return max(1, len([n for n in os.listdir("/dev") if n.startswith("nvidia") and n[6:].isdigit()]))
        except OSError:
            return 1


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (tests clear the cache with ``get_settings.cache_clear()``)."""
    return Settings()
