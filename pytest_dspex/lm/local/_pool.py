# mypy: disable-error-code="no-untyped-call"
"""Several model instances for the embedded server, one thread each: concurrent requests decode side by side.

llama-cpp-python's server answers one request at a time with one ``Llama`` whose threads split
every matrix product of a token. Decoding one token of Gemma 3 270M is a few hundred small
operations with a barrier between each; with two threads on two cores those barriers are what a
token costs whenever anything else runs: measured here, a token took 24 ms with two spinning
threads on an idle machine, 121 ms with them while another process used one core, 45 ms with
threads that wait passively (what the server used), 41 ms with one thread — whatever else ran.

``Pool`` keeps ``instances()`` copies of the model (weights memory-mapped once, repacked per
instance) with ``threads_per_instance()`` threads each (on 2 cores: two instances of one thread).
Each request takes an idle instance — the one whose cached tokens share the longest prefix with its
prompt, so a program's requests keep reusing their demos' prefix — and holds it until its answer
(or its stream) ends. An instance is the server's usual single-sequence path, so its answers follow
exactly the same rules: a matrix product's rows do not depend on how many threads computed them.

``DSPEX_INSTANCES`` sets the number (``1``: the server as before, one instance with every core).

With the batch engine on (``_batched``, the default), every instance has an engine of its own
(``Pool(engines=slots)``): an instance then takes up to ``slots`` requests at once and decodes them
together, one thread each. Requests go where their prompt's prefix is cached (or being read), unless
that instance is busier than the prefix is worth (``_score``). One thread per engine is what keeps a
request's answer independent of its neighbours: with two threads, llama.cpp's flash attention splits
a decoding token's cache between them at a point that depends on the longest sequence in the batch.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from typing import Any

from ._batched import CHUNK, _common_prefix

__all__ = ["ENV", "Pool", "PoolLlama", "install", "instances", "threads_per_instance"]

#: what a request already running on an instance costs a new one there, in prompt tokens it would
#: have to evaluate elsewhere (a decoding step shared with one more sequence, and a slot less)
BUSY_COST = 64

#: ``DSPEX_INSTANCES=N``: N model instances (default: one per core, at most ``MAX_INSTANCES``)
ENV = "DSPEX_INSTANCES"
MAX_INSTANCES = 4


def _cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def instances() -> int:
    """How many model instances the server keeps (``DSPEX_INSTANCES``, else one per core up to 4)."""
    raw = os.environ.get(ENV, "").strip()
    if raw:
        try:
            return max(1, int(raw))
        except ValueError:
            pass
    return max(1, min(_cores(), MAX_INSTANCES))


def threads_per_instance() -> int:
    """Threads of each instance: the cores shared out (one instance alone gets them all)."""
    return max(1, _cores() // instances())


class Pool:
    """The server's model instances and which are busy. The first is the app's own ``Llama``; the
    others are made from its settings in the background (requests use them once they are ready)."""

    def __init__(self, first: Any, n: int, engines: int = 0) -> None:
        self.members: list[Any] = [first]
        #: requests each instance holds now (at most ``capacity``)
        self.active: list[int] = [0]
        #: with ``engines``: each instance's batch engine and the lock of its own path (streams ...)
        self.engines: list[Any] = []
        self.locks: list[threading.Lock] = [threading.Lock()]
        self.capacity = max(1, engines) if engines else 1
        self._cond = threading.Condition()
        if engines:
            self.engines.append(self._engine(first))
        if n > 1:
            threading.Thread(target=self._grow, args=(first, n - 1), name="dspex-pool-load", daemon=True).start()

    @property
    def busy(self) -> list[bool]:
        return [a >= self.capacity for a in self.active]

    def _engine(self, llama: Any) -> Any:
        from ._batched import BatchEngine

        return BatchEngine(llama, self.capacity)

    def _grow(self, first: Any, extra: int) -> None:
        from llama_cpp import Llama

        settings = first.__getstate__()
        for _ in range(extra):
            try:
                llama = Llama(**settings)
                engine = self._engine(llama) if self.engines else None
            except Exception as exc:  # out of memory, say: keep serving with the instances there are
                print(f"pytest-dspex: could not load another model instance ({exc}); serving with {len(self.members)}", flush=True)
                return
            with self._cond:
                self.members.append(llama)
                self.active.append(0)
                self.locks.append(threading.Lock())
                if engine is not None:
                    self.engines.append(engine)
                self._cond.notify_all()

    def _score(self, i: int, tokens: list[int]) -> int:
        """How good instance ``i`` is for a prompt of ``tokens``: the prompt tokens it need not evaluate
        there (its cached or being-read prefix, in whole chunks), less ``BUSY_COST`` per request it holds."""
        if self.engines:
            shared = int(self.engines[i].longest_prefix(tokens)) // CHUNK * CHUNK
        else:
            llama = self.members[i]
            shared = _common_prefix(list(llama._input_ids[: llama.n_tokens]), tokens)
        return shared - BUSY_COST * self.active[i]

    def acquire(self, tokens: list[int]) -> int:
        """An instance with room for a prompt of ``tokens`` (``_score``: the longest cached prefix
        first, then the least busy), holding one more request."""
        with self._cond:
            while all(a >= self.capacity for a in self.active):
                self._cond.wait()
            best, score = -1, None
            for i in range(len(self.members)):
                if self.active[i] >= self.capacity:
                    continue
                mine = self._score(i, tokens)
                if score is None or mine > score:
                    best, score = i, mine
            self.active[best] += 1
            return best

    def release(self, i: int) -> None:
        with self._cond:
            self.active[i] -= 1
            self._cond.notify()


class PoolLlama:
    """The server's ``Llama`` as the app's routes see it (one per request): completions run on an
    idle instance of the pool; anything else (tokenize, metadata) on the first."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool.members[0], name)

    def _tokens(self, prompt: Any) -> list[int]:
        if isinstance(prompt, list):
            return prompt
        return list(self._pool.members[0].tokenize(str(prompt).encode("utf-8"), add_bos=True, special=True))

    def create_chat_completion(self, **kwargs: Any) -> Any:
        if kwargs.get("stream"):  # the chat handler streams through create_completion below
            from llama_cpp import Llama

            return Llama.create_chat_completion(self, **kwargs)  # type: ignore[arg-type]
        from ._plain import format_plain

        i = self._pool.acquire(self._tokens(format_plain(kwargs.get("messages") or []).prompt))
        llama = self._pool.members[i]
        try:
            if self._pool.engines:  # the chat handler completes through the instance's engine
                from ._batched import EngineLlama

                return EngineLlama(llama, self._pool.engines[i], self._pool.locks[i]).create_chat_completion(**kwargs)
            return type(llama).create_chat_completion(llama, **kwargs)
        finally:
            self._pool.release(i)

    def create_completion(self, prompt: Any, **kwargs: Any) -> Any:
        i = self._pool.acquire(self._tokens(prompt))
        llama = self._pool.members[i]
        if self._pool.engines:
            from ._batched import EngineLlama

            llama = EngineLlama(llama, self._pool.engines[i], self._pool.locks[i])
        try:
            result = llama.create_completion(prompt, **kwargs)
        except BaseException:
            self._pool.release(i)
            raise
        if kwargs.get("stream") and not isinstance(result, dict):
            return self._release_after(result, i)
        self._pool.release(i)
        return result

    __call__ = create_completion

    def _release_after(self, chunks: Iterator[Any], i: int) -> Iterator[Any]:
        try:
            yield from chunks
        finally:
            self._pool.release(i)


class _Proxy:
    """What ``get_llama_proxy`` yields: the app's ``LlamaProxy`` with its model behind a ``PoolLlama``."""

    def __init__(self, proxy: Any, pools: dict[int, Pool], n: int, guard: threading.Lock, engines: int = 0) -> None:
        self._proxy = proxy
        self._pools = pools
        self._n = n
        self._guard = guard
        self._engines = engines

    def __call__(self, model: str | None = None) -> Any:
        llama = self._proxy(model)
        with self._guard:
            pool = self._pools.get(id(llama))
            if pool is None or pool.members[0] is not llama:
                pool = self._pools[id(llama)] = Pool(llama, self._n, self._engines)
        return PoolLlama(pool)

    def __iter__(self) -> Any:
        return iter(self._proxy)


def install(n: int | None = None, engines: int = 0) -> None:
    """Serve the app's routes from a pool of ``n`` instances (default ``instances()``): its
    ``get_llama_proxy`` (a lock around the one ``Llama``) is replaced by one that yields the model
    behind ``PoolLlama``; the pool keeps each instance to one request at a time, or with ``engines``
    to that many, decoded together by the instance's batch engine."""
    from llama_cpp.server import app

    if getattr(app.get_llama_proxy, "_dspex_pool", False):
        return
    count = instances() if n is None else n
    pools: dict[int, Pool] = {}
    guard = threading.Lock()

    async def get_llama_proxy() -> Any:
        yield None if app._llama_proxy is None else _Proxy(app._llama_proxy, pools, count, guard, engines)

    get_llama_proxy._dspex_pool = True  # type: ignore[attr-defined]
    app.get_llama_proxy = get_llama_proxy
