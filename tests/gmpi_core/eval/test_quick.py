"""``gmpi eval --quick``: a labelled smoke test on the shipped demo model, its plan and ETA, and a clean stop
on Ctrl-C (one line, exit status 130, no report)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gmpi_core.config import preset
from gmpi_core.eval import cli
from gmpi_core.eval.protocol import (
    QUICK_COUNTS,
    STAGES,
    EvalInterrupted,
    EvalOptions,
    ResolvedProtocol,
    load_model,
    run_eval,
)

DEMO = Path(cli.__file__).resolve().parents[1] / "assets" / "demo_model"
ROOT = Path(cli.__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def synth64(tmp_path_factory) -> Path:
    from gmpi_core.data.synthetic import synthesize_dataset

    return synthesize_dataset(tmp_path_factory.mktemp("synth") / "s64", res=64, n=16, seed=0, progress=False)


def test_quick_counts_are_small_capped_by_the_preset_and_exclusive_with_debug():
    proto = ResolvedProtocol.of(EvalOptions(quick=True), preset("FFHQ256"))
    assert (proto.mode, proto.n_fid, proto.n_real, proto.n_identity, proto.n_geometry) == (
        "quick",
        *(QUICK_COUNTS[k] for k in ("n_fid", "n_real", "n_identity", "n_geometry")),
    )
    assert ResolvedProtocol.of(EvalOptions(quick=True, n_fid=64), preset("FFHQ256")).n_fid == 64
    assert "NOT comparable" in (proto.notice(preset("FFHQ256"), ("fid",)) or "")
    full = ResolvedProtocol.of(EvalOptions(), preset("FFHQ256"))
    assert full.mode == "full" and full.notice(preset("FFHQ256"), ("fid", "kid")) is None
    with pytest.raises(ValueError, match="choose one"):
        EvalOptions(quick=True, debug=True)
    assert cli.METRICS == ("fid", "kid", "identity", "depth", "pose")  # the parser's copy of the names


def test_quick_mode_on_the_demo_model_prints_the_plan_and_eta_and_labels_the_report(
    synth64, tmp_path, capsys
):
    out = tmp_path / "eval"
    argv = [
        "--model", str(DEMO), "--data", str(synth64), "--out", str(out), "--quick",
        "--metrics", "fid,kid,identity,depth", "--no-face-detect",
        "--n-fid", "8", "--n-real", "8", "--n-identity", "4", "--n-geometry", "4", "--batch-size", "4",
        "--no-cache", "--no-progress",
    ]  # fmt: skip
    assert cli.main(argv) == 0
    screen = capsys.readouterr().out
    lines = screen.splitlines()
    plan = [i for i, line in enumerate(lines) if line.startswith("[gmpi eval] plan: ")]
    eta = [i for i, line in enumerate(lines) if line.startswith("[gmpi eval] estimated time left: ")]
    notice = [i for i, line in enumerate(lines) if "QUICK MODE" in line and "NOT comparable" in line]
    assert [lines[i].removeprefix("[gmpi eval] plan: ") for i in plan] == [
        "fid,kid: 8 real images (TF-Inception)",
        "fid,kid: 8 generated images (TF-Inception), KID 100 subsets",
        "identity: 4 view pairs (facenet embedder)",
        "depth: 4 renders at 224² (depth_synthetic)",
    ]
    # the notice first, then the plan, then the estimate, all before the first stage reports its end
    first_done = next(i for i, line in enumerate(lines) if " images in " in line)
    assert notice[0] < plan[0] and plan[-1] < eta[0] < first_done
    assert notice[-1] > first_done  # repeated with the summary at the end
    report = json.loads((out / "report.json").read_text())
    assert report["mode"] == "quick" and report["comparable_to_paper"] is False
    assert "QUICK MODE" in report["notice"] and "NOT comparable to the paper" in report["notice"]
    assert report["protocol"]["mode"] == "quick"
    assert report["counts"] == {"n_fid": 8, "n_real": 8, "n_identity": 4, "n_geometry": 4}
    assert report["metrics"]["fid"] is not None and report["metrics"]["identity_mean"] is not None
    summary = (out / "summary.txt").read_text()
    assert summary.splitlines()[1].startswith("*** QUICK MODE") and "NOT comparable" in summary
    assert not list(out.glob(".*.tmp"))  # written through temporary files, none left over


@pytest.mark.parametrize("with_eta", [False, True])
def test_an_interrupt_from_the_progress_hook_stops_the_run_without_a_report(synth64, tmp_path, with_eta):
    gmpi, info = load_model(str(DEMO))
    seen: list[tuple] = []

    def plain(stage: str, done: int, total: int | None) -> None:
        seen.append((stage, done, total))
        if done >= 16:
            raise KeyboardInterrupt

    def with_estimate(stage: str, done: int, total: int | None, eta_s: float | None = None) -> None:
        seen.append((stage, done, total, eta_s))
        if done >= 16:
            raise KeyboardInterrupt

    options = EvalOptions(quick=True, metrics=("depth",), n_geometry=64, progress=False)
    with pytest.raises(EvalInterrupted) as caught:
        run_eval(gmpi, options, tmp_path / "eval", data=str(synth64), model_info=info,
                 on_progress=with_estimate if with_eta else plain)  # fmt: skip
    assert str(caught.value).startswith("interrupted during geometry (16/64 renders")
    assert "no report written" in str(caught.value)
    assert (caught.value.phase, caught.value.done, caught.value.total) == ("geometry", 16, 64)
    assert [r[:3] for r in seen] == [("geometry", 8, 64), ("geometry", 16, 64)]
    assert all(r[0] in STAGES for r in seen)
    if with_eta:  # no estimate while the first batches are timed, then the seconds left (48 renders)
        assert seen[0][3] is None and seen[1][3] is not None and seen[1][3] > 0
    assert not (tmp_path / "eval" / "report.json").exists()
    assert not (tmp_path / "eval" / "summary.txt").exists()


def test_ctrl_c_after_the_plan_exits_130_with_one_line_and_no_report(synth64, tmp_path):
    out = tmp_path / "eval"
    cmd = [
        sys.executable, "-m", "gmpi_core.eval.cli", "--model", str(DEMO), "--data", str(synth64),
        "--out", str(out), "--quick", "--metrics", "depth", "--n-geometry", "4096", "--no-progress",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as a terminal's child has it
    )
    try:
        assert proc.stdout is not None
        lines = []
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("[gmpi eval] plan: "):
                break
        assert lines and lines[-1].startswith("[gmpi eval] plan: depth: 4096 renders"), "".join(lines)
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    said = [line for line in err.splitlines() if "interrupted" in line]
    assert len(said) == 1 and said[0].startswith("gmpi eval: interrupted during "), err
    assert "no report written" in said[0]
    assert not (out / "report.json").exists() and not (out / "summary.txt").exists()
    assert "wrote" not in rest
