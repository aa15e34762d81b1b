#!/usr/bin/env python
"""Bounded fuzzing of the checkpoint readers (pickle / torch.save zip+legacy / storage blobs / config.json).

Inputs are generated with Hypothesis: valid small files (a StyleGAN2-ADA pickle, official config.pth in
zip, legacy and yacs flavours, generator.pth, a storage blob, a native config.json) mutated by byte
flips, truncation, deletion/duplication of ranges, insertion of pickle opcodes with boundary arguments
at opcode boundaries, and mutation of the pickle inside a zip (re-zipped); plus opcode programs written
from scratch. Each reader must either succeed or raise one of its documented error types
(:data:`ALLOWED`); anything else is a crash. Every input runs under a per-input time limit (SIGALRM) and
the whole process under ``RLIMIT_AS`` (current address space + ``--mem-mib``), so an unbounded allocation
shows up as a MemoryError crash and a hang as a timeout.

    python scripts/fuzz/checkpoints.py --seconds 60                # all targets, ~60 s in total
    python scripts/fuzz/checkpoints.py --seconds 20 --target sg2_pickle --out /tmp/fuzz

Prints a JSON summary (inputs, inputs/s, crashes, slowest input per target); exits 1 if anything crashed.
Crashing inputs are written to ``--out``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pickle
import pickletools
import resource
import signal
import struct
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from rss import peak_rss_mib  # noqa: E402  (scripts/fuzz/rss.py: this script's folder is on sys.path)

from gmpi_core.checkpoints import (  # noqa: E402
    CheckpointMismatchError,
    NativeCheckpointError,
    OfficialCheckpointError,
    StyleGAN2PickleError,
    official_generator_kwargs,
    read_official_config,
    read_stylegan2_pkl,
    stylegan2_discriminator_kwargs,
    stylegan2_generator_kwargs,
)
from gmpi_core.checkpoints.native import read_native_config  # noqa: E402
from gmpi_core.checkpoints.safe_pickle import SafeUnpickler, UnsafePickleError  # noqa: E402
from gmpi_core.checkpoints.torch_file import TorchFileError, load_storage_blob, load_torch_file  # noqa: E402
from gmpi_core.config import architecture_errors  # noqa: E402

PER_INPUT_SECONDS = 5.0


class Hang(Exception):
    """Raised by SIGALRM when one input runs longer than the per-input limit."""


# ---------------------------------------------------------------------------------------------------
# Seeds: small valid files


def _seeds(tmp: Path) -> dict[str, bytes]:
    from tests.gmpi_core.checkpoints.fixtures import (
        SG2Config,
        build_sg2_pickle,
        fixture_pickle_module,
        official_config,
        to_cfg_nodes,
    )

    out: dict[str, bytes] = {}
    cfg = SG2Config(resolution=8, mapping_layers=1, channel_base=32, channel_max=8)
    out["sg2_pickle"] = build_sg2_pickle("pass", config=cfg, protocol=4).data
    out["sg2_pickle_p3"] = build_sg2_pickle("pass", config=cfg, protocol=3).data
    config = {"config": official_config("FFHQ256")}
    for name, obj, legacy in [
        ("config_zip", config, False),
        ("config_legacy", config, True),
        ("config_yacs", {"config": to_cfg_nodes(official_config("FFHQ256"))}, False),
    ]:
        path = tmp / name
        torch.save(
            obj, path, pickle_module=fixture_pickle_module(), _use_new_zipfile_serialization=not legacy
        )
        out[name] = path.read_bytes()
    weights = {
        "w": torch.arange(6.0).reshape(2, 3),
        "view": torch.arange(10.0)[2:7:2],
        "h": torch.ones(2, dtype=torch.float16),
        "b": torch.tensor([True, False]),
        "p": torch.nn.Parameter(torch.zeros(3)),
    }
    ema = {
        "decay": 0.999,
        "num_updates": 5,
        "shadow_params": [weights["w"], weights["h"]],
        "collected_params": None,
    }
    for name, obj, legacy in [
        ("pth_zip", weights, False),
        ("pth_legacy", weights, True),
        ("ema_zip", ema, False),
    ]:
        path = tmp / name
        torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
        out[name] = path.read_bytes()
    typed = torch.storage.TypedStorage(
        wrap_storage=torch.arange(4.0).untyped_storage(), dtype=torch.float32, _internal=True
    )
    out["storage_blob"] = typed.__reduce__()[1][0]  # type: ignore[index]
    native = {
        "format": "gmpi-native",
        "version": 1,
        "class": "GMPIGenerator",
        "kwargs": {
            "z_dim": 8,
            "c_dim": 0,
            "w_dim": 8,
            "img_resolution": 16,
            "img_channels": 3,
            "channel_base": 64,
            "channel_max": 16,
            "num_fp16_res": 0,
            "conv_clamp": None,
            "mapping_layers": 2,
            "alpha_head": "normalize_add_z",
            "alpha_largest_res": 256,
            "n_train_planes": 32,
            "depth2alpha_n_z_bins": 256,
            "train_plane_depth_norm": None,
        },
        "extra": {"step": 1},
    }
    out["native_config"] = json.dumps(native).encode()
    return out


def _opcode_starts(data: bytes) -> list[int]:
    """Byte offsets of the opcodes of the first pickle in ``data`` (best effort)."""
    starts = []
    try:
        for _op, _arg, pos in pickletools.genops(io.BytesIO(data)):
            starts.append(pos)
    except Exception:
        pass
    return starts or [0]


def _zip_members(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {info.filename: archive.read(info) for info in archive.infolist()}


def _rezip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------------
# Mutations


BOUNDARY_INTS = [0, 1, 2, 3, 7, 255, 256, 65535, 2**31 - 1, 2**31, 2**32 - 1, 2**40, 2**63 - 1]
GLOBAL_NAMES = [
    "torch_utils.persistence\n_reconstruct_persistent_obj",
    "dnnlib.util\nEasyDict",
    "torch._utils\n_rebuild_tensor_v2",
    "torch._utils\n_rebuild_parameter",
    "torch.storage\n_load_from_bytes",
    "collections\nOrderedDict",
    "builtins\nset",
    "numpy\ndtype",
    "numpy.core.multiarray\nscalar",
    "torch\nFloatStorage",
    "torch\nHalfStorage",
    "yacs.config\nCfgNode",
    "os\nsystem",
    "builtins\neval",
    "dnnlib.tflib.network\nNetwork",
]
NO_ARG_OPS = b"(.012N\x88\x89)]}\x8faesu\x90\x91t\x85\x86\x87ldRb\x81\x92\x93\x94Qo\x97\x98"


@st.composite
def pickle_op(draw: st.DrawFn) -> bytes:
    """One pickle opcode with an argument biased towards boundaries and lies about lengths."""
    n = st.one_of(st.sampled_from(BOUNDARY_INTS), st.integers(0, 2**64 - 1))
    kind = draw(st.integers(0, 9))
    if kind <= 2:
        return bytes([draw(st.sampled_from(list(NO_ARG_OPS)))])
    if kind == 3:
        code, width = draw(
            st.sampled_from([(b"K", 1), (b"M", 2), (b"J", 4), (b"h", 1), (b"j", 4), (b"q", 1)])
        )
        return code + (draw(n) % 256**width).to_bytes(width, "little")
    if kind == 4:
        code = draw(st.sampled_from([b"r", b"\x95", b"\x82", b"\x83", b"\x84", b"\x80"]))
        width = {b"r": 4, b"\x95": 8, b"\x82": 1, b"\x83": 2, b"\x84": 4, b"\x80": 1}[code]
        return code + (draw(n) % 256**width).to_bytes(width, "little")
    if kind == 5:  # length-prefixed data whose declared length may lie
        code, width = draw(
            st.sampled_from(
                [
                    (b"X", 4),
                    (b"\x8c", 1),
                    (b"\x8d", 8),
                    (b"C", 1),
                    (b"B", 4),
                    (b"\x8e", 8),
                    (b"\x96", 8),
                    (b"U", 1),
                    (b"T", 4),
                    (b"\x8a", 1),
                    (b"\x8b", 4),
                ]
            )
        )
        payload = draw(st.binary(max_size=16))
        declared = draw(st.one_of(st.just(len(payload)), n)) % 256**width
        return code + declared.to_bytes(width, "little") + payload
    if kind == 6:
        return b"c" + draw(st.sampled_from(GLOBAL_NAMES)).encode() + b"\n"
    if kind == 7:
        return (
            b"\x8c" + bytes([len(name := draw(st.sampled_from(GLOBAL_NAMES)).split("\n")[0].encode())]) + name
        )
    if kind == 8:
        code = draw(st.sampled_from([b"I", b"L", b"F", b"g", b"p", b"P"]))
        return code + str(draw(n)).encode() + b"\n"
    return b"G" + struct.pack("<d", draw(st.floats(allow_nan=True, allow_infinity=True)))


@st.composite
def mutated(draw: st.DrawFn, seed: bytes, starts: list[int]) -> bytes:
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["flip", "byte", "truncate", "insert", "delete", "duplicate", "int"]))
        size = len(data)
        if kind == "truncate":
            del data[draw(st.integers(0, size)) :]
        elif kind == "insert":  # opcodes at an opcode boundary of the seed
            at = min(draw(st.sampled_from(starts)), len(data))
            data[at:at] = b"".join(draw(st.lists(pickle_op(), min_size=1, max_size=4)))
        elif size == 0:
            continue
        elif kind == "flip":
            at = draw(st.integers(0, size - 1))
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "byte":
            data[draw(st.integers(0, size - 1))] = draw(st.integers(0, 255))
        elif kind == "delete":
            at = draw(st.integers(0, size - 1))
            del data[at : at + draw(st.integers(1, 16))]
        elif kind == "duplicate":
            at = draw(st.integers(0, size - 1))
            chunk = data[at : at + draw(st.integers(1, 64))]
            to = draw(st.integers(0, size))
            data[to:to] = chunk
        else:  # an integer argument of an opcode replaced by a boundary value
            at = min(draw(st.sampled_from(starts)), size - 1)
            if data[at : at + 1] in (b"K", b"M", b"J"):
                width = {b"K": 1, b"M": 2, b"J": 4}[bytes(data[at : at + 1])]
                value = draw(st.sampled_from(BOUNDARY_INTS)) % 256**width
                data[at + 1 : at + 1 + width] = value.to_bytes(width, "little")
    return bytes(data)


@st.composite
def program(draw: st.DrawFn) -> bytes:
    """An opcode program from scratch (PROTO 4, a few ops, STOP)."""
    return b"\x80\x04" + b"".join(draw(st.lists(pickle_op(), max_size=40))) + b"."


@st.composite
def zip_with_mutated_member(draw: st.DrawFn, members: dict[str, bytes]) -> bytes:
    name = draw(st.sampled_from(sorted(members)))
    content = members[name]
    new = dict(members)
    new[name] = draw(mutated(content, _opcode_starts(content) if name.endswith(".pkl") else [0]))
    return _rezip(new)


# ---------------------------------------------------------------------------------------------------
# Structured adversarial inputs: valid files with hostile values in chosen places

KEYS = [
    "z_dim",
    "w_dim",
    "c_dim",
    "img_resolution",
    "img_channels",
    "mapping_kwargs",
    "synthesis_kwargs",
    "num_layers",
    "channel_base",
    "channel_max",
    "num_fp16_res",
    "conv_clamp",
    "architecture",
    "layer_features",
    "embed_features",
    "mbstd_group_size",
    "_parameters",
    "_buffers",
    "_modules",
    "_init_kwargs",
    "_init_args",
    "_non_persistent_buffers_set",
    "dataset",
    "max_out_dim",
    "n_gen_planes",
    "torgba_cond_on_pos_enc",
    "distance_sample_method",
    "w",
    "x",
]
WORDS = [
    "skip",
    "resnet",
    "lrelu",
    "linear",
    "FFHQ256",
    "normalize_add_z",
    "learnable_param",
    "depth2alpha",
    "none",
    "inverse",
    "uniform",
    "modulated_lrelu",
    "01",
    "tanh",
]


def _values(tensors: bool) -> st.SearchStrategy[Any]:
    leaf = st.one_of(
        st.none(),
        st.booleans(),
        st.sampled_from([*BOUNDARY_INTS, -1, -(2**63), 10**400]),
        st.integers(),
        st.floats(),
        st.sampled_from(WORDS),
        st.text(max_size=6),
    )  # no bytes/sets: older protocols pickle them through globals, which the readers refuse first
    if tensors:
        shapes = st.lists(st.integers(0, 3), max_size=3)
        dtypes = st.sampled_from([torch.float32, torch.float16, torch.int64, torch.bool])
        leaf = st.one_of(leaf, st.builds(lambda s, d: torch.zeros(s, dtype=d), shapes, dtypes))
    return st.recursive(
        leaf,
        lambda kids: st.one_of(
            st.lists(kids, max_size=4),
            st.tuples(kids, kids),
            st.dictionaries(st.sampled_from(KEYS), kids, max_size=4),
        ),
        max_leaves=12,
    )


@st.composite
def sg2_structured(draw: st.DrawFn) -> bytes:
    from tests.gmpi_core.checkpoints.fixtures import EasyDict, SG2Builder, SG2Config, dumps

    cfg = SG2Config(resolution=8, mapping_layers=1, channel_base=32, channel_max=8)
    builder = SG2Builder(0, "pass")
    G_ema, D = builder.generator(cfg), builder.discriminator(cfg)
    snapshot: dict[str, Any] = {
        "G": None,
        "D": D,
        "G_ema": G_ema,
        "augment_pipe": None,
        "training_set_kwargs": {"resolution": 8},
    }
    values = _values(tensors=True)
    mapping_state = G_ema.meta["state"]["_modules"]["mapping"].meta["state"]
    g_kwargs = G_ema.meta["state"]["_init_kwargs"]
    g_mapping, g_synthesis = g_kwargs["mapping_kwargs"], g_kwargs["synthesis_kwargs"]
    d_kwargs = D.meta["state"]["_init_kwargs"]
    for _ in range(draw(st.integers(1, 3))):
        value = draw(values)
        if draw(st.booleans()):
            value = EasyDict(value) if isinstance(value, dict) else value
        where = draw(
            st.sampled_from(
                ["snapshot", "G_kwargs", "G_mapping", "G_synthesis", "G_state", "D_kwargs", "child_state"]
            )
        )
        key = draw(st.sampled_from(KEYS))
        state = G_ema.meta["state"]
        if where == "snapshot":
            snapshot[draw(st.sampled_from(["G", "D", "G_ema", "training_set_kwargs", "augment_pipe"]))] = (
                value
            )
        elif where == "G_kwargs":
            g_kwargs[key] = value
        elif where == "G_mapping":
            g_mapping[key] = value
        elif where == "G_synthesis":
            g_synthesis[key] = value
        elif where == "G_state":
            state[
                draw(
                    st.sampled_from(
                        [
                            "_parameters",
                            "_buffers",
                            "_modules",
                            "_init_args",
                            "_init_kwargs",
                            "_non_persistent_buffers_set",
                        ]
                    )
                )
            ] = value
        elif where == "D_kwargs":
            d_kwargs[key] = value
        else:
            mapping_state[draw(st.sampled_from(["_parameters", "_buffers", "_modules"]))] = value
    return dumps(snapshot, protocol=draw(st.sampled_from([3, 4])))  # protocol 2 pickles bytes via a global


@st.composite
def config_structured(draw: st.DrawFn) -> bytes:
    from tests.gmpi_core.checkpoints.fixtures import fixture_pickle_module, official_config, to_cfg_nodes

    cfg = official_config(draw(st.sampled_from(["FFHQ256", "FFHQ512", "AFHQCat"])))
    sections = [cfg["GMPI"]["TRAIN"], cfg["GMPI"]["MPI"], cfg["GMPI"]["MODEL"]["STYLEGAN2"], cfg["GMPI"]]
    values = _values(tensors=False)
    for _ in range(draw(st.integers(1, 3))):
        draw(st.sampled_from(sections))[draw(st.sampled_from(KEYS))] = draw(values)
    obj = {"config": to_cfg_nodes(cfg) if draw(st.booleans()) else cfg}
    buf = io.BytesIO()
    torch.save(
        obj, buf, pickle_module=fixture_pickle_module(), _use_new_zipfile_serialization=draw(st.booleans())
    )
    return buf.getvalue()


@st.composite
def native_structured(draw: st.DrawFn, seed: bytes) -> bytes:
    cfg = json.loads(seed)
    values = _values(tensors=False)
    for _ in range(draw(st.integers(1, 3))):
        cfg["kwargs"][draw(st.sampled_from(KEYS))] = draw(values)
    try:
        return json.dumps(cfg, default=repr).encode()
    except ValueError:  # integers beyond the str conversion limit
        return seed


# ---------------------------------------------------------------------------------------------------
# Targets


def _sg2(data: bytes) -> None:
    pkl = read_stylegan2_pkl(data)
    stylegan2_generator_kwargs(pkl.G_ema)
    if pkl.D is not None:
        stylegan2_discriminator_kwargs(pkl.D)


def _config(tmp: Path) -> Callable[[bytes], None]:
    def run(data: bytes) -> None:
        path = tmp / "config.pth"
        path.write_bytes(data)
        cfg = read_official_config(path)
        official_generator_kwargs(cfg)

    return run


def _torch_file(data: bytes) -> None:
    load_torch_file(data)


def _blob(data: bytes) -> None:
    load_storage_blob(data)


def _generic(data: bytes) -> None:
    from gmpi_core.checkpoints import stylegan2_pkl

    SafeUnpickler(io.BytesIO(data), stylegan2_pkl._ALLOWED_GLOBALS).load()


def _native(tmp: Path) -> Callable[[bytes], None]:
    def run(data: bytes) -> None:
        (tmp / "config.json").write_bytes(data)
        cfg = read_native_config(tmp)
        architecture_errors(cfg["kwargs"])

    return run


REFUSED = (UnsafePickleError,)
ALLOWED: dict[str, tuple[type[BaseException], ...]] = {
    "sg2_pickle": (StyleGAN2PickleError, *REFUSED),
    "sg2_program": (StyleGAN2PickleError, *REFUSED),
    "sg2_structured": (StyleGAN2PickleError, *REFUSED),
    "config_structured": (OfficialCheckpointError, *REFUSED),
    "native_structured": (NativeCheckpointError,),
    "generic_program": (pickle.UnpicklingError, StyleGAN2PickleError, TorchFileError),
    "config_pth": (OfficialCheckpointError, *REFUSED),
    "weights_pth": (TorchFileError, *REFUSED),
    "storage_blob": (TorchFileError, *REFUSED),
    "native_config": (NativeCheckpointError,),
}
_ = CheckpointMismatchError  # documented by the readers, not reachable from these targets


@dataclass
class Stats:
    inputs: int = 0
    seconds: float = 0.0
    slowest: float = 0.0
    outcomes: dict[str, int] = field(default_factory=dict)
    crashes: list[dict[str, Any]] = field(default_factory=list)


def _on_alarm(signum: int, frame: Any) -> None:
    raise Hang(f"one input ran longer than {PER_INPUT_SECONDS} s")


def fuzz(
    name: str,
    strategy: st.SearchStrategy[bytes],
    run: Callable[[bytes], None],
    seconds: float,
    shrink: bool = False,
) -> Stats:
    stats = Stats()
    allowed = ALLOWED[name]
    deadline = time.monotonic() + seconds

    @settings(
        max_examples=50,
        deadline=None,
        database=None,
        phases=[Phase.generate, Phase.shrink] if shrink else [Phase.generate],
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
    )
    @given(strategy)
    def one(data: bytes) -> None:
        start = time.monotonic()
        signal.setitimer(signal.ITIMER_REAL, PER_INPUT_SECONDS)
        outcome = "ok"
        try:
            run(data)
        except allowed as err:
            outcome = type(err).__name__
        except (Exception, Hang) as err:
            raise AssertionError(
                f"{type(err).__module__}.{type(err).__qualname__}: {str(err)[:500]}"
            ) from err
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            took = time.monotonic() - start
            stats.inputs += 1
            stats.slowest = max(stats.slowest, took)
            stats.outcomes[outcome] = stats.outcomes.get(outcome, 0) + 1

    began = time.monotonic()
    while time.monotonic() < deadline:
        try:
            one()
        except AssertionError as err:
            notes = getattr(err, "__notes__", [])  # Hypothesis' "Falsifying example: one(data=b'...')"
            found = {
                "target": name,
                "error": str(err).splitlines()[0][:600],
                "example": "\n".join(notes)[:4000],
            }
            stats.crashes.append(found)
            if len(stats.crashes) >= 5:
                break
        except Exception as err:  # a bug of the harness (an input generator), not of a reader
            stats.crashes.append({"target": name, "error": f"harness: {type(err).__name__}: {err}"[:600]})
            break
    stats.seconds = time.monotonic() - began
    return stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="total budget, split over the targets")
    parser.add_argument("--target", action="append", help="fuzz only these targets (repeatable)")
    parser.add_argument("--mem-mib", type=int, default=2048, help="address space above the start-up size")
    parser.add_argument("--out", type=Path, help="write crash reports here")
    parser.add_argument("--shrink", action="store_true", help="minimise crashing inputs (unbounded time)")
    args = parser.parse_args(argv)

    with open("/proc/self/statm") as fh:
        vm = int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    limit = vm + args.mem_mib * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    signal.signal(signal.SIGALRM, _on_alarm)
    torch.set_num_threads(1)

    tmp = Path(tempfile.mkdtemp(prefix="gmpi-fuzz-"))
    seeds = _seeds(tmp)
    starts = {name: _opcode_starts(data) for name, data in seeds.items()}

    def seeded(*names: str) -> st.SearchStrategy[bytes]:
        return st.one_of(*(mutated(seeds[n], starts[n]) for n in names))

    config_zips = [_zip_members(seeds[n]) for n in ("config_zip", "config_yacs")]
    weight_zips = [_zip_members(seeds[n]) for n in ("pth_zip", "ema_zip")]
    targets: dict[str, tuple[st.SearchStrategy[bytes], Callable[[bytes], None]]] = {
        "sg2_pickle": (seeded("sg2_pickle", "sg2_pickle_p3"), _sg2),
        "sg2_program": (program(), _sg2),
        "generic_program": (program(), _generic),
        "config_pth": (
            st.one_of(
                seeded("config_zip", "config_legacy", "config_yacs"),
                *(zip_with_mutated_member(m) for m in config_zips),
            ),
            _config(tmp),
        ),
        "weights_pth": (
            st.one_of(
                seeded("pth_zip", "pth_legacy", "ema_zip"), *(zip_with_mutated_member(m) for m in weight_zips)
            ),
            _torch_file,
        ),
        "sg2_structured": (sg2_structured(), _sg2),
        "config_structured": (config_structured(), _config(tmp)),
        "native_structured": (native_structured(seeds["native_config"]), _native(tmp)),
        "storage_blob": (seeded("storage_blob"), _blob),
        "native_config": (seeded("native_config"), _native(tmp)),
    }
    chosen = args.target or list(targets)
    unknown = sorted(set(chosen) - set(targets))
    if unknown:
        parser.error(f"unknown targets {unknown}; choose from {sorted(targets)}")

    summary: dict[str, Any] = {"seconds_per_target": args.seconds / len(chosen), "targets": {}}
    crashed = False
    for name in chosen:
        strategy, run = targets[name]
        stats = fuzz(name, strategy, run, args.seconds / len(chosen), args.shrink)
        crashed |= bool(stats.crashes)
        summary["targets"][name] = {
            "inputs": stats.inputs,
            "inputs_per_s": round(stats.inputs / stats.seconds, 1) if stats.seconds else 0.0,
            "slowest_s": round(stats.slowest, 3),
            "outcomes": dict(sorted(stats.outcomes.items(), key=lambda kv: -kv[1])),
            "crashes": stats.crashes,
        }
        if args.out is not None and stats.crashes:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / f"{name}.json").write_text(json.dumps(stats.crashes, indent=2))
    summary["max_rss_mib"] = peak_rss_mib()
    print(json.dumps(summary, indent=2))
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
