"""Training checkpoints (docs/method.md §6.9): atomic writes, a ``latest`` pointer, and the RNG states that
make a resumed run continue exactly where the interrupted one stopped.

Layout under ``<out>/checkpoints/``::

    ckpt_0000200.pt     everything needed to resume after 200 completed steps (torch.save, weights-only)
    ckpt_0000400.pt
    latest              text file naming the newest complete checkpoint

A checkpoint is written to a temporary file in the same folder, flushed and fsync'ed, then renamed over
its final name with ``os.replace`` (atomic on POSIX); only then is ``latest`` switched (the same way). A
crash at any point leaves the previous checkpoint and pointer intact. Every value stored is a tensor or
plain Python data, so loading uses ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gmpi_core.atomic import atomic_write

__all__ = [
    "CheckpointDir",
    "atomic_save",
    "atomic_write_bytes",
    "atomic_write_text",
    "capture_rng_state",
    "checkpoint_step",
    "load_checkpoint",
    "restore_rng_state",
]

_CKPT = re.compile(r"^ckpt_(\d+)\.pt$")


def atomic_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save(obj)`` to ``path`` via temp file + fsync + rename: readers never see a partial file."""

    def save(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            torch.save(obj, f)

    return atomic_write(path, save, mode=None, fsync=True)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    return atomic_write(path, data, mode=None, fsync=True)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write(path, text, mode=None, fsync=True)


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`atomic_save` (tensors and plain data only)."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise ValueError(
            f"cannot read training checkpoint {path}: {e}; delete it (and fix checkpoints/latest) to resume "
            "from an older one"
        ) from e


def checkpoint_step(path: str | os.PathLike[str] | None) -> int:
    """The step of a checkpoint named ``ckpt_NNNNNNN.pt``; -1 for None or another name."""
    m = _CKPT.match(Path(path).name) if path is not None else None
    return int(m.group(1)) if m else -1


class CheckpointDir:
    """Numbered checkpoints plus a ``latest`` pointer in one folder.

    ``keep_last`` newest numbered checkpoints are kept, and additionally every one whose step is a
    multiple of ``keep_every`` (0 = none), like the official rolling + numbered snapshots (method §6.9).
    """

    def __init__(self, root: str | os.PathLike[str], keep_last: int = 2, keep_every: int = 0) -> None:
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {keep_last}")
        self.root = Path(root)
        self.keep_last = keep_last
        self.keep_every = keep_every

    def path_for(self, step: int) -> Path:
        return self.root / f"ckpt_{step:07d}.pt"

    def steps(self) -> list[int]:
        """Steps of the complete numbered checkpoints on disk, ascending."""
        if not self.root.is_dir():
            return []
        return sorted(int(m.group(1)) for p in self.root.iterdir() if (m := _CKPT.match(p.name)))

    def latest(self) -> Path | None:
        """The checkpoint named by ``latest``, else the highest-numbered one, else None."""
        pointer = self.root / "latest"
        if pointer.is_file():
            target = self.root / pointer.read_text(encoding="utf-8").strip()
            if target.is_file():
                return target
        steps = self.steps()
        return self.path_for(steps[-1]) if steps else None

    def save(self, step: int, state: dict[str, Any]) -> Path:
        """Write ``state`` as the checkpoint of ``step``, point ``latest`` at it, prune old ones."""
        path = atomic_save(state, self.path_for(step))
        atomic_write_text(self.root / "latest", path.name + "\n")
        self._prune(step)
        return path

    def _prune(self, newest: int) -> None:
        steps = self.steps()
        keep = set(steps[-self.keep_last :]) | {newest}
        if self.keep_every > 0:
            keep |= {s for s in steps if s % self.keep_every == 0}
        for s in steps:
            if s not in keep:
                self.path_for(s).unlink(missing_ok=True)


# --- RNG states -------------------------------------------------------------------------------------------


def capture_rng_state(device: torch.device) -> dict[str, Any]:
    """This process's torch CPU (and CUDA ``device``), numpy and Python ``random`` states, as tensors and
    plain data (weights-only loadable)."""
    np_state: Any = np.random.get_state(legacy=True)
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch_cpu": torch.get_rng_state(),
        "numpy": {
            "kind": str(np_state[0]),
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": py_version, "internal": list(py_internal), "gauss_next": py_gauss},
    }
    if device.type == "cuda":
        state["torch_cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch_cpu"])
    if device.type == "cuda" and "torch_cuda" in state:
        torch.cuda.set_rng_state(state["torch_cuda"], device)
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
