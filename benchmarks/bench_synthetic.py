"""Images per second of the synthetic portrait renderer, per domain, at 64, 256 and 1024 px (one process).

    python benchmarks/bench_synthetic.py [--sizes 64 256 1024] [--seconds 2]

Prints wall-clock and CPU-time (thread time) rates: on a shared, oversubscribed machine the CPU-time rate
is what one free core would do.
The first image of each size is rendered before timing (it builds the cached stroke/noise tiles).
"""
from __future__ import annotations

import argparse
import os
import time

from fstrain.data.synthetic import DOMAINS, generate


def measure(domain: str, size: int, seconds: float, aligned: bool) -> tuple[float, float, int]:
    next(generate(domain, 1, size, seed=999, aligned=aligned))     # warm caches
    count, wall0, cpu0 = 0, time.perf_counter(), time.thread_time()
    for _ in generate(domain, 10_000, size, seed=1, aligned=aligned):
        count += 1
        if time.perf_counter() - wall0 >= seconds and count >= 3:
            break
    wall, cpu = time.perf_counter() - wall0, time.thread_time() - cpu0
    return count / wall, count / cpu, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--seconds", type=float, default=2.0, help="time per (domain, size) cell")
    parser.add_argument("--unaligned", action="store_true", help="unaligned 1.5x canvases instead")
    args = parser.parse_args()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"synthetic portraits, {'unaligned' if args.unaligned else 'aligned'}; load average {load:.1f} "
          f"on {os.cpu_count()} cores")
    print(f"{'domain':<13}" + "".join(f"{f'{s}px wall/cpu':>22}" for s in args.sizes))
    for domain in DOMAINS:
        cells = []
        for size in args.sizes:
            wall, cpu, n = measure(domain, size, args.seconds, args.unaligned)
            cells.append(f"{wall:8.1f} /{cpu:7.1f} img/s")
        print(f"{domain:<13}" + "".join(f"{c:>22}" for c in cells), flush=True)


if __name__ == "__main__":
    main()
