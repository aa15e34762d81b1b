"""Read the official GMPI checkpoints (apple/ml-gmpi) without unpickling arbitrary objects (spec §6.9, §9.1).

An official checkpoint directory holds ``config.pth`` (``{"config": <yacs config as nested dicts>}``),
``generator.pth`` (the raw ``state_dict``), ``ema.pth``/``ema2.pth`` (torch_ema states: ``decay``,
``num_updates``, ``shadow_params`` — a list in ``G.parameters()`` order — and ``collected_params``), plus
discriminator/optimizer files this module does not need. Everything is read with
``torch.load(weights_only=True)``; a ``config.pth`` that still contains yacs ``CfgNode`` objects (which
PyTorch's weights-only unpickler cannot fill) is read with :class:`SafeUnpickler` and dict stand-ins.

**Evaluation quirk reproduced by default** (spec §9.1, §12.2 item 3): the official evaluation copies only the
EMA *parameters* into a freshly built generator; buffers are not restored, so ``mapping.w_avg`` stays zero
and truncation ψ < 1 pulls towards w = 0. ``restore_buffers=True`` loads ``w_avg`` (and the other buffers)
from ``generator.pth`` instead, which is what truncation is meant to use.

    >>> G, info = load_official_gmpi("ckpts/gmpi_pretrained/FFHQ256")  # doctest: +SKIP
    >>> info.dataset, info.generator_kwargs["img_resolution"], info.ema_step  # doctest: +SKIP
    ('FFHQ256', 256, 5001)
"""

from __future__ import annotations

import logging
import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from gmpi_core.checkpoints.native import CheckpointMismatchError, check_state_dict, describe_state_dict
from gmpi_core.checkpoints.safe_pickle import ForbiddenGlobalError, SafeUnpickler

if TYPE_CHECKING:
    from gmpi_core.networks import GMPIGenerator

__all__ = [
    "OFFICIAL_DATASETS",
    "OfficialCheckpointError",
    "OfficialGMPICheckpoint",
    "load_official_gmpi",
    "official_generator_kwargs",
    "read_official_config",
]

log = logging.getLogger(__name__)

# dataset → image resolution R (train_helpers.modify_curriculums, spec §6.2)
OFFICIAL_DATASETS = {"FFHQ256": 256, "FFHQ512": 512, "FFHQ1024": 1024, "AFHQCat": 512, "MetFaces": 1024}
# STYLEGAN2_CFG_SPECS[str(R)]["fmaps"]: channel_base = fmaps · 32768 (spec §4.1)
_FMAPS = {256: 0.5, 512: 1.0, 1024: 1.0}
# curriculum constants shared by all datasets: latent_dim, stylegan2_w_dim, generator_label_dim (spec §6.2)
_Z_DIM, _W_DIM, _C_DIM = 512, 512, 0
_LEGACY_TORCH_MAGIC = 0x1950A86A20F9469CFC6C


class OfficialCheckpointError(ValueError):
    """An official GMPI checkpoint directory is incomplete, unreadable or of an unsupported variant."""


@dataclass
class OfficialGMPICheckpoint:
    """What was read besides the weights: dataset preset, our generator kwargs, the raw config, EMA step."""

    dataset: str
    generator_kwargs: dict[str, Any]
    raw_config: dict[str, Any]
    ema_step: int | None


# ---------------------------------------------------------------------------------------------------
# config.pth


class _ConfigNode(dict):
    """Stand-in for ``yacs.config.CfgNode`` / ``gmpi.utils.config.Config``: only the items are kept."""

    def __setstate__(self, state: Any) -> None:
        if state is not None and not isinstance(state, dict):
            raise pickle.UnpicklingError(f"unexpected CfgNode state of type {type(state).__name__}")
        # yacs bookkeeping (__immutable__, __deprecated_keys__, __renamed_keys__, __new_allowed__) is dropped


_CONFIG_GLOBALS = {
    "yacs.config.CfgNode": _ConfigNode,
    "gmpi.utils.config.Config": _ConfigNode,
    "collections.OrderedDict": dict,
    "builtins.set": set,
}


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_plain(v) for v in value)
    return value


def _unpickle_with_stand_ins(path: Path) -> Any:
    """Read a ``torch.save`` file whose pickle names yacs classes (no tensors expected in a config)."""
    source = f"'{path}'"
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            members = [n for n in archive.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
            if len(members) != 1:
                raise OfficialCheckpointError(
                    f"{source} is a zip but not a torch.save archive (no single data.pkl)"
                )
            with archive.open(members[0]) as fh:
                return SafeUnpickler(fh, _CONFIG_GLOBALS, source=source).load()  # type: ignore[arg-type]
    with open(path, "rb") as fh:  # legacy torch.save: magic number, protocol, sys_info, then the object
        if SafeUnpickler(fh, {}, source=source).load() != _LEGACY_TORCH_MAGIC:
            raise OfficialCheckpointError(f"{source} is not a torch.save file")
        SafeUnpickler(fh, {}, source=source).load()
        SafeUnpickler(fh, {}, source=source).load()
        return SafeUnpickler(fh, _CONFIG_GLOBALS, source=source).load()


def read_official_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The official ``config.pth`` as plain nested dicts (the value of its ``"config"`` key).

    ``path`` is the file or the checkpoint directory. Loaded with ``torch.load(weights_only=True)``;
    files holding yacs ``CfgNode`` objects fall back to :class:`SafeUnpickler` with dict stand-ins for
    ``yacs.config.CfgNode`` and ``gmpi.utils.config.Config``. Nothing is ever fully unpickled.
    """
    file = Path(path)
    if file.is_dir():
        file = file / "config.pth"
    if not file.is_file():
        raise OfficialCheckpointError(f"no official GMPI config at {file} (expected checkpoints/config.pth)")
    try:
        obj = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        try:
            obj = _unpickle_with_stand_ins(file)
        except ForbiddenGlobalError:
            raise
        except (EOFError, pickle.UnpicklingError) as err:
            raise OfficialCheckpointError(
                f"cannot read {file}: truncated or not a torch.save file ({err})"
            ) from None
    except (RuntimeError, EOFError, OSError) as err:
        raise OfficialCheckpointError(f"cannot read {file}: {err}") from None
    obj = _plain(obj)
    if not isinstance(obj, dict) or not isinstance(obj.get("config"), dict):
        got = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise OfficialCheckpointError(
            f"{file} is not an official GMPI config.pth (expected {{'config': {{...}}}}, got {got})"
        )
    return obj["config"]


def _section(cfg: dict[str, Any], *keys: str) -> dict[str, Any]:
    node: Any = cfg
    for i, key in enumerate(keys):
        if not isinstance(node, dict) or not isinstance(node.get(key), dict):
            raise OfficialCheckpointError(f"official config has no section {'.'.join(keys[: i + 1])}")
        node = node[key]
    return node


def _alpha_head(cond: str, embed: str) -> str:
    """``torgba_cond_on_pos_enc`` + ``..._embed_func`` → our alpha head (train.py dispatch, spec §4.4)."""
    if cond == "none":
        return "none"
    if cond == "depth2alpha":
        return "depth2alpha"
    if cond == "normalize_add_z" and embed in ("modulated_lrelu", "learnable_param"):
        return "normalize_add_z" if embed == "modulated_lrelu" else "learnable_param"
    raise OfficialCheckpointError(
        f"unsupported official GMPI variant torgba_cond_on_pos_enc={cond!r}, "
        f"torgba_cond_on_pos_enc_embed_func={embed!r}; supported: none, depth2alpha, normalize_add_z with "
        "modulated_lrelu or learnable_param"
    )


def official_generator_kwargs(cfg: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(dataset, ``GMPIGenerator`` kwargs) from an official config, as ``train.py`` builds G (spec §4.1)."""
    train = _section(cfg, "GMPI", "TRAIN")
    mpi = _section(cfg, "GMPI", "MPI")
    sg2 = _section(cfg, "GMPI", "MODEL", "STYLEGAN2")
    dataset = train.get("dataset")
    if dataset not in OFFICIAL_DATASETS:
        raise OfficialCheckpointError(
            f"official config names dataset {dataset!r}; expected one of {list(OFFICIAL_DATASETS)}"
        )
    resolution = int(sg2.get("max_out_dim", OFFICIAL_DATASETS[dataset]))
    if resolution != OFFICIAL_DATASETS[dataset]:
        raise OfficialCheckpointError(
            f"official config: max_out_dim={resolution} contradicts dataset {dataset} "
            f"({OFFICIAL_DATASETS[dataset]})"
        )
    alpha_head = _alpha_head(
        str(sg2.get("torgba_cond_on_pos_enc", "normalize_add_z")),
        str(sg2.get("torgba_cond_on_pos_enc_embed_func", "modulated_lrelu")),
    )
    # Options our generator implements only at their paper values (spec §4.2-§4.4).
    fixed: dict[str, Any] = {
        "G_final_img_act": "tanh",
        "torgba_sep_background": True,
        "build_background_from_rgb": True,
        "build_background_from_rgb_ratio": 0.05,
    }
    if alpha_head == "normalize_add_z":
        fixed.update(pos_enc_multires=0, cond_on_pos_enc_only_alpha=True, background_alpha_full=True)
    if alpha_head == "learnable_param":
        fixed.update(cond_on_pos_enc_only_alpha=True, background_alpha_full=True)
    for key, value in fixed.items():
        if key in sg2 and sg2[key] != value:
            raise OfficialCheckpointError(
                f"official config sets GMPI.MODEL.STYLEGAN2.{key}={sg2[key]!r}; this re-implementation "
                f"supports only {value!r} (the paper setting)"
            )
    if train.get("normalized_xyz_range", "01") != "01":
        raise OfficialCheckpointError(
            f"official config sets normalized_xyz_range={train['normalized_xyz_range']!r}; "
            "only '01' is supported"
        )
    synthesis = sg2.get("synthesis_kwargs") or {}
    mapping = sg2.get("mapping_kwargs") or {}
    high_res = resolution > 128  # fp16 and clamping only above 128² (train.py, spec §4.1)
    kwargs: dict[str, Any] = dict(
        z_dim=_Z_DIM,
        c_dim=_C_DIM,
        w_dim=_W_DIM,
        img_resolution=resolution,
        img_channels=3,
        channel_base=int(_FMAPS[resolution] * int(synthesis.get("channel_base", 32768))),
        channel_max=int(synthesis.get("channel_max", 512)),
        num_fp16_res=4 if high_res else 0,
        conv_clamp=256 if high_res else None,
        mapping_layers=int(mapping.get("num_layers", 8)),
        alpha_head=alpha_head,
        alpha_largest_res=int(sg2.get("gen_alpha_largest_res", 256)),
        n_train_planes=int(mpi.get("n_gen_planes", 32)),
        depth2alpha_n_z_bins=int(mpi.get("depth2alpha_n_z_bins") or 256),
    )
    if alpha_head == "learnable_param":  # the tokens belong to the training planes' depths
        method = str(mpi.get("distance_sample_method", "inverse"))
        kwargs["train_plane_depth_norm"] = _training_plane_depth_norm(
            dataset, kwargs["n_train_planes"], method
        )
    return str(dataset), kwargs


def _training_plane_depth_norm(dataset: str, n_planes: int, method: str) -> list[float]:
    """z̃_i = (d_i - d_near) / (d_far - d_near) of the training planes, nearest first (spec §2.2, §2.4)."""
    from gmpi_core.config import preset

    camera = preset(dataset).camera
    near, far = camera.d_near, camera.d_far
    if method == "inverse":  # uniform in disparity: reversed reciprocals of linspace(1/far, 1/near)
        depths = 1.0 / torch.linspace(1.0 / far, 1.0 / near, n_planes, dtype=torch.float64).flip(0)
    elif method == "uniform":
        depths = torch.linspace(near, far, n_planes, dtype=torch.float64)
    else:
        raise OfficialCheckpointError(
            f"official config: distance_sample_method={method!r} is not supported for learnable_param "
            "checkpoints; use 'inverse' or 'uniform'"
        )
    depths = depths.float().clamp(near, far)  # the official planes are float32 (spec §2.2)
    return ((depths - near) / (far - near)).tolist()


# ---------------------------------------------------------------------------------------------------
# generator.pth / ema.pth


def _torch_load(path: Path, what: str) -> Any:
    if not path.is_file():
        raise OfficialCheckpointError(f"{path} is missing; an official checkpoint directory holds {what}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as err:
        raise OfficialCheckpointError(f"cannot read {path} ({what}) with weights_only=True: {err}") from None


def _read_generator_state(path: Path) -> dict[str, Tensor]:
    state = _torch_load(path, "the generator state_dict")
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise OfficialCheckpointError(f"{path} is not a state_dict (a mapping of names to tensors)")
    return dict(state)


def _parameter_order(G: torch.nn.Module, generator_state: dict[str, Tensor] | None) -> list[str]:
    """Names for torch_ema's positional ``shadow_params`` (spec §11.4): the official registration order.

    ``generator.pth`` records that order (its keys minus buffers); our own order is the fallback.
    """
    ours = [name for name, _ in G.named_parameters()]
    if generator_state is None:
        return ours
    names = set(ours)
    theirs = [k for k in generator_state if k in names]
    if len(theirs) == len(ours) and theirs != ours:
        log.info("using generator.pth's parameter order for ema.pth (it differs from the network's)")
        return theirs
    return ours


def _ema_parameters(path: Path, G: torch.nn.Module, order: list[str]) -> tuple[dict[str, Tensor], int | None]:
    ema = _torch_load(path, "the torch_ema state (decay, num_updates, shadow_params, collected_params)")
    shadow = ema.get("shadow_params") if isinstance(ema, dict) else None
    if not isinstance(shadow, list | tuple) or not all(isinstance(t, Tensor) for t in shadow):
        got = sorted(ema) if isinstance(ema, dict) else type(ema).__name__
        raise OfficialCheckpointError(
            f"{path} is not a torch_ema state with a shadow_params list (got {got})"
        )
    params = dict(G.named_parameters())
    if len(shadow) != len(order):
        raise CheckpointMismatchError(
            f"{path} holds {len(shadow)} EMA tensors but the {type(G).__name__}({_short(G)}) built from "
            f"config.pth has {len(order)} parameters; the EMA belongs to another variant/resolution "
            f"(first tensor {list(shadow[0].shape) if shadow else None}, "
            f"expected {list(params[order[0]].shape)})"
        )
    wrong = [
        f"#{i} {name} {list(t.shape)} (network: {list(params[name].shape)})"
        for i, (name, t) in enumerate(zip(order, shadow))
        if tuple(t.shape) != tuple(params[name].shape)
    ]
    if wrong:
        shown = ", ".join(wrong[:12]) + (f", … (+{len(wrong) - 12} more)" if len(wrong) > 12 else "")
        raise CheckpointMismatchError(
            f"{path}: {len(wrong)} EMA tensors do not fit the generator built from config.pth: {shown}. "
            "The EMA list is positional (G.parameters() order); a wrong variant or resolution shifts it."
        )
    steps = ema.get("num_updates")
    return dict(zip(order, shadow)), (int(steps) if steps is not None else None)


def _short(G: torch.nn.Module) -> str:
    cfg = getattr(G, "config", {}) or {}
    return ", ".join(f"{k}={cfg[k]!r}" for k in ("img_resolution", "alpha_head") if k in cfg)


def load_official_gmpi(
    ckpt_dir: str | os.PathLike[str], *, use_ema: bool = True, restore_buffers: bool = False
) -> tuple[GMPIGenerator, OfficialGMPICheckpoint]:
    """Our ``GMPIGenerator`` with the weights of an official checkpoint directory; eval mode.

    ``use_ema=True`` (official evaluation, spec §9.1): parameters from ``ema.pth``; ``False``: from
    ``generator.pth``. ``restore_buffers=False`` (default) reproduces the official quirk — buffers keep
    their fresh values, so ``mapping.w_avg`` is zero; ``True`` loads ``w_avg``, ``noise_const`` and the
    filters from ``generator.pth``. A file path instead of a directory means its directory.
    """
    from gmpi_core.networks import GMPIGenerator

    root = Path(ckpt_dir)
    if root.is_file():
        root = root.parent
    cfg = read_official_config(root / "config.pth")
    dataset, kwargs = official_generator_kwargs(cfg)
    G = GMPIGenerator(**kwargs)

    generator_file = root / "generator.pth"
    generator_state = None
    if not use_ema or restore_buffers:
        generator_state = _read_generator_state(generator_file)
        check_state_dict(G, generator_state, source=str(generator_file))
    elif generator_file.is_file():  # only consulted for the parameter order; optional
        try:
            generator_state = _read_generator_state(generator_file)
        except OfficialCheckpointError as err:
            log.warning("ignoring %s for the EMA order: %s", generator_file, err)

    state = G.state_dict()  # fresh values: w_avg = 0 etc. unless restored below
    ema_step = None
    if use_ema:
        params, ema_step = _ema_parameters(root / "ema.pth", G, _parameter_order(G, generator_state))
        state.update(params)
    else:
        assert generator_state is not None
        state.update({name: generator_state[name] for name, _ in G.named_parameters()})
    if restore_buffers:
        assert generator_state is not None
        state.update({name: generator_state[name] for name, _ in G.named_buffers() if name in state})
    G.load_state_dict(state, strict=True)
    log.info(
        "loaded official GMPI %s from %s into %s (%s parameters, buffers %s)",
        dataset,
        root,
        describe_state_dict(state),
        "EMA" if use_ema else "raw",
        "restored" if restore_buffers else "fresh (w_avg = 0, official quirk)",
    )
    info = OfficialGMPICheckpoint(dataset=dataset, generator_kwargs=kwargs, raw_config=cfg, ema_step=ema_step)
    return G.eval(), info
