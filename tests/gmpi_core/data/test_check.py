"""``gmpi data check``: every unreadable/corrupt image, missing pose and wrong-size image listed up front, for
folders, zips and the Deep3DFace (synthetic/FFHQ) layout; exclude lists."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from gmpi_core.config import preset
from gmpi_core.data.check import check_dataset, main, read_exclude_list, write_exclude_list
from gmpi_core.data.datasets import DatasetError, build_dataset

BAD = {
    "trunc.png": "corrupt",
    "text.png": "not_an_image",
    "big.png": "wrong_size",
    "nopose.png": "missing_pose",
}


def _png(side: int, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buf = io.BytesIO()
    PIL.Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def bad_files(n_good: int = 6) -> dict[str, bytes]:
    """n_good intact 32² PNGs and the four bad ones of ``BAD``."""
    files = {f"good{i}.png": _png(32, i) for i in range(n_good)}
    whole = _png(32, 100)
    files["trunc.png"] = whole[: len(whole) // 2]  # a download cut off half-way
    files["text.png"] = b"<html>404 not found</html>"  # an image name, not an image
    files["big.png"] = _png(48, 101)
    files["nopose.png"] = _png(32, 102)
    return files


def poses_json(names) -> str:
    return json.dumps(
        {"poses": {n: {"yaw": 0.1, "pitch": -0.05} for n in names if not n.endswith("nopose.png")}}
    )


def make_bad_folder(root: Path, n_good: int = 6) -> Path:
    """A ``folder``-layout dataset (images + poses.json) with the four bad images of ``BAD``."""
    root.mkdir(parents=True)
    files = bad_files(n_good)
    for name, data in files.items():
        (root / name).write_bytes(data)
    (root / "README.txt").write_text("not part of the data")
    (root / "poses.json").write_text(poses_json(files))
    return root


def _kinds(result) -> dict[str, str]:
    return {p.key: p.kind for p in result.problems}


def test_a_folder_with_four_bad_images_lists_all_four(tmp_path):
    folder = make_bad_folder(tmp_path / "data")
    result = check_dataset(folder, resolution=32)
    assert result.kind == "folder" and result.n_images == result.n_checked == 10
    assert _kinds(result) == BAD
    assert result.bad_keys == sorted(BAD) and not result.ok
    assert result.counts() == {"not_an_image": 1, "corrupt": 1, "wrong_size": 1, "missing_pose": 1}
    text = result.format()
    for name in BAD:
        assert name in text
    assert "README.txt" in text  # ignored files are named, not counted as bad
    # what the loader does with them when drawn: the check found exactly the images it fails on
    with pytest.warns(UserWarning):  # nopose.png skipped, big.png resized: both only warned
        ds = build_dataset("folder", folder, None, 32, preset("FFHQ256").camera, missing_poses="skip")
        failing = set()
        for i, key in enumerate(ds.keys):
            try:
                ds[i]
            except DatasetError:
                failing.add(key)
    assert failing == {"trunc.png", "text.png"}


def test_a_zip_with_four_bad_members_lists_all_four(tmp_path):
    files = bad_files()
    path = tmp_path / "data.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(f"00000/{name}", data)
    (tmp_path / "poses.json").write_text(poses_json([f"00000/{n}" for n in files]))
    result = check_dataset(path, kind="folder", resolution=32)
    assert _kinds(result) == {f"00000/{k}": v for k, v in BAD.items()}
    assert all(f"of {path}" in p.where for p in result.problems if p.kind != "missing_pose")


def test_a_corrupt_zip_member_is_unreadable_by_its_crc(tmp_path):
    path = tmp_path / "data.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("a.png", _png(32, 0))
        zf.writestr("b.png", _png(32, 1))
    raw = bytearray(path.read_bytes())
    offset = raw.find(b"IDAT", raw.find(b"b.png"))
    raw[offset + 10] ^= 0xFF  # one flipped byte inside member b.png: its zip CRC no longer matches
    path.write_bytes(bytes(raw))
    result = check_dataset(path, kind="images", resolution=32)
    assert _kinds(result) == {"b.png": "unreadable"}
    assert "CRC" in result.problems[0].detail or "crc" in result.problems[0].detail.lower()


def test_the_synthetic_layout_reports_missing_and_broken_pose_files(tmp_path):
    from gmpi_core.data.synthetic import synthesize_dataset

    out = synthesize_dataset(tmp_path / "s", res=16, n=4, seed=0, progress=False)
    assert check_dataset(out, resolution=16).ok
    mats = sorted((out / "poses").rglob("*.mat"))
    mats[0].unlink()
    mats[1].write_bytes(b"not a mat file")
    quick = check_dataset(out, resolution=16)
    assert quick.kind == "synthetic" and [p.kind for p in quick.problems] == ["missing_pose"]
    full = check_dataset(out, resolution=16, full=True)  # --full parses every pose file too
    assert sorted(p.kind for p in full.problems) == ["bad_pose", "missing_pose"]


def test_uniformly_other_sized_images_are_one_note_not_a_list(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.png").write_bytes(_png(48, i))
    result = check_dataset(folder, kind="images", resolution=32)
    assert result.ok and any("every image is 48x48, not 32x32" in n for n in result.notes)
    (folder / "odd.png").write_bytes(_png(40, 9))
    assert _kinds(check_dataset(folder, kind="images")) == {"odd.png": "wrong_size"}  # vs the most common


def test_fail_list_and_exclude_list_entries_are_not_checked(tmp_path):
    folder = make_bad_folder(tmp_path / "data")
    data = json.loads((folder / "poses.json").read_text())
    (folder / "poses.json").write_text(json.dumps({**data, "fail_list": ["trunc.png"]}))
    result = check_dataset(folder, resolution=32, exclude={"text.png"})
    assert set(_kinds(result)) == {"big.png", "nopose.png"} and result.n_excluded == 2


def test_the_command_lists_them_and_writes_an_exclude_list(tmp_path, capsys):
    folder = make_bad_folder(tmp_path / "data")
    exclude = tmp_path / "lists" / "exclude.txt"
    assert main([str(folder), "--resolution", "32", "--write-exclude", str(exclude), "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "4 bad image(s)" in out and all(name in out for name in BAD)
    assert read_exclude_list(exclude) == set(BAD)
    assert main([str(folder), "--resolution", "32", "--exclude", str(exclude), "--no-progress"]) == 0
    assert "no problems found" in capsys.readouterr().out
    assert main([str(tmp_path / "missing"), "--no-progress"]) == 2


def test_exclude_lists_round_trip_with_comments(tmp_path):
    path = write_exclude_list(tmp_path / "x.txt", ["a/b.png", "c.png"], header="two\nlines")
    assert path.read_text().startswith("# two\n# lines\n")
    assert read_exclude_list(path) == {"a/b.png", "c.png"}
    with pytest.raises(FileNotFoundError):
        read_exclude_list(tmp_path / "nope.txt")


def test_a_truncated_jpeg_is_corrupt_and_an_intact_one_is_not(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    buf = io.BytesIO()
    PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
        buf, format="JPEG"
    )
    (folder / "ok.jpg").write_bytes(buf.getvalue())
    (folder / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) * 2 // 3])
    for full in (False, True):
        result = check_dataset(folder, kind="images", resolution=32, full=full)
        assert _kinds(result) == {"cut.jpg": "corrupt"}, (full, result.format())
