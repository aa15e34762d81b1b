"""``gmpi prep landmarks`` (method §8.1): official output layout, failures, resumability, MetFaces x-flip."""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from gmpi_core.data.datasets import write_dataset_zip
from gmpi_core.data.poses import read_fail_list
from gmpi_core.preprocess import landmarks
from gmpi_core.preprocess.landmarks import landmark_text, main, result_path, run_landmarks
from gmpi_core.preprocess.mtcnn import Detection, find_weights_dir

try:
    find_weights_dir()
    HAVE_WEIGHTS = True
except FileNotFoundError:
    HAVE_WEIGHTS = False
needs_weights = pytest.mark.skipif(
    not HAVE_WEIGHTS, reason="MTCNN weights missing: pip install --no-deps facenet-pytorch"
)

LINE = re.compile(r"-?\d+\t-?\d+\n")
REF_LANDMARKS = np.array([[205.0, 101.7], [246.8, 103.7], [224.7, 129.0], [201.7, 139.2], [245.3, 141.9]])


@pytest.fixture(scope="module")
def face() -> np.ndarray:
    """The astronaut's face region, 256² (landmarks = REF_LANDMARKS − (100, 20))."""
    astronaut = pytest.importorskip("skimage.data").astronaut()
    return np.ascontiguousarray(astronaut[20:276, 100:356])


def _read_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "detections/log.jsonl").read_text().splitlines()]


def _fake_detector(calls: list[int]):
    """A stand-in detector: a face (fixed landmarks) in every image that is not all black."""

    def detect(images):
        calls.append(len(images))
        fixed = np.array([[10.7, 20.2], [30.9, 20.5], [20.0, 30.0], [12.0, 40.9], [28.5, 40.1]])
        return [
            Detection(np.array([0.0, 0.0, 50.0, 50.0]), 0.99, fixed) if im.any() else None for im in images
        ]

    return detect


# --- format ---------------------------------------------------------------------------------------


def test_landmark_text_is_five_tab_separated_int_lines_truncated_toward_zero() -> None:
    points = np.array([[1.9, 2.1], [-0.5, 3.999], [10.0, -1.7], [0.49, 0.0], [511.99, 7.5]])
    assert landmark_text(points) == "1\t2\n0\t3\n10\t-1\n0\t0\n511\t7\n"  # int(): −0.5 → 0, −1.7 → −1


def test_result_path_drops_only_the_extension_of_the_member() -> None:
    root = Path("/r")
    assert result_path(root, "00000/img00000000.png") == Path("/r/00000/img00000000.txt")
    assert result_path(root, "a.b_xflip.jpg") == Path("/r/a.b_xflip.txt")


@needs_weights
def test_zip_run_writes_official_layout_with_astronaut_landmarks(tmp_path, face) -> None:
    zip_path = write_dataset_zip(tmp_path / "faces.zip", [("00000/img00000000.png", face)])
    summary = run_landmarks(zip_path, tmp_path / "out", progress=False)
    assert summary["detected"] == 1 and summary["failed"] == 0
    text = (tmp_path / "out/detections/results/00000/img00000000.txt").read_bytes().decode("ascii")
    lines = text.splitlines(keepends=True)
    assert len(lines) == 5 and all(LINE.fullmatch(line) for line in lines)
    values = np.array([[int(v) for v in line.split("\t")] for line in lines])
    expected = REF_LANDMARKS - np.array([100.0, 20.0])
    assert np.abs(values - expected).max() <= 2  # 1.5 px detector tolerance + int() truncation
    assert (tmp_path / "out/detections/fail_list.txt").read_bytes() == b"\n"  # the original's "no failure"


# --- failures -------------------------------------------------------------------------------------


@needs_weights
def test_blank_image_goes_to_fail_list_with_no_face_reason(tmp_path, face) -> None:
    zip_path = write_dataset_zip(
        tmp_path / "d.zip",
        [("00000/img00000000.png", np.zeros((128, 128, 3), np.uint8)), ("00000/img00000001.png", face)],
    )
    summary = run_landmarks(zip_path, tmp_path / "out", progress=False)
    assert (summary["detected"], summary["failed"]) == (1, 1)
    fail_list = (tmp_path / "out/detections/fail_list.txt").read_text()
    assert fail_list == "00000/img00000000.png\n"
    assert not (tmp_path / "out/detections/results/00000/img00000000.txt").exists()
    assert (tmp_path / "out/detections/results/00000/img00000001.txt").exists()
    records = {r.get("member"): r for r in _read_log(tmp_path / "out")}
    assert records["00000/img00000000.png"]["status"] == "no_face"
    assert records["00000/img00000001.png"]["status"] == "ok"


def _zip_with_corrupt_member(path: Path, good: np.ndarray) -> Path:
    buf = io.BytesIO()
    PIL.Image.fromarray(good).save(buf, format="PNG")
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("00000/img00000000.png", b"\x89PNG\r\n\x1a\n this is not a png")
        zf.writestr("00000/img00000001.png", buf.getvalue())
        zf.writestr("00000/img00000002.png", buf.getvalue()[: len(buf.getvalue()) // 2])  # truncated
        zf.writestr("00000/img00000003.png", buf.getvalue())
        zf.writestr("dataset.json", json.dumps({"labels": None}))
    return path


def test_corrupt_members_are_logged_and_listed_and_the_run_continues(tmp_path, monkeypatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(landmarks, "detect_landmarks", _fake_detector(calls))
    image = np.random.default_rng(0).integers(1, 256, (64, 64, 3), dtype=np.uint8)  # ~12 kB as PNG
    zip_path = _zip_with_corrupt_member(tmp_path / "d.zip", image)
    summary = run_landmarks(zip_path, tmp_path / "out", batch=4, progress=False)
    assert (summary["images"], summary["detected"], summary["failed"]) == (4, 2, 2)
    assert calls == [2]  # the two readable images, in one batch
    fails = (tmp_path / "out/detections/fail_list.txt").read_text()
    assert fails == "00000/img00000000.png\n00000/img00000002.png\n"
    assert read_fail_list(tmp_path / "out/detections/fail_list.txt") == {
        "00000/img00000000.png",
        "00000/img00000002.png",
    }
    records = {r.get("member"): r for r in _read_log(tmp_path / "out")}
    assert records["00000/img00000000.png"]["status"] == "unreadable"
    assert "cannot decode" in records["00000/img00000000.png"]["reason"]
    assert records["00000/img00000003.png"]["status"] == "ok"
    text = (tmp_path / "out/detections/results/00000/img00000003.txt").read_text()
    assert text == "10\t20\n30\t20\n20\t30\n12\t40\n28\t40\n"


# --- resumability ---------------------------------------------------------------------------------


def test_second_run_does_no_work_and_a_removed_result_is_redone(tmp_path, monkeypatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(landmarks, "detect_landmarks", _fake_detector(calls))
    images = [(f"00000/img{i:08d}.png", np.full((32, 32, 3), 10 * (i % 3), np.uint8)) for i in range(7)]
    zip_path = write_dataset_zip(tmp_path / "d.zip", images)  # images 0, 3, 6 are black → no face
    out = tmp_path / "out"
    first = run_landmarks(zip_path, out, batch=3, progress=False)
    assert (first["processed"], first["detected"], first["failed"]) == (7, 4, 3)
    assert sum(calls) == 7
    log_lines = len(_read_log(out))

    calls.clear()
    second = run_landmarks(zip_path, out, batch=3, progress=False)
    assert calls == [] and second["processed"] == 0 and second["skipped"] == 7
    new = _read_log(out)[log_lines:]
    assert [r["event"] for r in new] == ["start", "end"]  # no image was touched
    fail_list = "00000/img00000000.png\n00000/img00000003.png\n00000/img00000006.png\n"
    assert (out / "detections/fail_list.txt").read_text() == fail_list  # not duplicated

    (out / "detections/results/00000/img00000004.txt").unlink()
    third = run_landmarks(zip_path, out, batch=3, progress=False)
    assert calls == [1] and third["processed"] == 1 and third["detected"] == 1

    calls.clear()
    fourth = run_landmarks(zip_path, out, batch=3, progress=False, retry_failed=True)
    assert sum(calls) == 3 and fourth["failed"] == 3
    assert (out / "detections/fail_list.txt").read_text() == fail_list


# --- MetFaces x-flip and the command line ---------------------------------------------------------


def test_xflip_writes_mirrored_copies_then_detects_on_all(tmp_path, monkeypatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(landmarks, "detect_landmarks", _fake_detector(calls))
    folder = tmp_path / "metfaces"
    folder.mkdir()
    rng = np.random.default_rng(0)
    originals = {}
    for stem in ("a", "b"):
        originals[stem] = rng.integers(1, 256, (16, 24, 3), dtype=np.uint8)
        PIL.Image.fromarray(originals[stem]).save(folder / f"{stem}.png")
    summary = run_landmarks(folder, tmp_path / "out", xflip=True, progress=False)
    assert summary["xflip_written"] == 2 and summary["images"] == 4 and sum(calls) == 4
    for stem, pixels in originals.items():
        flipped = np.asarray(PIL.Image.open(folder / f"{stem}_xflip.png"))
        assert np.array_equal(flipped, pixels[:, ::-1])
    results = sorted(p.name for p in (tmp_path / "out/detections/results").iterdir())
    assert results == ["a.txt", "a_xflip.txt", "b.txt", "b_xflip.txt"]
    again = run_landmarks(folder, tmp_path / "out", xflip=True, progress=False)
    assert again["xflip_written"] == 0 and again["processed"] == 0  # copies are not copied again


def test_cli_runs_and_reports_bad_arguments(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(landmarks, "detect_landmarks", _fake_detector([]))
    zip_path = write_dataset_zip(
        tmp_path / "d.zip", [("00000/img00000000.png", np.ones((16, 16, 3), np.uint8))]
    )
    assert main(["--input", str(zip_path), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    assert "1 detected" in capsys.readouterr().out
    assert main(["--input", str(zip_path), "--out", str(tmp_path / "o2"), "--xflip", "--quiet"]) == 2
    assert "needs an image folder" in capsys.readouterr().err
    assert main(["--input", str(tmp_path / "missing.zip"), "--out", str(tmp_path / "o3"), "--quiet"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["--input", str(zip_path), "--out", str(tmp_path / "o4"), "--batch", "0", "--quiet"]) == 2


# --- synthetic heads ------------------------------------------------------------------------------


@needs_weights
def test_synthetic_heads_are_mostly_detected_near_their_true_landmarks(tmp_path) -> None:
    from gmpi_core.data.synthetic import synthesize_dataset

    root = synthesize_dataset(tmp_path / "syn", res=128, n=8, progress=False)
    summary = run_landmarks(root / "images.zip", tmp_path / "out", batch=8, progress=False)
    truth_dir = root / "landmarks/detections/results"
    errors = []
    for truth in sorted(truth_dir.rglob("*.txt")):
        found = tmp_path / "out/detections/results" / truth.relative_to(truth_dir)
        if found.exists():
            errors.append(np.linalg.norm(np.loadtxt(found) - np.loadtxt(truth), axis=1))
    rate = summary["detected"] / 8
    mean_error = float(np.mean(errors)) if errors else float("inf")
    print(f"synthetic heads 128²: detected {rate:.0%}, mean landmark error {mean_error:.2f} px")
    # measured: 8/8 detected, mean error 2.2 px (32 heads: 32/32, 2.2 px; 256²: 16/16, 4.3 px)
    assert rate >= 0.75
    assert mean_error < 5.0  # ~4% of the image: cartoon heads, not faces MTCNN was trained on


@needs_weights
@pytest.mark.slow
def test_worker_processes_write_the_same_results_as_one_process(tmp_path) -> None:
    from gmpi_core.data.synthetic import synthesize_dataset

    root = synthesize_dataset(tmp_path / "syn", res=64, n=6, progress=False)
    with zipfile.ZipFile(root / "images.zip") as zf:
        names = sorted(n for n in zf.namelist() if n.endswith(".png"))
        images = [(n, np.asarray(PIL.Image.open(io.BytesIO(zf.read(n))))) for n in names]
    images.append(("zz.png", np.zeros((64, 64, 3), np.uint8)))  # no face
    data = write_dataset_zip(tmp_path / "d.zip", images)
    one = run_landmarks(data, tmp_path / "one", batch=2, progress=False)
    two = run_landmarks(data, tmp_path / "two", batch=2, progress=False, workers=2)
    assert (one["detected"], one["failed"]) == (two["detected"], two["failed"])
    assert two["failed"] >= 1
    for name in ("one", "two"):
        assert "zz.png\n" in (tmp_path / name / "detections/fail_list.txt").read_text()
    res_one, res_two = tmp_path / "one/detections/results", tmp_path / "two/detections/results"
    files = sorted(p.relative_to(res_one) for p in res_one.rglob("*.txt"))
    assert len(files) == one["detected"]
    assert files == sorted(p.relative_to(res_two) for p in res_two.rglob("*.txt"))
    for f in files:
        assert (res_one / f).read_bytes() == (res_two / f).read_bytes()
