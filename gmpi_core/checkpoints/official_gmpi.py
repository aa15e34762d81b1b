"""Read the official GMPI checkpoints (apple/ml-gmpi) without unpickling arbitrary objects (§6.9, §9.1).

An official checkpoint directory holds ``config.pth`` (``{"config": <yacs config as nested dicts>}``),
``generator.pth`` (the raw ``state_dict``), ``ema.pth``/``ema2.pth`` (torch_ema states: ``decay``,
``num_updates``, ``shadow_params`` — a list in ``G.parameters()`` order — and ``collected_params``), plus
discriminator/optimizer files this module does not need. Everything is read with
:func:`~gmpi_core.checkpoints.torch_file.load_torch_file` (allow-listed unpickling, storages checked
against the file before allocation); yacs ``CfgNode`` objects in ``config.pth`` become dicts. Every
architecture number of the config is checked against :mod:`gmpi_core.config`'s limits before the
generator is built.

**Evaluation quirk reproduced by default** (docs/method.md §9.1, §12.2 item 3): the official evaluation copies
only the EMA *parameters* into a freshly built generator; buffers are not restored, so ``mapping.w_avg`` stays
zero and truncation ψ < 1 pulls towards w = 0. ``restore_buffers=True`` loads ``w_avg`` (and the other
buffers) from ``generator.pth`` instead, which is what truncation is meant to use.

    >>> G, info = load_official_gmpi("ckpts/gmpi_pretrained/FFHQ256")  # doctest: +SKIP
    >>> info.dataset, info.generator_kwargs["img_resolution"], info.ema_step  # doctest: +SKIP
    ('FFHQ256', 256, 5001)
"""

from __future__ import annotations

import logging
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from gmpi_core.checkpoints.native import CheckpointMismatchError, check_state_dict, describe_state_dict
from gmpi_core.checkpoints.safe_pickle import (
    MAX_PICKLE_OPS,
    MalformedPickleError,
    UnsafePickleError,
    plain_data,
    safe_repr,
)
from gmpi_core.checkpoints.torch_file import TENSOR_GLOBALS, TorchFileError, load_torch_file

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

# dataset → image resolution R (train_helpers.modify_curriculums, docs/method.md §6.2)
OFFICIAL_DATASETS = {"FFHQ256": 256, "FFHQ512": 512, "FFHQ1024": 1024, "AFHQCat": 512, "MetFaces": 1024}
# STYLEGAN2_CFG_SPECS[str(R)]["fmaps"]: channel_base = fmaps · 32768 (docs/method.md §4.1)
_FMAPS = {256: 0.5, 512: 1.0, 1024: 1.0}
# curriculum constants shared by all datasets: latent_dim, stylegan2_w_dim, generator_label_dim (method §6.2)
_Z_DIM, _W_DIM, _C_DIM = 512, 512, 0
# Opcodes a config.pth may run (an official one: a few thousand); weight files use MAX_PICKLE_OPS.
CONFIG_MAX_OPS = 200_000


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


def _load(path: Path, what: str, **kwargs: Any) -> Any:
    """``load_torch_file`` with its format errors as :class:`OfficialCheckpointError`; refusals of the
    allow-list or of a limit (:class:`UnsafePickleError`) surface as they are."""
    try:
        return load_torch_file(path, source=f"'{path}'", **kwargs)
    except UnsafePickleError:
        raise
    except (TorchFileError, MalformedPickleError, pickle.UnpicklingError) as err:
        raise OfficialCheckpointError(f"cannot read {path} ({what}): {err}") from None


def read_official_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The official ``config.pth`` as plain nested dicts (the value of its ``"config"`` key).

    ``path`` is the file or the checkpoint directory. Read with the allow-list unpickler: yacs
    ``CfgNode`` / ``gmpi.utils.config.Config`` objects become dicts, nothing is ever fully unpickled, and
    a config that is too large when expanded (shared references), too deep or cyclic is refused.
    """
    file = Path(path)
    if file.is_dir():
        file = file / "config.pth"
    if not file.is_file():
        raise OfficialCheckpointError(f"no official GMPI config at {file} (expected checkpoints/config.pth)")
    obj = _load(
        file,
        "the config",
        allowed_globals=_CONFIG_GLOBALS,
        buildable=(_ConfigNode,),
        max_ops=CONFIG_MAX_OPS,
    )
    obj = plain_data(obj, what="the config", source=f"'{file}'")
    if not isinstance(obj, dict) or not isinstance(obj.get("config"), dict):
        got = (
            sorted(safe_repr(k, 40) for k in list(obj)[:20]) if isinstance(obj, dict) else type(obj).__name__
        )
        raise OfficialCheckpointError(
            f"{file} is not an official GMPI config.pth (expected {{'config': {{...}}}}, got {got})"
        )
    config: dict[str, Any] = obj["config"]
    return config


def _section(cfg: dict[str, Any], *keys: str) -> dict[str, Any]:
    node: Any = cfg
    for i, key in enumerate(keys):
        if not isinstance(node, dict) or not isinstance(node.get(key), dict):
            raise OfficialCheckpointError(f"official config has no section {'.'.join(keys[: i + 1])}")
        node = node[key]
    return node


def _alpha_head(cond: str, embed: str) -> str:
    """``torgba_cond_on_pos_enc`` + ``..._embed_func`` → our alpha head (train.py dispatch, method §4.4)."""
    if cond == "none":
        return "none"
    if cond == "depth2alpha":
        return "depth2alpha"
    if cond == "normalize_add_z" and embed in ("modulated_lrelu", "learnable_param"):
        return "normalize_add_z" if embed == "modulated_lrelu" else "learnable_param"
    raise OfficialCheckpointError(
        f"unsupported official GMPI variant torgba_cond_on_pos_enc={safe_repr(cond)}, "
        f"torgba_cond_on_pos_enc_embed_func={safe_repr(embed)}; supported: none, depth2alpha, "
        "normalize_add_z with modulated_lrelu or learnable_param"
    )


def _as_int(value: Any, what: str) -> int:
    """An integer from the config: ints, or floats with an integral value (never via float(int))."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if not isinstance(value, float) or not value.is_integer():
        raise OfficialCheckpointError(f"official config: {what} must be an integer, got {safe_repr(value)}")
    return int(value)


def _as_str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise OfficialCheckpointError(f"official config: {what} must be a string, got {safe_repr(value)}")
    return value


def _options(value: Any, what: str) -> dict[str, Any]:
    if value is None or (type(value) in (dict, list, tuple, str, int, bool) and not value):
        return {}
    if not isinstance(value, dict):
        raise OfficialCheckpointError(f"official config: {what} must be a dict, got {safe_repr(value)}")
    return value


def official_generator_kwargs(cfg: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(dataset, ``GMPIGenerator`` kwargs) from an official config, as ``train.py`` builds G (method §4.1).

    Every architecture number is checked against :func:`gmpi_core.config.check_architecture`'s limits.
    """
    train = _section(cfg, "GMPI", "TRAIN")
    mpi = _section(cfg, "GMPI", "MPI")
    sg2 = _section(cfg, "GMPI", "MODEL", "STYLEGAN2")
    dataset = train.get("dataset")
    if not isinstance(dataset, str) or dataset not in OFFICIAL_DATASETS:
        raise OfficialCheckpointError(
            f"official config names dataset {safe_repr(dataset)}; expected one of {list(OFFICIAL_DATASETS)}"
        )
    resolution = _as_int(sg2.get("max_out_dim", OFFICIAL_DATASETS[dataset]), "max_out_dim")
    if resolution != OFFICIAL_DATASETS[dataset]:
        raise OfficialCheckpointError(
            f"official config: max_out_dim={safe_repr(resolution)} contradicts dataset {dataset} "
            f"({OFFICIAL_DATASETS[dataset]})"
        )
    alpha_head = _alpha_head(
        _as_str(sg2.get("torgba_cond_on_pos_enc", "normalize_add_z"), "torgba_cond_on_pos_enc"),
        _as_str(
            sg2.get("torgba_cond_on_pos_enc_embed_func", "modulated_lrelu"),
            "torgba_cond_on_pos_enc_embed_func",
        ),
    )
    # Options our generator implements only at their paper values (docs/method.md §4.2-§4.4).
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
        if key in sg2 and not (type(sg2[key]) in (int, float, str, bool) and sg2[key] == value):
            raise OfficialCheckpointError(
                f"official config sets GMPI.MODEL.STYLEGAN2.{key}={safe_repr(sg2[key])}; this "
                f"re-implementation supports only {value!r} (the paper setting)"
            )
    xyz_range = train.get("normalized_xyz_range", "01")
    if xyz_range != "01":
        raise OfficialCheckpointError(
            f"official config sets normalized_xyz_range={safe_repr(xyz_range)}; only '01' is supported"
        )
    synthesis = _options(sg2.get("synthesis_kwargs"), "GMPI.MODEL.STYLEGAN2.synthesis_kwargs")
    mapping = _options(sg2.get("mapping_kwargs"), "GMPI.MODEL.STYLEGAN2.mapping_kwargs")
    high_res = resolution > 128  # fp16 and clamping only above 128² (train.py, docs/method.md §4.1)
    kwargs: dict[str, Any] = dict(
        z_dim=_Z_DIM,
        c_dim=_C_DIM,
        w_dim=_W_DIM,
        img_resolution=resolution,
        img_channels=3,
        channel_base=_scaled(
            _as_int(synthesis.get("channel_base", 32768), "channel_base"), _FMAPS[resolution]
        ),
        channel_max=_as_int(synthesis.get("channel_max", 512), "channel_max"),
        num_fp16_res=4 if high_res else 0,
        conv_clamp=256 if high_res else None,
        mapping_layers=_as_int(mapping.get("num_layers", 8), "mapping_kwargs.num_layers"),
        alpha_head=alpha_head,
        alpha_largest_res=_as_int(sg2.get("gen_alpha_largest_res", 256), "gen_alpha_largest_res"),
        n_train_planes=_as_int(mpi.get("n_gen_planes", 32), "n_gen_planes"),
        depth2alpha_n_z_bins=_as_int(_z_bins(mpi.get("depth2alpha_n_z_bins")), "depth2alpha_n_z_bins"),
    )
    _check_limits(kwargs)
    if alpha_head == "learnable_param":  # the tokens belong to the training planes' depths
        method = _as_str(mpi.get("distance_sample_method", "inverse"), "distance_sample_method")
        kwargs["train_plane_depth_norm"] = _training_plane_depth_norm(
            dataset, kwargs["n_train_planes"], method
        )
    return str(dataset), kwargs


def _scaled(channel_base: int, fmaps: float) -> int:
    """``int(fmaps * channel_base)`` (train.py) in integer arithmetic: a huge base must not overflow."""
    return channel_base // 2 if fmaps == 0.5 else channel_base


def _z_bins(value: Any) -> Any:
    return 256 if value is None or (type(value) in (int, float) and not value) else value  # 0/None: default


def _check_limits(kwargs: dict[str, Any]) -> None:
    from gmpi_core.config import check_architecture

    try:
        check_architecture(kwargs, what="official config")
    except ValueError as err:
        raise OfficialCheckpointError(f"{err}; refused before building the generator") from None


def _training_plane_depth_norm(dataset: str, n_planes: int, method: str) -> list[float]:
    """z̃_i = (d_i - d_near) / (d_far - d_near) of the training planes, nearest first (method §2.2, §2.4)."""
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
    depths = depths.float().clamp(near, far)  # the official planes are float32 (docs/method.md §2.2)
    return ((depths - near) / (far - near)).tolist()


# ---------------------------------------------------------------------------------------------------
# generator.pth / ema.pth


def _torch_load(path: Path, what: str) -> Any:
    if not path.is_file():
        raise OfficialCheckpointError(f"{path} is missing; an official checkpoint directory holds {what}")
    return _load(path, what, allowed_globals=TENSOR_GLOBALS, max_ops=MAX_PICKLE_OPS)


def _read_generator_state(path: Path) -> dict[str, Tensor]:
    state = _torch_load(path, "the generator state_dict")
    if not isinstance(state, dict) or not all(
        type(k) is str and isinstance(v, Tensor) for k, v in dict.items(state)
    ):
        raise OfficialCheckpointError(f"{path} is not a state_dict (a mapping of names to tensors)")
    return dict(dict.items(state))


def _parameter_order(G: torch.nn.Module, generator_state: dict[str, Tensor] | None) -> list[str]:
    """Names for torch_ema's positional ``shadow_params`` (method §11.4): the official registration order.

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
    shadow = dict.get(ema, "shadow_params") if isinstance(ema, dict) else None
    if not isinstance(shadow, list | tuple) or not all(isinstance(t, Tensor) for t in shadow):
        got = (
            sorted(safe_repr(k, 40) for k in list(ema)[:20]) if isinstance(ema, dict) else type(ema).__name__
        )
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
    steps = dict.get(ema, "num_updates")
    if steps is not None and (type(steps) is not int or steps < 0):
        raise OfficialCheckpointError(f"{path}: num_updates is {safe_repr(steps)}, not a step count")
    return dict(zip(order, shadow)), steps


def _short(G: torch.nn.Module) -> str:
    cfg = getattr(G, "config", {}) or {}
    return ", ".join(f"{k}={cfg[k]!r}" for k in ("img_resolution", "alpha_head") if k in cfg)


def load_official_gmpi(
    ckpt_dir: str | os.PathLike[str], *, use_ema: bool = True, restore_buffers: bool = False
) -> tuple[GMPIGenerator, OfficialGMPICheckpoint]:
    """Our ``GMPIGenerator`` with the weights of an official checkpoint directory; eval mode.

    ``use_ema=True`` (official evaluation, docs/method.md §9.1): parameters from ``ema.pth``; ``False``: from
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
    try:
        G = GMPIGenerator(**kwargs)
    except (TypeError, ValueError, RuntimeError) as err:
        raise OfficialCheckpointError(f"cannot build the generator config.pth describes: {err}") from None

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
