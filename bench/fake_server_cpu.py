"""The fake endpoint's own CPU per request: ``python bench/fake_server_cpu.py [--aiohttp] [-n 5000] [-c 64]``.

Starts ``python -m pytest_dspex.testing.fake_server --latency 0.05`` (the fast server; ``--aiohttp``:
aiohttp's, as before), drives it from this process with a bare ``aiohttp`` client (``-c`` requests in
flight on keep-alive connections, DSPy chat-adapter bodies; ``--client openai``: ``AsyncOpenAI``), and reads the server process's CPU
(user + system) from ``/proc/<pid>/stat`` before and after, past a warm-up. CPU, not wall time: the
figure holds on a loaded machine. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TICK = os.sysconf("SC_CLK_TCK")

SYSTEM = (
    "Your input fields are:\n1. `message` (str):\nYour output fields are:\n1. `team` (str):\n"
    "All interactions will be structured in the following way, with the appropriate values filled in.\n\n"
    "[[ ## message ## ]]\n{message}\n\n[[ ## team ## ]]\n{team}\n\n[[ ## completed ## ]]\n"
    "In adhering to this structure, your objective is: \n        Route a customer message to the team that should handle it."
)


def body(i: int) -> bytes:
    text = "I was charged twice, please refund" if i % 2 else "the app crashes on start"
    user = (f"[[ ## message ## ]]\ncase {i}: {text}\n\nRespond with the corresponding output fields, starting with the field "
            "`[[ ## team ## ]]`, and then ending with the marker for `[[ ## completed ## ]]`.")  # fmt: skip
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]
    return json.dumps({"model": "fake-model", "messages": messages, "temperature": 0.0, "max_tokens": 256}).encode()


def cpu(pid: int) -> tuple[float, float]:
    """``(user, system)`` CPU seconds of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICK, int(fields[12]) / TICK  # utime, stime (fields 14 and 15 of stat)


async def drive(url: str, n: int, concurrency: int) -> dict[str, int]:
    import aiohttp

    statuses: dict[str, int] = {}
    bodies = [body(i) for i in range(n)]
    todo = iter(range(n))
    headers = {"Content-Type": "application/json", "Authorization": "Bearer k"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def worker() -> None:
            for i in todo:
                async with session.post(url + "/chat/completions", data=bodies[i], headers=headers) as resp:
                    answer = await resp.read()
                    key = str(resp.status)
                    if resp.status == 200:
                        json.loads(answer)["choices"][0]["message"]["content"]
                    statuses[key] = statuses.get(key, 0) + 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return statuses


async def drive_openai(url: str, n: int, concurrency: int) -> dict[str, int]:
    import openai

    client = openai.AsyncOpenAI(base_url=url, api_key="k", max_retries=0)
    statuses: dict[str, int] = {}
    todo = iter(range(n))

    async def worker() -> None:
        for i in todo:
            request = json.loads(body(i))
            answer = await client.chat.completions.create(**request)
            assert answer.choices[0].message.content
            statuses["200"] = statuses.get("200", 0) + 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    await client.close()
    return statuses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--aiohttp", action="store_true")
    parser.add_argument("-n", type=int, default=5000)
    parser.add_argument("-c", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--max-in-flight", type=int, default=None, help="the server's cap: a 429 above it (each counted as a request)")
    parser.add_argument("--client", choices=["aiohttp", "openai"], default="aiohttp", help="the driving client (default: bare aiohttp)")
    args = parser.parse_args()
    cmd = [sys.executable, "-m", "pytest_dspex.testing.fake_server", "--latency", str(args.latency)]
    cmd += ["--max-in-flight", str(args.max_in_flight)] if args.max_in_flight else []
    proc = subprocess.Popen(cmd + (["--aiohttp"] if args.aiohttp else []), stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().split()
        assert line[:1] == ["READY"], line
        url = line[1]
        run = drive if args.client == "aiohttp" else drive_openai
        asyncio.run(run(url, args.warmup, args.c))
        before, wall, client = cpu(proc.pid), time.perf_counter(), time.process_time()
        statuses = asyncio.run(run(url, args.n, args.c))
        after, wall, client = cpu(proc.pid), time.perf_counter() - wall, time.process_time() - client
    finally:
        proc.terminate()
        proc.wait()
    user, system = after[0] - before[0], after[1] - before[1]
    server = user + system
    print(json.dumps({
        "server": "aiohttp" if args.aiohttp else "fast", "client": args.client, "requests": args.n, "concurrency": args.c, "latency": args.latency,
        "max_in_flight": args.max_in_flight, "statuses": statuses, "server_cpu_s": round(server, 3), "server_cpu_ms_per_request": round(1000 * server / args.n, 4),
        "of_which_system_ms": round(1000 * system / args.n, 4),
        "client_cpu_ms_per_request": round(1000 * client / args.n, 4), "wall_s (loaded machine, not a figure)": round(wall, 2),
        "load_average": os.getloadavg()[0],
    }))  # fmt: skip


if __name__ == "__main__":
    main()
