"""scripts/bench/demo_quality.py (issue 16's benchmark) at tiny N: the report of a GMPI and of a 2D model, its
numbers in range and repeatable, and its metrics on cases whose answer is known."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "bench" / "demo_quality.py"
DEMO_MODEL = ROOT / "gmpi_core" / "assets" / "demo_model"
N = 6


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("demo_quality_bench", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gmpi-cache")


@pytest.fixture(autouse=True)
def _private_feature_cache(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GMPI_CACHE_DIR", str(cache_dir))  # real features are cached here, not in ~/.cache


def _metrics(report: dict[str, Any]) -> dict[str, Any]:
    """The sections that must repeat exactly (no timings, no cache flags)."""
    realism = {k: report["realism"][k] for k in ("model", "floor")}
    return {"faces": report["faces"], "realism": realism}


def _check_common(report: dict[str, Any], out: Path, n: int) -> None:
    faces = report["faces"]
    for key in ("model", "real"):
        assert faces[key]["n"] == n
        assert 0 <= faces[key]["detected"] <= n
        assert faces[key]["rate"] == faces[key]["detected"] / n
    assert faces["detector"]["thresholds"] == [0.6, 0.7, 0.7]  # the preprocessing default
    if faces["real"]["detected"]:
        assert faces["ratio"] == pytest.approx(faces["model"]["rate"] / faces["real"]["rate"])
        assert faces["passed"] == (faces["ratio"] >= 0.8)
    realism = report["realism"]
    for key in ("model", "floor"):
        row = realism[key]
        assert row["n_real"] == row["n_fake"] == n
        assert math.isfinite(row["fid"]) and row["fid"] >= 0
        assert math.isfinite(row["kid_mean"]) and -1 < row["kid_mean"] < 10
    assert realism["real"]["seed"] == 1  # held-out heads: never the training seed
    assert realism["passed"] == (realism["model"]["fid"] <= 60)
    assert (out / "faces.png").is_file()
    assert json.loads((out / "report.json").read_text(encoding="utf-8")) == report


def test_demo_model_report(bench: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, heldout, gt = tmp_path / "out", tmp_path / "heldout", tmp_path / "gt"
    common = ["--model", str(DEMO_MODEL), "--n", str(N), "--heldout", str(heldout), "--out", str(out)]
    argv = [*common, "--n-geometry", "4", "--n-control", "2", "--n-identity", "3"]
    argv += ["--gt-data", str(gt), "--gt-n", "48", "--tol", "0.3", "--min-count", "1"]
    assert bench.main(argv) == 0
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["model"]["kind"] == "gmpi" and report["model"]["resolution"] == 64
    assert json.loads((heldout / "meta.json").read_text())["n"] == 2 * N  # made on first use
    _check_common(report, out, N)

    geometry = report["geometry"]
    assert geometry["n_latents"] == 4 and geometry["n_ground_truth_views"] == 48
    for row in (geometry["gmpi"], geometry["control_true_heads_as_mpi"]):
        assert row["n_used"] + row["n_skipped"] in (4, 2)
        assert row["n_used"] > 0 and 0 <= row["mean"] <= 4  # 2(1 − ρ) lies in [0, 4]
    assert geometry["passed"] == (geometry["gmpi"]["mean"] <= 0.35)

    consistency = report["consistency"]
    assert consistency is not None, report["notes"]
    for key in ("model", "real"):
        row = consistency[key]
        assert row["n_pairs"] == 3 and row["n_failed"] == 0
        assert -1 <= row["mean"] <= 1 and -1 <= row["different_identities"]["mean"] <= 1
    assert (out / "sweep.png").is_file()
    assert set(report["goals"]) == {"faces", "realism", "geometry", "consistency"}
    table = capsys.readouterr().out
    for goal in ("faces appear", "realism", "geometry", "3D consistency"):
        assert f"| {goal} |" in table

    # same arguments, same numbers (the second run reads the cached real features)
    assert (
        bench.main([*common, "--n-geometry", "0", "--n-identity", "0", "--out", str(tmp_path / "again")]) == 0
    )
    again = json.loads((tmp_path / "again" / "report.json").read_text(encoding="utf-8"))
    assert again["realism"]["real"]["cached"] and again["geometry"] is None and again["consistency"] is None
    assert _metrics(again) == _metrics(report)


def test_2d_model_report(bench: ModuleType, tmp_path: Path) -> None:
    from gmpi_core.config import preset
    from gmpi_core.data.synthetic import synthesize_dataset
    from gmpi_core.train.loop import Trainer

    data = synthesize_dataset(tmp_path / "train", 32, 8, seed=0, progress=False)
    cfg = preset("synthetic32").with_updates(
        generator={"z_dim": 32, "w_dim": 32, "channel_base": 256, "channel_max": 32, "mapping_layers": 2},
        discriminator={"channel_base": 256, "channel_max": 32},
        train={"batch_size": 2, "n_planes": 4, "sample_interval": 1000, "model_save_interval": 0},
        dataset={"images": str(data)},
    )
    trainer = Trainer(cfg, tmp_path / "2d", mode="stylegan2", device="cpu", progress=False, sample_every=0)
    trainer.train(until=2)
    model = tmp_path / "2d" / "model"
    assert (model / "config.json").is_file()

    out = tmp_path / "out"
    argv = ["--model", str(model), "--n", str(N), "--heldout", str(tmp_path / "heldout"), "--out", str(out)]
    assert bench.main(argv) == 0
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["model"]["kind"] == "stylegan2" and report["model"]["resolution"] == 32
    _check_common(report, out, N)
    assert report["faces"]["detector"]["upsampled"]  # 32² images go to MTCNN at 128²
    assert report["geometry"] is None and report["consistency"] is None
    assert report["goals"]["geometry"] is None and (out / "samples.png").is_file()


def test_real_heads_against_themselves(bench: ModuleType, tmp_path: Path) -> None:
    """The analytic cases: the faces ratio of a set against itself is exactly 1, its FID is 0."""
    from gmpi_core.config import preset

    cfg = preset("synthetic64")
    heldout = tmp_path / "heldout"
    bench.ensure_heldout(heldout, cfg, 8)
    from gmpi_core.data.datasets import ImageSource

    names = ImageSource(bench.image_file(heldout)).names[:8]
    assert all(not n.startswith("mask/") for n in names)  # the heads, never the face masks
    images = bench.read_images(heldout, names, 64)
    assert images.shape == (8, 64, 64, 3) and images.dtype == np.uint8

    boxes = bench.detect_faces(images, 128, "test")
    assert any(b is not None for b in boxes)
    faces = bench.faces_metric(boxes, boxes)
    assert faces["ratio"] == 1.0 and faces["model"] == faces["real"]

    feats = bench.features(bench.inception(), images, "test")
    assert bench.fid_kid(feats, feats)["fid"] == pytest.approx(0.0, abs=1e-3)
    assert bench.fid_kid(feats[:4], feats[4:])["fid"] > 1.0  # different heads: clearly not 0


def test_heldout_default_reuses_a_larger_set(bench: ModuleType, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    assert bench.default_heldout(64, 512, runs) == runs / "synth64-heldout-seed1-n512"
    for n in (256, 2048, 4096):
        folder = runs / f"synth64-heldout-seed1-n{n}"
        folder.mkdir(parents=True)
        (folder / "meta.json").write_text("{}")
    # the first M heads of any seed-1 set are the same heads: the smallest set that is large enough
    assert bench.default_heldout(64, 512, runs) == runs / "synth64-heldout-seed1-n2048"
    assert bench.default_heldout(32, 512, runs) == runs / "synth32-heldout-seed1-n512"
