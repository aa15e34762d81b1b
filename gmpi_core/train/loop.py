"""The GMPI training loop (method §6): one ``Trainer`` whose ``step`` reads from data to optimiser step.

    trainer = Trainer(preset("synthetic32").with_updates(dataset={"images": "data/synth"}), "runs/s32")
    trainer.train()            # resumes from runs/s32/checkpoints/latest if it exists

One step (docs/method.md §6.4), b = per-process batch, S = ``batch_split``, s = 0-based step index:

1. D: under no_grad, b fake MPIs in S chunks (G in train mode, random noise), lighting if s > start_iter,
   one random prior pose per fake; R1 = γ/2·E‖∇_x Σ D(x_real)‖² every step;
   L_D = E softplus(−D(real)) + E softplus(D(fake)) + R1; clip 10; Adam.
2. G: fresh z; per latent the worst of ``n_views_per_z`` random poses under D (no grad, no lighting);
   per chunk a new MPI with grad, lighting, render at the chosen poses, L_G = E softplus(−D), backward of
   L_G / S; clip 10; Adam; EMA and EMA2 update. D's ``requires_grad`` is off during the G step.

``mode="stylegan2"`` trains a plain 2D StyleGAN2 with the same loop (no poses, planes, lighting or
worst-view choice) and exports a checkpoint that ``init="native2d:<dir>"`` turns into a GMPI start.

Randomness (exact resume): every process seeds torch (CPU and CUDA), numpy and ``random`` with
``seed + rank`` — the official code seeds all ranks with the same seed and then calls
``torch.manual_seed(rank)`` (docs/method.md §6.1); both give each rank its own stream. Latents, synthesis
noise, poses and light directions all come from these global generators, whose states are saved per rank
with every checkpoint together with the data order (sampler epoch and position), the lighting call
counter, both EMAs and both optimisers. Sample grids run under ``torch.random.fork_rng`` and never touch
the training streams. A resumed run therefore reproduces the uninterrupted run's losses bit for bit
on CPU (on CUDA up to non-deterministic kernels, e.g. grid_sample's backward).

Distributed: see :mod:`gmpi_core.train.distributed` (no DDP; broadcast once, average gradients by hand).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import random
import time
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from gmpi_core.config import ExperimentConfig
from gmpi_core.progress import format_duration
from gmpi_core.train import distributed as dist_utils
from gmpi_core.train.ema import ParameterEMA
from gmpi_core.train.lighting import LightingAugmentation
from gmpi_core.train.losses import d_logistic_loss, g_nonsaturating_loss, r1_penalty, select_worst_views
from gmpi_core.train.sampler import ResumableDistributedSampler
from gmpi_core.train.state import (
    CheckpointDir,
    atomic_write_bytes,
    atomic_write_text,
    capture_rng_state,
    checkpoint_step,
    load_checkpoint,
    restore_rng_state,
)

__all__ = [
    "CHECKPOINT_FORMAT",
    "Trainer",
    "TrainingError",
    "check_training_data",
    "load_training_data",
    "parse_init",
]

Mode = Literal["gmpi", "stylegan2"]
CHECKPOINT_FORMAT = "gmpi-train"
_CHECKPOINT_VERSION = 1
_INIT_KINDS = ("random", "stylegan2_pkl", "native2d", "native")

log = logging.getLogger("gmpi.train")

if TYPE_CHECKING:
    from gmpi_core.data.check import DataCheck


class TrainingError(ValueError):
    """The training run cannot start or continue as asked; the message says what to change."""


def parse_init(init: str) -> tuple[str, Path | None]:
    """``"random"`` → ("random", None); ``"stylegan2_pkl:<path>"``, ``"native2d:<dir>"``, ``"native:<dir>"``
    → (kind, path). The path must exist. (The model-source grammar of ``GMPI.load``, with the kind named.)"""
    from gmpi_core.checkpoints.sources import ModelSourceError, parse_source

    kind, sep, _ = init.partition(":")
    if kind not in _INIT_KINDS or (kind == "random") == bool(sep):
        raise TrainingError(
            f"unknown --init '{init}'; use 'random', 'stylegan2_pkl:<file.pkl>', 'native2d:<dir>' (a 2D "
            "StyleGAN2 trained with --mode stylegan2) or 'native:<dir>' (a GMPI model directory)"
        )
    try:
        source = parse_source(init, kinds=_INIT_KINDS)
    except ModelSourceError as e:
        raise TrainingError(f"--init {e}") from None
    return source.kind, source.path


DataCheckMode = Literal["error", "skip", "off"]


def load_training_data(
    cfg: ExperimentConfig,
    *,
    check: DataCheckMode = "off",
    full_check: bool = False,
    exclude: Iterable[str] = (),
    result: DataCheck | None = None,
    logger: logging.Logger | None = None,
) -> Dataset:
    """The training dataset of ``cfg.dataset`` with clear errors for missing paths (docs/method.md §7).

    ``check="error"`` first checks every image (``gmpi_core.data.check``: headers, pose presence, size;
    ``full_check``: full decode) and refuses with the list of bad images; ``"skip"`` leaves them out with a
    warning. ``exclude``: keys never to draw. ``result``: an already computed ``DataCheck`` (distributed
    runs check once on rank 0)."""
    from gmpi_core.data.datasets import build_dataset

    images = _training_images(cfg)
    ds = cfg.dataset
    skip = set(exclude)
    if check != "off":
        if result is None:
            result = check_training_data(cfg, full=full_check, exclude=skip)
        skip |= _apply_check(result, check, logger or log)
    try:
        return build_dataset(ds.kind, images, ds.poses, ds.resolution, cfg.camera, exclude=skip)
    except FileNotFoundError as e:
        raise TrainingError(f"cannot open the training data: {e}") from e


def check_training_data(
    cfg: ExperimentConfig, *, full: bool = False, exclude: Iterable[str] = ()
) -> DataCheck:
    """``gmpi_core.data.check.check_dataset`` of ``cfg.dataset`` (its kind, poses, resolution, camera)."""
    from gmpi_core.data.check import check_dataset

    ds = cfg.dataset
    return check_dataset(
        _training_images(cfg), kind=ds.kind, poses=ds.poses, resolution=ds.resolution, camera=cfg.camera,
        full=full, exclude=exclude,
    )  # fmt: skip


def _apply_check(result: DataCheck, mode: DataCheckMode, logger: logging.Logger) -> set[str]:
    """The keys to leave out under ``mode``, or ``TrainingError`` with the list of bad images."""
    if result.errors:
        raise TrainingError("the training data cannot be used:\n" + result.format(limit=20))
    if result.ok:
        logger.info("data check: %s: no problems", result.format().splitlines()[0])
        return set()
    if mode == "error":
        raise TrainingError(
            f"the training data has {len(result.bad_keys)} bad image(s); training did not start:\n"
            f"{result.format(limit=20)}\n"
            "replace or remove them, or train without them: --skip-bad (or `gmpi data check "
            f"{result.images} --write-exclude FILE`, then --exclude FILE)"
        )
    logger.warning(
        "data check: skipping %d bad image(s) (%s); they are never drawn:\n%s",
        len(result.bad_keys),
        ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in result.counts().items()),
        result.format(limit=10),
    )
    return set(result.bad_keys)


def _training_images(cfg: ExperimentConfig) -> Path:
    """The image path of ``cfg.dataset``, or ``TrainingError`` saying which path is missing."""
    ds = cfg.dataset
    if not ds.images:
        raise TrainingError(
            f"no dataset given for preset '{cfg.name}'; pass --data PATH (a dataset_tool zip or image folder)"
        )
    images = Path(ds.images).expanduser()
    if not images.exists():
        raise TrainingError(
            f"dataset not found: {images} does not exist; pass --data PATH (a dataset zip or folder)"
        )
    if ds.kind in ("ffhq", "metfaces") and not ds.poses:
        raise TrainingError(
            f"dataset kind '{ds.kind}' needs camera poses; pass --poses DIR (Deep3DFace coefficient folder)"
        )
    if ds.poses and not Path(ds.poses).expanduser().exists():
        raise TrainingError(f"poses not found: {ds.poses} does not exist; pass --poses PATH to the pose data")
    return images


def _to_cpu(obj: Any) -> Any:
    """A copy of nested dicts/lists/tuples with every tensor detached and moved to the CPU."""
    if isinstance(obj, Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def _mbstd_group(batch: int, chunks: list[int], limit: int = 4) -> int:
    """Largest minibatch-std group ≤ ``limit`` that divides the batch and every chunk size."""
    for g in range(min(limit, batch, *chunks), 0, -1):
        if batch % g == 0 and all(c % g == 0 for c in chunks):
            return g
    return 1


def _budget_postfix(
    done: int, step: int, end: int, elapsed: float, budget: float, stats: dict[str, float]
) -> str:
    """``step 12 (5 this run, 4.1 s/step), about 38 s left, loss_d=…, loss_g=…`` for a time-budgeted run:
    the ETA is to the budget, or to the step limit when that comes first."""
    per_step = elapsed / max(1, done)
    left = max(0.0, budget - elapsed)
    to_limit = (end - step) * per_step
    eta = (
        f"about {format_duration(left)} left"
        if to_limit >= left
        else f"step limit {end} in about {format_duration(to_limit)}"
    )
    losses = f"loss_d={stats['loss_d']:.3f}, loss_g={stats['loss_g']:.3f}"
    return f"step {step} ({done} this run, {per_step:.2f} s/step), {eta}, {losses}"


def _seed_worker(worker_id: int) -> None:  # numpy/random in loader workers from the torch worker seed (§7)
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


class Trainer:
    """Train GMPI (or a plain 2D StyleGAN2) on one process or under torchrun.

    ``init``: ``"random"`` | ``"stylegan2_pkl:<pkl>"`` | ``"native2d:<dir>"`` | ``"native:<dir>"``.
    ``max_steps`` (default ``cfg.train.total_iters``: steps 0 … total_iters − 1, i.e. the official
    "iteration 5000" checkpoint for 5001) or ``max_kimg`` (thousands of real images over all ranks).
    ``ckpt_every`` / ``sample_every`` default to ``cfg.train.sample_interval``; numbered checkpoints
    at multiples of ``cfg.train.model_save_interval`` are kept, others pruned to the newest ``keep_last``.
    ``dataset`` overrides ``cfg.dataset`` (an object yielding ``(image, w2c_flat, yaw, pitch)``).
    Otherwise ``cfg.dataset`` is checked first (``gmpi_core.data.check``, on rank 0; ``data_check_full``:
    decode every image): ``data_check="error"`` refuses to start with the list of bad images, ``"skip"``
    trains without them (warned), ``"off"`` does not check. ``exclude``: image keys never to draw.
    """

    def __init__(
        self,
        cfg: ExperimentConfig,
        out_dir: str | os.PathLike[str],
        *,
        init: str = "random",
        mode: Mode = "gmpi",
        device: str = "auto",
        num_workers: int = 0,
        log_every: int = 10,
        ckpt_every: int | None = None,
        sample_every: int | None = None,
        max_steps: int | None = None,
        max_kimg: float | None = None,
        resume: bool = True,
        progress: bool = True,
        n_sample_latents: int = 16,
        keep_last: int = 2,
        dataset: Dataset | None = None,
        data_check: DataCheckMode = "error",
        data_check_full: bool = False,
        exclude: Iterable[str] = (),
    ) -> None:
        if mode not in ("gmpi", "stylegan2"):
            raise TrainingError(f"unknown mode '{mode}'; choose gmpi or stylegan2")
        self.cfg = cfg
        self.mode: Mode = mode
        self.out = Path(out_dir)
        self.init = init
        self.init_kind, self.init_path = parse_init(init)
        if mode == "stylegan2" and self.init_kind == "native":
            raise TrainingError(
                "--mode stylegan2 cannot start from a GMPI model (native:<dir>); use native2d:<dir>"
            )
        self.env = dist_utils.init_distributed(device)
        self.device = self.env.device
        self.log = dist_utils.rank_logger("gmpi.train", self.env.rank)
        tc = cfg.train
        self.batch = tc.batch_size
        self.split = tc.batch_split
        self.num_workers = num_workers
        self.log_every = max(1, log_every)
        self.ckpt_every = max(1, ckpt_every or tc.sample_interval)
        self.sample_every = max(0, tc.sample_interval if sample_every is None else sample_every)
        self.progress = progress and self.env.is_main
        if max_kimg is not None:
            max_steps = math.ceil(max_kimg * 1000 / (self.batch * self.env.world_size))
        self.max_steps = tc.total_iters if max_steps is None else max_steps
        if self.max_steps < 1:
            raise TrainingError(f"the number of steps must be >= 1, got {self.max_steps}")
        if self.device.type == "cuda":  # official: cudnn.deterministic, no benchmark (docs/method.md §6.1)
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False

        # data ------------------------------------------------------------------------------------
        if data_check not in ("error", "skip", "off"):
            raise TrainingError(f"unknown data_check '{data_check}'; choose error, skip or off")
        self.data_check: DataCheck | None = None  # the check of the training data (None: not checked)
        if dataset is not None:
            self.dataset = dataset
        else:
            self.dataset = self._load_data(data_check, data_check_full, set(exclude))
        self.sampler = ResumableDistributedSampler(
            len(self.dataset),  # type: ignore[arg-type]
            self.batch,
            rank=self.env.rank,
            world_size=self.env.world_size,
            seed=0,  # DistributedSampler's default seed, as the official loader (docs/method.md §7)
        )
        self._batches: Iterator[Any] | None = None
        self._data_epoch = 0
        self._data_pos = 0  # batches of the current epoch already consumed

        # networks, optimisers, EMA ---------------------------------------------------------------
        self.G, self.D = self._build_networks()
        self.G.to(self.device).train()
        self.D.to(self.device).train()
        dist_utils.broadcast_module(self.G)
        dist_utils.broadcast_module(self.D)
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        self.opt_g = torch.optim.Adam(
            self.G.parameters(), lr=tc.lr_g, betas=tc.betas, eps=tc.eps, weight_decay=tc.weight_decay
        )
        self.opt_d = torch.optim.Adam(
            self.D.parameters(), lr=tc.lr_d, betas=tc.betas, eps=tc.eps, weight_decay=tc.weight_decay
        )
        self.ema = ParameterEMA(self.G.parameters(), tc.ema_decay)
        self.ema2 = ParameterEMA(self.G.parameters(), tc.ema2_decay)
        self.lighting = LightingAugmentation(tc.lighting, cfg.camera)
        if mode == "gmpi":
            from gmpi_core.pipeline import plane_layout

            dhw, depth_norm = plane_layout(cfg.camera, tc.n_planes)
            self.plane_dhw, self.depth_norm = dhw.to(self.device), depth_norm.to(self.device)
        self.z_dim: int = self.G.z_dim  # type: ignore[assignment]
        g = torch.Generator().manual_seed(tc.seed)  # fixed sample latents, the same on every run (§6.9)
        self.sample_z = torch.randn(n_sample_latents, self.z_dim, generator=g)

        # state -----------------------------------------------------------------------------------
        self.step_idx = 0  # completed optimiser steps
        seed = tc.seed + self.env.rank
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)
        self.checkpoints = CheckpointDir(
            self.out / "checkpoints", keep_last=keep_last, keep_every=tc.model_save_interval
        )
        self.resumed_from: Path | None = None
        if resume:
            latest = self._agree_on_checkpoint()
            if latest is not None:
                self._load(latest)
            steps = dist_utils.all_gather_objects(self.step_idx)
            if len(set(steps)) > 1:  # cannot happen after the agreement; a hang later would be worse
                raise TrainingError(f"ranks resumed at different steps {steps}")
        if self.env.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.out / "config.json", cfg.model_dump_json(indent=2) + "\n")
            if self.resumed_from is not None:
                self._truncate_log(self.step_idx)
        dist_utils.barrier()
        self._tb: Any = None

    # -- construction ----------------------------------------------------------------------------------
    def _build_networks(self) -> tuple[nn.Module, nn.Module]:
        """G and D of ``--init`` (``GMPI.load``'s opener of model sources, ``pipeline.init_networks``)."""
        from gmpi_core.checkpoints.sources import ModelSource
        from gmpi_core.pipeline import init_networks

        kind, path = self.init_kind, self.init_path
        if kind in ("native2d", "native"):
            assert path is not None
            if not (path / "config.json").is_file():
                raise TrainingError(f"--init {kind}: {path} is not a model directory (no config.json)")
        chunks = [c.shape[0] for c in torch.arange(self.batch).tensor_split(self.split)]
        G, D = init_networks(
            ModelSource(kind, path),
            self.cfg,
            seed=self.cfg.train.seed,  # the same init on every rank
            mode=self.mode,
            mbstd_group_size=_mbstd_group(self.batch, chunks) if self.mode == "stylegan2" else None,
            logger=self.log,
        )
        assert D is not None
        if kind == "stylegan2_pkl":
            self._check_architecture(G, D, str(path))
        return G, D

    def _check_architecture(self, G: nn.Module, D: nn.Module, source: str) -> None:
        diff = []
        pose_keys = {"c_dim", "cmap_dim", "mbstd_group_size", "mbstd_num_channels"}  # set by the mode
        for what, net, want in (
            ("G", G, self.cfg.generator.model_dump()),
            ("D", D, self.cfg.discriminator.model_dump()),
        ):
            have = getattr(net, "config", {})
            diff += [
                f"{what}.{k}: preset {want[k]!r} vs checkpoint {have[k]!r}"
                for k in have
                if k in want and want[k] != have[k] and not (what == "D" and k in pose_keys)
            ]
        if diff:
            raise TrainingError(
                f"{source} does not match the networks of preset '{self.cfg.name}' ({'; '.join(diff)}); "
                "choose the preset of the checkpoint's resolution or edit the config with --config-json"
            )

    # -- data ------------------------------------------------------------------------------------------
    def _load_data(self, check: DataCheckMode, full: bool, exclude: set[str]) -> Dataset:
        """``cfg.dataset``, checked once on rank 0 (every rank gets the same result and the same list)."""
        if check != "off":
            payload: Any = None
            if self.env.is_main:
                try:
                    payload = check_training_data(self.cfg, full=full, exclude=exclude)
                except TrainingError as e:  # a missing path: every rank raises it, none waits forever
                    payload = e
            payload = dist_utils.broadcast_object(payload, device=self.device)
            if isinstance(payload, Exception):
                raise payload
            self.data_check = payload
        quiet = logging.getLogger("gmpi.train.data_check.quiet")  # other ranks: rank 0 has said it
        quiet.setLevel(logging.ERROR)
        return load_training_data(
            self.cfg, check=check, full_check=full, exclude=exclude, result=self.data_check,
            logger=self.log if self.env.is_main else quiet,
        )  # fmt: skip

    def _new_epoch_iterator(self) -> Iterator[Any]:
        self.sampler.set_epoch(self._data_epoch, self._data_pos)
        generator = torch.Generator().manual_seed(self.cfg.train.seed * 100_003 + self._data_epoch)
        loader = DataLoader(
            self.dataset,
            batch_sampler=self.sampler,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            worker_init_fn=_seed_worker if self.num_workers > 0 else None,
            generator=generator,  # keeps the loader from drawing on the global torch RNG
        )
        return iter(loader)

    def _next_batch(self) -> tuple[Tensor, Tensor]:
        """(real images [b, 3, R, R] in [-1, 1], real w2c conditions [b, 16]) on the device."""
        if self._batches is None:
            self._batches = self._new_epoch_iterator()
        try:
            batch = next(self._batches)
        except StopIteration:
            self._data_epoch += 1
            self._data_pos = 0
            self._batches = self._new_epoch_iterator()
            batch = next(self._batches)
        self._data_pos += 1
        image, w2c = batch[0], batch[1]
        return image.to(self.device, non_blocking=True), w2c.to(self.device, non_blocking=True).float()

    # -- cameras and rendering -------------------------------------------------------------------------
    def sample_poses(self, n: int) -> tuple[Tensor, Tensor]:
        """(yaw [n], pitch [n]) from the truncated-Gaussian training prior, on the CPU RNG (method §1.4)."""
        from gmpi_core.camera import sample_sphere_poses

        cam = self.cfg.camera
        return sample_sphere_poses(
            n, cam.yaw_std, cam.pitch_std, cam.truncation_k, yaw_mean=cam.yaw_mean, pitch_mean=cam.pitch_mean
        )

    def render(self, rgba: Tensor, yaw: Tensor, pitch: Tensor) -> tuple[Tensor, Tensor]:
        """MPIs rgba [B, N, 4, T, T] at poses [B] → (image [B, 3, R, R] in [-1, 1], w2c condition [B, 16])."""
        from gmpi_core.camera import camera_c2w, w2c_condition
        from gmpi_core.mpi.render import render_mpi

        cam = self.cfg.camera
        c2w = camera_c2w(cam, yaw, pitch).to(self.device)
        image, _ = render_mpi(rgba, self.plane_dhw, c2w, cam.fov_deg, self.cfg.generator.img_resolution)
        return image, w2c_condition(c2w).to(image.dtype)

    def lighting_active(self, step: int) -> bool:
        """Lighting augmentation from the step after ``start_iter`` on (official ``s > 1000``, §6.6)."""
        light = self.cfg.train.lighting
        return self.mode == "gmpi" and light.enabled and step > light.start_iter

    def _generate(self, z: Tensor, light: bool) -> Tensor:
        """G(z) in train mode: MPI [B, N, 4, T, T] (optionally shaded) or a 2D image [B, 3, R, R]."""
        psi = self.cfg.train.truncation_psi
        if self.mode == "stylegan2":
            return self.G(z, truncation_psi=psi)
        rgba = self.G(z, self.depth_norm, truncation_psi=psi)
        return self.lighting(rgba, self.plane_dhw) if light else rgba

    def _fake_views(self, z: Tensor, light: bool, yaw: Tensor | None = None, pitch: Tensor | None = None):
        """Fake images and their D conditions for latents z: one view per latent at (yaw, pitch) or at
        freshly sampled prior poses. 2D mode: G's images and no condition."""
        out = self._generate(z, light)
        if self.mode == "stylegan2":
            return out, None
        if yaw is None or pitch is None:
            yaw, pitch = self.sample_poses(z.shape[0])
        return self.render(out, yaw, pitch)

    def find_worst_views(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Per latent, the lowest-logit of ``n_views_per_z`` random views (docs/method.md §6.4 step 3): no
        grad, no lighting, latents 1/2/4 at a time for T = 1024/512/other."""
        v = self.cfg.train.n_views_per_z
        res = self.cfg.generator.img_resolution
        minibatch = 1 if res >= 1024 else 2 if res >= 512 else 4
        psi = self.cfg.train.truncation_psi

        def score(group: slice, yaw: Tensor, pitch: Tensor) -> Tensor:
            rgba = self.G(z[group], self.depth_norm, truncation_psi=psi)
            image, cond = self.render(rgba.repeat_interleave(v, dim=0), yaw, pitch)
            return self.D(image, cond)

        return select_worst_views(z.shape[0], v, minibatch, self.sample_poses, score)

    # -- one step ------------------------------------------------------------------------------------
    def step(self) -> dict[str, float]:
        """One D update and one G update (docs/method.md §6.4); returns this rank's losses of the step."""
        t0 = time.perf_counter()
        s = self.step_idx
        tc = self.cfg.train
        light = self.lighting_active(s)
        _, ka, kd = self.lighting.coefficients() if light else (0.0, 0.0, 0.0)
        real, c_real = self._next_batch()
        b, split = real.shape[0], self.split
        cond = c_real if self.mode == "gmpi" else None

        # discriminator ---------------------------------------------------------------------------
        self.D.requires_grad_(True)
        with torch.no_grad():
            z = torch.randn(b, self.z_dim, device=self.device)
            views = [self._fake_views(zc, light) for zc in z.tensor_split(split)]
            fake = torch.cat([im for im, _ in views])
            c_fake = torch.cat([c for _, c in views]) if self.mode == "gmpi" else None
        # R1 at every step, or lazily every r1_interval-th step with γ·interval (same expected penalty)
        do_r1 = s % tc.r1_interval == 0
        real = real.detach().requires_grad_(do_r1)
        real_logits = self.D(real, cond)
        r1 = (
            r1_penalty(real_logits, real, tc.r1_gamma * tc.r1_interval)
            if do_r1
            else real_logits.new_zeros(())
        )
        fake_logits = self.D(fake, c_fake)
        loss_d_real, loss_d_fake = d_logistic_loss(real_logits, fake_logits)
        self.opt_d.zero_grad(set_to_none=True)
        (loss_d_real + loss_d_fake + r1).backward()
        dist_utils.allreduce_gradients(self.D)
        grad_norm_d = torch.nn.utils.clip_grad_norm_(self.D.parameters(), tc.grad_clip)
        self.opt_d.step()

        # generator -------------------------------------------------------------------------------
        self.D.requires_grad_(False)
        z = torch.randn(b, self.z_dim, device=self.device)
        yaw: Tensor | None = None
        pitch: Tensor | None = None
        if self.mode == "gmpi":
            if tc.select_worst_view:
                yaw, pitch = self.find_worst_views(z)
            else:
                yaw, pitch = self.sample_poses(b)
        self.opt_g.zero_grad(set_to_none=True)
        loss_g = 0.0
        for i, zc in enumerate(z.tensor_split(split)):
            yc = None if yaw is None else yaw.tensor_split(split)[i]
            pc = None if pitch is None else pitch.tensor_split(split)[i]
            image, c_fake_g = self._fake_views(zc, light, yc, pc)
            chunk_loss = g_nonsaturating_loss(self.D(image, c_fake_g))
            (chunk_loss / split).backward()
            loss_g += float(chunk_loss.detach()) / split
        dist_utils.allreduce_gradients(self.G)
        grad_norm_g = torch.nn.utils.clip_grad_norm_(self.G.parameters(), tc.grad_clip)
        self.opt_g.step()
        decay = self.ema.update(self.G.parameters())
        self.ema2.update(self.G.parameters())
        self.D.requires_grad_(True)

        self.step_idx += 1
        dt = time.perf_counter() - t0
        d_real, d_fake = loss_d_real.detach(), loss_d_fake.detach()
        return {
            "loss_d": float(d_real + d_fake),
            "loss_d_real": float(d_real),
            "loss_d_fake": float(d_fake),
            "r1": float(r1.detach()),
            "loss_g": loss_g,
            "grad_norm_d": float(grad_norm_d),
            "grad_norm_g": float(grad_norm_g),
            "ema_decay": decay,
            "ka": ka,
            "kd": kd,
            "step_time": dt,
            "imgs_per_s": b * self.env.world_size / dt,
        }

    # -- the loop ------------------------------------------------------------------------------------
    def train(self, until: int | None = None, max_seconds: float | None = None) -> dict[str, float] | None:
        """Run steps until ``until`` (default ``max_steps``) steps are complete or ``max_seconds`` of wall
        time have passed; checkpoint, log and sample on the way and at the end. Returns the last step's
        statistics (None if nothing ran). With ``max_seconds`` the progress bar counts the seconds of the
        budget (steps done, s/step and the ETA to the budget alongside) instead of the step total."""
        end = self.max_steps if until is None else min(until, self.max_steps)
        started = time.perf_counter()
        deadline = None if max_seconds is None else started + max_seconds
        bar = self._progress_bar(end, max_seconds)
        stats: dict[str, float] | None = None
        last_saved = self.step_idx if self.resumed_from is not None else -1
        first_step = self.step_idx
        try:
            while self.step_idx < end and (deadline is None or time.perf_counter() < deadline):
                stats = self.step()
                s = self.step_idx
                if bar is not None and max_seconds is not None:
                    elapsed = time.perf_counter() - started
                    bar.update(min(elapsed, max_seconds) - bar.n)
                    bar.set_postfix_str(
                        _budget_postfix(s - first_step, s, end, elapsed, max_seconds, stats), refresh=True
                    )
                elif bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss_d=f"{stats['loss_d']:.3f}", loss_g=f"{stats['loss_g']:.3f}")
                if s % self.log_every == 0 or s == 1 or s == end:
                    self._log(stats)
                if s % self.ckpt_every == 0:
                    self.save_checkpoint()
                    last_saved = s
                if self.sample_every and s % self.sample_every == 0:
                    self.write_samples()
            if self.step_idx != last_saved:
                self.save_checkpoint()
                if self.sample_every:
                    self.write_samples()
        finally:
            if bar is not None:
                bar.close()
            if self._tb:
                self._tb.flush()
        return stats

    def close(self) -> None:
        """Release the data loader workers and the TensorBoard writer."""
        self._batches = None
        if self._tb:
            self._tb.close()
        self._tb = None

    def _progress_bar(self, end: int, max_seconds: float | None = None) -> Any:
        """Steps of the step total, or with a time budget seconds of the budget (steps in the postfix)."""
        if not self.progress or self.step_idx >= end:
            return None
        from tqdm.auto import tqdm

        if max_seconds is not None:
            return tqdm(
                total=max_seconds,
                desc=f"gmpi train {self.cfg.name}",
                unit="s",
                dynamic_ncols=True,
                bar_format="{desc}: {percentage:3.0f}%|{bar:20}| {n:.0f}/{total:.0f} s of the time budget"
                "{postfix}",
                postfix=f"step {self.step_idx}, timing the first step",
            )
        return tqdm(
            total=end,
            initial=self.step_idx,
            desc=f"gmpi train {self.cfg.name}",
            unit="step",
            dynamic_ncols=True,
        )

    # -- logging -------------------------------------------------------------------------------------
    def _log(self, stats: dict[str, float]) -> None:
        if not self.env.is_main:
            return
        kimg = self.step_idx * self.batch * self.env.world_size / 1000
        record = {"step": self.step_idx, "kimg": kimg, **stats}
        with open(self.out / "log.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        tb = self._tensorboard()
        if tb:
            for k, v in stats.items():
                tb.add_scalar(f"train/{k}", v, self.step_idx)

    def _tensorboard(self) -> Any:
        if self._tb is None:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.out / "tb"))
            except ImportError:  # tensorboard is a dependency; a broken install only loses the event files
                warnings.warn("tensorboard is not importable: no TensorBoard event files", stacklevel=2)
                self._tb = False
        return self._tb

    def _truncate_log(self, step: int) -> None:
        """Drop log lines past ``step`` (written by the interrupted run after its last checkpoint)."""
        path = self.out / "log.jsonl"
        if not path.is_file():
            return
        kept = []
        for line in path.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
        atomic_write_text(path, "".join(k + "\n" for k in kept))

    # -- checkpoints ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume, except the RNG states of the other ranks (added on save)."""
        return _to_cpu(
            {
                "format": CHECKPOINT_FORMAT,
                "version": _CHECKPOINT_VERSION,
                "step": self.step_idx,
                "mode": self.mode,
                "init": self.init,
                "config": self.cfg.model_dump_json(),
                "world_size": self.env.world_size,
                "G": self.G.state_dict(),
                "D": self.D.state_dict(),
                "ema": self.ema.state_dict(),
                "ema2": self.ema2.state_dict(),
                "opt_g": self.opt_g.state_dict(),
                "opt_d": self.opt_d.state_dict(),
                "lighting_n_calls": self.lighting.n_calls,
                "data": {"epoch": self._data_epoch, "batch": self._data_pos},
            }
        )

    def save_checkpoint(self) -> Path | None:
        """Write the training checkpoint and the native model export (rank 0); all ranks wait."""
        rng = dist_utils.all_gather_objects(capture_rng_state(self.device))
        digests = dist_utils.all_gather_objects(
            {"G": dist_utils.module_digest(self.G), "D": dist_utils.module_digest(self.D)}
        )
        path = None
        if self.env.is_main:
            if any(d != digests[0] for d in digests):
                self.log.warning("parameters differ between ranks at step %d: %s", self.step_idx, digests)
            state = self.state_dict()
            state["rng"] = rng
            state["param_digests"] = digests
            path = self.checkpoints.save(self.step_idx, state)
            self.export_model()
            self.log.info("saved %s", path)
        dist_utils.barrier()
        return path

    def export_model(self, directory: str | os.PathLike[str] | None = None) -> Path:
        """The native model directory (generator with EMA weights + ``discriminator/``) for render/eval."""
        from gmpi_core.checkpoints.native import save_pretrained

        target = Path(directory) if directory is not None else self.out / "model"
        ema_state = self.ema.named_shadow(self.G)
        extra = {"experiment": self.cfg.model_dump(mode="json"), "step": self.step_idx, "mode": self.mode}
        save_pretrained(target, self.G, ema_state=ema_state, extra=extra)
        save_pretrained(target / "discriminator", self.D, extra={"step": self.step_idx, "mode": self.mode})
        return target

    def _agree_on_checkpoint(self) -> Path | None:
        """The checkpoint every rank resumes from: the newest any rank holds.

        Without a shared file system (nodes of a multi-node run, each with its own ``--out``), only the
        nodes that held rank 0 have the checkpoints; a node restarted elsewhere, or an elastic restart
        that moved rank 0, would otherwise resume from an older one or from scratch, and the ranks would
        train different steps. Ranks lacking the newest checkpoint receive a copy over the process group
        (written atomically into their own ``checkpoints/``) before anyone loads.
        """
        local = self.checkpoints.latest()
        if self.env.world_size == 1:
            return local
        mine = (checkpoint_step(local), local.name if local is not None else None)
        held = dist_utils.all_gather_objects(mine)
        best = max(step for step, _ in held)
        if best < 0:
            return None
        src = min(r for r, (step, _) in enumerate(held) if step == best)
        name = held[src][1]
        lacking = [r for r, (step, _) in enumerate(held) if step != best]
        if lacking:
            if self.env.is_main:
                self.log.warning(
                    "rank(s) %s lack checkpoint %s (step %d); rank %d sends its copy",
                    lacking,
                    name,
                    best,
                    src,
                )
            payload = dist_utils.broadcast_object(
                local.read_bytes() if self.env.rank == src and local is not None else None,
                src=src,
                device=self.device,
            )
            if self.env.rank in lacking:
                atomic_write_bytes(self.checkpoints.root / name, payload)
                atomic_write_text(self.checkpoints.root / "latest", name + "\n")
            del payload
            dist_utils.barrier()
        return self.checkpoints.root / name

    def _load(self, path: Path) -> None:
        state = load_checkpoint(path)
        if state.get("format") != CHECKPOINT_FORMAT:
            raise TrainingError(f"{path} is not a gmpi training checkpoint (format {state.get('format')!r})")
        if state["mode"] != self.mode:
            raise TrainingError(
                f"{path} was written by a --mode {state['mode']} run, this run is --mode {self.mode}; "
                "use another --out or the same mode"
            )
        if state["config"] != self.cfg.model_dump_json():
            self.log.warning("the configuration differs from the checkpoint's; resuming with the new one")
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        self.ema.load_state_dict(state["ema"])
        self.ema2.load_state_dict(state["ema2"])
        self.ema.to(self.device)
        self.ema2.to(self.device)
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.lighting.n_calls = int(state["lighting_n_calls"])
        self.step_idx = int(state["step"])
        self._data_epoch = int(state["data"]["epoch"])
        self._data_pos = int(state["data"]["batch"])
        rng = state["rng"]
        if len(rng) == self.env.world_size:
            restore_rng_state(rng[self.env.rank], self.device)
        else:  # another process count: the data shards and RNG streams cannot continue exactly
            self.log.warning(
                "checkpoint was written by %d process(es), this run has %d: continuing with fresh RNG "
                "streams and a new data epoch (losses will not match an uninterrupted run)",
                len(rng),
                self.env.world_size,
            )
            seed = self.cfg.train.seed + self.env.rank + 1_000_003 * self.step_idx
            torch.manual_seed(seed)
            np.random.seed(seed % 2**32)
            random.seed(seed)
            self._data_epoch += 1
            self._data_pos = 0
        self._batches = None
        self.resumed_from = path
        self.log.info("resumed from %s at step %d", path, self.step_idx)

    # -- samples -------------------------------------------------------------------------------------
    @torch.no_grad()
    def write_samples(self) -> list[Path]:
        """Sample grids with the EMA generator (rank 0; the training RNG streams are untouched, §6.9):
        fixed latents at the canonical and a tilted pose, and the RGB / alpha planes of the first latent."""
        if not self.env.is_main:
            return []
        from gmpi_core.pipeline import GMPI
        from gmpi_core.render.io import grid, to_uint8

        self.ema.copy_to(self.G_ema.parameters())
        for dst, src in zip(self.G_ema.buffers(), self.G.buffers(), strict=True):
            dst.copy_(src)
        out = self.out / "samples"
        prefix = f"{self.step_idx:07d}"
        ncols = max(1, math.ceil(math.sqrt(len(self.sample_z))))
        devices = [self.device] if self.device.type == "cuda" else []
        psi = self.cfg.train.truncation_psi
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.cfg.train.seed)
            if self.mode == "stylegan2":
                images = torch.cat(
                    [self.G_ema(z.to(self.device), truncation_psi=psi) for z in self.sample_z.split(8)]
                )
                tiles = [to_uint8(im) for im in images]
                return self._write_grids(out, prefix, {"fixed_ema": grid(tiles, ncols=ncols)})
            cam = self.cfg.camera
            offset = 0.3 if self.cfg.dataset.kind == "afhq" else 0.5
            tilt = offset if cam.truncation_k * cam.yaw_std >= offset else 0.0
            grids: dict[str, np.ndarray] = {}
            fixed, tilted, first_mpi = [], [], None
            gmpi = GMPI(self.G_ema, self.cfg)  # type: ignore[arg-type]  # gmpi mode: a GMPIGenerator
            noise = gmpi.noise_generator(self.cfg.train.seed)  # the stream manual_seed(seed) gives
            for z in self.sample_z.split(8):
                n_planes = self.cfg.train.n_planes
                rgba = gmpi.generate(z=z, n_planes=n_planes, truncation_psi=psi, generator=noise).rgba
                first_mpi = rgba[0] if first_mpi is None else first_mpi
                zeros = torch.zeros(z.shape[0])
                fixed.append(self.render(rgba, zeros, zeros)[0])
                tilted.append(self.render(rgba, zeros + tilt, zeros)[0])
            assert first_mpi is not None
            for name, views in (("fixed_ema", fixed), ("tilted_ema", tilted)):
                tiles = [to_uint8(im) for im in torch.cat(views)]
                grids[name] = grid(tiles, ncols=ncols)
            n = first_mpi.shape[0]
            cols = max(1, math.ceil(math.sqrt(n)))
            rgb_tiles = [to_uint8(p, (0.0, 1.0)) for p in first_mpi[:, :3]]
            alpha_tiles = [to_uint8(p, (0.0, 1.0)) for p in first_mpi[:, 3:]]
            grids["mpi_rgb"] = grid(rgb_tiles, ncols=cols, pad=1)
            grids["mpi_alpha"] = grid(alpha_tiles, ncols=cols, pad=1)
        return self._write_grids(out, prefix, grids)

    def _write_grids(self, out: Path, prefix: str, grids: dict[str, np.ndarray]) -> list[Path]:
        """``<prefix>_<name>.png`` for every grid, and the same grids as TensorBoard images
        (``samples/<name>``) at the current step."""
        from gmpi_core.render.io import save_png

        written = [save_png(out / f"{prefix}_{name}.png", image) for name, image in grids.items()]
        tb = self._tensorboard()
        if tb:
            for name, image in grids.items():
                grey = image.ndim == 2 or image.shape[-1] == 1
                rgb = np.repeat(image.reshape(image.shape[:2])[..., None], 3, -1) if grey else image[..., :3]
                tb.add_image(f"samples/{name}", rgb, self.step_idx, dataformats="HWC")
            tb.flush()
        return written
