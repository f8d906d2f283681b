"""`sdtune serve` under load on this machine: requests per second and latency (p50, p95) of
/sdapi/v1/txt2img for the tiny world's base model, at 1, 4 and 16 concurrent clients (queue large
enough that none is refused). The generation itself dominates; the figures say what the HTTP side,
the queue and the PNG/base64 answer add on top of it, and how waiting grows with clients.

    python3 bench/serve.py [--requests 64] [--steps 4] [--size 64]
"""

import argparse
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "helpers"))

from binaries import built_binary  # noqa: E402
from serve_client import BASE, Server  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--size", type=int, default=64)
    a = ap.parse_args()
    server = Server(built_binary("sdtune"), "--model", BASE, "--queue", 256)
    body = dict(prompt="a red circle", steps=a.steps, width=a.size, height=a.size, seed=1, sampler_name="Euler")
    try:
        for _ in range(3):  # warm-up
            server.request("/sdapi/v1/txt2img", body)
        print(f"tiny world base, {a.size}x{a.size}, {a.steps} Euler steps, {a.requests} requests per row")
        print(f"{'clients':>8} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'refused':>8}")
        for clients in (1, 4, 16):
            def one(i):
                start = time.perf_counter()
                status, _, _ = server.request("/sdapi/v1/txt2img", dict(body, seed=i))
                return status, time.perf_counter() - start

            start = time.perf_counter()
            with ThreadPoolExecutor(clients) as pool:
                results = list(pool.map(one, range(a.requests)))
            wall = time.perf_counter() - start
            lat = sorted(t for s, t in results if s == 200)
            refused = sum(1 for s, _ in results if s != 200)
            p50 = statistics.median(lat) * 1000
            p95 = lat[min(len(lat) - 1, round(0.95 * (len(lat) - 1)))] * 1000
            print(f"{clients:>8} {len(lat) / wall:>8.2f} {p50:>8.1f} {p95:>8.1f} {refused:>8}")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
