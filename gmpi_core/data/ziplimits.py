"""Bounded reads of zip members: what a dataset zip's member may declare and produce before it is in memory.

A member of an untrusted zip is read only after its central-directory entry passes ``check_member``
(uncompressed size at most ``max_member_bytes``; for members above ``ratio_floor_bytes``, at most
``max_ratio`` times its compressed size), and ``read_member`` then counts what it actually produces:
never more than it declared (``zipfile`` stops there), and a member that produces *less* than it declared
is refused too (``zipfile`` itself returns the short data without complaint). Errors are
``ZipMemberError`` naming the member, with a ``code`` (``zip_bomb``, ``zip_too_large``, ``invalid_zip``:
the codes of ``services.common.zips``).

Standard library only (``services.common.zips`` shares the numbers without importing torch). The
defaults can be changed through the same ``GMPI_ZIP_*`` variables the services read
(``GMPI_ZIP_MAX_IMAGE_BYTES``, ``GMPI_ZIP_MAX_RATIO``, ``GMPI_ZIP_RATIO_FLOOR_BYTES``), so a training
process started by a worker applies the worker's limits.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "MAX_IMAGE_BYTES",
    "MAX_RATIO",
    "RATIO_FLOOR_BYTES",
    "MemberLimits",
    "ZipMemberError",
    "check_member",
    "exceeds_ratio",
    "read_member",
]

MIB = 1024 * 1024
MAX_RATIO = 100  # uncompressed / compressed, for members above RATIO_FLOOR_BYTES
RATIO_FLOOR_BYTES = 1 * MIB  # small members may compress arbitrarily well: harmless
MAX_IMAGE_BYTES = 256 * MIB  # one image member, read into memory (a 4096² 16-bit RGBA PNG is ~128 MiB)

# the codes of services.common.zips (an HTTP 413 for ZIP_TOO_LARGE there, 422 for the others)
INVALID_ZIP = "invalid_zip"
ZIP_BOMB = "zip_bomb"
ZIP_TOO_LARGE = "zip_too_large"

ENV = {
    "max_member_bytes": "GMPI_ZIP_MAX_IMAGE_BYTES",
    "max_ratio": "GMPI_ZIP_MAX_RATIO",
    "ratio_floor_bytes": "GMPI_ZIP_RATIO_FLOOR_BYTES",
}


class ZipMemberError(ValueError):
    """A member refused before (or while) it is decompressed; ``code`` as above, ``member`` its name."""

    def __init__(self, code: str, message: str, member: str) -> None:
        super().__init__(message)
        self.code = code
        self.member = member


@dataclass(frozen=True)
class MemberLimits:
    max_member_bytes: int = MAX_IMAGE_BYTES
    max_ratio: int = MAX_RATIO
    ratio_floor_bytes: int = RATIO_FLOOR_BYTES

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> MemberLimits:
        """The defaults, each replaced by its ``GMPI_ZIP_*`` variable when set (ValueError if not an
        integer in range)."""
        env = os.environ if environ is None else environ
        values: dict[str, int] = {}
        for field, var in ENV.items():
            raw = env.get(var, "").strip()
            if not raw:
                continue
            try:
                value = int(raw)
            except ValueError:
                raise ValueError(f"{var} must be an integer, got {raw[:40]!r}") from None
            if value < (0 if field == "ratio_floor_bytes" else 1):
                raise ValueError(f"{var} must be positive, got {value}")
            values[field] = value
        return cls(**values)


def exceeds_ratio(file_size: int, compress_size: int, max_ratio: int, ratio_floor_bytes: int) -> bool:
    """True for a member above the floor that expands more than ``max_ratio`` times."""
    return file_size > ratio_floor_bytes and file_size > max_ratio * max(compress_size, 1)


def _shown(name: str) -> str:
    return ascii(name[:120])


def check_member(info: zipfile.ZipInfo, limits: MemberLimits) -> None:
    """ZipMemberError if the member's declared sizes break ``limits``; reads nothing."""
    name = info.filename
    if info.file_size > limits.max_member_bytes:
        raise ZipMemberError(
            ZIP_TOO_LARGE,
            f"zip member {_shown(name)} declares {info.file_size} bytes uncompressed; the limit is "
            f"{limits.max_member_bytes}",
            name,
        )
    if exceeds_ratio(info.file_size, info.compress_size, limits.max_ratio, limits.ratio_floor_bytes):
        raise ZipMemberError(
            ZIP_BOMB,
            f"zip member {_shown(name)} expands {info.file_size} bytes from {info.compress_size} "
            f"(more than {limits.max_ratio}x): refused as a zip bomb",
            name,
        )


def read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limits: MemberLimits) -> bytes:
    """The member's bytes after ``check_member``, counted: exactly the declared size or ZipMemberError.
    Other read errors (``BadZipFile`` for a bad CRC, ``zlib.error``, ``EOFError``…) pass through."""
    check_member(info, limits)
    with zf.open(info) as f:
        data = f.read(info.file_size + 1)  # zipfile never yields more than the declared size
    if len(data) != info.file_size:
        code = ZIP_BOMB if len(data) > info.file_size else INVALID_ZIP
        raise ZipMemberError(
            code,
            f"zip member {_shown(info.filename)} holds {len(data)} bytes, not the {info.file_size} it "
            "declares",
            info.filename,
        )
    return data
