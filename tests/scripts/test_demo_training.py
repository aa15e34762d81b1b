"""scripts/demo_training.py: the demo model's run state goes into the record and comes back exactly."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "demo_training.py"


@pytest.fixture()
def dt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    spec = importlib.util.spec_from_file_location("demo_training_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "RUN", tmp_path / "runs" / "demo2d")
    monkeypatch.setattr(module, "DATA", tmp_path / "runs" / "data")
    monkeypatch.setattr(module, "RECORD", tmp_path / "record")
    monkeypatch.setattr(module, "STATE", tmp_path / "record" / "state")
    (tmp_path / "runs" / "data").mkdir(parents=True)
    (tmp_path / "runs" / "data" / "images.zip").write_bytes(b"stand-in")  # restore synthesizes nothing
    return module


def _fake_run(run: Path) -> None:
    (run / "checkpoints").mkdir(parents=True)
    (run / "samples").mkdir()
    for step in (1000, 2000):
        (run / "checkpoints" / f"ckpt_{step:07d}.pt").write_bytes(f"state {step}".encode())
        Image.new("RGB", (8, 8)).save(run / "samples" / f"{step:07d}_fixed_ema.png")
    log = [{"step": s, "kimg": s * 0.008, "loss_d": 1.0, "loss_g": 2.0} for s in (1000, 2000)]
    (run / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log), encoding="utf-8")


def test_save_keeps_only_the_newest_checkpoint_and_the_even_thousand_samples(dt: ModuleType) -> None:
    _fake_run(dt.RUN)
    (dt.STATE).mkdir(parents=True)
    (dt.STATE / "ckpt_0000500.pt").write_bytes(b"older session")
    assert dt.save() == 0
    assert sorted(p.name for p in dt.STATE.glob("ckpt_*.pt")) == ["ckpt_0002000.pt"]
    assert (dt.STATE / "ckpt_0002000.pt").read_bytes() == b"state 2000"
    assert sorted(p.name for p in (dt.RECORD / "samples").iterdir()) == ["0002000_fixed_ema.png"]
    assert (dt.RECORD / "curves.png").is_file() and (dt.STATE / "log.jsonl").is_file()


def test_restore_puts_the_saved_state_back_as_the_latest_checkpoint(dt: ModuleType) -> None:
    dt.STATE.mkdir(parents=True)
    (dt.STATE / "ckpt_0002000.pt").write_bytes(b"state 2000")
    (dt.STATE / "log.jsonl").write_text('{"step": 2000}\n', encoding="utf-8")
    assert dt.restore() == 0
    ckpts = dt.RUN / "checkpoints"
    assert (ckpts / "latest").read_text(encoding="utf-8").strip() == "ckpt_0002000.pt"
    assert (ckpts / "ckpt_0002000.pt").read_bytes() == b"state 2000"
    assert (dt.RUN / "log.jsonl").read_text(encoding="utf-8") == '{"step": 2000}\n'
    (dt.STATE / "ckpt_0002000.pt").write_bytes(b"changed")
    assert dt.restore() == 0  # a run that has checkpoints is never overwritten
    assert (ckpts / "ckpt_0002000.pt").read_bytes() == b"state 2000"


def test_save_without_a_run_is_an_error(dt: ModuleType) -> None:
    assert dt.save() == 2
