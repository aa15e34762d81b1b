"""Run checkpoint readers on hostile files in forked children with a memory cap and a wall-clock limit.

A regression in the readers' limits must fail a test, not take the machine down: each job runs in a
child forked from this runner (torch is imported once, before forking) under ``RLIMIT_AS`` = its
address space at fork + ``--mem-mib``, and is killed after ``--timeout`` seconds. Jobs are JSON lines on
stdin ``{"name", "call", "path"}``; results are JSON lines on stdout::

    {"name", "outcome": "ok" | "error" | "timeout" | "died", "type": "module.Class", "message",
     "seconds", "extra_mib"}

``extra_mib`` is the child's peak resident memory above what it had at fork.

    python -m tests.gmpi_core.checkpoints.guarded --mem-mib 1024 --timeout 30 < jobs.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")


def _calls() -> dict[str, Callable[[str], Any]]:
    import torch

    torch.set_num_threads(1)
    from gmpi_core.checkpoints import (
        init_gmpi_from_stylegan2,
        load_official_gmpi,
        load_pretrained,
        read_official_config,
        read_stylegan2_pkl,
    )

    def torch_file(path: str) -> Any:
        from gmpi_core.checkpoints.torch_file import load_torch_file  # absent before the hardening

        return load_torch_file(path)

    return {
        "read_stylegan2_pkl": read_stylegan2_pkl,
        "read_stylegan2_pkl_bytes": lambda p: read_stylegan2_pkl(Path(p).read_bytes()),
        "init_gmpi_from_stylegan2": init_gmpi_from_stylegan2,
        "read_official_config": read_official_config,
        "load_official_gmpi": load_official_gmpi,
        "load_official_gmpi_raw": lambda p: load_official_gmpi(p, use_ema=False),
        "load_pretrained": load_pretrained,
        "load_torch_file": torch_file,
    }


def _vm_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _child(call: Callable[[str], Any], path: str, mem_mib: int, out: int) -> None:
    base = _rss_mib()
    limit = _vm_bytes() + mem_mib * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    start = time.monotonic()
    result: dict[str, Any]
    try:
        call(path)
        result = {"outcome": "ok", "type": None, "message": ""}
    except BaseException as err:
        kind = type(err)
        result = {
            "outcome": "error",
            "type": f"{kind.__module__}.{kind.__qualname__}",
            "message": str(err)[:2000],
        }
    result["seconds"] = round(time.monotonic() - start, 3)
    result["extra_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base, 1)
    os.write(out, json.dumps(result).encode())
    os._exit(0)


def run_job(call: Callable[[str], Any], path: str, mem_mib: int, timeout: float) -> dict[str, Any]:
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read_fd)
        try:
            _child(call, path, mem_mib, write_fd)
        finally:
            os._exit(1)
    os.close(write_fd)
    start = time.monotonic()
    status = None
    while time.monotonic() - start < timeout:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.02)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(read_fd)
        return {
            "outcome": "timeout",
            "type": None,
            "message": f"killed after {timeout} s",
            "seconds": timeout,
        }
    with os.fdopen(read_fd, "rb") as fh:
        data = fh.read()
    if not data:
        return {
            "outcome": "died",
            "type": None,
            "message": f"child exited with status {status}",
            "seconds": None,
        }
    result: dict[str, Any] = json.loads(data)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--mem-mib", type=int, default=1024)
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args(argv)
    calls = _calls()
    for line in sys.stdin:
        if not line.strip():
            continue
        job = json.loads(line)
        result = run_job(calls[job["call"]], job["path"], args.mem_mib, args.timeout)
        print(json.dumps({"name": job["name"], **result}), flush=True)


if __name__ == "__main__":
    main()
