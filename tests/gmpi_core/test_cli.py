"""The `gmpi` CLI: the demo writes readable images and videos; errors are reported, not raised."""

import argparse
import ast
import json
import sys
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest
from PIL import Image

from gmpi_core.cli import build_parser, main


def test_demo_writes_views_depth_planes_and_videos(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--planes", "8", "--views", "3", "--train-seconds", "0"]) == 0
    printed = capsys.readouterr().out
    names = [
        *("views_yaw_sweep.png", "depth_yaw_sweep.png", "mpi_rgb.png", "mpi_alpha.png"),
        *("video_rgb_horizontal.mp4", "video_rgb_horizontal.gif", "video_depth_horizontal.mp4"),
    ]
    for name in names:
        assert (out / name).exists(), name
        assert str(out / name) in printed
    res = 64  # the fallback demo model is synthetic64; a shipped checkpoint is also 64²
    strip = np.asarray(Image.open(out / "views_yaw_sweep.png"))
    assert strip.shape == (res, 3 * res, 3)
    assert strip[:, :res].std() > 0  # not a blank image
    assert not np.array_equal(strip[:, :res], strip[:, -res:])  # different yaw, different view
    frames = imageio.mimread(out / "video_rgb_horizontal.mp4")
    assert len(frames) == 6 and frames[0].shape == (res, res, 3)
    assert not list(out.glob(".*"))  # no temp files left behind


def test_presets_lists_and_prints_json(capsys):
    assert main(["presets"]) == 0
    assert "FFHQ256" in capsys.readouterr().out
    assert main(["presets", "AFHQCat"]) == 0
    assert json.loads(capsys.readouterr().out)["camera"]["fov_deg"] == 13.39


def test_unknown_preset_is_a_clear_error_with_exit_code_2(capsys):
    assert main(["presets", "FFHQ128"]) == 2
    assert "unknown preset 'FFHQ128'" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_training_run_writes_a_loadable_checkpoint_and_logs_finite_losses(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--planes", "4", "--views", "2", "--train-seconds", "1"]) == 0
    lines = (out / "train" / "log.jsonl").read_text().splitlines()
    assert lines and all(np.isfinite(json.loads(line)["loss_d"]) for line in lines)
    from gmpi_core.pipeline import GMPI

    assert GMPI.from_pretrained(out / "train" / "model").config.generator.img_resolution == 64


# --- two-word commands: `gmpi data`, `gmpi prep` list their actions -------------------------------------


@pytest.mark.parametrize(
    ("command", "actions"), [("data", ("synth", "check")), ("prep", ("landmarks", "poses"))]
)
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_of_a_two_word_command_lists_its_actions_and_exits_0(command, actions, flag, capsys):
    assert main([command, flag]) == 0
    out = capsys.readouterr().out
    assert f"usage: gmpi {command}" in out
    for action in actions:  # each with its one-line description
        line = next(line for line in out.splitlines() if line.strip().startswith(action + " "))
        assert len(line.split(maxsplit=1)[1]) > 20
    assert f"gmpi {command} ACTION --help" in out


@pytest.mark.parametrize(("argv", "complaint"), [(["prep"], "name an action"), (["data", "nope"], "'nope'")])
def test_a_missing_or_unknown_action_exits_2_with_the_listing(argv, complaint, capsys):
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert complaint in captured.err
    assert "expected one of" not in captured.err
    assert "actions of `gmpi" in captured.err and not captured.out
    assert f"usage: gmpi {argv[0]} {{" in captured.err


def test_an_action_help_still_reaches_its_module(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["prep", "poses", "--help"])
    assert exc.value.code == 0
    assert "usage: gmpi prep poses" in capsys.readouterr().out


def test_top_level_help_lists_the_two_word_commands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for command in ("gmpi data synth", "gmpi data check", "gmpi prep landmarks", "gmpi prep poses"):
        assert command in out


# --- `gmpi bench` lists the benchmarks -------------------------------------------------------------------

BENCH = Path(__file__).resolve().parents[2] / "scripts" / "bench"


def _first_docstring_line(path: Path) -> str:
    return (ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or "").strip().splitlines()[0]


@pytest.mark.parametrize("argv", [["bench"], ["bench", "--list"], ["bench", "--help"]])
def test_bench_without_a_name_lists_every_script_with_its_description_and_exits_0(argv, capsys):
    scripts = sorted(p for p in BENCH.glob("*.py") if not p.name.startswith("_"))
    assert len(scripts) >= 5
    assert main(argv) == 0
    out = capsys.readouterr().out
    for script in scripts:
        description = _first_docstring_line(script).replace("``", "`")
        assert any(line.split(maxsplit=1) == [script.stem, description] for line in out.splitlines()), (
            script.stem
        )


def test_an_unknown_benchmark_exits_2_and_lists_them(capsys):
    assert main(["bench", "rendr"]) == 2
    err = capsys.readouterr().err
    assert "no benchmark 'rendr'" in err
    assert "render " in err and "train_step " in err


def test_bench_passes_the_arguments_to_the_script_and_returns_its_exit_code(capsys):
    argv = list(sys.argv)
    assert main(["bench", "render", "--help"]) == 0  # the script's argparse exits 0 on --help
    assert "--quick" in capsys.readouterr().out
    assert sys.argv == argv  # restored


# --- `gmpi demo` options are documented ------------------------------------------------------------------


def test_every_demo_option_has_help_with_its_default(capsys):
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    demo = commands.choices["demo"]
    options = [a for a in demo._actions if a.option_strings and a.dest != "help"]
    assert {a.dest for a in options} >= {"out", "seed", "planes", "views", "train_seconds"}
    for action in options:
        assert action.help and len(action.help) > 15, action.dest
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for default in (
        "(default: outputs/demo)",
        "(default: 0)",
        "(default: 32)",
        "(default: 9)",
        "(default: 60.0)",
    ):
        assert default in out


def test_demo_training_refuses_a_data_folder_that_is_not_its_synthetic_dataset(tmp_path, capsys):
    out = tmp_path / "demo"
    (out / "data").mkdir(parents=True)
    (out / "data" / "mine.txt").write_text("not a dataset")
    argv = ["demo", "--out", str(out), "--planes", "4", "--views", "2", "--train-seconds", "1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "not a synthetic dataset" in err and "Traceback" not in err
    assert (out / "data" / "mine.txt").read_text() == "not a dataset"  # nothing of the user's is lost
