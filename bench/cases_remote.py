"""Remote xdist workers over network namespaces (issue 14): ``sudo python bench/cases_remote.py [--n 60]``.

Builds the lab of tests/test_remote_workers.py (controller, two worker hosts and the LM endpoint,
each a network namespace, joined by a bridge), compiles the goldens on the controller, then runs the
per-example test over the two remote workers (``-d --tx socket=...``) and with ``-n 2`` on the
controller host alone, and compares the verdict fields of the two JSON reports. Needs root.
Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

FIELDS = ("score", "n", "ci95", "errors", "errors_by_kind", "verdict", "comparison", "passed", "reason")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=60)
    args = parser.parse_args()

    import tests.test_remote_workers as remote
    from tests.netns import Lab, netns_unavailable

    why = netns_unavailable()
    if why is not None:
        sys.exit(f"cannot build the namespaces: {why}")
    remote.N_EXAMPLES = args.n
    test_file = remote.TEST_FILE.replace(f"result.n == {12}", f"result.n == {args.n}")
    work = Path(tempfile.mkdtemp(prefix="dspex-remote-"))
    lab = Lab(["controller", "w1", "w2", "lm"]).start()
    try:
        cluster = remote.Cluster(lab, work)
        project = work / "project"
        (project / "data").mkdir(parents=True)
        (project / "data/dev.jsonl").write_text(remote.rows(args.n))
        (project / "data/train.jsonl").write_text(remote.rows(9, 300))
        (project / "test_triage.py").write_text(test_file)
        (project / "pytest.ini").write_text("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
        compiled = cluster.pytest("controller", project, "-p", "no:xdist", "--dspex-compile")
        assert compiled.returncode == 0, remote.output(compiled)
        t0 = time.perf_counter()
        far, _ = cluster.remote_run(project, "-k", "each", "--dspex-report=out/remote.json")
        remote_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        near = cluster.pytest("controller", project, "-n", "2", "-k", "each", "--dspex-report=out/local.json")
        local_s = time.perf_counter() - t0
        a = remote.report_programs(project / "out/remote.json")["triage_each"]
        b = remote.report_programs(project / "out/local.json")["triage_each"]
        differing = [f for f in FIELDS if a.get(f) != b.get(f)]
        print(
            json.dumps(
                {
                    "examples": args.n,
                    "remote_exit": far.returncode,
                    "local_n2_exit": near.returncode,
                    "remote_score": a["score"],
                    "remote_n": a["n"],
                    "remote_verdict": a.get("verdict") or {"passed": a.get("passed"), "reason": a.get("reason")},
                    "verdict_fields_identical": not differing,
                    "differing_fields": differing,
                    "remote_wall_s": round(remote_s, 2),
                    "local_n2_wall_s": round(local_s, 2),
                },
                indent=2,
            )
        )
    finally:
        lab.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
