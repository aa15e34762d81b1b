"""The gateway/worker contract (``services/common/contracts.py``): every task name is a registered task on
its queue, a job record's parameters read back as the typed model they were stored from, and the trainer's
config file builds the experiment config its former flags built."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from services.common.contracts import (
    ENTRY_TASK,
    JOB_PARAMS,
    TASK_QUEUES,
    EvalParams,
    JobType,
    TaskName,
    TrainJobParams,
    TrainParams,
    job_params,
    parse_job_params,
)


def test_every_task_name_is_registered_and_routed_to_its_queue() -> None:
    from services.common.celery_app import QUEUES, app

    app.loader.import_default_modules()
    assert {str(name) for name in TaskName} <= set(app.tasks)
    for name in TaskName:
        queue = app.amqp.router.route({}, str(name))["queue"].name
        assert queue == TASK_QUEUES[name.rsplit(".", 1)[0]] and queue in QUEUES
    assert set(ENTRY_TASK) == set(JobType) == set(JOB_PARAMS)


def test_stored_params_read_back_as_the_model_they_were_stored_from() -> None:
    train = job_params("train", TrainParams(dataset_id="d", steps=5), model_id="model-x")
    stored = json.loads(json.dumps(train.model_dump(mode="json")))
    assert list(stored)[-1] == "model_id" and stored["ckpt_every"] == 500
    assert parse_job_params("train", stored) == train
    evaluate = job_params("evaluate", EvalParams(model_id="m", quick=True, n_fid=10))
    stored = json.loads(json.dumps(evaluate.model_dump(mode="json")))
    assert stored["options"] == {**evaluate.eval_options(), "metrics": list(evaluate.metrics)}
    assert parse_job_params("evaluate", stored) == evaluate
    with pytest.raises(ValueError, match="unknown job type"):
        parse_job_params("nonsense", {})


@pytest.mark.parametrize("extra", [{}, {"batch": 1, "planes": 4, "seed": 7}, {"batch": 64}])
def test_the_trainer_config_file_builds_the_config_of_the_former_flags(
    tmp_path: Path, extra: dict[str, Any]
) -> None:
    from gmpi_core.train.cli import build_config, build_parser
    from services.trainer.tasks import train_config

    p = TrainJobParams(dataset_id="d", model_id="m", steps=3, **extra)
    data, poses = tmp_path / "images.zip", tmp_path / "poses"
    flags = ["--preset", p.preset, "--out", "run", "--data", str(data), "--poses", str(poses)]
    flags += [a for k, v in extra.items() for a in (f"--{k}", str(v))]
    config = tmp_path / "config.json"
    config.write_text(json.dumps(train_config(p, data, poses)))
    from_file = build_parser().parse_args(
        ["--preset", p.preset, "--out", "run", "--config-json", str(config)]
    )
    assert build_config(from_file) == build_config(build_parser().parse_args(flags))
