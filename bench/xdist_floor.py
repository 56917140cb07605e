"""What pytest-xdist itself costs on this machine: 1,000 tests that do nothing, one process vs ``-n 4`` / ``-n 8``.

    python bench/xdist_floor.py [--rounds 3] [--n 1000]

No pytest-dspex (``-p no:dspex``), no LM: the wall and CPU of pytest and xdist alone (interpreters,
imports, collection in every worker, the test protocol and reports), byte-code cached as on a user's
machine (a private ``PYTHONPYCACHEPREFIX`` filled by an untimed run first). The ``run_limits`` section
(issue 21) compares ``-n 8`` with one process; this is the part of that ratio no plugin can remove.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TEST = """import pytest
@pytest.mark.parametrize("i", range({n}))
def test_nothing(i):
    pass
"""


def run(folder: Path, args: list[str], env: dict[str, str]) -> dict[str, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:dspex", "-p", "no:cacheprovider", *args, "test_nothing.py"],
                   cwd=folder, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--n", type=int, default=1000)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "test_nothing.py").write_text(TEST.format(n=args.n))
        (folder / "pytest.ini").write_text("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = str(folder / "pycache")
        run(folder, ["-n", "2"], env)  # fills the byte-code cache
        for _ in range(args.rounds):
            one = run(folder, ["-p", "no:xdist"], env)
            for workers in (4, 8):
                many = run(folder, ["-n", str(workers)], env)
                print(json.dumps({"tests": args.n, "workers": workers, "one_process": one, "xdist": many,
                                  "ratio": round(many["wall_s"] / one["wall_s"], 2),
                                  "extra_wall_s": round(many["wall_s"] - one["wall_s"], 2)}), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
