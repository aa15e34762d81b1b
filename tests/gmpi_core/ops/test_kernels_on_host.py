"""The fused CUDA kernels' per-element code, compiled for the host with nvcc, matches the math.

The kernels themselves need a GPU; their element functions are ``__host__ __device__``, so small
harnesses (kernel_host/*.cu) run them on the CPU. Skipped where nvcc is not installed.
"""

import math
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from gmpi_core.ops.bias_act import ACTIVATIONS, bias_act
from tests.gmpi_core.ops.test_upfirdn2d import numpy_upfirdn2d

CSRC = Path(__file__).parents[3] / "gmpi_core" / "ops" / "csrc"
HARNESS = Path(__file__).parent / "kernel_host"


def _nvcc() -> str | None:
    found = shutil.which("nvcc")
    if found is None and Path("/usr/local/cuda/bin/nvcc").exists():
        found = "/usr/local/cuda/bin/nvcc"
    return found


pytestmark = pytest.mark.skipif(_nvcc() is None, reason="nvcc is not installed")


@pytest.fixture(scope="module")
def harnesses(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("kernel_host")
    built = {}
    for name in ("bias_act", "upfirdn2d"):
        exe = out / name
        cmd = [
            str(_nvcc()),
            "-std=c++17",
            "-O1",
            "-I",
            str(CSRC),
            str(HARNESS / f"{name}_host.cu"),
            "-o",
            str(exe),
        ]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, f"nvcc failed for {name}:\n{result.stderr}"
        built[name] = exe
    return built


def _run(
    exe: Path, tmp: Path, arrays: list[np.ndarray], args: Sequence[object], dtype: type, size: int
) -> np.ndarray:
    (tmp / "in.bin").write_bytes(b"".join(np.ascontiguousarray(a, dtype=dtype).tobytes() for a in arrays))
    code = 1 if dtype is np.float64 else 0
    cmd = [str(exe), str(tmp / "in.bin"), str(tmp / "out.bin"), str(code), *[str(a) for a in args]]
    result = subprocess.run(cmd, capture_output=True, timeout=30)
    assert result.returncode == 0, f"harness exited with {result.returncode}"
    out: np.ndarray = np.frombuffer((tmp / "out.bin").read_bytes(), dtype=dtype)
    assert out.size == size
    return out


def _derivatives(z: torch.Tensor, act: str, gain: float, clamp: float | None) -> tuple[torch.Tensor, ...]:
    """y, dy/dz, d²y/dz² of y = clamp(act(z)·gain) elementwise, by autograd on the reference."""
    z = z.clone().requires_grad_(True)
    y = bias_act(z, act=act, gain=gain, clamp=clamp, impl="ref")
    (d1,) = torch.autograd.grad(y.sum(), z, create_graph=True)
    (d2,) = torch.autograd.grad(d1.sum(), z, allow_unused=True) if d1.requires_grad else (None,)
    return y.detach(), d1.detach(), torch.zeros_like(z) if d2 is None else d2


@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
@pytest.mark.parametrize("clamp", [None, 0.8])
def test_bias_act_kernel_value_and_derivatives_match_reference(
    act: str, clamp: float | None, harnesses: dict[str, Path], tmp_path: Path
) -> None:
    rng = np.random.default_rng(20)
    x, b, g = rng.normal(size=(2, 3, 4)) * 2, rng.normal(size=3), rng.normal(size=(2, 3, 4))
    spec = ACTIVATIONS[act]
    gain = spec.default_gain
    z = torch.from_numpy(x + b[None, :, None])
    wants = _derivatives(z, act, gain, clamp)
    for mode, want in enumerate(wants):
        arrays = [x, b] if mode == 0 else [x, b, g]
        args = [
            x.size,
            1,
            3,
            4,
            mode,
            spec.kernel_code,
            spec.default_alpha,
            gain,
            -1 if clamp is None else clamp,
        ]
        got = _run(harnesses["bias_act"], tmp_path, arrays, args, np.float64, x.size).reshape(x.shape)
        expected = want.numpy() * (1 if mode == 0 else g)
        np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12, err_msg=f"mode {mode}")


def test_bias_act_kernel_in_float32_and_without_bias(harnesses: dict[str, Path], tmp_path: Path) -> None:
    x = np.linspace(-3, 3, 13)
    got = _run(
        harnesses["bias_act"], tmp_path, [x], [13, 0, 1, 1, 0, 2, 0.2, math.sqrt(2), -1], np.float32, 13
    )
    np.testing.assert_allclose(got, np.where(x > 0, x, 0.2 * x) * math.sqrt(2), rtol=1e-6)


@pytest.mark.parametrize(
    "up,down,pad,fshape",
    [
        ((2, 2), (1, 1), (2, 1, 2, 1), (4, 4)),
        ((1, 1), (2, 2), (1, 1, 1, 1), (4, 4)),
        ((3, 2), (1, 2), (1, 2, 0, 3), (3, 2)),
        ((1, 1), (1, 1), (-1, 2, 1, -2), (2, 3)),
        ((2, 2), (3, 2), (0, -1, 3, 0), (4, 5)),
    ],
)
def test_upfirdn2d_kernel_matches_zero_insert_pad_correlate_decimate(
    up: tuple[int, int],
    down: tuple[int, int],
    pad: tuple[int, int, int, int],
    fshape: tuple[int, int],
    harnesses: dict[str, Path],
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(21)
    x, g = rng.normal(size=(3, 5, 6)), rng.uniform(0.1, 1.0, size=fshape)
    wants = np.stack([numpy_upfirdn2d(plane, g, up, down, pad, flip_filter=True) for plane in x])
    out_h, out_w = wants.shape[1:]
    args = [3, 5, 6, out_h, out_w, *fshape, up[0], up[1], down[0], down[1], pad[0], pad[2]]
    got = _run(harnesses["upfirdn2d"], tmp_path, [x, g], args, np.float64, wants.size)
    np.testing.assert_allclose(got.reshape(wants.shape), wants, rtol=1e-12, atol=1e-12)
