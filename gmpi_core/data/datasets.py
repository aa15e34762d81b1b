"""Training images with their cameras: one reader, pluggable pose sources (docs/method.md §7).

``GMPIDataset`` pairs an ``ImageSource`` (a StyleGAN2-ADA ``dataset_tool`` zip or an image folder) with a
``PoseSource`` (``gmpi_core.data.poses``) and yields ``Sample(image [3, R, R] in [-1, 1], w2c_flat [16],
yaw [1], pitch [1])``. ``build_dataset`` wires the official layouts:

| kind | images | poses |
|---|---|---|
| ``ffhq`` | ``ffhq{R}x{R}.zip`` | Deep3DFace folder ``<member>.mat`` + ``fail_list.txt`` (member names) |
| ``metfaces`` | folder with ``*_xflip.png`` copies | ``coeffs/<stem>.mat`` + ``fail_list.txt`` (basenames) |
| ``afhq`` | folder or EG3D zip | EG3D ``dataset.json`` (default: the one inside the image folder or zip) |
| ``folder`` | folder or zip | ``JSONPoses`` file (default: ``poses.json`` in the folder / next to the zip) |
| ``synthetic`` | ``<out>/images.zip`` (or ``<out>``) | Deep3DFace folder ``<out>/poses`` |

    >>> camera = preset("FFHQ256").camera
    >>> ds = build_dataset("ffhq", "ffhq256x256.zip", "ffhq256_deep3dface_coeffs", 256, camera)
    >>> image, w2c_flat, yaw, pitch = ds[0]
"""

from __future__ import annotations

import io
import json
import os
import warnings
import zipfile
import zlib
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any, Literal, NamedTuple

import numpy as np
import PIL.Image
import torch
from torch import Tensor
from torch.utils.data import Dataset

from gmpi_core.atomic import atomic_write
from gmpi_core.config import CameraConfig, DatasetKind
from gmpi_core.data.poses import (
    Deep3DFacePoses,
    EG3DPoses,
    JSONPoses,
    PoseSource,
    write_deep3dface_mat,
)
from gmpi_core.data.ziplimits import MemberLimits, ZipMemberError
from gmpi_core.data.ziplimits import read_member as _read_member

__all__ = [
    "IMAGE_EXTENSIONS",
    "DatasetError",
    "GMPIDataset",
    "ImageSource",
    "Sample",
    "build_dataset",
    "dataset_layout",
    "dataset_tool_name",
    "synthetic_images_zip",
    "write_dataset_zip",
    "write_deep3dface_mat",
]

MissingPoses = Literal["error", "skip"]

# What counts as an image in a zip or folder (PIL-readable; §7 lists "members with an image extension").
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})


class DatasetError(ValueError):
    """The data on disk cannot be used as given; the message says what and where."""


class Sample(NamedTuple):
    """One training example (method §7): ``image`` [3, R, R] float32 in [-1, 1], ``w2c_flat`` [16] (row-major
    world-to-camera, the discriminator condition of method §1.5), ``yaw`` [1] and ``pitch`` [1] in radians.
    A batch from ``DataLoader`` is a ``Sample`` of stacked tensors ([B, 3, R, R], [B, 16], [B, 1], [B, 1])."""

    image: Tensor
    w2c_flat: Tensor
    yaw: Tensor
    pitch: Tensor


def _is_image(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in IMAGE_EXTENSIONS


# --- images --------------------------------------------------------------------------------------------


def synthetic_images_zip(path: str | os.PathLike[str]) -> Path | None:
    """``path/images.zip`` when ``path`` is a synthetic dataset folder (``meta.json`` + ``images.zip``, as
    ``gmpi data synth`` writes it), else None."""
    p = Path(path)
    if p.is_dir() and (p / "meta.json").is_file() and (p / "images.zip").is_file():
        return p / "images.zip"
    return None


class ImageSource:
    """Images in a StyleGAN2-ADA ``dataset_tool`` zip or a folder (recursive), keyed by their sorted
    posix-relative paths. The zip is opened lazily once per process, so the object is safe to hand to
    ``DataLoader`` workers (fork or spawn).

    A zip member is read only within ``limits`` (``gmpi_core.data.ziplimits``: its declared size, its
    compression ratio, and exactly the bytes it declares; default ``MemberLimits.from_env()``), so a zip
    bomb among the images is a ``DatasetError`` naming the member, never an unbounded allocation."""

    def __init__(self, path: str | os.PathLike[str], limits: MemberLimits | None = None) -> None:
        # a synthetic dataset folder holds its images in images.zip; walking the folder would find only its
        # mask/ and depth/ pictures (FID against masks, not heads)
        self.path = synthetic_images_zip(path) or Path(path)
        self.limits = MemberLimits.from_env() if limits is None else limits
        if self.path.is_dir():
            self.is_zip = False
            names = [
                (Path(d) / f).relative_to(self.path).as_posix()
                for d, _, files in os.walk(self.path)
                for f in files
                if _is_image(f)
            ]
        elif self.path.is_file():
            self.is_zip = True
            try:
                with zipfile.ZipFile(self.path) as zf:
                    names = [m for m in zf.namelist() if not m.endswith("/") and _is_image(m)]
            # NotImplementedError: an unsupported zip version or a multi-disk zip; ValueError: a name
            # flagged UTF-8 that is not (UnicodeDecodeError)
            except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as e:
                raise DatasetError(
                    f"{self.path} is not a readable zip ({e}); it may be truncated or still being written — "
                    f"re-create or re-download it"
                ) from e
        else:
            raise FileNotFoundError(
                f"image source {self.path} does not exist; give a dataset zip or an image folder"
            )
        self.names: list[str] = sorted(names)
        self._zip: zipfile.ZipFile | None = None
        self._zip_pid = -1

    def __repr__(self) -> str:
        return f"ImageSource('{self.path}', {'zip' if self.is_zip else 'folder'}, {len(self.names)} images)"

    def __len__(self) -> int:
        return len(self.names)

    def __getstate__(self) -> dict[str, Any]:  # an open ZipFile cannot cross process boundaries
        return {**self.__dict__, "_zip": None, "_zip_pid": -1}

    def _zipfile(self) -> zipfile.ZipFile:
        if self._zip is None or self._zip_pid != os.getpid():  # a forked worker must not share the handle
            self._zip = zipfile.ZipFile(self.path)
            self._zip_pid = os.getpid()
        return self._zip

    def read_bytes(self, name: str) -> bytes:
        """The encoded bytes of image ``name``."""
        if not self.is_zip:
            return (self.path / name).read_bytes()
        try:
            zf = self._zipfile()
            return _read_member(zf, zf.getinfo(name), self.limits)
        except ZipMemberError as e:
            raise DatasetError(f"refused member '{name}' of {self.path}: {e}") from e
        except (zipfile.BadZipFile, zlib.error, OSError, EOFError, KeyError) as e:
            raise DatasetError(
                f"cannot read member '{name}' of {self.path}: {e}; the zip may be corrupt"
            ) from e
        except (NotImplementedError, RuntimeError, ValueError) as e:  # a method not supported, encryption
            raise DatasetError(f"cannot read member '{name}' of {self.path}: {e}") from e

    def read(self, name: str) -> PIL.Image.Image:
        """Image ``name`` decoded and converted to RGB (grayscale, palette and alpha images included)."""
        where = f"member '{name}' of {self.path}" if self.is_zip else f"{self.path / name}"
        data = self.read_bytes(name)
        try:
            image = PIL.Image.open(io.BytesIO(data))
            image.load()
        except (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError) as e:
            raise DatasetError(f"cannot decode image {where}: {e}; remove or replace the file") from e
        return image if image.mode == "RGB" else image.convert("RGB")


def image_to_tensor(image: PIL.Image.Image) -> Tensor:
    """[3, H, W] float32 in [-1, 1] from an RGB image: ToTensor (÷255) then Normalize(0.5, 0.5) (§7)."""
    x = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)
    return x.to(torch.float32).div(255).sub(0.5).div(0.5)


# --- the dataset ---------------------------------------------------------------------------------------


class GMPIDataset(Dataset[Sample]):
    """Real images and their cameras (docs/method.md §7).

    Images on the pose source's fail list or in ``exclude`` are dropped; images without a pose raise
    ``DatasetError`` (``missing_poses="error"``) or are dropped with a warning (``"skip"``). Images whose
    size differs from ``resolution`` are LANCZOS-resized (warned once). No online flipping (method §7).
    """

    def __init__(
        self,
        images: str | os.PathLike[str] | ImageSource,
        poses: PoseSource,
        resolution: int,
        *,
        missing_poses: MissingPoses = "error",
        exclude: Iterable[str] = (),
    ) -> None:
        if missing_poses not in ("error", "skip"):
            raise ValueError(f"unknown missing_poses '{missing_poses}'; choose one of error, skip")
        if resolution < 1:
            raise ValueError(f"resolution must be positive, got {resolution}")
        self.images = images if isinstance(images, ImageSource) else ImageSource(images)
        self.poses = poses
        self.resolution = resolution
        if not self.images.names:
            raise DatasetError(
                f"no images found in {self.images.path} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))}"
                f"{' members' if self.images.is_zip else ' files, recursively'})"
            )
        excluded = set(exclude)
        kept = [n for n in self.images.names if n not in excluded and not poses.is_excluded(n)]
        n_excluded = len(self.images.names) - len(kept)
        missing = [n for n in kept if not poses.has(n)]
        if missing:
            if missing_poses == "error":
                raise DatasetError(self._missing_message(missing))
            warnings.warn(
                f"skipping {len(missing)} of {len(kept)} images without a pose in {poses}", stacklevel=2
            )
            missing_set = set(missing)
            kept = [n for n in kept if n not in missing_set]
        if not kept:
            raise DatasetError(
                f"no usable images in {self.images.path}: {len(self.images.names)} found, {n_excluded} on "
                f"the fail list or excluded, {len(missing)} without a pose in {poses}"
            )
        self.keys: list[str] = kept
        self._warned_resize = False

    def _missing_message(self, missing: list[str]) -> str:
        shown = "\n  ".join(f"{n} -> {self.poses.location(n)}" for n in missing[:5])
        listed = self.poses.keys()
        hint = ""
        if listed:
            hint = (
                f"\nthe pose file lists {len(listed)} images, e.g. {sorted(listed)[:3]}; do the names match?"
            )
        return (
            f"{len(missing)} of {len(self.images.names)} images in {self.images.path} have no pose in "
            f"{self.poses}:\n  {shown}{hint}\nrun the pose step for them, add them to the fail list, or pass "
            f"missing_poses='skip' to train without them"
        )

    def __repr__(self) -> str:
        return (
            f"GMPIDataset({self.images!r}, {self.poses!r}, resolution={self.resolution}, {len(self)} items)"
        )

    def __len__(self) -> int:
        return len(self.keys)

    def load_image(self, key: str) -> Tensor:
        """Image ``key`` as [3, R, R] in [-1, 1], resized with LANCZOS only when its size is not R×R."""
        image = self.images.read(key)
        size = (self.resolution, self.resolution)
        if image.size != size:
            if not self._warned_resize:
                self._warned_resize = True
                warnings.warn(
                    f"images in {self.images.path} are {image.size[0]}×{image.size[1]} (e.g. '{key}'), not "
                    f"{size[0]}×{size[1]}; resizing with LANCZOS on the fly (aspect ratio is not kept)",
                    stacklevel=3,
                )
            image = image.resize(size, PIL.Image.Resampling.LANCZOS)
        return image_to_tensor(image)

    def __getitem__(self, index: int) -> Sample:
        key = self.keys[index]
        pose = self.poses.pose(key)
        return Sample(
            image=self.load_image(key),
            w2c_flat=pose.w2c.reshape(16),  # row-major flattening (docs/method.md §1.5)
            yaw=torch.tensor([pose.yaw], dtype=torch.float32),
            pitch=torch.tensor([pose.pitch], dtype=torch.float32),
        )


# --- the official layouts ----------------------------------------------------------------------------


def build_dataset(
    kind: DatasetKind,
    images: str | os.PathLike[str],
    poses: str | os.PathLike[str] | None,
    resolution: int,
    camera: CameraConfig,
    *,
    missing_poses: MissingPoses = "error",
    exclude: Iterable[str] = (),
) -> GMPIDataset:
    """The dataset of one of the layouts in this module's table; the camera sphere comes from ``camera``.
    ``exclude``: image keys to leave out (e.g. the bad images found by ``gmpi_core.data.check``)."""
    image_path, source = dataset_layout(kind, images, poses, camera)
    return GMPIDataset(image_path, source, resolution, missing_poses=missing_poses, exclude=exclude)


def dataset_layout(
    kind: DatasetKind,
    images: str | os.PathLike[str],
    poses: str | os.PathLike[str] | None,
    camera: CameraConfig,
) -> tuple[Path, PoseSource]:
    """(the image zip or folder, the pose source) of one of the layouts in this module's table."""
    r, c = camera.sphere_radius, camera.sphere_center_z
    images = Path(images)
    source: PoseSource
    if kind in ("ffhq", "metfaces"):
        if poses is None:
            raise ValueError(f"dataset kind '{kind}' needs the Deep3DFace pose folder (poses=...)")
        source = Deep3DFacePoses(poses, r, c, layout=kind)
    elif kind == "synthetic":  # the synthetic heads generator writes <out>/images.zip and <out>/poses/
        out = images if images.is_dir() else images.parent
        if images.is_dir():
            images = images / "images.zip"
            if not images.is_file():
                raise FileNotFoundError(
                    f"{images} does not exist; give the synthetic generator's output folder"
                )
        source = Deep3DFacePoses(out / "poses" if poses is None else poses, r, c, layout="ffhq")
    elif kind == "afhq":  # EG3D keeps dataset.json inside the image folder (or zip)
        json_path = Path(poses) if poses is not None else images
        source = EG3DPoses(json_path / "dataset.json" if json_path.is_dir() else json_path, r, c)
    elif kind == "folder":
        default = (images if images.is_dir() else images.parent) / "poses.json"
        source = JSONPoses(default if poses is None else poses, r, c)
    else:
        raise ValueError(
            f"unknown dataset kind '{kind}'; choose one of ffhq, afhq, metfaces, folder, synthetic"
        )
    return images, source


# --- writers (tests, synthetic data, tools) -----------------------------------------------------------------


def dataset_tool_name(index: int, ext: str = ".png") -> str:
    """StyleGAN2-ADA ``dataset_tool`` member name of image ``index``: ``00000/img00000123.png``."""
    return f"{index // 1000:05d}/img{index:08d}{ext}"


def _fixed_time(name: str) -> zipfile.ZipInfo:
    """A member with a fixed timestamp, so the same images give a byte-identical zip."""
    return zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))


def write_dataset_zip(
    out_zip: str | os.PathLike[str], images: Iterable[tuple[str, np.ndarray]], labels: Any = None
) -> Path:
    """Write a ``dataset_tool``-style zip atomically (temp file + rename): each ``(member name, uint8 image
    [H, W, 3] | [H, W])`` is encoded by the name's extension (PNG, JPEG, ...), plus ``dataset.json`` =
    ``{"labels": labels}``. Name members with ``dataset_tool_name`` for the official layout."""

    def write(tmp: Path) -> None:
        seen: set[str] = set()
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
            for name, array in images:
                member = PurePosixPath(name)
                if member.is_absolute() or ".." in member.parts or not _is_image(name) or name in seen:
                    raise ValueError(
                        f"bad zip member name '{name}': need a unique relative path with an image extension"
                    )
                seen.add(name)
                pixels = np.asarray(array)
                if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3):
                    raise ValueError(
                        f"image '{name}' must be uint8 [H, W, 3] or [H, W], got {pixels.dtype} {pixels.shape}"
                    )
                buf = io.BytesIO()
                PIL.Image.fromarray(pixels).save(
                    buf, format=PIL.Image.registered_extensions()[member.suffix.lower()]
                )
                zf.writestr(_fixed_time(name), buf.getvalue())
            zf.writestr(_fixed_time("dataset.json"), json.dumps({"labels": labels}))

    return atomic_write(out_zip, write)
