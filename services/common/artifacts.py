"""Local copies of stored datasets and models (the workers' cache), and their stored layout."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from services.common import zips
from services.common.keys import dataset_prefix, model_prefix
from services.common.storage import Storage, sha256_file
from services.common.tasks import JobInputError

MODEL_FILES = ("config.json", "weights.safetensors", "ema.safetensors")


def dataset_images_key(storage: Storage, dataset_id: str) -> str:
    """``datasets/{id}/images.zip`` if present, else the ``images/`` folder prefix; JobInputError if none."""
    prefix = dataset_prefix(dataset_id)
    if storage.exists(prefix + "images.zip"):
        return prefix + "images.zip"
    if storage.list(prefix + "images/"):
        return prefix + "images/"
    raise JobInputError(f"dataset '{dataset_id}' has no images.zip or images/ in the store; upload it first")


class DatasetZipRefused(JobInputError):
    """A dataset's ``images.zip`` failed ``zips.check_zip``; ``code`` is the zip check's code
    (``invalid_zip``, ``unsafe_zip_member``, ``zip_bomb``, ``zip_too_large``), which the job record's
    error carries (run_job reads ``code`` and ``details``)."""

    def __init__(self, dataset_id: str, error: zips.UnsafeZipError) -> None:
        super().__init__(f"dataset '{dataset_id}': its images.zip is refused: {error}")
        self.code = error.code
        self.details = {"dataset_id": dataset_id, "member": error.member}


class UnsafeObjectKey(JobInputError):
    """A listed object key that would be written outside the local folder it is downloaded into."""

    code = "unsafe_object_key"


def download_prefix(storage: Storage, prefix: str, local: Path) -> list[Path]:
    """Every object below ``prefix`` into ``local``, each target proven inside it first
    (``zips.safe_target``: a relative path without ``..``/absolute/backslash parts, symlinks followed):
    a key listed by the store is not trusted to name a safe local path. UnsafeObjectKey otherwise."""
    out = []
    for key in storage.list(prefix):
        rel = key[len(prefix) :] if key.startswith(prefix) else None
        try:
            if rel is None:
                raise zips.UnsafeZipError(zips.UNSAFE_MEMBER, f"{key[:200]!r} is not below {prefix!r}")
            target = zips.safe_target(local, rel)
        except zips.UnsafeZipError as e:
            raise UnsafeObjectKey(
                f"object '{key[:200]}' would be written outside {local} (from the listing of '{prefix}'): {e}"
            ) from e
        out.append(storage.get_file(key, target))
    return out


def check_dataset_zip(path: Path, dataset_id: str) -> None:
    """``zips.check_zip`` (names, entry types, declared sizes and ratios, entry count; the central
    directory only) of a dataset's local ``images.zip``; DatasetZipRefused otherwise. Every consumer gets
    its images through ``fetch_dataset_images``, which calls this: a zip uploaded by a single presigned
    PUT has had no check before."""
    try:
        zips.check_zip(path)
    except zips.UnsafeZipError as e:
        raise DatasetZipRefused(dataset_id, e) from e


def fetch_dataset_images(storage: Storage, cache_dir: str, dataset_id: str) -> Path:
    """The dataset's images as a local zip or folder (downloaded once; refreshed if the sha256 changes).
    A zip is checked (``check_dataset_zip``) on every call, before any consumer opens it; a folder's
    keys are proven to stay inside it (``download_prefix``)."""
    key = dataset_images_key(storage, dataset_id)
    root = Path(cache_dir) / "datasets" / dataset_id
    if key.endswith(".zip"):
        local = root / "images.zip"
        info = storage.stat(key)
        if not (local.is_file() and info is not None and info.sha256 == sha256_file(local)):
            storage.get_file(key, local)
        check_dataset_zip(local, dataset_id)
        return local
    local_dir = root / "images"
    download_prefix(storage, key, local_dir)
    return local_dir


def fetch_dataset_poses(storage: Storage, cache_dir: str, dataset_id: str) -> Path | None:
    """``datasets/{id}/poses/`` as a local Deep3DFace folder, or None if the dataset has no poses."""
    prefix = dataset_prefix(dataset_id) + "poses/"
    keys = [k for k in storage.list(prefix) if k.endswith(".mat")]
    if not keys:
        return None
    local = Path(cache_dir) / "datasets" / dataset_id / "poses"
    for k in storage.list(prefix):
        try:
            target = zips.safe_target(local, k[len(prefix) :]) if k.startswith(prefix) else None
        except zips.UnsafeZipError:
            target = None
        if target is None:
            raise UnsafeObjectKey(f"pose object '{k[:200]}' would be written outside {local}")
        if not target.is_file():
            storage.get_file(k, target)
    return local


def model_manifest(storage: Storage, model_id: str) -> dict[str, Any]:
    m = storage.manifest(model_prefix(model_id))
    if m is None:
        raise JobInputError(f"no model '{model_id}' (or it is not committed yet)")
    return m


def fetch_model(storage: Storage, cache_dir: str, model_id: str) -> Path:
    """The model's native checkpoint folder in the cache, checked against its manifest's sha256s."""
    manifest = model_manifest(storage, model_id)
    local = Path(cache_dir) / "models" / model_id / manifest.get("committed_utc", "v").replace(":", "-")
    prefix = model_prefix(model_id)
    for rel, meta in manifest["files"].items():
        try:  # the manifest names the files: still proven to land inside the model's folder
            target = zips.safe_target(local, rel)
        except zips.UnsafeZipError as e:
            raise UnsafeObjectKey(
                f"model '{model_id}': its manifest names an unsafe file {rel[:200]!r}"
            ) from e
        if target.is_file() and sha256_file(target) == meta["sha256"]:
            continue
        storage.get_file(prefix + rel, target)
    return local


def write_json(path: Path, value: Any) -> Path:
    from gmpi_core.atomic import atomic_write

    return atomic_write(path, json.dumps(value, indent=1))
