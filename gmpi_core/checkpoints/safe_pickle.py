"""An unpickler that resolves globals only from an explicit allow-list (spec §11.2).

A pickle is a small program: every ``GLOBAL``/``STACK_GLOBAL`` opcode imports an object by name and
``REDUCE``/``NEWOBJ`` call it. :class:`SafeUnpickler` answers every import from a mapping
``"module.name" -> object`` chosen by the caller, so the only callables a file can reach are the ones the
reader put there. Anything else stops the load with :class:`ForbiddenGlobalError` *before* it is
imported, let alone called. Persistent ids (``torch.save``'s storage references) are refused too.

    >>> import io, pickle
    >>> SafeUnpickler(io.BytesIO(pickle.dumps({"a": [1, 2]})), allowed_globals={}).load()
    {'a': [1, 2]}

Limitation: the ``EXT1/2/4`` opcodes resolve through :mod:`copyreg`'s extension registry, which is empty
unless the running process registers codes itself; CPython serves already-cached codes without calling
:meth:`find_class`.
"""

from __future__ import annotations

import _compat_pickle
import pickle
from collections.abc import Mapping
from typing import IO, Any

__all__ = ["ForbiddenGlobalError", "SafeUnpickler"]

_DEFAULT_ADVICE = (
    "If the file is what it claims to be, it was written by a program this reader does not support; if you "
    "trust it, load it once in an isolated environment and re-save the weights as safetensors "
    "(gmpi_core.checkpoints.native.save_pretrained)."
)


class ForbiddenGlobalError(pickle.UnpicklingError):
    """The pickle referenced a global that is not on the reader's allow-list; nothing of it was run."""

    def __init__(self, global_name: str, source: str = "the pickle", advice: str | None = None) -> None:
        self.global_name = global_name
        self.source = source
        self.advice = advice
        super().__init__(
            f"refused to load {source}: it references the global '{global_name}', which is not on this "
            "reader's allow-list. Nothing was executed: the global was neither imported nor called, and "
            f"loading stopped there. {advice or _DEFAULT_ADVICE}"
        )

    def __reduce__(self) -> tuple[type[ForbiddenGlobalError], tuple[str, str, str | None]]:
        return (type(self), (self.global_name, self.source, self.advice))  # survives pickling (task results)


class SafeUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose :meth:`find_class` only returns objects from ``allowed_globals``.

    ``allowed_globals`` maps the dotted name as written in the stream (``"collections.OrderedDict"``) to the
    object handed back; readers usually map foreign names to small stand-ins of their own
    (e.g. ``"dnnlib.util.EasyDict"`` to a ``dict`` subclass). ``source`` names the file in error messages.
    """

    def __init__(
        self,
        file: IO[bytes],
        allowed_globals: Mapping[str, Any],
        *,
        source: str = "the pickle",
        advice: str | None = None,
    ) -> None:
        super().__init__(file)
        self._allowed = dict(allowed_globals)
        self._source = source
        self._advice = advice

    def find_class(self, module: str, name: str) -> Any:
        # Protocol < 3 writes Python 2 names ('__builtin__.set'); map them as pickle's fix_imports does.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        full_name = f"{module}.{name}"
        try:
            return self._allowed[full_name]
        except KeyError:
            raise ForbiddenGlobalError(full_name, self._source, self._advice) from None

    def persistent_load(self, pid: Any) -> Any:
        kind = pid[0] if isinstance(pid, tuple) and pid else type(pid).__name__
        raise pickle.UnpicklingError(
            f"refused to load {self._source}: it contains a persistent reference ({kind!r}), which this "
            "reader does not resolve. Files written by torch.save() are read with "
            "torch.load(..., weights_only=True), not with this reader."
        )
