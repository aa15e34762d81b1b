"""``render_video`` (issue 13, items 12 and 10): frames go to the encoders as they are rendered (memory
holds a batch, not the video), and a sweep the model's MPI cannot show fails before the first frame with
the single view's ``unrenderable_view`` code and details instead of a worker crash."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from services.common.contracts import VideoParams
from services.common.settings import Settings
from services.common.storage import DirStorage, get_storage

pytestmark = pytest.mark.timeout(600)
MIB = 1024 * 1024


def _ctx(tmp_path: Path, storage: Any, **params: Any) -> Any:
    added: list[str] = []
    return SimpleNamespace(
        params=VideoParams(**params),
        progress=lambda *a, **k: None,
        work_dir=tmp_path / "work",
        storage=storage,
        jobs=SimpleNamespace(add_artifacts=lambda _job, keys: added.extend(keys)),
        job_id="job-video",
        added=added,
    )


def test_frames_stream_into_the_encoders_with_bounded_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """160 frames of 256² (40 MiB of RGB + depth as uint8) through a stand-in renderer: the job's Python
    memory peaks at a batch or so, and the four videos hold every frame."""
    import imageio_ffmpeg
    import PIL.Image
    import torch

    import gmpi_core.render.views as views
    from services.renderer import tasks

    side, frames, batch = 256, 160, 16
    camera = SimpleNamespace(d_near=0.5, d_far=1.5)
    monkeypatch.setattr(tasks, "load_model", lambda model_id: (None, "v"))
    monkeypatch.setattr(
        tasks, "get_mpi", lambda *a: (SimpleNamespace(config=SimpleNamespace(camera=camera)), None)
    )
    monkeypatch.setattr(tasks, "_view_problem", lambda *a: None)  # every view renders

    def fake_render_views(gmpi: Any, mpi: Any, yaws: Any, pitches: Any, **_: Any) -> Iterator[Any]:
        g = torch.Generator().manual_seed(0)
        for start in range(0, len(yaws), batch):
            b = min(batch, len(yaws) - start)
            yield (
                torch.rand(b, 3, side, side, generator=g) * 2 - 1,
                torch.rand(b, 1, side, side, generator=g) + 0.5,
            )

    monkeypatch.setattr(views, "render_views", fake_render_views)
    storage = DirStorage(tmp_path / "store")
    ctx = _ctx(tmp_path, storage, model_id="m", seed=0, frames=frames, formats=["mp4", "gif"], size=side)
    tracemalloc.start()
    try:
        out = tasks.render_video_job(ctx)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    all_frames = frames * side * side * 4
    print(f"render_video peak {peak / MIB:.1f} MiB for {all_frames / MIB:.0f} MiB of frames")
    assert peak < 16 * MIB, f"render_video held {peak / MIB:.0f} MiB (all frames: {all_frames / MIB:.0f} MiB)"
    names = sorted(k.rsplit("/", 1)[-1] for k in out["videos"])
    assert names == sorted(f"video_{k}_horizontal.{f}" for k in ("rgb", "depth") for f in ("mp4", "gif"))
    for key in out["videos"]:
        path = storage.root / key
        if key.endswith(".gif"):
            with PIL.Image.open(path) as im:
                assert getattr(im, "n_frames", 1) == frames and im.size == (side, side), key
        else:
            assert imageio_ffmpeg.count_frames_and_secs(str(path))[0] == frames, key
    assert not list((tmp_path / "work" / "videos").glob(".*"))  # no partial files left


@pytest.fixture
def demo(settings: Settings) -> str:
    from services.__main__ import publish_demo_model

    storage = get_storage(settings)
    storage.ensure_ready()
    publish_demo_model(storage)
    return "demo"


def test_a_sweep_the_mpi_cannot_show_fails_before_any_frame(
    demo: str, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gmpi_core.render.views as views
    from services.renderer import tasks

    monkeypatch.setattr(views, "sweep_poses", lambda sweep, n: (np.linspace(0.0, 1.56, n), np.zeros(n)))
    rendered: list[int] = []
    real = views.render_views

    def spy(*a: Any, **k: Any) -> Iterator[Any]:
        for images, depths in real(*a, **k):
            rendered.append(len(images))
            yield images, depths

    monkeypatch.setattr(views, "render_views", spy)
    ctx = _ctx(tmp_path, get_storage(settings), model_id=demo, seed=0, frames=8, size=32)
    with pytest.raises(ValueError) as caught:
        tasks.render_video_job(ctx)
    err = caught.value
    assert getattr(err, "code", None) == "unrenderable_view", repr(err)
    details = err.details  # type: ignore[attr-defined]
    assert 1.3 < details["max_abs_yaw_at_pitch"] < 1.56 and details["frame"] >= 1, details
    assert "|yaw| <=" in str(err), err
    assert rendered == [] and ctx.added == [], "frames were rendered before the sweep was refused"


def test_a_sweep_of_the_demo_model_renders_both_formats(
    demo: str, settings: Settings, tmp_path: Path
) -> None:
    import PIL.Image

    from services.renderer import tasks

    storage = get_storage(settings)
    ctx = _ctx(tmp_path, storage, model_id=demo, seed=1, frames=4, size=32, formats=["mp4", "gif"])
    out = tasks.render_video_job(ctx)
    assert len(out["videos"]) == 4 and ctx.added == out["videos"]
    gif = next(k for k in out["videos"] if k.endswith("video_rgb_horizontal.gif"))
    with PIL.Image.open(storage.get_file(gif, tmp_path / "rgb.gif")) as im:
        assert getattr(im, "n_frames", 1) == 4 and im.size == (32, 32) and im.info.get("loop") == 0
