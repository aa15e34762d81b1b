"""scripts/bench/training_report.py: a run's log and its snapshots' quality reports become curves and a
table."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench" / "training_report.py"


@pytest.fixture(scope="module")
def report() -> ModuleType:
    spec = importlib.util.spec_from_file_location("training_report_bench", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    lines = [
        {"step": s, "kimg": s * 8 / 1000, "loss_d": 1.0 + s / 100, "loss_g": 2.0} for s in (50, 100, 150)
    ]
    lines.append({"step": 100, "kimg": 0.8, "loss_d": 5.0, "loss_g": 2.0})  # a resumed run repeats step 100
    (run / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    for step, fid in ((100, 300.0), (150, 200.0)):
        q = run / "quality" / str(step)
        q.mkdir(parents=True)
        body = {
            "model": {"step": step},
            "n": 64,
            "faces": {"ratio": step / 1000},
            "realism": {"model": {"fid": fid, "kid_mean": fid / 1000}, "floor": {"fid": 20.0}},
        }
        (q / "report.json").write_text(json.dumps(body), encoding="utf-8")
    return run


def test_smooth_is_a_trailing_mean(report: ModuleType) -> None:
    assert report.smooth([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]


def test_log_keeps_the_last_record_of_a_repeated_step(report: ModuleType, tmp_path: Path) -> None:
    log = report.read_log(_run(tmp_path))
    assert [r["step"] for r in log] == [50, 100, 150]
    assert log[1]["loss_d"] == 5.0


def test_curves_table_and_csv(report: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _run(tmp_path)
    out = tmp_path / "out"
    assert report.main([str(run), "--quality", str(run / "quality"), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| 100 | 0.8 | 300.0 | 0.3000 | 0.100 | 20.0 | 64 |" in text
    assert "| 150 | 1.2 | 200.0 | 0.2000 | 0.150 | 20.0 | 64 |" in text
    with Image.open(out / "curves.png") as im:
        assert im.size == (720, 660)  # losses and FID panels
    assert (out / "quality.csv").read_text(encoding="utf-8").splitlines()[
        0
    ] == "step,fid,kid,fid_floor,faces_ratio,n"


def test_a_missing_run_is_a_clear_error(
    report: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert report.main([str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "log.jsonl does not exist" in capsys.readouterr().err
