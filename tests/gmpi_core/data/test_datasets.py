"""The dataset reader: images from zips and folders with their cameras (method §7, §1.5, §1.6, §8.1)."""

from __future__ import annotations

import io
import json
import pickle
import warnings
import zipfile
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from gmpi_core.config import preset
from gmpi_core.data.datasets import (
    DatasetError,
    GMPIDataset,
    ImageSource,
    Sample,
    build_dataset,
    dataset_tool_name,
    write_dataset_zip,
)
from gmpi_core.data.poses import Deep3DFacePoses, PoseError, write_deep3dface_mat, write_eg3d_dataset_json

FFHQ_CAMERA = preset("FFHQ256").camera
AFHQ_CAMERA = preset("AFHQCat").camera


def flat(value: int, size: int = 8) -> np.ndarray:
    return np.full((size, size, 3), value, np.uint8)


def ffhq_fixture(root: Path, n: int = 5, size: int = 8) -> tuple[Path, Path]:
    """A dataset_tool zip whose image i is the constant 10·i, with Deep3DFace poses yaw = −0.01·i."""
    names = [dataset_tool_name(i) for i in range(n)]
    zip_path = write_dataset_zip(
        root / "ffhq.zip", [(name, flat(10 * i, size)) for i, name in enumerate(names)]
    )
    for i, name in enumerate(names):
        write_deep3dface_mat(root / "coeffs" / name.replace(".png", ".mat"), [0.0, 0.01 * i, 0.0], [0, 0, 0])
    return zip_path, root / "coeffs"


# --- images ------------------------------------------------------------------------------------------------


def test_pixel_values_map_255_to_one_and_0_to_minus_one(tmp_path: Path) -> None:
    image = np.zeros((4, 4, 3), np.uint8)
    image[0, 0] = 255
    image[0, 1] = (128, 64, 1)
    zip_path = write_dataset_zip(tmp_path / "d.zip", [("a.png", image)])
    write_deep3dface_mat(tmp_path / "p" / "a.mat", [0, 0, 0], [0, 0, 0])
    sample = GMPIDataset(zip_path, Deep3DFacePoses(tmp_path / "p", 1.0, 1.0), 4)[0]
    assert (
        isinstance(sample, Sample) and sample.image.shape == (3, 4, 4) and sample.image.dtype == torch.float32
    )
    assert torch.all(sample.image[:, 0, 0] == 1.0) and torch.all(sample.image[:, 1:, :] == -1.0)
    np.testing.assert_allclose(
        sample.image[:, 0, 1].numpy(), [2 * 128 / 255 - 1, 2 * 64 / 255 - 1, 2 / 255 - 1], atol=1e-6
    )


def test_ffhq_zip_with_fail_list_drops_the_failed_member_and_returns_its_poses(tmp_path: Path) -> None:
    zip_path, coeffs = ffhq_fixture(tmp_path)
    (coeffs / "fail_list.txt").write_text("00000/img00000002.png\n\n")
    ds = build_dataset("ffhq", str(zip_path), str(coeffs), 8, FFHQ_CAMERA)
    assert ds.keys == [dataset_tool_name(i) for i in (0, 1, 3, 4)]
    image, w2c_flat, yaw, pitch = ds[2]  # member 3
    assert w2c_flat.shape == (16,) and yaw.shape == (1,) and pitch.shape == (1,)
    assert torch.all(image == 2 * 30 / 255 - 1)
    assert yaw.item() == pytest.approx(-0.03) and pitch.item() == 0.0
    np.testing.assert_allclose(ds[0].w2c_flat.numpy(), np.eye(4).reshape(16), atol=1e-6)  # angle = trans = 0


def test_member_with_png_in_its_folder_name_reads_the_matching_mat(tmp_path: Path) -> None:
    zip_path = write_dataset_zip(
        tmp_path / "d.zip", [("png_set/face.png", flat(0)), ("png_set/pngface.png", flat(0))]
    )
    write_deep3dface_mat(tmp_path / "p" / "png_set" / "face.mat", [0.0, 0.2, 0.0], [0, 0, 0])
    write_deep3dface_mat(tmp_path / "p" / "png_set" / "pngface.mat", [0.0, 0.3, 0.0], [0, 0, 0])
    ds = GMPIDataset(zip_path, Deep3DFacePoses(tmp_path / "p", 1.0, 1.0), 8)
    assert [ds[i].yaw.item() for i in range(len(ds))] == [pytest.approx(-0.2), pytest.approx(-0.3)]


def test_images_are_converted_to_rgb_and_resized_with_one_warning(tmp_path: Path) -> None:
    gray = np.full((16, 16), 200, np.uint8)
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., :3], rgba[..., 3] = 40, 0
    zip_path = write_dataset_zip(tmp_path / "d.zip", [("a.png", gray), ("b.png", rgba)])
    for name in ("a", "b"):
        write_deep3dface_mat(tmp_path / "p" / f"{name}.mat", [0, 0, 0], [0, 0, 0])
    ds = GMPIDataset(zip_path, Deep3DFacePoses(tmp_path / "p", 1.0, 1.0), 8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        a, b = ds[0].image, ds[1].image
    assert [str(w.message) for w in caught if "LANCZOS" in str(w.message)] != [] and len(caught) == 1
    assert a.shape == b.shape == (3, 8, 8)  # LANCZOS of a constant image is that constant (up to rounding)
    np.testing.assert_allclose(a.numpy(), 2 * 200 / 255 - 1, atol=2 / 255)
    np.testing.assert_allclose(b.numpy(), 2 * 40 / 255 - 1, atol=2 / 255)


def test_folder_source_lists_images_recursively_in_sorted_order(tmp_path: Path) -> None:
    for rel in ("b/2.png", "a/1.jpg", "a/0.png", "c.PNG"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        PIL.Image.fromarray(flat(5)).save(tmp_path / rel)
    (tmp_path / "dataset.json").write_text("{}")
    (tmp_path / "notes.txt").write_text("x")
    assert ImageSource(tmp_path).names == ["a/0.png", "a/1.jpg", "b/2.png", "c.PNG"]


# --- errors ------------------------------------------------------------------------------------------------


def test_image_without_pose_is_an_error_naming_it_unless_skipped(tmp_path: Path) -> None:
    zip_path, coeffs = ffhq_fixture(tmp_path)
    (coeffs / "00000" / "img00000003.mat").unlink()
    with pytest.raises(
        DatasetError, match=r"(?s)1 of 5 images.*00000/img00000003\.png.*img00000003\.mat.*skip"
    ):
        build_dataset("ffhq", zip_path, coeffs, 8, FFHQ_CAMERA)
    with pytest.warns(UserWarning, match="skipping 1 of 5"):
        ds = build_dataset("ffhq", zip_path, coeffs, 8, FFHQ_CAMERA, missing_poses="skip")
    assert dataset_tool_name(3) not in ds.keys and len(ds) == 4


def test_corrupt_png_member_raises_error_naming_the_member_and_zip(tmp_path: Path) -> None:
    good = io.BytesIO()
    PIL.Image.fromarray(flat(9)).save(good, format="PNG")
    zip_path = tmp_path / "d.zip"
    with zipfile.ZipFile(zip_path, "w") as zf:
        zf.writestr("00000/img00000000.png", good.getvalue())
        zf.writestr("00000/img00000001.png", good.getvalue()[:40])  # truncated PNG
        zf.writestr("00000/img00000002.png", b"this is no png")
    for i in range(3):
        write_deep3dface_mat(tmp_path / "p" / "00000" / f"img{i:08d}.mat", [0, 0, 0], [0, 0, 0])
    ds = GMPIDataset(zip_path, Deep3DFacePoses(tmp_path / "p", 1.0, 1.0), 8)
    assert torch.all(ds[0].image == 2 * 9 / 255 - 1)
    for i in (1, 2):
        with pytest.raises(DatasetError, match=rf"member '00000/img0000000{i}\.png' of .*d\.zip"):
            ds[i]


def test_empty_folder_is_an_error_saying_where_it_looked(tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    (tmp_path / "p").mkdir()
    with pytest.raises(DatasetError, match=r"no images found in .*imgs"):
        GMPIDataset(tmp_path / "imgs", Deep3DFacePoses(tmp_path / "p", 1.0, 1.0), 8)


def test_all_images_on_the_fail_list_is_an_error_with_the_counts(tmp_path: Path) -> None:
    zip_path, coeffs = ffhq_fixture(tmp_path, n=2)
    (coeffs / "fail_list.txt").write_text("00000/img00000000.png\n00000/img00000001.png\n")
    with pytest.raises(DatasetError, match=r"no usable images .*2 found, 2 on the fail list"):
        build_dataset("ffhq", zip_path, coeffs, 8, FFHQ_CAMERA)


def test_truncated_zip_is_a_clear_error_not_a_bare_badzipfile(tmp_path: Path) -> None:
    zip_path, coeffs = ffhq_fixture(tmp_path)
    data = zip_path.read_bytes()
    zip_path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match=r"ffhq\.zip is not a readable zip .*truncated"):
        build_dataset("ffhq", zip_path, coeffs, 8, FFHQ_CAMERA)


def test_missing_image_source_and_unknown_kind_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageSource(tmp_path / "none.zip")
    with pytest.raises(ValueError, match="unknown dataset kind 'celeba'; choose one of"):
        build_dataset("celeba", tmp_path, None, 8, FFHQ_CAMERA)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs the Deep3DFace pose folder"):
        build_dataset("ffhq", tmp_path, None, 8, FFHQ_CAMERA)


# --- the official layouts ----------------------------------------------------------------------------------


def test_metfaces_folder_picks_up_xflip_copies_with_their_own_poses(tmp_path: Path) -> None:
    images, poses = tmp_path / "metfaces", tmp_path / "metfaces_poses"
    images.mkdir()
    for i, stem in enumerate(["image-001", "image-001_xflip", "image-002", "image-002_xflip"]):
        PIL.Image.fromarray(flat(20 * i)).save(images / f"{stem}.png")
        write_deep3dface_mat(poses / "coeffs" / f"{stem}.mat", [0.0, 0.1 * i, 0.0], [0, 0, 0])
    (poses / "fail_list.txt").write_text("image-002_xflip.png\n")
    ds = build_dataset("metfaces", images, poses, 8, preset("MetFaces").camera)
    assert ds.keys == ["image-001.png", "image-001_xflip.png", "image-002.png"]
    assert ds[1].yaw.item() == pytest.approx(-0.1) and torch.all(ds[1].image == 2 * 20 / 255 - 1)


def test_afhq_folder_or_zip_with_eg3d_dataset_json_gives_the_converted_cameras(tmp_path: Path) -> None:
    c2w = np.eye(4)
    c2w[:3, :3] = np.diag([1.0, -1.0, -1.0])
    c2w[2, 3] = 2.7  # EG3D's frontal camera: GMPI identity (docs/method.md §1.6)
    names = ["img00000000.png", "img00000001.png"]
    for name in names:
        PIL.Image.fromarray(flat(50)).save(tmp_path / name)
    write_eg3d_dataset_json(tmp_path / "dataset.json", [(name, c2w) for name in names])
    labels = json.loads((tmp_path / "dataset.json").read_text())["labels"]
    zip_path = write_dataset_zip(
        tmp_path / "afhq" / "cats.zip", [(n, flat(50)) for n in names], labels=labels
    )
    for images in (tmp_path, zip_path):
        ds = build_dataset("afhq", images, None, 8, AFHQ_CAMERA)
        assert ds.keys == names
        np.testing.assert_allclose(ds[1].w2c_flat.numpy(), np.eye(4).reshape(16), atol=1e-6)
        assert torch.all(ds[1].image == 2 * 50 / 255 - 1)


def test_folder_kind_reads_json_poses_and_hints_at_name_mismatches(tmp_path: Path) -> None:
    (tmp_path / "faces").mkdir()
    PIL.Image.fromarray(flat(0)).save(tmp_path / "faces" / "a.png")
    (tmp_path / "poses.json").write_text(json.dumps({"poses": {"faces/a.png": {"yaw": 0.2, "pitch": 0.1}}}))
    ds = build_dataset("folder", tmp_path, None, 8, FFHQ_CAMERA)
    assert ds[0].yaw.item() == pytest.approx(0.2) and ds[0].pitch.item() == pytest.approx(0.1)
    (tmp_path / "other.json").write_text(json.dumps({"poses": {"a.png": {"yaw": 0.0, "pitch": 0.0}}}))
    with pytest.raises(DatasetError, match=r"(?s)faces/a\.png.*lists 1 images, e\.g\. \['a\.png'\]"):
        build_dataset("folder", tmp_path, tmp_path / "other.json", 8, FFHQ_CAMERA)


def test_synthetic_kind_accepts_the_generator_output_folder(tmp_path: Path) -> None:
    zip_path, coeffs = ffhq_fixture(tmp_path / "out", n=2)
    zip_path.rename(tmp_path / "out" / "images.zip")
    coeffs.rename(tmp_path / "out" / "poses")
    for images in (tmp_path / "out", tmp_path / "out" / "images.zip"):
        ds = build_dataset("synthetic", images, None, 8, FFHQ_CAMERA)
        assert len(ds) == 2 and ds[1].yaw.item() == pytest.approx(-0.01)


def test_bad_pose_file_surfaces_at_load_time_naming_the_file(tmp_path: Path) -> None:
    zip_path, coeffs = ffhq_fixture(tmp_path, n=2)
    (coeffs / "00000" / "img00000001.mat").write_bytes(b"broken")
    ds = build_dataset("ffhq", zip_path, coeffs, 8, FFHQ_CAMERA)
    with pytest.raises(PoseError, match=r"img00000001\.mat"):
        ds[1]


# --- writers and workers -----------------------------------------------------------------------------------


def test_written_zip_has_dataset_tool_layout_and_no_leftover_temp_files(tmp_path: Path) -> None:
    zip_path, _ = ffhq_fixture(tmp_path, n=2)
    with zipfile.ZipFile(zip_path) as zf:
        assert zf.namelist() == ["00000/img00000000.png", "00000/img00000001.png", "dataset.json"]
        assert json.loads(zf.read("dataset.json")) == {"labels": None}
    assert dataset_tool_name(1001) == "00001/img00001001.png"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["coeffs", "ffhq.zip"]
    with pytest.raises(ValueError, match="must be uint8"):
        write_dataset_zip(tmp_path / "bad.zip", [("a.png", flat(1)), ("b.png", np.zeros((4, 4, 3)))])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["coeffs", "ffhq.zip"]


def test_dataloader_with_two_workers_reads_every_zip_member_in_order(tmp_path: Path) -> None:
    zip_path, coeffs = ffhq_fixture(tmp_path, n=12)
    ds = build_dataset("ffhq", zip_path, coeffs, 8, FFHQ_CAMERA)
    ds[0]  # the parent opens the zip before forking: workers must not share that handle
    loader = DataLoader(ds, batch_size=3, num_workers=2, shuffle=False)
    batches = list(loader)
    assert all(isinstance(b, Sample) for b in batches) and batches[0].image.shape == (3, 3, 8, 8)
    images = torch.cat([b.image for b in batches])
    yaws = torch.cat([b.yaw for b in batches])
    expected = torch.tensor([2 * 10 * i / 255 - 1 for i in range(12)])
    torch.testing.assert_close(images.mean(dim=(1, 2, 3)), expected)
    torch.testing.assert_close(yaws[:, 0], torch.tensor([-0.01 * i for i in range(12)]))
    clone = pickle.loads(pickle.dumps(ds))  # spawn-style workers receive a pickled copy
    assert torch.equal(clone[5].image, ds[5].image)


class _ZipHandleProbe(Dataset[int]):
    """Reads member i and returns the file descriptor its process reads the zip through."""

    def __init__(self, source: ImageSource) -> None:
        self.source = source

    def __len__(self) -> int:
        return len(self.source.names)

    def __getitem__(self, index: int) -> int:
        self.source.read(self.source.names[index])
        return self.source._zipfile().fp.fileno()  # type: ignore[union-attr]


def test_forked_workers_open_their_own_zip_handle_instead_of_sharing_the_parents(tmp_path: Path) -> None:
    zip_path, _ = ffhq_fixture(tmp_path, n=4)
    probe = _ZipHandleProbe(ImageSource(zip_path))
    parent_fd = probe[0]  # opened before the fork; a shared descriptor would share its file offset
    loader = DataLoader(probe, batch_size=1, num_workers=2, multiprocessing_context="fork")
    assert parent_fd not in {int(fd) for fd in loader}


def test_a_synthetic_dataset_folder_is_read_as_its_images_zip_not_its_masks(tmp_path: Path) -> None:
    # regression: a folder source walked mask/ and depth/ of a synthetic dataset, so FID compared the
    # model's heads with black-and-white masks
    from gmpi_core.data.synthetic import synthesize_dataset

    out = synthesize_dataset(tmp_path / "synth", res=16, n=3, seed=0, workers=1, progress=False)
    assert (out / "mask").is_dir()  # the trap is there
    source = ImageSource(out)
    assert source.is_zip and source.path == out / "images.zip"
    assert len(source) == 3 and not any(n.startswith(("mask/", "depth/")) for n in source.names)
    with zipfile.ZipFile(out / "images.zip") as zf:
        first = np.asarray(PIL.Image.open(io.BytesIO(zf.read(source.names[0]))).convert("RGB"))
    assert first.std() > 0 and len(np.unique(first.reshape(-1, 3), axis=0)) > 2  # a head, not a binary mask
