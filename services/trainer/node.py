"""The node agent of a multi-node (PyTorchJob) training: one per node's pod, around that node's torchrun.

    python -m services.trainer.node --job-id JOB -- torchrun --nnodes=... -m gmpi_core.train.cli [extra]

It does on every node what the trainer worker does for a single-node job (:mod:`services.trainer.tasks`):

1. read the job record (Redis) and stage the dataset images and poses from the store into the cache;
2. rebuild the run folder from the last *uploaded* checkpoint and log (a restarted pod resumes from it;
   ranks that lack the newest checkpoint get it from the rank that has it, see ``gmpi_core.train``);
3. run torchrun with the job's trainer arguments inserted after the entry module (its experiment config
   changes in a file this node writes from the job record: ``tasks.train_args``), in its own process
   group, uploading checkpoints and the log as they appear and following the job's cancellation;
4. when training ends, the node holding rank 0 (the one whose run folder has the final checkpoint, the
   model export and the log up to the last step) publishes the model; the other nodes exit.

Exit status: 0 when training finished (or the job was cancelled or had already ended: nothing to do),
1 when training failed (the pod restarts and resumes from the last uploaded checkpoint), 2 for bad
usage or a job that cannot run (missing dataset: restarting would not help, so the job is marked failed).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import traceback
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from services.common.contracts import TERMINAL, JobState, TrainJobParams
from services.common.jobs import JobNotFound, get_job_store
from services.common.settings import get_settings
from services.common.storage import ObjectNotFound, get_storage
from services.common.tasks import JobCancelled, JobContext
from services.trainer.tasks import finish, prepare_run, stage_inputs, supervise, train_args

log = logging.getLogger("gmpi.trainer.node")


def with_job_args(torchrun: list[str], job_args: list[str]) -> list[str]:
    """``torchrun ... -m MODULE [extra]`` with ``job_args`` inserted after MODULE (extras still win)."""
    at = len(torchrun) - 1 - torchrun[::-1].index("-m") if "-m" in torchrun else -1
    if at < 0 or at + 1 >= len(torchrun):  # the last -m: `python -m torch.distributed.run ... -m MOD` too
        raise SystemExit("node agent: the command after -- must run a module (... -m gmpi_core.train.cli)")
    return [*torchrun[: at + 2], *job_args, *torchrun[at + 2 :]]


def holds_final_model(run: Path, steps: int) -> bool:
    """Whether this node's run folder is the one rank 0 finished in: the final checkpoint, the model
    export and the log up to the last step (a node that never held rank 0 has none of these)."""
    pointer = run / "checkpoints" / "latest"
    if not pointer.is_file() or pointer.read_text().strip() != f"ckpt_{steps:07d}.pt":
        return False
    if not (run / "model" / "config.json").is_file() or not (run / "log.jsonl").is_file():
        return False
    lines = (run / "log.jsonl").read_text(encoding="utf-8").splitlines()
    try:
        return bool(lines) and int(json.loads(lines[-1])["step"]) == steps
    except (ValueError, KeyError):
        return False


def _redacted(url: str) -> str:
    """``url`` without its password (the Redis URL carries GMPI_REDIS_PASSWORD): safe to log."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + netloc))


def run_node(job_id: str, torchrun: list[str]) -> int:
    settings = get_settings()
    jobs = get_job_store(settings.redis_url)
    try:
        rec = jobs.get(job_id)
    except JobNotFound:
        log.error("job %s has no record in %s; nothing to train", job_id, _redacted(settings.redis_url))
        return 2
    if rec["state"] in TERMINAL:
        log.info("job %s is already %s; nothing to do", job_id, rec["state"])
        return 0
    ctx: JobContext[TrainJobParams] = JobContext(
        job_id, rec["params"], jobs, get_storage(settings), settings, job_type=rec["type"]
    )
    steps = ctx.params.steps
    try:
        data, poses = stage_inputs(ctx)
    except (ObjectNotFound, FileNotFoundError, ValueError) as e:
        message = f"node agent cannot stage the inputs: {e}"
        log.error("%s", message)
        jobs.transition(job_id, JobState.FAILED, error={"code": "invalid_input", "message": message})
        return 2
    run, start_step, up = prepare_run(ctx)
    jobs.merge_info(job_id, {"resumed_from_step": start_step})
    cmd = with_job_args(torchrun, train_args(ctx, data, poses, run))
    try:
        supervise(ctx, cmd, run, up)
    except JobCancelled:
        log.info("job %s cancelled; torchrun stopped", job_id)
        return 0
    except RuntimeError as e:  # torchrun failed: the pod restarts and resumes (backoffLimit bounds it)
        log.error("%s", e)
        return 1
    if holds_final_model(run, steps):
        result: dict[str, Any] = finish(ctx, run, up, start_step)
        log.info("job %s: published model %s after %d steps", job_id, result["model_id"], result["steps"])
    else:
        log.info("job %s: training finished; another node publishes the model", job_id)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        print("usage: python -m services.trainer.node --job-id JOB -- torchrun ... -m MOD", file=sys.stderr)
        return 2
    split = argv.index("--")
    parser = argparse.ArgumentParser(prog="python -m services.trainer.node", description=__doc__)
    parser.add_argument("--job-id", required=True)
    args = parser.parse_args(argv[:split])
    torchrun = argv[split + 1 :]
    if not torchrun:
        print("node agent: nothing to run after --", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return run_node(args.job_id, torchrun)
    except SystemExit:
        raise
    except Exception:  # Redis or the store away: let the pod restart (and retry) after saying why
        log.error("node agent failed:\n%s", traceback.format_exc())
        return 1


if __name__ == "__main__":
    sys.exit(main())
