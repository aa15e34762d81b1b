"""gmpi doctor: what to know before a long training run, and numerical self-tests of the fast paths.

    gmpi doctor                              Python, torch/CUDA/cuDNN, GPUs, NCCL, compilers, fused kernels
    gmpi doctor --json report.json           ... also written as JSON
    gmpi doctor --build                      build the fused kernels first (as scripts/dev.sh env does)
    gmpi doctor --selftest --device cpu      fused CPU renderer and bias_act vs reference, gloo all-reduce
    gmpi doctor --gpu-selftest --bench       CUDA kernels vs reference, fp16 vs fp32 blocks, NCCL, a timed
                                             FFHQ256 train step; exit 1 when a check fails, 2 without a GPU

Self-test results are ``{name, status (pass|fail|skip), max_abs_err, tolerance, seconds, detail, metrics}``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from gmpi_core.atomic import atomic_write
from gmpi_core.ops import _build

# fp16 blocks vs fp32 on the same weights: rendered images in [-1, 1]
FP16_MEAN_ABS_TOL = 0.02
FP16_MAX_ABS_TOL = 0.25
RENDER_ABS_TOL = 1e-4  # as the renderer's own CUDA self-check (float32)
# as the bias_act/upfirdn2d self-checks: |got - ref| <= atol + rtol·|ref|
KERNEL_ATOL = 1e-4
KERNEL_RTOL = 1e-3
ALL_REDUCE_TIMEOUT_S = 120.0
# the --bench settings per device type: a real FFHQ256 step on a GPU, a quick pass through the code on CPU
BENCH = {
    "cuda": {"preset": "FFHQ256", "batch": 4, "steps": 5, "warmup": 2},
    "cpu": {"preset": "synthetic32", "batch": 2, "steps": 2, "warmup": 1},
}


# -- environment ------------------------------------------------------------------------------------------


def _command_output(cmd: Sequence[str], timeout: float = 30.0) -> str | None:
    """stdout (else stderr) of ``cmd``; None when it cannot run or fails."""
    try:
        done = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    return done.stdout.strip() or done.stderr.strip()


def _first_line(text: str | None) -> str | None:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[0] if lines else None


def _nccl_version() -> str | None:
    try:
        version = torch.cuda.nccl.version()
    except Exception:
        return None
    if isinstance(version, tuple):
        return ".".join(str(v) for v in version)
    return str(version)


def _cudnn_version() -> str | None:
    try:
        version = torch.backends.cudnn.version()
    except Exception:
        return None
    return None if version is None else str(version)


def _gpus() -> list[dict[str, Any]]:
    gpus: list[dict[str, Any]] = []
    if not torch.cuda.is_available():
        return gpus
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        gpus.append(
            {
                "index": i,
                "name": props.name,
                "capability": f"{props.major}.{props.minor}",
                "memory_gib": round(props.total_memory / 2**30, 1),
            }
        )
    return gpus


def _nvcc() -> dict[str, Any]:
    """The nvcc torch's extension builder uses (``CUDA_HOME/bin/nvcc``, else the one on PATH)."""
    from torch.utils.cpp_extension import CUDA_HOME

    path = os.path.join(CUDA_HOME, "bin", "nvcc") if CUDA_HOME else shutil.which("nvcc")
    release = None
    if path:
        found = re.search(r"release ([\d.]+)", _command_output([path, "--version"]) or "")
        release = found.group(1) if found else None
    return {"cuda_home": CUDA_HOME, "path": path if release else None, "release": release}


def extensions_root() -> Path:
    """Folder under which torch builds the fused kernels: ``TORCH_EXTENSIONS_DIR``, else torch's default
    build root plus its ``py311_cpu``-style subfolder (torch's rule, computed without creating folders)."""
    from torch.utils.cpp_extension import get_default_build_root

    env = os.environ.get("TORCH_EXTENSIONS_DIR")
    if env is not None:
        return Path(env)
    if torch.version.hip is not None:
        accelerator = f"rocm{torch.version.hip.replace('.', '')}"
    elif torch.version.cuda is not None:
        accelerator = f"cu{torch.version.cuda.replace('.', '')}"
    else:
        accelerator = "cpu"
    python = f"py{sys.version_info.major}{sys.version_info.minor}{getattr(sys, 'abiflags', '')}"
    return Path(get_default_build_root()) / f"{python}_{accelerator}"


def _register_kernels() -> dict[str, _build.ExtensionSpec]:
    import gmpi_core.ops.kernels  # noqa: F401  (declares every kernel)

    return dict(_build._specs)


def kernel_status() -> list[dict[str, Any]]:
    """For every registered fused kernel: its build folder, whether its shared object exists there
    ("built"), whether this process loaded it, and the last build error."""
    root = extensions_root()
    rows = []
    for name, spec in sorted(_register_kernels().items()):
        row: dict[str, Any] = {"name": name, "device": "cuda" if spec.cuda else "cpu"}
        try:
            full_name = _build.registered_module_name(spec)
        except Exception as exc:  # unreadable sources, a bad TORCH_CUDA_ARCH_LIST
            row.update(full_name=None, folder=None, built=False, error=f"{type(exc).__name__}: {exc}")
        else:
            folder = root / full_name
            built = (folder / f"{full_name}.so").is_file()
            row.update(full_name=full_name, folder=str(folder), built=built, error=None)
        row["loaded"] = _build._cache.get(name) is not None
        row["error"] = _build.build_error(name) or row["error"]
        rows.append(row)
    return rows


def environment() -> dict[str, Any]:
    """Everything the text report shows except the kernels, grouped as it prints."""
    import torch.distributed as dist
    from torch.utils.cpp_extension import is_ninja_available

    cxx = os.environ.get("CXX", "c++")
    smi = shutil.which("nvidia-smi")
    driver = (
        _first_line(_command_output([smi, "--query-gpu=driver_version", "--format=csv,noheader"]))
        if smi
        else None
    )
    in_venv = sys.prefix != getattr(sys, "base_prefix", sys.prefix)
    return {
        "python": {
            "version": sys.version.split()[0],
            "executable": sys.executable,
            "venv": sys.prefix if in_venv else None,
        },
        "torch": {
            "version": torch.__version__,
            "cuda": torch.version.cuda,
            "cudnn": _cudnn_version(),
            "cuda_available": torch.cuda.is_available(),
            "gpu_count": torch.cuda.device_count() if torch.cuda.is_available() else 0,
            "driver": driver,
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "cpu_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
        },
        "gpus": _gpus(),
        "distributed": {
            "available": dist.is_available(),
            "gloo": dist.is_available() and dist.is_gloo_available(),
            "nccl": dist.is_available() and dist.is_nccl_available(),
            "nccl_version": _nccl_version(),
        },
        "build": {
            "cxx": cxx,
            "cxx_version": _first_line(_command_output([cxx, "--version"])),
            "nvcc": _nvcc(),
            "ninja": is_ninja_available(),
            "gmpi_fused": _build.fused_enabled(),
            "torch_cuda_arch_list": os.environ.get("TORCH_CUDA_ARCH_LIST"),
            "extensions_root": str(extensions_root()),
            "extensions_root_from": "TORCH_EXTENSIONS_DIR"
            if os.environ.get("TORCH_EXTENSIONS_DIR") is not None
            else "torch default",
        },
    }


def notes(env: dict[str, Any], kernels: list[dict[str, Any]]) -> list[str]:
    """Plain-language warnings for a long run."""
    out = []
    build, has_gpu = env["build"], env["torch"]["cuda_available"]
    if not has_gpu:
        out.append("no CUDA GPU visible to torch: training runs on the CPU (fine for synthetic32/64 only)")
    if not build["gmpi_fused"]:
        out.append(
            "GMPI_FUSED=0: fused kernels are off; the reference PyTorch ops run (same results, slower)"
        )
        return out
    if build["cxx_version"] is None:
        out.append(
            f"no C++ compiler ({build['cxx']}): fused kernels cannot build; reference ops run (slower)"
        )
    if not build["ninja"]:
        out.append("ninja missing: torch cannot build the fused kernels; `pip install ninja`")
    if has_gpu and build["nvcc"]["release"] is None:
        out.append(
            "no nvcc (CUDA toolkit): the CUDA kernels cannot build; reference ops run on the GPU (slower)"
        )
    for k in kernels:
        if k["device"] == "cuda" and not has_gpu:
            continue
        if not k["built"]:
            out.append(
                f"{k['name']} is not built for this environment: its first use compiles it "
                f"({'several minutes' if k['device'] == 'cuda' else 'about a minute'}); "
                "`gmpi doctor --build` builds it now"
            )
    if env["torch"]["gpu_count"] >= 2 and not env["distributed"]["nccl"]:
        out.append("several GPUs but no NCCL in this torch: multi-GPU training cannot use the nccl backend")
    return out


# -- self-tests -------------------------------------------------------------------------------------------


@dataclass
class Check:
    """One self-test result."""

    name: str
    status: str = "pass"  # pass | fail | skip
    max_abs_err: float | None = None
    tolerance: str | None = None
    seconds: float = 0.0
    detail: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)


def _seeded(gen: torch.Generator, *shape: int, scale: float = 1.0) -> Tensor:
    return torch.randn(*shape, generator=gen) * scale


def _kernel_error(got: Tensor, want: Tensor) -> tuple[float, bool]:
    """(max |got - want|, within atol + rtol·|want| everywhere)."""
    if got.shape != want.shape:
        return float("inf"), False
    diff = (got.float() - want.float()).abs()
    ok = bool((diff <= KERNEL_ATOL + KERNEL_RTOL * want.float().abs()).all())
    return float(diff.max()) if diff.numel() else 0.0, ok


def check_mpi_render(device: torch.device) -> Check:
    """Fused renderer (CPU kernel on CPU, CUDA kernel on CUDA) vs the reference: image, depth, grad rgba."""
    from gmpi_core.camera import sphere_c2w
    from gmpi_core.mpi import render
    from gmpi_core.mpi.planes import confined_extents, plane_depths, plane_dhw

    check = Check("mpi_render", tolerance=f"abs {RENDER_ABS_TOL:g} (float32)")
    if not _build.fused_enabled():
        check.status, check.detail = "skip", "fused kernels disabled (GMPI_FUSED=0)"
        return check
    gen = torch.Generator().manual_seed(0)
    cases = []  # (planes, texture, image size, views): the renderer self-check's scene, then a 32² one
    for n, tex, size, views in ((7, 13, 17, 3), (8, 32, 32, 2)):
        box, background = confined_extents(12.6, 1.12, 0.289, 0.127, 2.0, radius=1.0, center_z=1.0)
        dhw = plane_dhw(plane_depths(0.95, 1.12, n), box, background).to(device)
        yaw = (torch.rand(views, generator=gen) - 0.5) * 0.8
        pitch = (torch.rand(views, generator=gen) - 0.5) * 0.4
        c2w = sphere_c2w(yaw, pitch, 1.0, 1.0).to(device)
        rgba = torch.rand(views, n, 4, tex, tex, generator=gen).to(device).requires_grad_(True)
        g_img = _seeded(gen, views, 3, size, size).to(device)
        g_dep = _seeded(gen, views, 1, size, size).to(device)
        cases.append((rgba, dhw, c2w, size, g_img, g_dep))
    worst, problems = 0.0, []
    for i, (rgba, dhw, c2w, size, g_img, g_dep) in enumerate(cases):
        results = []
        for impl in ("fused", "reference"):
            image, depth = render.render_mpi(rgba, dhw, c2w, 12.6, size, impl=impl)  # type: ignore[arg-type]
            (grad,) = torch.autograd.grad((image * g_img).sum() + (depth * g_dep).sum(), [rgba])
            results.append((image, depth, grad))
        for label, got, want in zip(("image", "depth", "grad rgba"), *results):
            err = float((got - want).abs().max())
            worst = max(worst, err)
            if not err <= RENDER_ABS_TOL:
                problems.append(f"case {i} {label}: {err:.3g}")
    check.max_abs_err = worst
    if problems:
        check.status, check.detail = "fail", "fused differs from the reference: " + "; ".join(problems)
    else:
        check.detail = f"{len(cases)} scenes: forward image+depth, backward grad w.r.t. rgba"
    return check


def _cuda_kernel_check(name: str, device: torch.device) -> Check:
    """A fused-CUDA-kernel comparison, skipped off CUDA."""
    check = Check(name, tolerance=f"atol {KERNEL_ATOL:g} + rtol {KERNEL_RTOL:g}·|ref|")
    if device.type != "cuda":
        check.status, check.detail = "skip", f"CUDA only (device {device.type})"
    return check


def _mismatches(check: Check, worst: float, problems: list[str], passed: str) -> Check:
    """Record a kernel comparison: the worst error, and fail with the first mismatches if any."""
    check.max_abs_err = worst
    if problems:
        check.status = "fail"
        check.detail = f"{len(problems)} mismatches, e.g. " + "; ".join(problems[:4])
    else:
        check.detail = passed
    return check


def check_bias_act(device: torch.device) -> Check:
    """Fused bias_act (the CUDA kernel, or on the CPU the C++ one) vs reference, forward and first-order
    backward, every activation."""
    from gmpi_core.ops import bias_act as bias_act_module
    from gmpi_core.ops.bias_act import ACTIVATIONS, bias_act

    if device.type == "cpu":
        check = Check("bias_act", tolerance=f"atol {KERNEL_ATOL:g} + rtol {KERNEL_RTOL:g}·|ref|")
        if bias_act_module._CPU_KERNEL.get() is None:
            check.status, check.detail = "skip", "the fused CPU kernel did not build (no C++ compiler?)"
            return check
    else:
        check = _cuda_kernel_check("bias_act", device)
        if check.status == "skip":
            return check
    fused = "cuda" if device.type == "cuda" else "cpu"
    gen = torch.Generator().manual_seed(0)
    worst, problems, n = 0.0, [], 0
    for act in ACTIVATIONS:
        for shape in ((2, 5, 3, 4), (4, 32, 16, 16)):
            for clamp in (None, 0.7):
                x = _seeded(gen, *shape, scale=2.0).to(device).requires_grad_(True)
                b = _seeded(gen, shape[1]).to(device).requires_grad_(True)
                g = _seeded(gen, *shape).to(device)
                outs = []
                for impl in (fused, "ref"):
                    y = bias_act(x, b, dim=1, act=act, clamp=clamp, impl=impl)
                    dx, db = torch.autograd.grad((y * g).sum(), [x, b])
                    outs.append((y, dx, db))
                n += 1
                for label, got, want in zip(("y", "dx", "db"), *outs):
                    err, ok = _kernel_error(got, want)
                    worst = max(worst, err)
                    if not ok:
                        problems.append(f"{act} {tuple(shape)} clamp={clamp} {label}: {err:.3g}")
    return _mismatches(
        check, worst, problems, f"{len(ACTIVATIONS)} activations, {n} cases: forward and grad x, b"
    )


def check_upfirdn2d(device: torch.device) -> Check:
    """Fused CUDA upfirdn2d vs reference (up 2, down 2, separable, plain filter), forward and backward."""
    from gmpi_core.ops.upfirdn2d import setup_filter, upfirdn2d

    check = _cuda_kernel_check("upfirdn2d", device)
    if check.status == "skip":
        return check
    gen = torch.Generator().manual_seed(0)
    cases: list[tuple[str, Tensor, dict[str, Any]]] = [
        ("up 2", setup_filter([1, 3, 3, 1]), {"up": 2, "padding": [2, 1, 2, 1], "gain": 4}),
        ("down 2", setup_filter([1, 3, 3, 1]), {"down": 2, "padding": 1}),
        (
            "separable",
            setup_filter([1, 2, 3, 4, 5, 6, 7, 8], separable=True),
            {"up": [2, 1], "down": [1, 3], "padding": [3, -1, 0, 2]},
        ),
        ("plain filter", _seeded(gen, 3, 2), {"padding": [1, 0, -1, 2], "flip_filter": True}),
    ]
    worst, problems = 0.0, []
    for label, f, kwargs in cases:
        for shape in ((2, 3, 7, 6), (2, 16, 32, 32)):
            x = _seeded(gen, *shape).to(device).requires_grad_(True)
            f_dev = f.to(device)
            y_cuda = upfirdn2d(x, f_dev, impl="cuda", **kwargs)
            y_ref = upfirdn2d(x, f_dev, impl="ref", **kwargs)
            if y_cuda.shape != y_ref.shape:
                problems.append(
                    f"{label} {tuple(shape)}: shape {tuple(y_cuda.shape)} != {tuple(y_ref.shape)}"
                )
                continue
            g = torch.randn(y_ref.shape, generator=gen).to(device)  # the same upstream gradient for both
            (dx_cuda,) = torch.autograd.grad((y_cuda * g).sum(), [x])
            (dx_ref,) = torch.autograd.grad((y_ref * g).sum(), [x])
            for what, got, want in (("y", y_cuda, y_ref), ("dx", dx_cuda, dx_ref)):
                err, ok = _kernel_error(got, want)
                worst = max(worst, err)
                if not ok:
                    problems.append(f"{label} {tuple(shape)} {what}: {err:.3g}")
    return _mismatches(check, worst, problems, f"{len(cases)} filters x 2 shapes: forward and grad x")


def check_fp16(device: torch.device, preset_name: str = "synthetic64") -> Check:
    """The same generator weights with ``num_fp16_res=4`` vs ``0``: rendered frontal images in [-1, 1]."""
    from gmpi_core.camera import camera_c2w
    from gmpi_core.config import preset
    from gmpi_core.mpi.planes import plane_layout
    from gmpi_core.mpi.render import render_mpi
    from gmpi_core.networks import GMPIGenerator

    check = Check(
        "fp16_vs_fp32",
        tolerance=f"mean abs <= {FP16_MEAN_ABS_TOL:g}, max abs <= {FP16_MAX_ABS_TOL:g} (images in [-1, 1])",
    )
    if device.type != "cuda":
        check.status, check.detail = "skip", f"CUDA only: fp16 blocks run in fp32 on {device.type}"
        return check
    cfg = preset(preset_name)
    gcfg = cfg.generator.model_dump()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        g32 = GMPIGenerator(**{**gcfg, "num_fp16_res": 0})
        g16 = GMPIGenerator(**{**gcfg, "num_fp16_res": 4})
    g16.load_state_dict(g32.state_dict())
    batch, n_planes, psi = 4, 16, 0.7
    z = torch.randn(batch, g32.z_dim, generator=torch.Generator().manual_seed(0)).to(device)
    dhw, depth_norm = plane_layout(cfg.camera, n_planes)
    cam = cfg.camera
    c2w = camera_c2w(cam, torch.zeros(batch), torch.zeros(batch))
    images = []
    with torch.no_grad():
        for g in (g32, g16):
            g = g.to(device).eval()
            rgba = g(z, depth_norm.to(device), truncation_psi=psi, noise_mode="const")
            image, _ = render_mpi(
                rgba.float(), dhw.to(device), c2w.to(device), cam.fov_deg, cfg.generator.img_resolution,
                impl="reference",
            )  # fmt: skip
            images.append(image.float())
    diff = (images[1] - images[0]).abs()
    mean_err, max_err = float(diff.mean()), float(diff.max())
    finite = bool(torch.isfinite(images[1]).all())
    check.max_abs_err = max_err
    check.metrics = {"mean_abs_err": mean_err, "max_abs_err": max_err, "preset": preset_name}
    check.detail = (
        f"{preset_name}, {batch} images, {n_planes} planes, truncation {psi}: "
        f"mean abs {mean_err:.3g}, max abs {max_err:.3g}"
    )
    if not finite or mean_err > FP16_MEAN_ABS_TOL or max_err > FP16_MAX_ABS_TOL:
        check.status = "fail"
        check.detail += "" if finite else "; fp16 output has NaN/inf"
    elif max_err == 0.0:
        check.detail += " (identical: did the fp16 blocks run?)"
    return check


def _all_reduce_worker(rank: int, world_size: int, backend: str, init_file: str, out_dir: str) -> None:
    """One process of the all-reduce check: sum rank+1 over all ranks, write what it got."""
    import torch.distributed as dist

    device = torch.device("cpu")
    if backend == "nccl":
        torch.cuda.set_device(rank)
        device = torch.device("cuda", rank)
    dist.init_process_group(
        backend,
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=ALL_REDUCE_TIMEOUT_S / 2),
    )
    try:
        t = torch.full((1 << 16,), float(rank + 1), device=device)
        dist.all_reduce(t)
        got = {"min": float(t.min()), "max": float(t.max())}
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(got))
    finally:
        dist.destroy_process_group()


def _join(ctx: Any, check: Check) -> bool:
    """``ctx.join(1 s)``; a worker's exception becomes ``check``'s failure, named by its last line."""
    import torch.multiprocessing as mp

    try:
        return bool(ctx.join(timeout=1.0))
    except (mp.ProcessRaisedException, mp.ProcessExitedException) as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        check.status, check.detail = "fail", f"a worker failed: {lines[-1] if lines else type(exc).__name__}"
        return True


def check_all_reduce(device: torch.device, world_size: int = 2) -> Check:
    """Two spawned processes all-reduce a tensor (nccl on CUDA with >= 2 GPUs, gloo on CPU)."""
    import torch.distributed as dist
    import torch.multiprocessing as mp

    check = Check("all_reduce", tolerance="exact")
    backend = "nccl" if device.type == "cuda" else "gloo"
    check.metrics = {"backend": backend, "world_size": world_size}
    if device.type == "cuda" and torch.cuda.device_count() < world_size:
        check.status = "skip"
        check.detail = f"needs {world_size} GPUs ({torch.cuda.device_count()} visible)"
        return check
    available = dist.is_available() and (
        dist.is_nccl_available() if backend == "nccl" else dist.is_gloo_available()
    )
    if not available:
        check.status, check.detail = "fail", f"torch.distributed has no {backend} backend"
        return check
    want = world_size * (world_size + 1) / 2
    with tempfile.TemporaryDirectory(prefix="gmpi_doctor_") as tmp:
        init_file = os.path.join(tmp, "init")
        ctx = mp.spawn(
            _all_reduce_worker, args=(world_size, backend, init_file, tmp), nprocs=world_size, join=False
        )
        assert ctx is not None
        deadline = time.monotonic() + ALL_REDUCE_TIMEOUT_S
        while not _join(ctx, check):
            if time.monotonic() > deadline:
                for p in ctx.processes:
                    if p.is_alive():
                        p.kill()
                check.status = "fail"
                check.detail = f"{backend} all-reduce did not finish in {ALL_REDUCE_TIMEOUT_S:.0f} s"
                return check
        if check.status == "fail":
            return check
        got = [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in range(world_size)]
    err = max(max(abs(g["min"] - want), abs(g["max"] - want)) for g in got)
    check.max_abs_err = err
    check.detail = f"{backend}, {world_size} processes: sum {want:g} expected, got {[g['max'] for g in got]}"
    if err != 0:
        check.status = "fail"
    return check


def _bench_script() -> Path:
    return Path(__file__).resolve().parent.parent / "scripts" / "bench" / "train_step.py"


def check_train_step(device: torch.device, batch: int | None = None) -> Check:
    """A short timed training step with ``scripts/bench/train_step.py`` (FFHQ256 on CUDA)."""
    settings = dict(BENCH["cuda" if device.type == "cuda" else "cpu"])
    if batch is not None:
        settings["batch"] = batch
    check = Check("train_step_bench", tolerance="runs")
    script = _bench_script()
    if not script.is_file():
        check.status, check.detail = "skip", f"needs a source checkout ({script} not found)"
        return check
    spec = importlib.util.spec_from_file_location("gmpi_bench_train_step", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.bench(
        settings["preset"], str(device), settings["batch"], None, settings["steps"], settings["warmup"]
    )
    check.metrics = {k: result[k] for k in ("preset", "device", "batch", "planes", "res")}
    check.metrics.update(
        s_per_step=result["s_per_step"], imgs_per_s=result["imgs_per_s"], peak_mib=result["peak_mib"]
    )
    peak = "n/a" if result["peak_mib"] is None else f"{result['peak_mib']:.0f} MiB"
    memory = "GPU memory" if device.type == "cuda" else "RSS"
    check.detail = (
        f"{result['preset']} batch {result['batch']}, {result['planes']} planes, "
        f"{settings['steps']} steps after {settings['warmup']}: {result['s_per_step']:.3f} s/step, "
        f"{result['imgs_per_s']:.2f} img/s, peak {memory} {peak}"
    )
    return check


def _timed(run: Callable[[], Check], name: str, device: torch.device) -> Check:
    """Run one check: time it, turn an exception into a failure, keep its warnings in the detail."""
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with torch.inference_mode(False), torch.enable_grad():
                check = run()
            if device.type == "cuda":
                torch.cuda.synchronize(device)  # an asynchronous kernel error surfaces here
        except Exception as exc:
            message = _first_line(str(exc)) or ""
            check = Check(name, status="fail", detail=f"{type(exc).__name__}: {message}")
    check.seconds = time.perf_counter() - t0
    extra = [str(w.message) for w in caught if "gmpi" in str(w.message)]
    if extra:
        check.detail = "; ".join([check.detail, *extra]) if check.detail else "; ".join(extra)
    return check


def run_selftest(
    device: torch.device, *, bench: bool = False, bench_batch: int | None = None, log: Any = None
) -> list[Check]:
    """Every self-test check on ``device``, printing one progress line per check as it starts."""
    log = log or sys.stderr
    checks: list[tuple[str, Callable[[], Check]]] = [
        ("mpi_render", lambda: check_mpi_render(device)),
        ("bias_act", lambda: check_bias_act(device)),
        ("upfirdn2d", lambda: check_upfirdn2d(device)),
        ("fp16_vs_fp32", lambda: check_fp16(device)),
        ("all_reduce", lambda: check_all_reduce(device)),
    ]
    if bench:
        checks.append(("train_step_bench", lambda: check_train_step(device, bench_batch)))
    results = []
    for i, (name, run) in enumerate(checks, 1):
        print(f"gmpi doctor: [{i}/{len(checks)}] {name} on {device} ...", file=log, flush=True)
        results.append(_timed(run, name, device))
    return results


# -- report -----------------------------------------------------------------------------------------------


def _yes(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _rows(rows: Sequence[tuple[str, Any]], indent: str = "  ") -> list[str]:
    width = max(len(key) for key, _ in rows) + 1
    return [f"{indent}{key + ':':<{width}} {_yes(value)}" for key, value in rows]


def _section(title: str, rows: Sequence[tuple[str, Any]]) -> list[str]:
    return ["", title, *_rows(rows)]


def format_report(report: dict[str, Any]) -> str:
    """The plain-text report: aligned ``key: value`` lines per group, then the self-test table."""
    env = report["environment"]
    py, tc, dist, build = env["python"], env["torch"], env["distributed"], env["build"]
    lines = _section(
        "Python",
        [("version", py["version"]), ("executable", py["executable"]), ("venv", py["venv"] or "none")],
    )
    lines += _section(
        "PyTorch",
        [
            ("version", tc["version"]),
            ("CUDA (built with)", tc["cuda"] or "none (CPU build)"),
            ("cuDNN", tc["cudnn"]),
            ("cuda.is_available", tc["cuda_available"]),
            ("GPUs visible", tc["gpu_count"]),
            ("driver", tc["driver"]),
            ("CUDA_VISIBLE_DEVICES", tc["cuda_visible_devices"] or "unset"),
            ("CPU threads", f"{tc['cpu_threads']} (of {tc['cpu_count']} cores)"),
        ],
    )
    for gpu in env["gpus"]:
        lines.append(
            f"  GPU {gpu['index']}: {gpu['name']}, compute capability {gpu['capability']}, "
            f"{gpu['memory_gib']:.1f} GiB"
        )
    lines += _section(
        "Distributed",
        [
            ("torch.distributed", dist["available"]),
            ("gloo", dist["gloo"]),
            ("nccl", dist["nccl"]),
            ("NCCL version", dist["nccl_version"]),
        ],
    )
    nvcc = build["nvcc"]
    nvcc_text = f"{nvcc['release']} ({nvcc['path']})" if nvcc["release"] else "missing"
    lines += _section(
        "Fused kernels",
        [
            (
                "C++ compiler",
                f"{build['cxx_version']} ({build['cxx']})" if build["cxx_version"] else "missing",
            ),
            ("CUDA_HOME", nvcc["cuda_home"] or "unset"),
            ("nvcc", nvcc_text),
            ("ninja", build["ninja"]),
            ("GMPI_FUSED", "on" if build["gmpi_fused"] else "off"),
            ("TORCH_CUDA_ARCH_LIST", build["torch_cuda_arch_list"] or "unset"),
            ("cache root", f"{build['extensions_root']} ({build['extensions_root_from']})"),
        ],
    )
    for k in report["kernels"]:
        rows = [("folder", k["folder"]), ("built", k["built"]), ("loaded", k["loaded"])]
        if k["error"]:
            rows.append(("error", k["error"]))
        lines += [f"  {k['name']} ({k['device']})", *_rows(rows, "    ")]
    if report.get("build") is not None:
        failed, which = report["build"]["failed"], "all kernels" if report["build"]["cuda"] else "CPU kernels"
        lines.append(f"  --build ({which}): {'FAILED ' + ', '.join(sorted(failed)) if failed else 'built'}")
    if report["notes"]:
        lines += ["", "Notes"]
        lines += [f"  - {note}" for note in report["notes"]]
    selftest = report.get("selftest")
    if selftest is not None:
        lines += ["", f"Self-test on {selftest['device']}", *_check_table(selftest["checks"])]
        verdict = "all passed" if selftest["passed"] else "FAILED"
        lines.append(f"  {verdict} ({sum(c['status'] == 'skip' for c in selftest['checks'])} skipped)")
    return "\n".join(lines).lstrip("\n")


def _check_table(checks: Sequence[dict[str, Any]]) -> list[str]:
    header = ("check", "status", "max_abs_err", "tolerance", "seconds", "detail")
    rows = [
        (
            c["name"],
            c["status"],
            "-" if c["max_abs_err"] is None else f"{c['max_abs_err']:.3g}",
            c["tolerance"] or "-",
            f"{c['seconds']:.1f}",
            c["detail"],
        )
        for c in checks
    ]
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(5)]
    return [
        "  " + "  ".join(f"{cell:<{w}}" for cell, w in zip(r[:5], widths)) + "  " + r[5]
        for r in (header, *rows)
    ]


def write_json(path: Path, report: dict[str, Any]) -> None:
    """Write ``report`` to ``path`` via a temp file in the same folder: complete or not there at all."""

    def dump(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2, default=str)
            f.write("\n")

    atomic_write(path, dump, mode=None)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gmpi doctor",
        description=(__doc__ or "").split("\n\n")[0],
        epilog=(__doc__ or "").split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the whole report as JSON")
    p.add_argument("--build", action="store_true", help="build the fused kernels now, before reporting")
    p.add_argument("--selftest", action="store_true", help="run the numerical checks on --device")
    p.add_argument(
        "--gpu-selftest",
        action="store_true",
        help="--selftest --device cuda; exits 2 when no GPU is visible",
    )
    p.add_argument("--device", choices=("cpu", "cuda"), help="self-test device (default: cuda if available)")
    p.add_argument(
        "--bench", action="store_true", help="also a short timed training step (implies --selftest)"
    )
    p.add_argument("--bench-batch", type=int, help="batch of the --bench step (default: 4 on CUDA, 2 on CPU)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    selftest = args.selftest or args.gpu_selftest or args.bench
    if args.gpu_selftest:
        if args.device == "cpu":
            print("gmpi doctor: --gpu-selftest runs on cuda; drop --device cpu", file=sys.stderr)
            return 2
        args.device = "cuda"
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if selftest and device.type == "cuda" and not torch.cuda.is_available():
        flag = "--gpu-selftest" if args.gpu_selftest else "--device cuda"
        print(
            f"gmpi doctor: {flag} needs a CUDA GPU; torch sees none "
            f"(torch {torch.__version__}, CUDA {torch.version.cuda}). "
            "Run `gmpi doctor` without it for the environment report.",
            file=sys.stderr,
        )
        return 2
    report: dict[str, Any] = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "argv": list(sys.argv[1:] if argv is None else argv),
        "build": None,
    }
    if args.build:
        from gmpi_core.ops.prebuild import prebuild_kernels

        print("gmpi doctor: building the fused kernels ...", file=sys.stderr, flush=True)
        cuda = torch.cuda.is_available()
        report["build"] = {"cuda": cuda, "failed": prebuild_kernels(cuda)}
    env = environment()
    report["environment"] = env
    report["kernels"] = kernel_status()
    report["notes"] = notes(env, report["kernels"])
    exit_code = 1 if report["build"] and report["build"]["failed"] else 0
    report["selftest"] = None
    if selftest:
        checks = [asdict(c) for c in run_selftest(device, bench=args.bench, bench_batch=args.bench_batch)]
        passed = all(c["status"] != "fail" for c in checks)
        report["selftest"] = {"device": str(device), "passed": passed, "checks": checks}
        report["kernels"] = kernel_status()  # the checks loaded some
        exit_code = max(exit_code, 0 if passed else 1)
    report["exit_code"] = exit_code
    print(format_report(report), flush=True)
    if args.json:
        write_json(args.json, report)
        print(f"gmpi doctor: wrote {args.json}", file=sys.stderr)
    return exit_code


if __name__ == "__main__":
    raise SystemExit(main())
