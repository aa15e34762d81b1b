"""`gmpi render` on the command line: true help texts, a missing --model, existing output never overwritten
silently, no half-written seed folder left behind."""

import argparse
import json
from pathlib import Path

import pytest

import gmpi_core.render.cli as render_cli
from gmpi_core.cli import main as gmpi_main
from gmpi_core.config import preset

QUICK = ["--preset", "synthetic32", "--planes", "4", "--mode", "image"]


def _options() -> list[argparse.Action]:
    return [a for a in render_cli.build_parser()._actions if a.option_strings and a.dest != "help"]


def test_the_planes_help_states_the_defaults_that_are_used(tmp_path):
    (planes,) = [a for a in _options() if a.dest == "planes"]
    text = " ".join(planes.help.split())
    synthetic, official = preset("synthetic32").eval.n_planes, preset("FFHQ256").eval.n_planes
    assert synthetic != official
    assert f"{synthetic} for the demo model and the synthetic presets" in text
    assert f"{official} for the official" in text
    # and that is what a render without --planes uses
    assert render_cli.main(["--preset", "synthetic32", "--mode", "image", "--out", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "seed_0000" / "rendered.json").read_text())["n_planes"] == synthetic
    demo_config = json.loads(
        (Path(render_cli.__file__).parents[1] / "assets/demo_model/config.json").read_text()
    )
    assert demo_config["extra"]["experiment"]["eval"]["n_planes"] == synthetic


def test_every_render_option_has_help_and_states_its_default():
    for action in _options():
        assert action.help and len(action.help) > 15, action.option_strings
        if action.default not in (None, False) and not isinstance(action, argparse._StoreTrueAction):
            assert "default" in action.help, action.option_strings


@pytest.mark.parametrize("where", ["missing", "nested/missing/model"])
def test_a_missing_model_path_is_reported_as_missing(tmp_path, capsys, where):
    assert gmpi_main(["render", "--model", str(tmp_path / where), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "no such file or folder" in err and str(tmp_path / where) in err
    assert "config.json" in err  # what a model path looks like
    assert "not a gmpi-native checkpoint" not in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_a_model_folder_without_config_says_what_a_model_is(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.pth").write_bytes(b"")
    assert render_cli.main(["--model", str(tmp_path / "run"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "no config.json" in err and "official GMPI" in err and "runs/gmpi/model" in err


def test_rendering_into_existing_seed_folders_is_refused_unless_overwrite(tmp_path, capsys):
    args = [*QUICK, "--seed", "1", "--out", str(tmp_path)]
    assert render_cli.main(args) == 0
    capsys.readouterr()
    first = (tmp_path / "seed_0001" / "rendered.png").read_bytes()
    (tmp_path / "seed_0001" / "note.txt").write_text("mine")

    assert render_cli.main([*args, "--init-seed", "5"]) == 2
    captured = capsys.readouterr()
    assert "already holds renders" in captured.err and "--overwrite" in captured.err
    assert "seed_0001" in captured.err and "model:" not in captured.out  # refused before loading anything
    assert (tmp_path / "seed_0001" / "rendered.png").read_bytes() == first
    assert (tmp_path / "seed_0001" / "note.txt").exists()

    assert render_cli.main([*args, "--seed", "2", "--init-seed", "5"]) == 0  # another seed: nothing to clash
    assert (tmp_path / "seed_0001" / "rendered.png").read_bytes() == first
    capsys.readouterr()

    assert render_cli.main([*args, "--init-seed", "5", "--overwrite"]) == 0
    assert "replaced the earlier" in capsys.readouterr().out
    assert (tmp_path / "seed_0001" / "rendered.png").read_bytes() != first  # another model, a new render
    assert not (tmp_path / "seed_0001" / "note.txt").exists()  # the whole seed folder is the new render
    assert (tmp_path / "seed_0002" / "rendered.png").exists()  # other seeds are kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seed_0001", "seed_0002"]  # no staging leftovers


def test_an_empty_seed_folder_is_not_an_earlier_render(tmp_path):
    (tmp_path / "seed_0000").mkdir()
    assert render_cli.main([*QUICK, "--out", str(tmp_path)]) == 0
    assert (tmp_path / "seed_0000" / "rendered.png").exists()


def test_out_that_is_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "out").write_text("x")
    assert render_cli.main([*QUICK, "--out", str(tmp_path / "out")]) == 2
    assert "is a file" in capsys.readouterr().err


@pytest.mark.parametrize("earlier", [False, True])
def test_a_render_that_fails_midway_leaves_no_folder_that_looks_complete(
    tmp_path, capsys, monkeypatch, earlier
):
    if earlier:
        assert render_cli.main([*QUICK, "--out", str(tmp_path)]) == 0
    before = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    real = render_cli._render_seed

    def half_then_fail(gmpi, args, modes, seed, out):
        real(gmpi, args, modes, seed, out)  # every image file of the seed is written ...
        raise RuntimeError("disk full")  # ... and then the run dies

    monkeypatch.setattr(render_cli, "_render_seed", half_then_fail)
    argv = [*QUICK, "--out", str(tmp_path), *(["--overwrite"] if earlier else [])]
    assert render_cli.main(argv) == 2
    assert "disk full" in capsys.readouterr().err
    after = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before  # nothing new and nothing half-replaced; no hidden staging folder either
    assert sorted(p.name for p in tmp_path.iterdir()) == (["seed_0000"] if earlier else [])


def test_an_interrupted_render_leaves_no_seed_folder(tmp_path, monkeypatch):
    def interrupted(gmpi, args, modes, seed, out):
        (out / "rendered.png").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(render_cli, "_render_seed", interrupted)
    with pytest.raises(KeyboardInterrupt):
        render_cli.main([*QUICK, "--out", str(tmp_path)])
    assert list(tmp_path.iterdir()) == []


def test_help_documents_the_overwrite_behaviour(capsys):
    with pytest.raises(SystemExit):
        render_cli.main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--overwrite" in out and "refuses before rendering anything unless --overwrite" in out


def _render_in_a_new_process(out: Path, *args: str) -> dict[str, bytes]:
    """`gmpi render ARGS --out OUT` in a fresh interpreter → {relative path: bytes} of what it wrote."""
    import subprocess
    import sys

    run = subprocess.run(
        [sys.executable, "-m", "gmpi_core.cli", "render", *args, "--device", "cpu", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_the_same_seed_gives_byte_identical_renders_in_two_separate_processes(tmp_path):
    # the shipped demo model (trained: its noise strengths are not zero, so the noise shows in the pixels)
    args = ["--seed", "3", "--planes", "8", "--mode", "image", "video", "export", "--frames", "3"]
    first = _render_in_a_new_process(tmp_path / "a", *args)
    second = _render_in_a_new_process(tmp_path / "b", *args)
    assert "seed_0003/rendered.png" in first and "seed_0003/video_rgb_horizontal.mp4" in first
    assert first.keys() == second.keys()
    for name, data in first.items():
        assert data == second[name], name
