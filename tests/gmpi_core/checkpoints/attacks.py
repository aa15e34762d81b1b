"""Hostile checkpoint files: memory/time bombs and oversized architectures, each a few hundred bytes to KB.

Every builder writes one file (or checkpoint directory) under ``root`` and returns its path. They use the
fixture picklers of :mod:`.fixtures`, which memoize shared objects like every pickler does: a structure
that is exponential as a tree is linear in the file.
"""

from __future__ import annotations

import io
import json
import pickle
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, ClassVar

import torch

from .fixtures import (
    FixturePickler,
    SG2Builder,
    SG2Config,
    dumps,
    fixture_pickle_module,
    official_config,
    to_cfg_nodes,
)

DAG_LEVELS = 25  # 2^26 nodes as a tree: ~2 GB and ~40 s to copy naively, ~150 bytes pickled


class RawOps:
    """Pickled as the given opcodes verbatim (they must leave exactly one object on the stack)."""

    def __init__(self, ops: bytes) -> None:
        self.ops = ops


def shared_list_bomb(levels: int = DAG_LEVELS) -> list[Any]:
    """``a = []; for _ in range(levels): a = [a, a]``."""
    a: list[Any] = []
    for _ in range(levels):
        a = [a, a]
    return a


def shared_tuple_key(levels: int = 60) -> RawOps:
    """``{t: 1}`` where ``t = (); for _ in range(levels): t = (t, t)``: hashing the key takes 2^levels
    steps (the dict cannot even be built here, so it is written as opcodes: DUP, TUPLE2, ...)."""
    return RawOps(b"})" + b"2\x86" * levels + b"K\x01s")


def self_containing_list() -> RawOps:
    """``a = []; a.append(a)`` (EMPTY_LIST, DUP, APPEND)."""
    return RawOps(b"]2a")


class RawPickler(FixturePickler):
    dispatch: ClassVar[dict[type, Any]] = dict(FixturePickler.dispatch)

    def save_raw(self, obj: RawOps) -> None:
        self.write(obj.ops)

    dispatch[RawOps] = save_raw


def raw_dumps(obj: Any, protocol: int = 4) -> bytes:
    buf = io.BytesIO()
    RawPickler(buf, protocol=protocol).dump(obj)
    return buf.getvalue()


def deep_list_ops(depth: int) -> RawOps:
    """A list nested ``depth`` levels deep in 2·depth bytes (MARK… then LIST…)."""
    return RawOps(b"(" * depth + b"l" * depth)


# ---------------------------------------------------------------------------------------------------
# StyleGAN2-ADA pickles


def sg2_snapshot(
    training_set_kwargs: Any = None, *, config: SG2Config | None = None, G_ema: Any = None, D: bool = False
) -> dict[str, Any]:
    cfg = config or SG2Config()
    builder = SG2Builder(0, "pass")
    return {
        "G": None,
        "D": builder.discriminator(cfg) if D else None,
        "G_ema": G_ema if G_ema is not None else builder.generator(cfg),
        "augment_pipe": None,
        "training_set_kwargs": training_set_kwargs,
    }


def write(root: Path, name: str, data: bytes) -> Path:
    path = root / name
    path.write_bytes(data)
    return path


def sg2_with_kwargs_value(root: Path, name: str, value: Any) -> Path:
    """A valid snapshot whose ``training_set_kwargs`` hold ``value``."""
    return write(root, name, raw_dumps(sg2_snapshot({"path": "ffhq.zip", "x": value})))


def sg2_with_shared_module_tree(root: Path, levels: int = DAG_LEVELS) -> Path:
    """G_ema's module tree shares each child twice per level: 2^levels module paths."""
    builder = SG2Builder(0, "pass")
    node = builder.fc(2, 2)
    for _ in range(levels):
        node = builder.module("Wrapper", children={"a": node, "b": node})
    return write(root, "module_dag.pkl", dumps(sg2_snapshot(G_ema=node)))


def sg2_with_architecture(root: Path, name: str, **overrides: Any) -> Path:
    """A valid snapshot (with D) whose G_ema init kwargs are overridden (``mapping_kwargs`` etc.)."""
    cfg = SG2Config()
    builder = SG2Builder(0, "pass")
    G_ema = builder.generator(cfg)
    kwargs = G_ema.meta["state"]["_init_kwargs"]
    for key, value in overrides.items():
        if key in ("num_layers",):
            kwargs["mapping_kwargs"][key] = value
        elif key in ("channel_base", "channel_max"):
            kwargs["synthesis_kwargs"][key] = value
        else:
            kwargs[key] = value
    return write(root, name, dumps(sg2_snapshot(G_ema=G_ema, D=True)))


def sg2_with_huge_storage_blob(root: Path) -> Path:
    """A tensor whose storage blob declares 2^40 floats but holds 6."""
    typed = torch.storage.TypedStorage(
        wrap_storage=torch.arange(6.0).untyped_storage(), dtype=torch.float32, _internal=True
    )
    blob = typed.__reduce__()[1][0]  # type: ignore[index]
    # the legacy blob's main pickle declares numel with BININT1 6 right after 'cpu'
    marker = b"X\x03\x00\x00\x00cpuq\x03K\x06"
    assert blob.count(marker) == 1
    blob = blob.replace(marker, b"X\x03\x00\x00\x00cpuq\x03\x8a\x06" + (1 << 40).to_bytes(6, "little"))
    from .fixtures import GlobalRef, Reduce

    tensor = Reduce(
        GlobalRef("torch._utils", "_rebuild_tensor_v2"),
        Reduce(GlobalRef("torch.storage", "_load_from_bytes"), blob),
        0,
        (6,),
        (1,),
        False,
        OrderedDict(),
    )
    builder = SG2Builder(0, "pass")
    G_ema = builder.generator(SG2Config())
    G_ema.meta["state"]["_buffers"]["huge"] = tensor
    return write(root, "huge_blob.pkl", dumps(sg2_snapshot(G_ema=G_ema)))


# ---------------------------------------------------------------------------------------------------
# Official GMPI checkpoints


def official_dir(
    root: Path, name: str, config: dict[str, Any], *, yacs: bool = False, legacy: bool = False
) -> Path:
    """A directory with only config.pth (enough for everything that happens before weights are read)."""
    directory = root / name
    directory.mkdir()
    obj = {"config": to_cfg_nodes(config) if yacs else config}
    torch.save(
        obj,
        directory / "config.pth",
        pickle_module=fixture_pickle_module(),
        _use_new_zipfile_serialization=not legacy,
    )
    return directory


def official_config_with(**mutations: Any) -> dict[str, Any]:
    """The tiny FFHQ256 fixture config with overrides by path: ``GMPI__MPI__n_gen_planes=10**9``."""
    cfg = official_config("FFHQ256")
    for path, value in mutations.items():
        node = cfg
        *parents, leaf = path.split("__")
        for key in parents:
            node = node[key]
        node[leaf] = value
    return cfg


class _StorageSizeLiar(FixturePickler):
    """Writes torch.save's storage persistent ids with a different element count."""

    declared = 1 << 40

    def save_pers(self, pid: Any) -> None:
        if isinstance(pid, tuple) and pid and pid[0] == "storage":
            pid = (*pid[:4], self.declared, *pid[5:])
        super().save_pers(pid)


def official_with_generator_pth(root: Path, name: str) -> tuple[Path, Path]:
    """A checkpoint directory with a valid config.pth; returns it and where its generator.pth goes."""
    directory = official_dir(root, name, official_config("FFHQ256"))
    return directory, directory / "generator.pth"


def generator_pth_with_huge_storage(root: Path, name: str, *, legacy: bool) -> Path:
    """generator.pth whose only storage declares 2^40 floats (the file holds 4)."""
    module = fixture_pickle_module()
    module.Pickler = _StorageSizeLiar  # type: ignore[attr-defined]
    module.dump = lambda obj, f, protocol=2: _StorageSizeLiar(f, protocol=protocol).dump(obj)  # type: ignore[attr-defined]
    directory, path = official_with_generator_pth(root, name)
    torch.save({"w": torch.zeros(4)}, path, pickle_module=module, _use_new_zipfile_serialization=not legacy)
    return directory


class _SetOnBuild:
    """A tensor pickled with a BUILD state that torch's weights-only loader passes to ``Tensor.set_``."""

    def __init__(self, numel: int) -> None:
        self.numel = numel

    def __reduce__(self) -> tuple[Any, ...]:
        storage = torch.zeros(1).untyped_storage()
        typed = torch.storage.TypedStorage(wrap_storage=storage, dtype=torch.float32, _internal=True)
        args = (typed, 0, (1,), (1,), False, OrderedDict())
        return (torch._utils._rebuild_tensor_v2, args, (typed, 0, (self.numel,), (1,)))  # type: ignore[attr-defined]


def generator_pth_with_tensor_build(root: Path) -> Path:
    """generator.pth (legacy format: resizable storages) whose tensor is BUILT to 2^31 elements."""
    directory, path = official_with_generator_pth(root, "tensor_build")
    torch.save({"w": _SetOnBuild(1 << 31)}, path, _use_new_zipfile_serialization=False)
    return directory


def zip_with_compressed_pickle(root: Path) -> Path:
    """config.pth whose data.pkl is deflate-compressed (torch.save never compresses)."""
    payload = pickle.dumps({"config": official_config("FFHQ256")}, protocol=2)
    directory = root / "compressed"
    directory.mkdir()
    with zipfile.ZipFile(directory / "config.pth", "w") as archive:
        archive.writestr("archive/data.pkl", payload, compress_type=zipfile.ZIP_DEFLATED)
        archive.writestr("archive/version", b"3\n")
    return directory


# ---------------------------------------------------------------------------------------------------
# Native checkpoints


def native_dir(root: Path, name: str, **kwargs: Any) -> Path:
    """A tiny StyleGAN2Generator checkpoint whose config.json kwargs are then overridden."""
    from gmpi_core.checkpoints import save_pretrained
    from gmpi_core.networks import StyleGAN2Generator

    directory = root / name
    G = StyleGAN2Generator(**SG2Config().our_generator_kwargs())
    save_pretrained(directory, G)
    config = json.loads((directory / "config.json").read_text())
    config["kwargs"].update(kwargs)
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def long_binput(index: int) -> RawOps:
    """An empty list stored at memo index ``index`` (CPython's C unpickler sizes its memo array by it)."""
    return RawOps(b"]r" + struct.pack("<I", index))


def huge_binbytes8() -> RawOps:
    """A BINBYTES8 that declares 2^40 bytes (the file holds a few KB)."""
    return RawOps(b"\x8e" + struct.pack("<Q", 1 << 40))
