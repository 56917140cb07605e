"""What the bench sections share: the fake server, running a case in a fresh process, DSPy's venv."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DSPY_VENV = Path(os.environ.get("DSPEX_BENCH_DSPY_VENV", HERE / ".dspy-venv"))  # e.g. a link to an existing DSPy 3.4.1 venv


def start_server(latency: float, pass_every: int = 1, faults: str = "{}") -> tuple[subprocess.Popen[str], str]:
    cmd = [sys.executable, "-m", "pytest_dspex.testing.fake_server", "--latency", str(latency), "--pass-every", str(pass_every), "--faults", faults]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout is not None
    line = proc.stdout.readline().split()
    assert line and line[0] == "READY", line
    return proc, line[1]


def run_case(python: str, script: str, case: str, env: dict[str, str] | None = None, **args: object) -> dict:
    """``script case JSON`` in a fresh process; its last stdout line is the JSON result."""
    out = subprocess.run([python, str(HERE / script), case, json.dumps(args)], capture_output=True, text=True,
                         cwd=ROOT, env={**os.environ, **(env or {})})  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"{script} {case} failed:\n{out.stderr[-3000:]}")
    result: dict = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def dspy_python() -> str:
    py = DSPY_VENV / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(DSPY_VENV)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "dspy==3.4.1"], check=True)
    return str(py)


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def spread(xs: list[float], fmt: str = "{:.2f}") -> str:
    """``median (min-max)``, or the one value."""
    if len(xs) == 1:
        return fmt.format(xs[0])
    return f"{fmt.format(statistics.median(xs))} ({fmt.format(min(xs))}–{fmt.format(max(xs))})"
