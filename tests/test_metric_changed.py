"""An edited metric is said to be the metric's change, not read as the program regressing (trial F11).

Before: making the metric stricter, every answer the same as the baseline's (from the LM cache), gave
"regression against the golden: 6 of 18 shared examples went pass -> fail", and nothing said the
metric had changed (the golden recorded its name only). Now the baseline records a fingerprint of the
metric's source, and a run whose metric differs says so, with the way to record a new baseline.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import pytest

from pytest_dspex.evaluation.metrics import exact_match, metric_fingerprint
from pytest_dspex.testing.fake_server import FakeLMServer

from .test_infra_verdicts import run
from .test_plugin import MODES
from .test_program_errors import SOURCE, _project

CHANGED = "the metric changed since the baseline"


@pytest.fixture(params=list(MODES))
def mode(request: pytest.FixtureRequest) -> list[str]:
    return MODES[request.param]


def _metric(pytester: pytest.Pytester, body: str) -> None:
    source = SOURCE.format(threshold=0.1).replace("    return example.team == prediction.team\n", body)
    assert source != SOURCE.format(threshold=0.1)
    pytester.makepyfile(test_triage=source)


def _golden(pytester: pytest.Pytester) -> dict[str, Any]:
    return json.loads(next(pytester.path.rglob("__dspex__/**/triage.json")).read_text())


def _m1(example: Any, prediction: Any, trace: Any = None) -> bool:
    return bool(example.team == prediction.team)


def _m2(example: Any, prediction: Any, trace: Any = None) -> bool:
    # a comment only
    return bool(example.team == prediction.team)


def test_the_fingerprint_follows_what_the_metric_computes() -> None:
    assert metric_fingerprint(_m1) is not None
    assert metric_fingerprint(exact_match("team")) != metric_fingerprint(exact_match("answer"))
    assert metric_fingerprint(exact_match("team")) == metric_fingerprint(exact_match("team"))
    assert metric_fingerprint(functools.partial(_m1, trace=1)) != metric_fingerprint(_m1)
    assert metric_fingerprint(eval("lambda example, prediction, trace=None: 1")) is None  # no source: no claim


def test_editing_the_metric_is_said_with_the_way_to_a_new_baseline(
    pytester: pytest.Pytester, server: FakeLMServer, mode: list[str]
) -> None:
    _project(pytester, threshold=0.1)
    (pytester.path / "wrong.txt").write_text("0 1")
    assert run(pytester, server, *mode, "--dspex-compile=triage,triage_each").ret == 0
    recorded = _golden(pytester)["baseline"]["metric_fingerprint"]
    assert recorded.startswith("sha256:")

    # a comment and blank lines: the same metric, nothing said
    _metric(pytester, "    # compares the team\n\n    return example.team == prediction.team  # exact\n")
    result = run(pytester, server, *mode)
    assert result.ret == 0 and CHANGED not in result.stdout.str()

    # stricter: technical answers no longer count (the answers are the same as the baseline's)
    _metric(pytester, '    return example.team == prediction.team and example.team != "technical"\n')
    result = run(pytester, server, *mode, "--dspex-markdown=ci.md")
    out = result.stdout.str()
    assert result.ret == 1
    assert (
        f"{CHANGED} (its source differs from the one that scored the golden): a different score may be the "
        "metric's, not the program's; if the edit is intended, record a new baseline with pytest "
        "--dspex-rebaseline=triage"
    ) in out
    rows = json.loads((pytester.path / "report.json").read_text())["programs"]
    assert len(rows) == 2 and all(CHANGED in r["note"] for r in rows)
    assert CHANGED in (pytester.path / "ci.md").read_text()

    # the way out it names: a new baseline with this metric, then nothing is said
    assert run(pytester, server, *mode, "--dspex-rebaseline=triage,triage_each").ret == 0
    assert _golden(pytester)["baseline"]["metric_fingerprint"] != recorded
    result = run(pytester, server, *mode)
    assert CHANGED not in result.stdout.str()


def test_an_older_golden_without_the_fingerprint_loads_as_before(
    pytester: pytest.Pytester, server: FakeLMServer
) -> None:
    _project(pytester, threshold=0.1)
    (pytester.path / "wrong.txt").write_text("0 1")
    assert run(pytester, server, "-p", "no:xdist", "--dspex-compile=triage,triage_each").ret == 0
    for path in pytester.path.rglob("__dspex__/**/*.json"):
        data = json.loads(path.read_text())
        del data["baseline"]["metric_fingerprint"]
        path.write_text(json.dumps(data))
    _metric(pytester, '    return example.team == prediction.team and example.team != "technical"\n')
    result = run(pytester, server, "-p", "no:xdist")
    assert CHANGED not in result.stdout.str()
    assert "regression: 0.400 < golden 0.800" in result.stdout.str()  # as before: nothing to tell them apart
