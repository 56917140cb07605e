"""Replay a compile's requests against variants of the embedded server: CPU, wall and answers per variant.

    # record the requests of a compile (bench/_llama_counts.py writes them, one JSON body a line)
    cd example_project && DSPEX_BENCH_REQUEST_LOG=/tmp/req.jsonl PYTHONPATH=..:../bench \\
        python -m pytest --dspex-compile -p _llama_counts -p no:cacheprovider -q -k triage
    PYTHONPATH=. python bench/embedded_replay.py /tmp/req.jsonl --variants before,now --rounds 2

Each variant starts its own server (the embedded model, the project's ``dspex-plain`` format) and
sends the recorded bodies in their recorded order, ``--concurrency`` at a time as the compile did.
The variants differ only in how the server samples and waits, so the same requests can be compared
on a busy machine by alternating them (``--rounds``): the server's CPU seconds (from /proc) and its
per-request llama.cpp timings are what to judge by; wall time follows the machine's load. The
answers of every variant are compared with the first's (they must be the same).

Variants: ``before`` (llama.cpp's grammar pass over the whole vocabulary, OpenMP threads spinning:
the server as it was), ``now`` (the server as ``ensure_server`` starts it), ``spin`` (now, with
spinning threads), ``full-grammar`` (now, with the whole-vocabulary grammar pass), ``one-thread``,
``serial`` and ``batched`` (the batch engine off and on: ``DSPEX_BATCHED``), ``batched-1`` (on, the
requests sent one at a time). Any variant with ``+alt`` appended runs with the ``llama_cpp`` package
found at ``DSPEX_BENCH_LLAMA_PATH`` first on the server's path (a build with other flags, unpacked
from its wheel), e.g. ``--variants now,now+alt``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from example_compile import server_counts  # noqa: E402

_LAUNCH = """
import sys
from pytest_dspex.lm.local import _llama_server as server
if {full_grammar!r}:
    server.install_pruned_grammar = lambda: None
sys.argv = ["llama_server", *{args!r}]
server.main()
"""

VARIANTS: dict[str, dict[str, Any]] = {
    "before": {"full_grammar": True, "env": {"OMP_WAIT_POLICY": "ACTIVE"}},
    "now": {"full_grammar": False, "env": {}},
    "spin": {"full_grammar": False, "env": {"OMP_WAIT_POLICY": "ACTIVE"}},
    "full-grammar": {"full_grammar": True, "env": {}},
    "one-thread": {"full_grammar": False, "env": {"DSPEX_INSTANCES": "1"}, "threads": 1},
    # the server before the instance pool: one instance with every core (threads waiting passively)
    "one-instance": {"full_grammar": False, "env": {"OMP_WAIT_POLICY": "PASSIVE", "DSPEX_INSTANCES": "1"}, "threads": 0},
    # the pool (pytest_dspex/lm/local/_pool.py): one single-thread instance per core
    "pool": {"full_grammar": False, "env": {"OMP_WAIT_POLICY": "PASSIVE", "DSPEX_INSTANCES": str(os.cpu_count() or 2)}, "threads": 1},
    # the batch engine (pytest_dspex/lm/local/_batched.py) off and on; "-1": its requests sent one at a time
    "serial": {"full_grammar": False, "env": {"OMP_WAIT_POLICY": "PASSIVE", "DSPEX_BATCHED": "0"}},
    "batched": {"full_grammar": False, "env": {"OMP_WAIT_POLICY": "PASSIVE", "DSPEX_BATCHED": "1"}},
    # the batch engine with one thread: its answers do not depend on what a request was batched with
    "batched-t1": {"full_grammar": False, "env": {"OMP_WAIT_POLICY": "PASSIVE", "DSPEX_BATCHED": "1", "DSPEX_INSTANCES": "1"}, "threads": 1},
    "batched-1": {"full_grammar": False, "env": {"OMP_WAIT_POLICY": "PASSIVE", "DSPEX_BATCHED": "1"}, "concurrency": 1},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _server_env(variant: dict[str, Any]) -> dict[str, str]:
    """The environment ``ensure_server`` gives the server, with the variant's overrides."""
    from pytest_dspex.lm.local.embedded import server_env

    env = server_env(os.getpid())
    if variant["env"]:
        env = {k: v for k, v in env.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
        env.update(variant["env"])
    return env


async def _send_all(url: str, bodies: list[dict[str, Any]], concurrency: int) -> list[str]:
    import httpx

    answers: list[str] = [""] * len(bodies)
    queue = iter(enumerate(bodies))
    async with httpx.AsyncClient(timeout=600) as client:

        async def worker() -> None:
            for i, body in queue:
                r = await client.post(url + "/chat/completions", json=body)
                r.raise_for_status()
                answers[i] = r.json()["choices"][0]["message"]["content"] or ""

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return answers


def replay(name: str, bodies: list[dict[str, Any]], concurrency: int) -> dict[str, Any]:
    import httpx

    from pytest_dspex.lm.local.embedded import LOCAL_MODEL_NAME, model_path

    variant = VARIANTS[name.removesuffix("+alt")]
    port = _free_port()
    from pytest_dspex.lm.local.embedded import _threads

    threads = variant.get("threads") or (os.cpu_count() or 2)
    if "threads" not in variant:  # as ensure_server starts it
        env0 = os.environ.copy()
        os.environ.update(variant["env"])
        try:
            threads = _threads()
        finally:
            os.environ.clear()
            os.environ.update(env0)
    args = ["--model", str(model_path()), "--model_alias", LOCAL_MODEL_NAME, "--host", "127.0.0.1", "--port", str(port),
            "--chat_format", "dspex-plain", "--n_ctx", "4096", "--verbose", "True", "--n_threads", str(threads),
            "--logits_all", "False", "--use_mmap", "False"]  # fmt: skip
    env = _server_env(variant)
    # ``--llama-path``: a llama_cpp package built another way, imported before the installed one
    env["PYTHONPATH"] = os.pathsep.join([*(p for p in (os.environ.get("DSPEX_BENCH_LLAMA_PATH", ""),) if p and name.endswith("+alt")), str(ROOT), env.get("PYTHONPATH", "")])
    with tempfile.TemporaryDirectory() as tmp:
        log_path = Path(tmp) / "server.log"
        with open(log_path, "wb") as log:
            code = _LAUNCH.format(full_grammar=variant["full_grammar"], args=args)
            proc = subprocess.Popen([sys.executable, "-c", code], stdout=log, stderr=subprocess.STDOUT, env=env)
        url = f"http://127.0.0.1:{port}/v1"
        try:
            deadline = time.monotonic() + 300
            while True:
                try:
                    if httpx.get(url + "/models", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"server did not start: {log_path.read_text()[-2000:]}")
                time.sleep(0.25)
            cpu0, t0 = _cpu_seconds(proc.pid), time.perf_counter()
            answers = asyncio.run(_send_all(url, bodies, variant.get("concurrency", concurrency)))
            wall, cpu = time.perf_counter() - t0, _cpu_seconds(proc.pid) - cpu0
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        counts = server_counts(log_path.read_text(errors="replace"))
    n = max(1, counts["requests"])
    return {
        "variant": name,
        "wall_s": round(wall, 1),
        "server_cpu_s": round(cpu, 1),
        "server_cpu_per_request_s": round(cpu / n, 3),
        **counts,
        "prompt_eval_ms_per_request": round(counts["prompt_eval_s"] * 1000 / n, 1),
        "generate_ms_per_request": round(counts["generate_s"] * 1000 / n, 1),
        "ms_cpu_per_generated_token": round(cpu * 1000 / max(1, counts["generated_tokens"]), 1),
        "answers": answers,
    }


#: 48 requests of the example's find_product compile (ChainOfThought), in the order it sent them
FIND_PRODUCT = Path(__file__).resolve().parent / "data" / "find_product_requests.jsonl"


def section(ctx: Any) -> list[str]:
    """bench/run.py section: the batch engine against the serial server on the same requests."""
    bodies = [json.loads(line) for line in FIND_PRODUCT.read_text().splitlines() if line.strip()]
    rows = [
        "`bench/embedded_replay.py`: 48 requests of the example's find_product compile (ChainOfThought),",
        "replayed 8 at a time as the compile sends them. `serial`: llama-cpp-python's server as it was (one",
        "request at a time); `batched`: the batch engine (`DSPEX_BATCHED=1`), also with the requests sent one",
        "at a time (`batched-1`). Server CPU is from /proc; answers are compared with `batched-1`'s.",
        "",
        "| variant | wall | server CPU | CPU per generated token | prompt tokens evaluated | generated | answers differing |",
        "|---|---|---|---|---|---|---|",
    ]
    first: list[str] | None = None
    results = {}
    for name in ("batched-1", "batched", "serial", "batched"):
        r = replay(name, bodies, 8)
        answers = r.pop("answers")
        first = answers if first is None else first
        differing = sum(a != b for a, b in zip(answers, first, strict=True))
        results[name] = r
        rows.append(
            f"| {name} | {r['wall_s']:.0f} s | {r['server_cpu_s']:.1f} s | {r['ms_cpu_per_generated_token']:.0f} ms | "
            f"{r['prompt_tokens_evaluated']} | {r['generated_tokens']} | {differing} of {len(answers)} |"
        )
    ratio = results["batched"]["server_cpu_s"] / max(0.1, results["serial"]["server_cpu_s"])
    ctx.target("batch engine: server CPU, batched / serial (48 find_product requests)", f"{ratio:.2f}", "", None)
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("requests", type=Path, help="recorded request bodies, one JSON a line")
    ap.add_argument("--variants", default="before,now", help=f"comma-separated, of: {', '.join(VARIANTS)}")
    ap.add_argument("--rounds", type=int, default=1, help="alternate the variants this many times")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--limit", type=int, default=0, help="only the first N requests")
    args = ap.parse_args(argv)
    bodies = [json.loads(line) for line in args.requests.read_text().splitlines() if line.strip()]
    if args.limit:
        bodies = bodies[: args.limit]
    first: list[str] | None = None
    for _ in range(args.rounds):
        for name in args.variants.split(","):
            result = replay(name, bodies, args.concurrency)
            answers = result.pop("answers")
            first = answers if first is None else first
            result["answers_differing_from_the_first"] = sum(a != b for a, b in zip(answers, first, strict=True))
            result["load"] = round(os.getloadavg()[0], 1)
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
