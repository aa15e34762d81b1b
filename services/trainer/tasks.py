"""``train`` jobs: download the dataset, run ``gmpi train`` in its own process group, stream its
``log.jsonl`` into the job record, upload every checkpoint as it is written, and on re-delivery resume
from the last *uploaded* checkpoint (the local run folder is rebuilt from the store every time).

Store layout: ``models/{model}/train-state/ckpt_NNNNNNN.pt`` + ``train-state/latest`` (pointer written
after the checkpoint), ``models/{model}/{config.json,weights.safetensors,ema.safetensors}`` + its
``manifest.json`` (written last: the model is listed from then on), ``jobs/{job}/log.jsonl``.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from services.common.artifacts import MODEL_FILES, fetch_dataset_images, fetch_dataset_poses
from services.common.contracts import TaskName, TrainJobParams
from services.common.keys import job_prefix, model_prefix, normalize_owner
from services.common.storage import ObjectNotFound
from services.common.tasks import JobCancelled, JobContext, JobInputError, job_task

log = logging.getLogger("gmpi.trainer")
POLL_S = 0.5
LOG_UPLOAD_S = 5.0


def checkpoint_step(name: str) -> int:
    """The step of a ``ckpt_NNNNNNN.pt`` name (gmpi_core.train.state's naming; not imported from there so
    the worker process does not load torch)."""
    return int(name.removeprefix("ckpt_").removesuffix(".pt"))


def _die_with_parent() -> None:
    """preexec_fn: SIGKILL the trainer when the task process dies (a SIGKILLed worker leaves no orphan)."""
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def train_config(p: TrainJobParams, data: Path, poses: Path | None) -> dict[str, Any]:
    """The job's changes to its preset's experiment config, ``{section: {field: value}}`` as ``gmpi train
    --config-json`` applies them: the staged data, and the batch size, planes and seed it asks for."""
    from gmpi_core.config import preset

    train: dict[str, Any] = {}
    if p.batch is not None:
        train["batch_size"] = p.batch
        if preset(p.preset).train.batch_split > p.batch:  # as `gmpi train --batch` does
            train["batch_split"] = p.batch
    if p.planes is not None:
        train["n_planes"] = p.planes
    if p.seed is not None:
        train["seed"] = p.seed
    dataset = {"images": str(data)} | ({"poses": str(poses)} if poses is not None else {})
    return {"train": train, "dataset": dataset}


def train_args(ctx: JobContext[TrainJobParams], data: Path, poses: Path | None, run: Path) -> list[str]:
    """The ``gmpi_core.train.cli`` arguments of the job (the same for one process, torchrun or a node):
    its experiment config changes in a file of the job's scratch folder (``--config-json``; each node of
    a multi-node job writes its own, from the job record), and flags for what is no config field."""
    p = ctx.params
    config = ctx.work_dir / "train-config.json"
    config.write_text(json.dumps(train_config(p, data, poses), indent=1) + "\n", encoding="utf-8")
    args = ["--preset", p.preset, "--config-json", str(config), "--out", str(run), "--no-progress"]
    args += ["--steps", str(p.steps), "--ckpt-every", str(p.ckpt_every), "--log-every", str(p.log_every)]
    args += ["--sample-every", "0", "--workers", "0", "--device", p.device]
    if p.skip_bad:
        args.append("--skip-bad")
    return args


# what gmpi_core.train refuses to start on (the data check, before the first step): the CLI prints
# "gmpi train: error: <TrainingError>" and exits 2
_CLI_ERROR = "gmpi train: error: "
_DATA_REFUSALS = ("the training data has ", "the training data cannot be used")


class BadTrainingData(JobInputError):
    """The data check refused the dataset; the message is the check's report (the bad images).
    ``code``/``details`` are what the job record's error carries (run_job reads them)."""

    code = "bad_training_data"

    def __init__(self, message: str, bad_keys: list[str]) -> None:
        super().__init__(message)
        self.details = {"bad_images": bad_keys}


# lines of torchrun/torch logging after the child's message (not part of the check's report)
_NOT_REPORT = re.compile(r"^(\[gmpi train\]|Traceback|[EWI]\d{4} |=+$|\[rank|torch\.distributed)")
# a problem line of DataCheck.format: "  <kind>  <key>: <detail>  [<where>]"
_PROBLEM = re.compile(r"^  \S+\s+(.+?): .*\[.*\]$")


def data_check_refusal(log_text: str) -> tuple[str, list[str]] | None:
    """The trainer's refusal of the dataset (the data check's report) and the bad image keys, or None."""
    at = log_text.rfind(_CLI_ERROR)
    if at < 0:
        return None
    message = log_text[at + len(_CLI_ERROR) :]
    if not message.startswith(_DATA_REFUSALS):
        return None
    keep: list[str] = []
    for ln in message.splitlines():
        if keep and _NOT_REPORT.match(ln):
            break
        keep.append(ln.rstrip())
    bad = [m.group(1) for ln in keep if (m := _PROBLEM.match(ln))]
    return "\n".join(keep).strip(), bad


def train_command(
    ctx: JobContext[TrainJobParams], data: Path, poses: Path | None, run: Path, nproc: int
) -> list[str]:
    args = train_args(ctx, data, poses, run)
    if nproc > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
                "-m", "gmpi_core.train.cli", *args]  # fmt: skip
    return [sys.executable, "-m", "gmpi_core.train.cli", *args]


def stage_inputs(ctx: JobContext[TrainJobParams]) -> tuple[Path, Path | None]:
    """The job's dataset images (and poses unless ``use_poses`` is off) in the local cache."""
    p = ctx.params
    step = int((ctx.jobs.get(ctx.job_id).get("progress") or {}).get("step") or 0)  # an earlier attempt's
    ctx.progress(step, p.steps, f"downloading dataset '{p.dataset_id}'", stage="setup")
    data = fetch_dataset_images(ctx.storage, ctx.settings.cache_dir, p.dataset_id)
    poses = fetch_dataset_poses(ctx.storage, ctx.settings.cache_dir, p.dataset_id)
    return data, poses if p.use_poses else None


def restore_run(ctx: JobContext[TrainJobParams], run: Path) -> int:
    """Rebuild ``run`` from the store: the last uploaded checkpoint and log; → its step (0: fresh)."""
    shutil.rmtree(run, ignore_errors=True)
    (run / "checkpoints").mkdir(parents=True)
    state = model_prefix(ctx.params.model_id) + "train-state/"
    try:
        name = ctx.storage.get_bytes(state + "latest").decode().strip()
    except ObjectNotFound:
        return 0
    step = checkpoint_step(name)
    ctx.progress(
        step, ctx.params.steps, f"restoring the run from its checkpoint at step {step}", stage="setup"
    )
    ctx.storage.get_file(state + name, run / "checkpoints" / name)
    (run / "checkpoints" / "latest").write_text(name + "\n")
    try:
        ctx.storage.get_file(job_prefix(ctx.job_id) + "log.jsonl", run / "log.jsonl")
    except ObjectNotFound:
        return step
    kept = []  # lines the killed run logged after its last checkpoint are replayed by this run
    for line in (run / "log.jsonl").read_text(encoding="utf-8").splitlines():
        try:
            if int(json.loads(line).get("step", 0)) <= step:
                kept.append(line + "\n")
        except (json.JSONDecodeError, ValueError):
            continue
    (run / "log.jsonl").write_text("".join(kept), encoding="utf-8")
    return step


class _Uploader:
    """Mirrors the run folder into the store while training runs.

    Monotonic, so that several nodes of one job can each run one: a checkpoint is uploaded only if it
    is newer than the store's ``latest`` (a node that merely received or restored a checkpoint never
    moves the pointer back or prunes a newer one), and the log only when it has grown (a node that
    restored the log but does not hold rank 0 never overwrites the one that does).
    """

    def __init__(self, ctx: JobContext[TrainJobParams], run: Path) -> None:
        self.ctx, self.run = ctx, run
        self.state = model_prefix(ctx.params.model_id) + "train-state/"
        self.uploaded_ckpt = ""
        self.log_pos = 0  # bytes of log.jsonl already read into progress
        self.log_uploaded = 0  # bytes of complete lines already in the store
        self.last_log_upload = 0.0
        self.last: dict[str, Any] = {}

    def start_after_restore(self, start_step: int) -> None:
        """What restore_run put in the run folder is already in the store."""
        if start_step:
            self.uploaded_ckpt = (self.run / "checkpoints" / "latest").read_text().strip()
        path = self.run / "log.jsonl"
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            self.log_pos = self.log_uploaded = len(text.encode())
            for line in reversed(text.splitlines()):
                with contextlib.suppress(json.JSONDecodeError):
                    self.last = json.loads(line)
                    break

    def _stored_step(self) -> int:
        try:
            name = self.ctx.storage.get_bytes(self.state + "latest").decode().strip()
            return checkpoint_step(name)
        except (ObjectNotFound, ValueError):
            return -1

    def checkpoints(self) -> None:
        pointer = self.run / "checkpoints" / "latest"
        if not pointer.is_file():
            return
        name = pointer.read_text().strip()
        path = self.run / "checkpoints" / name
        if not name or name == self.uploaded_ckpt or not path.is_file():
            return
        if checkpoint_step(name) <= self._stored_step():  # another node's, or one this node received
            self.uploaded_ckpt = name
            return
        self.ctx.storage.put_file(self.state + name, path)
        # the log must reach the checkpoint's step before the pointer moves: a resumed run keeps the
        # stored log up to that step and appends from there (no step lost, none logged twice)
        self.log(force=True)
        self.ctx.storage.put_bytes(self.state + "latest", (name + "\n").encode(), "text/plain")
        for old in self.ctx.storage.list(self.state):  # keep the newest two checkpoints
            base = old[len(self.state) :]
            if base.startswith("ckpt_") and base not in (name, self.uploaded_ckpt):
                self.ctx.storage.delete(old)
        self.uploaded_ckpt = name
        self.ctx.jobs.merge_info(self.ctx.job_id, {"last_checkpoint_step": checkpoint_step(name)})

    def log(self, force: bool = False) -> None:
        path = self.run / "log.jsonl"
        if not path.is_file():
            return
        with open(path, encoding="utf-8") as f:
            f.seek(self.log_pos)
            chunk = f.read()
        complete = chunk[: chunk.rfind("\n") + 1]
        self.log_pos += len(complete.encode())
        for line in complete.splitlines():
            try:
                self.last = json.loads(line)
            except json.JSONDecodeError:
                continue
        if complete and self.last:
            losses = {k: v for k, v in self.last.items() if k not in ("step", "kimg")}
            step, steps = int(self.last["step"]), self.ctx.params.steps
            self.ctx.progress(step, steps, f"step {step}/{steps}", stage="steps", kimg=self.last.get("kimg"))
            self.ctx.jobs.merge_metrics(self.ctx.job_id, losses)
        grown = self.log_pos > self.log_uploaded
        if grown and (force or time.monotonic() - self.last_log_upload > LOG_UPLOAD_S):
            snapshot = self.run / ".log.jsonl.upload"  # the trainer keeps appending to the original
            text = complete_lines(path)
            snapshot.write_text(text, encoding="utf-8")
            self.ctx.storage.put_file(
                job_prefix(self.ctx.job_id) + "log.jsonl", snapshot, "application/x-ndjson"
            )
            self.log_uploaded = len(text.encode())
            self.last_log_upload = time.monotonic()


def complete_lines(path: Path) -> str:
    text = path.read_text(encoding="utf-8")
    return text[: text.rfind("\n") + 1]


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _job_owner(ctx: JobContext[Any]) -> str | None:
    """The owner id of the key that submitted the job (None: a job without one; the model is shared)."""
    return normalize_owner(ctx.jobs.get(ctx.job_id).get("owner"))


def _publish_model(ctx: JobContext[TrainJobParams], run: Path) -> list[str]:
    p = ctx.params
    prefix = model_prefix(p.model_id)
    files = {}
    for rel in MODEL_FILES:
        if (run / "model" / rel).is_file():
            files[rel] = ctx.storage.put_file(prefix + rel, run / "model" / rel)
    extra = {
        "model_id": p.model_id,
        "job_id": ctx.job_id,
        "preset": p.preset,
        "dataset_id": p.dataset_id,
        "steps": p.steps,
        "source": "train",
        # the model belongs to the key that submitted the job (SECURITY.md, "API keys and ownership")
        "owner": _job_owner(ctx),
    }
    ctx.storage.commit(prefix, files, extra)
    return [prefix + rel for rel in files]


def _k8s_train(ctx: JobContext[TrainJobParams], nproc: int) -> dict[str, Any]:
    """Run the job as a PyTorchJob: each node's pod runs :mod:`services.trainer.node` (stage the dataset,
    restore the last uploaded checkpoint, torchrun, upload checkpoints and the model); this task waits,
    deletes the PyTorchJob when the job is cancelled, and checks that the model was published."""
    from services.trainer import pytorchjob

    p = ctx.params
    nnodes = -(-(p.gpus or 1) // nproc)
    name = pytorchjob.submit_pytorchjob(
        ctx.job_id,
        nnodes=nnodes,
        nproc_per_node=nproc,
        train_args=[],  # each node agent adds the job's own (train_args) from the job record
        settings=ctx.settings,
        image=ctx.settings.trainer_image or None,  # None: $GMPI_TRAINER_IMAGE, else the trainer pod's own
    )
    ctx.jobs.merge_info(ctx.job_id, {"pytorchjob": name, "nnodes": nnodes, "nproc": nproc})
    steps = p.steps

    def on_state(state: str, _: dict[str, Any]) -> None:
        if state != "running":  # while running, the pods report the training steps themselves
            ctx.progress(0, steps, f"PyTorchJob {state}")

    try:
        pytorchjob.wait_pytorchjob(
            name,
            ctx.settings,
            on_state,
            should_stop=lambda: ctx.cancelled.is_set() or ctx.jobs.is_cancelled(ctx.job_id),
        )
    except pytorchjob.PyTorchJobCancelled as e:
        raise JobCancelled(ctx.job_id) from e
    if ctx.storage.manifest(model_prefix(p.model_id)) is None:
        raise RuntimeError(
            f"PyTorchJob {name} succeeded but no node published model {p.model_id}: "
            f"see the pods' logs (kubectl -n {ctx.settings.k8s_namespace} logs -l gmpi.io/job-id)"
        )
    info = ctx.jobs.get(ctx.job_id)["info"]  # the publishing node recorded the artifacts
    return {
        "model_id": p.model_id,
        "steps": steps,
        "resumed_from_step": info.get("resumed_from_step", 0),
        "pytorchjob": name,
    }


def supervise(ctx: JobContext[TrainJobParams], cmd: list[str], run: Path, up: _Uploader) -> None:
    """Run ``cmd`` (the trainer) in its own process group, mirroring ``run`` into the store while it
    runs; cancelled jobs kill the group. Raises on a non-zero exit with the log's tail."""
    log.info("job %s: %s", ctx.job_id, " ".join(cmd))
    steps = ctx.params.steps
    at = int(up.last.get("step", 0))
    what = "building the model" + (f" and loading its checkpoint at step {at}" if at else "")
    ctx.progress(at, steps, f"{what} (the trainer starts)", stage="setup")
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    with open(run / "train.log", "ab") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
            env=env,
        )
        try:
            while proc.poll() is None:
                time.sleep(POLL_S)
                up.checkpoints()
                up.log()
                if ctx.cancelled.is_set() or ctx.jobs.is_cancelled(ctx.job_id):
                    _kill_group(proc)
                    raise JobCancelled(ctx.job_id)
        except BaseException:
            _kill_group(proc)
            raise
    if proc.returncode != 0:
        text = (run / "train.log").read_text(errors="replace")
        refusal = data_check_refusal(text)
        if refusal is not None:
            report, bad = refusal
            hint = 'replace or remove them, or train without them: submit the job with "skip_bad": true'
            report = re.sub(r"replace or remove them, or train without them: --skip-bad.*", hint, report)
            message = f"dataset '{ctx.params.dataset_id}' failed the data check: {report}"
            raise BadTrainingData(message[:8000], bad)
        tail = text[-1500:]
        raise RuntimeError(f"gmpi train exited with status {proc.returncode}:\n{tail}")
    up.checkpoints()
    up.log(force=True)


def finish(ctx: JobContext[TrainJobParams], run: Path, up: _Uploader, start_step: int) -> dict[str, Any]:
    """Publish the model of a finished run (committed last) and record the job's artifacts."""
    steps = ctx.params.steps
    ctx.progress(steps, steps, f"publishing model '{ctx.params.model_id}'", stage="publish")
    keys = _publish_model(ctx, run)
    keys += [job_prefix(ctx.job_id) + "log.jsonl", up.state + "latest"]
    ctx.jobs.add_artifacts(ctx.job_id, keys)
    return {
        "model_id": ctx.params.model_id,
        "steps": int(up.last.get("step", 0)),
        "resumed_from_step": start_step,
    }


def prepare_run(ctx: JobContext[TrainJobParams]) -> tuple[Path, int, _Uploader]:
    """The local run folder rebuilt from the store, its step, and the uploader that mirrors it."""
    run = ctx.work_dir / "run"
    start_step = restore_run(ctx, run)
    up = _Uploader(ctx, run)
    up.start_after_restore(start_step)
    return run, start_step, up


@job_task(TaskName.TRAIN)
def train(ctx: JobContext[TrainJobParams]) -> dict[str, Any]:
    """Train (or resume) the job's model; the job record follows the run's log.jsonl."""
    nproc = ctx.settings.resolved_train_nproc()
    gpus = ctx.params.gpus
    if gpus and gpus > nproc and ctx.settings.k8s_enabled:
        return _k8s_train(ctx, nproc)
    data, poses = stage_inputs(ctx)
    run, start_step, up = prepare_run(ctx)
    ctx.jobs.merge_info(ctx.job_id, {"resumed_from_step": start_step, "nproc": nproc})
    ctx.check_cancelled()
    supervise(ctx, train_command(ctx, data, poses, run, nproc), run, up)
    return finish(ctx, run, up, start_step)
