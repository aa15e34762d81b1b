"""gmpi_core.atomic: files and folders appear complete or not at all."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from gmpi_core.atomic import DIR_MODE, atomic_write, replace_dir, staged_dir


def _hidden(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_staged_dir_swaps_in_a_complete_folder_and_keeps_the_old_one_until_then(tmp_path: Path) -> None:
    final = tmp_path / "out"
    final.mkdir()
    (final / "old.txt").write_text("old")
    answers: list[bool] = []
    with staged_dir(final, swap=lambda s, f: answers.append(replace_dir(s, f))) as staging:
        (staging / "new.txt").write_text("new")
        assert (final / "old.txt").read_text() == "old"  # untouched while the new one is being filled
        assert staging.parent == tmp_path and staging.name.startswith(".out.")
        assert staging.name.endswith(".partial")
    assert sorted(p.name for p in final.iterdir()) == ["new.txt"]
    assert answers == [True]  # replace_dir reports that a non-empty folder was replaced
    assert _hidden(tmp_path) == []


def test_a_failing_block_leaves_the_earlier_folder_and_no_staging(tmp_path: Path) -> None:
    final = tmp_path / "out"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with pytest.raises(RuntimeError, match="boom"), staged_dir(final) as staging:
        (staging / "half.txt").write_text("half")
        raise RuntimeError("boom")
    assert sorted(p.name for p in final.iterdir()) == ["old.txt"]
    assert _hidden(tmp_path) == []


def test_a_failing_swap_removes_the_staging_folder(tmp_path: Path) -> None:
    def refuse(staging: Path, final: Path) -> None:
        os.replace(staging, final)  # a plain rename refuses a non-empty folder in the way

    final = tmp_path / "out"
    final.mkdir()
    (final / "keep.txt").write_text("keep")
    with pytest.raises(OSError), staged_dir(final, swap=refuse) as staging:
        (staging / "x.txt").write_text("x")
    assert (final / "keep.txt").read_text() == "keep"
    assert _hidden(tmp_path) == []


@pytest.mark.parametrize("mode", [None, DIR_MODE, 0o750])
def test_staged_dir_mode(tmp_path: Path, mode: int | None) -> None:
    with staged_dir(tmp_path / "out", mode=mode) as staging:
        seen = stat.S_IMODE(staging.stat().st_mode)
    assert seen == (0o700 if mode is None else mode)  # mkdtemp's 0700 unless a mode is asked for
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == seen


def test_atomic_write_leaves_no_temporary_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "a.txt"
    atomic_write(target, "first")

    def fail(tmp: Path) -> None:
        tmp.write_text("partial")
        raise ValueError("stop")

    with pytest.raises(ValueError):
        atomic_write(target, fail)
    assert target.read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]
