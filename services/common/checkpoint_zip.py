"""The zip of an official GMPI checkpoint import (``POST /v1/models/import?kind=gmpi_pth``).

The gateway only looks at headers (``check_header``: the end records, then the central directory under
``zips.CHECKPOINT_LIMITS``, and the members it needs): it decompresses nothing and stores the zip as it
came. The renderer's import task, which runs under the worker's limits, extracts the members
(``extract``): each streamed in bounded chunks to a file, its bytes counted against what it declared,
the CRC checked. Errors are ``zips.UnsafeZipError`` with a code (``invalid_zip``, ``zip_bomb``,
``zip_too_large``, ``unsafe_zip_member`` or ``invalid_checkpoint``) and a message without server paths.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

from services.common import zips
from services.common.storage import ZIP_TAIL, zip_directory

PTH_FILES = ("config.pth", "ema.pth", "generator.pth")
REQUIRED = ("config.pth", "ema.pth")
INVALID_CHECKPOINT = "invalid_checkpoint"
# a checkpoint zip has a handful of members (at most CHECKPOINT_LIMITS.max_members): its central directory
# is small, so a larger one is refused from the end records before it is read
MAX_DIRECTORY_BYTES = 1024 * 1024


def _end_records(path: Path) -> None:
    size = path.stat().st_size
    with open(path, "rb") as f:
        f.seek(max(0, size - ZIP_TAIL))
        tail = f.read(ZIP_TAIL)
    try:
        d = zip_directory(tail, size)
    except ValueError as e:
        raise zips.UnsafeZipError(zips.INVALID_ZIP, f"not a readable zip file ({e})") from None
    limit = zips.CHECKPOINT_LIMITS.max_members
    if d.entries > limit:
        raise zips.UnsafeZipError(
            zips.ZIP_TOO_LARGE, f"the zip has {d.entries} entries; a checkpoint zip may have {limit}"
        )
    if d.size > MAX_DIRECTORY_BYTES:
        raise zips.UnsafeZipError(
            zips.ZIP_TOO_LARGE,
            f"the zip's central directory has {d.size} bytes; a checkpoint zip's may have "
            f"{MAX_DIRECTORY_BYTES}",
        )


def _members(files: list[zipfile.ZipInfo]) -> dict[str, zipfile.ZipInfo]:
    by_base: dict[str, zipfile.ZipInfo] = {}
    for info in files:
        base = info.filename.rsplit("/", 1)[-1]
        if base in PTH_FILES:
            if base in by_base:
                raise zips.UnsafeZipError(
                    INVALID_CHECKPOINT, f"the zip holds more than one {base}", info.filename
                )
            by_base[base] = info
    if any(name not in by_base for name in REQUIRED):
        raise zips.UnsafeZipError(
            INVALID_CHECKPOINT,
            "a gmpi_pth import is a zip with config.pth and ema.pth (generator.pth optional)",
        )
    return by_base


def check_header(path: str | os.PathLike[str]) -> list[str]:
    """The gateway's checks of an uploaded checkpoint zip, reading headers only (nothing is
    decompressed); → the names of the members the import will use."""
    p = Path(path)
    _end_records(p)
    z, files = zips.open_checked(p, zips.CHECKPOINT_LIMITS)
    with z:
        return [info.filename for info in _members(files).values()]


def extract(path: str | os.PathLike[str], dest: str | os.PathLike[str]) -> list[Path]:
    """The worker's half: the same checks, then config.pth, ema.pth [, generator.pth] written to ``dest``
    (flat, by base name) in bounded chunks, each refused as soon as it produces more than it declared;
    → the files written. Nothing is left in ``dest`` on failure."""
    p, out_dir = Path(path), Path(dest)
    _end_records(p)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    z, files = zips.open_checked(p, zips.CHECKPOINT_LIMITS)
    try:
        with z:
            for base, info in _members(files).items():
                target = out_dir / base
                written.append(target)
                with open(target, "wb") as out:
                    zips.copy_member(z, info, out)
    except BaseException:
        for f in written:
            f.unlink(missing_ok=True)
        raise
    return written
