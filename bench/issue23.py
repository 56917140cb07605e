"""Issue 23's reproductions, counted (lines of output, outcomes, parsed values): no timings.

    python bench/issue23.py                 # the checkout this file is in
    python bench/issue23.py /path/to/tree   # another checkout (e.g. an older commit, for "before")

Each scenario writes a small project under a temporary folder, runs pytest on it against the
loopback fake server (``pytest_dspex.testing.fake_server``) and prints what a user meets: how many lines the
failure output takes, whether the orphaned golden is named, whether tracebacks chain, how typed
answers parse, and the small things (BOM CSV, ``LM(cache="off")``, ``.gitignore`` in the cache).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

TREE = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent)
sys.path.insert(0, str(TREE))

from pytest_dspex.testing.fake_server import FakeLMServer, triage_responder  # noqa: E402

PY = sys.executable
ENV = dict(os.environ, PYTHONPATH=str(TREE), OPENAI_API_KEY="sk-bench")
SRC = '''
import pytest
import pytest_dspex as dspex

class Triage(dspex.Signature):
    """Route a customer message to the team that should handle it."""
    message: str = dspex.InputField()
    team: str = dspex.OutputField()EXTRA

triage = dspex.Predict(Triage)

def team_matches(example, prediction, trace=None):
    return example.team == prediction.team

@pytest.mark.dspex_program(triage, name="NAME", trainset="DATA/train.jsonl")
@pytest.mark.dspex_metric(team_matches, threshold=0.8)
@pytest.mark.dspex_dataset("DATA/dev.jsonl")
def test_each(dspex_example, dspex_predict):
    assert dspex_predict(dspex_example).team
'''


def rows(n: int, off: int = 0) -> str:
    return "\n".join(
        json.dumps({"id": f"dev-{i:04d}", "message": f"I was charged twice, case {i}" if i % 2 else f"the app crashes, case {i}",
                    "team": "billing" if i % 2 else "technical"})
        for i in range(off, off + n)
    ) + "\n"


def failure_lines(out: str) -> int:
    """Lines from the FAILURES/ERRORS header to the end (what a developer scrolls through)."""
    lines = out.splitlines()
    start = next((i for i, ln in enumerate(lines) if "= FAILURES =" in ln or "= ERRORS =" in ln), len(lines))
    return len(lines) - start


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="issue23-"))
    (root / "tests/data").mkdir(parents=True)
    (root / "tests/data/dev.jsonl").write_text(rows(200))
    (root / "tests/data/train.jsonl").write_text(rows(20, 1000))
    (root / "pytest.ini").write_text("[pytest]\n")

    def write(name: str = "triage", where: str = "tests/test_triage.py", extra: str = "", data: str = "data") -> None:
        path = root / where
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(SRC.replace("NAME", name).replace("EXTRA", extra).replace("DATA", data))

    with FakeLMServer(triage_responder) as srv:

        def run(*args: str) -> tuple[int, str]:
            cmd = [PY, "-m", "pytest", "--dspex-model=fake-model", "--dspex-cache=off", f"--dspex-base-url={srv.base_url}",
                   "-p", "no:cacheprovider", *args]  # fmt: skip
            p = subprocess.run(cmd, cwd=root, env=ENV, capture_output=True, text=True)
            return p.returncode, p.stdout + p.stderr

        write()
        rc, out = run("-p", "no:xdist", "--dspex-compile")
        assert rc == 0, out
        print("## one failure per cause (200-example per-example test)")
        for label, kwargs in [("program renamed", {"name": "triage_v2"}), ("test file moved", {"where": "tests/unit/test_triage.py", "data": "../data"})]:
            if "where" in kwargs:
                (root / "tests/test_triage.py").unlink()  # moved, not copied
            write(**kwargs)
            for mode in (("-p", "no:xdist"), ("-n", "2")):
                rc, out = run(*mode)
                print(f"{label} {' '.join(mode)}: exit {rc}, {len(out.splitlines())} lines in all, "
                      f"{failure_lines(out)} of failure output, orphaned golden named: {'triage.json' in out and 'orphan' in out}, "
                      f"'no golden file' said {out.count('no golden file for program')}x")  # fmt: skip
            if "where" in kwargs:
                (root / kwargs["where"]).unlink()
                write()
        write(extra="\n    urgency: str = dspex.OutputField()")
        for mode in (("-p", "no:xdist"), ("-n", "2")):
            rc, out = run(*mode)
            print(f"stale golden {' '.join(mode)}: exit {rc}, {len(out.splitlines())} lines, {failure_lines(out)} of failure output, "
                  f"chained tracebacks {out.count('During handling')}, absolute path shown {out.count(str(root) + '/tests/__dspex__')}x")  # fmt: skip
        write()
        (root / "tests/data/dev.jsonl").write_text(rows(3) + "{not json\n")
        for mode in (("-p", "no:xdist"), ("-n", "2")):
            rc, out = run(*mode)
            print(f"bad dataset row {' '.join(mode)}: exit {rc}, the error said {out.count('not valid JSON')}x "
                  f"(summary lines included), chained {out.count('During handling')}")  # fmt: skip

        print("\n## reports (one program in both modes, dev set grown 200 -> 210 since compiling, 1 in 7 answers wrong)")
        both = SRC.replace("NAME", "triage").replace("EXTRA", "").replace("DATA", "data") + '''
@pytest.mark.dspex_program(triage, name="triage", trainset="../tests/data/train.jsonl")
@pytest.mark.dspex_metric(team_matches, threshold=0.9)
def test_whole(dspex_evaluate):
    dspex_evaluate("../tests/data/dev.jsonl")
'''
        (root / "tests/data/dev.jsonl").write_text(rows(200))
        (root / "tests/test_triage.py").write_text(both.replace("../tests/data", "data"))
        rc, out = run("-p", "no:xdist", "--dspex-compile", "--dspex-force")
        print(f"compile: 'vs golden' lines against the golden it just wrote: {out.count('vs golden')}")
        (root / "tests/data/dev.jsonl").write_text(rows(210))
        (root / "tests/sub").mkdir(exist_ok=True)

    def wrong(body: dict) -> str:
        import re

        answer = triage_responder(body)
        m = re.findall(r"case (\d+)", str(body["messages"][-1]["content"]))
        return " other" if m and int(m[-1]) % 7 == 0 else answer

    with FakeLMServer(wrong) as srv2:
        cmd = [PY, "-m", "pytest", "--dspex-model=fake-model", "--dspex-cache=off", f"--dspex-base-url={srv2.base_url}",
               "-p", "no:cacheprovider", "-p", "no:xdist", "--dspex-markdown=r.md", "--dspex-html=r.html"]  # fmt: skip
        p = subprocess.run(cmd, cwd=root, env=ENV, capture_output=True, text=True)
        out = p.stdout
        table = out.split("= dspex =", 1)[1].splitlines()[1:5]
        print(f"terminal table width: {max(len(t) for t in table)} columns")
        for t in table[2:4]:
            print("  ", t)
        md = (root / "r.md").read_text()
        print("markdown headline:", md.splitlines()[0])
        html = (root / "r.html").read_text()
        print("HTML shows the code 'FAIL: below_threshold':", "FAIL: below_threshold" in html,
              "| words 'below threshold (':", "below threshold (" in html)  # fmt: skip
        print("markdown shows 'expected id:':", "expected id:" in md or "id: dev-" in md)

    print("\n## strict typed parsing (compact adapter, an int field)")
    import pytest_dspex as dspex
    from pytest_dspex.programs.adapters import CompactAdapter

    sig = dspex.make_signature("m -> n: int")
    for text in ["result2-039a296fde", "98.7", "0x1A", "version 3 of 5", "1e400", "42", "1,234"]:
        try:
            got = repr(CompactAdapter().parse(sig, f"N: {text}")["n"])
        except Exception as exc:
            got = f"{type(exc).__name__}"
        print(f"  {text!r:24} -> {got}")

    print("\n## small things")
    csv = root / "bom.csv"
    csv.write_bytes("\ufeffid,message,team\nq-1,hello,billing\n".encode())
    from pytest_dspex.evaluation.datasets import example_key

    print("  BOM CSV key:", example_key(dspex.load_dataset(csv, input_keys=["message"])[0]))
    try:
        lm = dspex.LM("m", base_url="http://127.0.0.1:9/v1", api_key="k", cache="off")
        print("  LM(cache='off'): its cache is a", type(lm.cache).__name__, "(a str fails every call: no attribute 'reads')")
    except Exception as exc:
        print("  LM(cache='off'):", type(exc).__name__, exc)
    cache = root / "cache"
    dspex.ResponseCache(cache).close()
    print("  .gitignore in a new cache folder:", (cache / ".gitignore").exists())


if __name__ == "__main__":
    main()
