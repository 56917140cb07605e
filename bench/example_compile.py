"""The example project's compile: wall, CPU and the embedded server's work (load-independent).

    PYTHONPATH=. python bench/example_compile.py                 # pytest --dspex-compile in a copy
    PYTHONPATH=. python bench/example_compile.py -- -k triage    # extra pytest arguments after --

Copies ``example_project`` to a temporary folder (its goldens are never touched, its answer cache
left out: a cold compile, as in a fresh clone), runs ``pytest --dspex-compile`` there with the
embedded llama.cpp server in verbose mode (``bench/_llama_counts.py``), and reports: wall time, the
CPU time of pytest and the server together, the server's requests, prompt tokens it evaluated
(llama.cpp reuses the cached prefix of the previous prompt; these are the tokens it did *not*
reuse), prompt tokens it was sent, and tokens it generated. The token counts do not depend on
how busy the machine is; wall time does. The copy's report (``dspex-report.json``) gives the
programs' outcomes and scores.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# llama.cpp's per-request timings (verbose): "prompt eval time = 123.45 ms / 321 tokens", "eval time = ... / 12 runs"
_PROMPT = re.compile(r"prompt eval time\s*=\s*([\d.]+) ms\s*/\s*(\d+) tokens")
_EVAL = re.compile(r"(?<!prompt )eval time\s*=\s*([\d.]+) ms\s*/\s*(\d+) runs")
_LOAD = re.compile(r"load time\s*=")
_TOTAL = re.compile(r"total time\s*=\s*([\d.]+) ms")


def server_counts(log: str) -> dict[str, Any]:
    """Prompt tokens evaluated, tokens generated and requests, from the verbose server log."""
    prompt = [(float(ms), int(n)) for ms, n in _PROMPT.findall(log)]
    gen = [(float(ms), int(n)) for ms, n in _EVAL.findall(log)]
    total = [float(ms) for ms in _TOTAL.findall(log)]
    n = max(1, len(prompt))
    return {
        "requests": len(prompt),
        "prompt_tokens_evaluated": sum(n for _, n in prompt),
        "prompt_eval_s": round(sum(ms for ms, _ in prompt) / 1000, 1),
        "generated_tokens": sum(n for _, n in gen),
        "generate_s": round(sum(ms for ms, _ in gen) / 1000, 1),
        # llama.cpp's own clock per request: reading the prompt, decoding, and everything from the
        # start of the request to its end (sampling, the grammar, the server's Python)
        "prompt_eval_ms_per_request": round(sum(ms for ms, _ in prompt) / n, 1),
        "generate_ms_per_request": round(sum(ms for ms, _ in gen) / n, 1),
        "total_ms_per_request": round(sum(total) / n, 1),
    }


def run(extra: list[str], keep: Path | None = None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="dspex-example-") as tmp:
        project = Path(tmp) / "example_project"
        shutil.copytree(ROOT / "example_project", project, ignore=shutil.ignore_patterns(".dspex_cache", "__pycache__", ".pytest_cache", "dspex-report*"))
        log = Path(tmp) / "server.log"
        env = dict(os.environ, DSPEX_BENCH_SERVER_LOG=str(log))
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "bench"), env.get("PYTHONPATH", "")])
        cmd = [sys.executable, "-m", "pytest", "--dspex-compile", "-p", "_llama_counts", "-q", "-p", "no:cacheprovider", *extra]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        text = log.read_text(errors="replace") if log.exists() else ""
        report_path = project / "dspex-report.json"
        report = json.loads(report_path.read_text()) if report_path.exists() else {}
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            shutil.copytree(project / "tests" / "__dspex__", keep / "__dspex__", dirs_exist_ok=True)
            (keep / "pytest.out").write_text(proc.stdout + proc.stderr)
            (keep / "server.log").write_text(text)
            if report_path.exists():
                shutil.copy(report_path, keep / "dspex-report.json")
    out: dict[str, Any] = {
        "exit": proc.returncode,
        "wall_s": round(wall, 1),
        "cpu_s": round((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 1),
        **server_counts(text),
        "tail": proc.stdout.strip().splitlines()[-1:] if proc.stdout.strip() else proc.stderr[-500:],
    }
    rows = report.get("rows") or report.get("programs") or []
    out["programs"] = [
        {k: r.get(k) for k in ("program", "score", "n", "outcome", "golden_score", "passed") if k in r} for r in rows if isinstance(r, dict)
    ]
    return out


#: the compile at main 37f9b8d (before issue 18/26's speed-ups), measured on the quiet machine
BEFORE = {"wall_s": 312, "cpu_s": 459, "requests": 553, "prompt_tokens_evaluated": 31465, "generated_tokens": 4176}


def section(ctx: Any) -> list[str]:
    """bench/run.py section: the example project's compile (wall, CPU, the server's work)."""
    r = run([])
    ctx.target("example project compile, wall", f"{r['wall_s']:.0f} s", "≤ 120 s", r["wall_s"] <= 120)
    ctx.target("example project compile, CPU (pytest + server)", f"{r['cpu_s']:.0f} s", "", None)
    b = BEFORE
    return [
        "`bench/example_compile.py`: `pytest --dspex-compile` in a copy of `example_project`, cold cache",
        "(four programs). The server's timings are llama.cpp's own, per request. *Before*: main at 37f9b8d,",
        "quiet machine.",
        "",
        "| | wall | CPU (pytest + server) | requests | prompt tokens evaluated | generated tokens | prompt eval / request | decoding / request | llama.cpp total / request | exit |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| before | {b['wall_s']} s | {b['cpu_s']} s | {b['requests']} | {b['prompt_tokens_evaluated']} | {b['generated_tokens']} | | | | 0 |",
        f"| now | {r['wall_s']:.0f} s | {r['cpu_s']:.0f} s | {r['requests']} | {r['prompt_tokens_evaluated']} | {r['generated_tokens']} | "
        f"{r['prompt_eval_ms_per_request']:.0f} ms | {r['generate_ms_per_request']:.0f} ms | {r['total_ms_per_request']:.0f} ms | {r['exit']} |",
        "",
        "Scores (the goldens' baselines: triage 0.875, find_product 0.979, take_order 0.950, route 0.625): "
        + "; ".join(f"{name} {score:.3f}" for name, score in {p.get("program"): p.get("score") or 0.0 for p in r["programs"]}.items()),
    ]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--keep", type=Path, help="copy the compiled goldens, the output and the report here")
    ap.add_argument("extra", nargs="*", help="pytest arguments (after --)")
    args = ap.parse_args(argv)
    print(json.dumps(run(args.extra, args.keep), indent=1))


if __name__ == "__main__":
    main()
