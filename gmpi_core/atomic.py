"""Files that are complete or not there at all: write to a temporary sibling, then rename into place.

    >>> atomic_write("out/report.json", json.dumps(report))            # doctest: +SKIP
    >>> atomic_write("ckpt.pt", lambda tmp: torch.save(state, tmp), fsync=True)   # doctest: +SKIP
    >>> replaced = replace_dir(staging, final)  # swap a finished folder in    # doctest: +SKIP
    >>> with staged_dir("out/dataset") as tmp:  # fill a hidden sibling; swapped in when the block ends
    ...     write_everything(tmp)                                          # doctest: +SKIP

A reader never sees a half-written file or folder under the final name, and a crash leaves at most a
hidden ``.NAME.*`` temporary, removed when the write fails.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = [
    "DIR_MODE", "FILE_MODE", "atomic_write", "fsync_dir", "fsync_file", "replace_dir", "staged_dir",
]  # fmt: skip


def _process_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# mkstemp/mkdtemp create 0600/0700 entries; outputs get the permissions an ordinary open() would give them
# (read by web servers and other users), computed once: os.umask can only be read by setting it.
FILE_MODE = 0o666 & ~_process_umask()
DIR_MODE = 0o777 & ~_process_umask()


def fsync_dir(path: Path) -> None:
    """fsync a folder (its entries' renames), where the platform allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    """fsync a written file's data to disk (errors are raised: a checkpoint must not pretend)."""
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def atomic_write(
    path: str | os.PathLike[str],
    data: bytes | str | Callable[[Path], object],
    *,
    mode: int | None = FILE_MODE,
    fsync: bool = False,
    keep_suffix: bool = False,
) -> Path:
    """Write ``data`` to ``path`` through a temporary sibling ``.NAME.*.tmp`` and ``os.replace``: bytes,
    UTF-8 text, or a function that writes the temporary file it is given.

    ``mode``: the file's permissions (default: what ``open()`` gives; ``None``: ``mkstemp``'s 0600).
    ``fsync``: flush the file and its folder to disk (checkpoints). ``keep_suffix``: the temporary ends in
    ``path``'s suffix instead of ``.tmp``, for writers that pick the format by it. Parent folders are
    created."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    suffix = final.suffix if keep_suffix else ".tmp"
    fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=suffix, dir=final.parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            if mode is not None:
                os.fchmod(f.fileno(), mode)
            if not callable(data):
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
        if callable(data):
            data(tmp)
        if fsync:
            fsync_file(tmp)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    if fsync:
        fsync_dir(final.parent)
    return final


def replace_dir(staging: Path, final: Path) -> bool:
    """Move the completed folder ``staging`` to ``final``; an earlier ``final`` (a folder, or a file or
    link) is removed only once the new one is in place. → whether something was there before (a non-empty
    folder, a file or a link)."""
    old: Path | None = None
    if final.is_symlink() or (final.exists() and not final.is_dir()):
        final.unlink()
        replaced = True
    elif final.is_dir():
        replaced = any(final.iterdir())
        old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(final, old)
    else:
        replaced = False
    os.replace(staging, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return replaced


@contextmanager
def staged_dir(
    final: str | os.PathLike[str],
    *,
    swap: Callable[[Path, Path], object] = replace_dir,
    mode: int | None = None,
) -> Iterator[Path]:
    """A new empty hidden sibling ``.NAME.*.partial`` of ``final`` (``mkdtemp``: mode 0700, or ``mode``,
    e.g. :data:`DIR_MODE` for an ordinary folder) to fill in the block; when the block completes,
    ``swap(staging, final)`` moves it into place (default :func:`replace_dir`; a caller that wants its
    result passes a swap that keeps it); when the block (or the swap) raises, the staging folder is removed.
    Parent folders are created."""
    target = Path(final)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        if mode is not None:
            staging.chmod(mode)
        yield staging
        swap(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
