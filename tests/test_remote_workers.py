"""Remote xdist workers (``pytest -d --tx socket=HOST:PORT``) on "hosts" that are network namespaces.

The lab: one namespace per host — the controller, two worker hosts and the LM endpoint — joined by
a bridge (tests/netns.py). Each worker host runs execnet's socket server from its own checkout of
the project and with its own temporary directory (a worker's files are not the controller's, as
on a real second machine), and the LM is the fake server listening on the LM host's address. Everything the lab makes
(namespaces, interfaces, processes) is removed when the module ends.

What must hold: records reach the controller and the gate is computed there (the JSON report and
the summary are the controller's, with every example); the per-example run over two remote
workers gives the verdict ``-n 2`` gives on one host; under ``--dspex-compile`` the golden file is
written by the controller into its rootdir, never by a worker into the worker's checkout.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .needs import need
from .netns import Lab, netns_unavailable
from .test_plugin import TRIAGE_PROGRAM

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="network namespaces are Linux-only")

N_EXAMPLES = 12
PASS_EVERY = 3  # the fake LM answers case N right when N % 3 == 0: a score of 1/3 on this dataset
THRESHOLD = 0.3

TEST_FILE = TRIAGE_PROGRAM + '''
@pytest.mark.dspex_program(triage, name="triage", trainset="data/train.jsonl")
@pytest.mark.dspex_metric(team_matches, threshold=THRESHOLD)
def test_triage(dspex_evaluate):
    result = dspex_evaluate("data/dev.jsonl")
    assert result.n == N_EXAMPLES

@pytest.mark.dspex_program(triage, name="triage_each", trainset="data/train.jsonl")
@pytest.mark.dspex_metric(team_matches, threshold=THRESHOLD)
@pytest.mark.dspex_dataset("data/dev.jsonl")
def test_triage_each(dspex_example, dspex_predict):
    assert dspex_predict(dspex_example) is not None
'''.replace("THRESHOLD", str(THRESHOLD)).replace("N_EXAMPLES", str(N_EXAMPLES))


def rows(n: int, offset: int = 0) -> str:
    out = []
    for i in range(offset, offset + n):
        if i % 2:
            out.append({"id": f"ex-{i}", "message": f"case {i}: I was charged twice", "team": "billing"})
        else:
            out.append({"id": f"ex-{i}", "message": f"case {i}: the app crashes on start", "team": "technical"})
    return "\n".join(json.dumps(r) for r in out) + "\n"


def make_project(root: Path) -> None:
    (root / "data").mkdir(parents=True)
    (root / "data/dev.jsonl").write_text(rows(N_EXAMPLES))
    (root / "data/train.jsonl").write_text(rows(9, 300))
    (root / "test_triage.py").write_text(TEST_FILE)
    (root / "pytest.ini").write_text("[pytest]\nasyncio_default_fixture_loop_scope = function\n")


def socketserver_script() -> str:
    import execnet.script.socketserver as script

    return str(script.__file__)


class Cluster:
    """The lab plus what runs in it: the LM endpoint, worker checkouts and socket servers."""

    PORT = 8888

    def __init__(self, lab: Lab, root: Path) -> None:
        self.lab = lab
        self.root = root
        self.env = {**os.environ, "OPENAI_API_KEY": "sk-CANARY-remote", "PYTHONDONTWRITEBYTECODE": "1"}
        self.env.pop("PYTEST_XDIST_WORKER", None)
        self.env.pop("PYTEST_ADDOPTS", None)
        lm = lab.popen(
            "lm",
            [sys.executable, "-m", "pytest_dspex.testing.fake_server", "--host", lab.addr("lm"), "--port", "8900",
             "--pass-every", str(PASS_EVERY)],
            stdout=subprocess.PIPE, text=True, env=self.env,
        )  # fmt: skip
        assert lm.stdout is not None
        ready = lm.stdout.readline().split()
        assert ready[:1] == ["READY"], f"the fake LM did not start in its namespace: {ready}"
        self.lm_url = ready[1]

    def checkout(self, name: str, source: Path) -> Path:
        """A copy of the controller's project (goldens included, reports not): a worker host's own files."""
        dest = self.root / name
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(source, dest, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache", "out"))
        return dest

    def host_env(self, host: str) -> dict[str, str]:
        """The environment of a process on ``host``: its own temporary directory, as on another machine."""
        tmp = self.root / f"tmp-{host}"
        tmp.mkdir(exist_ok=True)
        return {**self.env, "TMPDIR": str(tmp)}

    def start_worker(self, host: str) -> subprocess.Popen[str]:
        # a fresh server per run: a socket server's process keeps the modules a run imported
        proc = self.lab.popen(
            host,
            [sys.executable, "-u", socketserver_script(), f"{self.lab.addr(host)}:{self.PORT}"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=self.host_env(host),
        )  # fmt: skip
        assert proc.stdout is not None
        for line in proc.stdout:
            if "Entering Accept loop" in line:
                return proc
        raise AssertionError(f"execnet's socket server did not start on {host}")

    def pytest(self, host: str, cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--dspex-model=fake-model",
                f"--dspex-base-url={self.lm_url}", "--dspex-cache=off", "--dspex-retries=0", "-rA", *args]  # fmt: skip
        return self.lab.run(host, argv, timeout=timeout, cwd=cwd, env=self.host_env(host))

    def remote_run(self, project: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Path]]:
        """``pytest -d --tx socket=...`` from the controller host, one worker on each worker host."""
        checkouts = {host: self.checkout(f"checkout-{host}", project) for host in ("w1", "w2")}
        servers = [self.start_worker(host) for host in checkouts]
        tx: list[str] = []
        for i, (host, path) in enumerate(checkouts.items()):
            tx += ["--tx", f"socket={self.lab.addr(host)}:{self.PORT}//id=gw{i}//chdir={path}"]
        try:
            result = self.pytest("controller", project, "-d", "-v", *tx, *args)
        finally:
            for s in servers:
                self.lab.stop(s)
        return result, checkouts


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    need("network namespaces (remote-worker tests)", netns_unavailable(), "Linux, root, iproute2")
    pytest.importorskip("execnet")
    lab = Lab(["controller", "w1", "w2", "lm"]).start()
    try:
        yield Cluster(lab, tmp_path_factory.mktemp("remote"))
    finally:
        lab.close()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    make_project(root)
    return root


def output(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n--- stdout ---\n{result.stdout[-6000:]}\n--- stderr ---\n{result.stderr[-3000:]}"


def report_programs(path: Path) -> dict[str, dict[str, Any]]:
    data = json.loads(path.read_text())
    return {p["program"]: p for p in data["programs"]}


def test_the_lab_is_a_network(cluster: Cluster) -> None:
    """The worker hosts reach the LM host over the bridge; nothing listens on their loopback."""
    probe = (
        "import httpx, sys; r = httpx.post(sys.argv[1] + '/chat/completions', "
        "json={'model': 'fake-model', 'messages': [{'role': 'user', 'content': 'Message: case 3: refund'}]}); "
        "print(r.json()['choices'][0]['message']['content'].strip())"
    )
    got = cluster.lab.run("w1", [sys.executable, "-c", probe, cluster.lm_url], timeout=60, env=cluster.env)
    assert got.returncode == 0 and got.stdout.strip() == "billing", output(got)
    local = cluster.lab.run(
        "w1", [sys.executable, "-c", probe, "http://127.0.0.1:8900/v1"], timeout=60, env=cluster.env
    )
    assert local.returncode != 0  # the LM is on another host, not on the worker's loopback


def compile_golden(cluster: Cluster, project: Path) -> None:
    """The goldens, compiled on the controller host without xdist (one writer, the controller)."""
    result = cluster.pytest("controller", project, "-p", "no:xdist", "--dspex-compile")
    assert result.returncode == 0, output(result)
    assert (project / "__dspex__/test_triage/triage.json").exists()


def test_per_example_records_reach_the_controller_which_gates(cluster: Cluster, project: Path) -> None:
    compile_golden(cluster, project)
    # concurrency 1: chunks of 4 examples, so both workers get some of the 12
    result, checkouts = cluster.remote_run(project, "-k", "each", "-v", "--dspex-concurrency=1", "--dspex-report=out/report.json")
    assert result.returncode == 0, output(result)
    assert "[gw0]" in result.stdout and "[gw1]" in result.stdout, output(result)  # both remote workers took part
    # the report is the controller's, with every example from both workers
    programs = report_programs(project / "out/report.json")
    row = programs["triage_each"]
    assert row["n"] == N_EXAMPLES, row
    assert abs(row["score"] - 1 / PASS_EVERY) < 1e-9
    verdict = row.get("verdict")
    assert (verdict["passed"] if isinstance(verdict, dict) else row["passed"]) is True
    for path in checkouts.values():
        assert not (path / "out").exists()
    assert "CANARY" not in result.stdout + result.stderr + (project / "out/report.json").read_text()


def test_per_example_remote_verdict_equals_n2_on_one_host(cluster: Cluster, project: Path) -> None:
    compile_golden(cluster, project)
    remote, _ = cluster.remote_run(project, "-k", "each", "--dspex-report=out/remote.json")
    local = cluster.pytest("controller", project, "-n", "2", "-k", "each", "--dspex-report=out/local.json")
    assert remote.returncode == local.returncode == 0, output(remote) + output(local)
    fields = ("score", "n", "ci95", "errors", "passed", "verdict", "comparison")
    a = report_programs(project / "out/remote.json")["triage_each"]
    b = report_programs(project / "out/local.json")["triage_each"]
    assert {k: a.get(k) for k in fields} == {k: b.get(k) for k in fields}


def test_dataset_mode_on_a_remote_worker_reports_to_the_controller(cluster: Cluster, project: Path) -> None:
    compile_golden(cluster, project)
    result, checkouts = cluster.remote_run(project, "-k", "not each", "--dspex-report=out/report.json")
    assert result.returncode == 0, output(result)
    row = report_programs(project / "out/report.json")["triage"]
    assert row["n"] == N_EXAMPLES and abs(row["score"] - 1 / PASS_EVERY) < 1e-9
    for path in checkouts.values():
        assert not (path / "out").exists()


def test_a_failing_gate_fails_the_remote_run(cluster: Cluster, project: Path) -> None:
    compile_golden(cluster, project)
    (project / "test_triage.py").write_text(TEST_FILE.replace(f"threshold={THRESHOLD}", "threshold=0.9"))
    result, _ = cluster.remote_run(project, "--dspex-report=out/report.json")
    assert result.returncode == 1, output(result)
    programs = report_programs(project / "out/report.json")
    assert programs["triage_each"]["n"] == N_EXAMPLES


def test_compile_with_remote_workers_writes_the_golden_on_the_controller(cluster: Cluster, project: Path) -> None:
    result, checkouts = cluster.remote_run(project, "--dspex-compile")
    assert result.returncode == 0, output(result)
    golden = project / "__dspex__/test_triage/triage.json"
    assert golden.exists(), "the controller's rootdir has no golden file:\n" + output(result)
    for host, path in checkouts.items():
        written = sorted(str(p.relative_to(path)) for p in path.rglob("__dspex__/**/*.json"))
        assert written == [], f"a worker wrote golden files into its own checkout on {host}: {written}"
    assert "CANARY" not in golden.read_text()
    # the controller wrote both programs' goldens and says so (a second compile of the same program on
    # the other host, if any, is refused by name: the first golden stays)
    for name in ("triage", "triage_each"):
        assert f"golden created: __dspex__/test_triage/{name}.json" in result.stdout, output(result)
        assert (project / f"__dspex__/test_triage/{name}.json").exists()
    refused = [line for line in result.stdout.splitlines() if "compiled again by another worker" in line]
    assert all("this second golden was not written, the first stays" in line for line in refused)
