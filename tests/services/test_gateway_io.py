"""The gateway under slow work (issue 13, items 6 and 12): waiting on workers and the store holds no
thread of the sync routes, so ``/healthz`` answers in milliseconds while renders wait; downloads stream
from the store without a temporary file and with bounded memory. The gateway runs as a real uvicorn
process (``python -m services gateway``) on the suite's Redis and SeaweedFS; no render worker runs, so
every render waits until the render timeout."""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis
from fastapi.testclient import TestClient

from services.common.settings import Settings
from services.common.storage import get_storage
from tests.services.conftest import KEY
from tests.services.procs import free_port, wait_port
from tests.timing import scaled

pytestmark = pytest.mark.timeout(300)
MIB = 1024 * 1024
RENDER_TIMEOUT_S = 10.0


@dataclass
class Gateway:
    url: str
    proc: subprocess.Popen[bytes]
    tmp: Path  # the process's TMPDIR

    def rss(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")


def _public_model(settings: Settings, model_id: str = "shared") -> str:
    """A committed (empty) model every key may read."""
    storage = get_storage(settings)
    storage.ensure_ready()
    storage.commit(f"models/{model_id}/", {}, {"model_id": model_id, "source": "test", "public": True})
    return model_id


@pytest.fixture
def gateway(settings: Settings, tmp_path: Path) -> Iterator[Gateway]:
    redis.Redis.from_url(settings.redis_url).flushdb()
    port = free_port()
    tmp = tmp_path / "gateway-tmp"
    tmp.mkdir()
    env = {
        **os.environ,  # the settings fixture's GMPI_* variables
        "GMPI_HOST": "127.0.0.1",
        "GMPI_PORT": str(port),
        "GMPI_RUN_DIR": str(tmp_path),
        "GMPI_RENDER_TIMEOUT_S": str(scaled(RENDER_TIMEOUT_S)),
        "GMPI_RENDER_RATE_LIMIT": "100000",
        "TMPDIR": str(tmp),
    }
    with open(tmp_path / "gateway.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services", "gateway"], env=env, stdout=log, stderr=log
        )
    try:
        wait_port(port, 60)
        yield Gateway(f"http://127.0.0.1:{port}", proc, tmp)
    finally:
        proc.terminate()
        try:
            proc.wait(scaled(20))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _timed_get(url: str, **kw: object) -> tuple[float, httpx.Response]:
    t0 = time.perf_counter()
    r = httpx.get(url, timeout=scaled(60), **kw)  # type: ignore[arg-type]
    return time.perf_counter() - t0, r


def test_healthz_answers_in_milliseconds_while_60_renders_wait(gateway: Gateway, settings: Settings) -> None:
    """60 renders wait for a worker that never comes (more than the 40 threads of the sync routes):
    liveness, readiness and a plain sync route still answer at once, and every render ends in 504."""
    model = _public_model(settings)
    n = 60
    body = {"seed": 0, "size": 32}
    broker = redis.Redis.from_url(settings.redis_url)
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        renders = [
            pool.submit(
                httpx.post,
                f"{gateway.url}/v1/models/{model}/render",
                json=body,
                headers=KEY,
                timeout=scaled(120),
            )
            for _ in range(n)
        ]
        # the renders are waiting once their tasks are queued (the old gateway queued at most 40)
        deadline = time.monotonic() + scaled(30)
        while broker.llen("render") < 40 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert broker.llen("render") >= 40, broker.llen("render")
        time.sleep(0.5)
        health = [_timed_get(f"{gateway.url}/healthz") for _ in range(10)]
        ready_s, ready = _timed_get(f"{gateway.url}/readyz")
        model_s, got = _timed_get(f"{gateway.url}/v1/models/{model}", headers=KEY)
        pending = sum(not f.done() for f in renders)
        statuses = [f.result().status_code for f in renders]
    worst = max(s for s, _ in health)
    median = sorted(s for s, _ in health)[len(health) // 2]
    print(
        f"healthz under {n} pending renders: median {median * 1000:.1f} ms, worst {worst * 1000:.1f} ms; "
        f"readyz {ready_s * 1000:.1f} ms; GET model {model_s * 1000:.1f} ms"
    )
    assert all(r.status_code == 200 and r.json() == {"status": "ok"} for _, r in health)
    assert worst < scaled(0.5), f"/healthz took {worst:.2f} s while renders waited"
    assert pending >= 40, f"only {pending} renders were still waiting when health was measured"
    assert ready.status_code == 200 and ready_s < scaled(3.0), (ready_s, ready.text)
    assert got.status_code == 200 and model_s < scaled(2.0), (model_s, got.text)
    assert statuses == [504] * n, statuses


def _sparse_file(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
        for at in range(0, size, 8 * MIB):  # some non-zero bytes, so a shifted or cut body is noticed
            f.seek(at)
            f.write(at.to_bytes(8, "little") * 64)
    return path


def test_a_200_mb_download_streams_without_temp_files_or_memory(
    gateway: Gateway, settings: Settings, tmp_path: Path
) -> None:
    model = _public_model(settings)
    size = 200 * MIB
    src = _sparse_file(tmp_path / "big.bin", size)
    storage = get_storage(settings)
    info = storage.put_file(f"models/{model}/big.bin", src)
    src.unlink()
    base = gateway.rss()
    peak, leftovers = base, []
    h = hashlib.sha256()
    got = 0
    with httpx.stream(
        "GET", f"{gateway.url}/v1/files/models/{model}/big.bin", headers=KEY, timeout=scaled(60)
    ) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-length"] == str(size)
        assert 'filename="big.bin"' in r.headers["content-disposition"]
        for chunk in r.iter_bytes(MIB):
            h.update(chunk)
            got += len(chunk)
            if got % (16 * MIB) < len(chunk):  # every 16 MiB: the gateway's memory and temp folder
                peak = max(peak, gateway.rss())
                leftovers += [p.name for p in gateway.tmp.rglob("*")]
            time.sleep(0.001)  # a client slower than the store
    print(
        f"gateway RSS {base / MIB:.0f} MiB before, peak {peak / MIB:.0f} MiB "
        f"during a {size // MIB} MiB download"
    )
    assert got == size and h.hexdigest() == info.sha256
    assert not leftovers, f"the gateway wrote temporary files: {sorted(set(leftovers))[:5]}"
    assert peak - base < 64 * MIB, f"the gateway grew by {(peak - base) / MIB:.0f} MiB"


def test_downloads_serve_one_byte_range(client: TestClient, settings: Settings) -> None:
    model = _public_model(settings)
    data = bytes(range(256)) * 40
    get_storage(settings).put_bytes(f"models/{model}/clip.mp4", data)
    url = f"/v1/files/models/{model}/clip.mp4"
    whole = client.get(url, headers=KEY)
    assert whole.status_code == 200 and whole.content == data
    assert whole.headers["content-type"] == "video/mp4" and whole.headers["accept-ranges"] == "bytes"
    part = client.get(url, headers={**KEY, "Range": "bytes=10-19"})
    assert part.status_code == 206 and part.content == data[10:20]
    assert part.headers["content-range"] == f"bytes 10-19/{len(data)}"
    tail = client.get(url, headers={**KEY, "Range": "bytes=-5"})
    assert tail.status_code == 206 and tail.content == data[-5:]
    beyond = client.get(url, headers={**KEY, "Range": f"bytes={len(data)}-"})
    assert beyond.status_code == 416 and beyond.headers["content-range"] == f"bytes */{len(data)}"
    assert client.get(f"/v1/files/models/{model}/nothing.bin", headers=KEY).status_code == 404


def test_stream_reads_chunks_checks_the_sha256_and_closes(settings: Settings, tmp_path: Path) -> None:
    from services.common.storage import DirStorage, StorageError

    for storage in (get_storage(settings), DirStorage(tmp_path / "store")):
        storage.ensure_ready()
        data = os.urandom(3 * MIB + 5)
        storage.put_bytes("models/x/blob", data)
        with storage.open_stream("models/x/blob", chunk_size=MIB) as s:
            chunks = list(s)
        assert [len(c) for c in chunks] == [MIB, MIB, MIB, 5] and b"".join(chunks) == data
        assert s.closed and s.size == len(data)
        with storage.open_stream("models/x/blob", MIB + 1, 10) as s:
            assert s.read() == data[MIB + 1 : MIB + 11] and s.read() == b"" and s.closed
    store = DirStorage(tmp_path / "store")
    (tmp_path / "store" / "models" / "x" / "blob").write_bytes(b"x" * 10)  # changed behind its checksum
    with pytest.raises(StorageError, match="sha256"), store.open_stream("models/x/blob") as s:
        list(s)


def test_readyz_answers_within_its_limit_when_the_store_hangs(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    from services.common.storage import S3Storage

    release = threading.Event()
    monkeypatch.setattr(S3Storage, "ping", lambda self: release.wait(60))
    try:
        t0 = time.perf_counter()
        r = client.get("/readyz")
        took = time.perf_counter() - t0
    finally:
        release.set()
    assert r.status_code == 503 and r.json()["checks"] == {"redis": "ok", "storage": "error: timeout"}, r.text
    assert took < scaled(4.0), f"/readyz took {took:.1f} s"
    assert client.get("/healthz").status_code == 200


def test_the_io_pool_refuses_past_its_bound() -> None:
    import asyncio
    import threading

    from services.gateway.errors import ApiError
    from services.gateway.waiting import IoPool

    pool = IoPool(threads=1, queue=1)
    release = threading.Event()

    async def scenario() -> list[object]:
        held = [asyncio.ensure_future(pool.run(release.wait, 30)) for _ in range(2)]  # one runs, one queues
        await asyncio.sleep(0.05)
        with pytest.raises(ApiError) as refused:
            await pool.run(time.sleep, 0)
        release.set()
        return [refused.value.status, refused.value.code, refused.value.headers, *await asyncio.gather(*held)]

    status, code, headers, *done = asyncio.run(scenario())
    assert (status, code, headers) == (503, "busy", {"Retry-After": "1"}) and done == [True, True]
    assert pool.in_use == 0
