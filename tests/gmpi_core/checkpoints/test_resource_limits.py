"""Memory and time bombs in checkpoint files are refused with a clear error, within bounded memory and time.

Each hostile file is a few hundred bytes to a few KB. Before the readers were bounded they made the
process copy a shared structure as a tree (``a = []; for _ in range(25): a = [a, a]``: 2^26 nodes, GBs
and tens of seconds), hash shared nested tuples forever, grow the C unpickler's memo to the index a file
names, allocate storages of the size a file declares, or build networks with 100 000 mapping layers. The
readers run in forked children (:mod:`.guarded`) capped at ``MEM_MIB`` of address space and ``TIMEOUT``
seconds, so a regression fails here instead of taking the machine down.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from . import attacks
from .fixtures import SG2Config

REPO = Path(__file__).resolve().parents[3]
MEM_MIB = 1536  # address space a job may add to the runner's (torch is already imported at fork)
TIMEOUT = 30.0  # seconds per job
MAX_SECONDS = 10.0  # what a refused (or harmless) file may cost
MAX_EXTRA_MIB = 200.0  # peak resident memory a job may add

LIMIT = "gmpi_core.checkpoints.safe_pickle.PickleLimitError"
FORBIDDEN = "gmpi_core.checkpoints.safe_pickle.ForbiddenOperationError"
SG2_ERROR = "gmpi_core.checkpoints.stylegan2_pkl.StyleGAN2PickleError"
OFFICIAL_ERROR = "gmpi_core.checkpoints.official_gmpi.OfficialCheckpointError"
NATIVE_ERROR = "gmpi_core.checkpoints.native.NativeCheckpointError"


@dataclass
class Attack:
    build: Callable[[Path], Path]
    call: str
    error: str | None  # None: the file is harmless and must load
    match: str = ""


def _official(name: str, **mutations: Any) -> Callable[[Path], Path]:
    return lambda root: attacks.official_dir(root, name, attacks.official_config_with(**mutations))


def _native(name: str, **kwargs: Any) -> Callable[[Path], Path]:
    return lambda root: attacks.native_dir(root, name, **kwargs)


def _sg2_value(name: str, value: Any) -> Callable[[Path], Path]:
    return lambda root: attacks.sg2_with_kwargs_value(root, name, value)


def _sg2_arch(name: str, **overrides: Any) -> Callable[[Path], Path]:
    return lambda root: attacks.sg2_with_architecture(root, name, **overrides)


ATTACKS: dict[str, Attack] = {
    # -- A: shared references copied as a tree, cycles, nesting, hashing ---------------------------------
    "sg2_shared_list_in_kwargs": Attack(
        _sg2_value("dag.pkl", attacks.shared_list_bomb()), "read_stylegan2_pkl", LIMIT, "expands to more than"
    ),
    "sg2_shared_list_in_init_kwargs": Attack(
        _sg2_arch("dag_init.pkl", extra=attacks.shared_list_bomb()),
        "read_stylegan2_pkl",
        LIMIT,
        r"G_ema\._init_kwargs expands to more than 100000",
    ),
    "sg2_shared_module_tree": Attack(
        attacks.sg2_with_shared_module_tree, "read_stylegan2_pkl", SG2_ERROR, "appears twice in the network"
    ),
    "sg2_cycle": Attack(
        _sg2_value("cycle.pkl", attacks.self_containing_list()),
        "read_stylegan2_pkl",
        LIMIT,
        "refers to itself",
    ),
    "sg2_deep_nesting": Attack(
        _sg2_value("deep.pkl", attacks.deep_list_ops(100_000)), "read_stylegan2_pkl", LIMIT, "levels deep"
    ),
    "sg2_shared_tuple_hash": Attack(
        _sg2_value("hash.pkl", attacks.shared_tuple_key()), "read_stylegan2_pkl", LIMIT, "MAX_TUPLE_WORK"
    ),
    "sg2_memo_index": Attack(
        _sg2_value("memo.pkl", attacks.long_binput(1 << 27)), "read_stylegan2_pkl", None
    ),
    "sg2_declared_bytes_from_file": Attack(
        _sg2_value("binbytes8.pkl", attacks.huge_binbytes8()), "read_stylegan2_pkl", SG2_ERROR, "truncated"
    ),
    "sg2_huge_storage_blob": Attack(
        attacks.sg2_with_huge_storage_blob, "read_stylegan2_pkl", SG2_ERROR, "refused before allocating"
    ),
    "config_shared_list": Attack(
        _official("cfg_dag", GMPI__TRAIN__x=attacks.shared_list_bomb()),
        "read_official_config",
        LIMIT,
        "expands to more than",
    ),
    "config_shared_list_yacs_legacy": Attack(
        lambda root: attacks.official_dir(
            root,
            "cfg_dag_yacs",
            attacks.official_config_with(GMPI__TRAIN__x=attacks.shared_list_bomb()),
            yacs=True,
            legacy=True,
        ),
        "read_official_config",
        LIMIT,
        "expands to more than",
    ),
    # -- A: architecture numbers checked before a network is built ---------------------------------------
    "config_mapping_layers": Attack(
        _official("layers", GMPI__MODEL__STYLEGAN2__mapping_kwargs={"num_layers": 100_000}),
        "load_official_gmpi",
        OFFICIAL_ERROR,
        r"mapping_layers=100000 is outside \[1, 32\] \(MAX_MAPPING_LAYERS\)",
    ),
    "config_channel_max": Attack(
        _official("channels", GMPI__MODEL__STYLEGAN2__synthesis_kwargs={"channel_max": 10**6}),
        "load_official_gmpi",
        OFFICIAL_ERROR,
        r"channel_max=1000000 is outside \[1, 1024\] \(MAX_CHANNEL_MAX\)",
    ),
    "config_planes": Attack(
        _official(
            "planes",
            GMPI__MODEL__STYLEGAN2__torgba_cond_on_pos_enc_embed_func="learnable_param",
            GMPI__MPI__n_gen_planes=10**10,
        ),
        "load_official_gmpi",
        OFFICIAL_ERROR,
        r"n_train_planes=10000000000 is outside \[1, 1024\] \(MAX_PLANES\)",
    ),
    "sg2_mapping_layers": Attack(
        _sg2_arch("layers.pkl", num_layers=100_000, w_dim=512),
        "init_gmpi_from_stylegan2",
        SG2_ERROR,
        r"mapping_layers=100000 is outside \[1, 32\]",
    ),
    "sg2_resolution": Attack(
        _sg2_arch("res.pkl", img_resolution=1 << 20),
        "init_gmpi_from_stylegan2",
        SG2_ERROR,
        r"img_resolution=1048576 is outside \[4, 2048\] \(MAX_RESOLUTION\)",
    ),
    "native_mapping_layers": Attack(
        _native("native_layers", mapping_layers=100_000, w_dim=512),
        "load_pretrained",
        NATIVE_ERROR,
        r"mapping_layers=100000 is outside \[1, 32\] \(MAX_MAPPING_LAYERS\).*refused before building",
    ),
    "native_channels": Attack(
        _native("native_channels", channel_base=1 << 30, channel_max=1 << 20),
        "load_pretrained",
        NATIVE_ERROR,
        r"channel_base=1073741824 is outside \[1, 65536\] \(MAX_CHANNEL_BASE\)",
    ),
    "native_resolution": Attack(
        _native("native_res", img_resolution=1 << 20),
        "load_pretrained",
        NATIVE_ERROR,
        r"img_resolution=1048576 is outside \[4, 2048\] \(MAX_RESOLUTION\)",
    ),
    # -- A: storages a .pth declares, checked against the file before allocation ---------------------------
    "pth_zip_declared_storage": Attack(
        lambda root: attacks.generator_pth_with_huge_storage(root, "zip", legacy=False),
        "load_official_gmpi_raw",
        OFFICIAL_ERROR,
        r"declares 1099511627776 elements \(4398046511104 bytes\) but its archive member holds 16 bytes; "
        "refused before allocating",
    ),
    "pth_legacy_declared_storage": Attack(
        lambda root: attacks.generator_pth_with_huge_storage(root, "legacy", legacy=True),
        "load_official_gmpi_raw",
        OFFICIAL_ERROR,
        "refused before allocating",
    ),
    "pth_tensor_build_set_": Attack(
        attacks.generator_pth_with_tensor_build, "load_official_gmpi_raw", FORBIDDEN, "BUILD on a Tensor"
    ),
    "pth_compressed_member": Attack(
        attacks.zip_with_compressed_pickle, "read_official_config", OFFICIAL_ERROR, "compressed"
    ),
}


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    root = tmp_path_factory.mktemp("attacks")
    jobs = [
        json.dumps({"name": name, "call": attack.call, "path": str(attack.build(root))})
        for name, attack in ATTACKS.items()
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "2"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.gmpi_core.checkpoints.guarded",
            "--mem-mib",
            str(MEM_MIB),
            "--timeout",
            str(TIMEOUT),
        ],
        input="\n".join(jobs),
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=TIMEOUT * len(jobs) + 120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {r["name"]: r for r in map(json.loads, proc.stdout.splitlines())}


@pytest.mark.parametrize("name", list(ATTACKS))
def test_hostile_file_is_refused_clearly_within_bounds(name: str, results: dict[str, dict[str, Any]]) -> None:
    attack = ATTACKS[name]
    got = results.get(name)
    assert got is not None, f"{name}: no result (the runner died before it)"
    summary = f"{name}: {got['outcome']} {got.get('type')} {got['message'][:300]!r} in {got['seconds']} s"
    if attack.error is None:
        assert got["outcome"] == "ok", summary
    else:
        assert got["outcome"] == "error" and got["type"] == attack.error, summary
        assert re.search(attack.match, got["message"]), summary
    assert got["seconds"] <= MAX_SECONDS, summary
    assert got["extra_mib"] <= MAX_EXTRA_MIB, f"{summary}, +{got['extra_mib']} MiB"


def test_the_tiny_fixture_config_used_by_the_attacks_is_itself_valid(tmp_path: Path) -> None:
    """The attacks change one thing each: the unchanged builders produce files that load."""
    from gmpi_core.checkpoints import read_official_config, read_stylegan2_pkl

    assert read_official_config(attacks.official_dir(tmp_path, "ok", attacks.official_config_with()))
    assert read_stylegan2_pkl(attacks.sg2_with_kwargs_value(tmp_path, "ok.pkl", [1, 2])).G_ema is not None
    snap = read_stylegan2_pkl(attacks.sg2_with_architecture(tmp_path, "arch.pkl"))
    assert snap.G_ema.init_kwargs["img_resolution"] == SG2Config().resolution
