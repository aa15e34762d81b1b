"""Read StyleGAN2-ADA network pickles without executing anything from them (docs/method.md §11.1-§11.4, §4.5).

A StyleGAN2-ADA snapshot (``network-snapshot-*.pkl``, ``ffhq-res256-mirror-paper256-noaug.pkl``, ...) is a
plain pickle of ``{"G", "D", "G_ema", "augment_pipe", "training_set_kwargs"}`` whose networks are
"persistent" objects: each reduces to ``torch_utils.persistence._reconstruct_persistent_obj(meta)`` with
``meta = {type: 'class', version: 6, module_src: <source code>, class_name, state: <instance __dict__>}``.
The official loader ``exec``s ``module_src``. This reader never does: it resolves the pickle's globals
from an allow-list (:mod:`gmpi_core.checkpoints.safe_pickle`), turns every persistent object into a light
node, discards ``module_src``, and flattens ``state['_parameters'/'_buffers'/'_modules']`` into a
PyTorch-ordered state dict. Tensor storages are legacy ``torch.save`` blobs, decoded by
:func:`gmpi_core.checkpoints.torch_file.load_storage_blob` (declared sizes checked against the blob
before anything is allocated; tensor views must fit their storage).

Hostile files are bounded: the unpickler's opcode/tuple limits and immutable allow-list
(:mod:`~gmpi_core.checkpoints.safe_pickle`), kwargs converted with shared references counted
(:func:`~gmpi_core.checkpoints.safe_pickle.plain_data`), module trees that must be trees
(:data:`MAX_NETWORK_MODULES`, :data:`MAX_NETWORK_TENSORS`, :data:`MAX_NETWORK_DEPTH`), and every
architecture number checked by :func:`gmpi_core.config.check_architecture` before a network is built.

    >>> snap = read_stylegan2_pkl("ffhq-res256-mirror-paper256-noaug.pkl")   # doctest: +SKIP
    >>> G = load_stylegan2_generator("ffhq-res256-mirror-paper256-noaug.pkl")  # doctest: +SKIP
    >>> G_mpi, D = init_gmpi_from_stylegan2("ffhq-res256-mirror-paper256-noaug.pkl")  # doctest: +SKIP
"""

from __future__ import annotations

import io
import logging
import os
import pickle
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np
import torch
from torch import Tensor

from gmpi_core.checkpoints.native import copy_matching_tensors, load_state_dict_strict
from gmpi_core.checkpoints.safe_pickle import (
    MAX_PICKLE_OPS,
    ForbiddenGlobalError,
    MalformedPickleError,
    SafeUnpickler,
    UnsafePickleError,
    plain_data,
    safe_repr,
)
from gmpi_core.checkpoints.torch_file import (
    LoadedStorage,
    TorchFileError,
    load_storage_blob,
    rebuild_parameter,
    rebuild_tensor,
)

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

PERSISTENCE_VERSION = 6  # torch_utils/persistence.py `_version` (docs/method.md §11.2)
GMPI_INIT_SEED = 123  # official SEED (docs/method.md §4.5, §6.1)
# train.py draws 25 fixed latents on the CPU after seeding and before building G (docs/method.md §6.9)
_OFFICIAL_FIXED_LATENTS = 25
# Bounds on a snapshot's network trees (a 1024² G has ~150 modules and ~400 tensors, nested ≤ 5 deep).
# Module trees must be trees: a module reached twice (shared or cyclic) is refused.
MAX_NETWORK_MODULES = 20_000
MAX_NETWORK_TENSORS = 100_000
MAX_NETWORK_DEPTH = 32


class StyleGAN2PickleError(ValueError):
    """The file is not a StyleGAN2-ADA network pickle this reader understands."""


class LegacyTFPickleError(StyleGAN2PickleError):
    """The file is an original TensorFlow StyleGAN2 pickle (``dnnlib.tflib.network.Network`` objects)."""


@dataclass
class NetworkSnapshot:
    """One pickled network: its class name, the init kwargs it was constructed with, its tensors.

    ``init_kwargs`` holds only what the training script passed explicitly (SG2 stores no defaults,
    docs/method.md §11.3), as plain Python data. ``state_dict`` is in PyTorch ``state_dict`` order.
    """

    class_name: str
    init_kwargs: dict[str, Any]
    state_dict: dict[str, Tensor]


@dataclass
class StyleGAN2Pickle:
    """The contents of a StyleGAN2-ADA snapshot (docs/method.md §11.1)."""

    G: NetworkSnapshot | None
    D: NetworkSnapshot | None
    G_ema: NetworkSnapshot
    training_set_kwargs: dict[str, Any] | None
    augment_pipe_present: bool


# ---------------------------------------------------------------------------------------------------
# Stand-ins for the globals a StyleGAN2-ADA pickle may name (docs/method.md §11.2)


@dataclass
class _PersistentNode:
    """What ``_reconstruct_persistent_obj(meta)`` becomes here: the class name and the pickled state."""

    class_name: str
    state: dict[str, Any]


def _reconstruct_persistent_obj(meta: Any) -> _PersistentNode:
    if not isinstance(meta, dict) or dict.get(meta, "type") != "class":
        raise StyleGAN2PickleError(
            "a persistent object in the pickle has no valid 'meta' record (expected a dict with "
            f"type='class'); got {type(meta).__name__}"
        )
    version = dict.get(meta, "version")
    if type(version) is not int or version != PERSISTENCE_VERSION:
        raise StyleGAN2PickleError(
            f"the pickle uses torch_utils.persistence format version {safe_repr(version)}; this reader "
            f"supports version {PERSISTENCE_VERSION} (stylegan2-ada-pytorch). Re-export the network with "
            "stylegan2-ada-pytorch or stylegan3 in an isolated environment."
        )
    class_name = dict.get(meta, "class_name")
    if type(class_name) is not str or len(class_name) > 200:
        raise StyleGAN2PickleError(
            f"a persistent object has no valid class name (got {safe_repr(class_name)})"
        )
    state = dict.get(meta, "state")
    if not isinstance(state, dict):
        raise StyleGAN2PickleError(
            f"persistent object {class_name!r} carries no state dict (got {type(state).__name__})"
        )
    # meta['module_src'] (source code) is deliberately dropped: it is never compiled or executed.
    return _PersistentNode(class_name=class_name, state=state)


class _EasyDict(dict):
    """Stand-in for ``dnnlib.util.EasyDict`` (a dict with attribute access)."""


def _load_storage_blob(blob: Any) -> LoadedStorage:
    """``torch.storage._load_from_bytes``: each storage is a legacy (non-zip) ``torch.save`` blob, read
    with its declared size checked against the blob before anything is allocated."""
    try:
        return load_storage_blob(blob)
    except TorchFileError as err:
        raise StyleGAN2PickleError(str(err)) from None


def _rebuild_tensor(*args: Any) -> Tensor:
    """``torch._utils._rebuild_tensor_v2``: a view that must fit its storage (hooks/metadata ignored)."""
    try:
        return rebuild_tensor(*args)
    except TorchFileError as err:
        raise StyleGAN2PickleError(str(err)) from None


def _rebuild_parameter(*args: Any) -> Tensor:
    """``torch._utils._rebuild_parameter(_with_state)``: the plain tensor is all a state dict needs."""
    try:
        return rebuild_parameter(*args)
    except TorchFileError as err:
        raise StyleGAN2PickleError(str(err)) from None


def _numpy_dtype(obj: Any, align: Any = False, copy: Any = True) -> np.dtype:
    if not isinstance(obj, str) or len(obj) > 16:
        raise StyleGAN2PickleError(f"numpy dtype spec must be a short string, got {safe_repr(obj)}")
    try:
        return np.dtype(obj, align=align is True, copy=True)  # always a copy: BUILD sets its state
    except TypeError as err:
        raise StyleGAN2PickleError(f"invalid numpy dtype {obj!r}: {err}") from None


def _numpy_scalar(dtype: Any, data: Any = None) -> Any:
    """``numpy.core.multiarray.scalar`` for numeric dtypes only (gains such as ``weight_gain``)."""
    if not isinstance(dtype, np.dtype) or dtype.hasobject or dtype.kind not in "biufc" or dtype.fields:
        raise StyleGAN2PickleError(
            f"refusing numpy scalar of dtype {safe_repr(dtype)}: only plain numeric dtypes"
        )
    if (
        not isinstance(dtype, np.dtype)
        or dtype.shape
        or not isinstance(data, bytes)
        or len(data) != dtype.itemsize
    ):
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


def _leaf(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _plain(value: Any, what: str, source: str) -> Any:
    """EasyDict/OrderedDict → dict, tuples/lists rebuilt, numpy scalars → Python numbers; bounded
    (shared references are converted once but counted each time they are reached)."""
    return plain_data(value, what=what, source=source, leaf=_leaf)


def _flatten_state(node: _PersistentNode, out: dict[str, Tensor], what: str) -> None:
    """Collect parameters, then persistent buffers, then children — PyTorch ``state_dict`` order.

    Iterative, each module at most once: a module reached twice (shared or cyclic) is refused, as are
    trees beyond :data:`MAX_NETWORK_MODULES` / :data:`MAX_NETWORK_TENSORS` / :data:`MAX_NETWORK_DEPTH`.
    """
    seen: set[int] = set()
    todo: list[tuple[_PersistentNode, str, int]] = [(node, "", 0)]
    while todo:
        current, prefix, depth = todo.pop()
        if id(current) in seen:
            raise StyleGAN2PickleError(f"{what}: module '{prefix[:-1]}' appears twice in the network tree")
        seen.add(id(current))
        if len(seen) > MAX_NETWORK_MODULES or depth > MAX_NETWORK_DEPTH:
            raise StyleGAN2PickleError(
                f"{what}: the network tree has more than {MAX_NETWORK_MODULES} modules or is deeper than "
                f"{MAX_NETWORK_DEPTH} (MAX_NETWORK_MODULES / MAX_NETWORK_DEPTH)"
            )
        state = current.state
        skip = _name_set(dict.get(state, "_non_persistent_buffers_set"), f"{what}: '{prefix}' buffers")
        for group in ("_parameters", "_buffers"):
            tensors = _mapping(dict.get(state, group), f"{what}: '{prefix}{group}'")
            for name, tensor in tensors:
                if type(name) is not str:
                    raise StyleGAN2PickleError(f"{what}: a tensor name in '{prefix}' is {safe_repr(name)}")
                if tensor is None or (group == "_buffers" and name in skip):
                    continue
                if not isinstance(tensor, Tensor):
                    raise StyleGAN2PickleError(
                        f"{what}: '{prefix}{name}' is a {type(tensor).__name__}, not a tensor"
                    )
                out[prefix + name] = tensor
                if len(out) > MAX_NETWORK_TENSORS:
                    raise StyleGAN2PickleError(
                        f"{what}: more than {MAX_NETWORK_TENSORS} tensors (MAX_NETWORK_TENSORS)"
                    )
        children = []
        for name, child in _mapping(dict.get(state, "_modules"), f"{what}: '{prefix}_modules'"):
            if type(name) is not str:
                raise StyleGAN2PickleError(f"{what}: a sub-module name in '{prefix}' is {safe_repr(name)}")
            if child is None:
                continue
            if not isinstance(child, _PersistentNode):
                raise StyleGAN2PickleError(
                    f"{what}: sub-module '{prefix}{name}' is a {type(child).__name__}, not a persistent "
                    "network"
                )
            children.append((child, f"{prefix}{name}.", depth + 1))
        todo.extend(reversed(children))  # depth first, in registration order


def _or_empty(value: Any, empty: Any) -> Any:
    """``value or empty`` without asking a loaded object for its truth value (a tensor would raise)."""
    if value is None or (type(value) in (dict, list, tuple, str, int, bool) and not value):
        return empty
    return value


def _mapping(value: Any, what: str) -> list[tuple[Any, Any]]:
    if value is None:
        return []
    if not isinstance(value, dict):
        raise StyleGAN2PickleError(f"{what} is a {type(value).__name__}, expected a dict")
    return list(dict.items(value))


def _name_set(value: Any, what: str) -> set[str]:
    value = _or_empty(value, set())
    if not isinstance(value, set | frozenset | list | tuple) or not all(type(v) is str for v in value):
        raise StyleGAN2PickleError(f"{what}: _non_persistent_buffers_set is not a set of names")
    return set(value)


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


def _snapshot(node: Any, what: str, source: str) -> NetworkSnapshot | None:
    if node is None:
        return None
    if not isinstance(node, _PersistentNode):
        raise StyleGAN2PickleError(f"'{what}' is a {type(node).__name__}, not a persistent StyleGAN2 network")
    kwargs = _plain(_or_empty(dict.get(node.state, "_init_kwargs"), {}), f"{what}._init_kwargs", source)
    args = _plain(_or_empty(dict.get(node.state, "_init_args"), ()), f"{what}._init_args", source)
    if not isinstance(kwargs, dict) or not all(type(k) is str for k in kwargs):
        raise StyleGAN2PickleError(f"{what}: _init_kwargs is not a dict of names (got {safe_repr(kwargs)})")
    if not isinstance(args, tuple | list):
        raise StyleGAN2PickleError(f"{what}: _init_args is not a tuple (got {safe_repr(args)})")
    if args:
        names = _POSITIONAL.get(node.class_name)
        if names is None or len(args) > len(names):
            kwargs["_init_args"] = list(args)
        else:
            kwargs.update(zip(names, args))
    tensors: dict[str, Tensor] = {}
    _flatten_state(node, tensors, what)
    return NetworkSnapshot(class_name=node.class_name, init_kwargs=kwargs, state_dict=tensors)


def _describe_source(src: str | os.PathLike[str] | bytes | BinaryIO) -> str:
    if isinstance(src, bytes | bytearray):
        return "the pickle bytes"
    if isinstance(src, str | os.PathLike):
        return f"'{os.fspath(src)}'"
    return f"'{getattr(src, 'name', 'the pickle stream')}'"


def _unpickle(stream: BinaryIO, source: str) -> Any:
    unpickler = SafeUnpickler(
        stream, _ALLOWED_GLOBALS, source=source, buildable=(np.dtype,), max_ops=MAX_PICKLE_OPS
    )
    try:
        return unpickler.load()
    except ForbiddenGlobalError as err:
        if err.global_name.startswith("dnnlib.tflib."):
            raise LegacyTFPickleError(f"cannot read {source}: {_TF_ADVICE}") from err
        raise
    except UnsafePickleError:
        raise
    except StyleGAN2PickleError as err:
        raise StyleGAN2PickleError(f"cannot read {source}: {err}") from None
    except (MalformedPickleError, pickle.UnpicklingError, ValueError) as err:
        raise StyleGAN2PickleError(
            f"cannot read {source}: the file is truncated or is not a StyleGAN2-ADA network pickle "
            f"({type(err).__name__}: {err or 'unexpected end of data'}). "
            "Re-download it and compare its size/hash."
        ) from None


def read_stylegan2_pkl(src: str | os.PathLike[str] | bytes | BinaryIO) -> StyleGAN2Pickle:
    """Read a StyleGAN2-ADA snapshot pickle safely; ``module_src`` is never executed (docs/method.md §11.2).

    Raises :class:`LegacyTFPickleError` for TensorFlow pickles, :class:`ForbiddenGlobalError` for any
    other global outside the allow-list, :class:`~gmpi_core.checkpoints.safe_pickle.UnsafePickleError`
    for other refusals (limits, ``BUILD`` on allow-listed objects) and :class:`StyleGAN2PickleError` for
    a wrong persistence version, a truncated file or unexpected content.
    """
    source = _describe_source(src)
    if isinstance(src, bytes | bytearray):
        data = _unpickle(io.BytesIO(bytes(src)), source)
    elif isinstance(src, str | os.PathLike):
        try:
            fh = open(src, "rb")  # noqa: SIM115 - closed below
        except OSError as err:
            raise StyleGAN2PickleError(f"cannot open {source}: {err}") from None
        with fh:
            data = _unpickle(fh, source)  # type: ignore[arg-type]
    else:
        data = _unpickle(src, source)

    if isinstance(data, tuple) and len(data) == 3:  # TF pickles are (G, D, Gs) tuples
        raise LegacyTFPickleError(f"cannot read {source}: {_TF_ADVICE}")
    if not isinstance(data, dict):
        raise StyleGAN2PickleError(
            f"{source} holds a {type(data).__name__}, not a StyleGAN2-ADA snapshot dict with G/D/G_ema"
        )
    if dict.get(data, "G_ema") is None:
        keys = sorted(safe_repr(k, 40) for k in list(dict.keys(data))[:20])
        raise StyleGAN2PickleError(
            f"{source} has no 'G_ema' network (keys: {keys}); a StyleGAN2-ADA snapshot stores G, D and G_ema"
        )
    training_set_kwargs = dict.get(data, "training_set_kwargs")
    if training_set_kwargs is not None:
        training_set_kwargs = _plain(training_set_kwargs, "training_set_kwargs", source)
        if not isinstance(training_set_kwargs, dict):
            raise StyleGAN2PickleError(f"{source}: training_set_kwargs is not a dict")
    G_ema = _snapshot(data["G_ema"], "G_ema", source)
    assert G_ema is not None
    return StyleGAN2Pickle(
        G=_snapshot(dict.get(data, "G"), "G", source),
        D=_snapshot(dict.get(data, "D"), "D", source),
        G_ema=G_ema,
        training_set_kwargs=training_set_kwargs,
        augment_pipe_present=dict.get(data, "augment_pipe") is not None,
    )


# ---------------------------------------------------------------------------------------------------
# Stored kwargs → our constructors (docs/method.md §11.3)


def _same(value: Any, expected: Any) -> bool:
    """``value == expected`` for plain data only (a tensor or array in a file never equals a default)."""
    if isinstance(expected, list | tuple):
        return (
            isinstance(value, list | tuple)
            and len(value) == len(expected)
            and all(_same(v, e) for v, e in zip(value, expected))
        )
    return type(value) in (int, float, str, bool, type(None)) and value == expected


def _check_options(
    options: Mapping[str, Any], *, used: set[str], fixed: Mapping[str, Any], ignored: set[str], what: str
) -> None:
    """Reject options our networks cannot represent; ``fixed`` values must equal SG2's defaults."""
    for key, value in options.items():
        if key in used or key in ignored:
            continue
        if key in fixed:
            expected = fixed[key]
            if not _same(value, expected):
                raise StyleGAN2PickleError(
                    f"{what}: option {key}={safe_repr(value)} is not supported (this re-implementation "
                    f"builds the StyleGAN2-ADA default {key}={expected!r})"
                )
            continue
        raise StyleGAN2PickleError(
            f"{what}: unknown option {safe_repr(key)}={safe_repr(value)}; supported: "
            f"{sorted(used | set(fixed) | ignored)}"
        )


def _require(kwargs: Mapping[str, Any], keys: tuple[str, ...], what: str) -> None:
    missing = [k for k in keys if k not in kwargs]
    if missing:
        have = sorted(safe_repr(k, 40) for k in list(kwargs)[:30])
        raise StyleGAN2PickleError(f"{what}: stored init kwargs lack {missing} (have {have})")


def _options(value: Any, what: str) -> dict[str, Any]:
    """A nested kwargs dict (``synthesis_kwargs`` ...): None/empty means none given."""
    value = _or_empty(value, {})
    if not isinstance(value, dict) or not all(type(k) is str for k in value):
        raise StyleGAN2PickleError(f"{what} is not a dict of options (got {safe_repr(value)})")
    return dict(value)


def _as_int(value: Any, what: str) -> int:
    """An integer architecture number: ints, or floats/numpy values that are whole numbers."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise StyleGAN2PickleError(f"{what} must be an integer, got {safe_repr(value)}")
    if isinstance(value, float | np.floating) and not float(value).is_integer():
        raise StyleGAN2PickleError(f"{what} must be an integer, got {safe_repr(value)}")
    return int(value)


def _clamp(value: Any, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise StyleGAN2PickleError(f"{what} must be None or a number, got {safe_repr(value)}")
    return value


def _checked(kwargs: dict[str, Any], what: str) -> dict[str, Any]:
    """``kwargs`` if every architecture number is within :mod:`gmpi_core.config`'s limits."""
    from gmpi_core.config import check_architecture

    try:
        check_architecture(kwargs, what=what)
    except ValueError as err:
        raise StyleGAN2PickleError(f"{err}; refused before building the network") from None
    return kwargs


def stylegan2_generator_kwargs(snap: NetworkSnapshot) -> dict[str, Any]:
    """Init kwargs for ``StyleGAN2Generator``/``GMPIGenerator`` from a pickled SG2 ``Generator``.

    SG2 stores only explicitly passed kwargs; the rest take SG2's defaults (docs/method.md §11.3):
    channel_base 32768, channel_max 512, num_fp16_res 0, conv_clamp None, 8 mapping layers. Every number is
    checked against :func:`gmpi_core.config.check_architecture`'s limits.
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
    syn = _options(kw.get("synthesis_kwargs"), f"{what} synthesis_kwargs")
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
    mapping = _options(kw.get("mapping_kwargs"), f"{what} mapping_kwargs")
    w_dim = _as_int(kw["w_dim"], f"{what} w_dim")
    c_dim = _as_int(kw["c_dim"], f"{what} c_dim")
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
    return _checked(
        dict(
            z_dim=_as_int(kw["z_dim"], f"{what} z_dim"),
            c_dim=c_dim,
            w_dim=w_dim,
            img_resolution=_as_int(kw["img_resolution"], f"{what} img_resolution"),
            img_channels=_as_int(kw["img_channels"], f"{what} img_channels"),
            channel_base=_as_int(syn.get("channel_base", 32768), f"{what} channel_base"),
            channel_max=_as_int(syn.get("channel_max", 512), f"{what} channel_max"),
            num_fp16_res=_as_int(syn.get("num_fp16_res", 0), f"{what} num_fp16_res"),
            conv_clamp=_clamp(syn.get("conv_clamp"), f"{what} conv_clamp"),
            mapping_layers=_as_int(mapping.get("num_layers", 8), f"{what} mapping num_layers"),
        ),
        what,
    )


def stylegan2_discriminator_kwargs(snap: NetworkSnapshot) -> dict[str, Any]:
    """Init kwargs for our ``Discriminator`` from a pickled SG2 ``Discriminator`` (resnet only).

    Defaults for kwargs SG2 did not store (docs/method.md §11.3): channel_base 32768, channel_max 512,
    num_fp16_res 0, conv_clamp None, mbstd group 4 with 1 channel, cmap_dim = C_4. Every number is
    checked against :func:`gmpi_core.config.check_architecture`'s limits.
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
        _options(kw.get("block_kwargs"), f"{what} block_kwargs"),
        used=set(),
        fixed={"activation": "lrelu", "resample_filter": [1, 3, 3, 1], "architecture": "resnet"},
        ignored={"fp16_channels_last", "freeze_layers"},  # memory layout / training only
        what=f"{what} block_kwargs",
    )
    epilogue = _options(kw.get("epilogue_kwargs"), f"{what} epilogue_kwargs")
    _check_options(
        epilogue,
        used={"mbstd_group_size", "mbstd_num_channels"},
        fixed={"activation": "lrelu", "architecture": "resnet"},
        ignored=set(),
        what=f"{what} epilogue_kwargs",
    )
    _options(kw.get("mapping_kwargs"), f"{what} mapping_kwargs")
    channel_base = _as_int(kw.get("channel_base", 32768), f"{what} channel_base")
    channel_max = _as_int(kw.get("channel_max", 512), f"{what} channel_max")
    cmap_dim = kw.get("cmap_dim")
    group = epilogue.get("mbstd_group_size", 4)
    return _checked(
        dict(
            img_resolution=_as_int(kw["img_resolution"], f"{what} img_resolution"),
            img_channels=_as_int(kw["img_channels"], f"{what} img_channels"),
            c_dim=_as_int(kw["c_dim"], f"{what} c_dim"),
            channel_base=channel_base,
            channel_max=channel_max,
            num_fp16_res=_as_int(kw.get("num_fp16_res", 0), f"{what} num_fp16_res"),
            conv_clamp=_clamp(kw.get("conv_clamp"), f"{what} conv_clamp"),
            cmap_dim=_as_int(cmap_dim, f"{what} cmap_dim")
            if cmap_dim is not None
            else min(channel_base // 4, channel_max),
            mbstd_group_size=None if group is None else _as_int(group, f"{what} mbstd_group_size"),
            mbstd_num_channels=_as_int(epilogue.get("mbstd_num_channels", 1), f"{what} mbstd_num_channels"),
        ),
        what,
    )


def _build(factory: Callable[..., Any], kwargs: dict[str, Any], what: str) -> Any:
    """``factory(**kwargs)`` after the limit check; a constructor's complaint becomes our error."""
    _checked(kwargs, what)
    try:
        return factory(**kwargs)
    except (TypeError, ValueError, RuntimeError) as err:
        raise StyleGAN2PickleError(f"cannot build {what} from the pickle's kwargs: {err}") from None


# ---------------------------------------------------------------------------------------------------
# Building our networks


def load_stylegan2_generator(path: str | os.PathLike[str] | bytes | BinaryIO) -> StyleGAN2Generator:
    """Our ``StyleGAN2Generator`` with the pickle's ``G_ema`` weights (names and shapes must all match)."""
    from gmpi_core.networks import StyleGAN2Generator

    pkl = read_stylegan2_pkl(path)
    G = _build(StyleGAN2Generator, stylegan2_generator_kwargs(pkl.G_ema), "StyleGAN2Generator")
    load_state_dict_strict(G, pkl.G_ema.state_dict, source=f"G_ema of {_describe_source(path)}")
    return G.eval()


def init_gmpi_from_stylegan2(
    path: str | os.PathLike[str] | bytes | BinaryIO,
    alpha_head: str = "normalize_add_z",
    seed: int = GMPI_INIT_SEED,
    **gmpi_kwargs: Any,
) -> tuple[GMPIGenerator, Discriminator]:
    """GMPI's starting point (docs/method.md §4.5, §5): G ← the pickle's ``G_ema``, D ← its ``D``, by name.

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
        "c_dim": 16,  # flattened 4×4 world-to-camera matrix (docs/method.md §1.5)
        "cmap_dim": 16,
        "mbstd_group_size": 1,
        "mbstd_num_channels": 1,
    }
    _checked(g_kwargs, "GMPIGenerator")
    _checked(d_kwargs, "Discriminator")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.randn([_OFFICIAL_FIXED_LATENTS, int(g_kwargs["z_dim"])])
        G = _build(GMPIGenerator, g_kwargs, "GMPIGenerator")
        D = _build(Discriminator, d_kwargs, "Discriminator")
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
