"""The geometry benchmark's budget options: a time budget, fixed step counts, or the reference clock."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench" / "synthetic_geometry.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("synthetic_geometry_bench", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_reference_clock_turns_minutes_into_the_reference_steps(bench: ModuleType) -> None:
    # 30 min with a quarter for the 2D stage: 450 s / 0.439 s = 1025.1 and 1350 s / 0.708 s = 1906.8
    args = bench.parse_args(["--reference-clock", "--budget-min", "30", "--two-d-fraction", "0.25"])
    assert args.steps == [1025, 1907]
    # 15 %: 270 s / 0.439 s = 615.0, 1530 s / 0.708 s = 2161.0
    args = bench.parse_args(["--reference-clock", "--two-d-fraction", "0.15"])
    assert args.steps == [615, 2161]
    # a budget too small for one step still trains one
    assert bench.reference_steps(0.01, 0.01) == [1, 1]


def test_time_budget_is_the_default_and_steps_can_be_fixed(bench: ModuleType) -> None:
    assert bench.parse_args([]).steps is None
    assert bench.parse_args(["--steps", "7", "9"]).steps == [7, 9]


@pytest.mark.parametrize(
    "argv", [["--steps", "0", "5"], ["--steps", "5"], ["--reference-clock", "--steps", "5", "5"]]
)
def test_bad_budget_options_are_refused(bench: ModuleType, argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        bench.parse_args(argv)
    assert exc.value.code == 2


class _CountingTrainer:
    """Stands in for ``Trainer`` (the loop under test only calls these): each step takes no time."""

    def __init__(self, out: Path) -> None:
        self.step_idx = 0
        self.resumed_from = None
        self.out = out
        self.saved: list[int] = []

    def step(self) -> dict[str, float]:
        self.step_idx += 1
        return {"loss_d": 0.0, "loss_g": 0.0, "step_time": 0.0}

    def save_checkpoint(self) -> None:
        self.saved.append(self.step_idx)
        (self.out / "model").mkdir(exist_ok=True)

    def write_samples(self) -> None:
        pass


def test_fixed_steps_stop_at_the_count_whatever_the_clock(bench: ModuleType, tmp_path: Path) -> None:
    progress = bench.Progress(tmp_path / "progress.json")
    trainer = _CountingTrainer(tmp_path)
    seen: list[int] = []
    # an hour of budget, but 12 steps asked: the loop stops at 12
    bench.train_stage(
        "stage2", trainer, 3600.0, progress, 1e9, on_step=lambda t: seen.append(t.step_idx), max_steps=12
    )
    assert trainer.step_idx == 12
    assert seen == list(range(13))  # before the first step, then after each
    assert trainer.saved == [12]  # the final checkpoint
    assert progress.data["stage2"]["done"] and progress.data["stage2"]["steps"] == 12
    # extending the count resumes from the step reached
    bench.train_stage("stage2", trainer, 3600.0, progress, 1e9, max_steps=20)
    assert trainer.step_idx == 20 and trainer.saved == [12, 20]
