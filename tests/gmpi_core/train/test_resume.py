"""Exact resume (method §6.9): atomic checkpoints, RNG states, resumable data order, kill-and-resume."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from gmpi_core.train import state as state_mod
from gmpi_core.train.sampler import ResumableDistributedSampler
from gmpi_core.train.state import CheckpointDir, capture_rng_state, load_checkpoint, restore_rng_state
from tests.gmpi_core.train.test_loop import synthetic_data, tiny_config  # noqa: F401  (fixture)

REPO = Path(__file__).resolve().parents[3]


def _losses(out: Path) -> dict[int, dict]:
    """step → logged record; a later line for the same step wins (a resumed run rewrites them)."""
    records = {}
    for line in (out / "log.jsonl").read_text().splitlines():
        r = json.loads(line)
        records[r["step"]] = r
    return records


_KEYS = (
    "loss_d",
    "loss_d_real",
    "loss_d_fake",
    "r1",
    "loss_g",
    "grad_norm_d",
    "grad_norm_g",
    "ema_decay",
    "ka",
)


# --- building blocks ----------------------------------------------------------------------------------------


def test_sampler_shards_are_disjoint_cover_the_epoch_and_resume_mid_epoch():
    n, b, world = 23, 3, 2
    shards = [ResumableDistributedSampler(n, b, rank=r, world_size=world, seed=5) for r in range(world)]
    for s in shards:
        s.set_epoch(4)
    batches = [list(s) for s in shards]
    flat = [i for rank_batches in batches for batch in rank_batches for i in batch]
    assert len(flat) == len(set(flat)) == world * (n // world // b) * b  # disjoint, full batches only
    # DistributedSampler semantics: randperm under seed + epoch, rank r takes positions r, r + world, ...
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(5 + 4)).tolist()
    assert shards[1].shard() == perm[1 : (n // world) * world : world]
    resumed = ResumableDistributedSampler(n, b, rank=1, world_size=world, seed=5)
    resumed.load_state_dict({"epoch": 4, "start_batch": 2, "seed": 5})
    assert list(resumed) == batches[1][2:]
    with pytest.raises(ValueError, match="too few"):
        ResumableDistributedSampler(3, 2, rank=0, world_size=2)


def test_rng_state_round_trip_restores_torch_numpy_and_python_streams(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    saved = capture_rng_state(torch.device("cpu"))
    state_mod.atomic_save({"rng": saved}, tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    restore_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"], torch.device("cpu"))
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]


def test_crash_during_checkpoint_save_leaves_the_previous_checkpoint_loadable(tmp_path, monkeypatch):
    ckpts = CheckpointDir(tmp_path / "checkpoints")
    ckpts.save(1, {"step": 1, "w": torch.arange(1000.0)})

    def crashing_save(obj, f):  # write half a file, then die
        f.write(b"\x80\x02partial checkpoint bytes" * 100)
        raise KeyboardInterrupt("killed during save")

    monkeypatch.setattr(state_mod.torch, "save", crashing_save)
    with pytest.raises(KeyboardInterrupt):
        ckpts.save(2, {"step": 2, "w": torch.zeros(1000)})
    monkeypatch.undo()
    latest = ckpts.latest()
    assert latest is not None and latest.name == "ckpt_0000001.pt"
    state = load_checkpoint(latest)
    assert state["step"] == 1 and torch.equal(state["w"], torch.arange(1000.0))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["ckpt_0000001.pt", "latest"]


def test_checkpoint_pruning_keeps_the_newest_and_the_multiples_of_keep_every(tmp_path):
    ckpts = CheckpointDir(tmp_path, keep_last=2, keep_every=4)
    for step in range(1, 8):
        ckpts.save(step, {"step": step})
    assert ckpts.steps() == [4, 6, 7]
    assert ckpts.latest() == tmp_path / "ckpt_0000007.pt"


# --- resume equality ----------------------------------------------------------------------------------------


def test_resumed_trainer_reproduces_the_uninterrupted_losses_bitwise(synthetic_data, tmp_path):  # noqa: F811
    from gmpi_core.train.loop import Trainer

    # lighting from step 2 on, so the lighting counter and light directions are part of what must resume;
    # 8 images / batch 2 = 4 batches per epoch: steps 5-6 run in the second epoch
    cfg = tiny_config(synthetic_data, batch_split=2, lighting={"start_iter": 1, "grow_n_iters": 3})
    kw = {
        "device": "cpu",
        "num_workers": 0,
        "log_every": 1,
        "ckpt_every": 3,
        "max_steps": 6,
        "progress": False,
    }
    whole = Trainer(cfg, tmp_path / "whole", sample_every=2, **kw)  # sample grids must not touch the RNGs
    whole.train()
    assert (tmp_path / "whole" / "samples" / "0000004_fixed_ema.png").is_file()
    first = Trainer(cfg, tmp_path / "split", sample_every=0, **kw)
    first.train(until=3)
    del first
    second = Trainer(cfg, tmp_path / "split", sample_every=0, **kw)
    assert second.step_idx == 3 and second.resumed_from is not None
    second.train()
    a, b = _losses(tmp_path / "whole"), _losses(tmp_path / "split")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]
    for step in (4, 5, 6):
        for k in _KEYS:
            assert a[step][k] == b[step][k], (step, k)
    for p, q in zip(whole.G.parameters(), second.G.parameters()):
        assert torch.equal(p, q)
    for p, q in zip(whole.ema.shadow_params, second.ema.shadow_params):
        assert torch.equal(p, q)
    assert whole.lighting.n_calls == second.lighting.n_calls == 4 * 2 * 2


def _train_cmd(cfg_json: Path, data: Path, out: Path, steps: int) -> list[str]:
    return [
        sys.executable, "-m", "gmpi_core.train.cli", "--config-json", str(cfg_json), "--data", str(data),
        "--out", str(out), "--steps", str(steps), "--device", "cpu", "--workers", "0", "--log-every", "1",
        "--ckpt-every", "2", "--sample-every", "0", "--no-progress",
    ]  # fmt: skip


@pytest.mark.slow
def test_killed_training_process_resumes_from_its_last_checkpoint_with_identical_losses(
    synthetic_data,  # noqa: F811
    tmp_path,
):
    cfg_json = tmp_path / "cfg.json"
    cfg_json.write_text(tiny_config(synthetic_data, batch_split=2).model_dump_json())
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    steps = 8
    subprocess.run(
        _train_cmd(cfg_json, synthetic_data, tmp_path / "whole", steps), env=env, check=True, cwd=REPO
    )

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(cfg_json, synthetic_data, killed, steps), env=env, cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        while not (killed / "checkpoints" / "ckpt_0000002.pt").exists():  # let it pass one checkpoint
            assert proc.poll() is None, "training ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    resumed_at = CheckpointDir(killed / "checkpoints").steps()[-1]
    assert resumed_at < steps
    subprocess.run(_train_cmd(cfg_json, synthetic_data, killed, steps), env=env, check=True, cwd=REPO)
    a, b = _losses(tmp_path / "whole"), _losses(killed)
    assert sorted(b) == list(range(1, steps + 1))
    for step in range(resumed_at + 1, steps + 1):
        for k in _KEYS:
            assert a[step][k] == b[step][k], (step, k)
