"""Render tasks: ``gmpi.render.view`` and ``gmpi.render.mpi`` answer the gateway's sync endpoints (no
job record); ``render_video`` and ``extract_mesh`` jobs write ``jobs/{job}/videos/...`` and
``jobs/{job}/meshes/...``. Models and MPIs stay in per-process LRU caches."""

from __future__ import annotations

import base64
import io
import logging
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from services.common import checkpoint_zip, zips
from services.common.artifacts import fetch_model, model_manifest
from services.common.celery_app import app
from services.common.contracts import MeshParams, TaskName, VideoParams
from services.common.keys import job_prefix, model_prefix, normalize_owner
from services.common.redact import public_message
from services.common.settings import get_settings
from services.common.storage import get_storage
from services.common.tasks import TRANSIENT, JobContext, job_task
from services.renderer.cache import LRU, export_name, prune_exports, quantize_psi

log = logging.getLogger("gmpi.renderer")
_models: LRU[Any] | None = None
_mpis: LRU[Any] | None = None


def _caches() -> tuple[LRU[Any], LRU[Any]]:
    global _models, _mpis
    if _models is None or _mpis is None:
        s = get_settings()
        _models, _mpis = LRU(s.render_cache_models), LRU(s.render_cache_mpis)
    return _models, _mpis


def load_model(model_id: str) -> tuple[Any, str]:
    """(GMPI pipeline, version) from the cache; the version is the model's commit time."""
    from gmpi_core.checkpoints.sources import ModelSource
    from gmpi_core.pipeline import GMPI

    storage, settings = get_storage(), get_settings()
    version = model_manifest(storage, model_id).get("committed_utc", "")
    models, _ = _caches()

    def load() -> Any:
        import torch

        torch.set_num_threads(max(1, torch.get_num_threads()))
        return GMPI.load(ModelSource("native", fetch_model(storage, settings.cache_dir, model_id)))

    return models.get((model_id, version), load), version


def get_mpi(model_id: str, seed: int, psi: float, planes: int | None) -> tuple[Any, Any]:
    from gmpi_core.render.views import generate_mpi

    gmpi, version = load_model(model_id)
    _, mpis = _caches()
    psi = quantize_psi(psi)  # nearby floats share one entry (and one generation)
    mpi = mpis.get(
        (model_id, version, seed, psi, planes),
        lambda: generate_mpi(gmpi, seed, n_planes=planes, truncation_psi=psi),
    )
    return gmpi, mpi


def _png(array: Any) -> bytes:
    import PIL.Image

    buf = io.BytesIO()
    PIL.Image.fromarray(array).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


@app.task(name=TaskName.RENDER_VIEW.value, autoretry_for=TRANSIENT, max_retries=2)
def render_view(
    model_id: str,
    seed: int,
    yaw: float,
    pitch: float,
    psi: float = 1.0,
    planes: int | None = None,
    size: int | None = None,
    kind: str = "rgb",
) -> dict[str, Any]:
    """One view of one seed as PNG (base64): ``kind`` rgb or depth (uint8 between d_near and d_far)."""
    from gmpi_core.render.io import depth_to_uint8, to_uint8

    gmpi, mpi = get_mpi(model_id, seed, psi, planes)
    try:
        image, depth = gmpi.render(mpi, yaw=yaw, pitch=pitch, size=size, out_of_bounds="clamp")
    except ValueError:
        problem = unrenderable_view(gmpi, mpi, yaw, pitch, size)
        if problem is None:
            raise
        return {"error": problem}  # the gateway answers 422 unrenderable_view (not a worker crash)
    cam = gmpi.config.camera
    array = to_uint8(image[0]) if kind == "rgb" else depth_to_uint8(depth[0], cam.d_near, cam.d_far)
    return {"png": base64.b64encode(_png(array)).decode(), "width": array.shape[1], "height": array.shape[0]}


def _view_problem(gmpi: Any, mpi: Any, yaw: float, pitch: float, size: int) -> str | None:
    """Why the renderer refuses the view (its own geometry check: a plane at or behind the camera, or
    rays that never reach the planes), or None when it renders."""
    from gmpi_core.mpi.render import _check_geometry

    cam = gmpi.config.camera
    try:
        _check_geometry(gmpi.cameras(yaw, pitch), mpi.plane_dhw, cam.fov_deg, size, "clamp")
    except ValueError as e:
        return str(e)
    return None


def _largest_ok(ok: Any, top: float, iterations: int = 40) -> float | None:
    """The largest x in [0, top] with ok(x), for ok that holds up to a limit and fails beyond; None when
    not even ok(0)."""
    if not ok(0.0):
        return None
    if ok(top):
        return top
    lo, hi = 0.0, top
    for _ in range(iterations):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo


def unrenderable_view(
    gmpi: Any, mpi: Any, yaw: float, pitch: float, size: int | None
) -> dict[str, Any] | None:
    """Why a view of the camera sphere cannot be rendered and which views can, or None when it can.

    On the sphere (centre (0, 0, c), radius r) the camera sits at z = c − r·cos(pitch)·cos(yaw) and looks at
    the centre: as |yaw| (or |pitch|) grows it first looks past the planes (its optical axis more than
    90° − fov/2 away from +Z, some rays never reach them) and then passes the nearest plane (z ≥ d_near).
    The limits come from the renderer's own check, at the requested pitch (and at yaw 0 for the pitch)."""
    side = int(size or 64)  # the check's corner rays barely depend on the pixel count
    reason = _view_problem(gmpi, mpi, yaw, pitch, side)
    if reason is None:
        return None
    half_pi = math.pi / 2
    max_yaw = _largest_ok(lambda y: _view_problem(gmpi, mpi, y, pitch, side) is None, half_pi)
    max_pitch = _largest_ok(
        lambda p: _view_problem(gmpi, mpi, 0.0, math.copysign(p, pitch or 1.0), side) is None, half_pi
    )
    cam = gmpi.config.camera
    trained_yaw, trained_pitch = cam.yaw_range, cam.pitch_range
    if max_yaw is not None:
        works = f"at pitch {pitch:.4f} every |yaw| <= {max_yaw:.4f} rad renders"
    else:
        at_zero = max_pitch or 0.0
        works = f"no yaw renders at pitch {pitch:.4f}; at yaw 0 every |pitch| <= {at_zero:.4f} rad does"
    message = (
        f"the view yaw {yaw:.4f} rad, pitch {pitch:.4f} rad cannot be rendered from this model's MPI: "
        f"{reason}. {works}; the model was trained on yaw in [{trained_yaw[0]:.3f}, {trained_yaw[1]:.3f}] "
        f"and pitch in [{trained_pitch[0]:.3f}, {trained_pitch[1]:.3f}] rad (views far outside look worse)"
    )
    return {
        "code": "unrenderable_view",
        "message": message,
        "details": {
            "yaw": yaw,
            "pitch": pitch,
            "reason": reason,
            "max_abs_yaw_at_pitch": max_yaw,
            "max_abs_pitch_at_yaw_0": max_pitch,
            "trained_yaw_range": list(trained_yaw),
            "trained_pitch_range": list(trained_pitch),
            "camera": {
                "sphere_center_z": cam.sphere_center_z,
                "sphere_radius": cam.sphere_radius,
                "d_near": cam.d_near,
                "fov_deg": cam.fov_deg,
            },
        },
    }


@app.task(name=TaskName.EXPORT_MPI.value, autoretry_for=TRANSIENT, max_retries=2)
def export_mpi(
    model_id: str, seed: int, psi: float = 1.0, planes: int | None = None, fmt: str = "png"
) -> str:
    """Export (once) the MPI of a seed for the browser viewer; → its committed store prefix. ψ is
    quantized to 0.01; a model keeps its newest GMPI_MPI_EXPORTS_PER_MODEL exports (older ones are
    deleted after each new one, and made again when asked for)."""
    from gmpi_core.render.export import export_mpi as write_export

    storage = get_storage()
    psi = quantize_psi(psi)
    prefix = f"{model_prefix(model_id)}mpi/{export_name(seed, planes, psi, fmt)}"
    if storage.manifest(prefix) is not None:
        return prefix
    gmpi, mpi = get_mpi(model_id, seed, psi, planes)
    with tempfile.TemporaryDirectory(prefix="gmpi-mpi-") as tmp:
        out = write_export(
            mpi,
            gmpi.config.camera,
            Path(tmp) / "mpi",
            fmt=fmt,  # type: ignore[arg-type]  # "png" | "webp", checked by the route
            extra={"seed": seed, "psi": psi},
        )
        files = storage.upload_dir(out, prefix)
    storage.commit(prefix, files, {"model_id": model_id, "seed": seed, "psi": psi})
    prune_exports(storage, model_id, get_settings().mpi_exports_per_model, protect=prefix)
    return prefix


class UnrenderableSweep(ValueError):
    """A video's sweep passes views the model's MPI cannot show: the job fails with this code and the
    details of the single-view 422 (``unrenderable_view``) before any frame is rendered."""

    code = "unrenderable_view"

    def __init__(self, problem: dict[str, Any], frame: int, frames: int) -> None:
        super().__init__(f"frame {frame} of {frames} of the sweep: {problem['message']}")
        self.details = {**problem["details"], "frame": frame, "frames": frames}


def check_sweep(gmpi: Any, mpi: Any, yaws: Any, pitches: Any, size: int | None) -> None:
    """UnrenderableSweep at the first pose of the sweep that the renderer would refuse.

    The sweeps are fixed (horizontal: yaw 0.5 → −0.5 rad at pitch 0; vertical: pitch 0.3 → −0.3 at yaw 0),
    so they leave the renderable range only for a model whose camera cannot show those views. Such a
    video is refused, not clamped: clamping would silently make a different video than the one asked for,
    and the error says which |yaw| (|pitch|) renders. The check is the renderer's own, per pose (cheap:
    no pixels)."""
    side = int(size or 64)
    for i, (yaw, pitch) in enumerate(zip(yaws, pitches)):
        if _view_problem(gmpi, mpi, float(yaw), float(pitch), side) is not None:
            problem = unrenderable_view(gmpi, mpi, float(yaw), float(pitch), size)
            if problem is not None:
                raise UnrenderableSweep(problem, i, len(yaws))


def render_video_job(ctx: JobContext[VideoParams]) -> dict[str, Any]:
    """Sweep videos (RGB and depth) of one seed, as ``gmpi_core.render.video.write_sweep_videos`` writes
    them, each frame handed to the encoders as soon as its batch is rendered (``services/renderer/
    video.py``: memory holds one batch, not the video); the job's progress counts rendered frames.
    Progress units: the frames, then one per video file finished, then one for the upload. A sweep the
    MPI cannot show fails before the first frame (``check_sweep``)."""
    from gmpi_core.render.io import depth_to_uint8, to_uint8
    from gmpi_core.render.video import VIDEO_FPS, VIDEO_QUALITY, video_name
    from gmpi_core.render.views import render_views, sweep_poses
    from services.renderer.video import FrameWriter

    p = ctx.params
    seed, n, sweep, formats = p.seed, p.frames, p.sweep, tuple(p.formats)
    total = n + 2 * len(formats) + 1
    ctx.progress(0, total, f"loading model '{p.model_id}'", stage="setup")
    load_model(p.model_id)
    ctx.progress(0, total, f"generating the MPI of seed {seed}", stage="setup")
    gmpi, mpi = get_mpi(p.model_id, seed, p.psi, p.planes)
    cam = gmpi.config.camera
    yaws, pitches = sweep_poses(sweep, n)
    check_sweep(gmpi, mpi, yaws, pitches, p.size)
    out = ctx.work_dir / "videos"
    writers = {
        (kind, fmt): FrameWriter(out / video_name(kind, sweep, fmt), VIDEO_FPS, VIDEO_QUALITY)
        for kind in ("rgb", "depth")
        for fmt in formats
    }
    paths: list[Path] = []
    try:
        done = 0
        ctx.progress(0, total, f"rendering frames 0/{n}", stage="frames")
        for images, depths in render_views(gmpi, mpi, yaws, pitches, size=p.size, out_of_bounds="clamp"):
            for image, d in zip(images, depths):
                frame, depth = to_uint8(image), depth_to_uint8(d, cam.d_near, cam.d_far)
                for fmt in formats:
                    writers["rgb", fmt].append(frame)
                    writers["depth", fmt].append(depth)
                done += 1
            ctx.progress(done, total, f"rendering frames {done}/{n}", stage="frames")
        for w in writers.values():
            ctx.progress(n + len(paths), total, f"finishing {w.path.name} ({n} frames)", stage="frames")
            paths.append(w.close())
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    ctx.progress(total - 1, total, f"uploading {len(paths)} videos", stage="frames")
    keys = [ctx.storage.put_file(f"{job_prefix(ctx.job_id)}videos/{q.name}", q).key for q in paths]
    ctx.jobs.add_artifacts(ctx.job_id, keys)
    return {"videos": keys}


render_video = job_task(TaskName.RENDER_VIDEO)(render_video_job)


@job_task(TaskName.EXTRACT_MESH)
def extract_mesh(ctx: JobContext[MeshParams]) -> dict[str, Any]:
    """A marching-cubes mesh (PLY) of one seed's alpha volume, in the steps of
    ``gmpi_core.render.mesh.extract_mesh`` (its defaults), each reported: load the model, generate the
    alpha volume, marching cubes, write and upload the PLY."""
    from gmpi_core.render.mesh import alpha_volume, mesh_from_alpha, write_ply

    p = ctx.params
    seed, psi = p.seed, p.psi
    ctx.progress(0, 4, f"loading model '{p.model_id}'", stage="mesh")
    gmpi, _ = load_model(p.model_id)
    res = gmpi.config.generator.img_resolution
    ctx.progress(1, 4, f"generating the {res}³ alpha volume of seed {seed}", stage="mesh")
    alpha, colour, grid = alpha_volume(gmpi, seed, truncation_psi=psi)
    ctx.progress(2, 4, "marching cubes", stage="mesh")
    mesh = mesh_from_alpha(alpha, grid, colour=colour)
    ctx.progress(3, 4, f"writing and uploading the mesh ({len(mesh.faces)} faces)", stage="mesh")
    path = write_ply(ctx.work_dir / "meshes" / f"mesh_{psi}.ply", mesh)
    key = ctx.storage.put_file(f"{job_prefix(ctx.job_id)}meshes/{path.name}", path).key
    ctx.jobs.add_artifacts(ctx.job_id, [key])
    return {"mesh": key}


def _import_error(exc: Exception, model_id: str, scratch: str) -> dict[str, Any]:
    """What the client learns of a failed import: a code and a message, never this worker's paths or a
    traceback (those go to the log). The safe readers' and the zip checks' errors describe the file the
    client sent (paths in them are cut to the file's name); anything else is a bug or an outage, told as
    such."""
    from gmpi_core.checkpoints import CHECKPOINT_ERRORS

    roots = [os.path.join(scratch, "src"), scratch] if scratch else []
    if isinstance(exc, zips.UnsafeZipError):
        log.info("import %s refused: %s", model_id, exc)
        err: dict[str, Any] = {
            "code": exc.code,
            "status": exc.http_status,
            "message": public_message(str(exc), *roots),
        }
        if exc.member is not None:
            err["details"] = {"member": exc.member[:200]}
        return err
    if isinstance(exc, CHECKPOINT_ERRORS):
        log.info("import %s refused: %s: %s", model_id, type(exc).__name__, exc)
        return {"code": "invalid_checkpoint", "message": public_message(str(exc), *roots)}
    log.exception("import %s failed", model_id)
    return {
        "code": "invalid_checkpoint",
        "message": f"the checkpoint could not be converted (an unexpected error; the render worker's log "
        f"has the details under model id {model_id})",
    }


@app.task(name=TaskName.IMPORT_MODEL.value)
def import_model(
    model_id: str, kind: str, preset_name: str | None, keys: list[str], owner: str | None = None
) -> dict[str, Any]:
    """Convert an uploaded official checkpoint (``stylegan2_pkl``: one ``.pkl``; ``gmpi_pth``: config.pth,
    ema.pth [, generator.pth]) with the safe readers into a native model; → {ok, ...} or {error}.
    ``owner``: the importing key's owner id, recorded in the manifest (only it and admins see the model)."""
    from gmpi_core.checkpoints.sources import ModelSource
    from gmpi_core.pipeline import GMPI

    storage = get_storage()
    prefix = model_prefix(model_id)
    tmp = ""
    try:
        with tempfile.TemporaryDirectory(prefix="gmpi-import-") as tmp:
            src = Path(tmp) / "src"
            for k in keys:
                name = k.rsplit("/", 1)[-1]
                if name.endswith(".zip"):  # a gmpi_pth upload as it came: extracted here, not in the gateway
                    archive = storage.get_file(k, Path(tmp) / "upload" / name)
                    checkpoint_zip.extract(archive, src)
                    archive.unlink()
                else:
                    storage.get_file(k, src / name)
            if kind == "stylegan2_pkl":
                (pkl,) = list(src.iterdir())
                source = ModelSource("stylegan2_pkl", pkl)
            else:
                source = ModelSource("official", src)
            # the preset's camera/training/eval settings around the checkpoint's own architecture
            gmpi = GMPI.load(source, preset=preset_name, keep_architecture=True)
            cfg = gmpi.config
            out = gmpi.save_pretrained(Path(tmp) / "model")
            files = {
                p.name: storage.put_file(prefix + p.name, p)
                for p in sorted(Path(out).iterdir())
                if p.is_file()
            }
    except Exception as exc:
        return {"error": _import_error(exc, model_id, tmp)}
    extra = {"model_id": model_id, "source": kind, "preset": cfg.name, "owner": normalize_owner(owner)}
    storage.commit(prefix, files, extra)
    return {"model_id": model_id, "preset": cfg.name}
