"""An xdist worker's start-up counted in instructions (valgrind), by phase: the same on a loaded machine.

CPU seconds on the shared 2-core machine move by ±15% from run to run (load 6-12); the instructions a
worker executes do not (±0.3%). One worker (``--tx popen//python=<valgrind wrapper>``, the same work
before its first test as each of ``-n 8``'s: every worker collects everything) of ``cases_limits``'s
per-example run over 1,000 examples, stopped (``os._exit``) at a phase's mark, once per mark:

* ``sessionstart``: interpreter, execnet, pytest, the plugins, ``pytest_configure``
* ``collected``: + collection (the test module's import, 1,000 per-example items, ``note_selection``)
* ``logstart``: + the warm-up (``plugin/warmup.py``'s imports) and xdist's first task
* ``call``: + the first item's setup (fixtures)

``--floor``: the same with a plain test parametrized 1,000 times (pytest's and xdist's own share).
Instruction counts weigh kinds of code differently from CPU time (OpenSSL's certificate parsing in
aiohttp's import is many cheap instructions; the garbage collector's pointer chasing few costly
ones): use them to compare a change, CPU seconds for shares. Needs valgrind (``apt-get install valgrind``).

    python bench/cases_worker_ir.py [--floor]
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import cases_limits as cl  # noqa: E402

MARKS = ("sessionstart", "collected", "logstart", "call")

EXIT_AT = '''
def _exit_at(where):
    if os.environ.get("DSPEX_BENCH_EXIT_AT") == where and os.environ.get("PYTEST_XDIST_WORKER"):
        os._exit(0)

def pytest_sessionstart(session):
    _exit_at("sessionstart")

def pytest_collection_finish(session):
    _exit_at("collected")

def pytest_runtest_logstart(nodeid, location):
    _exit_at("logstart")

def pytest_runtest_call(item):
    _exit_at("call")
'''

FLOOR_TEST = "import pytest\n\n@pytest.mark.parametrize('i', range(1000))\ndef test_each(i):\n    pass\n"


def measure(floor: bool = False) -> dict[str, int]:
    """Instructions of one worker up to each mark (cumulative)."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise SystemExit("valgrind is not installed")
    out = Path(tempfile.mkdtemp(prefix="dspex-bench-ir-"))
    wrapper = out / "python"
    wrapper.write_text(f'#!/bin/sh\nexec {valgrind} --tool=cachegrind --cache-sim=no -q --cachegrind-out-file={out}/cg.%p {sys.executable} "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    cl.warm()
    folder = cl.project(1000)
    if floor:
        (folder / "test_limits.py").write_text(FLOOR_TEST)
    (folder / "conftest.py").write_text((folder / "conftest.py").read_text() + EXIT_AT)
    found: dict[str, int] = {}
    try:
        for mark in MARKS:
            for f in out.glob("cg.*"):
                f.unlink()
            os.environ["DSPEX_BENCH_EXIT_AT"] = mark
            cl.run(folder, "--tx", f"popen//python={wrapper}", "--dist", "load", "--max-worker-restart=0")
            for f in out.glob("cg.*"):
                text = f.read_text()
                if re.search(r"^cmd:.* -c ", text, re.M):  # the worker (execnet's bootstrap), not the controller
                    found[mark] = int(re.search(r"^summary:\s+(\d+)", text, re.M).group(1))  # type: ignore[union-attr]
    finally:
        os.environ.pop("DSPEX_BENCH_EXIT_AT", None)
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(folder, ignore_errors=True)
    return found


if __name__ == "__main__":
    m = measure(floor="--floor" in sys.argv)
    last = 0
    for mark in MARKS:
        if mark in m:
            print(f"{mark:13s} {m[mark] / 1e9:.3f} G instructions (+{(m[mark] - last) / 1e9:.3f} G)")
            last = m[mark]
