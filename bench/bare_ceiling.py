"""The ceiling of the loopback figure on this machine: a bare aiohttp client against the fake endpoint.

    python bench/bare_ceiling.py [--n 1000] [--concurrency 64] [--rounds 2]

Starts ``python -m pytest_dspex.testing.fake_server --latency 0.05`` (what the loopback section uses) and
posts N chat completions, ``--concurrency`` in flight, reading each body and nothing else: no SDK, no LM
client, no cache, no evaluation. Prints the share of the latency limit (concurrency / 50 ms) it reaches
and the client's CPU per request: what any client, ours or not, can reach here with the endpoint on the
same two cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BODY = {"model": "m", "messages": [{"role": "user", "content": "Message: my invoice is wrong\nTeam:"}]}


async def drive(url: str, n: int, c: int) -> dict[str, float]:
    import aiohttp

    latencies: list[float] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=c)) as session:
        gate = asyncio.Semaphore(c)

        async def one() -> None:
            async with gate:
                t = time.perf_counter()
                async with session.post(url + "/chat/completions", json=BODY) as response:
                    await response.read()
                latencies.append(time.perf_counter() - t)

        t0, c0 = time.perf_counter(), time.process_time()
        await asyncio.gather(*(one() for _ in range(n)))
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    latencies.sort()
    return {"ex_per_s": round(n / wall), "share_of_limit": round(n / wall / (c / 0.05), 3),
            "client_cpu_ms": round(cpu / n * 1e3, 3), "p50_ms": round(latencies[n // 2] * 1e3, 1)}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args(argv)
    server = subprocess.Popen([sys.executable, "-m", "pytest_dspex.testing.fake_server", "--latency", "0.05"],
                              stdout=subprocess.PIPE, text=True, cwd=ROOT)  # fmt: skip
    try:
        assert server.stdout is not None
        url = server.stdout.readline().split()[1]  # "READY <url>"
        for _ in range(args.rounds):
            print(json.dumps(asyncio.run(drive(url, args.n, args.concurrency))), flush=True)
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
