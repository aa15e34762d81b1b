"""The allow-list unpickler refuses every other global before it can run (docs/method.md §11.2)."""

from __future__ import annotations

import io
import pickle
import subprocess
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest

from gmpi_core.checkpoints import ForbiddenGlobalError, SafeUnpickler, read_stylegan2_pkl

from .fixtures import GlobalRef, Reduce, SG2Builder, SG2Config, dumps


def _payloads(marker: Path) -> dict[str, Reduce]:
    """Pickled calls that each create ``marker`` when unpickled by plain ``pickle``."""
    return {
        "os.system": Reduce(GlobalRef("os", "system"), f"touch {marker}"),
        "posix.system": Reduce(GlobalRef("posix", "system"), f"touch {marker}"),
        "builtins.eval": Reduce(GlobalRef("builtins", "eval"), f"open({str(marker)!r}, 'w').close()"),
        "subprocess.Popen": Reduce(GlobalRef("subprocess", "Popen"), ["touch", str(marker)]),
    }


@pytest.mark.parametrize("global_name", ["os.system", "posix.system", "builtins.eval", "subprocess.Popen"])
def test_forbidden_global_is_refused_by_name_and_its_payload_never_runs(
    tmp_path: Path, global_name: str
) -> None:
    marker = tmp_path / "payload-ran"
    data = dumps({"weights": [1.0, 2.0], "evil": _payloads(marker)[global_name]})

    # The payload is live: plain pickle runs it and the marker appears.
    result: dict[str, Any] = pickle.loads(data)
    if isinstance(result["evil"], subprocess.Popen):
        result["evil"].wait()
    assert marker.exists()
    marker.unlink()

    with pytest.raises(ForbiddenGlobalError) as info:
        SafeUnpickler(io.BytesIO(data), {"collections.OrderedDict": OrderedDict}, source="'x.pkl'").load()
    assert info.value.global_name == global_name
    message = str(info.value)
    assert f"'{global_name}'" in message and "'x.pkl'" in message
    assert "Nothing was executed" in message
    assert not marker.exists()
    again = pickle.loads(pickle.dumps(info.value))  # exceptions travel (e.g. as task results)
    assert again.global_name == global_name and str(again) == message


def test_forbidden_global_hidden_inside_a_network_state_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "payload-ran"
    G_ema = SG2Builder(0, module_src="pass").generator(SG2Config())
    G_ema.meta["state"]["_modules"]["synthesis"].meta["state"]["hook"] = _payloads(marker)["os.system"]
    data = dumps({"G": None, "D": None, "G_ema": G_ema, "augment_pipe": None, "training_set_kwargs": None})

    with pytest.raises(ForbiddenGlobalError, match=r"'os\.system'"):
        read_stylegan2_pkl(data)
    assert not marker.exists()


def test_only_allow_listed_objects_come_back_from_find_class() -> None:
    class Marker:
        pass

    data = dumps({"a": Reduce(GlobalRef("my.module", "make"), 3), "b": [1, 2.5, "x", None, (True,)]})
    out = SafeUnpickler(io.BytesIO(data), {"my.module.make": lambda n: [Marker()] * n}).load()
    assert len(out["a"]) == 3 and all(isinstance(m, Marker) for m in out["a"])
    assert out["b"] == [1, 2.5, "x", None, (True,)]


def test_persistent_references_are_refused_with_advice() -> None:
    class WithPersistentIds(pickle.Pickler):
        def persistent_id(self, obj: object) -> object:
            return ("storage", "FloatStorage", "0", "cpu", 4) if obj == "tensor-here" else None

    buf = io.BytesIO()
    WithPersistentIds(buf, protocol=2).dump({"w": "tensor-here"})
    with pytest.raises(pickle.UnpicklingError, match=r"persistent reference.*load_torch_file"):
        SafeUnpickler(io.BytesIO(buf.getvalue()), {}).load()
