"""An unpickler that resolves globals only from an explicit allow-list, within bounded work (method §11.2).

A pickle is a small program: every ``GLOBAL``/``STACK_GLOBAL`` opcode imports an object by name and
``REDUCE``/``NEWOBJ`` call it. :class:`SafeUnpickler` answers every import from a mapping
``"module.name" -> object`` chosen by the caller, so the only callables a file can reach are the ones the
reader put there. Anything else stops the load with :class:`ForbiddenGlobalError` *before* it is
imported, let alone called. Persistent ids (``torch.save``'s storage references) are refused unless the
reader resolves them itself.

    >>> import io, pickle
    >>> SafeUnpickler(io.BytesIO(pickle.dumps({"a": [1, 2]})), allowed_globals={}).load()
    {'a': [1, 2]}

The file is also kept from changing anything outside the objects it creates, and from making the reader
do unbounded work:

* **Allow-listed globals are immutable to the pickle.** ``BUILD`` (``__setstate__``/``__dict__`` updates)
  is only applied to objects that an allow-listed call returned *in this load*, never to the class or
  function objects themselves; ``APPEND``/``SETITEM``/``ADDITEMS`` only to containers of this load.
  Only allow-listed objects are called. (Otherwise ``BUILD`` on ``dnnlib.util.EasyDict`` could replace
  the stand-in's ``items`` for every later load in the process.)
* **Bounded work.** At most ``max_ops`` opcodes; declared lengths never allocate more than the stream
  holds (reads are chunked, short reads are an error); hashing of nested tuples is bounded
  (:data:`MAX_TUPLE_DEPTH`, :data:`MAX_TUPLE_WORK`), so a few hundred bytes of shared tuples cannot hang
  a dict insertion; out-of-band buffers, ``BYTEARRAY8`` and the ``EXT`` registry opcodes are refused.
* :func:`plain_data` converts what was loaded into plain dicts/lists, visiting every shared object once
  and refusing structures that are too large *when expanded* (shared references counted each time they
  are reached), too deep, or cyclic: ``a = []; for _ in range(25): a = [a, a]`` pickles to ~150 bytes
  but is 2^26 nodes as a tree.

Refusals raise :class:`UnsafePickleError` subclasses (never caught by the readers: they surface as they
are); a malformed stream raises :class:`MalformedPickleError`. Exceptions that allow-listed callables
raise as ``ValueError``/``UnpicklingError`` pass through unchanged (they are the reader's own verdicts).
"""

from __future__ import annotations

import _compat_pickle
import itertools
import pickle
import reprlib
import struct
import types
from collections.abc import Callable, Mapping
from typing import IO, Any, ClassVar

__all__ = [
    "MAX_DATA_DEPTH",
    "MAX_DATA_NODES",
    "MAX_PICKLE_OPS",
    "MAX_TUPLE_DEPTH",
    "MAX_TUPLE_WORK",
    "ForbiddenGlobalError",
    "ForbiddenOperationError",
    "MalformedPickleError",
    "PickleLimitError",
    "SafeUnpickler",
    "UnsafePickleError",
    "plain_data",
    "safe_repr",
]

# Opcodes one load may execute. A StyleGAN2-ADA snapshot at 1024² (G, D, G_ema) takes ~0.1 M; an official
# config.pth a few thousand. Every opcode creates at most one object, so this also bounds the objects.
MAX_PICKLE_OPS = 2_000_000
# Nesting depth of one tuple (legitimate files: ≤ 3); hashing recurses through it in C.
MAX_TUPLE_DEPTH = 64
# Tuple elements, counted through nesting, that the stream may put on the stack (each creation and each
# reuse from the memo counts the whole tuple): bounds the hashing that dict keys and sets can trigger.
MAX_TUPLE_WORK = 10_000_000
# plain_data(): objects in one converted structure when expanded as a tree, and its depth. Configs and
# init kwargs hold a few hundred.
MAX_DATA_NODES = 100_000
MAX_DATA_DEPTH = 64

_READ_CHUNK = 1 << 20

_DEFAULT_ADVICE = (
    "If the file is what it claims to be, it was written by a program this reader does not support; if you "
    "trust it, load it once in an isolated environment and re-save the weights as safetensors "
    "(gmpi_core.checkpoints.native.save_pretrained)."
)


class UnsafePickleError(pickle.UnpicklingError):
    """The file asked for something this reader refuses; loading stopped there and nothing was run."""

    def __init__(self, message: str) -> None:
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self),))  # survives pickling (task results)


class ForbiddenGlobalError(UnsafePickleError):
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

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.global_name, self.source, self.advice))


class ForbiddenOperationError(UnsafePickleError):
    """The pickle tried to modify or call an object it may not (e.g. ``BUILD`` on an allow-listed class)."""


class PickleLimitError(UnsafePickleError):
    """The file exceeds a size, count or depth limit (or is cyclic); refused before the work was done."""


class MalformedPickleError(pickle.UnpicklingError):
    """The stream is truncated or is not a well-formed pickle of what the reader expects."""


def safe_repr(value: Any, limit: int = 120) -> str:
    """A short ``repr`` for error messages that is safe on any loaded value (shared, deep, huge ints).

    Containers are shown a few levels and items deep; other objects as ``<TypeName>``, so no foreign
    ``__repr__`` runs and nothing is expanded exponentially.
    """
    text = _SHORT_REPR.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _ShortRepr(reprlib.Repr):
    def __init__(self) -> None:
        super().__init__()
        self.maxlevel = 3
        self.maxdict = self.maxlist = self.maxtuple = self.maxset = self.maxfrozenset = 6
        self.maxstring = self.maxother = 60

    def repr1(self, x: Any, level: int) -> str:
        if x is None or isinstance(x, bool | float | complex):
            return repr(x)
        if isinstance(x, int):
            return repr(x) if x.bit_length() <= 128 else f"<int of {x.bit_length()} bits>"
        if isinstance(x, str | bytes | bytearray):
            return self.repr_str(x, level) if isinstance(x, str) else self.repr_instance(x, level)
        for kind in (dict, list, tuple, set, frozenset):
            if isinstance(x, kind):
                text = self._container(x, kind, level)
                return text if type(x) is kind else f"{type(x).__name__}({text})"
        return f"<{type(x).__name__}>"

    def _container(self, x: Any, kind: type, level: int) -> str:
        if kind is dict:
            return self.repr_dict(x, level)
        if kind in (list, tuple):
            text: str = getattr(self, f"repr_{kind.__name__}")(x, level)
            return text
        # sets: the first few in iteration order (reprlib would sort the whole set first)
        shown = list(itertools.islice(iter(x), self.maxset))
        inner = ", ".join(self.repr1(item, level - 1) for item in shown) if level > 0 else "..."
        more = ", ..." if len(x) > len(shown) else ""
        return f"{kind.__name__}({{{inner}{more}}})" if x else f"{kind.__name__}()"

    def repr_dict(self, x: Any, level: int) -> str:
        # dict.items, not x.items: a loaded object's own attributes are never called
        n = len(x)
        if n == 0:
            return "{}"
        if level <= 0:
            return "{...}"
        parts = [
            f"{self.repr1(k, level - 1)}: {self.repr1(v, level - 1)}"
            for k, v in list(dict.items(x))[: self.maxdict]
        ]
        return "{" + ", ".join(parts) + (", ..." if n > self.maxdict else "") + "}"

    def repr_instance(self, x: Any, level: int) -> str:
        if isinstance(x, bytes | bytearray):
            head = bytes(x[: self.maxother])
            return repr(head) + ("..." if len(x) > self.maxother else "")
        return f"<{type(x).__name__}>"


_SHORT_REPR = _ShortRepr()


# ---------------------------------------------------------------------------------------------------
# Reading the stream


class _BoundedReader:
    """``read(n)`` that never asks the stream for more than it delivers: a declared length of 2^60 bytes
    reads (and allocates) what is there, in chunks, and is then an error instead of an allocation."""

    def __init__(self, file: IO[bytes], source: str) -> None:
        self._read = file.read
        self._readline = file.readline
        self._source = source
        self.consumed = 0

    def read(self, n: int) -> bytes:
        if n < 0:
            raise MalformedPickleError(f"{self._source}: negative read length {n}")
        parts = []
        left = n
        while left > 0:
            part = self._read(min(left, _READ_CHUNK))
            if not part:
                break
            parts.append(part)
            left -= len(part)
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        self.consumed += len(data)
        if len(data) < n:
            raise MalformedPickleError(
                f"{self._source} is truncated: needed {n} more bytes at byte {self.consumed - len(data)}, "
                f"the stream holds {len(data)}"
            )
        return data

    def readline(self) -> bytes:
        line: bytes = self._readline()
        self.consumed += len(line)
        if not line.endswith(b"\n"):
            raise MalformedPickleError(f"{self._source} is truncated inside a text opcode argument")
        return line


class _CalleeError(Exception):
    """Carries a ValueError/UnpicklingError raised by an allow-listed callable out of the opcode loop."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


_PyUnpickler: Any = pickle._Unpickler  # type: ignore[attr-defined]  # the pure-Python one: hookable per opcode
_NOT_FRESH = (type, types.FunctionType, types.BuiltinFunctionType, types.MethodType, types.ModuleType)
_MALFORMED = (
    EOFError,
    ValueError,
    TypeError,
    LookupError,
    AttributeError,
    struct.error,
    OverflowError,
    RuntimeError,
    pickle.UnpicklingError,
)


class SafeUnpickler(_PyUnpickler):
    """A pure-Python ``pickle`` unpickler that only reaches objects from ``allowed_globals``.

    ``allowed_globals`` maps the dotted name as written in the stream (``"collections.OrderedDict"``) to the
    object handed back; readers usually map foreign names to small stand-ins of their own
    (e.g. ``"dnnlib.util.EasyDict"`` to a ``dict`` subclass). ``source`` names the file in error messages.

    ``persistent_load(pid)`` resolves persistent ids (refused when None). ``buildable``: the types that
    ``BUILD`` may set state on (None: any object an allow-listed call returned in this load). ``max_ops``
    bounds the opcodes of one :meth:`load`. Allow-listed callables must return new objects.
    """

    dispatch: ClassVar[dict[int, Callable[..., None]]] = dict(_PyUnpickler.dispatch)

    def __init__(
        self,
        file: IO[bytes],
        allowed_globals: Mapping[str, Any],
        *,
        source: str = "the pickle",
        advice: str | None = None,
        persistent_load: Callable[[Any], Any] | None = None,
        buildable: tuple[type, ...] | None = None,
        max_ops: int = MAX_PICKLE_OPS,
    ) -> None:
        self._reader = _BoundedReader(file, source)
        super().__init__(self._reader)
        self._allowed = dict(allowed_globals)
        self._allowed_ids = {id(v) for v in self._allowed.values()}
        self._source = source
        self._advice = advice
        self._resolve_persistent = persistent_load
        self._buildable = buildable
        self._max_ops = max_ops
        self._ops = 0
        self._made: dict[int, Any] = {}  # id -> container or call result this load created
        self._tuples: dict[int, tuple[tuple[Any, ...], int, int]] = {}  # id -> (tuple, weight, depth)
        self._tuple_work = 0

    # -- entry point -------------------------------------------------------------------------------------

    def load(self) -> Any:
        try:
            return super().load()
        except _CalleeError as wrapped:
            raise wrapped.error from None
        except (UnsafePickleError, MalformedPickleError):
            raise
        except RecursionError as err:
            raise PickleLimitError(f"refused to load {self._source}: it nests too deeply ({err})") from None
        except _MALFORMED as err:
            raise MalformedPickleError(
                f"{self._source} is truncated or not a valid pickle (at byte {self._reader.consumed}: "
                f"{type(err).__name__}: {str(err)[:200] or 'no more data'})"
            ) from None

    def _refuse(self, cls: type[UnsafePickleError], what: str) -> UnsafePickleError:
        return cls(
            f"refused to load {self._source}: {what} (at byte {self._reader.consumed}); loading stopped "
            "there."
        )

    # -- globals -------------------------------------------------------------------------------------------

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

    def get_extension(self, code: int) -> None:
        raise self._refuse(
            ForbiddenOperationError, f"it uses the copyreg extension registry (EXT opcode, code {code})"
        )

    def persistent_load(self, pid: Any) -> Any:
        if self._resolve_persistent is None:
            kind = pid[0] if isinstance(pid, tuple) and pid else type(pid).__name__
            raise ForbiddenOperationError(
                f"refused to load {self._source}: it contains a persistent reference ({safe_repr(kind)}), "
                "which this reader does not resolve. Files written by torch.save() are read with "
                "gmpi_core.checkpoints.torch_file.load_torch_file (bounded, allow-listed; never "
                "torch.load(weights_only=False))."
            )
        return self._call("the persistent-id resolver", self._resolve_persistent, pid)

    # -- calls -------------------------------------------------------------------------------------------

    def _check_callable(self, func: Any, op: str) -> None:
        if id(func) not in self._allowed_ids:
            raise self._refuse(
                ForbiddenOperationError,
                f"{op} calls {safe_repr(func)}, which is not an allow-listed global of this reader",
            )

    def _call(self, what: str, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            result = func(*args, **kwargs)
        except (UnsafePickleError, MalformedPickleError):
            raise
        except (ValueError, pickle.UnpicklingError) as err:
            raise _CalleeError(err) from None
        except RecursionError:
            raise self._refuse(PickleLimitError, f"calling {what} recursed too deeply") from None
        except _MALFORMED as err:
            raise MalformedPickleError(
                f"{self._source} is not a valid pickle for this reader: calling {what} failed at byte "
                f"{self._reader.consumed} ({type(err).__name__}: {str(err)[:200]})"
            ) from None
        if id(result) not in self._allowed_ids and not isinstance(result, _NOT_FRESH):
            self._made[id(result)] = result
        return result

    def _name(self, func: Any) -> str:
        return getattr(func, "__qualname__", type(func).__name__)

    def load_reduce(self) -> None:
        stack = self.stack
        args = stack.pop()
        func = stack[-1]
        self._check_callable(func, "REDUCE")
        if type(args) is not tuple:
            raise MalformedPickleError(f"{self._source}: REDUCE arguments are not a tuple")
        stack[-1] = self._call(self._name(func), func, *args)

    dispatch[pickle.REDUCE[0]] = load_reduce

    def load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        self._check_callable(cls, "NEWOBJ")
        if not isinstance(cls, type) or type(args) is not tuple:
            raise MalformedPickleError(f"{self._source}: NEWOBJ needs a class and an argument tuple")
        self.append(self._call(self._name(cls), cls.__new__, cls, *args))

    dispatch[pickle.NEWOBJ[0]] = load_newobj

    def load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self._check_callable(cls, "NEWOBJ_EX")
        if not isinstance(cls, type) or type(args) is not tuple or type(kwargs) is not dict:
            raise MalformedPickleError(f"{self._source}: NEWOBJ_EX needs a class, a tuple and a dict")
        if not all(type(k) is str for k in kwargs):
            raise MalformedPickleError(f"{self._source}: NEWOBJ_EX keyword names must be strings")
        self.append(self._call(self._name(cls), cls.__new__, cls, *args, **kwargs))

    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex

    def _instantiate(self, klass: Any, args: list[Any]) -> None:  # OBJ and INST
        self._check_callable(klass, "OBJ/INST")
        if args or not isinstance(klass, type):
            self.append(self._call(self._name(klass), klass, *args))
        else:
            self.append(self._call(self._name(klass), klass.__new__, klass))

    # -- mutations -----------------------------------------------------------------------------------------

    def _fresh(self, obj: Any) -> bool:
        return self._made.get(id(obj)) is obj

    def load_build(self) -> None:
        stack = self.stack
        state = stack.pop()
        inst = stack[-1]
        if not self._fresh(inst):
            raise self._refuse(
                ForbiddenOperationError,
                f"BUILD would set state on {safe_repr(inst)}, which this load did not create (an "
                "allow-listed class, function or shared object must stay as it is for later loads)",
            )
        if self._buildable is not None and not isinstance(inst, self._buildable):
            raise self._refuse(
                ForbiddenOperationError,
                f"BUILD on a {type(inst).__name__}; this reader only sets state on "
                f"{', '.join(t.__name__ for t in self._buildable) or 'nothing'}",
            )
        setstate = getattr(type(inst), "__setstate__", None)  # the class's, never the instance's
        if setstate is not None:
            self._call(f"{type(inst).__name__}.__setstate__", setstate, inst, state)
            return
        if isinstance(state, tuple) and len(state) == 2:
            state, slotstate = state
            if slotstate:
                raise self._refuse(ForbiddenOperationError, "BUILD with slot state (setattr) is not accepted")
        if not state:
            return
        if type(state) is not dict or not all(
            type(k) is str and not (k.startswith("__") and k.endswith("__")) for k in state
        ):
            raise self._refuse(
                ForbiddenOperationError, "BUILD state must be a dict of plain (non-dunder) attribute names"
            )
        inst.__dict__.update(state)

    dispatch[pickle.BUILD[0]] = load_build

    def _container(self, obj: Any, kind: type, op: str) -> None:
        if isinstance(obj, kind) and self._fresh(obj):
            return
        raise self._refuse(
            ForbiddenOperationError,
            f"{op} on {safe_repr(obj)}, which is not a {kind.__name__} created by this load",
        )

    def load_append(self) -> None:
        value = self.stack.pop()
        self._container(self.stack[-1], list, "APPEND")
        list.append(self.stack[-1], value)

    dispatch[pickle.APPEND[0]] = load_append

    def load_appends(self) -> None:
        items = self.pop_mark()
        self._container(self.stack[-1], list, "APPENDS")
        list.extend(self.stack[-1], items)

    dispatch[pickle.APPENDS[0]] = load_appends

    def load_setitem(self) -> None:
        stack = self.stack
        value = stack.pop()
        key = stack.pop()
        self._container(stack[-1], dict, "SETITEM")
        stack[-1][key] = value

    dispatch[pickle.SETITEM[0]] = load_setitem

    def load_setitems(self) -> None:
        items = self.pop_mark()
        target = self.stack[-1]
        self._container(target, dict, "SETITEMS")
        if len(items) % 2:
            raise MalformedPickleError(f"{self._source}: SETITEMS with an odd number of items")
        for i in range(0, len(items), 2):
            target[items[i]] = items[i + 1]

    dispatch[pickle.SETITEMS[0]] = load_setitems

    def load_additems(self) -> None:
        items = self.pop_mark()
        self._container(self.stack[-1], set, "ADDITEMS")
        set.update(self.stack[-1], items)

    dispatch[pickle.ADDITEMS[0]] = load_additems

    # -- opcodes that are never needed and could allocate before reading ----------------------------------

    def _unsupported(self) -> None:
        raise self._refuse(
            ForbiddenOperationError, "it uses protocol-5 out-of-band buffers or BYTEARRAY8, not supported"
        )

    dispatch[pickle.BYTEARRAY8[0]] = _unsupported
    dispatch[pickle.NEXT_BUFFER[0]] = _unsupported
    dispatch[pickle.READONLY_BUFFER[0]] = _unsupported

    # -- tuples: bounded hashing ------------------------------------------------------------------------

    def _measure(self, value: tuple[Any, ...], depth: int = 0) -> tuple[int, int]:
        """(weight, depth) of a tuple: elements counted through nesting, each reuse counted again."""
        known = self._tuples.get(id(value))
        if known is not None and known[0] is value:
            return known[1], known[2]
        if depth > MAX_TUPLE_DEPTH:
            raise self._refuse(PickleLimitError, f"a tuple nests more than {MAX_TUPLE_DEPTH} levels deep")
        weight, deepest = 1, 0
        for item in value:
            if type(item) is tuple:
                w, d = self._measure(item, depth + 1)
                weight += w
                deepest = max(deepest, d)
            else:
                weight += 1
            if weight > MAX_TUPLE_WORK:
                break
        result = (weight, deepest + 1)
        self._tuples[id(value)] = (value, *result)
        return result

    def _count_tuple(self) -> None:
        top = self.stack[-1]
        if type(top) is not tuple:
            return
        weight, depth = self._measure(top)
        if depth > MAX_TUPLE_DEPTH:
            raise self._refuse(
                PickleLimitError, f"a tuple nests {depth} levels deep (limit {MAX_TUPLE_DEPTH})"
            )
        self._tuple_work += weight
        if self._tuple_work > MAX_TUPLE_WORK:
            raise self._refuse(
                PickleLimitError,
                f"its tuples, counted through nesting and every reuse, exceed {MAX_TUPLE_WORK} elements "
                "(MAX_TUPLE_WORK; shared nested tuples make dict keys and sets exponentially costly)",
            )


def _then_mark_made(func: Callable[[SafeUnpickler], None]) -> Callable[[SafeUnpickler], None]:
    def op(self: SafeUnpickler) -> None:
        func(self)
        top = self.stack[-1]
        self._made[id(top)] = top

    return op


def _counting(func: Callable[[SafeUnpickler], None]) -> Callable[[SafeUnpickler], None]:
    def op(self: SafeUnpickler) -> None:
        self._ops += 1
        if self._ops > self._max_ops:
            raise self._refuse(
                PickleLimitError,
                f"it runs more than {self._max_ops} opcodes (MAX_PICKLE_OPS; this reader's files need far "
                "fewer)",
            )
        func(self)

    return op


def _then_count_tuple(func: Callable[[SafeUnpickler], None]) -> Callable[[SafeUnpickler], None]:
    def op(self: SafeUnpickler) -> None:
        func(self)
        self._count_tuple()

    return op


for _op in (
    pickle.EMPTY_TUPLE,
    pickle.TUPLE,
    pickle.TUPLE1,
    pickle.TUPLE2,
    pickle.TUPLE3,
    pickle.GET,
    pickle.BINGET,
    pickle.LONG_BINGET,
    pickle.DUP,
):
    SafeUnpickler.dispatch[_op[0]] = _then_count_tuple(SafeUnpickler.dispatch[_op[0]])
for _op in (pickle.EMPTY_LIST, pickle.EMPTY_DICT, pickle.EMPTY_SET, pickle.LIST, pickle.DICT):
    # containers the stream creates: the only ones APPEND/SETITEM/ADDITEMS may fill
    SafeUnpickler.dispatch[_op[0]] = _then_mark_made(SafeUnpickler.dispatch[_op[0]])
SafeUnpickler.dispatch = {code: _counting(fn) for code, fn in SafeUnpickler.dispatch.items()}
del _op


# ---------------------------------------------------------------------------------------------------
# Converting what was loaded


def plain_data(
    value: Any,
    *,
    what: str,
    source: str = "the file",
    leaf: Callable[[Any], Any] | None = None,
    max_nodes: int = MAX_DATA_NODES,
    max_depth: int = MAX_DATA_DEPTH,
) -> Any:
    """``value`` with every dict (and subclass) as ``dict``, lists, tuples and sets rebuilt; ``leaf``
    converts anything else (default: kept as is).

    Each object is visited once (memoized by id), so shared references cost nothing extra to convert and
    stay shared in the result. The structure is refused with :class:`PickleLimitError` when it has more
    than ``max_nodes`` nodes *counted as a tree* (what a consumer that walks it — ``repr``, JSON, a
    comparison — would see), is deeper than ``max_depth`` or refers to itself.
    """
    done: dict[int, tuple[Any, Any, int]] = {}  # id -> (original, converted, expanded size)
    active: set[int] = set()

    def refuse(detail: str) -> PickleLimitError:
        return PickleLimitError(f"refused to load {source}: {what} {detail}. Nothing else was read from it.")

    def walk(obj: Any, depth: int) -> tuple[Any, int]:
        key = id(obj)
        hit = done.get(key)
        if hit is not None and hit[0] is obj:
            return hit[1], hit[2]
        if depth > max_depth:
            raise refuse(f"nests more than {max_depth} levels deep (limit MAX_DATA_DEPTH)")
        if key in active:
            raise refuse("refers to itself (a cyclic structure)")
        if len(done) >= max_nodes:
            raise refuse(f"holds more than {max_nodes} distinct objects (limit MAX_DATA_NODES)")
        size = 1
        out: Any
        if isinstance(obj, dict | list | tuple | set | frozenset):
            active.add(key)
            try:
                if isinstance(obj, dict):
                    out = {}
                    for k, v in list(dict.items(obj)):
                        ck, nk = walk(k, depth + 1)
                        cv, nv = walk(v, depth + 1)
                        size += nk + nv
                        if size > max_nodes:
                            break
                        out[ck] = cv
                else:
                    items = []
                    for item in list(obj):
                        c, n = walk(item, depth + 1)
                        size += n
                        if size > max_nodes:
                            break
                        items.append(c)
                    if isinstance(obj, list):
                        out = items
                    elif isinstance(obj, tuple):
                        out = tuple(items)
                    else:
                        out = set(items) if isinstance(obj, set) else frozenset(items)
            finally:
                active.discard(key)
            if size > max_nodes:
                raise refuse(
                    f"expands to more than {max_nodes} objects (limit MAX_DATA_NODES; shared references "
                    "count each time they are reached)"
                )
        else:
            out = obj if leaf is None else leaf(obj)
        done[key] = (obj, out, size)
        return out, size

    return walk(value, 0)[0]
