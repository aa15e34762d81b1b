"""Geometry ground truth a dataset may carry, so that an ``evaluate`` job computes the depth metrics.

Two kinds, each one zip in the store at ``datasets/{id}/ground-truth/{kind}.zip``, in the layouts
``gmpi eval`` reads (``gmpi_core.eval.protocol``):

* ``synthetic`` — the true depth of a synthetic dataset, i.e. the folder ``gmpi data synth --out DIR``
  writes, without its images: ``meta.json`` (its ``generator`` names ``gmpi-synthetic-heads``),
  ``poses.json`` (``{"poses": {member: {"yaw", "pitch"}}, "fail_list": [...]}``),
  ``depth/<member stem>.npy`` (float32 [H, W] camera z-depth) and ``mask/<member stem>.png`` (face mask)
  for every member not in the fail list. Extra members (``images.zip``, ``poses/``, ``landmarks/``: a zip
  of the whole folder) are ignored. With it, ``evaluate`` passes the dataset as ``gmpi eval --data DIR``
  of a synthetic dataset: metric ``depth_synthetic``.
* ``deep3dface`` — Deep3DFaceRecon outputs for the geometry renders of ``evaluate`` (what
  ``gmpi eval --deep3dface-dir`` reads): ``recon/{aligned_depth,pred_depth,pred_mask}/{i:06d}.npy`` and
  ``recon/coeffs/{i:06d}.mat`` per render i, optionally ``angle/{i:06d}.npy``; metrics
  ``depth_deep3dface`` and ``pose_deep3dface``. The renders are those of an ``evaluate`` job with
  ``keep_images`` (its ``geometry.zip`` artifact) for the same model, seed, ``n_geometry`` and
  ``geometry_size``.

Either zip may hold its files below one top-level folder (a zipped ``DIR/``). The gateway checks the
member names when the zip is uploaded (``check_ground_truth``); the evaluator extracts only the members
of the layout (``extract_ground_truth``).
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from services.common import zips
from services.common.keys import InvalidKeyError, dataset_prefix, validate_key

GroundTruthKind = Literal["synthetic", "deep3dface"]
KINDS: tuple[GroundTruthKind, ...] = ("synthetic", "deep3dface")
SYNTHETIC_GENERATOR = "gmpi-synthetic-heads"
_D3D_INDEX = re.compile(r"^(\d+)\.(npy|mat)$")
_D3D_FOLDERS = ("aligned_depth", "pred_depth", "pred_mask")
MAX_MEMBER_BYTES = 64 * 1024 * 1024  # meta.json / poses.json are read on the gateway: bounded


class GroundTruthError(ValueError):
    """The zip is not ground truth of its kind; the message says what is missing or wrong."""


def ground_truth_key(dataset_id: str, kind: str) -> str:
    return f"{dataset_prefix(dataset_id)}ground-truth/{kind}.zip"


@dataclass
class GroundTruthSummary:
    kind: str
    root: str  # the folder inside the zip holding the layout ("" or "DIR/")
    members: list[str] = field(default_factory=list)  # the zip members that belong to the layout
    info: dict[str, Any] = field(default_factory=dict)


def _root(names: list[str], marker: str) -> str:
    """The layout's folder in the zip: "" when ``marker`` is at the top, "DIR/" when every member is
    below one DIR that holds it."""
    if marker in names:
        return ""
    tops = {n.split("/", 1)[0] for n in names}
    if len(tops) == 1:
        top = next(iter(tops)) + "/"
        if top + marker in names:
            return top
    return ""


def _safe_names(files: list[zipfile.ZipInfo]) -> list[str]:
    """The file members' names (already checked by ``zips.check_entries``), under the key rules too."""
    names = []
    for info in files:
        try:
            validate_key(info.filename, what="zip member")
        except InvalidKeyError as e:
            raise GroundTruthError(str(e)) from e
        names.append(info.filename)
    return names


def _read_json(z: zipfile.ZipFile, name: str) -> Any:
    info = z.getinfo(name)
    if info.file_size > MAX_MEMBER_BYTES:
        raise GroundTruthError(f"{name} is larger than {MAX_MEMBER_BYTES} bytes")
    try:
        data = zips.read_member(z, info, MAX_MEMBER_BYTES)  # counted: the declared size may lie
    except zips.UnsafeZipError as e:
        raise GroundTruthError(str(e)) from e
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise GroundTruthError(f"{name} is not valid JSON ({e})") from e


def _missing(what: str, names: list[str]) -> GroundTruthError:
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return GroundTruthError(f"{len(names)} {what} missing: {shown}")


def _check_synthetic(z: zipfile.ZipFile, names: list[str]) -> GroundTruthSummary:
    root = _root(names, "meta.json")
    present = set(names)
    for need in ("meta.json", "poses.json"):
        if root + need not in present:
            raise GroundTruthError(
                f"no {need} in the zip: synthetic ground truth is the folder `gmpi data synth --out DIR` "
                "writes (meta.json, poses.json, depth/, mask/), zipped"
            )
    meta = _read_json(z, root + "meta.json")
    generator = str(meta.get("generator", "")) if isinstance(meta, dict) else ""
    if not generator.startswith(SYNTHETIC_GENERATOR):
        raise GroundTruthError(
            f"meta.json names generator {generator!r}, not {SYNTHETIC_GENERATOR}: only datasets of "
            "`gmpi data synth` carry true depth"
        )
    table = _read_json(z, root + "poses.json")
    poses = table.get("poses") if isinstance(table, dict) else None
    if not isinstance(poses, dict) or not poses:
        raise GroundTruthError('poses.json has no poses; expected {"poses": {member: {"yaw", "pitch"}}}')
    failed = set(table.get("fail_list") or [])
    members = [m for m in sorted(poses) if m not in failed]
    if not members:
        raise GroundTruthError("poses.json lists every view in its fail list: nothing to compare with")
    bad = [m for m in members if not (isinstance(poses[m], dict) and {"yaw", "pitch"} <= set(poses[m]))]
    if bad:
        raise _missing("poses without 'yaw' and 'pitch' are", bad)
    wanted = [root + "meta.json", root + "poses.json"]
    missing: list[str] = []
    for m in members:
        stem = PurePosixPath(m).with_suffix("").as_posix()
        for rel in (f"depth/{stem}.npy", f"mask/{stem}.png"):
            (wanted if root + rel in present else missing).append(root + rel)
    if missing:
        raise _missing("depth/mask files of views in poses.json are", missing)
    info = {"views": len(members), "resolution": meta.get("resolution"), "generator": generator}
    return GroundTruthSummary("synthetic", root, wanted, info)


def _check_deep3dface(names: list[str]) -> GroundTruthSummary:
    marker = next((n for n in names if "/pred_depth/" in f"/{n}"), None)
    if marker is None:
        raise GroundTruthError(
            "no recon/pred_depth/{i:06d}.npy in the zip: Deep3DFaceRecon outputs are the geometry folder "
            "the fork wrote recon/{aligned_depth,pred_depth,pred_mask,coeffs} into, zipped"
        )
    # the folder holding pred_depth/ is recon/ (or the zip's top); the layout's root is above recon/
    recon = marker[: marker.rindex("pred_depth/")]
    root = recon[: -len("recon/")] if recon.endswith("recon/") else recon
    present = set(names)
    indices = sorted(
        m.group(1)
        for n in names
        if n.startswith(recon + "pred_depth/") and (m := _D3D_INDEX.match(n[len(recon + "pred_depth/") :]))
    )
    if not indices:
        raise GroundTruthError(f"{recon}pred_depth/ holds no {{i:06d}}.npy files")
    wanted: list[str] = []
    missing: list[str] = []
    for i in indices:
        for rel in [f"{recon}{f}/{i}.npy" for f in _D3D_FOLDERS] + [f"{recon}coeffs/{i}.mat"]:
            (wanted if rel in present else missing).append(rel)
        angle = f"{root}angle/{i}.npy"
        if angle in present:
            wanted.append(angle)
    if missing:
        raise _missing("Deep3DFaceRecon outputs are", missing)
    return GroundTruthSummary("deep3dface", root, wanted, {"images": len(indices)})


def check_ground_truth(path: str | os.PathLike[str], kind: str) -> GroundTruthSummary:
    """Check a ground-truth zip of ``kind`` by its member names (and meta.json / poses.json);
    GroundTruthError says what is wrong."""
    if kind not in KINDS:
        raise GroundTruthError(f"unknown ground-truth kind '{kind}'; choose one of {', '.join(KINDS)}")
    try:
        z, files = zips.open_checked(path)  # names, types, declared sizes and ratios first
        with z:
            zips.verify_members(z, files)  # every CRC, in bounded chunks, counted against the declared sizes
            names = _safe_names(files)
            return _check_synthetic(z, names) if kind == "synthetic" else _check_deep3dface(names)
    except zips.UnsafeZipError as e:
        if e.code == zips.INVALID_ZIP and e.member is None:
            raise GroundTruthError(f"not a readable zip file ({e})") from e
        raise GroundTruthError(str(e)) from e


def extract_ground_truth(zip_path: Path, kind: str, dest: Path) -> Path:
    """Extract the layout's members of a checked zip into ``dest`` (written under a temporary name, then
    renamed: a half-extracted folder is never used); → ``dest``, the layout's root. Kept if present."""
    if dest.is_dir():
        return dest
    summary = check_ground_truth(zip_path, kind)
    wanted = {name: name[len(summary.root) :] for name in summary.members}
    try:  # each target proven inside the folder, each member counted; a temporary folder, then renamed
        zips.extract_members(zip_path, dest, wanted)
    except zips.UnsafeZipError as e:
        raise GroundTruthError(str(e)) from e
    except OSError:
        if dest.is_dir():  # another process won the rename: its copy is as good
            return dest
        raise
    return dest
