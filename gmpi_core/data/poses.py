"""Camera poses of real images: one protocol, one implementation per on-disk format (method §1.5, §1.6, §7).

Every source maps an image *key* (the image's path inside its zip or folder, posix separators) to the
GMPI world-to-camera matrix that conditions the discriminator, plus the image's yaw and pitch:

* ``Deep3DFacePoses`` — one Deep3DFaceRecon coefficient ``.mat`` per image (FFHQ, MetFaces, synthetic);
* ``EG3DPoses`` — EG3D's ``dataset.json`` with 25-float labels (AFHQCat);
* ``JSONPoses`` — our own JSON file for custom data (yaw/pitch or explicit w2c per image).

    >>> poses = Deep3DFacePoses("runtime_dataset/ffhq256_deep3dface_coeffs", radius=1.0, center_z=1.0)
    >>> poses.pose("00000/img00000123.png").w2c.shape          # reads 00000/img00000123.mat
    torch.Size([4, 4])
"""

from __future__ import annotations

import json
import math
import os
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any, Literal, NamedTuple, Protocol

import numpy as np
import scipy.io
import torch
from torch import Tensor

from gmpi_core.camera import deep3dface_to_w2c, eg3d_to_w2c, pitch_yaw_from_w2c, sphere_c2w, w2c_condition

__all__ = [
    "DEEP3DFACE_KEYS",
    "Deep3DFacePoses",
    "EG3DPoses",
    "JSONPoses",
    "Pose",
    "PoseError",
    "PoseSource",
    "read_fail_list",
    "write_deep3dface_mat",
    "write_eg3d_dataset_json",
]

Deep3DFaceLayout = Literal["ffhq", "metfaces"]

# Keys and shapes written by Deep3DFaceRecon's ``save_coeff`` (method §1.6); GMPI reads only angle and trans.
DEEP3DFACE_KEYS: dict[str, tuple[int, ...]] = {
    "id": (1, 80),
    "exp": (1, 64),
    "tex": (1, 80),
    "angle": (1, 3),
    "gamma": (1, 27),
    "trans": (1, 3),
    "lm68": (1, 68, 2),
}


class PoseError(ValueError):
    """A pose file or pose entry is missing, malformed or inconsistent; the message names it."""


class Pose(NamedTuple):
    """The camera of one real image: ``w2c`` [4, 4] float32 (GMPI world-to-camera, docs/method.md §1.5), yaw
    and pitch in radians (docs/method.md §1.6: not used by training, returned for analysis)."""

    w2c: Tensor
    yaw: float
    pitch: float


class PoseSource(Protocol):
    """Where the camera of each image comes from. Keys are image paths relative to the image source
    (zip member names or folder-relative paths, posix separators)."""

    def has(self, key: str) -> bool:
        """Whether a pose exists for ``key`` (cheap; no file is parsed)."""
        ...

    def is_excluded(self, key: str) -> bool:
        """Whether ``key`` is on the source's fail list (method §7, §8.1) and must not be trained on."""
        ...

    def keys(self) -> set[str] | None:
        """All keys with a pose when the source is a listing (JSON files); ``None`` for one file per image."""
        ...

    def pose(self, key: str) -> Pose:
        """The pose of ``key``; raises ``PoseError`` naming the file when it is missing or malformed."""
        ...

    def location(self, key: str) -> str:
        """Where the pose of ``key`` is (or would be) stored, for error messages."""
        ...

    def w2c(self, key: str) -> Tensor:
        """The [4, 4] GMPI world-to-camera matrix of ``key``."""
        return self.pose(key).w2c


def read_fail_list(path: str | os.PathLike[str]) -> set[str]:
    """Names in a fail list (method §8.1): one per line, stripped, blank lines ignored; empty if no file."""
    path = Path(path)
    if not path.is_file():
        return set()
    with open(path, encoding="utf-8") as f:
        return {line.strip() for line in f if line.strip()}


# --- Deep3DFaceRecon coefficient folders (FFHQ, MetFaces, synthetic) --------------------------------------


class Deep3DFacePoses(PoseSource):
    """One Deep3DFaceRecon ``.mat`` per image (docs/method.md §1.6, §7).

    ``layout="ffhq"``: the pose of member ``00000/img00000123.png`` is ``{root}/00000/img00000123.mat`` (only
    the suffix is replaced — docs/method.md §7 PITFALL); the fail list ``{root}/fail_list.txt`` holds member
    names. ``layout="metfaces"``: the pose of ``<stem>.png`` is ``{root}/coeffs/<stem>.mat``; the fail list
    holds basenames. yaw = −angle[1], pitch = angle[0] (docs/method.md §1.6, §1.7).
    """

    def __init__(
        self, root: str | os.PathLike[str], radius: float, center_z: float, layout: Deep3DFaceLayout = "ffhq"
    ) -> None:
        if layout not in ("ffhq", "metfaces"):
            raise ValueError(f"unknown Deep3DFace pose layout '{layout}'; choose one of ffhq, metfaces")
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"Deep3DFace pose folder {self.root} does not exist; point it at the folder of coefficient "
                f".mat files written by the pose step (docs/method.md §8.2)"
            )
        if layout == "metfaces" and not (self.root / "coeffs").is_dir():
            raise FileNotFoundError(
                f"MetFaces pose folder {self.root} has no 'coeffs/' subfolder; expected "
                f"{self.root}/coeffs/<stem>.mat for every image (docs/method.md §1.6)"
            )
        self.radius = radius
        self.center_z = center_z
        self.layout: Deep3DFaceLayout = layout
        self.fail_list = read_fail_list(self.root / "fail_list.txt")
        self._present: set[str] | None = None  # relative paths of the .mat files, listed once on demand
        self._cache: dict[str, Pose] = {}

    def __repr__(self) -> str:
        return (
            f"Deep3DFacePoses(root='{self.root}', layout='{self.layout}', radius={self.radius}, "
            f"center_z={self.center_z})"
        )

    def _relative_mat(self, key: str) -> str:
        name = PurePosixPath(key)
        if self.layout == "ffhq":
            return name.with_suffix(".mat").as_posix()
        return f"coeffs/{name.stem}.mat"

    def mat_path(self, key: str) -> Path:
        """The coefficient file of image ``key``."""
        return self.root / self._relative_mat(key)

    def location(self, key: str) -> str:
        return str(self.mat_path(key))

    def _present_files(self) -> set[str]:
        if self._present is None:  # one directory walk instead of one stat per image
            base = self.root if self.layout == "ffhq" else self.root / "coeffs"
            present: set[str] = set()
            for dirpath, _, filenames in os.walk(base):
                rel = Path(dirpath).relative_to(self.root).as_posix()
                prefix = "" if rel == "." else rel + "/"
                present.update(prefix + f for f in filenames if f.endswith(".mat"))
            self._present = present
        return self._present

    def has(self, key: str) -> bool:
        return self._relative_mat(key) in self._present_files()

    def is_excluded(self, key: str) -> bool:
        name = key if self.layout == "ffhq" else PurePosixPath(key).name
        return name in self.fail_list

    def keys(self) -> None:
        return None

    def pose(self, key: str) -> Pose:
        if key not in self._cache:
            angle, trans = read_deep3dface_angle_trans(self.mat_path(key))
            w2c = deep3dface_to_w2c(
                torch.from_numpy(angle)[None], torch.from_numpy(trans)[None], self.radius, self.center_z
            )[0]
            self._cache[key] = Pose(w2c.to(torch.float32), yaw=-float(angle[1]), pitch=float(angle[0]))
        return self._cache[key]

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers (spawn) get no cache copies
        return {**self.__dict__, "_cache": {}}


def read_deep3dface_angle_trans(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``angle`` [3] and ``trans`` [3] (float64) of a Deep3DFaceRecon coefficient file (method §1.6)."""
    if not path.is_file():
        raise PoseError(f"pose file {path} does not exist; run the pose step for this image or exclude it")
    try:
        mat = scipy.io.loadmat(str(path), variable_names=["angle", "trans"])
    except Exception as e:  # scipy raises many kinds (ValueError, MatReadError, TypeError) for broken files
        raise PoseError(f"cannot read Deep3DFace coefficients from {path}: {e}; re-run the pose step") from e
    out = []
    for name in ("angle", "trans"):
        if name not in mat:
            raise PoseError(
                f"{path} has no '{name}' entry; a Deep3DFace coefficient file needs angle and trans"
            )
        value = np.asarray(mat[name], dtype=np.float64)
        if value.size != 3:
            raise PoseError(f"{path}: '{name}' has shape {value.shape}, expected (1, 3)")
        value = value.reshape(3)
        if not np.isfinite(value).all():
            raise PoseError(f"{path}: '{name}' contains non-finite values {value.tolist()}")
        out.append(value)
    return out[0], out[1]


def write_deep3dface_mat(
    path: str | os.PathLike[str], angle: Iterable[float], trans: Iterable[float], **coeffs: np.ndarray
) -> Path:
    """Write a Deep3DFaceRecon-compatible coefficient file with every key of docs/method.md §1.6 (float32).

    ``angle`` (radians, Euler x, y, z) and ``trans`` are 3 numbers each; other keys (``id``, ``exp``, ``tex``,
    ``gamma``, ``lm68``) default to zeros of their shape. Parent folders are created.
    """
    unknown = set(coeffs) - set(DEEP3DFACE_KEYS)
    if unknown:
        raise ValueError(f"unknown Deep3DFace keys {sorted(unknown)}; choose from {sorted(DEEP3DFACE_KEYS)}")
    values: dict[str, np.ndarray] = {}
    for name, shape in DEEP3DFACE_KEYS.items():
        given: Any = {"angle": angle, "trans": trans}.get(name, coeffs.get(name))
        array = np.zeros(shape, np.float32) if given is None else np.asarray(given, np.float32)
        if array.size != math.prod(shape):
            raise ValueError(
                f"Deep3DFace '{name}' needs {math.prod(shape)} numbers {shape}, got shape {array.shape}"
            )
        values[name] = array.reshape(shape)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(str(path), values)
    return path


# --- listings: EG3D dataset.json (AFHQ) and our JSON poses (custom data) ----------------------------------


class _ListedPoses(PoseSource):
    """Poses computed once for every listed key (the files are small: one entry per image)."""

    def __init__(self, path: Path, poses: Mapping[str, Pose], excluded: set[str]) -> None:
        self.path = path
        self._poses = dict(poses)
        self._excluded = excluded

    def has(self, key: str) -> bool:
        return key in self._poses

    def is_excluded(self, key: str) -> bool:
        return key in self._excluded

    def keys(self) -> set[str]:
        return set(self._poses)

    def location(self, key: str) -> str:
        return f"{self.path} entry '{key}'"

    def pose(self, key: str) -> Pose:
        try:
            return self._poses[key]
        except KeyError:
            raise PoseError(f"{self.path} has no pose for '{key}'") from None

    def __repr__(self) -> str:
        return f"{type(self).__name__}('{self.path}', {len(self._poses)} poses)"


def _load_json(path: Path, what: str) -> Any:
    """A JSON file, or the ``dataset.json`` member of a dataset zip (EG3D ships its labels that way)."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        if path.suffix.lower() == ".zip":
            with zipfile.ZipFile(path) as zf:
                return json.loads(zf.read("dataset.json"))
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except KeyError:
        raise PoseError(f"{path} has no dataset.json member; give the dataset.json with the labels") from None
    except (zipfile.BadZipFile, OSError) as e:
        raise PoseError(f"cannot read {what} from {path}: {e}") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PoseError(f"{what} {path} is not valid JSON: {e}") from e


def _normalise_key(name: str) -> str:
    return PurePosixPath(name.replace("\\", "/")).as_posix().removeprefix("./")


def _stack_poses(names: list[str], w2c: Tensor, yaw: Tensor, pitch: Tensor) -> dict[str, Pose]:
    w2c32 = w2c.to(torch.float32)
    return {n: Pose(w2c32[i], float(yaw[i]), float(pitch[i])) for i, n in enumerate(names)}


class EG3DPoses(_ListedPoses):
    """EG3D's ``dataset.json`` (AFHQCat, docs/method.md §1.6): ``{"labels": [[fname, [25 floats]], ...]}``;
    the first 16 floats are EG3D's camera-to-world matrix (row-major), the last 9 (intrinsics) are ignored.
    yaw and pitch are recovered from the converted w2c. Keys are the label file names; there is no fail list.
    A dataset zip is accepted too (its ``dataset.json`` member is read).
    """

    def __init__(self, dataset_json: str | os.PathLike[str], radius: float, center_z: float) -> None:
        path = Path(dataset_json)
        data = _load_json(path, "EG3D dataset.json")
        labels = data.get("labels") if isinstance(data, dict) else None
        if not isinstance(labels, list) or not labels:
            raise PoseError(
                f'{path} has no camera labels (expected {{"labels": [[fname, [25 floats]], ...]}}, '
                f"as in EG3D's AFHQ dataset.json)"
            )
        names: list[str] = []
        c2w = np.empty((len(labels), 16), np.float64)
        for i, entry in enumerate(labels):
            ok = isinstance(entry, list | tuple) and len(entry) == 2 and isinstance(entry[0], str)
            if not ok or not isinstance(entry[1], list) or len(entry[1]) not in (16, 25):
                raise PoseError(f"{path}: label #{i} is {str(entry)[:80]}; expected [fname, [25 floats]]")
            names.append(_normalise_key(entry[0]))
            c2w[i] = np.asarray(entry[1][:16], np.float64)
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise PoseError(f"{path}: '{dup}' is labelled more than once; keep one label per image")
        if not np.isfinite(c2w).all():
            raise PoseError(f"{path}: some camera labels contain non-finite values")
        w2c = eg3d_to_w2c(torch.from_numpy(c2w).view(-1, 4, 4), radius, center_z)
        pitch, yaw = pitch_yaw_from_w2c(w2c, center_z)
        super().__init__(path, _stack_poses(names, w2c, yaw, pitch), excluded=set())


class JSONPoses(_ListedPoses):
    """Poses of custom data in one JSON file, relative to the image folder or zip::

        {
          "poses": {
            "people/a.png": {"yaw": 0.12, "pitch": -0.05},
            "people/b.png": {"w2c": [1, 0, 0, 0,  0, 1, 0, 0,  0, 0, 1, 0,  0, 0, 0, 1]}
          },
          "fail_list": ["people/c.png"]
        }

    ``yaw``/``pitch`` are radians in GMPI's convention (method §1.3: positive yaw moves the camera right,
    positive pitch moves it up), the camera sits on the sphere of ``radius`` around (0, 0, ``center_z``).
    ``w2c`` is GMPI's world-to-camera matrix, 16 floats row-major (docs/method.md §1.5: +X right, +Y down, +Z
    forward); its yaw/pitch are recovered from the camera centre. ``fail_list`` is optional.
    """

    def __init__(self, path: str | os.PathLike[str], radius: float, center_z: float) -> None:
        path = Path(path)
        data = _load_json(path, "pose file")
        entries = data.get("poses") if isinstance(data, dict) else None
        if not isinstance(entries, dict) or not entries:
            raise PoseError(
                f'{path} has no poses; expected {{"poses": {{"image.png": {{"yaw": .., "pitch": ..}} '
                f'or {{"w2c": [16 floats]}}, ...}}}} (see gmpi_core.data.poses.JSONPoses)'
            )
        fail = data.get("fail_list", [])
        if not isinstance(fail, list) or not all(isinstance(n, str) for n in fail):
            raise PoseError(f"{path}: 'fail_list' must be a list of image names")
        sphere_names: list[str] = []
        angles: list[tuple[float, float]] = []
        matrix_names: list[str] = []
        matrices: list[np.ndarray] = []
        for name, entry in entries.items():
            fields = set(entry) if isinstance(entry, dict) else set()
            if fields == {"yaw", "pitch"}:
                yaw, pitch = _finite_number(entry["yaw"]), _finite_number(entry["pitch"])
                if yaw is None or pitch is None:
                    raise PoseError(
                        f"{path}: '{name}' yaw/pitch must be finite numbers (radians), got {entry}"
                    )
                sphere_names.append(_normalise_key(name))
                angles.append((yaw, pitch))
            elif fields == {"w2c"}:
                matrix_names.append(_normalise_key(name))
                matrices.append(_rigid_w2c(entry["w2c"], f"{path}: '{name}'"))
            else:
                raise PoseError(
                    f'{path}: \'{name}\' must be {{"yaw": .., "pitch": ..}} or {{"w2c": [16 floats]}}, got '
                    f"{str(entry)[:80]}"
                )
        poses: dict[str, Pose] = {}
        if sphere_names:
            yp = torch.tensor(angles, dtype=torch.float64)
            c2w = sphere_c2w(yp[:, 0], yp[:, 1], radius, center_z)
            poses.update(_stack_poses(sphere_names, w2c_condition(c2w).view(-1, 4, 4), yp[:, 0], yp[:, 1]))
        if matrix_names:
            w2c = torch.from_numpy(np.stack(matrices))
            pitches, yaws = pitch_yaw_from_w2c(w2c, center_z)
            poses.update(_stack_poses(matrix_names, w2c, yaws, pitches))
        super().__init__(path, poses, excluded={_normalise_key(n) for n in fail})


def _finite_number(value: Any) -> float | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def _rigid_w2c(values: Any, where: str) -> np.ndarray:
    """Check that 16 numbers form a rigid world-to-camera transform; returns it as [4, 4] float64."""
    if not isinstance(values, list) or len(values) != 16 or any(_finite_number(v) is None for v in values):
        raise PoseError(f"{where}: 'w2c' must be 16 finite numbers (row-major 4×4)")
    m = np.asarray(values, np.float64).reshape(4, 4)
    rot = m[:3, :3]
    if not np.allclose(m[3], [0, 0, 0, 1], atol=1e-6) or not np.allclose(rot @ rot.T, np.eye(3), atol=1e-4):
        raise PoseError(
            f"{where}: 'w2c' is not a rigid transform (rotation must be orthonormal, last row 0 0 0 1)"
        )
    if np.linalg.det(rot) < 0:
        raise PoseError(f"{where}: 'w2c' has a reflection (det < 0); GMPI cameras are right-handed")
    return m


def write_eg3d_dataset_json(
    path: str | os.PathLike[str],
    labels: Iterable[tuple[str, np.ndarray | Tensor]],
    intrinsics: Iterable[float] | None = None,
) -> Path:
    """Write an EG3D ``dataset.json`` (docs/method.md §1.6) from ``(fname, c2w [4, 4])`` pairs; each label is
    the row-major c2w followed by the 9 normalised intrinsics (default: AFHQ's fov 13.39°, centre 0.5)."""
    if intrinsics is None:
        f = 0.5 / math.tan(math.radians(13.39) / 2)  # EG3D normalises the focal length by the image size
        intrinsics = [f, 0.0, 0.5, 0.0, f, 0.5, 0.0, 0.0, 1.0]
    k = [float(v) for v in intrinsics]
    if len(k) != 9:
        raise ValueError(f"intrinsics must be 9 numbers (row-major 3×3), got {len(k)}")
    rows = [[name, [float(v) for v in np.asarray(c2w, np.float64).reshape(16)] + k] for name, c2w in labels]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        json.dump({"labels": rows}, fh)
    return path
