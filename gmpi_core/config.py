"""Typed experiment configuration and the dataset presets (method §1.2, §1.4, §2.2, §4.1, §5, §6.2-6.8, §9).

Configuration is plain data: pydantic models validated once at the edge, serialised to JSON with every
checkpoint and report, and turned into network/renderer arguments by the code that consumes them.

    >>> cfg = preset("FFHQ256")
    >>> cfg.camera.fov_deg, cfg.train.batch_size, cfg.generator.channel_base
    (12.6, 8, 16384)
    >>> ExperimentConfig.model_validate_json(cfg.model_dump_json()) == cfg
    True
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# --- architecture limits ------------------------------------------------------------------------------
# Every architecture number that comes from a file (native config.json, official config.pth, StyleGAN2
# pickle) or a config is checked against these before a network is built: a 2 KB file declaring 100 000
# mapping layers or a million channels must be an error naming the bound, not an allocation that kills
# the process. Each bound is the largest value of the presets / official configs with a margin.
MAX_RESOLUTION = 2048  # img_resolution, alpha_largest_res: official max 1024 (FFHQ1024, MetFaces)
MAX_LATENT_DIM = 1024  # z_dim, w_dim: 512 in every official config, 128 in the synthetic presets
MAX_C_DIM = 4096  # conditioning: GMPI's D 16, class-conditional StyleGAN2 ≤ 1000
MAX_MAPPING_LAYERS = 32  # official 8, synthetic 4
MAX_CHANNEL_BASE = 65536  # official 32768 (16384 at 256²)
MAX_CHANNEL_MAX = 1024  # official 512; also bounds cmap_dim (SG2 default: the 4² channel count)
MAX_IMG_CHANNELS = 4  # grayscale 1, RGB 3, RGBA 4
MAX_PLANES = 1024  # n_train_planes: official 32; evaluation renders 96
MAX_Z_BINS = 4096  # depth2alpha_n_z_bins: official 256
MAX_FP16_RES = 16  # num_fp16_res: official 4 (a count of blocks; 2048² has 10)
MAX_MBSTD_GROUP = 256  # mbstd_group_size: official 1 (GMPI) / 4 (SG2)
MAX_MBSTD_CHANNELS = 64  # mbstd_num_channels: official 1


@dataclass(frozen=True)
class ArchitectureLimits:
    """The bounds :func:`check_architecture` applies; the defaults are the module constants above."""

    max_resolution: int = MAX_RESOLUTION
    max_latent_dim: int = MAX_LATENT_DIM
    max_c_dim: int = MAX_C_DIM
    max_mapping_layers: int = MAX_MAPPING_LAYERS
    max_channel_base: int = MAX_CHANNEL_BASE
    max_channel_max: int = MAX_CHANNEL_MAX
    max_img_channels: int = MAX_IMG_CHANNELS
    max_planes: int = MAX_PLANES
    max_z_bins: int = MAX_Z_BINS
    max_fp16_res: int = MAX_FP16_RES
    max_mbstd_group: int = MAX_MBSTD_GROUP
    max_mbstd_channels: int = MAX_MBSTD_CHANNELS


def architecture_errors(kwargs: Mapping[str, Any], limits: ArchitectureLimits | None = None) -> list[str]:
    """What is wrong with the architecture numbers among ``kwargs`` (network init kwargs; keys that are
    not architecture numbers are ignored), each naming the bound. Empty when all are within limits."""
    lim = limits or ArchitectureLimits()
    ranges: dict[str, tuple[int, int, str]] = {
        "img_resolution": (4, lim.max_resolution, "MAX_RESOLUTION"),
        "z_dim": (0, lim.max_latent_dim, "MAX_LATENT_DIM"),
        "w_dim": (1, lim.max_latent_dim, "MAX_LATENT_DIM"),
        "c_dim": (0, lim.max_c_dim, "MAX_C_DIM"),
        "img_channels": (1, lim.max_img_channels, "MAX_IMG_CHANNELS"),
        "channel_base": (1, lim.max_channel_base, "MAX_CHANNEL_BASE"),
        "channel_max": (1, lim.max_channel_max, "MAX_CHANNEL_MAX"),
        "num_fp16_res": (0, lim.max_fp16_res, "MAX_FP16_RES"),
        "mapping_layers": (1, lim.max_mapping_layers, "MAX_MAPPING_LAYERS"),
        "alpha_largest_res": (4, lim.max_resolution, "MAX_RESOLUTION"),
        "n_train_planes": (1, lim.max_planes, "MAX_PLANES"),
        "depth2alpha_n_z_bins": (1, lim.max_z_bins, "MAX_Z_BINS"),
        "cmap_dim": (0, lim.max_channel_max, "MAX_CHANNEL_MAX"),
        "mbstd_group_size": (1, lim.max_mbstd_group, "MAX_MBSTD_GROUP"),
        "mbstd_num_channels": (1, lim.max_mbstd_channels, "MAX_MBSTD_CHANNELS"),
    }
    errors = []
    for key, (low, high, name) in ranges.items():
        if key not in kwargs or (key == "mbstd_group_size" and kwargs[key] is None):
            continue
        value = kwargs[key]
        if type(value) is not int:
            errors.append(f"{key} must be an int, got {type(value).__name__}")
        elif not low <= value <= high:
            errors.append(f"{key}={_shown(value)} is outside [{low}, {high}] ({name})")
    resolution = kwargs.get("img_resolution")
    if type(resolution) is int and resolution > 0 and resolution & (resolution - 1):
        errors.append(f"img_resolution must be a power of two, got {resolution}")
    base = kwargs.get("channel_base")
    if type(base) is int and type(resolution) is int and 0 < base < resolution <= lim.max_resolution:
        errors.append(f"channel_base={base} leaves no channels at {resolution}² (needs >= img_resolution)")
    if "conv_clamp" in kwargs and kwargs["conv_clamp"] is not None:
        clamp = kwargs["conv_clamp"]
        if not _finite(clamp, allow_inf=True) or clamp < 0:
            errors.append(f"conv_clamp must be None or a number >= 0, got {_shown(clamp)}")
    depths = kwargs.get("train_plane_depth_norm")
    if depths is not None:
        if not isinstance(depths, list | tuple) or len(depths) > lim.max_planes:
            errors.append(
                f"train_plane_depth_norm must be a list of at most {lim.max_planes} numbers (MAX_PLANES)"
            )
        elif not all(_finite(d) and abs(d) <= 1e6 for d in depths):
            errors.append("train_plane_depth_norm must hold finite numbers")
    return errors


def _shown(value: Any) -> str:
    """``value`` for a message: numbers and short strings as they are, anything else by its type."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"<int of {value.bit_length()} bits>"
    if value is None or isinstance(value, int | float | str):
        return repr(value)[:40]
    return type(value).__name__


def _finite(value: Any, allow_inf: bool = False) -> bool:
    """An int or float (not bool), not NaN, and finite unless ``allow_inf``; huge ints are not floats."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if isinstance(value, int):
        return value.bit_length() <= 64
    return not math.isnan(value) and (allow_inf or math.isfinite(value))


def check_architecture(
    kwargs: Mapping[str, Any], *, what: str = "the architecture", limits: ArchitectureLimits | None = None
) -> None:
    """Raise ``ValueError`` naming every architecture number of ``kwargs`` outside its bound."""
    errors = architecture_errors(kwargs, limits)
    if errors:
        raise ValueError(f"{what}: " + "; ".join(errors))


PlaneSpacing = Literal["inverse", "uniform", "log-uniform"]
AlphaHead = Literal["none", "normalize_add_z", "learnable_param", "depth2alpha"]
DatasetKind = Literal["ffhq", "afhq", "metfaces", "folder", "synthetic"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CameraConfig(_Strict):
    """Camera intrinsics, the plane range and the pose prior (docs/method.md §1.2, §1.4, §2.2, §2.3)."""

    fov_deg: float = Field(gt=0, lt=180, description="horizontal field of view")
    d_near: float = Field(gt=0, description="depth of the nearest plane (ray_start)")
    d_far: float = Field(gt=0, description="depth of the farthest (background) plane (ray_end)")
    yaw_std: float = Field(ge=0, description="σ of the truncated-Gaussian yaw prior (rad)")
    pitch_std: float = Field(ge=0, description="σ of the truncated-Gaussian pitch prior (rad)")
    yaw_mean: float = 0.0
    pitch_mean: float = 0.0
    truncation_k: float = Field(gt=0, description="the prior is truncated to mean ± k·σ")
    sphere_center_z: float = Field(gt=0, description="c: cameras orbit the point (0, 0, c)")
    sphere_radius: float = Field(gt=0, description="r: radius of the camera sphere")
    plane_spacing: PlaneSpacing = "inverse"
    spatial_enlarge_factor: float = Field(default=1.001, ge=1.0)

    @model_validator(mode="after")
    def _near_before_far(self) -> CameraConfig:
        if not self.d_near < self.d_far:
            raise ValueError(f"d_near ({self.d_near}) must be smaller than d_far ({self.d_far})")
        return self

    @property
    def yaw_range(self) -> tuple[float, float]:
        return (
            self.yaw_mean - self.truncation_k * self.yaw_std,
            self.yaw_mean + self.truncation_k * self.yaw_std,
        )

    @property
    def pitch_range(self) -> tuple[float, float]:
        return (
            self.pitch_mean - self.truncation_k * self.pitch_std,
            self.pitch_mean + self.truncation_k * self.pitch_std,
        )


class GeneratorConfig(_Strict):
    """StyleGAN2 generator + GMPI alpha branch (method §4). Field names equal the network's init kwargs."""

    img_resolution: int = Field(ge=8)
    img_channels: int = 3
    z_dim: int = 512
    w_dim: int = 512
    c_dim: int = 0
    channel_base: int = 32768
    channel_max: int = 512
    num_fp16_res: int = 4
    conv_clamp: float | None = 256
    mapping_layers: int = 8
    alpha_head: AlphaHead = "normalize_add_z"
    alpha_largest_res: int = 256
    n_train_planes: int = 32
    depth2alpha_n_z_bins: int = 256

    @model_validator(mode="after")
    def _power_of_two(self) -> GeneratorConfig:
        r = self.img_resolution
        if r & (r - 1):
            raise ValueError(f"img_resolution must be a power of two, got {r}")
        return self

    @model_validator(mode="after")
    def _within_limits(self) -> GeneratorConfig:
        check_architecture(self.model_dump(), what="generator")
        return self


class DiscriminatorConfig(_Strict):
    """Pose-conditioned StyleGAN2 resnet discriminator (method §5). Field names equal the init kwargs."""

    img_resolution: int = Field(ge=8)
    img_channels: int = 3
    c_dim: int = 16
    channel_base: int = 32768
    channel_max: int = 512
    num_fp16_res: int = 4
    conv_clamp: float | None = 256
    cmap_dim: int = 16
    mbstd_group_size: int = 1
    mbstd_num_channels: int = 1

    @model_validator(mode="after")
    def _within_limits(self) -> DiscriminatorConfig:
        check_architecture(self.model_dump(), what="discriminator")
        return self


class LightingConfig(_Strict):
    """Lighting augmentation (docs/method.md §6.6). The official ramp starts at k_a = k_d = 0 (black MPIs at
    the first shaded step, §12.2.1); ``official_ramp=False`` ramps the *shading* from identity instead."""

    enabled: bool = True
    ka_max: float = 0.9
    kd_max: float = 0.1
    start_iter: int = 1000
    grow_n_iters: int = 1000
    light_yaw_std: float = 0.2
    light_pitch_mean: float = 0.2
    light_pitch_std: float = 0.05
    blur_kernel: int = 9
    official_ramp: bool = True


class TrainConfig(_Strict):
    """Optimisation (docs/method.md §6.2-§6.5, §6.8, §6.9). ``batch_size`` is per GPU/process."""

    batch_size: int = Field(ge=1)
    batch_split: int = Field(default=1, ge=1)
    n_planes: int = 32
    total_iters: int = 5001
    lr_g: float = 0.002
    lr_d: float = 0.002
    betas: tuple[float, float] = (0.0, 0.9)
    eps: float = 1e-8
    weight_decay: float = 0.0
    r1_gamma: float = 10.0
    # R1 every k-th D step with weight γ·k (StyleGAN2's lazy regularisation, its 2D default is 16); GMPI
    # itself applies R1 at every step (method §6.4), so every preset keeps 1 and only the 2D stage of a
    # CPU recipe raises it (the double backward of R1 is a third of a 2D step's cost)
    r1_interval: int = Field(default=1, ge=1)
    grad_clip: float = 10.0
    n_views_per_z: int = 4
    select_worst_view: bool = True
    ema_decay: float = 0.999
    ema2_decay: float = 0.9999
    sample_interval: int = 200
    model_save_interval: int = 500
    seed: int = 123
    truncation_psi: float = 1.0
    lighting: LightingConfig = LightingConfig()

    @model_validator(mode="after")
    def _split_divides(self) -> TrainConfig:
        if self.batch_split > self.batch_size:
            raise ValueError(f"batch_split ({self.batch_split}) cannot exceed batch_size ({self.batch_size})")
        return self


class EvalConfig(_Strict):
    """Evaluation protocol constants (docs/method.md §9.0)."""

    n_planes: int = 96
    truncation_psi: float = 1.0
    seed: int = 123
    n_fid: int = 50_000
    n_real_fid: int = 50_000
    n_consistency: int = 1024
    n_geometry: int = 1024
    geometry_size: int = 224


class DatasetConfig(_Strict):
    """Where the images and poses live (docs/method.md §7). Paths are filled in by the user or the service."""

    kind: DatasetKind
    resolution: int
    images: str | None = None
    poses: str | None = None


class ExperimentConfig(_Strict):
    """Everything needed to build, train, evaluate and render one GMPI model."""

    name: str
    camera: CameraConfig
    generator: GeneratorConfig
    discriminator: DiscriminatorConfig
    train: TrainConfig
    eval: EvalConfig = EvalConfig()
    dataset: DatasetConfig

    @model_validator(mode="after")
    def _resolutions_agree(self) -> ExperimentConfig:
        g, d, ds = self.generator.img_resolution, self.discriminator.img_resolution, self.dataset.resolution
        if not g == d == ds:
            raise ValueError(
                f"generator ({g}), discriminator ({d}) and dataset ({ds}) resolutions must agree"
            )
        return self

    def with_updates(self, **sections: dict) -> ExperimentConfig:
        """A copy with some fields of some sections replaced, validated again:
        ``cfg.with_updates(train={"batch_size": 2}, dataset={"images": "/data/ffhq.zip"})``."""
        data = self.model_dump()
        for section, values in sections.items():
            if section not in data:
                raise ValueError(f"unknown config section '{section}'; choose one of {sorted(data)}")
            if isinstance(data[section], dict):
                data[section].update(values)
            else:
                data[section] = values
        return ExperimentConfig.model_validate(data)


# --- presets (docs/method.md tables §1.2, §1.4, §2.2, §4.1, §6.2) -------------------------------------------

_FFHQ_CAMERA = CameraConfig(
    fov_deg=12.6, d_near=0.95, d_far=1.12, yaw_std=0.289, pitch_std=0.127, truncation_k=2.0,
    sphere_center_z=1.0, sphere_radius=1.0,
)  # fmt: skip
_AFHQ_CAMERA = CameraConfig(
    fov_deg=13.39, d_near=2.55, d_far=2.8, yaw_std=0.19, pitch_std=0.15, truncation_k=3.0,
    sphere_center_z=2.7, sphere_radius=2.7,
)  # fmt: skip
_METFACES_CAMERA = CameraConfig(
    fov_deg=12.6, d_near=0.95, d_far=1.12, yaw_std=0.339, pitch_std=0.133, truncation_k=2.0,
    sphere_center_z=1.0, sphere_radius=1.0,
)  # fmt: skip


def _official(
    name: str, camera: CameraConfig, res: int, kind: DatasetKind, batch: int, split: int
) -> ExperimentConfig:
    channel_base = 16384 if res == 256 else 32768  # "paper256" config at 256 (docs/method.md §4.1 table)
    return ExperimentConfig(
        name=name,
        camera=camera,
        generator=GeneratorConfig(img_resolution=res, channel_base=channel_base),
        discriminator=DiscriminatorConfig(img_resolution=res, channel_base=channel_base),
        train=TrainConfig(batch_size=batch, batch_split=split),
        dataset=DatasetConfig(kind=kind, resolution=res),
    )


def _synthetic(name: str, res: int) -> ExperimentConfig:
    """Tiny CPU presets on the synthetic heads (FFHQ camera, small networks, no fp16)."""
    return ExperimentConfig(
        name=name,
        camera=_FFHQ_CAMERA,
        generator=GeneratorConfig(
            img_resolution=res,
            z_dim=128,
            w_dim=128,
            channel_base=2048,
            channel_max=128,
            num_fp16_res=0,
            mapping_layers=4,
        ),
        discriminator=DiscriminatorConfig(
            img_resolution=res, channel_base=2048, channel_max=128, num_fp16_res=0
        ),
        train=TrainConfig(
            batch_size=8,
            n_planes=16,
            total_iters=2001,
            # half the official 0.002, which is tuned for 8 GPUs × 8 = 64 images per step: at one
            # process's 8 the GMPI stage's depth oscillated instead of settling (synthetic_geometry bench)
            lr_g=0.001,
            lr_d=0.001,
            # shading blends in from identity (no black MPIs, §12.2.1) from step 101 over 400 calls
            # (≈200 steps at batch_split 1): a short run's geometry is not knocked back mid-training
            lighting=LightingConfig(start_iter=100, grow_n_iters=400, official_ramp=False),
        ),
        eval=EvalConfig(n_planes=32, n_fid=2048, n_real_fid=2048, n_consistency=256, n_geometry=256),
        dataset=DatasetConfig(kind="synthetic", resolution=res),
    )


PRESETS: dict[str, ExperimentConfig] = {
    "FFHQ256": _official("FFHQ256", _FFHQ_CAMERA, 256, "ffhq", batch=8, split=1),
    "FFHQ512": _official("FFHQ512", _FFHQ_CAMERA, 512, "ffhq", batch=4, split=1),
    "FFHQ1024": _official("FFHQ1024", _FFHQ_CAMERA, 1024, "ffhq", batch=4, split=2),
    "AFHQCat": _official("AFHQCat", _AFHQ_CAMERA, 512, "afhq", batch=4, split=1),
    "MetFaces": _official("MetFaces", _METFACES_CAMERA, 1024, "metfaces", batch=4, split=2),
    "synthetic32": _synthetic("synthetic32", 32),
    "synthetic64": _synthetic("synthetic64", 64),
}


def preset(name: str) -> ExperimentConfig:
    """The named preset; raises ``ValueError`` listing the valid names for an unknown one."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset '{name}'; choose one of {', '.join(PRESETS)}") from None


def load_config(path: str) -> ExperimentConfig:
    """Read an ``ExperimentConfig`` from a JSON file (as written with every checkpoint and report)."""
    with open(path, encoding="utf-8") as f:
        return ExperimentConfig.model_validate_json(f.read())
