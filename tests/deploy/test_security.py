"""Least privilege of the shipped deployments (SECURITY.md; docs/deploy.md, "Secrets and least privilege").

compose: every port on 127.0.0.1 unless GATEWAY_BIND says otherwise, and then `preflight` refuses the
shipped default secrets; the S3 root account only in MinIO and its one-shot store-init, a bucket-scoped
user each for the gateway and the workers; Redis requires a password that never appears on a command
line. Kubernetes: one namespace; a default-deny NetworkPolicy and exactly the flows the stack needs;
per-role Secrets; Redis auth (KEDA included); the trainer's RBAC limited to PyTorchJobs in its
namespace. The trainer refuses PyTorchJobs above GMPI_MAX_GPUS_PER_JOB.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.common.settings import Settings
from services.trainer import pytorchjob as pj
from tests.deploy.netpol import Endpoint, allowed, selects
from tests.deploy.tools import (
    DOCKER,
    K8S,
    OVERLAYS,
    QUEUES,
    REPO,
    compose_config,
    find,
    kustomize,
    objects,
    pod_specs,
    run,
)

GPU = ("compose.yaml",)
CPU = ("compose.yaml", "compose.cpu.yaml")
LOCAL = ("compose.yaml", "compose.cpu.yaml", "compose.local.yaml")
WORKERS = tuple(QUEUES.values())
STRONG = {  # what an operator puts in .env before exposing the gateway
    "GMPI_API_KEYS": "k-3f9a0c1d2e4b,k-7e8d9c0b1a2f",
    "GMPI_REDIS_PASSWORD": "r-0123456789abcdef",
    "S3_ROOT_USER": "root-admin",
    "S3_ROOT_PASSWORD": "root-0123456789abcdef",
    "S3_GATEWAY_ACCESS_KEY": "gw-user",
    "S3_GATEWAY_SECRET_KEY": "gw-0123456789abcdef",
    "S3_WORKER_ACCESS_KEY": "wk-user",
    "S3_WORKER_SECRET_KEY": "wk-0123456789abcdef",
}
needs_kubectl = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")


@cache
def _config(files: tuple[str, ...], env: tuple[tuple[str, str], ...] = ()) -> dict[str, Any]:
    return compose_config(*files, env=dict(env), profiles=("monitoring",))


def config(files: tuple[str, ...], env: dict[str, str] | None = None) -> dict[str, Any]:
    return _config(files, tuple(sorted((env or {}).items())))


def script(svc: dict[str, Any]) -> str:
    """The shell script of a service started as `/bin/sh -c SCRIPT`, with compose's `$$` unescaped."""
    argv = [*(svc.get("entrypoint") or []), *(svc.get("command") or [])]
    assert argv[:2] == ["/bin/sh", "-c"] and len(argv) == 3, argv
    return argv[2].replace("$$", "$")


def sh(code: str, env: dict[str, str], **kw: Any) -> subprocess.CompletedProcess[str]:
    full = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), **env}
    return subprocess.run(["sh", "-c", code], env=full, capture_output=True, text=True, timeout=60, **kw)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- compose: what is published, and with which secrets -----------------------------------------------


@pytest.mark.parametrize("files", [GPU, CPU], ids=["gpu", "cpu"])
def test_compose_publishes_every_port_on_loopback_by_default(files: tuple[str, ...]) -> None:
    cfg = config(files)
    published = {(name, p["target"]): p.get("host_ip") for name, svc in cfg["services"].items()
                 for p in svc.get("ports") or []}  # fmt: skip
    assert ("gateway", 8000) in published and ("flower", 5555) in published
    assert {k: v for k, v in published.items() if v != "127.0.0.1"} == {}


def test_preflight_refuses_a_public_gateway_with_a_default_secret() -> None:
    public = config(GPU, {"GATEWAY_BIND": "0.0.0.0"})
    gateway = public["services"]["gateway"]
    assert [p["host_ip"] for p in gateway["ports"]] == ["0.0.0.0"]
    assert gateway["depends_on"]["preflight"]["condition"] == "service_completed_successfully"
    pre = public["services"]["preflight"]
    assert pre["network_mode"] == "none" and pre["restart"] == "no"

    res = sh(script(pre), pre["environment"])
    assert res.returncode == 1, res
    for name in ("GMPI_API_KEYS", "GMPI_REDIS_PASSWORD", "S3_ROOT_PASSWORD", "S3_GATEWAY_SECRET_KEY",
                 "S3_WORKER_SECRET_KEY"):  # fmt: skip
        assert name in res.stderr, res.stderr
    # every secret set: it starts
    good = config(GPU, {"GATEWAY_BIND": "0.0.0.0", **STRONG})["services"]["preflight"]
    assert sh(script(good), good["environment"]).returncode == 0
    # one default left, auth off, or no key at all: refused
    for change in ({"GMPI_API_KEYS": "k-3f9a0c1d2e4b,dev-key"}, {"GMPI_AUTH_DISABLED": "true"},
                   {"S3_WORKER_SECRET_KEY": "gmpi-worker-dev-secret"}, {"GMPI_API_KEYS": " , "}):  # fmt: skip
        res = sh(script(good), {**good["environment"], **change})
        assert res.returncode == 1 and "preflight" in res.stderr, (change, res)
    # this machine only: the dev defaults are fine
    local = config(GPU)["services"]["preflight"]
    assert local["environment"]["GATEWAY_BIND"] == "127.0.0.1"
    assert sh(script(local), local["environment"]).returncode == 0


@pytest.mark.parametrize("env", [{}, STRONG], ids=["defaults", "set"])
@pytest.mark.parametrize("files", [GPU, LOCAL], ids=["minio", "seaweedfs"])
def test_only_the_store_sees_the_s3_root_account(files: tuple[str, ...], env: dict[str, str]) -> None:
    services = config(files, env)["services"]
    store = services["minio"]["environment"]
    root_user = store.get("MINIO_ROOT_USER") or store["S3_ROOT_USER"]
    root_pw = store.get("MINIO_ROOT_PASSWORD") or store["S3_ROOT_PASSWORD"]
    holders = {name for name, svc in services.items() if root_pw in json.dumps(svc.get("environment") or {})}
    assert holders == {"minio", "store-init", "preflight"}, holders  # preflight: no network, compares only

    def key(name: str) -> tuple[str, str]:
        e = services[name]["environment"]
        return e["GMPI_S3_ACCESS_KEY"], e["GMPI_S3_SECRET_KEY"]

    gateway, worker = key("gateway"), key("landmarks")
    assert root_user not in (gateway[0], worker[0]) and gateway[0] != worker[0] and gateway[1] != worker[1]
    assert {key(w) for w in (*WORKERS, "bucket-init")} == {worker}
    if env:
        assert gateway == (env["S3_GATEWAY_ACCESS_KEY"], env["S3_GATEWAY_SECRET_KEY"])
        assert worker == (env["S3_WORKER_ACCESS_KEY"], env["S3_WORKER_SECRET_KEY"])
    init = services["store-init"]
    assert init["restart"] == "no"
    assert (
        services["bucket-init"]["depends_on"]["store-init"]["condition"] == "service_completed_successfully"
    )


FAKE_MC = """#!/bin/sh
echo "$*" >> "$MC_LOG"
case "$*" in
  "admin policy create "*) cat > "$MC_DIR/$5.json" ;;
  "admin policy attach "*) if [ -n "$MC_ATTACH_ERROR" ]; then echo "$MC_ATTACH_ERROR" >&2; exit 1; fi ;;
esac
"""


def run_store_init(tmp_path: Path, attach_error: str = "") -> tuple[subprocess.CompletedProcess[str], Path]:
    svc = config(GPU, STRONG)["services"]["store-init"]
    assert svc["image"].startswith("minio/minio:")  # its mc
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    (bindir / "mc").write_text(FAKE_MC)
    (bindir / "mc").chmod(0o755)
    env = {**svc["environment"], "MC_LOG": str(tmp_path / "mc.log"), "MC_DIR": str(tmp_path),
           "MC_ATTACH_ERROR": attach_error, "TMPDIR": str(tmp_path)}  # fmt: skip
    res = subprocess.run(["sh", "-c", script(svc)], env={**env, "PATH": f"{bindir}:{os.environ['PATH']}"},
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    return res, tmp_path


def test_store_init_gives_the_gateway_and_workers_bucket_scoped_users(tmp_path: Path) -> None:
    res, d = run_store_init(tmp_path)
    assert res.returncode == 0, res
    calls = (d / "mc.log").read_text().splitlines()
    assert (
        calls[0] == f"alias set gmpi http://minio:9000 {STRONG['S3_ROOT_USER']} {STRONG['S3_ROOT_PASSWORD']}"
    )
    assert "mb --ignore-existing gmpi/gmpi" in calls
    for who in ("gateway", "worker"):
        access, secret = STRONG[f"S3_{who.upper()}_ACCESS_KEY"], STRONG[f"S3_{who.upper()}_SECRET_KEY"]
        assert f"admin user add gmpi {access} {secret}" in calls
        assert f"admin policy attach gmpi gmpi-{who} --user {access}" in calls
    objects_rw = {"s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"}
    expected = {"gmpi-worker": objects_rw, "gmpi-gateway": objects_rw | {"s3:ListMultipartUploadParts"}}
    for name, object_actions in expected.items():
        policy = json.loads((d / f"{name}.json").read_text())
        grants = {}
        for st in policy["Statement"]:
            assert st["Effect"] == "Allow" and "Condition" not in st and "NotAction" not in st, st
            for resource in st["Resource"]:
                grants.setdefault(resource, set()).update(st["Action"])
        assert grants == {"arn:aws:s3:::gmpi": {"s3:GetBucketLocation", "s3:ListBucket"},
                          "arn:aws:s3:::gmpi/*": object_actions}, (name, grants)  # fmt: skip


def test_store_init_is_idempotent_but_not_blind(tmp_path: Path) -> None:
    again = "mc: <ERROR> Unable to make user/group policy association. The specified policy change is already in effect."  # noqa: E501
    res, _ = run_store_init(tmp_path, again)
    assert res.returncode == 0, res
    res, _ = run_store_init(tmp_path, "mc: <ERROR> Unable to attach the policy: connection refused")
    assert res.returncode != 0 and "connection refused" in res.stderr, res


@needs_kubectl
def test_the_k8s_bucket_job_runs_the_same_script() -> None:
    job = find(objects("cpu-dev"), "Job", "minio-bucket-init")
    c = job["spec"]["template"]["spec"]["containers"][0]
    assert c["command"] == ["/bin/sh", "-c"]
    assert c["args"][0] == script(config(GPU)["services"]["store-init"])
    assert c["image"] == config(GPU)["services"]["store-init"]["image"]
    assert "$(" not in c["args"][0]  # the kubelet would try to expand $(...) itself


ENTRYPOINT = str(DOCKER / "local" / "seaweedfs-entrypoint.sh")


def seaweedfs_config(d: Path, **change: str) -> subprocess.CompletedProcess[str]:
    """Run compose.local.yaml's SeaweedFS entrypoint (with STRONG secrets) up to `weed`, a stub here: the
    S3 config it writes is d/s3.json."""
    d.mkdir(parents=True, exist_ok=True)
    env = {
        **config(LOCAL, STRONG)["services"]["minio"]["environment"],
        "S3_CONFIG": str(d / "s3.json"),
        **change,
    }
    (d / "weed").write_text('#!/bin/sh\necho "$@" > "$S3_CONFIG.args"\n')
    (d / "weed").chmod(0o755)
    return subprocess.run([ENTRYPOINT], env={**env, "PATH": f"{d}:{os.environ['PATH']}"}, capture_output=True,
                          text=True, timeout=60)  # fmt: skip


def test_seaweedfs_users_are_bucket_scoped(tmp_path: Path) -> None:
    """compose.local.yaml's S3 server (SeaweedFS) gets the same three identities from its entrypoint."""
    services = config(LOCAL, STRONG)["services"]
    res = seaweedfs_config(tmp_path)
    assert res.returncode == 0, res
    assert f"-s3.config={tmp_path / 's3.json'}" in (tmp_path / "s3.json.args").read_text()
    ids = {i["name"]: i for i in json.loads((tmp_path / "s3.json").read_text())["identities"]}
    keys = {n: (i["credentials"][0]["accessKey"], i["credentials"][0]["secretKey"]) for n, i in ids.items()}
    assert keys == {"root": (STRONG["S3_ROOT_USER"], STRONG["S3_ROOT_PASSWORD"]),
                    "gateway": (STRONG["S3_GATEWAY_ACCESS_KEY"], STRONG["S3_GATEWAY_SECRET_KEY"]),
                    "worker": (STRONG["S3_WORKER_ACCESS_KEY"], STRONG["S3_WORKER_SECRET_KEY"])}  # fmt: skip
    assert "Admin" in ids["root"]["actions"]
    assert ids["gateway"]["actions"] == ids["worker"]["actions"] == ["Read:gmpi", "Write:gmpi", "List:gmpi"]
    assert services["gateway"]["environment"]["GMPI_S3_ACCESS_KEY"] == STRONG["S3_GATEWAY_ACCESS_KEY"]
    # store-init makes the bucket with the root account (the users may not)
    assert services["store-init"]["environment"]["GMPI_S3_ACCESS_KEY"] == STRONG["S3_ROOT_USER"]
    bad = seaweedfs_config(tmp_path / "bad", S3_WORKER_SECRET_KEY='a"b')
    assert bad.returncode == 2 and "S3_WORKER_SECRET_KEY" in bad.stderr


def _weed() -> str | None:
    import sys

    found = Path(sys.executable).parent / "weed"
    return str(found) if found.exists() else shutil.which("weed")


@pytest.mark.skipif(_weed() is None, reason="SeaweedFS (weed) not installed")
def test_seaweedfs_enforces_the_bucket_scope(tmp_path: Path) -> None:
    """The identities above against a real SeaweedFS and the services' own S3 client."""
    import urllib.request

    from services.common.storage import S3Storage

    assert seaweedfs_config(tmp_path / "cfg").returncode == 0
    cfg = tmp_path / "cfg" / "s3.json"
    port = free_port()
    ports = [free_port() for _ in range(5)]
    (tmp_path / "data").mkdir()
    args = [
        f"-dir={tmp_path / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-s3.port={port}",
        f"-master.port={ports[0]}",
        f"-volume.port={ports[1]}",
        f"-filer.port={ports[2]}",
        f"-admin.port={ports[3]}",
        f"-metricsPort={ports[4]}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-master.telemetry=false",
        "-webdav=false",
        "-admin.ui=false",
        f"-s3.config={cfg}",
        "-volume.max=20",
    ]
    proc = subprocess.Popen([_weed(), "mini", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1)
                break
            except urllib.error.HTTPError:
                break  # answers (403 without credentials)
            except OSError:
                assert time.monotonic() < deadline, "SeaweedFS did not start"
                time.sleep(0.3)

        def store(access: str, secret: str) -> S3Storage:
            return S3Storage(Settings(s3_endpoint=f"127.0.0.1:{port}", s3_access_key=STRONG[access],
                                      s3_secret_key=STRONG[secret]))  # fmt: skip

        from minio.error import S3Error

        worker = store("S3_WORKER_ACCESS_KEY", "S3_WORKER_SECRET_KEY")
        gateway = store("S3_GATEWAY_ACCESS_KEY", "S3_GATEWAY_SECRET_KEY")
        root = store("S3_ROOT_USER", "S3_ROOT_PASSWORD")
        with pytest.raises(S3Error, match="AccessDenied"):
            worker.client.make_bucket("gmpi")
        root.ensure_ready()  # what store-init does
        (tmp_path / "a.bin").write_bytes(b"x" * 1000)
        worker.put_file("jobs/j/a.bin", tmp_path / "a.bin")
        assert gateway.get_bytes("jobs/j/a.bin") == b"x" * 1000 and gateway.list("jobs/") == ["jobs/j/a.bin"]
        root.client.make_bucket("elsewhere")
        import io

        for s in (worker, gateway):
            with pytest.raises(S3Error, match="AccessDenied"):
                s.client.make_bucket("another")
            with pytest.raises(S3Error, match="AccessDenied"):
                s.client.put_object("elsewhere", "x", io.BytesIO(b"1"), 1)
            with pytest.raises(S3Error, match="AccessDenied"):
                s.client.remove_bucket("gmpi")
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)


# -- Redis ------------------------------------------------------------------------------------------


def test_settings_put_the_redis_password_into_the_url() -> None:
    import redis.connection
    from kombu.utils.url import url_to_parts

    s = Settings(redis_url="redis://redis:6379/0", redis_password="p@ss:w/rd %")
    assert s.redis_url == "redis://:p%40ss%3Aw%2Frd%20%25@redis:6379/0"
    assert redis.connection.parse_url(s.redis_url)["password"] == "p@ss:w/rd %"
    assert url_to_parts(s.redis_url).password == "p@ss:w/rd %"  # Celery's broker and result backend
    assert (
        Settings(redis_url="redis://default@h:1/0", redis_password="pw").redis_url
        == "redis://default:pw@h:1/0"
    )
    assert Settings(redis_url="redis://:given@h:1/0", redis_password="pw").redis_url == "redis://:given@h:1/0"
    assert Settings(redis_url="redis://h:1/0").redis_url == "redis://h:1/0"
    assert "p@ss" not in repr(Settings(redis_password="p@ss")).replace("redis_url", "")


@pytest.mark.parametrize("files", [GPU, LOCAL], ids=["compose", "local"])
def test_compose_redis_requires_the_password(files: tuple[str, ...]) -> None:
    services = config(files, STRONG)["services"]
    redis = services["redis"]
    password = STRONG["GMPI_REDIS_PASSWORD"]
    assert redis["environment"]["REDISCLI_AUTH"] == password
    assert 'requirepass "$REDISCLI_AUTH"' in script(redis)
    assert password not in json.dumps([redis.get("entrypoint"), redis.get("command")])  # never in argv
    assert "grep -q PONG" in " ".join(redis["healthcheck"]["test"])  # redis-cli exits 0 on NOAUTH
    for name in ("gateway", *WORKERS):
        env = services[name]["environment"]
        assert env["GMPI_REDIS_PASSWORD"] == password and "@" not in env["GMPI_REDIS_URL"], name
    assert f":{password}@" in services["flower"]["environment"]["CELERY_BROKER_URL"]


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed")
def test_the_local_redis_command_really_requires_the_password(tmp_path: Path) -> None:
    import redis as redis_py

    port = free_port()
    svc = config(LOCAL, {**STRONG, "GMPI_STACK_REDIS_PORT": str(port)})["services"]["redis"]
    password = svc["environment"]["REDISCLI_AUTH"]
    proc = subprocess.Popen(["sh", "-c", script(svc)], env={"PATH": os.environ["PATH"], **svc["environment"]},
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        url = Settings(redis_url=f"redis://127.0.0.1:{port}/0", redis_password=password).redis_url
        for _ in range(100):
            try:
                assert redis_py.Redis.from_url(url).ping()
                break
            except redis_py.ConnectionError:
                time.sleep(0.1)
        with pytest.raises(redis_py.AuthenticationError):
            redis_py.Redis.from_url(f"redis://127.0.0.1:{port}/0").set("x", "1")
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode(errors="replace")
        assert "redis-server" in cmdline and password not in cmdline  # `ps` shows no password
        health = run(["sh", "-c", " ".join(svc["healthcheck"]["test"][1:])], env=svc["environment"])
        assert health.returncode == 0
        assert run(["sh", "-c", " ".join(svc["healthcheck"]["test"][1:])], env={}).returncode != 0
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# -- Kubernetes -------------------------------------------------------------------------------------


def gmpi_containers(objs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (name, c)
        for name, spec in pod_specs(objs)
        for c in spec["containers"]
        if c["image"].startswith("gmpi/")
    ]


def secret_refs(c: dict[str, Any]) -> set[tuple[str, str]]:
    """(secret, key or '*') the container reads."""
    out = {(r["secretRef"]["name"], "*") for r in c.get("envFrom", []) if "secretRef" in r}
    for e in c.get("env", []):
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            out.add((ref["name"], ref["key"]))
    return out


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_everything_lands_in_one_namespace(overlay: str) -> None:
    for obj in objects(overlay):
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == "gmpi", (obj["kind"], obj["metadata"]["name"])
        for subject in obj.get("subjects", []):
            assert subject.get("namespace") == "gmpi", obj["metadata"]["name"]


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_get_only_their_own_secrets(overlay: str) -> None:
    objs = objects(overlay)
    for name, c in gmpi_containers(objs):
        refs = secret_refs(c)
        assert not {s for s, _ in refs} & {"gmpi-store-secrets"}, name  # MinIO's root account
        if name == "Deployment/gateway":
            assert refs == {("gmpi-gateway-secrets", "*"), ("gmpi-secrets", "GMPI_REDIS_PASSWORD")}
        else:
            assert refs == {("gmpi-secrets", "*")}, (name, refs)  # workers never see the API keys
    for kind, name in (("StatefulSet", "minio"), ("Job", "minio-bucket-init")):
        c = find(objs, kind, name)["spec"]["template"]["spec"]["containers"][0]
        assert ("gmpi-store-secrets", "MINIO_ROOT_PASSWORD") in secret_refs(c), name
    if overlay == "cpu-dev":
        data = {s["metadata"]["name"]: s["data"] for s in objs if s["kind"] == "Secret"}
        import base64

        def val(secret: str, key: str) -> str:
            return base64.b64decode(data[secret][key]).decode()

        users = {val("gmpi-store-secrets", "MINIO_ROOT_USER"), val("gmpi-secrets", "GMPI_S3_ACCESS_KEY"),
                 val("gmpi-gateway-secrets", "GMPI_S3_ACCESS_KEY")}  # fmt: skip
        assert len(users) == 3
        assert "GMPI_API_KEYS" not in data["gmpi-secrets"]


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_k8s_redis_requires_the_secret_password(overlay: str) -> None:
    objs = objects(overlay)
    pod = find(objs, "StatefulSet", "redis")["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["command"] == ["/bin/sh", "-c"] and 'requirepass "$REDISCLI_AUTH"' in c["args"][0]
    assert ("gmpi-secrets", "GMPI_REDIS_PASSWORD") in secret_refs(c)
    for probe in ("livenessProbe", "readinessProbe"):
        assert "grep -q PONG" in " ".join(c[probe]["exec"]["command"])
    auths = {o["metadata"]["name"]: o for o in objs if o["kind"] == "TriggerAuthentication"}
    for so in (o for o in objs if o["kind"] == "ScaledObject"):
        for trigger in so["spec"]["triggers"]:
            auth = auths[trigger["authenticationRef"]["name"]]["spec"]["secretTargetRef"]
            assert {"parameter": "password", "name": "gmpi-secrets", "key": "GMPI_REDIS_PASSWORD"} in auth
    for name, c in gmpi_containers(objs):
        refs = secret_refs(c)
        assert ("gmpi-secrets", "*") in refs or ("gmpi-secrets", "GMPI_REDIS_PASSWORD") in refs, name
    if overlay == "cpu-dev":
        assert "GMPI_REDIS_PASSWORD" in find(objs, "Secret", "gmpi-secrets")["data"]


@needs_kubectl
def test_cpu_dev_exposes_nothing_with_its_published_secrets() -> None:
    objs = objects("cpu-dev")
    assert not [o for o in objs if o["kind"] == "Ingress"]
    assert all(o["spec"].get("type", "ClusterIP") == "ClusterIP" for o in objs if o["kind"] == "Service")


# NetworkPolicies: the pods of an overlay, the PyTorchJob pods, and what lives outside the namespace


def endpoints(overlay: str) -> dict[str, Endpoint]:
    objs = objects(overlay)
    out = {}
    for i, (name, spec) in enumerate(pod_specs(objs)):
        obj = find(objs, *name.split("/"))
        labels = obj["spec"]["template"]["metadata"]["labels"]
        ports = {
            p["name"]: p["containerPort"]
            for c in spec["containers"]
            for p in c.get("ports", [])
            if "name" in p
        }
        out[name.split("/")[1]] = Endpoint(
            name, obj["metadata"]["namespace"], labels, f"10.244.1.{i + 1}", ports
        )
    if overlay == "gpu":  # the trainer launches these
        job = pj.build_pytorchjob("x", nnodes=2, nproc_per_node=1, train_args=[], image="i", namespace="gmpi")
        labels = job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["metadata"]["labels"]
        for n in (0, 1):
            out[f"job-{n}"] = Endpoint(f"pytorchjob-{n}", "gmpi", labels, f"10.244.2.{n + 1}")
    return out


OUTSIDE = {
    "kube-dns": Endpoint("kube-dns", "kube-system", {"k8s-app": "kube-dns"}, "10.244.9.2"),
    "ingress": Endpoint(
        "ingress-nginx", "ingress-nginx", {"app.kubernetes.io/name": "ingress-nginx"}, "10.244.9.3"
    ),
    "keda": Endpoint("keda-operator", "keda", {"app": "keda-operator"}, "10.244.9.4"),
    # a pod of another namespace that looks like one of ours
    "lookalike": Endpoint("lookalike", "other", {"app.kubernetes.io/component": "worker"}, "10.244.9.5"),
    "apiserver": Endpoint("apiserver", ip="172.18.0.2", pod=False),
    "internet": Endpoint("internet", ip="93.184.216.34", pod=False),
}
PORTS = [(53, "UDP"), (53, "TCP"), (80, "TCP"), (443, "TCP"), (6379, "TCP"), (6443, "TCP"), (8000, "TCP"),
         (9000, "TCP"), (9001, "TCP"), (29400, "TCP"), (41234, "TCP")]  # fmt: skip


def expected_flows(overlay: str, ours: dict[str, Endpoint]) -> set[tuple[str, str, int, str]]:
    """Exactly what the stack needs (k8s/base/networkpolicy.yaml has the same list)."""
    flows = set()
    clients = ["gateway", *WORKERS] + [n for n in ours if n.startswith("job-")]
    for src in ours:
        flows |= {(src, "kube-dns", 53, "UDP"), (src, "kube-dns", 53, "TCP")}
    flows.add(("ingress", "gateway", 8000, "TCP"))
    for src in clients:
        flows |= {(src, "redis", 6379, "TCP"), (src, "minio", 9000, "TCP")}
    flows |= {("keda", "redis", 6379, "TCP"), ("ingress", "minio", 9000, "TCP"),
              ("minio-bucket-init", "minio", 9000, "TCP")}  # fmt: skip
    jobs = [n for n in ours if n.startswith("job-")]
    flows |= {(a, b, port, proto) for a in jobs for b in jobs if a != b for port, proto in PORTS}
    if overlay == "gpu":
        # the API server's address is the cluster's: the shipped policy allows any address on the API
        # ports to the trainer alone (k8s/overlays/gpu/networkpolicy.yaml: narrow the CIDR)
        flows |= {("trainer", dst, port, "TCP") for dst in OUTSIDE for port in (443, 6443)}
    return flows


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_allow_exactly_the_flows_of_the_stack(overlay: str) -> None:
    objs = objects(overlay)
    policies = [o for o in objs if o["kind"] == "NetworkPolicy"]
    deny = find(objs, "NetworkPolicy", "default-deny")["spec"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
    assert not deny.get("ingress") and not deny.get("egress")
    ours = endpoints(overlay)
    assert {"gateway", "redis", "minio", "minio-bucket-init", *WORKERS} <= set(ours)
    everyone = {**ours, **OUTSIDE}
    want = expected_flows(overlay, ours)
    got = {
        (a, b, port, proto)
        for a, src in everyone.items()
        for b, dst in everyone.items()
        if a != b and (a in ours or b in ours)
        for port, proto in PORTS
        if allowed(policies, src, dst, port, proto)
    }
    assert got - want == set(), f"flows allowed that the stack does not need: {sorted(got - want)}"
    assert want - got == set(), f"flows the stack needs that are denied: {sorted(want - got)}"


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_is_isolated_both_ways(overlay: str) -> None:
    policies = [o for o in objects(overlay) if o["kind"] == "NetworkPolicy"]
    for name, ep in endpoints(overlay).items():
        for direction in ("Ingress", "Egress"):
            assert any(
                direction in p["spec"]["policyTypes"] and selects(p["spec"]["podSelector"], ep.labels)
                for p in policies
                if p["metadata"]["namespace"] == ep.namespace
            ), (name, direction)


# RBAC and the trainer's image


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_cluster_wide_rbac_and_only_the_trainer_has_a_token(overlay: str) -> None:
    objs = objects(overlay)
    assert not [o for o in objs if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    for name, spec in pod_specs(objs):
        token = spec.get("automountServiceAccountToken")
        if overlay == "gpu" and name == "Deployment/trainer":
            assert token is True and spec["serviceAccountName"] == "gmpi-trainer"
        else:
            assert token is False, name


@needs_kubectl
def test_the_trainer_may_only_manage_pytorchjobs_in_its_namespace() -> None:
    objs = objects("gpu")
    trainer = find(objs, "Deployment", "trainer")
    sa = trainer["spec"]["template"]["spec"]["serviceAccountName"]
    bindings = [o for o in objs if o["kind"] == "RoleBinding" and any(s["name"] == sa for s in o["subjects"])]
    assert len(bindings) == 1
    binding = bindings[0]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": "gmpi"}]
    assert binding["roleRef"]["kind"] == "Role"
    role = find(objs, "Role", binding["roleRef"]["name"])
    assert (
        role["metadata"]["namespace"] == trainer["metadata"]["namespace"] == binding["metadata"]["namespace"]
    )
    assert len(role["rules"]) == 1
    rule = role["rules"][0]
    assert rule["apiGroups"] == ["kubeflow.org"] and rule["resources"] == ["pytorchjobs"]
    assert set(rule["verbs"]) == {"create", "get", "list", "watch", "delete"}
    assert not rule.get("resourceNames") and "*" not in json.dumps(rule)
    # what services/trainer/pytorchjob.py sends, and nothing else, is covered
    assert (pj.API_GROUP, pj.PLURAL) == ("kubeflow.org", "pytorchjobs")


@needs_kubectl
def test_the_trainer_image_comes_from_its_env_and_follows_image_overrides(tmp_path: Path) -> None:
    """No `get pods` needed: GMPI_TRAINER_IMAGE names the trainer's own image, even after `images:`."""

    def trainer_env(objs: list[dict[str, Any]]) -> tuple[str, str]:
        c = find(objs, "Deployment", "trainer")["spec"]["template"]["spec"]["containers"][0]
        return c["image"], next(e["value"] for e in c["env"] if e["name"] == "GMPI_TRAINER_IMAGE")

    image, env = trainer_env(objects("gpu"))
    assert image == env == "gmpi/trainer:dev"
    wrapper = tmp_path / "site"
    wrapper.mkdir()
    (wrapper / "kustomization.yaml").write_text(yaml.safe_dump({
        "resources": [os.path.relpath(K8S / "overlays" / "gpu", wrapper)],
        "images": [{"name": "gmpi/trainer", "newName": "registry.example.com/gmpi/trainer", "newTag": "1.4"}],
    }))  # fmt: skip
    res = run([shutil.which("kubectl") or "kubectl", "kustomize", str(wrapper)])
    assert res.returncode == 0, res.stderr
    image, env = trainer_env([d for d in yaml.safe_load_all(res.stdout) if d])
    assert image == env == "registry.example.com/gmpi/trainer:1.4"
    assert "GMPI_TRAINER_IMAGE" in kustomize("cpu-dev")  # harmless there (no PyTorchJobs)


# -- the bounded GPU request ------------------------------------------------------------------------


class _NoKube(pj.KubeClient):
    def __init__(self) -> None:
        super().__init__("https://k8s.invalid", None, None)
        self.calls: list[tuple[str, str]] = []

    def request(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> tuple[int, dict[str, Any]]:
        self.calls.append((method, path))
        return 201, {}


def test_pytorchjobs_above_the_gpu_limit_are_refused_before_the_api_is_asked() -> None:
    settings = Settings(k8s_namespace="team-a")
    assert settings.max_gpus_per_job == 16  # the default SECURITY.md states
    kube = _NoKube()
    with pytest.raises(pj.PyTorchJobTooLarge, match="GMPI_MAX_GPUS_PER_JOB") as err:
        pj.submit_pytorchjob(
            "j", nnodes=1024, nproc_per_node=1, train_args=[], settings=settings, client=kube, image="x"
        )
    assert "1024 GPUs" in str(err.value) and kube.calls == []
    with pytest.raises(pj.PyTorchJobTooLarge):  # GPUs per node count too
        pj.submit_pytorchjob(
            "j",
            nnodes=2,
            nproc_per_node=1,
            gpus_per_node=16,
            train_args=[],
            settings=settings,
            client=kube,
            image="x",
        )
    # at the limit, and with a raised limit: submitted
    pj.submit_pytorchjob(
        "j", nnodes=2, nproc_per_node=8, train_args=[], settings=settings, client=kube, image="x"
    )
    big = Settings(max_gpus_per_job=64)
    pj.submit_pytorchjob("j", nnodes=8, nproc_per_node=8, train_args=[], settings=big, client=kube, image="x")
    assert [m for m, _ in kube.calls] == ["POST", "POST"]
    with pytest.raises(ValueError):
        Settings(max_gpus_per_job=0)


@needs_kubectl
def test_the_gpu_limit_is_set_in_the_cluster_settings() -> None:
    data = find(objects("gpu"), "ConfigMap", "gmpi-settings")["data"]
    assert Settings(max_gpus_per_job=data["GMPI_MAX_GPUS_PER_JOB"]).max_gpus_per_job >= 1


# -- SECURITY.md stays true to the code --------------------------------------------------------------


def test_security_md_names_real_settings_files_and_defaults() -> None:
    from tests.deploy.tools import allowed_settings

    text = (REPO / "SECURITY.md").read_text()
    settings = set(re.findall(r"\bGMPI_[A-Z0-9_]+\b", text))
    assert settings and settings <= allowed_settings(), sorted(settings - allowed_settings())
    for path in set(re.findall(r"`((?:services|gmpi_core|k8s|docs|scripts)/[\w./-]+)`", text)):
        assert (REPO / path).exists(), path
    fields = Settings.model_fields
    row = {m.group(1): m.group(2) for m in re.finditer(r"^\| `GMPI_(\w+)` \| ([^|]+) \|", text, re.M)}
    assert int(row["MAX_GPUS_PER_JOB"]) == fields["max_gpus_per_job"].default
    assert row["MAX_UPLOAD_BYTES"].strip() == f"{fields['max_upload_bytes'].default // 1024**3} GiB"
    assert int(row["RENDER_RATE_LIMIT"]) == fields["render_rate_limit"].default
    assert int(row["TASK_TIME_LIMIT_S"]) == fields["task_time_limit_s"].default
    assert row["PRESIGN_EXPIRY_S"].startswith(str(fields["presign_expiry_s"].default))
