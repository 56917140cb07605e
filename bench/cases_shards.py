"""Sharded runs combine into the unsharded verdict (issue 14): ``python bench/cases_shards.py [--shards 3 --per-shard 1000]``.

On a loopback fake LM (``pass_every=3``: about a third of the answers are right... and a golden whose
per-example outcomes differ on a few examples), evaluates a dataset of ``shards × per_shard``
examples once unsharded and once per shard (each shard evaluates only the examples its key
assigns to it, ``pytest_dspex.evaluation.sharding``), writes one JSON report per run, then times
``python -m pytest_dspex combine``'s core (read + merge + judge) on the shard reports and checks
that every verdict field equals the unsharded run's.

The reports are written from ``EvaluationResult`` records in the team contract's report shape (the
plugin's ``--dspex-shard``/``--dspex-report`` wiring produces the same when it lands). Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
ROOT = HERE.parent
VERDICT_FIELDS = ("score", "n", "ci95", "errors", "errors_by_kind", "infra_errors", "verdict", "comparison")


def _dev(n: int) -> list[Any]:
    import pytest_dspex as dspex

    return [
        dspex.Example(id=f"ex-{i}", message=f"case {i}: " + ("I was charged twice" if i % 2 else "the app crashes"),
                      team="billing" if i % 2 else "technical").with_inputs("message")
        for i in range(n)
    ]  # fmt: skip


def _metric(example: Any, prediction: Any, trace: Any = None) -> bool:
    return bool(example.team == prediction.team)


def _entry(result: Any, golden: str, golden_score: float, dataset_size: int) -> dict[str, Any]:
    row = result.to_dict(records=True)
    row.update(
        {
            "program": "triage",
            "mode": "dataset",
            "dataset": "tests/data/triage.jsonl",
            "test": "tests/test_triage.py::test_triage",
            "threshold": 0.2,
            "tolerance": 0.05,
            "golden": golden,
            "golden_score": golden_score,
            "dataset_size": dataset_size,
            "flaky": [],
        }
    )
    return row


def _report(entry: dict[str, Any], shard: Any) -> dict[str, Any]:
    return {
        "plugin_version": "0.1.0",
        "created": "2026-01-01T00:00:00+00:00",
        "rootdir": ".",
        "git_commit": None,
        "model": {"model": "fake", "base_url": "http://127.0.0.1/v1"},
        "passed": True,
        "shard": None if shard is None else shard.to_json(),
        "programs": [entry],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shards", type=int, default=3)
    parser.add_argument("--per-shard", type=int, default=1000)
    args = parser.parse_args()

    import pytest_dspex as dspex
    from pytest_dspex.evaluation.sharding import Shard
    from pytest_dspex.reports.combine import combine, combine_files

    n = args.shards * args.per_shard
    server = subprocess.Popen(
        [sys.executable, "-m", "pytest_dspex.testing.fake_server", "--pass-every", "3"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    work = Path(tempfile.mkdtemp(prefix="dspex-shards-"))
    try:
        assert server.stdout is not None
        ready = server.stdout.readline().split()
        assert ready and ready[0] == "READY", ready
        lm = dspex.LM("fake", base_url=ready[1], api_key="bench", cache=None, concurrency=64, retries=0)
        dev = _dev(n)
        program = dspex.Predict("message -> team", lm=lm)
        t0 = time.perf_counter()
        whole = dspex.Evaluate(dev, _metric, concurrency=64, program_name="triage")(program)
        eval_s = time.perf_counter() - t0
        # a golden whose outcomes match this run except on 2% of the examples (either way)
        rng = random.Random(0)
        outcomes = {r.key: (1.0 - r.score if rng.random() < 0.02 else r.score) for r in whole.records}
        golden = "tests/__dspex__/test_triage/triage.json"
        (work / golden).parent.mkdir(parents=True)
        golden_score = sum(outcomes.values()) / len(outcomes)
        (work / golden).write_text(
            json.dumps(
                {
                    "schema_version": 2,
                    "program": "triage",
                    "predictors": {},
                    "scores": {"validation": {"score": golden_score, "n": n, "examples": outcomes}},
                }
            )
        )
        (work / "whole.json").write_text(json.dumps(_report(_entry(whole, golden, golden_score, n), None)))

        keys = [dspex.example_key(e) for e in dev]
        paths, sizes = [], []
        for k in range(1, args.shards + 1):
            shard = Shard(k, args.shards)
            mine = [dev[i] for i in shard.select(keys)]
            res = dspex.Evaluate(mine, _metric, concurrency=64, program_name="triage")(program)
            # a shard evaluates a subset; its records keep their positions in the whole dataset
            for rec, i in zip(res.records, shard.select(keys), strict=True):
                rec.index = i
            sizes.append(res.n)
            p = work / f"shard-{k}.json"
            p.write_text(json.dumps(_report(_entry(res, golden, golden_score, n), shard)))
            paths.append(str(p))
        lm.close()

        reference = combine([json.loads((work / "whole.json").read_text())], rootdir=work)["programs"][0]
        timings = []
        for _ in range(5):
            t0 = time.perf_counter()
            merged = combine_files(paths, rootdir=work)
            timings.append(time.perf_counter() - t0)
        row = merged["programs"][0]
        differing = [f for f in VERDICT_FIELDS if row[f] != reference[f]]
        cli = subprocess.run(
            [sys.executable, "-m", "pytest_dspex", "combine", *paths, "--rootdir", str(work)],
            capture_output=True,
            text=True,
        )
        print(
            json.dumps(
                {
                    "examples": n,
                    "shard_sizes": sizes,
                    "unsharded_eval_s": round(eval_s, 3),
                    "score": row["score"],
                    "ci95": row["ci95"],
                    "comparison": {k: row["comparison"][k] for k in ("verdict", "delta", "p_value", "shared")},
                    "verdict": row["verdict"]["kind"],
                    "verdict_fields_identical": not differing,
                    "differing_fields": differing,
                    "combine_s_median": round(sorted(timings)[len(timings) // 2], 4),
                    "combine_s_max": round(max(timings), 4),
                    "cli_exit_code": cli.returncode,
                },
                indent=2,
            )
        )
    finally:
        server.terminate()
        server.wait(10)
        import shutil

        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
