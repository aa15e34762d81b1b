"""A pickle cannot change allow-listed globals for later loads (BUILD / SETITEM / APPEND on them).

``BUILD`` with slot state is ``setattr(obj, name, value)``: on the ``dnnlib.util.EasyDict`` stand-in it
would replace ``items`` for the rest of the process, and the next user's legitimate snapshot would then
silently lose its hyper-parameters (mapping_kwargs read as empty: 8 mapping layers instead of 2). The
unpickler only applies ``BUILD``/``SETITEM``/``APPEND`` to objects it created in the same load.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from gmpi_core.checkpoints import SafeUnpickler, read_stylegan2_pkl, stylegan2_generator_kwargs
from gmpi_core.checkpoints import stylegan2_pkl as sg2
from gmpi_core.checkpoints.safe_pickle import ForbiddenOperationError, UnsafePickleError

from .attacks import RawOps, raw_dumps, sg2_snapshot
from .fixtures import SG2Config, build_sg2_pickle


def _global(module: str, name: str) -> bytes:
    return b"c" + f"{module}\n{name}\n".encode()


def _str(text: str) -> bytes:
    data = text.encode()
    return b"X" + len(data).to_bytes(4, "little") + data


def _slot_build(target: bytes, attr: str, value: bytes) -> RawOps:
    """``target`` with BUILD state ``(None, {attr: value})``, i.e. ``setattr(target, attr, value)``."""
    return RawOps(target + b"N}" + _str(attr) + value + b"s\x86b")


def _dict_build(target: bytes, attr: str, value: bytes) -> RawOps:
    """``target`` with BUILD state ``{attr: value}``, i.e. ``target.__dict__[attr] = value``."""
    return RawOps(target + b"}" + _str(attr) + value + b"sb")


def _attrs(obj: Any) -> dict[str, Any]:
    return dict(vars(obj))


@pytest.fixture
def pristine() -> Iterator[dict[str, Any]]:
    """Snapshots of the stand-ins' attributes; restored afterwards so a regression cannot leak."""
    saved = {
        "EasyDict": _attrs(sg2._EasyDict),
        "reconstruct": _attrs(sg2._reconstruct_persistent_obj),
        "dtype_defaults": sg2._numpy_dtype.__defaults__,
    }
    yield saved
    for name in set(vars(sg2._EasyDict)) - set(saved["EasyDict"]):
        delattr(sg2._EasyDict, name)
    sg2._reconstruct_persistent_obj.__dict__.clear()
    sg2._reconstruct_persistent_obj.__dict__.update(saved["reconstruct"])
    sg2._numpy_dtype.__defaults__ = saved["dtype_defaults"]


ATTACKS = {
    # setattr(EasyDict, "items", set): every later EasyDict reads as {} (hyper-parameters silently lost)
    "EasyDict.items": _slot_build(_global("dnnlib.util", "EasyDict"), "items", _global("builtins", "set")),
    # setattr(_numpy_dtype, "__defaults__", (True, True)): later dtypes aligned
    "numpy.dtype.__defaults__": _slot_build(
        _global("numpy", "dtype"), "__defaults__", b"\x88\x88\x86"
    ),
    # _reconstruct_persistent_obj.__dict__["x"] = 1
    "function.__dict__": _dict_build(
        _global("torch_utils.persistence", "_reconstruct_persistent_obj"), "x", b"K\x01"
    ),
    # the class fetched once, memoized, and BUILT through BINGET later
    "EasyDict via memo": RawOps(
        _global("dnnlib.util", "EasyDict") + b"r\x00\x00\x00\x40" + b"0" + b"j\x00\x00\x00\x40"
        + b"N}" + _str("items") + _global("builtins", "set") + b"s\x86b"
    ),
}  # fmt: skip


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_build_on_an_allow_listed_global_is_refused_and_later_loads_are_unaffected(
    attack: str, pristine: dict[str, Any]
) -> None:
    evil = raw_dumps(sg2_snapshot({"path": "ffhq.zip", "x": ATTACKS[attack]}))
    with pytest.raises(ForbiddenOperationError, match=r"BUILD would set state on .*did not create"):
        read_stylegan2_pkl(evil)

    assert _attrs(sg2._EasyDict) == pristine["EasyDict"]
    assert "items" not in vars(sg2._EasyDict) and sg2._EasyDict.items is dict.items
    assert _attrs(sg2._reconstruct_persistent_obj) == pristine["reconstruct"]
    assert sg2._numpy_dtype.__defaults__ == pristine["dtype_defaults"]

    # the next, legitimate load in the same process reads the right hyper-parameters
    cfg = SG2Config(mapping_layers=2)
    pkl = read_stylegan2_pkl(build_sg2_pickle("pass", config=cfg).data)
    assert stylegan2_generator_kwargs(pkl.G_ema) == cfg.our_generator_kwargs()
    assert pkl.G_ema.init_kwargs["mapping_kwargs"] == {"num_layers": 2}
    assert all(not isinstance(v, np.dtype) or not v.isalignedstruct for v in pkl.G_ema.init_kwargs.values())


DEFAULTS: dict[str, Any] = {"lr": 0.002}
REGISTRY: list[str] = ["GMPIGenerator"]
SEEN: set[str] = set()


@pytest.mark.parametrize(
    ("ops", "target"),
    [
        (_global("cfg", "DEFAULTS") + _str("lr") + b"K\x09s.", "DEFAULTS"),  # SETITEM
        (_global("cfg", "DEFAULTS") + b"(" + _str("lr") + b"K\x09u.", "DEFAULTS"),  # SETITEMS
        (_global("cfg", "REGISTRY") + _str("os.system") + b"a.", "REGISTRY"),  # APPEND
        (_global("cfg", "REGISTRY") + b"(" + _str("os.system") + b"e.", "REGISTRY"),  # APPENDS
        (_global("cfg", "SEEN") + b"(" + _str("x") + b"\x90.", "SEEN"),  # ADDITEMS
        (_global("cfg", "DEFAULTS") + b"}" + _str("lr") + b"K\x09sb.", "DEFAULTS"),  # BUILD
    ],
    ids=["SETITEM", "SETITEMS", "APPEND", "APPENDS", "ADDITEMS", "BUILD"],
)
def test_allow_listed_module_level_objects_cannot_be_mutated(ops: bytes, target: str) -> None:
    allowed = {"cfg.DEFAULTS": DEFAULTS, "cfg.REGISTRY": REGISTRY, "cfg.SEEN": SEEN}
    before = (dict(DEFAULTS), list(REGISTRY), set(SEEN))
    data = b"\x80\x04" + ops
    try:
        with pytest.raises(
            ForbiddenOperationError, match=r"not a (dict|list|set) created by this load|BUILD"
        ):
            SafeUnpickler(io.BytesIO(data), allowed).load()
        assert before == (DEFAULTS, REGISTRY, SEEN)
    finally:
        DEFAULTS.clear(), DEFAULTS.update(before[0])
        REGISTRY[:] = before[1]
        SEEN.clear(), SEEN.update(before[2])
    # the same operations on containers the stream creates itself are fine
    fresh = SafeUnpickler(io.BytesIO(pickle.dumps({"lr": [1, {2}]}, protocol=4)), {}).load()
    assert fresh == {"lr": [1, {2}]}


def test_only_allow_listed_objects_are_called() -> None:
    """REDUCE on an object the stream built (not an allow-listed global) is refused before the call."""

    class Callable_:
        def __call__(self, *args: Any) -> Any:
            raise AssertionError("called")

    made = Callable_()
    factory = lambda: made  # noqa: E731 - an allow-listed factory returning a callable instance
    data = b"\x80\x04" + _global("m", "factory") + b")R" + b")R."  # factory() then (result)()
    with pytest.raises(ForbiddenOperationError, match=r"REDUCE calls .*not an allow-listed global"):
        SafeUnpickler(io.BytesIO(data), {"m.factory": factory}).load()


def test_refusals_are_unsafe_pickle_errors_that_survive_pickling() -> None:
    err = ForbiddenOperationError("refused to load x: BUILD ...")
    again = pickle.loads(pickle.dumps(err))
    assert isinstance(again, UnsafePickleError) and str(again) == str(err)
