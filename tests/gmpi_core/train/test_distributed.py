"""Multi-process training over gloo (method §6.1): gradient averaging, parameter agreement, rank-0 writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from gmpi_core.train import distributed as dist_utils
from gmpi_core.train.state import load_checkpoint
from tests.gmpi_core.train.test_loop import synthetic_data, tiny_config  # noqa: F401  (fixture)

REPO = Path(__file__).resolve().parents[3]


def _allreduce_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(rank)  # different parameters per rank: the broadcast must overwrite them
        net = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1))
        dist_utils.broadcast_module(net)
        net[0].weight.grad = torch.full_like(net[0].weight, float(rank + 1))
        net[0].bias.grad = torch.full_like(net[0].bias, 10.0 * rank)
        net[1].weight.grad = None  # unused on this rank ⇒ counts as zero
        if rank == 1:
            net[1].weight.grad = torch.full_like(net[1].weight, 4.0)
        net[1].bias.requires_grad_(False)  # frozen ⇒ left alone
        dist_utils.allreduce_gradients(net)
        torch.save({n: p.detach().clone() for n, p in net.named_parameters()}, f"{out_dir}/params{rank}.pt")
        torch.save({n: p.grad for n, p in net.named_parameters()}, f"{out_dir}/grads{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_gradients_are_averaged_and_parameters_broadcast_over_gloo_ranks(tmp_path):
    world = 2
    mp.spawn(_allreduce_worker, args=(world, str(tmp_path / "init"), str(tmp_path)), nprocs=world, join=True)
    params = [torch.load(tmp_path / f"params{r}.pt") for r in range(world)]
    grads = [torch.load(tmp_path / f"grads{r}.pt") for r in range(world)]
    torch.manual_seed(0)
    rank0 = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1)).state_dict()
    for r in range(world):
        for name in rank0:
            assert torch.equal(params[r][name], rank0[name]), (r, name)
        assert torch.equal(grads[r]["0.weight"], torch.full((2, 3), (1.0 + 2.0) / 2))
        assert torch.equal(grads[r]["0.bias"], torch.full((2,), (0.0 + 10.0) / 2))
        assert torch.equal(grads[r]["1.weight"], torch.full((1, 2), (0.0 + 4.0) / 2))
        assert grads[r]["1.bias"] is None


@pytest.mark.slow
def test_two_process_gloo_training_ends_with_equal_parameters_and_rank0_alone_writes(
    synthetic_data,  # noqa: F811
    tmp_path,
):
    cfg_json = tmp_path / "cfg.json"
    cfg_json.write_text(tiny_config(synthetic_data).model_dump_json())
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.pop("LOCAL_RANK", None)
    env.pop("WORLD_SIZE", None)
    cmd = [
        sys.executable, "-m", "gmpi_core.train.cli", "--config-json", str(cfg_json), "--out", str(out),
        "--steps", "3", "--device", "cpu", "--workers", "0", "--log-every", "1", "--ckpt-every", "2",
        "--sample-every", "0", "--no-progress", "--nproc-per-node", "2",  # re-executes under torchrun
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "torch.distributed.run" in proc.stderr and "--standalone" in proc.stderr

    state = load_checkpoint(out / "checkpoints" / "ckpt_0000003.pt")
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    # both ranks drew different latents/poses/data (own RNG streams and shards) ...
    assert not torch.equal(state["rng"][0]["torch_cpu"], state["rng"][1]["torch_cpu"])
    # ... yet their parameters are bitwise equal after 3 steps: gradients were averaged
    assert state["param_digests"][0] == state["param_digests"][1]
    # rank 0 alone wrote: one checkpoint per save step, no temp files, one log line per step
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == ["ckpt_0000002.pt", "ckpt_0000003.pt", "latest"]
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    assert (out / "model" / "config.json").is_file()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _two_nodes(cfg_json: Path, outs: list[Path], steps: int) -> list[str]:
    """Two "nodes" (torchrun agents, one process each, static rendezvous on localhost), node i writing
    to its own ``outs[i]``: a multi-node run without a shared file system."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    for k in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    port = _free_port()
    procs = []
    for node, out in enumerate(outs):
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1",
            f"--node-rank={node}", "--master-addr=127.0.0.1", f"--master-port={port}",
            "-m", "gmpi_core.train.cli", "--config-json", str(cfg_json), "--out", str(out),
            "--steps", str(steps), "--device", "cpu", "--workers", "0", "--log-every", "1",
            "--ckpt-every", "2", "--sample-every", "0", "--no-progress",
        ]  # fmt: skip
        procs.append(subprocess.Popen(cmd, env=env, cwd=REPO, stderr=subprocess.PIPE, text=True))
    errs = [p.communicate(timeout=300)[1] for p in procs]
    for p, err in zip(procs, errs, strict=True):
        assert p.returncode == 0, err[-4000:]
    return errs


def _losses(out: Path) -> dict[int, dict]:
    return {rec["step"]: rec for rec in map(json.loads, (out / "log.jsonl").read_text().splitlines())}


@pytest.mark.slow
def test_a_node_without_the_checkpoint_receives_it_and_the_run_resumes_exactly(
    synthetic_data,  # noqa: F811
    tmp_path,
):
    """Nodes with their own disks: only the node that held rank 0 has the checkpoints. Resumed with
    the ranks swapped (rank 0 now on the node that has none, as after an elastic restart), every rank
    must resume from the newest checkpoint any node holds, and the run must continue exactly as an
    uninterrupted one."""
    cfg_json = tmp_path / "cfg.json"
    cfg_json.write_text(tiny_config(synthetic_data).model_dump_json())
    a, b = tmp_path / "node-a", tmp_path / "node-b"
    _two_nodes(cfg_json, [a, b], steps=2)
    assert (a / "checkpoints" / "ckpt_0000002.pt").is_file() and not (b / "checkpoints").exists()

    errs = _two_nodes(cfg_json, [b, a], steps=4)  # rank 0 on node b, which holds nothing
    assert "lack checkpoint ckpt_0000002.pt" in errs[0] and "rank 1 sends its copy" in errs[0]
    assert (b / "checkpoints" / "ckpt_0000002.pt").read_bytes() == (
        a / "checkpoints" / "ckpt_0000002.pt"
    ).read_bytes()
    state = load_checkpoint(b / "checkpoints" / "ckpt_0000004.pt")
    assert state["step"] == 4 and state["param_digests"][0] == state["param_digests"][1]

    ref_a, ref_b = tmp_path / "ref-a", tmp_path / "ref-b"
    _two_nodes(cfg_json, [ref_a, ref_b], steps=4)
    ref, resumed = _losses(ref_a), _losses(b)
    assert sorted(resumed) == [3, 4]  # the new rank 0 logs from the resumed step on
    for step in (3, 4):
        for key in ("loss_g", "loss_d"):
            assert resumed[step][key] == pytest.approx(ref[step][key], rel=1e-5, abs=1e-6), (step, key)
    ref_state = load_checkpoint(ref_a / "checkpoints" / "ckpt_0000004.pt")
    assert state["param_digests"][0] == ref_state["param_digests"][0]
