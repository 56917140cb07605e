"""Issue 19 figures (item 7: a compile against a broken endpoint; item 8: hung requests), run by hand.

    python bench/cases_issue19.py              # every case, one line each
    python bench/cases_issue19.py --only hung --repeat 3

* compile404: ``compile_program`` (library defaults, the plugin's error budget 5%) of a triage
  program, 250 training and 250 validation examples, against a loopback endpoint answering every
  request 404. Figures: requests the endpoint received, wall and CPU seconds until the compile
  stops (``CompileStoppedError``). Issue 19 measured 75,960 requests and 48 s before; target ≤ 20
  requests and ≤ 2 s.
* compiledead: the same against a port nobody listens on. Before: 17 s, CPU-bound; target ≤ 2 s.
* compilepytest: what issue 19 ran — ``pytest --dspex-compile -p no:xdist`` on a project with a
  whole-dataset test and per-example items of one program (250 training, 250 validation
  examples), against the all-404 endpoint and against a dead port: requests, wall seconds (with
  pytest's start-up), and the first failure line.
* hung: 200 examples, 50 ms latency, 5% of requests stalling 30 s, library defaults (concurrency
  16, ``hedge_after="auto"``), against the same run without stalls, in the same process: the wall
  time ratio, in-process ``Evaluate`` and through pytest in both test modes (a whole-dataset test
  with ``-p no:xdist``; per-example items with ``-n 2``; the pytest runs' wall includes start-up).
  Before: 34x (dataset) and 69x (per-example); target ≤ 3x. Requests sent and hedges are counted.

Ratios and counts are robust on a busy machine; the absolute seconds are not.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent))

TEST_FILE = '''
import pytest
import pytest_dspex as dspex

class Triage(dspex.Signature):
    """Route a customer message to the team that should handle it."""
    message: str = dspex.InputField()
    team: str = dspex.OutputField()

triage = dspex.Predict(Triage)

def team_matches(example, prediction, trace=None):
    return example.team == prediction.team

@pytest.mark.dspex_program(triage, name="triage", trainset="data/train.jsonl")
@pytest.mark.dspex_metric(team_matches, threshold=0.5)
def test_triage(dspex_evaluate):
    dspex_evaluate("data/dev.jsonl")

@pytest.mark.dspex_program(triage, name="triage_each", trainset="data/train.jsonl")
@pytest.mark.dspex_metric(team_matches, threshold=0.5)
@pytest.mark.dspex_dataset("data/dev.jsonl")
def test_triage_each(dspex_example, dspex_predict):
    dspex_predict(dspex_example)
'''


def _examples(n: int, offset: int = 0) -> list:
    import pytest_dspex as dspex

    return [
        dspex.Example(message=f"case {i}: " + ("I was charged twice" if i % 2 else "the app crashes"),
                      team="billing" if i % 2 else "technical").with_inputs("message")
        for i in range(offset, offset + n)
    ]  # fmt: skip


def _metric(example, prediction, trace=None):  # type: ignore[no-untyped-def]
    return example.team == prediction.team


def _compile(url: str, n: int) -> dict:
    import aiohttp  # noqa: F401  (imported before the clock starts: the figure is the compile's)

    import pytest_dspex as dspex
    import pytest_dspex.optimize
    from pytest_dspex.optimize.compile import CompileSettings, compile_program

    lm = dspex.LM("fake-model", base_url=url, api_key="bench", cache=None)
    wall, cpu = time.perf_counter(), time.process_time()
    error = ""
    with tempfile.TemporaryDirectory() as d, dspex.context(lm=lm):
        try:
            compile_program(
                dspex.Predict("message -> team"), name="triage", metric=_metric, trainset=_examples(n, 10_000),
                valset=_examples(n), input_keys=("message",), path=Path(d) / "__dspex__" / "t" / "triage.json",
                settings=CompileSettings(),
            )  # fmt: skip
        except dspex.DspexError as exc:
            error = f"{type(exc).__name__}: {exc}"
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    lm.close()
    return {"wall_s": wall, "cpu_s": cpu, "error": error[:300]}


def compile_404(n: int = 250) -> str:
    from pytest_dspex.testing.fake_server import FakeLMServer, Faults, triage_responder

    with FakeLMServer(triage_responder, faults=Faults(http_404=1.0)) as server:
        server.keep_bodies = False
        r = _compile(server.base_url, n)
        requests = server.requests
    return (f"compile, all-404 endpoint, {n}+{n} examples: {requests} requests, stopped after {r['wall_s']:.2f} s wall "
            f"({r['cpu_s']:.2f} s CPU) — {r['error'][:160]}")  # fmt: skip


def compile_dead(n: int = 250) -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = _compile(f"http://127.0.0.1:{port}/v1", n)
    return f"compile, dead port, {n}+{n} examples: stopped after {r['wall_s']:.2f} s wall ({r['cpu_s']:.2f} s CPU) — {r['error'][:160]}"


def _evaluate(url: str, n: int) -> tuple[float, int, int]:
    import pytest_dspex as dspex

    lm = dspex.LM("fake-model", base_url=url, api_key="bench", cache=None)
    t0 = time.perf_counter()
    result = dspex.Evaluate(_examples(n), _metric)(dspex.Predict("message -> team", lm=lm))
    wall = time.perf_counter() - t0
    lm.close()
    return wall, result.usage.hedges, result.n - len(result.errors)


def _pytest(url: str, project: Path, mode: list[str], selection: str, *extra: str, ok: bool = True) -> float:
    return _pytest_run(url, project, mode, selection, *extra, ok=ok)[0]


def _pytest_run(url: str, project: Path, mode: list[str], selection: str, *extra: str, ok: bool = True) -> tuple[float, str]:
    env = dict(os.environ, PYTHONPATH=str(HERE.parent))
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--dspex-base-url={url}", "--dspex-model=fake-model",
           "--dspex-cache=off", "-k", selection, *mode, *extra]  # fmt: skip
    t0 = time.perf_counter()
    ran = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - t0
    if ok and ran.returncode != 0:
        raise RuntimeError(ran.stdout[-2000:])
    return wall, ran.stdout


def _project(d: str, n: int) -> Path:
    project = Path(d)
    (project / "data").mkdir()
    for name, offset in (("dev", 0), ("train", 10_000)):
        rows = [{"id": f"ex-{i}", "message": f"case {i}: " + ("I was charged twice" if i % 2 else "the app crashes"),
                 "team": "billing" if i % 2 else "technical"} for i in range(offset, offset + n)]  # fmt: skip
        (project / "data" / f"{name}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (project / "test_triage.py").write_text(TEST_FILE)
    (project / "pytest.ini").write_text("[pytest]\ndspex_missing_golden = zero-shot\n")
    return project


def compile_pytest(n: int = 250) -> str:
    from pytest_dspex.testing.fake_server import FakeLMServer, Faults, triage_responder

    out = []
    with tempfile.TemporaryDirectory() as d:
        project = _project(d, n)
        with FakeLMServer(triage_responder, faults=Faults(http_404=1.0)) as server:
            server.keep_bodies = False
            wall, stdout = _pytest_run(server.base_url, project, ["-p", "no:xdist"], "triage", "--dspex-compile", ok=False)
            first = next((line for line in stdout.splitlines() if line.startswith("FAILED")), "")
            out.append(f"all-404: {server.requests} requests, {wall:.1f} s ({first[:140]})")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        wall, stdout = _pytest_run(f"http://127.0.0.1:{port}/v1", project, ["-p", "no:xdist"], "triage", "--dspex-compile", ok=False)
        out.append(f"dead port: {wall:.1f} s")
    return f"pytest --dspex-compile, {n}+{n} examples, a whole-dataset test and {n} per-example items: " + "; ".join(out)


def hung(n: int = 200, seed: int = 1) -> str:
    from pytest_dspex.testing.fake_server import FakeLMServer, Faults, triage_responder

    with tempfile.TemporaryDirectory() as d:
        project = _project(d, n)
        out = {}
        for label, faults in (("clean", Faults()), ("stall", Faults(stall=0.05, stall_s=30, seed=seed))):
            with FakeLMServer(triage_responder, latency=0.05, faults=faults) as server:
                server.keep_bodies = False
                wall, hedges, answered = _evaluate(server.base_url, n)
                requests, stalled = server.requests, server.counts.get("stall", 0)
                dataset = _pytest(server.base_url, project, ["-p", "no:xdist"], "not each")
                each = _pytest(server.base_url, project, ["-n", "2"], "each")
                out[label] = (wall, hedges, answered, requests, dataset, each, stalled)
    c, s = out["clean"], out["stall"]
    return (f"hung requests, {n} examples, 50 ms, 5% stalling 30 s: Evaluate ({s[6]} stalled) x{s[0] / c[0]:.2f} "
            f"({s[0]:.2f}/{c[0]:.2f} s, {s[3]} requests incl. {s[1]} hedges, {s[2]}/{n} answered); pytest whole-dataset "
            f"x{s[4] / c[4]:.2f} ({s[4]:.1f}/{c[4]:.1f} s), per-example -n 2 x{s[5] / c[5]:.2f} ({s[5]:.1f}/{c[5]:.1f} s)")


CASES = {"compile404": compile_404, "compiledead": compile_dead, "compilepytest": compile_pytest, "hung": hung}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=sorted(CASES))
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    for name, case in CASES.items():
        if args.only and name != args.only:
            continue
        for _ in range(args.repeat):
            print(case(), flush=True)


if __name__ == "__main__":
    main()
