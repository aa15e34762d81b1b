#!/usr/bin/env python
"""Bounded fuzzing of the zip validator (``services/common/zips.py``) and the library's bounded reads.

Inputs are generated with Hypothesis: zips written byte by byte by a small writer of this script (so
that every field can lie), with hostile member names (absolute, ``..``, backslashes, drive letters, NUL and
control characters, over-long, folder/file clashes, duplicates), symlink/device/folder entries through
``external_attr``, declared sizes that lie (uncompressed and compressed), bad CRCs, local headers that
disagree with the central directory, encrypted or unknown compression methods, zip64 extra fields and end
records with huge values, deflated bombs of a high ratio (honest or lying about their size), nested zips,
end records that lie (entry counts, central-directory size and offset), prepended or appended junk and
truncation; plus byte-level mutations of valid zips and random bytes.

Targets (each must accept an input or raise its documented error; anything else is a crash):

* ``check_extract``: ``zips.open_checked`` + ``verify_members`` + ``extract_all`` (``UnsafeZipError``);
  whatever is accepted is extracted, and then every written path must be a regular file inside the
  destination named by an accepted member, with the size it declared, and nothing may appear elsewhere
  in the sandbox;
* ``read_member``: ``zips.read_member`` of every accepted member (``UnsafeZipError``);
* ``stored``: ``zips.check_stored_zip`` through ranged reads of an in-memory store (``UnsafeZipError``);
* ``image_source``: ``gmpi_core.data.datasets.ImageSource`` listing and reading every image member
  (``DatasetError``).

Every input runs under a per-input time limit (SIGALRM), its Python allocations are traced
(``tracemalloc``: the peak must stay under ``--peak-mib``), and the whole process runs under
``RLIMIT_AS`` (current address space + ``--mem-mib``). The limits are small (``FUZZ_LIMITS``) so that an
accepted member is small too.

    python scripts/fuzz/zips.py --seconds 60                  # all targets, ~60 s in total
    python scripts/fuzz/zips.py --seconds 20 --target check_extract --out /tmp/fuzz

Prints a JSON summary (inputs, inputs/s, outcomes, crashes, slowest input, peak traced memory per target);
exits 1 if anything crashed. Crashing inputs are written to ``--out`` (the zip, base64, in the JSON).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import resource
import shutil
import signal
import stat
import struct
import sys
import tempfile
import time
import tracemalloc
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
os.environ.setdefault("OMP_NUM_THREADS", "1")

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from rss import peak_rss_mib  # noqa: E402  (scripts/fuzz/rss.py: this script's folder is on sys.path)

from gmpi_core.data.ziplimits import MemberLimits  # noqa: E402
from services.common import zips  # noqa: E402

PER_INPUT_SECONDS = 5.0
KIB, MIB = 1024, 1024 * 1024
FUZZ_LIMITS = zips.ZipLimits(
    max_members=2000,
    max_member_bytes=16 * MIB,
    max_total_bytes=48 * MIB,
    max_ratio=100,
    ratio_floor_bytes=64 * KIB,
    max_central_directory_bytes=1 * MIB,
)
IMAGE_LIMITS = MemberLimits(max_member_bytes=16 * MIB, max_ratio=100, ratio_floor_bytes=64 * KIB)
SANDBOX_DEPTH = 10  # the destination is this deep in the sandbox, so a name with fewer '..' stays inside


class Hang(BaseException):
    """Raised by SIGALRM when one input runs longer than the per-input limit (a BaseException, so that
    no ``except Exception`` of a target can turn it into an accepted error)."""


# ---------------------------------------------------------------------------------------------------
# A zip writer whose every field can lie


def _deflate(data: bytes) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush()


def _deflated_zeros(size: int) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = bytes(MIB)
    parts = [c.compress(chunk) for _ in range(size // MIB)]
    parts.append(c.compress(bytes(size % MIB)))
    return b"".join(parts) + c.flush()


# (uncompressed size, deflated stream): bombs of ratio ~1000
BOMBS = {size: _deflated_zeros(size) for size in (256 * KIB, 4 * MIB, 40 * MIB)}


@dataclass
class Entry:
    name: bytes
    data: bytes  # as stored (compressed already for method 8)
    method: int = 0
    crc: int = 0
    file_size: int = 0
    compress_size: int = 0
    flags: int = 0
    create_system: int = 3
    external_attr: int = 0o100644 << 16
    local_name: bytes | None = None  # the local header's name when it disagrees
    local_sizes: tuple[int, int] | None = None  # (compress, file) in the local header when they disagree
    zip64: bool = False  # sizes and offset through a zip64 extra field
    extra: bytes = b""


def _entry(name: bytes, content: bytes, method: int = 8) -> Entry:
    stored = _deflate(content) if method == 8 else content
    return Entry(name, stored, method, zlib.crc32(content), len(content), len(stored))


def write_zip(
    entries: list[Entry],
    *,
    prefix: bytes = b"",
    count_delta: int = 0,
    cd_size_delta: int = 0,
    cd_offset_delta: int = 0,
    zip64_end: bool = False,
    comment: bytes = b"",
) -> bytes:
    out = bytearray(prefix)
    offsets = []
    for e in entries:
        offsets.append(len(out))
        csize, usize = e.local_sizes or (e.compress_size, e.file_size)
        extra = e.extra
        if e.zip64:
            extra += struct.pack("<HHQQ", 1, 16, usize, csize)
            csize = usize = 0xFFFFFFFF
        name = e.local_name if e.local_name is not None else e.name
        out += struct.pack(
            "<4sHHHHHLLLHH",
            b"PK\x03\x04",
            45 if e.zip64 else 20,
            e.flags,
            e.method,
            0,
            0x21,
            e.crc,
            csize & 0xFFFFFFFF,
            usize & 0xFFFFFFFF,
            len(name),
            len(extra),
        )
        out += name + extra + e.data
    cd_start = len(out)
    for e, off in zip(entries, offsets, strict=True):
        csize, usize, hoff, extra = e.compress_size, e.file_size, off, e.extra
        if e.zip64:
            extra += struct.pack("<HHQQQ", 1, 24, usize, csize, hoff)
            csize = usize = hoff = 0xFFFFFFFF
        out += struct.pack(
            "<4sBBHHHHHLLLHHHHHLL",
            b"PK\x01\x02",
            45 if e.zip64 else 20,
            e.create_system,
            45 if e.zip64 else 20,
            e.flags,
            e.method,
            0,
            0x21,
            e.crc,
            csize & 0xFFFFFFFF,
            usize & 0xFFFFFFFF,
            len(e.name),
            len(extra),
            0,
            0,
            0,
            e.external_attr & 0xFFFFFFFF,
            hoff & 0xFFFFFFFF,
        )
        out += e.name + extra
    cd_size = len(out) - cd_start + cd_size_delta
    count = max(0, len(entries) + count_delta)
    offset = max(0, cd_start + cd_offset_delta)
    if zip64_end:
        z64 = len(out)
        out += struct.pack(
            "<4sQHHLLQQQQ", b"PK\x06\x06", 44, 45, 45, 0, 0, count, count, max(0, cd_size), offset
        )
        out += struct.pack("<4sLQL", b"PK\x06\x07", 0, z64, 1)
        count16, size32, offset32 = 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF
    else:
        count16, size32, offset32 = min(count, 0xFFFF), max(0, cd_size) & 0xFFFFFFFF, offset & 0xFFFFFFFF
    out += struct.pack("<4sHHHHLLH", b"PK\x05\x06", 0, 0, count16, count16, size32, offset32, len(comment))
    return bytes(out + comment)


# ---------------------------------------------------------------------------------------------------
# Strategies

ABS_SANDBOX = "/tmp/gmpi-fuzz-zips-absolute"  # where an absolute name would point (never created)
SEGMENTS = ["a", "b", "00000", "img00000000.png", "x.jpg", "images", ".hidden", "..", ".", "", "a b"]
HOSTILE_NAMES = [
    "../escape.png",
    "a/../../escape.png",
    "../" * 3 + "escape.png",
    f"{ABS_SANDBOX}/abs.png",
    "/abs.png",
    "C:/x.png",
    "C:x.png",
    "c:\\x.png",
    "a\\..\\x.png",
    "\\\\server\\share\\x.png",
    "a//b.png",
    "./a.png",
    "a/./b.png",
    "a/",
    "a/b/",
    "a",
    "a/b.png",
    "a/b.png/c.png",
    "nul\x00.png",
    "ctl\x01.png",
    "del\x7f.png",
    "new\nline.png",
    "",
    "/",
    ".",
    "..",
    "x" * 300 + ".png",
    ("d" * 200 + "/") * 30 + "deep.png",
    "uni\u00e9\u4e2d.png",
    "\u202etxt.png",
    "a:b.png",
    " .png",
    "img.PNG",
]


@st.composite
def member_name(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 3))
    if kind == 0:
        name = draw(st.sampled_from(HOSTILE_NAMES))
    elif kind == 1:
        name = "/".join(draw(st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=4)))
        name += draw(st.sampled_from(["", ".png", "/", ".jpg"]))
    elif kind == 2:
        name = draw(st.text(max_size=12))
    else:
        return draw(st.binary(max_size=16))  # raw bytes: cp437 or (with flag 0x800) maybe invalid utf-8
    return name.encode("utf-8", "surrogatepass")


MODES = [
    0o100644,  # regular file
    0o040755,  # folder
    0o120777,  # symlink
    0o020644,  # character device
    0o060644,  # block device
    0o010644,  # fifo
    0o140644,  # socket
    0o000644,  # no type (DOS)
    0o170000,  # every type bit
]


@st.composite
def entry(draw: st.DrawFn) -> Entry:
    name = draw(member_name())
    choice = draw(st.integers(0, 9))
    if choice <= 3:
        content = draw(st.binary(max_size=64))
        e = _entry(name, content, draw(st.sampled_from([0, 8])))
    elif choice == 4:  # a deflated bomb, honest about its size
        size = draw(st.sampled_from(sorted(BOMBS)))
        stream = BOMBS[size]
        e = Entry(name, stream, 8, 0, size, len(stream))
        e.crc = zlib.crc32(bytes(size)) if size <= 4 * MIB else draw(st.integers(0, 2**32 - 1))
    elif choice == 5:  # a nested zip
        inner = write_zip([_entry(b"inner.png", b"x" * 10), _entry(b"../up.png", b"y")])
        e = _entry(name, inner, draw(st.sampled_from([0, 8])))
    elif choice == 6:  # a symlink entry
        e = _entry(name, draw(st.sampled_from([b"/etc/passwd", b"../../x", b"."])), 0)
        e.external_attr = 0o120777 << 16
    elif choice == 7:  # an unusual method (bzip2, lzma, unknown) or an encrypted flag
        e = _entry(name, draw(st.binary(max_size=32)), 0)
        e.method = draw(st.sampled_from([1, 6, 9, 12, 14, 99, 0xFFFF]))
    else:
        e = _entry(name, draw(st.binary(max_size=64)), draw(st.sampled_from([0, 8])))
    # lies and odd fields
    boundary = st.sampled_from([0, 1, 2**16, 2**31 - 1, 2**32 - 2, 2**32 - 1])
    if draw(st.integers(0, 3)) == 0:
        e.file_size = draw(st.one_of(boundary, st.integers(0, 2 * e.file_size + 10)))
    if draw(st.integers(0, 4)) == 0:
        e.compress_size = draw(st.one_of(boundary, st.integers(0, 2 * e.compress_size + 10)))
    if draw(st.integers(0, 5)) == 0:
        e.crc = draw(st.integers(0, 2**32 - 1))
    if draw(st.integers(0, 5)) == 0:
        e.external_attr = draw(st.sampled_from(MODES)) << 16 | draw(st.sampled_from([0, 0x10, 0x20]))
    if draw(st.integers(0, 7)) == 0:
        e.create_system = draw(st.sampled_from([0, 3, 19, 255]))
    if draw(st.integers(0, 5)) == 0:
        e.flags = draw(st.sampled_from([0x1, 0x8, 0x800, 0x40, 0x2000, 0xFFFF]))
    if draw(st.integers(0, 7)) == 0:
        e.local_name = draw(member_name())
    if draw(st.integers(0, 7)) == 0:
        e.local_sizes = (draw(boundary), draw(boundary))
    if draw(st.integers(0, 5)) == 0:
        e.zip64 = True
        if draw(st.booleans()):
            e.file_size = draw(st.sampled_from([2**32, 2**40, 2**63 - 1, e.file_size]))
    if draw(st.integers(0, 9)) == 0:
        e.extra = draw(
            st.sampled_from(
                [
                    b"\x01\x00\x08\x00" + struct.pack("<Q", 2**63),  # a zip64 field with one huge value
                    b"\x01\x00\xff\xff",  # a field longer than the extra
                    b"\x75\x70\x05\x00\x01\x00\x00\x00\x00",  # unicode path (not honoured by zipfile)
                    b"\x00",
                ]
            )
        )
    return e


@st.composite
def built_zip(draw: st.DrawFn) -> bytes:
    entries = draw(st.lists(entry(), min_size=0, max_size=6))
    if entries and draw(st.integers(0, 4)) == 0:  # a duplicate (maybe as a folder)
        dup = Entry(**{**entries[0].__dict__})
        if draw(st.booleans()):
            dup.name = dup.name.rstrip(b"/") + b"/"
        entries.append(dup)
    if draw(st.integers(0, 9)) == 0:  # many entries
        n = draw(st.sampled_from([100, 2001, 3000]))
        entries += [_entry(f"m/{i:05d}.png".encode(), b"", 0) for i in range(n)]
    data = write_zip(
        entries,
        prefix=draw(st.sampled_from([b""] * 6 + [b"junk" * 10, b"PK\x03\x04"])),
        count_delta=draw(st.sampled_from([0] * 8 + [-1, 1, 0xFFFF])),
        cd_size_delta=draw(st.sampled_from([0] * 8 + [-1, 1, -46, 10**6])),
        cd_offset_delta=draw(st.sampled_from([0] * 8 + [-1, 1, 4, 10**6])),
        zip64_end=draw(st.integers(0, 5)) == 0,
        comment=draw(st.sampled_from([b"", b"", b"PK\x05\x06", b"c" * 100])),
    )
    if draw(st.integers(0, 7)) == 0:  # truncated
        data = data[: draw(st.integers(0, len(data)))]
    return data


@st.composite
def valid_zip(draw: st.DrawFn) -> bytes:
    """A valid zip written by ``zipfile``: the seed of byte mutations."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for i in range(draw(st.integers(1, 4))):
            method = draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]))
            z.writestr(f"00000/img{i:08d}.png", draw(st.binary(max_size=200)), compress_type=method)
        if draw(st.booleans()):
            info = zipfile.ZipInfo("00000/")
            info.external_attr = 0o040755 << 16
            z.writestr(info, b"")
    return buf.getvalue()


@st.composite
def mutated(draw: st.DrawFn, seed: st.SearchStrategy[bytes]) -> bytes:
    data = bytearray(draw(seed))
    for _ in range(draw(st.integers(1, 6))):
        if not data:
            break
        op = draw(st.integers(0, 5))
        at = draw(st.integers(0, len(data) - 1))
        if op == 0:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == 1:
            data[at] = draw(st.sampled_from([0, 0xFF, 0x7F, 0x80, ord("/"), ord("."), ord("\\")]))
        elif op == 2 and at + 4 <= len(data):
            data[at : at + 4] = struct.pack(
                "<L", draw(st.sampled_from([0, 1, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, len(data)]))
            )
        elif op == 3:
            del data[at : at + draw(st.integers(1, 16))]
        elif op == 4:
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        else:
            data = data[:at]
    return bytes(data)


def random_bytes() -> st.SearchStrategy[bytes]:
    tail = st.sampled_from([b"", b"PK\x05\x06" + bytes(18), b"PK\x06\x07" + bytes(16)])
    return st.builds(lambda a, b: a + b, st.binary(max_size=300), tail)


@st.composite
def honest_zip(draw: st.DrawFn) -> bytes:
    """Well-formed zips whose only attack is in the names and entry types (clashes, duplicates, links)."""
    entries = []
    pool = draw(st.lists(member_name(), min_size=1, max_size=4))  # few names: clashes and duplicates
    pool += [b"a", b"a/b.png", b"a/b.png/c.png", b"a/", b"x" * 256 + b".png"]
    for _ in range(draw(st.integers(1, 6))):
        name = draw(st.sampled_from(pool))
        e = _entry(name, draw(st.binary(max_size=32)), draw(st.sampled_from([0, 8])))
        if draw(st.integers(0, 5)) == 0:
            e.external_attr = draw(st.sampled_from(MODES)) << 16
        if draw(st.integers(0, 5)) == 0:
            e.flags = 0x800
        entries.append(e)
    return write_zip(entries)


def hostile_zip() -> st.SearchStrategy[bytes]:
    return st.one_of(
        honest_zip(), built_zip(), built_zip(), mutated(valid_zip()), mutated(built_zip()), random_bytes()
    )


def regression_seeds() -> list[bytes]:
    """Inputs the fuzzer found crashing earlier versions (each now refused with ``UnsafeZipError``)."""
    clash = write_zip([_entry(b"a", b"x"), _entry(b"a/b.png", b"y")])  # FileExistsError on extraction
    long_name = write_zip([_entry(b"x" * 300 + b".png", b"x")])  # OSError: File name too long
    version = bytearray(write_zip([_entry(b"a.png", b"x")]))
    version[version.index(b"PK\x01\x02") + 6] = 255  # NotImplementedError: zip file version 25.5
    bad_utf8 = _entry(b"\xff\xfe.png", b"x")
    bad_utf8.flags = 0x800  # UnicodeDecodeError: a name flagged UTF-8 that is not
    many = [_entry(f"{i:x}.png".encode(), b"", 0) for i in range(3000)]  # parsed before being counted
    return [clash, long_name, bytes(version), write_zip([bad_utf8]), write_zip(many, count_delta=-2999)]


# ---------------------------------------------------------------------------------------------------
# Targets


class Escape(AssertionError):
    """Something accepted was written outside its folder (or as something other than a plain file)."""


def _snapshot(root: Path) -> set[str]:
    return {str(Path(d) / n) for d, dirs, files in os.walk(root) for n in dirs + files}


def _check_extract(tmp: Path) -> Callable[[bytes], None]:
    sandbox = tmp / "sandbox"
    parent = sandbox.joinpath(*[f"d{i}" for i in range(SANDBOX_DEPTH)])

    def run(data: bytes) -> None:
        shutil.rmtree(sandbox, ignore_errors=True)
        parent.mkdir(parents=True)
        path = sandbox / "in.zip"
        path.write_bytes(data)
        before = _snapshot(sandbox)
        dest = parent / "out"
        try:
            z, files = zips.open_checked(path, FUZZ_LIMITS)
            with z:
                names = {i.filename: i.file_size for i in files}
                for name in names:
                    zips.check_name(name)  # every accepted name passes the name rules on its own
                zips.verify_members(z, files)
            zips.extract_all(path, dest, FUZZ_LIMITS)
        finally:
            after = _snapshot(sandbox)
            stray = {p for p in after - before if not (p == str(dest) or p.startswith(str(dest) + os.sep))}
            if stray:
                raise Escape(f"written outside the destination: {sorted(stray)[:5]}")
            if Path(ABS_SANDBOX).exists():
                raise Escape(f"an absolute member name was written to {ABS_SANDBOX}")
        written = {}
        for d, dirs, fs in os.walk(dest):
            for n in dirs + fs:
                p = Path(d) / n
                mode = os.lstat(p).st_mode
                if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                    raise Escape(f"{p} is neither a file nor a folder")
                if stat.S_ISREG(mode):
                    written[p.relative_to(dest).as_posix()] = p.stat().st_size
        if written != names:
            raise Escape(f"extracted {sorted(written.items())[:5]}, accepted {sorted(names.items())[:5]}")

    return run


def _read_member(tmp: Path) -> Callable[[bytes], None]:
    def run(data: bytes) -> None:
        path = tmp / "read.zip"
        path.write_bytes(data)
        z, files = zips.open_checked(path, FUZZ_LIMITS)
        with z:
            for info in files:
                out = zips.read_member(z, info, FUZZ_LIMITS.max_member_bytes)
                if len(out) != info.file_size:
                    raise AssertionError(
                        f"read {len(out)} bytes of {info.filename!r}, declared {info.file_size}"
                    )

    return run


class _Store:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        if offset < 0 or length < 1:
            raise ValueError(f"bad range: offset {offset}, length {length}")
        return self.data[offset : offset + length]


def _stored(data: bytes) -> None:
    files = zips.check_stored_zip(_Store(data), "datasets/x/images.zip", len(data), FUZZ_LIMITS)
    for info in files:
        zips.check_name(info.filename)


def _image_source(tmp: Path) -> Callable[[bytes], None]:
    from gmpi_core.data.datasets import ImageSource

    def run(data: bytes) -> None:
        path = tmp / "images.zip"
        path.write_bytes(data)
        source = ImageSource(path, limits=IMAGE_LIMITS)
        for name in source.names[:20]:
            try:
                out = source.read_bytes(name)
            except ALLOWED["image_source"]:
                continue
            if len(out) > IMAGE_LIMITS.max_member_bytes:
                raise AssertionError(f"read {len(out)} bytes of {name!r}, above the limit")

    return run


def _allowed() -> dict[str, tuple[type[BaseException], ...]]:
    from gmpi_core.data.datasets import DatasetError

    return {
        "check_extract": (zips.UnsafeZipError,),
        "read_member": (zips.UnsafeZipError,),
        "stored": (zips.UnsafeZipError,),
        "image_source": (DatasetError,),
    }


ALLOWED: dict[str, tuple[type[BaseException], ...]] = {}


@dataclass
class Stats:
    inputs: int = 0
    seconds: float = 0.0
    slowest: float = 0.0
    peak_mib: float = 0.0
    outcomes: dict[str, int] = field(default_factory=dict)
    crashes: list[dict[str, Any]] = field(default_factory=list)


def _on_alarm(signum: int, frame: Any) -> None:
    raise Hang(f"one input ran longer than {PER_INPUT_SECONDS} s")


def fuzz(
    name: str,
    strategy: st.SearchStrategy[bytes],
    run: Callable[[bytes], None],
    seconds: float,
    peak_bytes: int,
    shrink: bool = False,
) -> Stats:
    stats = Stats()
    allowed = ALLOWED[name]
    deadline = time.monotonic() + seconds
    last: dict[str, bytes] = {}

    @settings(
        max_examples=50,
        deadline=None,
        database=None,
        phases=[Phase.generate, Phase.shrink] if shrink else [Phase.generate],
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
    )
    @given(strategy)
    def one(data: bytes) -> None:
        check(data)

    def check(data: bytes) -> None:
        last["data"] = data
        start = time.monotonic()
        outcome = "ok"
        tracemalloc.start()
        signal.setitimer(signal.ITIMER_REAL, PER_INPUT_SECONDS)
        try:
            run(data)
        except allowed as err:
            outcome = f"{type(err).__name__}:{getattr(err, 'code', '')}".rstrip(":")
        except (Exception, Hang) as err:
            raise AssertionError(
                f"{type(err).__module__}.{type(err).__qualname__}: {str(err)[:500]}"
            ) from err
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            took = time.monotonic() - start
            stats.inputs += 1
            stats.slowest = max(stats.slowest, took)
            stats.peak_mib = max(stats.peak_mib, peak / MIB)
            stats.outcomes[outcome] = stats.outcomes.get(outcome, 0) + 1
        if peak > peak_bytes:
            raise AssertionError(f"one input allocated {peak / MIB:.0f} MiB (limit {peak_bytes / MIB:.0f})")

    def report(err: AssertionError) -> None:
        notes = getattr(err, "__notes__", [])
        stats.crashes.append(
            {
                "target": name,
                "error": str(err).splitlines()[0][:600],
                "example": "\n".join(notes)[:2000],
                "zip_base64": base64.b64encode(last.get("data", b"")[:200_000]).decode(),
            }
        )

    began = time.monotonic()
    for seed in regression_seeds():  # the inputs that crashed earlier versions, every run
        try:
            check(seed)
        except AssertionError as err:
            report(err)
    while time.monotonic() < deadline and len(stats.crashes) < 5:
        try:
            one()
        except AssertionError as err:
            report(err)
        except Exception as err:  # a bug of the harness (an input generator), not of a target
            stats.crashes.append({"target": name, "error": f"harness: {type(err).__name__}: {err}"[:600]})
            break
    stats.seconds = time.monotonic() - began
    return stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="total budget, split over the targets")
    parser.add_argument("--target", action="append", help="fuzz only these targets (repeatable)")
    parser.add_argument("--mem-mib", type=int, default=1536, help="address space above the start-up size")
    parser.add_argument("--peak-mib", type=int, default=48, help="traced allocations of one input")
    parser.add_argument("--out", type=Path, help="write crash reports here")
    parser.add_argument("--shrink", action="store_true", help="minimise crashing inputs (unbounded time)")
    args = parser.parse_args(argv)

    ALLOWED.update(_allowed())  # imports torch (ImageSource) before the address space is measured
    with open("/proc/self/statm") as fh:
        pages = fh.read().split()
    vm = int(pages[0]) * os.sysconf("SC_PAGE_SIZE")
    start_rss_mib = round(int(pages[1]) * os.sysconf("SC_PAGE_SIZE") / MIB)
    limit = vm + args.mem_mib * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    signal.signal(signal.SIGALRM, _on_alarm)

    tmp = Path(tempfile.mkdtemp(prefix="gmpi-fuzz-zips-"))
    targets: dict[str, Callable[[bytes], None]] = {
        "check_extract": _check_extract(tmp),
        "read_member": _read_member(tmp),
        "stored": _stored,
        "image_source": _image_source(tmp),
    }
    chosen = args.target or list(targets)
    unknown = sorted(set(chosen) - set(targets))
    if unknown:
        parser.error(f"unknown targets {unknown}; choose from {sorted(targets)}")

    summary: dict[str, Any] = {"seconds_per_target": args.seconds / len(chosen), "targets": {}}
    crashed = False
    try:
        for name in chosen:
            stats = fuzz(
                name,
                hostile_zip(),
                targets[name],
                args.seconds / len(chosen),
                args.peak_mib * MIB,
                args.shrink,
            )
            crashed |= bool(stats.crashes)
            summary["targets"][name] = {
                "inputs": stats.inputs,
                "inputs_per_s": round(stats.inputs / stats.seconds, 1) if stats.seconds else 0.0,
                "slowest_s": round(stats.slowest, 3),
                "peak_traced_mib": round(stats.peak_mib, 1),
                "outcomes": dict(sorted(stats.outcomes.items(), key=lambda kv: -kv[1])),
                "crashes": stats.crashes,
            }
            if args.out is not None and stats.crashes:
                args.out.mkdir(parents=True, exist_ok=True)
                (args.out / f"{name}.json").write_text(json.dumps(stats.crashes, indent=2))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    summary["start_rss_mib"] = start_rss_mib  # after the imports (torch, for ImageSource)
    summary["max_rss_mib"] = peak_rss_mib()
    print(json.dumps(summary, indent=2))
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
