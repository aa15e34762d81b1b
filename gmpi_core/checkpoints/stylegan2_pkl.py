"""Read StyleGAN2-ADA network pickles without executing anything from them (spec §11.1-§11.4, §4.5).

A StyleGAN2-ADA snapshot (``network-snapshot-*.pkl``, ``ffhq-res256-mirror-paper256-noaug.pkl``, ...) is a
plain pickle of ``{"G", "D", "G_ema", "augment_pipe", "training_set_kwargs"}`` whose networks are
"persistent" objects: each reduces to ``torch_utils.persistence._reconstruct_persistent_obj(meta)`` with
``meta = {type: 'class', version: 6, module_src: <source code>, class_name, state: <instance __dict__>}``.
The official loader ``exec``s ``module_src``. This reader never does: it resolves the pickle's globals
from an allow-list (:mod:`gmpi_core.checkpoints.safe_pickle`), turns every persistent object into a light
node, discards ``module_src``, and flattens ``state['_parameters'/'_buffers'/'_modules']`` into a
PyTorch-ordered state dict. Tensor storages are legacy ``torch.save`` blobs, decoded with
``torch.load(..., weights_only=True)``.

    >>> snap = read_stylegan2_pkl("ffhq-res256-mirror-paper256-noaug.pkl")   # doctest: +SKIP
    >>> G = load_stylegan2_generator("ffhq-res256-mirror-paper256-noaug.pkl")  # doctest: +SKIP
    >>> G_mpi, D = init_gmpi_from_stylegan2("ffhq-res256-mirror-paper256-noaug.pkl")  # doctest: +SKIP
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np
import torch
from torch import Tensor

from gmpi_core.checkpoints.native import copy_matching_tensors, load_state_dict_strict
from gmpi_core.checkpoints.safe_pickle import ForbiddenGlobalError, SafeUnpickler

if TYPE_CHECKING:
    from gmpi_core.networks import Discriminator, GMPIGenerator, StyleGAN2Generator

__all__ = [
    "PERSISTENCE_VERSION",
    "LegacyTFPickleError",
    "NetworkSnapshot",
    "StyleGAN2Pickle",
    "StyleGAN2PickleError",
    "init_gmpi_from_stylegan2",
    "load_stylegan2_generator",
    "read_stylegan2_pkl",
    "stylegan2_discriminator_kwargs",
    "stylegan2_generator_kwargs",
]

log = logging.getLogger(__name__)

PERSISTENCE_VERSION = 6  # torch_utils/persistence.py `_version` (spec §11.2)
GMPI_INIT_SEED = 123  # official SEED (spec §4.5, §6.1)
# train.py draws 25 fixed latents on the CPU after seeding and before building G (spec §6.9)
_OFFICIAL_FIXED_LATENTS = 25


class StyleGAN2PickleError(ValueError):
    """The file is not a StyleGAN2-ADA network pickle this reader understands."""


class LegacyTFPickleError(StyleGAN2PickleError):
    """The file is an original TensorFlow StyleGAN2 pickle (``dnnlib.tflib.network.Network`` objects)."""


@dataclass
class NetworkSnapshot:
    """One pickled network: its class name, the init kwargs it was constructed with, its tensors.

    ``init_kwargs`` holds only what the training script passed explicitly (SG2 stores no defaults,
    spec §11.3), as plain Python data. ``state_dict`` is in PyTorch ``state_dict`` order.
    """

    class_name: str
    init_kwargs: dict[str, Any]
    state_dict: dict[str, Tensor]


@dataclass
class StyleGAN2Pickle:
    """The contents of a StyleGAN2-ADA snapshot (spec §11.1)."""

    G: NetworkSnapshot | None
    D: NetworkSnapshot | None
    G_ema: NetworkSnapshot
    training_set_kwargs: dict[str, Any] | None
    augment_pipe_present: bool


# ---------------------------------------------------------------------------------------------------
# Stand-ins for the globals a StyleGAN2-ADA pickle may name (spec §11.2)


@dataclass
class _PersistentNode:
    """What ``_reconstruct_persistent_obj(meta)`` becomes here: the class name and the pickled state."""

    class_name: str
    state: dict[str, Any]


def _reconstruct_persistent_obj(meta: Any) -> _PersistentNode:
    if not isinstance(meta, dict) or meta.get("type") != "class":
        raise StyleGAN2PickleError(
            "a persistent object in the pickle has no valid 'meta' record (expected a dict with "
            f"type='class'); got {type(meta).__name__}"
        )
    version = meta.get("version")
    if version != PERSISTENCE_VERSION:
        raise StyleGAN2PickleError(
            f"the pickle uses torch_utils.persistence format version {version!r}; this reader supports "
            f"version {PERSISTENCE_VERSION} (stylegan2-ada-pytorch). Re-export the network with "
            "stylegan2-ada-pytorch or stylegan3 in an isolated environment."
        )
    state = meta.get("state")
    if not isinstance(state, dict):
        raise StyleGAN2PickleError(
            f"persistent object {meta.get('class_name')!r} carries no state dict (got {type(state).__name__})"
        )
    # meta['module_src'] (source code) is deliberately dropped: it is never compiled or executed.
    return _PersistentNode(class_name=str(meta.get("class_name")), state=state)


class _EasyDict(dict):
    """Stand-in for ``dnnlib.util.EasyDict`` (a dict with attribute access)."""


def _load_storage_blob(blob: Any) -> torch.storage.TypedStorage:
    """``torch.storage._load_from_bytes``: each storage is a legacy (non-zip) ``torch.save`` blob."""
    if not isinstance(blob, bytes | bytearray):
        raise StyleGAN2PickleError(f"a tensor storage is not a byte blob (got {type(blob).__name__})")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*TypedStorage is deprecated.*")
        storage = torch.load(io.BytesIO(bytes(blob)), map_location="cpu", weights_only=True)
    if not isinstance(storage, torch.storage.TypedStorage):
        raise StyleGAN2PickleError(
            f"a storage blob decoded to {type(storage).__name__}, not a tensor storage"
        )
    return storage


def _rebuild_tensor(
    storage: Any,
    storage_offset: int,
    size: tuple[int, ...],
    stride: tuple[int, ...],
    requires_grad: bool = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> Tensor:
    """``torch._utils._rebuild_tensor_v2``: a view of a decoded storage (hooks/metadata are ignored)."""
    if not isinstance(storage, torch.storage.TypedStorage):
        raise StyleGAN2PickleError(f"tensor rebuilt from a {type(storage).__name__}, expected a storage")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*TypedStorage is deprecated.*")
        untyped = storage._untyped_storage
        dtype = storage.dtype
        numel = storage.size()
    offset, size, stride = int(storage_offset), tuple(map(int, size)), tuple(map(int, stride))
    # Tensor.set_ would silently grow the storage; a view must fit in what the file holds.
    fits = (
        len(size) == len(stride) and offset >= 0 and all(n >= 0 for n in size) and all(s >= 0 for s in stride)
    )
    if fits and all(n > 0 for n in size):
        fits = offset + sum((n - 1) * s for n, s in zip(size, stride)) < numel
    if not fits:
        raise StyleGAN2PickleError(
            f"a tensor view (offset {offset}, size {list(size)}, stride {list(stride)}) does not fit its "
            f"storage of {numel} elements"
        )
    return torch.empty((0,), dtype=dtype).set_(untyped, offset, size, stride)


def _rebuild_parameter(
    data: Any, requires_grad: bool = False, backward_hooks: Any = None, *state: Any
) -> Tensor:
    """``torch._utils._rebuild_parameter(_with_state)``: the plain tensor is all a state dict needs."""
    if not isinstance(data, Tensor):
        raise StyleGAN2PickleError(f"a Parameter wraps a {type(data).__name__}, expected a tensor")
    return data


def _numpy_dtype(obj: Any, align: bool = False, copy: bool = True) -> np.dtype:
    if not isinstance(obj, str):
        raise StyleGAN2PickleError(f"numpy dtype spec must be a string, got {type(obj).__name__}")
    return np.dtype(obj, align=bool(align), copy=True)  # always a copy: BUILD mutates it


def _numpy_scalar(dtype: Any, data: Any = None) -> Any:
    """``numpy.core.multiarray.scalar`` for numeric dtypes only (gains such as ``weight_gain``)."""
    if not isinstance(dtype, np.dtype) or dtype.hasobject or dtype.kind not in "biufc" or dtype.fields:
        raise StyleGAN2PickleError(f"refusing numpy scalar of dtype {dtype!r}: only plain numeric dtypes")
    if not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise StyleGAN2PickleError("numpy scalar payload does not match its dtype")
    return np.frombuffer(data, dtype=dtype, count=1)[0].copy()


_ALLOWED_GLOBALS: dict[str, Any] = {
    "torch_utils.persistence._reconstruct_persistent_obj": _reconstruct_persistent_obj,
    "dnnlib.util.EasyDict": _EasyDict,
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
    "torch.storage._load_from_bytes": _load_storage_blob,
    "collections.OrderedDict": OrderedDict,
    "builtins.set": set,
    "numpy.core.multiarray.scalar": _numpy_scalar,
    "numpy._core.multiarray.scalar": _numpy_scalar,
    "numpy.dtype": _numpy_dtype,
}

_TF_ADVICE = (
    "This is an original TensorFlow StyleGAN2 pickle (dnnlib.tflib.network.Network). Convert it to a "
    "PyTorch pickle with the official stylegan2-ada-pytorch legacy.py in an isolated environment "
    "(e.g. `python legacy.py --source=<tf.pkl> --dest=<pt.pkl>`), or download the PyTorch pickle instead."
)


# ---------------------------------------------------------------------------------------------------
# Reading


def _plain(value: Any) -> Any:
    """EasyDict/OrderedDict → dict, tuples/lists recursively, numpy scalars → Python numbers."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def _flatten_state(node: _PersistentNode, prefix: str, out: dict[str, Tensor], what: str) -> None:
    """Collect parameters, then persistent buffers, then children — PyTorch ``state_dict`` order."""
    state = node.state
    skip = set(state.get("_non_persistent_buffers_set") or ())
    groups = [("_parameters", state.get("_parameters") or {}), ("_buffers", state.get("_buffers") or {})]
    for group, tensors in groups:
        for name, tensor in tensors.items():
            if tensor is None or (group == "_buffers" and name in skip):
                continue
            if not isinstance(tensor, Tensor):
                raise StyleGAN2PickleError(
                    f"{what}: '{prefix}{name}' is a {type(tensor).__name__}, not a tensor"
                )
            out[prefix + name] = tensor
    for name, child in (state.get("_modules") or {}).items():
        if child is None:
            continue
        if not isinstance(child, _PersistentNode):
            raise StyleGAN2PickleError(
                f"{what}: sub-module '{prefix}{name}' is a {type(child).__name__}, not a persistent network"
            )
        _flatten_state(child, f"{prefix}{name}.", out, what)


# Positional order of the SG2-ADA constructors (training/networks.py), used if `_init_args` is non-empty.
_POSITIONAL = {
    "Generator": (
        "z_dim",
        "c_dim",
        "w_dim",
        "img_resolution",
        "img_channels",
        "mapping_kwargs",
        "synthesis_kwargs",
    ),
    "Discriminator": (
        "c_dim",
        "img_resolution",
        "img_channels",
        "architecture",
        "channel_base",
        "channel_max",
        "num_fp16_res",
        "conv_clamp",
        "cmap_dim",
        "block_kwargs",
        "mapping_kwargs",
        "epilogue_kwargs",
    ),
}


def _snapshot(node: Any, what: str) -> NetworkSnapshot | None:
    if node is None:
        return None
    if not isinstance(node, _PersistentNode):
        raise StyleGAN2PickleError(f"'{what}' is a {type(node).__name__}, not a persistent StyleGAN2 network")
    kwargs = _plain(dict(node.state.get("_init_kwargs") or {}))
    args = _plain(tuple(node.state.get("_init_args") or ()))
    if args:
        names = _POSITIONAL.get(node.class_name)
        if names is None or len(args) > len(names):
            kwargs["_init_args"] = list(args)
        else:
            kwargs.update(zip(names, args))
    tensors: dict[str, Tensor] = {}
    _flatten_state(node, "", tensors, what)
    return NetworkSnapshot(class_name=node.class_name, init_kwargs=kwargs, state_dict=tensors)


def _describe_source(src: str | os.PathLike[str] | bytes | BinaryIO) -> str:
    if isinstance(src, bytes | bytearray):
        return "the pickle bytes"
    if isinstance(src, str | os.PathLike):
        return f"'{os.fspath(src)}'"
    return f"'{getattr(src, 'name', 'the pickle stream')}'"


def _unpickle(stream: BinaryIO, source: str) -> Any:
    unpickler = SafeUnpickler(stream, _ALLOWED_GLOBALS, source=source)
    try:
        return unpickler.load()
    except ForbiddenGlobalError as err:
        if err.global_name.startswith("dnnlib.tflib."):
            raise LegacyTFPickleError(f"cannot read {source}: {_TF_ADVICE}") from err
        raise
    except StyleGAN2PickleError as err:
        raise StyleGAN2PickleError(f"cannot read {source}: {err}") from None
    except (
        EOFError,
        pickle.UnpicklingError,
        ValueError,
        TypeError,
        IndexError,
        KeyError,
        RuntimeError,
    ) as err:
        raise StyleGAN2PickleError(
            f"cannot read {source}: the file is truncated or is not a StyleGAN2-ADA network pickle "
            f"({type(err).__name__}: {err or 'unexpected end of data'}). "
            "Re-download it and compare its size/hash."
        ) from None


def read_stylegan2_pkl(src: str | os.PathLike[str] | bytes | BinaryIO) -> StyleGAN2Pickle:
    """Read a StyleGAN2-ADA snapshot pickle safely; ``module_src`` is never executed (spec §11.2).

    Raises :class:`LegacyTFPickleError` for TensorFlow pickles, :class:`ForbiddenGlobalError` for any
    other global outside the allow-list, and :class:`StyleGAN2PickleError` for a wrong persistence
    version, a truncated file or unexpected content.
    """
    source = _describe_source(src)
    if isinstance(src, bytes | bytearray):
        data = _unpickle(io.BytesIO(bytes(src)), source)
    elif isinstance(src, str | os.PathLike):
        with open(src, "rb") as fh:
            data = _unpickle(fh, source)  # type: ignore[arg-type]
    else:
        data = _unpickle(src, source)

    if isinstance(data, tuple) and len(data) == 3:  # TF pickles are (G, D, Gs) tuples
        raise LegacyTFPickleError(f"cannot read {source}: {_TF_ADVICE}")
    if not isinstance(data, dict):
        raise StyleGAN2PickleError(
            f"{source} holds a {type(data).__name__}, not a StyleGAN2-ADA snapshot dict with G/D/G_ema"
        )
    if data.get("G_ema") is None:
        raise StyleGAN2PickleError(
            f"{source} has no 'G_ema' network (keys: {sorted(map(str, data))}); a StyleGAN2-ADA snapshot "
            "stores G, D and G_ema"
        )
    training_set_kwargs = data.get("training_set_kwargs")
    G_ema = _snapshot(data["G_ema"], "G_ema")
    assert G_ema is not None
    return StyleGAN2Pickle(
        G=_snapshot(data.get("G"), "G"),
        D=_snapshot(data.get("D"), "D"),
        G_ema=G_ema,
        training_set_kwargs=None if training_set_kwargs is None else _plain(dict(training_set_kwargs)),
        augment_pipe_present=data.get("augment_pipe") is not None,
    )


# ---------------------------------------------------------------------------------------------------
# Stored kwargs → our constructors (spec §11.3)


def _check_options(
    options: Mapping[str, Any], *, used: set[str], fixed: Mapping[str, Any], ignored: set[str], what: str
) -> None:
    """Reject options our networks cannot represent; ``fixed`` values must equal SG2's defaults."""
    for key, value in options.items():
        if key in used or key in ignored:
            continue
        if key in fixed:
            expected = fixed[key]
            if isinstance(expected, list | tuple):
                same = isinstance(value, list | tuple) and list(value) == list(expected)
            else:
                same = value == expected
            if not same:
                raise StyleGAN2PickleError(
                    f"{what}: option {key}={value!r} is not supported (this re-implementation builds the "
                    f"StyleGAN2-ADA default {key}={expected!r})"
                )
            continue
        raise StyleGAN2PickleError(
            f"{what}: unknown option {key!r}={value!r}; supported: {sorted(used | set(fixed) | ignored)}"
        )


def _require(kwargs: Mapping[str, Any], keys: tuple[str, ...], what: str) -> None:
    missing = [k for k in keys if k not in kwargs]
    if missing:
        raise StyleGAN2PickleError(f"{what}: stored init kwargs lack {missing} (have {sorted(kwargs)})")


def stylegan2_generator_kwargs(snap: NetworkSnapshot) -> dict[str, Any]:
    """Init kwargs for ``StyleGAN2Generator``/``GMPIGenerator`` from a pickled SG2 ``Generator``.

    SG2 stores only explicitly passed kwargs; the rest take SG2's defaults (spec §11.3): channel_base
    32768, channel_max 512, num_fp16_res 0, conv_clamp None, 8 mapping layers.
    """
    what = f"StyleGAN2 generator ({snap.class_name})"
    if snap.class_name != "Generator":
        raise StyleGAN2PickleError(f"{what}: expected a pickled 'Generator', got class {snap.class_name!r}")
    kw = snap.init_kwargs
    _require(kw, ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels"), what)
    top_level = {
        "z_dim",
        "c_dim",
        "w_dim",
        "img_resolution",
        "img_channels",
        "mapping_kwargs",
        "synthesis_kwargs",
    }
    _check_options(kw, used=top_level, fixed={}, ignored=set(), what=what)
    syn = dict(kw.get("synthesis_kwargs") or {})
    _check_options(
        syn,
        used={"channel_base", "channel_max", "num_fp16_res", "conv_clamp"},
        fixed={
            "architecture": "skip",
            "resample_filter": [1, 3, 3, 1],
            "use_noise": True,
            "activation": "lrelu",
            "kernel_size": 3,
        },
        ignored={"fp16_channels_last", "channels_last"},  # memory layout only
        what=f"{what} synthesis_kwargs",
    )
    mapping = dict(kw.get("mapping_kwargs") or {})
    w_dim = int(kw["w_dim"])
    c_dim = int(kw["c_dim"])
    fixed_mapping: dict[str, Any] = {"activation": "lrelu", "lr_multiplier": 0.01}
    ignored_mapping = {"w_avg_beta"}  # the running-mean rate only matters in training
    for key in ("layer_features", "embed_features"):  # None means w_dim; embed is unused when c_dim = 0
        if mapping.get(key) is None or (key == "embed_features" and c_dim == 0):
            ignored_mapping.add(key)
        else:
            fixed_mapping[key] = w_dim
    _check_options(
        mapping,
        used={"num_layers"},
        fixed=fixed_mapping,
        ignored=ignored_mapping,
        what=f"{what} mapping_kwargs",
    )
    return dict(
        z_dim=int(kw["z_dim"]),
        c_dim=c_dim,
        w_dim=w_dim,
        img_resolution=int(kw["img_resolution"]),
        img_channels=int(kw["img_channels"]),
        channel_base=int(syn.get("channel_base", 32768)),
        channel_max=int(syn.get("channel_max", 512)),
        num_fp16_res=int(syn.get("num_fp16_res", 0)),
        conv_clamp=syn.get("conv_clamp"),
        mapping_layers=int(mapping.get("num_layers", 8)),
    )


def stylegan2_discriminator_kwargs(snap: NetworkSnapshot) -> dict[str, Any]:
    """Init kwargs for our ``Discriminator`` from a pickled SG2 ``Discriminator`` (resnet only).

    Defaults for kwargs SG2 did not store (spec §11.3): channel_base 32768, channel_max 512,
    num_fp16_res 0, conv_clamp None, mbstd group 4 with 1 channel, cmap_dim = C_4.
    """
    what = f"StyleGAN2 discriminator ({snap.class_name})"
    if snap.class_name != "Discriminator":
        raise StyleGAN2PickleError(
            f"{what}: expected a pickled 'Discriminator', got class {snap.class_name!r}"
        )
    kw = snap.init_kwargs
    _require(kw, ("c_dim", "img_resolution", "img_channels"), what)
    _check_options(
        kw,
        used=set(_POSITIONAL["Discriminator"]) - {"architecture"},
        fixed={"architecture": "resnet"},
        ignored=set(),
        what=what,
    )
    _check_options(
        dict(kw.get("block_kwargs") or {}),
        used=set(),
        fixed={"activation": "lrelu", "resample_filter": [1, 3, 3, 1], "architecture": "resnet"},
        ignored={"fp16_channels_last", "freeze_layers"},  # memory layout / training only
        what=f"{what} block_kwargs",
    )
    epilogue = dict(kw.get("epilogue_kwargs") or {})
    _check_options(
        epilogue,
        used={"mbstd_group_size", "mbstd_num_channels"},
        fixed={"activation": "lrelu", "architecture": "resnet"},
        ignored=set(),
        what=f"{what} epilogue_kwargs",
    )
    channel_base = int(kw.get("channel_base", 32768))
    channel_max = int(kw.get("channel_max", 512))
    cmap_dim = kw.get("cmap_dim")
    return dict(
        img_resolution=int(kw["img_resolution"]),
        img_channels=int(kw["img_channels"]),
        c_dim=int(kw["c_dim"]),
        channel_base=channel_base,
        channel_max=channel_max,
        num_fp16_res=int(kw.get("num_fp16_res", 0)),
        conv_clamp=kw.get("conv_clamp"),
        cmap_dim=int(cmap_dim) if cmap_dim is not None else min(channel_base // 4, channel_max),
        mbstd_group_size=epilogue.get("mbstd_group_size", 4),
        mbstd_num_channels=int(epilogue.get("mbstd_num_channels", 1)),
    )


# ---------------------------------------------------------------------------------------------------
# Building our networks


def load_stylegan2_generator(path: str | os.PathLike[str] | bytes | BinaryIO) -> StyleGAN2Generator:
    """Our ``StyleGAN2Generator`` with the pickle's ``G_ema`` weights (names and shapes must all match)."""
    from gmpi_core.networks import StyleGAN2Generator

    pkl = read_stylegan2_pkl(path)
    G = StyleGAN2Generator(**stylegan2_generator_kwargs(pkl.G_ema))
    load_state_dict_strict(G, pkl.G_ema.state_dict, source=f"G_ema of {_describe_source(path)}")
    return G.eval()


def init_gmpi_from_stylegan2(
    path: str | os.PathLike[str] | bytes | BinaryIO,
    alpha_head: str = "normalize_add_z",
    seed: int = GMPI_INIT_SEED,
    **gmpi_kwargs: Any,
) -> tuple[GMPIGenerator, Discriminator]:
    """GMPI's starting point (spec §4.5, §5): G ← the pickle's ``G_ema``, D ← its ``D``, by name.

    Both networks are built under ``torch.manual_seed(seed)`` after drawing the 25 fixed latents the
    official script draws first, without touching the caller's RNG state; tensors absent from the pickle
    (alpha heads, the pose ``mapping`` Linear(16, 16)) keep that random init. Copies broadcast like
    ``Tensor.copy_``: the unconditional ``b4.out`` [1, C] / [1] fills all 16 rows of GMPI's [16, C] / [16].
    D is GMPI's: c_dim = cmap_dim = 16, minibatch-std group 1. ``gmpi_kwargs`` override generator kwargs
    (``alpha_largest_res``, ``n_train_planes``, ...). The list of new/broadcast tensors is logged at INFO.
    """
    from gmpi_core.networks import Discriminator, GMPIGenerator

    source = _describe_source(path)
    pkl = read_stylegan2_pkl(path)
    if pkl.D is None:
        raise StyleGAN2PickleError(f"{source} has no 'D' network; GMPI initialises its discriminator from it")
    g_kwargs = {**stylegan2_generator_kwargs(pkl.G_ema), "alpha_head": alpha_head, **gmpi_kwargs}
    d_kwargs = {
        **stylegan2_discriminator_kwargs(pkl.D),
        "c_dim": 16,  # flattened 4×4 world-to-camera matrix (spec §1.5)
        "cmap_dim": 16,
        "mbstd_group_size": 1,
        "mbstd_num_channels": 1,
    }
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.randn([_OFFICIAL_FIXED_LATENTS, int(g_kwargs["z_dim"])])
        G = GMPIGenerator(**g_kwargs)
        D = Discriminator(**d_kwargs)
    g_report = copy_matching_tensors(pkl.G_ema.state_dict, G, source=f"G_ema of {source}")
    d_report = copy_matching_tensors(pkl.D.state_dict, D, source=f"D of {source}")
    for name, report in (("G", g_report), ("D", d_report)):
        log.info(
            "GMPI %s from %s: %d tensors copied, %d broadcast %s, %d new (random, seed %d) %s, %d unused %s",
            name,
            source,
            len(report.copied),
            len(report.broadcast),
            report.broadcast,
            len(report.new),
            seed,
            report.new,
            len(report.unused),
            report.unused,
        )
    return G, D
