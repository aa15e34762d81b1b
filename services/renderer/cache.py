"""LRU caches of loaded models and generated MPIs (per worker process), the ψ quantization of every MPI
cache key, and the bound on the browser MPI exports kept in the store."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

V = TypeVar("V")


class LRU(Generic[V]):
    """A small thread-safe least-recently-used map with a loader; ``hits``/``misses`` for the metrics."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._items: OrderedDict[Hashable, V] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: Hashable, load: Callable[[], V]) -> V:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key]
            self.misses += 1
        value = load()
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


# --- ψ and the browser MPI exports in the store --------------------------------------------------------
PSI_STEP = 0.01  # ψ is used to two decimals: what a viewer's slider can tell apart


def quantize_psi(psi: float) -> float:
    """ψ rounded to ``PSI_STEP``: every MPI cache key (the renderer's LRU, the export's store prefix)
    and the generation itself take this value, so nearby floats share one entry instead of each making
    its own."""
    return round(round(float(psi) / PSI_STEP) * PSI_STEP, 2)


def export_name(seed: int, planes: int | None, psi: float, fmt: str) -> str:
    """The folder of one export below ``models/{id}/mpi/`` (ψ quantized, written with two decimals)."""
    return f"s{int(seed)}-p{int(planes or 0)}-psi{quantize_psi(psi):.2f}-{fmt}/"


def prune_exports(storage: Any, model_id: str, keep: int, *, protect: str | None = None) -> list[str]:
    """Delete the oldest committed exports of a model beyond ``keep`` (by their manifests' commit time;
    ``protect``, the export just made or served, is never deleted); → the prefixes deleted. An export
    without a manifest is an unfinished one (another renderer writing it) and left alone."""
    from services.common.keys import MANIFEST, model_prefix

    root = model_prefix(model_id) + "mpi/"
    exports: list[tuple[str, str]] = []
    for key in storage.list(root):
        rest = key[len(root) :]
        name, _, tail = rest.partition("/")
        if tail != MANIFEST:
            continue
        prefix = root + name + "/"
        try:
            committed = str(storage.get_json(key).get("committed_utc") or "")
        except Exception:  # deleted meanwhile, or unreadable: the oldest
            committed = ""
        exports.append((committed, prefix))
    exports.sort(reverse=True)  # newest first
    deleted = []
    for _, prefix in exports[keep:]:
        if prefix == protect:
            continue
        storage.delete_prefix(prefix)
        deleted.append(prefix)
    return deleted
