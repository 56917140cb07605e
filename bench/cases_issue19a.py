"""Issue 19, part A: the reproductions, one line each — run against any checkout of pytest_dspex.

    python bench/cases_issue19a.py                       # this checkout
    python bench/cases_issue19a.py --code /tmp/old       # another one (e.g. `git archive e24c450 | tar -x -C /tmp/old`)

A loopback endpoint answers every even-numbered case right and every odd one wrong (score 0.5 on
40 examples); each case writes a small project, runs pytest in a subprocess with ``PYTHONPATH`` set
to the checkout and reports what a user would see: the exit code, the gate, the JSON report's
``passed``, the summary line. Counts and outcomes, not timings.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent))

TEST = '''
import os
import pytest
import pytest_dspex as dspex

class Triage(dspex.Signature):
    """Route a customer message."""
    message: str = dspex.InputField()
    team: str = dspex.OutputField()

triage = dspex.Predict(Triage)

def team_matches(example, prediction, trace=None):
    return example.team == prediction.team

@pytest.mark.dspex_program(triage, name="triage", trainset="data/dev.jsonl")
@pytest.mark.dspex_metric(team_matches, threshold=THRESHOLD)
@pytest.mark.dspex_dataset("data/dev.jsonl")
def test_solve_each(dspex_example, dspex_predict):
    dspex_predict(dspex_example)
    EXTRA

def test_other():
    pass
'''


def project(root: Path, threshold: float = 0.4, extra: str = "pass", surrogate: bool = False) -> None:
    (root / "data").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(40):
        msg = f"I was charged twice, case {i}" if i % 2 else f"the app crashes, case {i}"
        rows.append(json.dumps({"id": f"dev-{i:04d}", "message": msg, "team": "billing" if i % 2 else "technical"}))
    if surrogate:
        rows.append('{"id": "dev-odd", "message": "the app crashes \\ud800, case 40", "team": "technical"}')
    (root / "data/dev.jsonl").write_text("\n".join(rows) + "\n")
    (root / "pytest.ini").write_text("[pytest]\nasyncio_default_fixture_loop_scope = function\ndspex_missing_golden = zero-shot\n")
    (root / "test_t.py").write_text(TEST.replace("THRESHOLD", str(threshold)).replace("EXTRA", extra))


def pytest(code: Path, root: Path, url: str, *args: str, env: dict[str, str] | None = None, timeout: float = 300) -> tuple[int, str]:
    base = [f"--dspex-base-url={url}", "--dspex-model=fake-model", "--dspex-retries=0"]
    e = dict(os.environ, PYTHONPATH=str(code), **(env or {}))
    p = subprocess.run([sys.executable, "-m", "pytest", *base, *args], cwd=root, env=e, capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout + p.stderr


def summary(out: str) -> str:
    lines = [ln for ln in out.splitlines() if ln.strip()]
    return lines[-1].strip("= ") if lines else ""


def gate(out: str) -> str:
    for ln in out.splitlines():
        if ln.startswith("triage ") and ("per-example" in ln or "dataset" in ln):
            return ln.split("$", 1)[-1].split(None, 1)[-1].strip()
    return "-"


def passed(path: Path) -> str:
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError):
        return "no report"
    kinds = [p["verdict"].get("kind") for p in d.get("programs", [])]
    return f"passed={d.get('passed')} programs={len(d.get('programs', []))} kinds={kinds}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--code", default=str(HERE.parent), help="the checkout whose pytest_dspex runs")
    code = Path(ap.parse_args().code).resolve()
    from pytest_dspex.testing.fake_server import FakeLMServer, triage_responder

    server = FakeLMServer(lambda b: triage_responder(b, pass_every=2)).start()
    url = server.base_url
    nocache = ["--dspex-cache=off", "-p", "no:cacheprovider"]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            t = Path(tmp)

            def case(name: str, **kw: object) -> Path:
                root = t / name
                project(root, **kw)  # type: ignore[arg-type]
                return root

            r = case("x", extra="assert dspex_example.id != 'dev-0003'")
            rc, out = pytest(code, r, url, "-p", "no:xdist", "-x", "--dspex-report=r.json", *nocache)
            print(f"-x after 4 of 40 | exit {rc} | gate {gate(out)} | {passed(r / 'r.json')}")

            r = case("crash", extra="if dspex_example.id == 'dev-0005':\n        os._exit(1)")
            rc, out = pytest(code, r, url, "-n", "2", "--dspex-report=r.json", *nocache)
            print(f"crashed worker (-n 2) | exit {rc} | gate {gate(out)} | {passed(r / 'r.json')}")

            r = case("intr", extra="if dspex_example.id == 'dev-0000':\n        raise KeyboardInterrupt")
            (r / "r.json").write_text('{"passed": false, "programs": [], "previous": true}\n')
            (r / "test_0.py").write_text("def test_0():\n    raise KeyboardInterrupt\n")
            rc, out = pytest(code, r, url, "-p", "no:xdist", "--dspex-report=r.json", "test_0.py", *nocache)
            kept = "previous" in (r / "r.json").read_text()
            print(f"interrupted, nothing evaluated | exit {rc} | existing report kept: {kept}")
            (r / "empty.json").write_text('{"passed": true, "programs": []}\n')
            rc, out = subprocess.run([sys.executable, "-m", "pytest_dspex", "combine", "empty.json"], cwd=r,
                                     env=dict(os.environ, PYTHONPATH=str(code)), capture_output=True, text=True).returncode, ""  # fmt: skip
            print(f"combine of an empty report | exit {rc}")

            r = case("k", threshold=0.7)
            rc, out = pytest(code, r, url, "-n", "2", "-k", "dev-0012 or dev-0013 or dev-0014", "--dspex-report=r.json", *nocache)
            print(f"-k 3 of 40 (threshold 0.7) | exit {rc} | gate {gate(out)} | {summary(out)} | {passed(r / 'r.json')}")

            r = case("agg", threshold=0.7)
            rc, out = pytest(code, r, url, "-n", "2", "--junitxml=j.xml", "--dspex-cache=off")
            junit = (r / "j.xml").read_text()
            failures = junit.split('failures="', 1)[1].split('"', 1)[0]
            lf = r / ".pytest_cache/v/cache/lastfailed"
            entries = len(json.loads(lf.read_text())) if lf.exists() else 0
            _, out2 = pytest(code, r, url, "-n", "2", "--lf", "--dspex-cache=off")
            print(f"failing aggregate | exit {rc} | {summary(out)} | JUnit failures={failures} | lastfailed entries={entries} | --lf: {summary(out2)}")

            r = case("ci", threshold=0.7)
            rc, out = pytest(code, r, url, "-n", "2", *nocache, env={"CI_NODE_INDEX": "1", "CI_NODE_TOTAL": "2"})
            print(f"CI_NODE_INDEX=1 CI_NODE_TOTAL=2, failing gate | exit {rc} | gate {gate(out)} | {summary(out)}")

            r = case("cost")
            rc, out = pytest(code, r, url, "-p", "no:xdist", "--dspex-max-cost=0.001", *nocache)
            print(f"--dspex-max-cost without a price | exit {rc} | {summary(out)[:110]}")

            r = case("cached")
            pytest(code, r, url, "-n", "2", "-p", "no:cacheprovider")
            rc, out = pytest(code, r, url, "-n", "2", "-p", "no:cacheprovider")
            said = any("every answer came from the LM cache" in ln for ln in out.splitlines())
            print(f"every answer from the cache | exit {rc} | said so: {said}")

            for label, args, env in (
                ("lone surrogate, --dspex-report/--dspex-html", ["--dspex-report=r.json", "--dspex-html=r.html"], {}),
                ("report path under a file", ["--dspex-report=afile/r.json"], {}),
                ("unwritable folder (/proc)", ["--dspex-html=/proc/dspex/r.html"], {}),
                ("GITHUB_STEP_SUMMARY in a missing folder", [], {"GITHUB_STEP_SUMMARY": str(t / "missing" / "s.md")}),
            ):
                r = case("w" + hashlib.sha256(label.encode()).hexdigest()[:6], surrogate=True)
                (r / "afile").write_text("")
                rc, out = pytest(code, r, url, "-n", "2", *args, *nocache, env=env)
                crash = "INTERNALERROR" in out or "Traceback" in out.split("= dspex =")[-1]
                line = next((ln for ln in out.splitlines() if "report not written" in ln), "")
                print(f"{label} | exit {rc} | crashed: {crash} | table shown: {'= dspex =' in out} | {line[:100]}")

            r = case("locks")
            shared = t / "shared-tmp"
            (shared / "pytest-dspex-locks").mkdir(parents=True)
            victim = t / "victim.txt"
            victim.write_text("precious")
            golden = (r / "__dspex__/test_t/triage.json").resolve()
            digest = hashlib.sha256(str(golden).encode()).hexdigest()[:24]
            (shared / "pytest-dspex-locks" / f"{digest}.compiled").symlink_to(victim)
            rc, out = pytest(code, r, url, "-p", "no:xdist", "--dspex-compile", "--dspex-candidates=0", "--dspex-cache=off",
                             env={"TMPDIR": str(shared)})  # fmt: skip
            print(f"planted symlink in <tmp>/pytest-dspex-locks | compile exit {rc} | victim file: {victim.read_text()[:40]!r}")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
