"""Per-example chunks stay on one xdist worker, so each worker evaluates whole chunks concurrently.

xdist's ``loadgroup`` would do this with ``xdist_group`` marks, but it renames node ids (which
pytest 9.2 no longer lets it do) and the controller never collects, so it cannot tell which
node ids are per-example items. Instead each worker, right after collecting, writes
``{nodeid: chunk}`` for its per-example items to a file named by the run id; with the default
``--dist load``, the controller schedules with ``scheduling.ChunkScheduling``: xdist's ``load`` whose batches
end on chunk boundaries. Without a shared filesystem (remote workers) it is plain ``load``: still
correct, each worker then evaluates the examples of each chunk it was given.

The files live in the session's private state folder (``DspexSession.state_dir``: the project's
``.pytest_cache/d/dspex``, mode 0700), written without following symlinks (``_private``) — never
in a shared folder of the temporary directory.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .._support.private import read_private, remove_private, write_private

__all__ = [
    "Crash",
    "chunk_file",
    "crash_of",
    "read_budget_notice",
    "read_chunks",
    "read_usage_error",
    "remove_usage_errors",
    "write_budget_notice",
    "write_chunks",
    "write_usage_error",
]


def chunk_file(folder: Path, run_id: str, worker: str) -> Path:
    return folder / f"chunks-{run_id}-{worker}.json"


def write_chunks(folder: Path, run_id: str, worker: str, chunks: dict[str, str]) -> None:
    write_private(chunk_file(folder, run_id, worker), json.dumps(chunks))


def read_chunks(folder: Path, run_id: str, *, remove: bool = False) -> dict[str, str]:
    chunks: dict[str, str] = {}
    for path in folder.glob(f"chunks-{run_id}-*.json"):
        text = read_private(path)
        try:
            chunks.update(json.loads(text) if text else {})
        except ValueError:
            pass
        if remove:
            remove_private(path)
    return chunks


def _programs_file(folder: Path, run_id: str) -> Path:
    return folder / f"programs-{run_id}.json"


def write_selected_programs(folder: Path, run_id: str, programs: Mapping[str, str]) -> None:
    """The dspex tests a worker collected (``{test key: program}``; every worker collects the same): the
    controller, which collects nothing, names the ones a stopped run did not gate."""
    write_private(_programs_file(folder, run_id), json.dumps(dict(programs)))


def read_selected_programs(folder: Path, run_id: str, *, remove: bool = False) -> dict[str, str]:
    path = _programs_file(folder, run_id)
    text = read_private(path)
    try:
        data = json.loads(text) if text else {}
    except ValueError:
        data = {}
    if remove:
        remove_private(path)
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _usage_file(folder: Path, run_id: str, worker: str) -> Path:
    return folder / f"usage-{run_id}-{worker}.txt"


def write_usage_error(folder: Path, run_id: str, worker: str, message: str) -> None:
    """A worker found a usage error in its collection (only it collects): left for the controller."""
    write_private(_usage_file(folder, run_id, worker), message)


def read_usage_error(folder: Path, run_id: str, worker: str) -> str | None:
    """The usage error a worker left (and removes it), or None. Remote workers leave none here."""
    path = _usage_file(folder, run_id, worker)
    message = read_private(path)
    if message is not None:
        remove_private(path)
    return message


def remove_usage_errors(folder: Path, run_id: str) -> None:
    for path in folder.glob(f"usage-{run_id}-*.txt"):
        remove_private(path)


def _notice_file(folder: Path, run_id: str) -> Path:
    return folder / f"budget-{run_id}.txt"


def write_budget_notice(folder: Path, run_id: str, message: str) -> None:
    """Worker gw0's estimate is over the budget (``upfront``): left for the controller to say."""
    write_private(_notice_file(folder, run_id), message)


def read_budget_notice(folder: Path, run_id: str) -> str | None:
    """The line gw0 left (and removes it), or None."""
    path = _notice_file(folder, run_id)
    message = read_private(path)
    if message is not None:
        remove_private(path)
    return message


@dataclass
class Crash:
    """A worker that died while running a per-example item (``crash_of``)."""

    test: str  # the per-example test (``<module>::<function>``)
    text: str  # "worker 'gw0' crashed while evaluating one of …"
    total: int  # how many items the test has in this collection


def _param(nodeid: str) -> str:
    return nodeid[nodeid.index("[") + 1 : -1] if nodeid.endswith("]") and "[" in nodeid else nodeid


def crash_of(
    crashitem: str, worker: str, chunks: Mapping[str, str], collection: Sequence[str], in_flight: Sequence[str] | None
) -> Crash | None:
    """What a worker's crash on ``crashitem`` cut short, or None when it is no per-example item.

    ``in_flight``: the items of a chunk whose evaluation the crash cut short (``ChunkScheduling``
    does not run them again, see there), else None: the crash is the named item's own.
    """
    if crashitem not in chunks:
        return None
    test = crashitem.split("[", 1)[0]
    total = sum(1 for n in collection if n in chunks and n.split("[", 1)[0] == test)
    if not in_flight or len(in_flight) == 1:
        return Crash(test, f"worker {worker!r} crashed while running {_param(crashitem)}", total)
    first, last = _param(in_flight[0]), _param(in_flight[-1])
    text = (
        f"worker {worker!r} crashed while evaluating one of {first}–{last} ({len(in_flight)} examples "
        "evaluated together; not run again)"
    )
    return Crash(test, text, total)
