"""`gmpi doctor`: the environment report, its kernel folders, and the self-tests that run on CPU."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from gmpi_core import doctor
from gmpi_core.ops import _build

needs_cxx = pytest.mark.skipif(shutil.which("c++") is None, reason="no C++ compiler for the fused CPU kernel")
no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")


def _checks(path) -> dict[str, dict]:
    return {c["name"]: c for c in json.loads(path.read_text())["selftest"]["checks"]}


def _stub_all_reduce(monkeypatch) -> None:
    """The two-process check costs seconds; tests that are about something else skip it."""
    monkeypatch.setattr(
        doctor, "check_all_reduce", lambda device: doctor.Check("all_reduce", status="skip", detail="stub")
    )


def test_report_names_torch_and_every_kernel_and_the_json_holds_the_same(tmp_path, capsys):
    path = tmp_path / "r.json"
    assert doctor.main(["--json", str(path)]) == 0
    printed = capsys.readouterr().out
    report = json.loads(path.read_text())
    assert torch.__version__ in printed
    names = set(_build._specs)
    assert names >= {"mpi_render_cpu", "mpi_render_cuda", "bias_act", "upfirdn2d"}
    assert all(name in printed for name in names)
    assert {k["name"] for k in report["kernels"]} == names
    assert report["environment"]["torch"]["version"] == torch.__version__
    assert report["selftest"] is None and report["exit_code"] == 0
    assert printed.strip() == doctor.format_report(report).strip()  # the text is the JSON's content
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temp file left


def test_json_is_replaced_whole_or_not_written(tmp_path, monkeypatch):
    path = tmp_path / "r.json"
    path.write_text('{"old": true}')

    def broken_dump(obj, f, **kwargs):
        f.write('{"partial": ')
        raise RuntimeError("disk full")

    monkeypatch.setattr(doctor.json, "dump", broken_dump)
    with pytest.raises(RuntimeError, match="disk full"):
        doctor.write_json(path, {"a": 1})
    assert json.loads(path.read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


@pytest.mark.slow
@needs_cxx
def test_reported_kernel_folder_is_where_the_build_really_is(tmp_path, monkeypatch):
    from torch.utils import cpp_extension

    from gmpi_core.mpi.render import _cpu_kernel
    from gmpi_core.ops.prebuild import prebuild_kernels

    loaded_from = []
    real_load = cpp_extension.load

    def recording_load(*args, **kwargs):
        module = real_load(*args, **kwargs)
        loaded_from.append(module.__file__)
        return module

    monkeypatch.setattr(cpp_extension, "load", recording_load)
    assert prebuild_kernels(cuda=False) == {}  # the default folder: ~1 min when not built yet
    assert len(loaded_from) == 2  # the two CPU kernels: mpi_render_cpu and bias_act_cpu
    row = {k["name"]: k for k in doctor.kernel_status()}["mpi_render_cpu"]
    assert row["folder"] in {str(Path(f).parent) for f in loaded_from}
    assert row["built"] is True and row["error"] is None
    assert row["loaded"] is False  # prebuild drops it from the cache; first use loads it
    assert _cpu_kernel() is not None
    assert {k["name"]: k for k in doctor.kernel_status()}["mpi_render_cpu"]["loaded"] is True

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    row = {k["name"]: k for k in doctor.kernel_status()}["mpi_render_cpu"]
    assert row["folder"] == str(tmp_path / row["full_name"])
    assert row["built"] is False
    assert list(tmp_path.iterdir()) == []  # reporting creates nothing
    assert _build._build_directory(row["full_name"]) == tmp_path / row["full_name"]  # torch's own rule


@pytest.mark.slow
@needs_cxx
def test_cpu_selftest_passes_renderer_and_gloo_and_skips_cuda_checks(tmp_path, capsys):
    path = tmp_path / "r.json"
    assert doctor.main(["--selftest", "--device", "cpu", "--json", str(path)]) == 0
    out, err = capsys.readouterr()
    checks = _checks(path)
    assert checks["mpi_render"]["status"] == "pass"
    assert 0 <= checks["mpi_render"]["max_abs_err"] <= doctor.RENDER_ABS_TOL
    assert checks["all_reduce"]["status"] == "pass" and checks["all_reduce"]["metrics"]["backend"] == "gloo"
    assert checks["all_reduce"]["max_abs_err"] == 0
    assert checks["bias_act"]["status"] == "pass"  # the fused CPU kernel against the reference
    assert 0 <= checks["bias_act"]["max_abs_err"] <= 1e-3
    for name in ("upfirdn2d", "fp16_vs_fp32"):
        assert checks[name]["status"] == "skip" and "CUDA only" in checks[name]["detail"]
    assert "train_step_bench" not in checks
    assert all(f"{name} on cpu" in err for name in checks)  # one progress line per check
    assert "Self-test on cpu" in out and "all passed" in out
    kernels = {k["name"]: k for k in json.loads(path.read_text())["kernels"]}
    assert kernels["mpi_render_cpu"]["loaded"] is True  # the check really used the fused CPU kernel


@needs_cxx
def test_a_wrong_fused_render_fails_the_check_and_the_exit_code(tmp_path, monkeypatch, capsys):
    from gmpi_core.mpi import render

    real = render.render_mpi

    def off_by_a_bit(*args, impl="auto", **kwargs):
        image, depth = real(*args, impl=impl, **kwargs)
        return (image + 0.01, depth) if impl == "fused" else (image, depth)

    monkeypatch.setattr(render, "render_mpi", off_by_a_bit)
    _stub_all_reduce(monkeypatch)
    path = tmp_path / "r.json"
    assert doctor.main(["--selftest", "--device", "cpu", "--json", str(path)]) == 1
    check = _checks(path)["mpi_render"]
    assert check["status"] == "fail" and "image" in check["detail"]
    assert check["max_abs_err"] == pytest.approx(0.01, abs=1e-4)
    assert json.loads(path.read_text())["exit_code"] == 1
    assert "FAILED" in capsys.readouterr().out


def test_a_check_that_raises_is_a_failure_not_a_crash(monkeypatch, capsys):
    def crash(device):
        raise RuntimeError("kernel launch failed\nmore lines")

    monkeypatch.setattr(doctor, "check_mpi_render", crash)
    _stub_all_reduce(monkeypatch)
    assert doctor.main(["--selftest", "--device", "cpu"]) == 1
    assert "RuntimeError: kernel launch failed" in capsys.readouterr().out


@pytest.mark.slow
def test_bench_runs_a_real_train_step_on_cpu(tmp_path, monkeypatch):
    monkeypatch.setitem(doctor.BENCH, "cpu", {"preset": "synthetic32", "batch": 2, "steps": 1, "warmup": 0})
    monkeypatch.setattr(
        doctor, "check_mpi_render", lambda device: doctor.Check("mpi_render", status="skip", detail="stub")
    )
    _stub_all_reduce(monkeypatch)
    path = tmp_path / "r.json"
    assert doctor.main(["--bench", "--device", "cpu", "--json", str(path)]) == 0
    check = _checks(path)["train_step_bench"]
    assert check["status"] == "pass", check["detail"]
    assert check["metrics"]["preset"] == "synthetic32" and check["metrics"]["batch"] == 2
    assert check["metrics"]["s_per_step"] > 0 and check["metrics"]["imgs_per_s"] > 0


@no_gpu
def test_gpu_selftest_without_a_gpu_exits_2_and_says_why(capsys):
    assert doctor.main(["--gpu-selftest"]) == 2
    err = capsys.readouterr().err
    assert "--gpu-selftest needs a CUDA GPU; torch sees none" in err
    assert torch.__version__ in err


def test_gmpi_doctor_help_goes_through_the_cli(capsys):
    from gmpi_core.cli import build_parser, main

    with pytest.raises(SystemExit) as exc:
        main(["doctor", "--help"])
    assert exc.value.code == 0
    assert "gmpi doctor" in capsys.readouterr().out
    assert "doctor" in build_parser().format_help()
