"""Per-example chunks stay on one xdist worker, so each worker evaluates whole chunks concurrently.

xdist's ``loadgroup`` would do this with ``xdist_group`` marks, but it renames node ids (which
pytest 9.2 no longer lets it do) and the controller never collects, so it cannot tell which
node ids are per-example items. Instead each worker, right after collecting, writes
``{nodeid: chunk}`` for its per-example items to a file named by the run id; with the default
``--dist load``, the controller schedules with ``scheduling.ChunkScheduling``: xdist's ``load`` whose batches
end on chunk boundaries. Without a shared filesystem (remote workers) it is plain ``load``: still
correct, each worker then evaluates the examples of each chunk it was given.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

__all__ = [
    "chunk_file",
    "read_chunks",
    "read_usage_error",
    "remove_usage_errors",
    "write_chunks",
    "write_usage_error",
]


def chunk_file(run_id: str, worker: str) -> Path:
    return Path(tempfile.gettempdir()) / f"pytest-dspex-chunks-{run_id}-{worker}.json"


def write_chunks(run_id: str, worker: str, chunks: dict[str, str]) -> None:
    path = chunk_file(run_id, worker)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(chunks))
    tmp.replace(path)


def read_chunks(run_id: str, *, remove: bool = False) -> dict[str, str]:
    chunks: dict[str, str] = {}
    for path in Path(tempfile.gettempdir()).glob(f"pytest-dspex-chunks-{run_id}-*.json"):
        try:
            chunks.update(json.loads(path.read_text()))
            if remove:
                path.unlink()
        except (OSError, ValueError):
            continue
    return chunks


def _usage_file(run_id: str, worker: str) -> Path:
    return Path(tempfile.gettempdir()) / f"pytest-dspex-usage-{run_id}-{worker}.txt"


def write_usage_error(run_id: str, worker: str, message: str) -> None:
    """A worker found a usage error in its collection (only it collects): left for the controller."""
    _usage_file(run_id, worker).write_text(message, encoding="utf-8")


def read_usage_error(run_id: str, worker: str) -> str | None:
    """The usage error a worker left (and removes it), or None. Remote workers leave none here."""
    path = _usage_file(run_id, worker)
    try:
        message = path.read_text(encoding="utf-8")
    except OSError:
        return None
    path.unlink(missing_ok=True)
    return message


def remove_usage_errors(run_id: str) -> None:
    for path in Path(tempfile.gettempdir()).glob(f"pytest-dspex-usage-{run_id}-*.txt"):
        path.unlink(missing_ok=True)
