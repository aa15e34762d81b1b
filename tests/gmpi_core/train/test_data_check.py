"""Training checks its images before the first step: it refuses with the list of bad images, or with
``skip`` trains without them and never draws them."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.gmpi_core.data.test_check import BAD, make_bad_folder
from tests.gmpi_core.train.test_loop import tiny_config


def folder_config(data: Path):
    return tiny_config(data).with_updates(dataset={"kind": "folder", "resolution": 32, "poses": None})


def test_training_refuses_to_start_with_the_list_of_bad_images(tmp_path):
    from gmpi_core.train.loop import Trainer, TrainingError

    data = make_bad_folder(tmp_path / "data")
    with pytest.raises(TrainingError) as caught:
        Trainer(folder_config(data), tmp_path / "run", device="cpu", progress=False)
    message = str(caught.value)
    assert "4 bad image(s); training did not start" in message and "--skip-bad" in message
    for name, kind in BAD.items():
        assert any(name in line and kind in line for line in message.splitlines()), (name, message)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_the_cli_refuses_with_the_list_then_trains_with_an_exclude_list_or_skip_bad(tmp_path, capsys):
    import json

    from gmpi_core.data.check import write_exclude_list
    from gmpi_core.train.cli import main

    data = make_bad_folder(tmp_path / "data")
    tiny = folder_config(data)  # the tiny networks of test_loop, on a folder-layout dataset
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({k: tiny.model_dump()[k] for k in ("generator", "discriminator", "dataset")}))
    argv = ["--preset", "synthetic32", "--data", str(data), "--config-json", str(cfg), "--device", "cpu",
            "--no-progress", "--steps", "1", "--batch", "2", "--planes", "4", "--sample-every", "0",
            "--workers", "0"]  # fmt: skip
    assert main([*argv, "--out", str(tmp_path / "refused")]) == 2
    err = capsys.readouterr().err
    assert "gmpi train: error: the training data has 4 bad image(s)" in err
    assert all(name in err for name in BAD)
    assert not (tmp_path / "refused" / "checkpoints").exists()

    exclude = write_exclude_list(tmp_path / "exclude.txt", sorted(BAD))
    assert main([*argv, "--out", str(tmp_path / "excluded"), "--exclude", str(exclude)]) == 0
    assert main([*argv, "--out", str(tmp_path / "skipped"), "--skip-bad"]) == 0
    for run in ("excluded", "skipped"):
        assert (tmp_path / run / "checkpoints" / "latest").is_file()


def test_with_skip_training_proceeds_and_never_draws_the_bad_images(tmp_path, caplog):
    from gmpi_core.train.loop import Trainer

    data = make_bad_folder(tmp_path / "data")
    with caplog.at_level("WARNING", logger="gmpi.train"):
        t = Trainer(folder_config(data), tmp_path / "run", device="cpu", progress=False, data_check="skip",
                    sample_every=0)  # fmt: skip
    assert "skipping 4 bad image(s)" in caplog.text
    assert t.data_check is not None and t.data_check.bad_keys == sorted(BAD)
    good = {f"good{i}.png" for i in range(6)}
    assert set(t.dataset.keys) == good
    drawn: list[str] = []
    load = t.dataset.load_image

    def recording_load(key):  # records what the loader reads, then reads it
        drawn.append(key)
        return load(key)

    t.dataset.load_image = recording_load
    t.train(until=4)  # batch 2: one epoch of the 6 good images and one batch of the next
    t.close()
    assert t.step_idx == 4 and len(drawn) == 8
    assert set(drawn) == good  # every good image drawn, no bad one
