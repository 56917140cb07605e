"""``ChunkScheduling``: xdist's ``load`` whose batches end on chunk boundaries (see ``plugin/xdist.py``).

Its own module so that ``xdist.scheduler`` is imported only when a run actually uses ``-n``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from xdist.scheduler import LoadScheduling

from .xdist import read_chunks

__all__ = ["ChunkScheduling"]


class ChunkScheduling(LoadScheduling):  # type: ignore[misc]  # xdist is untyped
    """xdist's ``load`` scheduling, except that a batch never splits a chunk of per-example items.

    Batches are consecutive runs of the collection; a batch that ends inside a chunk is extended
    to the chunk's end, so every batch starts and ends on a chunk boundary and a chunk's items
    all go to the node that got its first one. Other tests are scheduled exactly as by ``load``.
    """

    # xdist's own attributes, as this class uses them
    collection: list[str] | None
    maxschedchunk: int | None

    def __init__(self, config: Any, log: Any = None, *, run_id: str, state_dir: Callable[[], Path]) -> None:
        super().__init__(config, log)
        self._run_id = run_id
        self._state_dir = state_dir  # the session's private folder, where the workers left their chunk maps
        self._chunk_at: list[str | None] | None = None
        self._done: set[tuple[Any, str]] = set()  # (node, chunk) of which the node completed an item
        #: crashed item -> the node ids of its chunk's evaluation the crash cut short (read by the crash hook)
        self.in_flight: dict[str, list[str]] = {}
        self._started: set[Any] = set()  # workers given tests before every worker had collected

    # -- an early start ----------------------------------------------------------------------------
    # xdist's ``load`` sends nothing until every worker has collected; workers start one after another
    # (measured, ``-n 8`` on 2 cores: the first collected at 1.2 s, the last at 2.3 s) and the first
    # ones waited idle. Here a worker is given its first batch as soon as its own collection is in,
    # when it equals the first one's; the check of every worker's collection against the first (and
    # the run's failure if one differs) still happens when all are in, as xdist does it. Nothing is
    # sent to a worker before its collection is known to be the same, so an item index never means
    # another test there. Small collections (fewer than ``EARLY_MIN`` items a worker) wait for all.
    EARLY_MIN = 4

    def add_node_collection(self, node: Any, collection: Any) -> None:
        super().add_node_collection(node, collection)
        ids: list[str] = list(collection)
        if self._complete() or node not in self.node2collection or len(ids) < self.EARLY_MIN * self.numnodes:
            return
        first: list[str] | None = self.collection
        if first is None:
            first = self.collection = ids
            self.pending[:] = range(len(ids))
            if self.maxschedchunk is None:
                self.maxschedchunk = len(ids)
        elif ids != first:
            return  # said (and the run failed) by ``schedule`` once every worker is in
        if not self._started:
            self._announce()
        self._started.add(node)
        most = self.maxschedchunk if self.maxschedchunk is not None else len(first)
        self._send_tests(node, max(2, min(len(first) // max(1, self.numnodes) // 4, most)))

    def _announce(self) -> None:
        """Say what xdist says once every worker is in (``8 workers [1000 items]``), as the first tests
        start: later workers' status changes are not drawn over the progress line (a terminal's)."""
        trdist = self.config.pluginmanager.getplugin("terminaldistreporter")
        if trdist is None or self.collection is None:
            return
        verbose = self.config.option.verbose
        n, items = self.numnodes, len(self.collection)
        line = f"{n} worker{'' if n == 1 else 's'} [{items} item{'' if items == 1 else 's'}]"
        try:
            if getattr(trdist, "_isatty", False):  # -q: xdist's own 'bringing up nodes...', ended
                trdist.rewrite(line if verbose >= 0 else trdist.getstatus(), newline=True)
            elif verbose >= 0:  # -q off a terminal: xdist said its line when the workers were set up
                trdist.write_line(line)
            if verbose > 0:
                trdist.write_line(f"scheduling tests via {type(self).__name__}")
            trdist.setstatus = lambda *args, **kwargs: None  # the workers still starting: not drawn
        except Exception:  # xdist's reporter changed: its own status lines, as before
            pass

    @property
    def has_pending(self) -> bool:
        """Read by xdist only when every worker is in, to decide whether to say the status line and end
        it with a blank line: said already at an early start (else a stale 'ready: 1/2 workers' was
        written into the progress dots when the started workers had run everything by then)."""
        return bool(self._started) or bool(super().has_pending)

    def _complete(self) -> bool:
        return bool(len(self.node2collection) >= self.numnodes)

    def schedule(self) -> None:
        if self.collection is None or not self._started:  # no early start: xdist's own
            super().schedule()
            return
        if not self._check_nodes_have_same_collection():
            self.log("**Different tests collected, aborting run**")
            # Nothing more is sent (xdist's abort leaves nothing pending); the workers started early end
            # with the batch they have, then the run ends: with tests still pending and every worker
            # gone, xdist's loop raised 'Unexpectedly no active workers available' (INTERNALERROR).
            self.pending[:] = []
            for node in self.nodes:
                node.shutdown()
            return
        for node in self.nodes:
            if node not in self._started:  # (a worker that collected after the first schedule)
                self._started.add(node)
            self.check_schedule(node)

    def check_schedule(self, node: Any, duration: float = 0) -> None:
        if node not in self._started and not self._complete():  # its collection is not known to match yet
            return
        super().check_schedule(node, duration=duration)

    def mark_test_complete(self, node: Any, item_index: int, duration: float = 0) -> None:
        chunk = self._chunk_at[item_index] if self._chunk_at is not None else None
        if chunk is not None:
            self._done.add((node, chunk))
        super().mark_test_complete(node, item_index, duration)

    def remove_node(self, node: Any) -> str | None:
        """A crashed node's chunk whose evaluation was under way is not sent elsewhere.

        A chunk's examples are evaluated together in a worker's first item of the chunk, so a crash
        there is one of the chunk's examples (a native crash, ``os._exit`` in a metric), and xdist names
        that first item. Sent to another worker, the rest of the chunk would crash it and blame the next
        example, until xdist's restarts run out and the whole run is lost. They are left unrun instead
        (the per-example test is then incomplete: k of n examples ran) and named in the crash report."""
        pending = self.node2pending.get(node) or []
        if pending and not self._complete():
            # Started early and crashed before every worker was in: its collection no longer counts, so
            # the one of the worker replacing it does. Else that one made the count complete while a
            # slow worker was still collecting: that worker was sent tests before its collection was
            # known, and a collection of other tests there was never said (the run passed).
            self.node2collection.pop(node, None)
        chunk_at, collection = self._chunk_at, self.collection
        if pending and chunk_at is not None and collection is not None:
            chunk = chunk_at[pending[0]]
            if chunk is not None and (node, chunk) not in self._done:
                rest = [i for i in pending if chunk_at[i] == chunk]
                self.node2pending[node] = [pending[0], *(i for i in pending if chunk_at[i] != chunk)]
                self.in_flight[collection[pending[0]]] = [collection[i] for i in rest]
        return super().remove_node(node)  # type: ignore[no-any-return]

    # ``_send_tests`` is xdist's own (underscored) step that hands ``num`` pending tests to a node;
    # it is overridden because xdist has no public way to shape a batch: its public extension point
    # (``pytest_xdist_make_scheduler``) takes a whole scheduler, and writing one would copy all of
    # ``load``'s bookkeeping (crashed nodes, rescheduling, the initial distribution) to change one
    # number. If xdist renames it, runs still work: batches may then split a chunk, which only
    # costs concurrency (a chunk's examples evaluated on two workers), never correctness.
    def _send_tests(self, node: Any, num: int) -> None:
        if self._chunk_at is None:  # the (first worker's) collection is in before anything is sent
            chunks = read_chunks(self._state_dir(), self._run_id)
            self._chunk_at = [chunks.get(nodeid) for nodeid in self.collection or ()]
        pending, chunk_at = self.pending, self._chunk_at
        if 0 < num < len(pending):
            last = chunk_at[pending[num - 1]]
            while last is not None and num < len(pending) and chunk_at[pending[num]] == last:
                num += 1
        try:
            super()._send_tests(node, num)
        except OSError:  # execnet 'cannot send (already closed?)': the worker died after its last report
            # The tests are on its pending list already: its crash, handled next, names the one it was
            # running and sends the rest elsewhere. (A worker started early reports a test done and
            # crashes in the next while others still collect; the send was an INTERNALERROR.)
            self.log("could not send tests to", node.gateway.id, ": it is gone")
