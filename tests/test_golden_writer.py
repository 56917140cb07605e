"""The controller is the one golden writer: goldens compiled on xdist workers arrive as records in
report payloads and ``Collector`` writes them (keep-better and force as ``GoldenStore.write``; a
second record for the same file in one run is refused, the first stays). End to end over remote
workers: tests/test_remote_workers.py."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from pytest_dspex.golden.store import GoldenStore
from pytest_dspex.plugin.collector import Collector

EXAMPLE = Path(__file__).parent.parent / "example_project/tests/__dspex__/test_triage/triage.json"
REL = "tests/__dspex__/test_triage/triage.json"


def record(score_delta: float = 0.0) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(EXAMPLE.read_text())
    data = copy.deepcopy(data)
    data["scores"]["validation"]["score"] = round(data["scores"]["validation"]["score"] + score_delta, 6)
    if "baseline" in data:  # schema 3: keep-better compares the fresh baselines
        data["baseline"]["score"] = round(data["baseline"]["score"] + score_delta, 6)
    return data


def payload(rec: dict[str, Any] | None, outcome: str = "created") -> dict[str, Any]:
    golden: dict[str, Any] = {"path": REL, "program": "triage", "outcome": outcome}
    if rec is not None:
        golden["record"] = rec
    return {"kind": "other", "golden_file": golden}


def test_the_controller_writes_a_workers_golden_and_refuses_a_second_one(tmp_path: Path) -> None:
    collector = Collector(tmp_path)
    collector.add("t::a", str(tmp_path / "tests/test_triage.py"), payload(record()))
    path = tmp_path / REL
    assert GoldenStore.read(path).validation_score == record()["scores"]["validation"]["score"]
    assert collector.goldens[REL]["outcome"] == "created" and "record" not in collector.goldens[REL]
    first = path.read_bytes()
    # another host's worker compiled the same program (the compile-once marker is per host)
    collector.add("t::b", str(tmp_path / "tests/test_triage.py"), payload(record(+0.1), outcome="updated"))
    assert path.read_bytes() == first
    assert collector.goldens[REL]["outcome"] == "created"  # the writer's word, not the worker's guess
    [(text, is_error)] = collector.golden_messages
    assert not is_error and "compiled again by another worker" in text and "the first stays" in text


def test_keep_better_and_force_apply_to_a_workers_golden(tmp_path: Path) -> None:
    path = tmp_path / REL
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(record(+0.05)))
    kept = Collector(tmp_path)
    kept.add("t::a", str(tmp_path / "tests/test_triage.py"), payload(record()))
    assert kept.goldens[REL]["outcome"] == "kept" and "higher" in kept.goldens[REL]["reason"]
    assert json.loads(path.read_text()) == record(+0.05)
    forced = Collector(tmp_path, force=True)
    forced.add("t::a", str(tmp_path / "tests/test_triage.py"), payload(record()))
    assert forced.goldens[REL]["outcome"] == "updated"
    assert GoldenStore.read(path).validation_score == record()["scores"]["validation"]["score"]


def test_a_golden_the_controller_cannot_write_fails_the_run_with_the_reason(tmp_path: Path) -> None:
    path = tmp_path / REL
    path.parent.mkdir(parents=True)
    path.write_text("{not json")  # corrupted: never replaced without --dspex-force
    collector = Collector(tmp_path)
    collector.add("t::a", str(tmp_path / "tests/test_triage.py"), payload(record()))
    assert path.read_text() == "{not json"
    [(text, is_error)] = collector.golden_messages
    assert is_error and "not written" in text and "--dspex-force" in text
    assert collector.goldens[REL]["outcome"] == "not written"
