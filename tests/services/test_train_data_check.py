"""A train job whose dataset fails the trainer's data check (``gmpi_core.train``: every image is checked
before the first step) ends ``failed`` with an input error listing the bad images, not a traceback; the
``skip_bad`` param passes ``--skip-bad`` through. The real trainer process runs (it stops at the check,
before building a model), in-process job lifecycle against the real Redis and S3."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from services.common.jobs import JobStore
from services.common.settings import Settings

BAD = "00000/img00000002.png"


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 6-image synthetic dataset (images.zip + poses/) and ``bad.zip``: the same with one image cut."""
    out = tmp_path_factory.mktemp("synth") / "s"
    gmpi = Path(sys.executable).parent / "gmpi"
    cmd = [str(gmpi), "data", "synth", "--out", str(out), "--res", "32", "--n", "6", "--workers", "1"]
    subprocess.run([*cmd, "--no-progress"], check=True, timeout=600, capture_output=True)
    with zipfile.ZipFile(out / "images.zip") as src, zipfile.ZipFile(out / "bad.zip", "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            dst.writestr(name, data[:40] if name == BAD else data)
    return out


@pytest.fixture
def jobs(settings: Settings) -> JobStore:
    store = JobStore.from_url(settings.redis_url)
    store.r.flushdb()
    return store


def _params(**extra: object) -> dict[str, object]:
    return {
        "dataset_id": "bad-data",
        "model_id": "model-bad-data",
        "preset": "synthetic32",
        "steps": 2,
        "ckpt_every": 1,
        "log_every": 1,
        "device": "cpu",
        **extra,
    }


def test_a_dataset_failing_the_data_check_fails_the_job_with_the_bad_images(
    jobs: JobStore, synth: Path
) -> None:
    from services.common.tasks import JobContext, run_job
    from services.trainer import tasks as trainer

    rec, _ = jobs.create("train", _params())

    def body(ctx: JobContext) -> None:  # train() after stage_inputs: the local files stand for the store's
        run, _, up = trainer.prepare_run(ctx)
        trainer.supervise(
            ctx, trainer.train_command(ctx, synth / "bad.zip", synth / "poses", run, 1), run, up
        )

    run_job(rec["id"], body)
    got = jobs.get(rec["id"])
    assert got["state"] == "failed", got
    err = got["error"]
    assert err["code"] == "bad_training_data", err  # the input is wrong: not "internal", not retried
    assert err["details"] == {"bad_images": [BAD]} or BAD in str(err["details"]), err  # no traceback
    msg = err["message"]
    assert msg.startswith("dataset 'bad-data' failed the data check: the training data has 1 bad image(s)"), (
        msg
    )
    assert BAD in msg and "not_an_image" in msg, msg
    assert '"skip_bad": true' in msg and "--skip-bad" not in msg, msg
    assert "Traceback" not in msg and "exited with status" not in msg, msg


def test_skip_bad_passes_the_flag_and_the_default_does_not(jobs: JobStore, tmp_path: Path) -> None:
    from services.common.settings import get_settings
    from services.common.storage import get_storage
    from services.common.tasks import JobContext
    from services.trainer.tasks import train_args

    settings = get_settings()

    def args(params: dict[str, object]) -> list[str]:
        ctx = JobContext("j", params, jobs, get_storage(settings), settings, job_type="train")
        return train_args(ctx, tmp_path / "images.zip", None, tmp_path / "run")

    assert "--skip-bad" in args(_params(skip_bad=True))
    assert "--skip-bad" not in args(_params())
    assert "--skip-bad" not in args(_params(skip_bad=False))


def test_refusal_is_read_from_the_log_and_other_errors_are_not() -> None:
    from services.trainer.tasks import data_check_refusal

    log = (
        "[gmpi train] something\n"
        "gmpi train: error: the training data has 2 bad image(s); training did not start:\n"
        "/c/images.zip (zip): 6 of 6 images checked (headers) in 0.1 s\n"
        "2 bad image(s): 1 not an image, 1 no pose\n"
        "  not_an_image  a/1.png: not an image file (40 bytes)  [member 'a/1.png' of /c/images.zip]\n"
        "  no_pose       a/2.png: no pose  [poses/]\n"
        "replace or remove them, or train without them: --skip-bad (...)\n"
        "E1207 19:00:00.000 torch/distributed/elastic: failed\n"
    )
    found = data_check_refusal(log)
    assert found is not None
    report, bad = found
    assert bad == ["a/1.png", "a/2.png"]
    assert "torch" not in report and report.endswith("(...)")
    assert data_check_refusal("gmpi train: error: --init foo does not exist\n") is None
    assert data_check_refusal("Traceback (most recent call last):\n  RuntimeError: boom\n") is None
