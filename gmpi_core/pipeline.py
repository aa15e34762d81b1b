"""The GMPI pipeline: a generator plus the camera set-up it was trained with (docs/method.md §1-§4).

One object that turns latents into MPIs and MPIs into views; everything else (training, evaluation,
renders, services) goes through it rather than re-assembling generator, planes and cameras.

    >>> gmpi = GMPI.random("synthetic32", seed=0)
    >>> mpi = gmpi.generate(seeds=[0], n_planes=8)
    >>> image, depth = gmpi.render(mpi, yaw=0.2, pitch=0.0)     # [1,3,32,32] in [-1,1], [1,1,32,32]

Every model source opens through :meth:`GMPI.load` (``gmpi_core.checkpoints.sources`` parses them) and
every MPI comes from :meth:`GMPI.generate`, whose synthesis noise is drawn from a ``torch.Generator``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from gmpi_core.camera import camera_c2w
from gmpi_core.checkpoints.sources import ModelSource, ModelSourceError, parse_source
from gmpi_core.config import ExperimentConfig
from gmpi_core.config import preset as get_preset
from gmpi_core.mpi.planes import plane_layout
from gmpi_core.mpi.render import OutOfBounds, render_mpi
from gmpi_core.networks import Discriminator, GMPIGenerator, StyleGAN2Generator
from gmpi_core.networks.synthesis import assemble_mpi

__all__ = [
    "DEMO_CHECKPOINT",
    "GMPI",
    "MPI",
    "experiment_for",
    "generate_planes",
    "init_networks",
    "iter_plane_chunks",
    "mapping_latents",
    "noise_from",
    "plane_layout",
    "zeroed_w_avg",
]

log = logging.getLogger("gmpi.pipeline")

# The shipped demo model, opened by ``GMPI.load(None)`` (a random synthetic64 model when it is absent).
DEMO_CHECKPOINT = Path(__file__).parent / "assets" / "demo_model"
# The preset around an imported StyleGAN2-ADA pickle when none is named.
STYLEGAN2_DEFAULT_PRESET = "FFHQ256"
# Keys of GeneratorConfig that the plain 2D StyleGAN2 generator takes.
_SG2_KEYS = (
    "z_dim", "c_dim", "w_dim", "img_resolution", "img_channels", "channel_base", "channel_max",
    "num_fp16_res", "conv_clamp", "mapping_layers",
)  # fmt: skip
# The official training script draws its 25 fixed sample latents before building the networks (§4.5, §6.1).
_OFFICIAL_FIXED_LATENTS = 25


@dataclass
class MPI:
    """A batch of multiplane images and where their planes sit in the world (docs/method.md §2)."""

    rgba: Tensor  # [B, N, 4, T, T] in [0, 1], plane 0 nearest, last plane = opaque background
    plane_dhw: Tensor  # [N, 3] (depth, height, width) in world units
    depth_norm: Tensor  # [N] normalised plane depth z̃ in [0, 1] (docs/method.md §2.4)

    @property
    def n_planes(self) -> int:
        return int(self.rgba.shape[1])


def experiment_for(generator: nn.Module, preset_name: str) -> ExperimentConfig:
    """The preset's camera, training and eval settings around ``generator``'s own architecture (its
    resolution and widths win: a checkpoint is what it is; the discriminator and dataset follow)."""
    cfg = get_preset(preset_name)
    fields = type(cfg.generator).model_fields
    arch = {k: v for k, v in (getattr(generator, "config", None) or {}).items() if k in fields}
    res = arch.get("img_resolution", cfg.generator.img_resolution)
    return cfg.with_updates(
        generator=arch, discriminator={"img_resolution": res}, dataset={"resolution": res}
    )


# -- model sources -> networks: the one place that knows how to open each source kind ----------------------


def init_networks(
    source: ModelSource,
    cfg: ExperimentConfig | None = None,
    *,
    seed: int,
    mode: str = "gmpi",
    discriminator: bool = True,
    official_latents: bool = True,
    mbstd_group_size: int | None = None,
    use_ema: bool | None = None,
    source_generator: nn.Module | None = None,
    logger: logging.Logger | None = None,
) -> tuple[nn.Module, nn.Module | None]:
    """(G, D or None): the networks of ``cfg`` (``mode`` ``"gmpi"``: GMPIGenerator + pose-conditioned D;
    ``"stylegan2"``: a plain 2D StyleGAN2 + unconditional D with ``mbstd_group_size``), randomly initialised
    under ``torch.manual_seed(seed)`` (after the 25 latents the official script draws first, with
    ``official_latents``; the caller's RNG is untouched), then every tensor ``source`` holds copied in by name
    (``copy_matching_tensors``: absent names keep their random values, ``b4.out`` broadcasts, §4.5):

    * ``random``: nothing to copy;
    * ``native`` / ``native2d``: the generator's EMA weights (``use_ema=None``: when present) and, with
      ``discriminator``, ``DIR/discriminator`` (a warning and a random D when there is none);
      ``source_generator``: the source's generator when the caller has already loaded it;
    * ``stylegan2_pkl``: ``G_ema`` and ``D``; in ``gmpi`` mode GMPI's own initialisation from the pickle
      (``init_gmpi_from_stylegan2`` under ``seed``: the pickle's architecture with ``cfg``'s alpha head and
      plane settings, without ``cfg`` the default ones).

    ``GMPI.load`` and the trainer's ``--init`` both start here."""
    path = source.path
    if source.kind == "stylegan2_pkl" and mode == "gmpi":
        from gmpi_core.checkpoints.stylegan2_pkl import init_gmpi_from_stylegan2

        assert path is not None
        if cfg is None:
            return init_gmpi_from_stylegan2(path, seed=seed)
        g = cfg.generator
        return init_gmpi_from_stylegan2(
            path,
            alpha_head=g.alpha_head,
            seed=seed,
            alpha_largest_res=g.alpha_largest_res,
            n_train_planes=g.n_train_planes,
            depth2alpha_n_z_bins=g.depth2alpha_n_z_bins,
        )
    if source.kind not in ("random", "native", "native2d", "stylegan2_pkl"):
        raise ModelSourceError(f"cannot initialise networks from a {source.kind} model")
    if cfg is None:
        raise ValueError(f"initialising networks from a {source.kind} source needs the experiment config")
    g_cfg, d_cfg = cfg.generator.model_dump(), cfg.discriminator.model_dump()
    G: nn.Module
    D: nn.Module | None = None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the same init on every rank
        if official_latents:
            torch.randn(_OFFICIAL_FIXED_LATENTS, g_cfg["z_dim"])
        if mode == "gmpi":
            G = GMPIGenerator(**g_cfg)
        else:
            d_cfg["c_dim"] = 0
            if mbstd_group_size is not None:
                d_cfg["mbstd_group_size"] = mbstd_group_size
            G = StyleGAN2Generator(**{k: g_cfg[k] for k in _SG2_KEYS})
        if discriminator:
            D = Discriminator(**d_cfg)
    if source.kind == "random":
        return G, D
    from gmpi_core.checkpoints.native import copy_matching_tensors, load_pretrained

    assert path is not None
    if source.kind == "stylegan2_pkl":
        from gmpi_core.checkpoints.stylegan2_pkl import read_stylegan2_pkl

        pkl = read_stylegan2_pkl(path)
        copy_matching_tensors(pkl.G_ema.state_dict, G, source=f"G_ema of {path}")
        if pkl.D is not None and D is not None:
            copy_matching_tensors(pkl.D.state_dict, D, source=f"D of {path}")
        return G, D
    # native2d / native: G from the EMA weights by name, D by name (b4.out broadcast, docs/method.md §4.5)
    src_g = source_generator if source_generator is not None else load_pretrained(path, use_ema=use_ema)
    copy_matching_tensors(src_g.state_dict(), G, source=f"generator of {path}")
    if D is not None:
        d_dir = path / "discriminator"
        if (d_dir / "config.json").is_file():
            copy_matching_tensors(load_pretrained(d_dir).state_dict(), D, source=f"discriminator of {path}")
        else:
            (logger or log).warning("%s has no discriminator/; D starts from a random initialisation", path)
    return G, D


# -- latents -> planes: the pieces of GMPI.generate ---------------------------------------------------------


@contextmanager
def zeroed_w_avg(generator: GMPIGenerator) -> Iterator[None]:
    """Temporarily set w̄ = 0, so ψ < 1 truncates toward w = 0 like the official renders, whose
    evaluation never restores the ``w_avg`` buffer (docs/method.md §9.1, §10). Restored on exit."""
    w_avg = generator.mapping.w_avg
    saved = w_avg.clone()
    w_avg.zero_()
    try:
        yield
    finally:
        w_avg.copy_(saved)


@torch.no_grad()
def mapping_latents(
    generator: GMPIGenerator, z: Tensor, truncation_psi: float = 1.0, zero_w_avg: bool = False
) -> Tensor:
    """z [B, z_dim] → ws [B, num_ws, w_dim] = w̄ + ψ (w − w̄), with w̄ the real running mean or 0."""
    with zeroed_w_avg(generator) if zero_w_avg else nullcontext():
        return generator.mapping(z, None, truncation_psi=truncation_psi, update_w_avg=False)


@contextmanager
def noise_from(generator: torch.Generator | None, device: torch.device) -> Iterator[None]:
    """Draw what runs inside (the synthesis noise, ``torch.randn`` on ``device``) from ``generator``.

    The global RNG of ``device`` is forked and set to the generator's state, so the caller's RNG is
    untouched; the generator then advances past the draws. A generator seeded with ``s`` gives the noise
    that ``torch.manual_seed(s)`` gives. ``None``: the global RNG as it is."""
    if generator is None:
        yield
        return
    if generator.device.type != device.type:
        raise ValueError(
            f"the noise generator is on {generator.device} but the model on {device}; "
            f"pass torch.Generator(device={str(device)!r}) (GMPI.noise_generator(seed) makes one)"
        )
    cuda = device.type == "cuda"
    with torch.random.fork_rng(devices=[device] if cuda else []):
        if cuda:
            torch.cuda.set_rng_state(generator.get_state(), device)
        else:
            torch.set_rng_state(generator.get_state())
        yield
        generator.set_state(torch.cuda.get_rng_state(device) if cuda else torch.get_rng_state())


def _chunk_size(n: int, chunk_n_planes: int | None) -> int:
    chunk = n if chunk_n_planes is None or chunk_n_planes <= 0 else chunk_n_planes
    if chunk < 2 and n > 1:
        raise ValueError(
            f"chunk_n_planes must be >= 2 (or <= 0 for all planes at once), got {chunk_n_planes}"
        )
    return chunk


@torch.no_grad()
def _synthesize(
    generator: GMPIGenerator,
    ws: Tensor,
    depth_norm: Tensor,
    noise_mode: str,
    background_alpha_full: bool,
    noise: torch.Generator | None,
) -> Tensor:
    with noise_from(noise, ws.device):
        return generator.synthesis(
            ws, depth_norm.to(ws.device), noise_mode=noise_mode, background_alpha_full=background_alpha_full
        )


def iter_plane_chunks(
    generator: GMPIGenerator,
    ws: Tensor,
    plane_depth_norm: Tensor,
    *,
    chunk_n_planes: int | None = None,
    noise_mode: str = "random",
    noise: torch.Generator | None = None,
) -> Iterator[tuple[int, Tensor]]:
    """Yield (first plane index, planes [B, n, 4, R, R]) for consecutive chunks of ``plane_depth_norm`` [N].

    Every chunk is synthesised from the same ``ws`` with the same noise (each chunk starts from the state
    ``noise`` had before the first), so alphas equal those of one call over all planes. Each chunk is a
    separate MPI to the network: its last plane carries the background colour, and its alpha is left as
    generated (``background_alpha_full=False``); :func:`generate_planes` reassembles the colours.
    """
    n = plane_depth_norm.numel()
    chunk = _chunk_size(n, chunk_n_planes)
    start_state = noise.get_state() if noise is not None else None
    for start in range(0, n, chunk):
        if noise is not None and start_state is not None:
            noise.set_state(start_state)
        yield (
            start,
            _synthesize(generator, ws, plane_depth_norm[start : start + chunk], noise_mode, False, noise),
        )


def generate_planes(
    generator: GMPIGenerator,
    ws: Tensor,
    plane_depth_norm: Tensor,
    *,
    noise: torch.Generator | None = None,
    noise_mode: str = "random",
    background_alpha_full: bool = True,
    chunk_n_planes: int | None = None,
) -> Tensor:
    """MPI [B, N, 4, R, R] for ws [B, num_ws, w_dim] and z̃ [N], synthesised ``chunk_n_planes`` at a time.

    Unlike the original's chunked generation (docs/method.md §10 PITFALL: every chunk's last plane became an
    opaque background with its own noise), the result equals one call over all N planes: planes 0..N−2 get the
    shared colour, plane N−1 the background colour, alphas come from identically seeded chunks.
    """
    n = plane_depth_norm.numel()
    if chunk_n_planes is None or chunk_n_planes <= 0 or chunk_n_planes >= n:
        return _synthesize(generator, ws, plane_depth_norm, noise_mode, background_alpha_full, noise)
    alphas, rgb, background = [], None, None
    for start, planes in iter_plane_chunks(
        generator, ws, plane_depth_norm, chunk_n_planes=chunk_n_planes, noise_mode=noise_mode, noise=noise
    ):
        if start == 0:  # the first chunk (>= 2 planes): its first has the colour, its last the background
            rgb, background = planes[:, 0, :3], planes[:, -1, :3]
        alphas.append(planes[:, :, 3])
    assert rgb is not None and background is not None
    return assemble_mpi(rgb, background, torch.cat(alphas, 1), background_alpha_full)


class GMPI:
    """A GMPI generator together with its experiment configuration.

    ``source``: where it was loaded from (set by :meth:`load`); ``info``: what loading learnt besides
    (e.g. an official checkpoint's ``ema_step``, a random model's ``init_seed``)."""

    def __init__(
        self,
        generator: GMPIGenerator,
        config: ExperimentConfig,
        *,
        source: ModelSource | None = None,
        info: dict[str, Any] | None = None,
    ) -> None:
        self.generator = generator
        self.config = config
        self.source = source
        self.info: dict[str, Any] = dict(info or {})

    # -- construction ------------------------------------------------------------------------------
    @classmethod
    def random(cls, config: ExperimentConfig | str, seed: int = 0) -> GMPI:
        """A randomly initialised model (for smoke tests and as the start of training from scratch)."""
        cfg = get_preset(config) if isinstance(config, str) else config
        source = ModelSource("random", preset=cfg.name)
        generator, _ = init_networks(source, cfg, seed=seed, discriminator=False, official_latents=False)
        assert isinstance(generator, GMPIGenerator)
        return cls(generator.eval().requires_grad_(False), cfg, source=source, info={"init_seed": seed})

    @classmethod
    def load(
        cls,
        source: str | Path | ModelSource | None,
        *,
        preset: str | None = None,
        keep_architecture: bool = False,
        seed: int = 0,
        use_ema: bool | None = None,
        map_location: str = "cpu",
    ) -> GMPI:
        """The one way to open a model, from any source (``gmpi_core.checkpoints.sources``):

        * ``None``: the shipped demo model, or a random ``synthetic64`` model when none is shipped;
        * ``random:PRESET`` (or ``random`` with ``preset``): randomly initialised with ``seed``;
        * ``native:DIR`` / a folder with ``config.json``: :meth:`from_pretrained` (``use_ema``);
        * ``official:DIR`` / a folder with ``config.pth``: the official GMPI checkpoint (EMA weights
          unless ``use_ema=False``; the buffers it leaves fresh drawn from ``seed``), configured by its
          dataset's preset;
        * ``stylegan2_pkl:FILE`` / a ``.pkl``: GMPI initialised from a StyleGAN2-ADA pickle (method §4.5);
        * ``native2d:DIR``: GMPI initialised (``seed``) from a 2D StyleGAN2's EMA weights, by name.

        ``preset`` names the experiment config instead of the checkpoint's own (a native or official
        checkpoint) or the default (``FFHQ256`` around a pickle, ``synthetic64`` around a 2D model); with
        ``keep_architecture`` the preset's generator fields give way to the loaded network's
        (:func:`experiment_for`, always so for pickles and 2D models).
        """
        if source is None:
            if preset is None and (DEMO_CHECKPOINT / "config.json").exists():
                return cls.load(ModelSource("native", DEMO_CHECKPOINT), map_location=map_location)
            return cls.load(ModelSource("random", preset=preset or "synthetic64"), seed=seed)
        src = source if isinstance(source, ModelSource) else parse_source(str(source))
        if src.kind == "random":
            name = src.preset or preset
            if name is None:
                raise ModelSourceError("a random model needs a preset: random:NAME")
            return cls.random(name, seed=seed)
        assert src.path is not None
        path = src.path

        def configured(generator: nn.Module, own: str | ExperimentConfig, adapt: bool) -> ExperimentConfig:
            if preset is None:
                return own if isinstance(own, ExperimentConfig) else get_preset(own)
            return experiment_for(generator, preset) if adapt else get_preset(preset)

        info: dict[str, Any] = {}
        generator: nn.Module
        if src.kind == "native":
            loaded = cls.from_pretrained(path, use_ema=use_ema, map_location=map_location)
            generator, cfg = loaded.generator, configured(loaded.generator, loaded.config, keep_architecture)
        elif src.kind == "official":
            from gmpi_core.checkpoints.official_gmpi import load_official_gmpi

            with torch.random.fork_rng(devices=[]):  # its fresh buffers (noise_const) from ``seed``
                torch.manual_seed(seed)
                generator, ckpt = load_official_gmpi(path, use_ema=use_ema is not False)
            cfg = configured(generator, ckpt.dataset, keep_architecture)
            info["ema_step"] = ckpt.ema_step
        elif src.kind == "stylegan2_pkl":
            from gmpi_core.checkpoints.stylegan2_pkl import GMPI_INIT_SEED

            generator, _ = init_networks(src, seed=GMPI_INIT_SEED)  # the pickle's networks, the official init
            cfg = experiment_for(generator, preset or STYLEGAN2_DEFAULT_PRESET)
        elif src.kind == "native2d":
            from gmpi_core.checkpoints.native import load_pretrained

            net2d = load_pretrained(path, use_ema=use_ema)  # None: the EMA weights when present
            cfg = experiment_for(net2d, preset or "synthetic64")
            generator, _ = init_networks(
                src, cfg, seed=seed, discriminator=False, official_latents=False, source_generator=net2d
            )
            info["init_seed"] = seed
        else:  # pragma: no cover - parse_source knows no other kind
            raise ModelSourceError(f"cannot load a {src.kind} model")
        if not isinstance(generator, GMPIGenerator):
            raise ValueError(f"{path} holds a {type(generator).__name__}, not a GMPIGenerator")
        return cls(generator.eval().requires_grad_(False), cfg, source=src, info=info).to(map_location)

    @classmethod
    def from_pretrained(
        cls, path: str | Path, *, use_ema: bool | None = None, map_location: str = "cpu"
    ) -> GMPI:
        """Load a native checkpoint dir (``config.json`` + ``weights.safetensors`` [+ ``ema.safetensors``]).

        ``use_ema=None`` uses the EMA weights when the checkpoint has them (what evaluation uses, §9.1).
        """
        from gmpi_core.checkpoints.native import load_pretrained, read_native_config

        meta = read_native_config(path)
        extra = meta.get("extra") or {}
        if "experiment" not in extra:
            raise ValueError(
                f"{path} holds a '{meta.get('class')}' checkpoint without an experiment config; "
                "a GMPI pipeline checkpoint is written by GMPI.save_pretrained or `gmpi train`"
            )
        generator = load_pretrained(path, use_ema=use_ema, map_location=map_location)
        if not isinstance(generator, GMPIGenerator):
            raise ValueError(f"{path} holds a {type(generator).__name__}, not a GMPIGenerator")
        return cls(
            generator.eval().requires_grad_(False),
            ExperimentConfig.model_validate(extra["experiment"]),
            source=ModelSource("native", Path(path)),
        )

    def save_pretrained(self, path: str | Path, *, ema_state: dict[str, Tensor] | None = None) -> Path:
        from gmpi_core.checkpoints.native import save_pretrained

        return save_pretrained(
            path,
            self.generator,
            ema_state=ema_state,
            extra={"experiment": self.config.model_dump(mode="json")},
        )

    def describe(self) -> str:
        """Where this model came from, in words (for the CLIs' logs)."""
        src = self.source
        if src is None:
            return f"'{self.config.name}' model"
        if src.kind == "random":
            return f"randomly initialised '{self.config.name}' model (seed {self.info.get('init_seed', 0)})"
        if src.kind == "native" and src.path is not None and src.path.resolve() == DEMO_CHECKPOINT.resolve():
            return f"shipped demo checkpoint {src.path}"
        what = {"native": "checkpoint", "official": "official GMPI checkpoint"}.get(src.kind, src.kind)
        return f"{what} {src.path}"

    @property
    def device(self) -> torch.device:
        return next(self.generator.parameters()).device

    def to(self, device: str | torch.device) -> GMPI:
        self.generator.to(device)
        return self

    # -- latents -> MPI -> views --------------------------------------------------------------------
    def latents(self, seeds: Sequence[int]) -> Tensor:
        """z [B, z_dim] with ``torch.manual_seed(seed)`` per image, as the official evaluation (§9.1)."""
        zs = []
        for seed in seeds:
            g = torch.Generator().manual_seed(int(seed))
            zs.append(torch.randn(1, self.generator.z_dim, generator=g))
        return torch.cat(zs).to(self.device)

    def noise_generator(self, seed: int) -> torch.Generator:
        """A ``torch.Generator`` on this model's device seeded with ``seed``: the noise
        ``torch.manual_seed(seed)`` would give, without touching the global RNG."""
        return torch.Generator(device=self.device).manual_seed(int(seed))

    def _ws(self, seeds: Sequence[int] | None, z: Tensor | None, truncation_psi: float, zero_w_avg: bool):
        if (seeds is None) == (z is None):
            raise ValueError("pass exactly one of seeds=[...] or z=tensor")
        z = self.latents(seeds) if seeds is not None else z.to(self.device)  # type: ignore[union-attr]
        return mapping_latents(self.generator, z, truncation_psi, zero_w_avg)

    def _noise(
        self, seeds: Sequence[int] | None, generator: torch.Generator | None
    ) -> torch.Generator | None:
        if generator is None and seeds:
            return self.noise_generator(int(seeds[0]))
        return generator

    @torch.no_grad()
    def generate(
        self,
        seeds: Sequence[int] | None = None,
        *,
        z: Tensor | None = None,
        n_planes: int | None = None,
        truncation_psi: float = 1.0,
        noise_mode: str = "random",
        generator: torch.Generator | None = None,
        zero_w_avg: bool = False,
        chunk_n_planes: int | None = None,
    ) -> MPI:
        """MPIs for the given seeds (or latents ``z``) with ``n_planes`` planes (default: the eval count).

        z from ``torch.manual_seed(seed)`` per seed (docs/method.md §9.1); the synthesis noise is drawn from
        ``generator`` (on the model's device), by default one seeded with the first seed, so a seed gives
        the same MPI in every run (with ``z`` and no generator: the global RNG). ``zero_w_avg``: truncate
        toward w = 0 like the official renders; ``chunk_n_planes``: synthesise that many planes at a time
        (same result, less memory)."""
        ws, noise = self._ws(seeds, z, truncation_psi, zero_w_avg), self._noise(seeds, generator)
        dhw, depth_norm = plane_layout(self.config.camera, n_planes or self.config.eval.n_planes)
        rgba = generate_planes(
            self.generator, ws, depth_norm, noise=noise, noise_mode=noise_mode, chunk_n_planes=chunk_n_planes
        )
        return MPI(rgba=rgba, plane_dhw=dhw.to(self.device), depth_norm=depth_norm.to(self.device))

    @torch.no_grad()
    def iter_planes(
        self,
        plane_depth_norm: Tensor,
        seeds: Sequence[int] | None = None,
        *,
        generator: torch.Generator | None = None,
        chunk_n_planes: int | None = None,
        z: Tensor | None = None,
        zero_w_avg: bool = False,
        truncation_psi: float = 1.0,
        noise_mode: str = "random",
    ) -> Iterator[tuple[int, Tensor]]:
        """:meth:`generate`'s planes at any z̃ [N], ``chunk_n_planes`` at a time, as they are synthesised:
        (first plane index, planes [B, n, 4, R, R]) (see :func:`iter_plane_chunks`)."""
        ws, noise = self._ws(seeds, z, truncation_psi, zero_w_avg), self._noise(seeds, generator)
        depth = plane_depth_norm
        yield from iter_plane_chunks(
            self.generator, ws, depth, noise=noise, noise_mode=noise_mode, chunk_n_planes=chunk_n_planes
        )

    def cameras(
        self, yaw: float | Sequence[float] | Tensor, pitch: float | Sequence[float] | Tensor
    ) -> Tensor:
        """c2w [B, 4, 4] on this model's camera sphere (docs/method.md §1.3)."""
        yaw_t = torch.as_tensor(yaw, dtype=torch.float32).reshape(-1)
        pitch_t = torch.as_tensor(pitch, dtype=torch.float32).reshape(-1)
        yaw_t, pitch_t = torch.broadcast_tensors(yaw_t, pitch_t)
        return camera_c2w(self.config.camera, yaw_t, pitch_t).to(self.device)

    @torch.no_grad()
    def render(
        self,
        mpi: MPI,
        yaw: float | Sequence[float] | Tensor,
        pitch: float | Sequence[float] | Tensor,
        *,
        size: int | None = None,
        out_of_bounds: OutOfBounds = "raise",
    ) -> tuple[Tensor, Tensor]:
        """Render every MPI of the batch at the given pose(s).

        With one MPI and V poses, returns V views of it; with B MPIs and B poses, one view each.
        Returns (image [V,3,H,W] in [-1,1], depth [V,1,H,W] camera z-depth).
        """
        c2w = self.cameras(yaw, pitch)
        rgba = mpi.rgba
        if rgba.shape[0] == 1 and c2w.shape[0] > 1:
            rgba = rgba.expand(c2w.shape[0], *rgba.shape[1:])
        elif rgba.shape[0] != c2w.shape[0]:
            if c2w.shape[0] != 1:
                raise ValueError(
                    f"{rgba.shape[0]} MPIs but {c2w.shape[0]} poses; pass one pose or one per MPI"
                )
            c2w = c2w.expand(rgba.shape[0], 4, 4)
        return render_mpi(
            rgba,
            mpi.plane_dhw,
            c2w,
            fov_deg=self.config.camera.fov_deg,
            size=size or self.config.generator.img_resolution,
            out_of_bounds=out_of_bounds,
        )
