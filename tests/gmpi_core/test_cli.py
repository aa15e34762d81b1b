"""The `gmpi` CLI: the demo writes readable images and videos; errors are reported, not raised."""

import json

import imageio.v2 as imageio
import numpy as np
import pytest
from PIL import Image

from gmpi_core.cli import main


def test_demo_writes_views_depth_planes_and_videos(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--planes", "8", "--views", "3", "--train-seconds", "0"]) == 0
    printed = capsys.readouterr().out
    names = [
        *("views_yaw_sweep.png", "depth_yaw_sweep.png", "mpi_rgb.png", "mpi_alpha.png"),
        *("video_rgb_horizontal.mp4", "video_rgb_horizontal.gif", "video_depth_horizontal.mp4"),
    ]
    for name in names:
        assert (out / name).exists(), name
        assert str(out / name) in printed
    res = 64  # the fallback demo model is synthetic64; a shipped checkpoint is also 64²
    strip = np.asarray(Image.open(out / "views_yaw_sweep.png"))
    assert strip.shape == (res, 3 * res, 3)
    assert strip[:, :res].std() > 0  # not a blank image
    assert not np.array_equal(strip[:, :res], strip[:, -res:])  # different yaw, different view
    frames = imageio.mimread(out / "video_rgb_horizontal.mp4")
    assert len(frames) == 6 and frames[0].shape == (res, res, 3)
    assert not list(out.glob(".*"))  # no temp files left behind


def test_presets_lists_and_prints_json(capsys):
    assert main(["presets"]) == 0
    assert "FFHQ256" in capsys.readouterr().out
    assert main(["presets", "AFHQCat"]) == 0
    assert json.loads(capsys.readouterr().out)["camera"]["fov_deg"] == 13.39


def test_unknown_preset_is_a_clear_error_with_exit_code_2(capsys):
    assert main(["presets", "FFHQ128"]) == 2
    assert "unknown preset 'FFHQ128'" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_training_run_writes_a_loadable_checkpoint_and_logs_finite_losses(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--planes", "4", "--views", "2", "--train-seconds", "1"]) == 0
    lines = (out / "train" / "log.jsonl").read_text().splitlines()
    assert lines and all(np.isfinite(json.loads(line)["loss_d"]) for line in lines)
    from gmpi_core.pipeline import GMPI

    assert GMPI.from_pretrained(out / "train" / "model").config.generator.img_resolution == 64
