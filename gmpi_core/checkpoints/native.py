"""Our checkpoint format: ``config.json`` + ``weights.safetensors`` (+ ``ema.safetensors``), no pickle.

A checkpoint is a directory (docs/method.md §6.9 lists what the official code saves; services/README.md the
object-store layout ``models/{id}/config.json, weights.safetensors, ema.safetensors``)::

    config.json           {"format": "gmpi-native", "version": 1, "class": "GMPIGenerator",
                           "kwargs": <model.config>, "extra": <any JSON, e.g. the experiment config>}
    weights.safetensors   model.state_dict(): parameters and persistent buffers (w_avg, noise_const, ...)
    ema.safetensors       optional: EMA parameters by name (docs/method.md §6.8)

The class is looked up in a registry of our network classes — never imported from a string in the file.
Writes are atomic: files go into a temporary directory next to the target, are fsynced, then renamed into
place with ``config.json`` last, so an interrupted save never leaves a directory that looks complete.

This module also holds the strict state-dict loading and the broadcasting name-matched copy shared by the
other readers of this package.

    >>> save_pretrained("ckpt/ffhq256", G, ema_state=ema, extra={"step": 5000})  # doctest: +SKIP
    >>> G = load_pretrained("ckpt/ffhq256", use_ema=True)                          # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from gmpi_core.atomic import fsync_dir, fsync_file, staged_dir
from gmpi_core.checkpoints.safe_pickle import safe_repr

__all__ = [
    "CONFIG_FILE",
    "EMA_FILE",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "WEIGHTS_FILE",
    "CheckpointMismatchError",
    "NativeCheckpointError",
    "TensorCopyReport",
    "check_state_dict",
    "copy_matching_tensors",
    "describe_state_dict",
    "load_pretrained",
    "load_state_dict_strict",
    "read_native_config",
    "register_native_class",
    "save_pretrained",
]

FORMAT_NAME = "gmpi-native"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"
EMA_FILE = "ema.safetensors"
# config.json holds the network kwargs and the experiment config (a few KB); anything far larger is refused
# before it is parsed.
MAX_CONFIG_BYTES = 16 << 20


class CheckpointMismatchError(ValueError):
    """A checkpoint's tensors do not fit the network: missing, unexpected or wrongly shaped names."""


class NativeCheckpointError(ValueError):
    """A directory is not a readable gmpi-native checkpoint, or a model cannot be saved as one."""


# ---------------------------------------------------------------------------------------------------
# Name-matched loading shared by all readers


def describe_state_dict(state: Mapping[str, Tensor]) -> str:
    """A one-line guess of what a state dict holds, for error messages ("GMPI generator at 256², ...")."""
    keys = list(state)
    res = [int(m.group(1)) for k in keys if (m := re.match(r"(?:synthesis\.)?b(\d+)\.", k))]
    resolution = f" at {max(res)}²" if res else ""
    if any(k.startswith("synthesis.") for k in keys):
        if any(".pos_enc_embed." in k for k in keys):
            kind = "a GMPI generator (depth-conditioned alpha heads)"
        elif any(".todepth." in k for k in keys):
            kind = "a GMPI generator (depth2alpha variant)"
        elif any(".toalpha." in k for k in keys):
            kind = "a GMPI generator (alpha heads without depth embedding)"
        else:
            kind = "a StyleGAN2 generator without GMPI heads"
    elif any(k.startswith("b4.fc.") for k in keys):
        kind = "a pose-conditioned discriminator" if "mapping.weight" in state else "a discriminator"
    else:
        kind = "an unrecognised network"
    return f"{kind}{resolution} with {len(keys)} tensors"


def _listing(items: list[str], limit: int = 12) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", … (+{len(items) - limit} more)" if len(items) > limit else "")


def check_state_dict(model: nn.Module, state: Mapping[str, Tensor], *, source: str) -> None:
    """Raise :class:`CheckpointMismatchError` listing names that are missing, unexpected or mis-shaped."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k} {list(state[k].shape)} (network: {list(expected[k].shape)})"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append(f"{len(wrong)} with the wrong shape: {_listing(wrong)}")
        if missing:
            parts.append(f"{len(missing)} missing: {_listing(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected: {_listing(unexpected)}")
        raise CheckpointMismatchError(
            f"{source} does not fit {type(model).__name__}({_config_repr(model)}): "
            + "; ".join(parts)
            + f". The file looks like {describe_state_dict(state)}; the network is "
            f"{describe_state_dict(expected)}. Check the resolution/variant/channels it was built with."
        )


def load_state_dict_strict(model: nn.Module, state: Mapping[str, Tensor], *, source: str) -> None:
    """``model.load_state_dict(state)`` after :func:`check_state_dict` (names and shapes must all match)."""
    check_state_dict(model, state, source=source)
    model.load_state_dict(dict(state), strict=True)


def _config_repr(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    return ", ".join(f"{k}={v!r}" for k, v in config.items()) if isinstance(config, dict) else ""


@dataclass
class TensorCopyReport:
    """What :func:`copy_matching_tensors` did, by destination name (``unused``: source-only names)."""

    copied: list[str] = field(default_factory=list)
    broadcast: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)


@torch.no_grad()
def copy_matching_tensors(
    source_state: Mapping[str, Tensor], model: nn.Module, *, source: str = "the source"
) -> TensorCopyReport:
    """Copy every tensor of ``model`` whose name exists in ``source_state`` with ``Tensor.copy_``.

    Like the official ``copy_params_and_buffers(require_all=False)`` (docs/method.md §4.5): names absent from
    the source keep their values, and a source shape that broadcasts to the destination is broadcast
    (``b4.out.weight`` [1, C] → [16, C]). A shape that does not broadcast is an error naming the tensor.
    """
    report = TensorCopyReport()
    destination = model.state_dict(keep_vars=True)
    for name, tensor in destination.items():
        if name not in source_state:
            report.new.append(name)
            continue
        src = source_state[name]
        if tuple(src.shape) == tuple(tensor.shape):
            report.copied.append(name)
        else:
            try:
                fits = torch.broadcast_shapes(src.shape, tensor.shape) == tensor.shape
            except RuntimeError:
                fits = False
            if not fits:
                raise CheckpointMismatchError(
                    f"cannot initialise '{name}' {list(tensor.shape)} of {type(model).__name__} from "
                    f"{source}: "
                    f"its tensor has shape {list(src.shape)}, which does not broadcast. {source} looks like "
                    f"{describe_state_dict(source_state)}."
                )
            report.broadcast.append(name)
        tensor.copy_(src)
    report.unused = [k for k in source_state if k not in destination]
    return report


# ---------------------------------------------------------------------------------------------------
# Registry of classes a checkpoint may name

_ModuleT = TypeVar("_ModuleT", bound=type[nn.Module])
_REGISTRY: dict[str, type[nn.Module]] = {}
_NETWORK_CLASSES = ("StyleGAN2Generator", "GMPIGenerator", "Discriminator")


def register_native_class(cls: _ModuleT) -> _ModuleT:
    """Allow ``cls`` (an ``nn.Module`` with ``.config`` and ``from_config``) in native checkpoints."""
    _REGISTRY[cls.__name__] = cls
    return cls


def _registry() -> dict[str, type[nn.Module]]:
    import gmpi_core.networks as networks

    for name in _NETWORK_CLASSES:
        cls = getattr(networks, name, None)
        if cls is not None:
            _REGISTRY.setdefault(name, cls)
    return _REGISTRY


# ---------------------------------------------------------------------------------------------------
# Writing


def _safetensors_ready(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """CPU, contiguous, no two tensors sharing storage (safetensors refuses aliasing)."""
    out: dict[str, Tensor] = {}
    seen: set[int] = set()
    for name, tensor in state.items():
        if not isinstance(tensor, Tensor):
            raise NativeCheckpointError(f"'{name}' is a {type(tensor).__name__}, not a tensor")
        t = tensor.detach().to("cpu").contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen and t.numel() > 0:
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        out[name] = t
    return out


def _write_text(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def _write_safetensors(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str]) -> None:
    save_file(tensors, str(path), metadata=metadata)
    fsync_file(path)


def _move_into_place(staging: Path, target: Path) -> None:
    """Rename ``staging`` to ``target``; into an existing directory file by file, ``config.json`` last.

    Not ``replace_dir``: a model directory may hold more than the checkpoint (``discriminator/``, a
    trainer's ``train-state/``), which an overwrite keeps."""
    if not target.exists():
        os.rename(staging, target)
        return
    if not target.is_dir():
        raise NativeCheckpointError(f"cannot save to {target}: it exists and is not a directory")
    # Existing directory (it may hold other things, e.g. train-state/): first make it look incomplete,
    # then move the new files in, and the config last.
    (target / CONFIG_FILE).unlink(missing_ok=True)
    fsync_dir(target)
    for name in (WEIGHTS_FILE, EMA_FILE):
        if (staging / name).exists():
            os.replace(staging / name, target / name)
        else:
            (target / name).unlink(missing_ok=True)  # a stale EMA must not pair with new weights
    os.replace(staging / CONFIG_FILE, target / CONFIG_FILE)
    shutil.rmtree(staging, ignore_errors=True)


def save_pretrained(
    directory: str | os.PathLike[str],
    model: nn.Module,
    *,
    ema_state: Mapping[str, Tensor] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` (a registered network class) as a gmpi-native checkpoint directory; returns it.

    ``ema_state`` maps parameter names to EMA tensors (shapes must match the model). ``extra`` is stored
    verbatim in ``config.json`` and must be JSON-able.
    """
    target = Path(directory)
    cls_name = type(model).__name__
    registry = _registry()
    if registry.get(cls_name) is not type(model):
        raise NativeCheckpointError(
            f"cannot save a {cls_name}: a native checkpoint names its class and only registered network "
            f"classes can be loaded back ({sorted(registry)}); register it with register_native_class()"
        )
    config = getattr(model, "config", None)
    if not isinstance(config, dict):
        raise NativeCheckpointError(f"cannot save a {cls_name}: it has no `.config` dict of init kwargs")
    header = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "class": cls_name,
        "kwargs": config,
        "extra": extra,
    }
    try:
        config_text = json.dumps(header, indent=2, allow_nan=True)
    except (TypeError, ValueError) as err:
        raise NativeCheckpointError(
            f"cannot save a {cls_name}: config/extra are not JSON-able ({err})"
        ) from None

    weights = _safetensors_ready(model.state_dict())
    ema = None
    if ema_state is not None:
        ema = _safetensors_ready(ema_state)
        bad = [
            f"{k} {list(v.shape)}"
            + (f" (model: {list(weights[k].shape)})" if k in weights else " (no such tensor)")
            for k, v in ema.items()
            if k not in weights or tuple(v.shape) != tuple(weights[k].shape)
        ]
        if bad:
            raise NativeCheckpointError(f"ema_state does not fit the {cls_name}: {_listing(bad)}")

    metadata = {"format": "pt", "gmpi_class": cls_name}
    with staged_dir(target, swap=_move_into_place) as staging:  # removed if anything here fails
        _write_safetensors(staging / WEIGHTS_FILE, weights, metadata)
        if ema is not None:
            _write_safetensors(staging / EMA_FILE, ema, metadata)
        _write_text(staging / CONFIG_FILE, config_text)  # written last: its presence marks completeness
        fsync_dir(staging)
    fsync_dir(target)
    fsync_dir(target.parent)
    return target


# ---------------------------------------------------------------------------------------------------
# Reading


def read_native_config(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed and validated ``config.json`` of a gmpi-native checkpoint directory."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise NativeCheckpointError(
            f"{Path(directory)} is not a gmpi-native checkpoint (no {CONFIG_FILE}; an interrupted save "
            "leaves none). Official GMPI checkpoints (config.pth, generator.pth, ema.pth) load with "
            "load_official_gmpi(), StyleGAN2-ADA pickles with read_stylegan2_pkl()."
        )
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise NativeCheckpointError(
            f"{path} is {size} bytes; a gmpi-native config.json is a few KB (limit MAX_CONFIG_BYTES = "
            f"{MAX_CONFIG_BYTES})"
        )
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except RecursionError:
        raise NativeCheckpointError(f"{path} nests too deeply to be a gmpi-native config") from None
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError, integers beyond the digit limit
        raise NativeCheckpointError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT_NAME:
        got = cfg.get("format") if isinstance(cfg, dict) else type(cfg).__name__
        raise NativeCheckpointError(f"{path}: format is {safe_repr(got)}, expected {FORMAT_NAME!r}")
    if cfg.get("version") != FORMAT_VERSION:
        raise NativeCheckpointError(
            f"{path}: format version {safe_repr(cfg.get('version'))} is not supported (this code reads "
            f"version {FORMAT_VERSION}); upgrade gmpi_core"
        )
    if not isinstance(cfg.get("class"), str) or not isinstance(cfg.get("kwargs"), dict):
        raise NativeCheckpointError(f"{path}: needs a string 'class' and a 'kwargs' object")
    return cfg


def _load_tensors(path: Path) -> dict[str, Tensor]:
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as err:
        raise NativeCheckpointError(f"cannot read {path}: {err}") from None


def load_pretrained(
    directory: str | os.PathLike[str],
    *,
    use_ema: bool | None = False,
    map_location: str | torch.device = "cpu",
) -> nn.Module:
    """Rebuild the network of a gmpi-native checkpoint and load its tensors strictly; eval mode.

    ``use_ema=True`` replaces the parameters by ``ema.safetensors`` (buffers such as ``w_avg`` still come
    from ``weights.safetensors``); ``None``: so when the checkpoint has that file.
    """
    root = Path(directory)
    if use_ema is None:
        use_ema = (root / EMA_FILE).is_file()
    cfg = read_native_config(root)
    registry = _registry()
    cls = registry.get(cfg["class"])
    if cls is None:
        raise NativeCheckpointError(
            f"{root / CONFIG_FILE} names the class {safe_repr(cfg['class'])}, which is not a known network "
            f"class; known: {sorted(registry)}"
        )
    factory: Callable[[dict[str, Any]], nn.Module] = getattr(cls, "from_config", None) or (
        lambda kw: cls(**kw)
    )
    from gmpi_core.config import architecture_errors

    errors = architecture_errors(cfg["kwargs"])
    if errors:
        raise NativeCheckpointError(
            f"{root / CONFIG_FILE}: {'; '.join(errors)}; refused before building {cfg['class']}"
        )
    try:
        model = factory(dict(cfg["kwargs"]))
    except (TypeError, ValueError, RuntimeError) as err:
        raise NativeCheckpointError(
            f"{root / CONFIG_FILE}: cannot build {cfg['class']} from its kwargs: {err}"
        ) from None
    state = _load_tensors(root / WEIGHTS_FILE)
    if use_ema:
        if not (root / EMA_FILE).is_file():
            raise NativeCheckpointError(f"{root} has no {EMA_FILE}; load it with use_ema=False")
        ema = _load_tensors(root / EMA_FILE)
        unknown = [k for k in ema if k not in state]
        if unknown:
            raise CheckpointMismatchError(
                f"{root / EMA_FILE} holds tensors absent from the weights: {_listing(unknown)}"
            )
        state.update(ema)
    load_state_dict_strict(model, state, source=str(root / (EMA_FILE if use_ema else WEIGHTS_FILE)))
    return model.to(map_location).eval()
