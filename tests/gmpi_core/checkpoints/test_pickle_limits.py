"""The unpickler's and the converters' bounds, in-process (small limits monkeypatched where needed)."""

from __future__ import annotations

import io
import pickle
from typing import Any

import numpy as np
import pytest

from gmpi_core.checkpoints import SafeUnpickler, safe_pickle
from gmpi_core.checkpoints.safe_pickle import (
    ForbiddenOperationError,
    MalformedPickleError,
    PickleLimitError,
    plain_data,
    safe_repr,
)

from .attacks import deep_list_ops, raw_dumps, shared_list_bomb


def _load(data: bytes, allowed: dict[str, Any] | None = None, **kwargs: Any) -> Any:
    return SafeUnpickler(io.BytesIO(data), allowed or {}, **kwargs).load()


@pytest.mark.parametrize("protocol", range(6))
def test_plain_data_of_every_protocol_loads(protocol: int) -> None:
    obj: dict[str, Any] = {"a": [1, 2.5, "x", None, (True, -7)], "b": {"c": ()}, "c": 10**30}
    if protocol >= 4:  # bytes and sets need globals (_codecs.encode, builtins.set) in older protocols
        obj["d"] = [b"\x00", {frozenset({1}), 2}]
    assert _load(pickle.dumps(obj, protocol=protocol)) == obj


def test_opcode_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    data = pickle.dumps(list(range(1000)), protocol=4)
    assert len(_load(data)) == 1000
    with pytest.raises(PickleLimitError, match="more than 100 opcodes"):
        _load(data, max_ops=100)


def test_declared_lengths_never_allocate_beyond_the_stream() -> None:
    for op in (b"\x8e", b"\x8d", b"\x95"):  # BINBYTES8, BINUNICODE8, FRAME of 2^62 bytes
        with pytest.raises(MalformedPickleError, match="truncated"):
            _load(b"\x80\x04" + op + (2**62).to_bytes(8, "little") + b"abc")
    with pytest.raises(ForbiddenOperationError, match="BYTEARRAY8"):  # would allocate before reading
        _load(b"\x80\x05\x96" + (2**40).to_bytes(8, "little"))


def test_memo_indices_are_not_array_sizes() -> None:
    data = b"\x80\x04]r\xff\xff\xff\x7fj\xff\xff\xff\x7f\x86."  # PUT/GET at 2^31 - 1
    assert _load(data) == ([], [])


def test_ext_opcodes_and_persistent_ids_are_refused() -> None:
    with pytest.raises(ForbiddenOperationError, match="extension registry"):
        _load(b"\x80\x02\x82\x01.")
    with pytest.raises(ForbiddenOperationError, match="persistent reference"):
        _load(b"\x80\x02K\x01Q.")


def test_shared_nested_tuples_are_bounded_before_anything_hashes_them() -> None:
    ok = pickle.dumps({(1, (2, 3)): [(4, 5)] * 100}, protocol=4)
    assert _load(ok)[(1, (2, 3))] == [(4, 5)] * 100
    with pytest.raises(PickleLimitError, match="MAX_TUPLE_WORK"):
        _load(b"\x80\x04})" + b"2\x86" * 60 + b"K\x01s.")  # {t: 1}, t = (t, t) 60 times
    with pytest.raises(PickleLimitError, match="tuple nests"):
        _load(b"\x80\x04)" + b"\x85" * 200 + b".")  # ((((...),),),) 200 deep


def test_a_failed_load_leaves_nothing_behind() -> None:
    with pytest.raises(PickleLimitError):
        _load(b"\x80\x04)" + b"\x85" * 200 + b".")
    assert _load(pickle.dumps(((1,),), protocol=4)) == ((1,),)


def test_plain_data_counts_shared_objects_once_and_bounds_the_tree() -> None:
    shared = {"k": [1, 2]}
    out = plain_data([shared, shared], what="x")
    assert out == [{"k": [1, 2]}] * 2 and out[0] is out[1]  # converted once, still shared
    with pytest.raises(PickleLimitError, match=r"x expands to more than 100000 objects.*MAX_DATA_NODES"):
        plain_data(shared_list_bomb(), what="x")
    assert plain_data(shared_list_bomb(10), what="x", max_nodes=4096) == shared_list_bomb(10)
    cycle: list[Any] = []
    cycle.append(cycle)
    with pytest.raises(PickleLimitError, match="refers to itself"):
        plain_data({"a": cycle}, what="x")
    deep = _load(raw_dumps(deep_list_ops(500)))
    with pytest.raises(PickleLimitError, match="more than 64 levels deep"):
        plain_data(deep, what="x")
    numbers = plain_data({"g": np.float32(0.5)}, what="x", leaf=lambda v: getattr(v, "item", lambda: v)())
    assert numbers == {"g": 0.5} and type(numbers["g"]) is float
    assert type(plain_data({"d": safe_pickle.MalformedPickleError}, what="x")["d"]) is type


def test_safe_repr_is_short_on_anything() -> None:
    assert safe_repr({"a": [1, 2]}) == "{'a': [1, 2]}"
    assert safe_repr(shared_list_bomb(60)).startswith("[[[")
    assert len(safe_repr(shared_list_bomb(60))) <= 120
    assert safe_repr(10**5000) == "<int of 16610 bits>"
    assert safe_repr(np.float32(1)) == "<float32>" and safe_repr(np.float64(1)) == "np.float64(1.0)"

    class Loud:
        def __repr__(self) -> str:
            raise AssertionError("a loaded object's __repr__ ran")

    assert safe_repr([Loud()]) == "[<Loud>]"
    assert safe_repr(set(range(100))).startswith("set({0, 1, 2")
