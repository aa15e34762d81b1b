"""Local copies of stored datasets and models (the workers' cache), and their stored layout."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

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


def fetch_dataset_images(storage: Storage, cache_dir: str, dataset_id: str) -> Path:
    """The dataset's images as a local zip or folder (downloaded once; refreshed if the sha256 changes)."""
    key = dataset_images_key(storage, dataset_id)
    root = Path(cache_dir) / "datasets" / dataset_id
    if key.endswith(".zip"):
        local = root / "images.zip"
        info = storage.stat(key)
        if not (local.is_file() and info is not None and info.sha256 == sha256_file(local)):
            storage.get_file(key, local)
        return local
    local_dir = root / "images"
    storage.download_prefix(key, local_dir)
    return local_dir


def fetch_dataset_poses(storage: Storage, cache_dir: str, dataset_id: str) -> Path | None:
    """``datasets/{id}/poses/`` as a local Deep3DFace folder, or None if the dataset has no poses."""
    prefix = dataset_prefix(dataset_id) + "poses/"
    keys = [k for k in storage.list(prefix) if k.endswith(".mat")]
    if not keys:
        return None
    local = Path(cache_dir) / "datasets" / dataset_id / "poses"
    for k in storage.list(prefix):
        target = local / k[len(prefix) :]
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
        target = local / rel
        if target.is_file() and sha256_file(target) == meta["sha256"]:
            continue
        storage.get_file(prefix + rel, target)
    return local


def write_json(path: Path, value: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=1))
    os.replace(tmp, path)
    return path
