"""Typed experiment configuration and the dataset presets (spec §1.2, §1.4, §2.2, §4.1, §5, §6.2-6.8, §9).

Configuration is plain data: pydantic models validated once at the edge, serialised to JSON with every
checkpoint and report, and turned into network/renderer arguments by the code that consumes them.

    >>> cfg = preset("FFHQ256")
    >>> cfg.camera.fov_deg, cfg.train.batch_size, cfg.generator.channel_base
    (12.6, 8, 16384)
    >>> ExperimentConfig.model_validate_json(cfg.model_dump_json()) == cfg
    True
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

PlaneSpacing = Literal["inverse", "uniform", "log-uniform"]
AlphaHead = Literal["none", "normalize_add_z", "learnable_param", "depth2alpha"]
DatasetKind = Literal["ffhq", "afhq", "metfaces", "folder", "synthetic"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CameraConfig(_Strict):
    """Camera intrinsics, the plane range and the pose prior (spec §1.2, §1.4, §2.2, §2.3)."""

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
    """StyleGAN2 generator + GMPI alpha branch (spec §4). Field names equal the network's init kwargs."""

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


class DiscriminatorConfig(_Strict):
    """Pose-conditioned StyleGAN2 resnet discriminator (spec §5). Field names equal the init kwargs."""

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


class LightingConfig(_Strict):
    """Lighting augmentation (spec §6.6). The official ramp starts at k_a = k_d = 0 (black MPIs at the first
    shaded step, §12.2.1); ``official_ramp=False`` ramps the *shading* from identity instead."""

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
    """Optimisation (spec §6.2-§6.5, §6.8, §6.9). ``batch_size`` is per GPU/process."""

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
    """Evaluation protocol constants (spec §9.0)."""

    n_planes: int = 96
    truncation_psi: float = 1.0
    seed: int = 123
    n_fid: int = 50_000
    n_real_fid: int = 50_000
    n_consistency: int = 1024
    n_geometry: int = 1024
    geometry_size: int = 224


class DatasetConfig(_Strict):
    """Where the images and poses live (spec §7). Paths are filled in by the user or the service."""

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


# --- presets (spec tables §1.2, §1.4, §2.2, §4.1, §6.2) ------------------------------------------------

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
    channel_base = 16384 if res == 256 else 32768  # "paper256" config at 256 (spec §4.1 table)
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
