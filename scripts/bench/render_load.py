"""Bounded load test of ``POST /v1/models/{id}/render`` on a running stack (threads, no extra tools).

    python scripts/bench/render_load.py --url http://127.0.0.1:8000 --key dev-key --model MODEL_ID \\
        --seconds 30 --threads 4 [--seeds 8]

Prints requests/s, p50/p90/p99 latency and the error count (non-200 answers and exceptions).
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import httpx


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--key", default="dev-key")
    p.add_argument("--model", required=True)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--threads", type=int, default=4)
    p.add_argument(
        "--seeds", type=int, default=8, help="distinct seeds (the render worker caches their MPIs)"
    )
    args = p.parse_args()

    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    deadline = time.perf_counter() + args.seconds

    def worker(index: int) -> None:
        i = index
        with httpx.Client(base_url=args.url, headers={"X-API-Key": args.key}, timeout=30) as c:
            while time.perf_counter() < deadline:
                body = {"seed": i % args.seeds, "yaw": ((i * 37) % 100) / 100 - 0.5, "pitch": 0.1}
                t0 = time.perf_counter()
                try:
                    r = c.post(f"/v1/models/{args.model}/render", json=body)
                    ok = r.status_code == 200 and r.content[:4] == b"\x89PNG"
                    err = None if ok else f"HTTP {r.status_code}: {r.text[:120]}"
                except httpx.HTTPError as exc:
                    err = f"{type(exc).__name__}: {exc}"
                dt = time.perf_counter() - t0
                with lock:
                    (errors.append(err) if err else latencies.append(dt))
                i += args.threads

    t_start = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(args.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t_start
    n = len(latencies) + len(errors)
    qs = statistics.quantiles(latencies, n=100) if len(latencies) >= 2 else [float("nan")] * 99
    print(f"render load: {n} requests in {wall:.1f} s with {args.threads} threads -> {n / wall:.1f} req/s")
    worst = max(latencies, default=0) * 1000
    p50, p90, p99 = (qs[i] * 1000 for i in (49, 89, 98))
    print(f"latency ms: p50 {p50:.1f}  p90 {p90:.1f}  p99 {p99:.1f}  max {worst:.1f}")
    print(f"errors: {len(errors)}" + (f" (first: {errors[0]})" if errors else ""))
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
