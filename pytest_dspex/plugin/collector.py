"""What the controller gathers from the test reports: their payloads, the per-example runs, the goldens.

Each test report carries a ``Payload`` as JSON in ``report.dspex`` (set in ``pytest_runtest_makereport``;
pytest serializes every report attribute for xdist, so it reaches the controller unchanged):

* ``kind="program"`` from a whole-dataset test: its row, judged in the test itself (``ProgramRun``);
* ``kind="example"`` from a per-example item: its record and its program's ``RunSettings``; the
  controller gathers the records of one test function into one ``ProgramRun`` and judges them once,
  the same code as the whole-dataset mode and shard ``combine``: the verdict is the same with ``-n``
  and without, by construction;
* ``"golden_file": {...}`` on either: the golden used or written. A program compiled on an xdist
  worker carries its golden ``"record"`` once: the controller writes it (``Collector.write_golden``:
  ``GoldenStore.write``, atomic under the file lock, keep-better and force as ever) — the golden file
  has one writer, the process that owns the rootdir, never a worker (a remote worker's lock does not
  protect the controller's files). A second record for the same file in one run (two remote hosts
  each compiled the program: the compile-once marker is per host) is not written: the first stays.

``report_json`` is the run's document (``reports.document.RunDocument``) built from what was gathered.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from ..reports.run import ProgramRun, RunSettings

if TYPE_CHECKING:
    from ..evaluation.records import ExampleRecord
    from ..evaluation.sharding import Shard
    from ..reports.checkout import DirtyCheck

__all__ = ["Collector", "Payload", "PerExampleRun", "report_json"]


@dataclass
class Payload:
    """What a test's report carries to the controller (``report.dspex``, JSON through xdist).

    ``kind`` "program": a whole-dataset test's judged ``row``; "example": a per-example item's ``record``
    with its program's ``settings`` (the large parts, prompts, provenance and ``golden_outcomes``, sent
    once per process), how many items a whole run has (``expected``) and the collection ``selected``.
    ``golden_file``: the golden used or written (with its ``record`` when a worker compiled it).
    ``earlier``: the rows of the test's earlier ``dspex_evaluate`` calls (one row per call)."""

    kind: str
    golden_file: dict[str, Any] | None = None
    row: dict[str, Any] | None = None
    settings: RunSettings | None = None
    record: ExampleRecord | None = None
    expected: int | None = None
    selected: int | None = None
    golden_outcomes: dict[str, float | list[float]] | None = None
    earlier: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "golden_file": self.golden_file}
        if self.row is not None:
            out["row"] = self.row
        if self.earlier:
            out["earlier"] = self.earlier
        if self.settings is not None:
            out["settings"] = self.settings.to_json()
        if self.record is not None:
            out |= {"record": self.record.to_json(), "expected": self.expected, "selected": self.selected}
            out["golden_outcomes"] = self.golden_outcomes
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any], *, settings: bool = True) -> Payload:
        """``settings=False``: without its settings (``None``), left undecoded (``Collector.add``: known)."""
        from ..evaluation.records import ExampleRecord

        record, sent = data.get("record"), data.get("settings") if settings else None
        return cls(
            kind=str(data.get("kind") or ""),
            golden_file=dict(data["golden_file"]) if data.get("golden_file") else None,
            row=dict(data["row"]) if data.get("row") is not None else None,
            settings=RunSettings.from_json(sent) if sent is not None else None,
            record=ExampleRecord.from_json(record) if record is not None else None,
            expected=data.get("expected"),
            selected=data.get("selected"),
            golden_outcomes=dict(data["golden_outcomes"]) if data.get("golden_outcomes") is not None else None,
            earlier=[dict(r) for r in data.get("earlier") or ()],
        )


def _test_of(settings: Mapping[str, Any]) -> str:
    """The test a settings dict (as sent) is of: ``RunSettings.from_json(settings).test``."""
    test = settings.get("test")
    return "" if test is None else test


@dataclass
class PerExampleRun(ProgramRun):
    """The records of one per-example test function (``ProgramRun``) and where its items are."""

    #: the test function's (path, 0-based line) and its items' node ids (the aggregate's own report)
    location: tuple[str, int | None] | None = None
    nodeids: list[str] = field(default_factory=list)

    @property
    def program(self) -> str:
        return self.settings.program

    @property
    def test(self) -> str:
        return self.settings.test


class Collector:
    """On the controller (or the only process): every payload the test reports carry."""

    def __init__(
        self,
        rootpath: Path,
        shard: Shard | None = None,
        *,
        force: bool = False,
        state_dir: Callable[[], Path] | None = None,
    ) -> None:
        self.rootpath = rootpath
        self.state_dir = state_dir  # the private folder of the goldens' locks (``DspexSession.state_dir``)
        self.shard = shard
        self.force = force  # --dspex-force, for the goldens workers compiled
        #: goldens written here from workers' records, by path relative to the rootdir: outcome and reason
        self.golden_writes: dict[str, dict[str, str]] = {}
        #: what the controller has to say about them (second records refused, writes that failed)
        self.golden_messages: list[tuple[str, bool]] = []  # (text, is_error)
        self.rows: list[dict[str, Any]] = []
        self.runs: dict[str, PerExampleRun] = {}
        self.goldens: dict[str, dict[str, Any]] = {}  # by path relative to the rootdir
        self.test_files: set[str] = set()
        #: reports that could not be written at session end: (line, is_error), shown under the table
        self.report_problems: list[tuple[str, bool]] = []
        #: reports written incomplete (Ctrl-C, -x, a collection error): a line in report_problems names each
        self.reports_said_incomplete: set[Path] = set()
        #: crashed xdist workers, per per-example test: (what was in flight, how many items the test has)
        self.crashes: dict[str, list[tuple[str, int]]] = {}
        self.selection = False  # -k, -m, --deselect, --lf or node ids: some tests were deselected
        self.collect_errors: set[str] = set()  # node ids of the collection errors seen
        self.ended: set[str] = set()  # node ids of the tests that ended (their teardown reported)
        self.collected: int | None = None  # under xdist: the tests a worker collected (else session.items)
        self.stopped = ""  # why the session ended before every selected test ran ("" if it did not)
        #: a stopped run's programs whose tests gave no verdict at all: {program: [test, ...]}
        self.not_gated: dict[str, list[str]] = {}
        #: a run's programs whose tests failed before their gate gave a row (a stale golden): {program: [test, ...]}
        self.failed_before_verdict: dict[str, list[str]] = {}
        self.failed_tests: set[str] = set()  # test keys (no parameter) of the failed test reports
        #: every selected dspex test's key -> its program (``note_selected``): their goldens are in use
        self.selected_programs: dict[str, str] = {}
        #: ``git status`` of the rootdir's checkout, started as the run began (``start_dirty_check``)
        self.dirty_check: DirtyCheck | None = None
        #: per per-example test, the settings (as sent) its run took last (``add``)
        self._settings_taken: dict[str, Any] = {}

    def add(self, nodeid: str, fspath: str, data: Mapping[str, Any], location: tuple[str, int | None] | None = None) -> None:
        raw = data.get("settings") if data.get("kind") == "example" else None
        # a per-example test's items carry the same settings item after item (the large parts once per
        # process): the ones its run took last are not decoded and merged again (a merge of the same is a no-op)
        known = isinstance(raw, Mapping) and self._settings_taken.get(_test_of(raw)) == raw
        payload = Payload.from_json(data, settings=not known)
        self.test_files.add(fspath)
        golden = payload.golden_file
        if golden:
            record = golden.pop("record", None)
            if record is not None:  # a re-baselined golden replaces the old one whatever its score
                self.write_golden(golden["path"], record, golden.get("program", ""), force=golden.get("outcome") == "rebaselined")
            prev = self.goldens.get(golden["path"], {})
            merged = {**prev, **{k: v for k, v in golden.items() if v is not None}}
            self.goldens[golden["path"]] = merged | self.golden_writes.get(golden["path"], {})  # the writer's word
        if payload.kind == "program" and payload.row is not None:
            self.rows.extend({**row, "test": nodeid} for row in [*payload.earlier, payload.row])
        elif payload.kind == "example" and (payload.settings is not None or known) and payload.record is not None:
            settings = payload.settings
            if settings is None:  # known: taken by its run already
                run = self.runs[_test_of(raw)]  # type: ignore[arg-type]
            elif settings.test in self.runs:
                run = self.runs[settings.test]
                run.settings.update(settings)
            else:
                run = self.runs[settings.test] = PerExampleRun(settings, shard=self.shard)
            if settings is not None:
                self._settings_taken[settings.test] = copy.deepcopy(raw)  # (what the run holds may change)
            for name in ("expected", "selected"):
                value = getattr(payload, name)
                if value is not None:
                    setattr(run, name, max(int(value), getattr(run, name) or 0))
            if location is not None and run.location is None:
                run.location = location
            run.nodeids.append(nodeid)
            if payload.golden_outcomes is not None:
                run.golden_outcomes = payload.golden_outcomes
            run.add([payload.record])

    def write_golden(self, rel: str, record: dict[str, Any], program: str, *, force: bool = False) -> None:
        """Write a golden a worker compiled (its ``record``) into this rootdir: the one writer."""
        from ..errors import ConfigError, GoldenFileError
        from ..golden.store import GoldenStore

        if rel in self.golden_writes:
            self.golden_messages.append((
                f"golden {rel}: program {program!r} was compiled again by another worker in this run (the "
                "compile-once marker is per host); this second golden was not written, the first stays",
                False,
            ))  # fmt: skip
            return
        path = self.rootpath / rel
        try:
            state_dir = self.state_dir() if self.state_dir is not None else None
            written = GoldenStore(path.parent.parent, state_dir=state_dir).write(path, record, force=self.force or force)
        except (GoldenFileError, ConfigError, OSError) as exc:
            self.golden_writes[rel] = {"outcome": "not written", "reason": str(exc)}
            self.golden_messages.append((f"golden {rel}: not written: {exc}", True))
            return
        if force:  # the worker's word (re-baselined, and why) stands
            self.golden_writes[rel] = {}
            return
        self.golden_writes[rel] = {"outcome": written.outcome, "reason": written.reason}

    def start_dirty_check(self) -> None:
        """Ask git now whether the checkout has uncommitted changes (the tree the run is made from): the
        reports say so beside the commit; the answer is taken when they are built."""
        from ..reports.checkout import DirtyCheck

        self.dirty_check = DirtyCheck(self.rootpath)

    def crash_reason(self) -> str:
        """What crashed workers cut short, in one phrase ("" when none crashed)."""
        return "; ".join(text for crashes in self.crashes.values() for text, _ in crashes)

    def unjudged_crashes(self) -> list[str]:
        """A sentence per per-example test a crash left without a single record (so without a verdict)."""
        out = []
        for test, crashes in self.crashes.items():
            if test not in self.runs:
                total = max(n for _, n in crashes)
                why = "; ".join(text for text, _ in crashes)
                out.append(f"dspex gate INCOMPLETE for {test}: incomplete: 0 of {total} examples ran ({why}); no gate verdict")
        return out

    def finish(self, stopped: str = "") -> list[PerExampleRun]:
        """Judge every per-example run; the ones that fail the session (an incomplete run does, unless the
        user selected a part of its examples). ``stopped``: why the session ended early, if it did."""
        self.stopped = stopped
        return [run for run in self.runs.values() if not run.judge(stopped=stopped).passed and not run.selection]

    def note_not_gated(self, programs: Mapping[str, str]) -> None:
        """Of ``programs`` (every selected dspex test's key -> its program), the ones a stopped run left
        without a row: ``not_gated`` (said under the table and in every report)."""
        # (a per-example test a crash left without a record is said by ``unjudged_crashes``)
        gated = {str(row.get("test", "")).split("[", 1)[0] for row in self.rows} | set(self.runs) | set(self.crashes)
        out: dict[str, list[str]] = {}
        for test, program in programs.items():
            if test not in gated:
                out.setdefault(program, []).append(test)
        self.not_gated = out

    def note_failed_before_verdict(self, programs: Mapping[str, str]) -> None:
        """Of ``programs`` (every selected dspex test's key -> its program), the ones whose tests failed
        without a row (a stale or missing golden, a marker path naming no file): no report reads as a pass
        of the other programs alone (trial12 T12-3). A skipped test is not one."""
        gated = {str(row.get("test", "")).split("[", 1)[0] for row in self.rows} | set(self.runs) | set(self.crashes)
        out: dict[str, list[str]] = {}
        for test, program in programs.items():
            if test not in gated and test in self.failed_tests:
                out.setdefault(program, []).append(test)
        self.failed_before_verdict = out

    def note_selected(self, programs: Mapping[str, str]) -> None:
        """Every selected dspex test's key -> its program: a golden one of them gates is never "unused",
        whether or not its test ended with a row (a stale golden, a run stopped before it, a crash)."""
        self.selected_programs = dict(programs)

    def all_rows(self) -> list[dict[str, Any]]:
        rows = self.rows + [run.row() for run in self.runs.values() if run.verdict is not None]
        for row in rows:  # a golden this run wrote: every view says so instead of comparing the run with itself
            if self.goldens.get(str(row.get("golden")), {}).get("outcome") in ("created", "updated", "rebaselined"):
                row["golden_written"] = True
        return rows

    def unused_goldens(self) -> list[str]:
        """Golden files beside the test files that ran which no test used (like syrupy's unused); none
        under a selection (``-k`` …): the test of a golden may only have been deselected."""
        if self.selection:
            return []
        used = set(self.goldens)
        for test, program in self.selected_programs.items():  # tests/test_x.py::test_y -> tests/__dspex__/test_x/<program>.json
            module = PurePosixPath(test.split("::", 1)[0])
            used.add((module.parent / "__dspex__" / module.stem / f"{program}.json").as_posix())
        unused = []
        dirs = {Path(f).parent / "__dspex__" for f in self.test_files}
        for d in sorted(dirs):
            if not d.is_dir():
                continue
            for module_dir in sorted(p for p in d.iterdir() if p.is_dir()):
                test_file = d.parent / f"{module_dir.name}.py"
                if str(test_file) in self.test_files or not test_file.exists():
                    for g in sorted(module_dir.glob("*.json")):
                        rel = g.relative_to(self.rootpath).as_posix() if g.is_relative_to(self.rootpath) else str(g)
                        if rel not in used:
                            unused.append(rel)
        return unused


def report_json(collector: Collector, *, model: dict[str, Any] | None, shard: dict[str, int] | None = None) -> dict[str, Any]:
    """The ``--dspex-report`` document (team contract; every path relative to the rootdir)."""
    from ..reports.document import RunDocument

    return RunDocument.build(
        collector.all_rows(),
        goldens=collector.goldens,
        unused_goldens=collector.unused_goldens(),
        model=model,
        shard=shard,
        root=collector.rootpath,
        stopped=collector.stopped,
        failed_before_verdict=collector.failed_before_verdict,
        dirty=collector.dirty_check,
    ).to_json() | ({"not_gated": collector.not_gated} if collector.not_gated else {})
