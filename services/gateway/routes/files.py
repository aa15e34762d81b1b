"""``/v1/files/{key}``: artifact download through the gateway (the directory backend's "presigned URL").

The object is streamed from the store to the client a chunk (1 MiB) at a time: nothing is written to the
gateway's disk and its memory holds one chunk per download, whatever the object's size. Each chunk is
read in the bounded pool of ``services/gateway/waiting.py`` (no thread is held while the client is slow
to take it). A whole-object download is checked against the stored sha256 as it streams: a mismatch cuts
the connection (the client sees an incomplete body, never a silently wrong one). ``Range: bytes=a-b``
(one range) answers 206 for players that seek in a video.
"""

from __future__ import annotations

import mimetypes
import re
from collections.abc import AsyncIterator
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Header, Response
from fastapi.responses import StreamingResponse

from services.common.keys import InvalidKeyError, validate_key
from services.common.storage import ObjectNotFound, ObjectStream
from services.gateway.access import check_object_access
from services.gateway.deps import ApiKey, JobsDep, StorageDep
from services.gateway.errors import ERROR_RESPONSES, ApiError
from services.gateway.waiting import blocking, io_pool

router = APIRouter(prefix="/v1/files", tags=["files"], responses=ERROR_RESPONSES)


_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def _byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(first, last) byte of a single ``Range: bytes=…`` header, None to send the whole object (no header,
    or one this route does not serve, e.g. several ranges: allowed by RFC 9110); 416 if unsatisfiable."""
    if not header:
        return None
    m = _RANGE.match(header.strip())
    if m is None or (not m.group(1) and not m.group(2)):
        return None
    if m.group(1):
        first = int(m.group(1))
        last = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
        if m.group(2) and int(m.group(2)) < first:
            return None
    else:  # the last n bytes
        n = int(m.group(2))
        first, last = max(0, size - n), size - 1
        if n == 0:
            first = size
    if first >= size:
        raise ApiError(
            416,
            "range_not_satisfiable",
            f"the object has {size} bytes",
            headers={"Content-Range": f"bytes */{size}"},
        )
    return first, last


async def _relay(stream: ObjectStream) -> AsyncIterator[bytes]:
    try:
        while chunk := await blocking(stream.read):
            yield chunk
    finally:
        io_pool().submit(stream.close)


@router.get(
    "/{key:path}",
    summary="download an artifact (streamed; one Range: bytes=a-b answers 206)",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"application/octet-stream": {}}},
        206: {"description": "the range asked for"},
    },
)
async def download(
    key: str,
    caller: ApiKey,
    storage: StorageDep,
    jobs: JobsDep,
    range_: Annotated[str | None, Header(alias="Range", include_in_schema=False)] = None,
) -> Response:
    try:
        validate_key(key)
    except InvalidKeyError as e:
        raise ApiError(422, "invalid_key", str(e), {"field": "key"}) from e
    if not key.startswith(("datasets/", "models/", "jobs/")):
        raise ApiError(404, "not_found", f"no artifact '{key}'")
    # only what the caller may read: 404 otherwise
    await blocking(check_object_access, storage, jobs, caller, key)
    info = await blocking(storage.stat, key)
    if info is None:
        raise ApiError(404, "not_found", f"no artifact '{key}'")
    span = _byte_range(range_, info.size)
    try:
        if span is None:
            stream = await blocking(storage.open_stream, key)
        else:
            stream = await blocking(storage.open_stream, key, span[0], span[1] - span[0] + 1)
    except ObjectNotFound as e:
        raise ApiError(404, "not_found", f"no artifact '{key}'") from e
    name = key.rsplit("/", 1)[-1]
    ascii_name = name.encode("ascii", "ignore").decode().replace('"', "") or "download"
    headers = {
        "Content-Length": str(stream.length),
        "Accept-Ranges": "bytes",
        "Content-Disposition": f"attachment; filename=\"{ascii_name}\"; filename*=utf-8''{quote(name)}",
    }
    if info.sha256:
        headers["ETag"] = f'"{info.sha256}"'
    if span is not None:
        headers["Content-Range"] = f"bytes {span[0]}-{span[0] + stream.length - 1}/{stream.size}"
    media_type = mimetypes.guess_type(name)[0] or stream.content_type or "application/octet-stream"
    return StreamingResponse(
        _relay(stream), status_code=200 if span is None else 206, headers=headers, media_type=media_type
    )
