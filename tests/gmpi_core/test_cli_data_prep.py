"""`gmpi data synth` and `gmpi prep poses` on the command line: the README's lines run as written, the
pose step finds the image size itself where the data tells it, and user errors are messages with exit
code 2, not tracebacks."""

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from gmpi_core.cli import main
from gmpi_core.data.synthetic import synthesize_dataset

README = Path(__file__).resolve().parents[2] / "README.md"
RES = 16
# a frontal FFHQ-like face at 256²: eyes, nose, mouth corners (integer pixel indices, MTCNN order)
FACE_256 = [(90, 120), (166, 120), (128, 154), (97, 190), (159, 190)]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return synthesize_dataset(tmp_path_factory.mktemp("synth") / "d", res=RES, n=3, progress=False)


def _readme_command(prefix: str) -> list[str]:
    """The README usage line starting with ``prefix`` (continuation lines joined, comment dropped)."""
    lines = README.read_text(encoding="utf-8").splitlines()
    i = next(i for i, line in enumerate(lines) if line.startswith(prefix))
    text = lines[i]
    while text.split("#")[0].rstrip().endswith("\\"):
        i += 1
        text = text.split("#")[0].rstrip()[:-1] + " " + lines[i]
    return shlex.split(text.split("#")[0])


def _write_detections(folder: Path, members: dict[str, list[tuple[int, int]]]) -> None:
    for member, points in members.items():
        path = folder / "results" / f"{member}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{x}\t{y}\n" for x, y in points))
    (folder / "fail_list.txt").write_text("\n")


def test_the_readme_pose_line_runs_as_written(tmp_path, monkeypatch, capsys):
    argv = _readme_command("gmpi prep poses")
    assert argv[:3] == ["gmpi", "prep", "poses"]
    landmarks = Path(argv[argv.index("--landmarks") + 1])
    monkeypatch.chdir(tmp_path)
    _write_detections(landmarks, {"00000/img00000000": FACE_256})
    assert main([*argv[1:], "--no-progress"]) == 0
    out = Path(argv[argv.index("--out") + 1])
    assert (out / "00000" / "img00000000.mat").is_file()
    assert "1 poses written" in capsys.readouterr().out


def test_poses_without_a_resolution_to_infer_say_what_to_pass(tmp_path, capsys):
    _write_detections(tmp_path / "detections", {"00000/img00000000": FACE_256})
    with pytest.raises(SystemExit) as exc:
        main(["prep", "poses", "--landmarks", str(tmp_path / "detections"), "--out", str(tmp_path / "p")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--resolution R is required" in err and "--resolution 256 for ffhq256x256.zip" in err
    assert "--images" in err
    assert not (tmp_path / "p").exists()


def test_poses_read_the_resolution_of_a_synthetic_dataset(dataset, tmp_path, capsys):
    argv = ["prep", "poses", "--landmarks", str(dataset / "landmarks" / "detections"), "--out", str(tmp_path)]
    assert main([*argv, "--template", "synthetic", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"resolution {RES}x{RES} from {dataset / 'meta.json'}" in out
    settings = json.loads((tmp_path / "pose_estimator.json").read_text())
    assert settings["resolution"] == [RES, RES]


def test_poses_read_the_resolution_of_the_images_the_landmark_step_logged(dataset, tmp_path, capsys):
    detections = tmp_path / "mtcnn" / "detections"
    _write_detections(detections, {"00000/img00000000": [(5, 6), (10, 6), (8, 9), (6, 12), (10, 12)]})
    start = {"event": "start", "input": str(dataset / "images.zip"), "images": 3}
    (detections / "log.jsonl").write_text(json.dumps(start) + "\n")
    assert (
        main(["prep", "poses", "--landmarks", str(detections), "--out", str(tmp_path / "p"), "--no-progress"])
        == 0
    )
    assert f"resolution {RES}x{RES} from the images of {dataset / 'images.zip'}" in capsys.readouterr().out
    assert json.loads((tmp_path / "p" / "pose_estimator.json").read_text())["resolution"] == [RES, RES]


def test_a_resolution_that_contradicts_the_images_is_refused(dataset, tmp_path, capsys):
    argv = ["prep", "poses", "--landmarks", str(dataset / "landmarks"), "--out", str(tmp_path / "p")]
    assert main([*argv, "--resolution", "256", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"--resolution 256 does not match {dataset / 'meta.json'}" in err and f"--resolution {RES}" in err
    assert not (tmp_path / "p").exists()
    # --images tells it too, for landmarks anywhere
    argv += ["--images", str(dataset / "images.zip")]
    assert main([*argv, "--resolution", "32", "--no-progress"]) == 2
    assert f"the images of {dataset / 'images.zip'}, which are {RES}x{RES}" in capsys.readouterr().err


# --- gmpi data synth ---------------------------------------------------------------------------------------


def test_synth_into_an_existing_dataset_says_to_overwrite_or_choose_another_folder(dataset, capsys):
    before = (dataset / "meta.json").read_text()
    assert main(["data", "synth", "--out", str(dataset), "--res", str(RES), "--n", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("gmpi data synth: error:") and "--overwrite" in err and "another output folder" in err
    )
    assert (dataset / "meta.json").read_text() == before


def test_synth_into_a_foreign_folder_says_to_choose_a_new_one(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("x")
    assert main(["data", "synth", "--out", str(tmp_path), "--n", "1", "--no-progress", "--overwrite"]) == 2
    assert "choose a new or empty output folder" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--res", "48"], "--res 48 is not supported; choose one of 16, 32, 64, 128, 256, 512, 1024"),
        (["--res", "2048"], "choose one of 16, 32, 64, 128, 256, 512, 1024"),
        (["--n", "0"], "n (number of images) must be a positive int"),
        (["--preset", "FFHQ128"], "unknown preset 'FFHQ128'"),
    ],
)
def test_synth_argument_errors_exit_2_with_a_message(tmp_path, capsys, args, message):
    assert main(["data", "synth", "--out", str(tmp_path / "d"), *args, "--no-progress"]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "d").exists() and list(tmp_path.iterdir()) == []


def test_synth_user_errors_print_no_traceback(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "gmpi_core.cli", "data", "synth", "--out", str(tmp_path / "d"), "--res", "48"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2
    assert "Traceback" not in run.stderr and "--res 48 is not supported" in run.stderr
