"""Multi-node training on Kubernetes: a Kubeflow ``PyTorchJob`` (elastic ``torchrun``, c10d rendezvous, NCCL).

The trainer worker calls :func:`submit_pytorchjob` when a job asks for more GPUs than its node has, then
:func:`wait_pytorchjob` until the job finishes. The manifest is built by :func:`build_pytorchjob` and must
stay in step with ``k8s/templates/pytorchjob.yaml`` (``tests/deploy`` compares them). The request goes to
the Kubernetes API with the pod's service-account token over plain HTTPS (stdlib only); the RBAC it needs
is in ``k8s/overlays/gpu/rbac.yaml``.

Every node runs the node agent (:mod:`services.trainer.node`) around torchrun::

    python -m services.trainer.node --job-id <id> -- \\
        torchrun --nnodes=N --nproc-per-node=K --rdzv-backend=c10d --rdzv-endpoint=<job>-worker-0:29400 \\
        --rdzv-id=<job> --max-restarts=3 -m gmpi_core.train.cli <train_args>

The agent stages the job's dataset and last uploaded checkpoint into the pod's cache, writes the job's
experiment config changes (from its typed parameters in the job record) to a file in that cache and adds
the job's own trainer arguments (``--config-json``, ``--out``, ``--steps``, ...) to the command, uploads
checkpoints and the log as they are written, and publishes the model from the node that ends up holding
rank 0.

Submitting is idempotent: a re-delivered task finds its job already there (HTTP 409) and waits on it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from services.common.settings import Settings

__all__ = [
    "API_GROUP",
    "API_VERSION",
    "PLURAL",
    "RDZV_PORT",
    "KubeClient",
    "PyTorchJobCancelled",
    "PyTorchJobError",
    "PyTorchJobTooLarge",
    "build_pytorchjob",
    "check_gpu_request",
    "delete_pytorchjob",
    "job_name",
    "job_state",
    "submit_pytorchjob",
    "wait_pytorchjob",
]

API_GROUP = "kubeflow.org"
API_VERSION = "v1"
PLURAL = "pytorchjobs"
RDZV_PORT = 29400
GPU_POOL_LABEL = "gmpi.io/pool"
SETTINGS_CONFIGMAP = "gmpi-settings"
SECRETS_NAME = "gmpi-secrets"
DEFAULT_ENTRY = "gmpi_core.train.cli"
NODE_AGENT = "services.trainer.node"
POLL_S = 15.0  # seconds between reads of a PyTorchJob's state
SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class PyTorchJobError(RuntimeError):
    """The PyTorchJob failed, vanished, or the Kubernetes API refused a request."""


class PyTorchJobCancelled(PyTorchJobError):
    """``should_stop`` asked :func:`wait_pytorchjob` to stop; the PyTorchJob was deleted."""


class PyTorchJobTooLarge(PyTorchJobError, ValueError):
    """The job asks for more GPUs than ``GMPI_MAX_GPUS_PER_JOB`` allows; nothing was sent to the cluster."""


def check_gpu_request(nnodes: int, gpus_per_node: int, settings: Settings) -> int:
    """The job's GPUs in total (``nnodes`` x ``gpus_per_node``), or :class:`PyTorchJobTooLarge` when that
    is above ``settings.max_gpus_per_job``: one request must not be able to claim a whole GPU pool."""
    limit = settings.max_gpus_per_job
    total = nnodes * gpus_per_node
    if nnodes < 1 or gpus_per_node < 1 or total > limit:
        raise PyTorchJobTooLarge(
            f"the job asks for {total} GPUs ({nnodes} nodes x {gpus_per_node} GPUs); at most {limit} GPUs "
            "per job are allowed (GMPI_MAX_GPUS_PER_JOB): ask for fewer GPUs, or have the operator raise "
            "the limit"
        )
    return total


def job_name(job_id: str) -> str:
    """A DNS-1035 name for the job (``gmpi-train-<id>``, at most 45 characters so pod names fit in 63)."""
    clean = re.sub(r"[^a-z0-9-]+", "-", job_id.lower()).strip("-")
    name = f"gmpi-train-{clean}" if clean else "gmpi-train"
    if len(name) > 45 or clean != job_id:
        digest = hashlib.sha256(job_id.encode()).hexdigest()[:8]
        name = f"{name[:36].rstrip('-')}-{digest}"
    return name


def build_pytorchjob(
    job_id: str,
    *,
    nnodes: int,
    nproc_per_node: int,
    train_args: list[str],
    image: str,
    namespace: str,
    min_nnodes: int | None = None,
    max_restarts: int = 3,
    entry_module: str = DEFAULT_ENTRY,
    gpus_per_node: int | None = None,
    cpu: str = "8",
    memory: str = "64Gi",
    shm_size: str = "16Gi",
    node_pool: str = "gpu",
    settings_configmap: str = SETTINGS_CONFIGMAP,
    secrets_name: str = SECRETS_NAME,
    ttl_seconds_after_finished: int = 7 * 24 * 3600,
) -> dict[str, Any]:
    """The ``PyTorchJob`` manifest for one training job on ``nnodes`` nodes x ``nproc_per_node`` GPUs.

    ``train_args`` are extra arguments of ``gmpi train`` (or of ``entry_module``); the node agent inserts
    the job's own arguments before them, so these win where both give a flag.
    ``min_nnodes < nnodes`` makes the job elastic in size (torchrun ``--nnodes=MIN:MAX``); node failures
    restart the workers from the last checkpoint up to ``max_restarts`` times either way.
    """
    if nnodes < 1 or nproc_per_node < 1:
        raise ValueError(f"nnodes and nproc_per_node must be >= 1, got {nnodes} and {nproc_per_node}")
    min_nodes = nnodes if min_nnodes is None else min_nnodes
    if not 1 <= min_nodes <= nnodes:
        raise ValueError(f"min_nnodes must be in [1, {nnodes}], got {min_nodes}")
    if not image:
        raise ValueError("an image is required")
    gpus = nproc_per_node if gpus_per_node is None else gpus_per_node
    name = job_name(job_id)
    labels = {
        "app.kubernetes.io/name": "gmpi-train",
        "app.kubernetes.io/part-of": "gmpi",
        "app.kubernetes.io/component": "pytorchjob",
        "gmpi.io/job-id": re.sub(r"[^A-Za-z0-9_.-]+", "-", job_id)[:63].strip("-_.") or "job",
    }
    nnodes_arg = str(nnodes) if min_nodes == nnodes else f"{min_nodes}:{nnodes}"
    command = [
        "python",
        "-m",
        NODE_AGENT,
        "--job-id",
        job_id,
        "--",
        "torchrun",
        f"--nnodes={nnodes_arg}",
        f"--nproc-per-node={nproc_per_node}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={name}-worker-0:{RDZV_PORT}",
        f"--rdzv-id={name}",
        f"--max-restarts={max_restarts}",
        "-m",
        entry_module,
        *train_args,
    ]
    container = {
        "name": "pytorch",  # the training-operator requires this container name
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": command,
        "ports": [{"name": "pytorchjob-port", "containerPort": RDZV_PORT}],
        "envFrom": [
            {"configMapRef": {"name": settings_configmap}},
            {"secretRef": {"name": secrets_name}},
        ],
        "env": [
            {"name": "GMPI_TRAIN_NPROC", "value": str(nproc_per_node)},
            {"name": "GMPI_K8S_ENABLED", "value": "false"},  # a job pod never launches another job
            {"name": "NCCL_DEBUG", "value": "WARN"},
            {"name": "TORCH_NCCL_ASYNC_ERROR_HANDLING", "value": "1"},
            {"name": "OMP_NUM_THREADS", "value": "4"},
        ],
        "resources": {
            "requests": {"cpu": cpu, "memory": memory},
            "limits": {"memory": memory, "nvidia.com/gpu": gpus},
        },
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": "dshm", "mountPath": "/dev/shm"},
            {"name": "cache", "mountPath": "/var/cache/gmpi"},
        ],
    }
    pod_template = {
        "metadata": {"labels": dict(labels), "annotations": {"sidecar.istio.io/inject": "false"}},
        "spec": {
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 10001,
                "runAsGroup": 10001,
                "fsGroup": 10001,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "nodeSelector": {GPU_POOL_LABEL: node_pool},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "containers": [container],
            "volumes": [
                {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": shm_size}},
                {"name": "cache", "emptyDir": {"sizeLimit": "200Gi"}},
            ],
        },
    }
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": "PyTorchJob",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "elasticPolicy": {
                "rdzvBackend": "c10d",
                "rdzvPort": RDZV_PORT,
                "minReplicas": min_nodes,
                "maxReplicas": nnodes,
                "maxRestarts": max_restarts,
            },
            "runPolicy": {
                "cleanPodPolicy": "Running",
                "backoffLimit": max_restarts,
                "ttlSecondsAfterFinished": ttl_seconds_after_finished,
            },
            "pytorchReplicaSpecs": {
                "Worker": {"replicas": nnodes, "restartPolicy": "OnFailure", "template": pod_template},
            },
        },
    }


# -- Kubernetes API ---------------------------------------------------------------------------------------


class KubeClient:
    """Minimal in-cluster Kubernetes API client: JSON over HTTPS with the service-account token."""

    def __init__(self, server: str, token_file: Path | None, ca_file: Path | None, timeout_s: float = 30.0):
        self.server = server.rstrip("/")
        self.token_file = token_file
        self.ca_file = ca_file
        self.timeout_s = timeout_s

    @classmethod
    def in_cluster(cls) -> KubeClient:
        host, port = (
            os.environ.get("KUBERNETES_SERVICE_HOST"),
            os.environ.get("KUBERNETES_SERVICE_PORT", "443"),
        )
        if not host or not (SA_DIR / "token").exists():
            raise PyTorchJobError(
                "not running in a Kubernetes pod with a service-account token (the gpu overlay mounts one "
                "for the trainer); multi-node training needs GMPI_K8S_ENABLED=true inside the cluster"
            )
        if ":" in host:  # IPv6
            host = f"[{host}]"
        return cls(f"https://{host}:{port}", SA_DIR / "token", SA_DIR / "ca.crt")

    def request(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> tuple[int, dict[str, Any]]:
        """(HTTP status, decoded JSON body); API errors come back as their status, not as exceptions."""
        headers = {"Accept": "application/json"}
        if self.token_file is not None:  # re-read: projected tokens rotate
            headers["Authorization"] = f"Bearer {self.token_file.read_text().strip()}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.server + path, data=data, method=method, headers=headers)
        context = None
        if self.server.startswith("https://"):
            context = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s, context=context) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as err:
            status, raw = err.code, err.read()
        except (urllib.error.URLError, OSError) as err:
            raise PyTorchJobError(f"Kubernetes API {method} {path}: {err}") from err
        try:
            decoded = json.loads(raw) if raw else {}
        except ValueError:
            decoded = {"message": raw[:500].decode(errors="replace")}
        return status, decoded if isinstance(decoded, dict) else {"items": decoded}


def _jobs_path(namespace: str, name: str | None = None) -> str:
    path = f"/apis/{API_GROUP}/{API_VERSION}/namespaces/{namespace}/{PLURAL}"
    return f"{path}/{name}" if name else path


def _namespace(settings: Settings) -> str:
    return settings.k8s_namespace


def _own_image(client: KubeClient, namespace: str) -> str:
    """The image of this pod's first container (the trainer's), so the job runs exactly the same code."""
    pod = os.environ.get("HOSTNAME", "")
    status, body = client.request("GET", f"/api/v1/namespaces/{namespace}/pods/{pod}")
    if status != 200:
        raise PyTorchJobError(
            f"cannot read own pod {namespace}/{pod} for its image: HTTP {status} {body}; set "
            "GMPI_TRAINER_IMAGE to the trainer's image (the trainer's Role may not read pods)"
        )
    return str(body["spec"]["containers"][0]["image"])


def _trainer_image(client: KubeClient, namespace: str) -> str:
    return os.environ.get("GMPI_TRAINER_IMAGE", "") or _own_image(client, namespace)


def submit_pytorchjob(
    job_id: str,
    *,
    nnodes: int,
    nproc_per_node: int,
    train_args: list[str],
    settings: Settings,
    client: KubeClient | None = None,
    **build_kwargs: Any,
) -> str:
    """Create the PyTorchJob for ``job_id`` (or find it already there) and return its name.

    The image is ``image`` (the trainer passes its ``Settings.trainer_image``, GMPI_TRAINER_IMAGE), else
    ``$GMPI_TRAINER_IMAGE``, else this pod's own image.
    More than ``settings.max_gpus_per_job`` GPUs in total raises :class:`PyTorchJobTooLarge` first.
    """
    gpus_per_node = build_kwargs.get("gpus_per_node") or nproc_per_node
    check_gpu_request(nnodes, gpus_per_node, settings)  # before any request to the cluster
    client = client or KubeClient.in_cluster()
    namespace = _namespace(settings)
    image = build_kwargs.pop("image", None) or _trainer_image(client, namespace)
    manifest = build_pytorchjob(
        job_id,
        nnodes=nnodes,
        nproc_per_node=nproc_per_node,
        train_args=train_args,
        image=image,
        namespace=namespace,
        **build_kwargs,
    )
    name = manifest["metadata"]["name"]
    status, body = client.request("POST", _jobs_path(namespace), manifest)
    if status in (200, 201, 202):
        return name
    if status == 409:  # re-delivered task: the job exists already, wait on it
        return name
    if status == 404:
        raise PyTorchJobError(
            "the PyTorchJob API (kubeflow.org/v1) is not installed in the cluster: install the Kubeflow "
            f"training-operator (docs/deploy.md). API said: {body.get('message', body)}"
        )
    if status == 403:
        raise PyTorchJobError(
            f"the trainer's service account may not create PyTorchJobs in {namespace} "
            f"(k8s/overlays/gpu/rbac.yaml): {body.get('message', body)}"
        )
    raise PyTorchJobError(f"creating PyTorchJob {name}: HTTP {status} {body.get('message', body)}")


def job_state(job: dict[str, Any]) -> str:
    """created | running | restarting | succeeded | failed, from the job's latest true condition."""
    conditions = [c for c in (job.get("status") or {}).get("conditions") or [] if c.get("status") == "True"]
    if not conditions:
        return "created"
    kinds = {c.get("type") for c in conditions}
    for kind in ("Failed", "Succeeded"):  # terminal conditions win over older ones
        if kind in kinds:
            return kind.lower()
    return str(conditions[-1].get("type", "Created")).lower()


def wait_pytorchjob(
    name: str,
    settings: Settings,
    on_progress: Callable[[str, dict[str, Any]], None] | None = None,
    *,
    client: KubeClient | None = None,
    poll_s: float | None = None,
    timeout_s: float | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Poll the job until it succeeds (returns its status) or fails (raises :class:`PyTorchJobError`).

    ``on_progress(state, status)`` is called whenever the state changes. ``timeout_s`` defaults to
    ``settings.task_time_limit_s``; on timeout the job is left running and ``TimeoutError`` is raised.
    When ``should_stop()`` turns true (checked every second), the job and its pods are deleted and
    :class:`PyTorchJobCancelled` is raised.
    """
    client = client or KubeClient.in_cluster()
    namespace = _namespace(settings)
    poll_s = POLL_S if poll_s is None else poll_s
    limit = timeout_s if timeout_s is not None else float(settings.task_time_limit_s)
    deadline = time.monotonic() + limit
    last = None
    while True:
        status, body = client.request("GET", _jobs_path(namespace, name))
        if status == 404:
            raise PyTorchJobError(f"PyTorchJob {namespace}/{name} disappeared")
        if status != 200:
            raise PyTorchJobError(f"reading PyTorchJob {name}: HTTP {status} {body.get('message', body)}")
        state = job_state(body)
        if state != last and on_progress is not None:
            on_progress(state, body.get("status") or {})
        last = state
        if state == "succeeded":
            return body.get("status") or {}
        if state == "failed":
            reasons = [
                c.get("message", "") for c in body["status"]["conditions"] if c.get("type") == "Failed"
            ]
            raise PyTorchJobError(
                f"PyTorchJob {name} failed: {'; '.join(r for r in reasons if r) or 'no reason'}"
            )
        if time.monotonic() >= deadline:
            raise TimeoutError(f"PyTorchJob {name} still {state} after {limit:.0f} s")
        next_poll = time.monotonic() + poll_s
        while time.monotonic() < next_poll:
            if should_stop is not None and should_stop():
                delete_pytorchjob(name, settings, client=client)
                raise PyTorchJobCancelled(f"PyTorchJob {name} deleted: its job was cancelled")
            time.sleep(min(1.0, max(0.0, next_poll - time.monotonic())))


def delete_pytorchjob(name: str, settings: Settings, *, client: KubeClient | None = None) -> bool:
    """Delete the job and its pods (cancel). False when it was not there."""
    client = client or KubeClient.in_cluster()
    status, body = client.request(
        "DELETE",
        _jobs_path(_namespace(settings), name),
        {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Foreground"},
    )
    if status == 404:
        return False
    if status not in (200, 202):
        raise PyTorchJobError(f"deleting PyTorchJob {name}: HTTP {status} {body.get('message', body)}")
    return True
