"""A time-budgeted run's progress bar counts the budget (elapsed/budget seconds, steps, ETA), not a step
total it will never reach."""

from __future__ import annotations

import re

from gmpi_core.train.loop import _budget_postfix
from tests.gmpi_core.train.test_loop import synthetic_data, tiny_config  # noqa: F401  (fixture)


def test_a_time_budgeted_run_shows_the_budget_steps_and_eta(synthetic_data, tmp_path, capsys):  # noqa: F811
    from gmpi_core.train.loop import Trainer

    t = Trainer(
        tiny_config(synthetic_data), tmp_path, device="cpu", progress=True, sample_every=0, max_steps=10**6
    )  # fmt: skip  (as `gmpi demo` runs it: a budget, no step total)
    capsys.readouterr()
    t.train(max_seconds=1.0)
    t.close()
    err = capsys.readouterr().err
    frames = [f.strip() for f in re.split(r"[\r\n]+", err) if f.strip()]
    assert "1000000" not in err and "s/step]" not in err  # no step total, no tqdm step rate
    assert frames[0].endswith("0/1 s of the time budget, step 0, timing the first step"), frames
    last = frames[-1]
    assert re.search(r"\| 1/1 s of the time budget, step (\d+) \(\1 this run, [\d.]+ s/step\)", last), last
    assert f"step {t.step_idx} ({t.step_idx} this run" in last and "about 0 s left" in last
    assert "loss_d=" in last and "loss_g=" in last


def test_the_eta_is_to_the_budget_or_to_the_step_limit_when_that_comes_first():
    stats = {"loss_d": 1.0, "loss_g": 2.0}
    # 10 steps in 20 s of a 60 s budget, far from the step limit: 40 s left
    assert _budget_postfix(10, 110, 10**6, 20.0, 60.0, stats).startswith(
        "step 110 (10 this run, 2.00 s/step), about 40 s left"
    )
    # 5 steps to the limit at 2 s/step: the limit comes after 10 s, before the budget
    assert "step limit 115 in about 10 s" in _budget_postfix(10, 110, 115, 20.0, 600.0, stats)
    assert "about 1 h 01 min left" in _budget_postfix(1, 1, 10**6, 10.0, 3670.0, stats)
