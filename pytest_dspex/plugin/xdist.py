"""Per-example chunks stay on one xdist worker, so each worker evaluates whole chunks concurrently.

xdist's ``loadgroup`` would do this with ``xdist_group`` marks, but it renames node ids (which
pytest 9.2 no longer lets it do) and the controller never collects, so it cannot tell which
node ids are per-example items. Instead each worker, right after collecting, writes
``{nodeid: chunk}`` for its per-example items to a file named by the run id; with the default
``--dist load``, the controller schedules with ``ChunkScheduling``, xdist's ``loadscope``
scheduler whose scope of a node id is its chunk (other tests: their own id, i.e. plain ``load``).
Without a shared filesystem (remote workers), every test is its own scope: still correct, each
worker then evaluates the chunks' examples it was given.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from xdist.scheduler import LoadScopeScheduling

__all__ = ["ChunkScheduling", "chunk_file", "read_chunks", "write_chunks"]


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


class ChunkScheduling(LoadScopeScheduling):  # type: ignore[misc]  # xdist is untyped
    """``loadscope`` where a per-example item's scope is its chunk of examples."""

    def __init__(self, config: Any, log: Any = None, *, run_id: str) -> None:
        super().__init__(config, log)
        self._run_id = run_id
        self._chunks: dict[str, str] | None = None

    def _split_scope(self, nodeid: str) -> str:
        if self._chunks is None:  # first called once every worker has collected
            self._chunks = read_chunks(self._run_id)
        return self._chunks.get(nodeid, nodeid)
