"""Collection: one item per example for a per-example test, and what the collection selected.

``parametrize_examples`` (``pytest_generate_tests``) gives a ``dspex_example`` test one item per
example of its dataset (this shard's share); ``note_selection`` (``pytest_collection_finish``)
records which examples this process may run, writes a worker's xdist chunks, and checks
``--dspex-compile=NAMES`` against the programs the selected tests use.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from .fixtures import DatasetProblem, test_key
from .markers import dataset_path, metric_spec, missing_file, program_spec
from .session import DspexSession, session_key

__all__ = ["example_ids", "note_selection", "parametrize_examples"]


def parametrize_examples(metafunc: pytest.Metafunc) -> None:
    """A per-example test gets one item per example of its dataset (this shard's share); a test with a
    missing or unreadable dataset gets one item that fails saying so."""
    node = metafunc.definition
    if not any(node.get_closest_marker(m) for m in ("dspex_program", "dspex_metric", "dspex_dataset")):
        return
    base = Path(node.path).parent
    mark = node.get_closest_marker("dspex_program")
    if mark is not None and mark.args and _foreign_program(mark.args[0]):
        return  # not a collection error stopping the file: the test's fixture fails it, saying what to do
    missing = missing_file(node, base)
    if missing is not None:  # not a collection error stopping the run: the test fails with it, said once
        if "dspex_example" in metafunc.fixturenames:
            metafunc.parametrize("dspex_example", [DatasetProblem(missing)], indirect=True, ids=["dataset-error"])
        return  # a whole-dataset test: its fixture fails it with the same message
    try:
        spec = program_spec(node, base)
        metric_spec(node)
        marked = dataset_path(node, base)
    except pytest.fail.Exception as bad:  # a bad marker fails its own test, not the file's collection
        if "dspex_example" in metafunc.fixturenames:
            metafunc.parametrize("dspex_example", [DatasetProblem(str(bad.msg))], indirect=True, ids=["marker-error"])
        return  # a whole-dataset test: its fixture fails it with the same message
    if "dspex_example" not in metafunc.fixturenames:
        return
    if marked is None or spec is None:
        pytest.fail(f"{node.nodeid}: dspex_example needs @pytest.mark.dspex_dataset(...) and @pytest.mark.dspex_program(...)", pytrace=False)
    from ..errors import DatasetError

    session = metafunc.config.stash[session_key]
    try:
        examples = session.dataset(marked[0], spec.input_keys, marked[1], spec.program).examples
    except DatasetError as exc:
        # one item that fails with the message, not a collection error: under xdist every worker
        # collects, and each would print it; one item is said once, by whichever worker runs it
        problem = DatasetProblem(str(exc).replace(str(marked[0]), session.rel(marked[0])))
        metafunc.parametrize("dspex_example", [problem], indirect=True, ids=["dataset-error"])
        return
    ids = example_ids(examples)
    indices = list(range(len(examples)))
    shard = session.options.shard
    if shard is not None:  # this job's share, by example key; combine merges the shards
        from ..evaluation.datasets import example_key

        indices = shard.select([example_key(ex) for ex in examples])
    session.expected[test_key(node)] = len(indices)  # a complete run of this job (the gate needs all)
    metafunc.parametrize("dspex_example", indices, indirect=True, ids=[ids[i] for i in indices])


def example_ids(examples: Sequence[Any]) -> list[str]:
    """The per-example items' ids: each example's stable key, readable, unique within the test.

    A row with an ``id`` is that id (``dev0``). Otherwise a slug of its first input and the first six
    hex digits of its key, the hash of its inputs the gate pairs examples by
    (``The-invoice-shows-the-wr-3fa2b1``): the row's position is not in it, so inserting, deleting or
    reordering rows leaves every other item's id, ``--lf``, CI test history and flaky-test tools
    following the same example. Two ids that still meet (inputs alike up to the slug and six hex
    digits, or an ``id`` looking like one) get the whole key.
    """
    from ..evaluation.datasets import example_key

    keys = [example_key(ex) for ex in examples]
    ids = [_short_id(ex, key, 6) for ex, key in zip(examples, keys, strict=True)]
    counts: dict[str, int] = {}
    for ident in ids:
        counts[ident] = counts.get(ident, 0) + 1
    return [ident if counts[ident] == 1 else _short_id(ex, key, 16) for ident, ex, key in zip(ids, examples, keys, strict=True)]


_NON_WORD = re.compile(r"\W+")  # (compiled once: a call per example)


def _short_id(example: Any, key: str, digits: int) -> str:
    if not key.startswith("h:"):  # the row's own id
        return key
    input_keys = getattr(example, "input_keys", None) or tuple(example.keys())
    first = next((example[k] for k in input_keys if k in example), "")
    text = _NON_WORD.sub("-", str(first)).strip("-")[:24].strip("-")
    return f"{text}-{key[2 : 2 + digits]}" if text else key[2 : 2 + digits]


def _foreign_program(program: Any) -> bool:
    from .._support.dspy_idioms import dspy_kind

    return dspy_kind(program) is not None


def note_selection(session: pytest.Session) -> None:
    """Which examples of each per-example test this process may run (``-k``, ``--lf`` applied), their
    xdist chunks, and ``--dspex-compile=NAMES`` checked against the collection."""
    dspex = session.config.stash.get(session_key, None)
    if dspex is None:
        return
    problem = _check_compile_names(session, dspex)
    if problem is not None:
        if not dspex.is_worker:
            raise pytest.UsageError(problem)
        worker = session.config.workerinput["workerid"]  # type: ignore[attr-defined]
        if worker == "gw0":  # the controller stops the run with it (it does not collect); the workers'
            from .xdist import write_usage_error  # collections are the same, one message is enough

            write_usage_error(dspex.state_dir(), dspex.run_id, worker, problem)
    chunks: dict[str, str] = {}
    lowest: dict[str, int] = {}
    keys: dict[tuple[Any, str], str] = {}  # (parent, function) -> test_key: the 1,000 items of a test share one
    specs: dict[tuple[Any, int], Any] = {}  # (file, marker) -> the program's name: parsed once, not per item
    for item in session.items:  # one pass: 1,000s of per-example items
        key: str | None = None
        mark = item.get_closest_marker("dspex_program")
        if mark is not None:  # which program each selected dspex test gates (a stopped run names the ungated)
            where = (item.path, id(mark))
            if where not in specs:
                try:
                    spec = program_spec(item, Path(item.path).parent)
                except (Exception, pytest.fail.Exception):  # a bad marker (or a foreign program) fails its test, which says so
                    spec = None
                specs[where] = spec.name if spec is not None else None
            if specs[where] is not None:
                key = _test_key(item, keys)
                dspex.selected_programs[key] = specs[where]
        callspec = getattr(item, "callspec", None)
        if callspec is not None and isinstance(callspec.params.get("dspex_example"), int):
            index = int(callspec.params["dspex_example"])
            if key is None:
                key = _test_key(item, keys)
            dspex.selected.setdefault(key, set()).add(index)
            if index < lowest.get(key, index + 1):  # the item that reports a failure its test shares
                lowest[key], dspex.first_items[key] = index, item.nodeid
            chunks[item.nodeid] = f"dspex::{key}::{dspex.chunk_of(index)}"
    if dspex.is_worker and dspex.selected_programs and session.config.workerinput["workerid"] == "gw0":  # type: ignore[attr-defined]
        from .xdist import write_selected_programs

        write_selected_programs(dspex.state_dir(), dspex.run_id, dspex.selected_programs)
    if dspex.is_worker and chunks:
        from .xdist import write_chunks

        write_chunks(dspex.state_dir(), dspex.run_id, session.config.workerinput["workerid"], chunks)  # type: ignore[attr-defined]


def _test_key(item: Any, keys: dict[tuple[Any, str], str]) -> str:
    """``test_key(item)``, made once per test function of this collection."""
    at = (item.parent, getattr(item, "originalname", item.name))
    key = keys.get(at)
    if key is None:
        key = keys[at] = test_key(item)
    return key


def _check_compile_names(session: pytest.Session, dspex: DspexSession) -> str | None:
    """``--dspex-compile=NAMES`` or ``--dspex-rebaseline=NAMES`` naming a program no selected test uses:
    the usage error listing the known ones (a typo must not pass for a compile or a recorded baseline).

    Checked once the collection is known. Under xdist the controller does not collect: each worker
    checks its (identical) collection and leaves the message for the controller, which stops the run
    with it (``_XdistHooks.pytest_xdist_node_collection_finished``).
    """
    options = [(o, w) for o, w in (("compile", dspex.options.compile), ("rebaseline", dspex.options.rebaseline)) if w and "*" not in w]
    if not options or session.testsfailed:  # collection errors speak first
        return None
    if isinstance(sys.exc_info()[1], (KeyboardInterrupt, pytest.exit.Exception)):
        # the collection is ending on an interrupt (Ctrl-C while a test module imports, pytest.exit):
        # pytest's ``finally`` calls this hook with the items collected so far, so a name not among
        # them is not a typo, and the interrupt (exit 2), not a usage error, is what the run says
        return None
    known: set[str] = set()
    for item in session.items:
        if item.get_closest_marker("dspex_program") is None:
            continue
        try:
            spec = program_spec(item, Path(item.path).parent)
        except (Exception, pytest.fail.Exception):  # a bad marker fails its own test
            continue
        if spec is not None:
            known.add(spec.name)
    for option, wanted in options:
        unknown = sorted(wanted - known)
        if unknown:
            names = ", ".join(sorted(known)) if known else "none (no selected test has @pytest.mark.dspex_program)"
            return (
                f"--dspex-{option}={','.join(sorted(wanted))}: no selected test uses program"
                f"{'s' if len(unknown) > 1 else ''} {', '.join(repr(n) for n in unknown)}; known program names: {names}"
            )
    return None
