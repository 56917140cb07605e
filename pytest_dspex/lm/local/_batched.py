# mypy: disable-error-code="no-untyped-call"
"""Batched decoding for the embedded llama.cpp server: concurrent completions share each ``llama_decode``.

llama-cpp-python's server decodes one sequence at a time (its app holds a lock around its one
``Llama``), so the 8 requests a compile sends at once queued. Decoding one token of Gemma 3 270M
is memory-bound (most of the time goes to reading the weights and the 262k-row output layer), so
a step that decodes eight sequences costs little more than a step that decodes one.

``BatchEngine`` owns a second llama context on the loaded model with ``SLOTS`` sequences, each in
its own KV stream (``kv_unified=False``: a sequence's cells are laid out exactly as in a context of
its own, so its numbers do not depend on what it was batched with). One thread runs the loop:
requests wait on a future; every step decodes one token of every generating slot and as many prompt
tokens of new requests as ``n_batch`` leaves room for, in one ``llama_decode``.

A new request takes the idle slot whose cached tokens share the longest prefix with its prompt, or
copies a longer prefix from another slot (``llama_memory_seq_cp``, then ``seq_rm`` of the rest), and
evaluates only the remaining tokens. Sampling is llama-cpp-python's own sampler chain, built by
``Llama._init_sampler`` for each request (penalties, the pruned grammar of ``_llama_server``, greedy
or top-k/top-p/temperature with the request's seed), so answers follow the same rules as the
serial path; stop strings, ``max_tokens`` and the end-of-generation token end a request as
``Llama.create_completion`` does, and its response has the same shape.

Determinism: a request's answer must be a function of its prompt, whatever it was batched with
(else an unchanged program can read "regressed"). Each of these mattered, measured on the example's
48 find_product requests (temperature 0, ~330-token prompts): repacked weights off, ggml's tiled
K-quant product off (``without_tiled_matmul``), flash attention (it skips masked cells), prompts in
fixed chunks each in a ``llama_decode`` of its own, and **one thread**: with two, llama.cpp's flash
attention splits a decoding token's cache between the threads at a point that depends on the
longest sequence in the batch (1 of the 48 answers differed 8 at a time vs one at a time). With one
thread the 753 decoding steps of the 48 gave bit-identical logits alone and 8 at a time. The server
keeps one single-thread engine per core (``_pool``), so both cores work and every engine gives the
same answers (the same 48 through one engine and through two: identical).

What the engine does not do goes through the original ``Llama`` under a lock of its own
(``EngineLlama``): streaming, logits processors and ``logit_bias``, ``echo``, ``suffix``, stopping
criteria, and prompts that do not fit a slot.
"""

from __future__ import annotations

import concurrent.futures
import os
import queue
import random
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

#: ``DSPEX_BATCHED=1`` turns the engine on, ``0`` off (every request then goes through the original ``Llama``)
ENV = "DSPEX_BATCHED"
#: sequences decoded together
SLOTS = 8
#: tokens of prompt and answer a slot holds (longer requests take the original path): 8 slots of 2048
#: keep ~300 MB of KV cache (llama.cpp keeps every position of the sliding-window layers too)
SLOT_CONTEXT = 2048
#: prompts are evaluated in chunks of this many tokens from position 0, and a cached prefix is reused
#: only in whole chunks: where a prompt is cut into pieces changes its logits slightly, so every
#: prompt is cut at the same places whatever ran before it or beside it
CHUNK = 32


#: whether the engine runs when ``DSPEX_BATCHED`` is unset (``0``: llama-cpp-python's one-at-a-time
#: path on each instance of the pool)
DEFAULT = False


def enabled() -> bool:
    value = os.environ.get(ENV, "").strip().lower()
    return DEFAULT if not value else value not in ("0", "false", "no", "off")


@dataclass
class _Job:
    prompt: list[int]
    max_tokens: int
    stop: list[bytes]
    sampler: Any
    top_logprobs: int
    model: str
    future: concurrent.futures.Future[dict[str, Any]] = field(default_factory=concurrent.futures.Future)
    logprobs: dict[str, Any] | None = None
    completion: list[int] = field(default_factory=list)
    reused: int = 0
    prompt_s: float = 0.0
    prompt_evaluated: int = 0
    gen_s: float = 0.0
    gen_runs: int = 0
    multibyte_fix: int = 0
    start: float = field(default_factory=time.perf_counter)


@dataclass
class _Slot:
    seq: int
    cached: list[int] = field(default_factory=list)  # tokens whose KV this sequence holds, in order
    job: _Job | None = None
    pending: list[int] = field(default_factory=list)  # tokens still to evaluate
    used: int = 0  # when it last took a request (0: never)
    whole: int = 0  # leading cached tokens evaluated in whole chunks (the reusable part)


class _Ctx:
    """What ``LlamaSampler.sample`` needs of a context: its pointer."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def first_token_logprobs(llama: Any, prompt: str | list[int], k: int) -> dict[str, Any] | None:
    """OpenAI ``choices[0].logprobs`` for the first token after ``prompt`` (text or tokens; None if it cannot be read)."""
    import numpy as np

    try:
        tokens = llama.tokenize(prompt.encode("utf-8"), add_bos=True, special=True) if isinstance(prompt, str) else prompt
        cached = list(llama._input_ids[: llama.n_tokens])
        prefix = 0
        for a, b in zip(cached, tokens, strict=False):
            if a != b:
                break
            prefix += 1
        prefix = min(prefix, len(tokens) - 1)  # evaluate at least the last token: its logits are needed
        llama.n_tokens = prefix  # eval drops the cached positions from here on
        llama._dspex_prompt_len = len(tokens)  # a prompt: evaluated as the server's eval does prompts
        llama.eval(tokens[prefix:])
        logits = np.ctypeslib.as_array(llama._ctx.get_logits(), shape=(llama.n_vocab(),)).astype(np.float64)
    except Exception:  # an API this llama-cpp-python does not have: answer without logprobs
        return None
    return logprobs_entries(llama, logits, k)


def logprobs_entries(llama: Any, logits: Any, k: int) -> dict[str, Any]:
    """OpenAI ``choices[0].logprobs`` from one position's logits: the ``k`` most likely tokens."""
    import numpy as np

    top = np.argpartition(-logits, k)[:k] if 0 < k < logits.size else np.arange(logits.size)
    log_z = float(logits.max() + np.log(np.exp(logits - logits.max()).sum()))
    ranked = sorted(((float(logits[i]) - log_z, int(i)) for i in top), reverse=True)
    entries = [
        {"token": llama.detokenize([i]).decode("utf-8", errors="replace"), "logprob": lp, "bytes": None}
        for lp, i in ranked
    ]
    first = dict(entries[0])
    return {"content": [{**first, "top_logprobs": entries}], "refusal": None}


class BatchEngine:
    """Completions for ``llama``'s model, decoded in batches on a context of its own."""

    def __init__(self, llama: Any, slots: int = SLOTS, n_ctx_slot: int = SLOT_CONTEXT) -> None:
        import llama_cpp
        from llama_cpp import _internals as internals

        self._lib = llama_cpp
        self.llama = llama
        self.slots_n = slots
        self.n_ctx_slot = min(int(n_ctx_slot), int(llama.n_ctx()))
        params = llama_cpp.llama_context_params.from_buffer_copy(llama.context_params)  # the server's settings
        params.n_ctx = self.n_ctx_slot * slots
        params.n_seq_max = slots
        # a step of several sequences is a batch: with llama.cpp's batch threads (the server's default
        # is every core) its attention would be split between threads by the batch's longest sequence
        params.n_threads_batch = params.n_threads
        params.kv_unified = False
        params.swa_full = True  # a slot keeps every position, so any prefix of it can be reused
        # flash attention skips masked cells: a token's attention does not depend on how long its
        # neighbours' caches are (without it, llama.cpp picks its f16 product kernel by that length)
        params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
        self.n_batch = int(params.n_batch)
        self._context = internals.LlamaContext(model=llama._model, params=params, verbose=llama.verbose)
        self.ctx = self._context.ctx
        self._ctx = _Ctx(self.ctx)
        self._mem = llama_cpp.llama_get_memory(self.ctx)
        self._batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self._n_vocab = int(llama.n_vocab())
        self._slots = [_Slot(seq=i) for i in range(slots)]
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._waiting: list[_Job] = []
        self._clock = 0
        self._lock = threading.Lock()  # building samplers: they read the Llama's seed
        self.verbose = bool(llama.verbose)
        self._thread = threading.Thread(target=self._run, name="dspex-batch-engine", daemon=True)
        self._thread.start()

    # -- the request side (server threads) ---------------------------------------------------------
    def fits(self, n_prompt: int, max_tokens: int | None) -> bool:
        """Whether a prompt and its answer fit a slot as they would the server's own context."""
        if max_tokens is None or max_tokens <= 0:  # as long as the context allows: the server's context
            return n_prompt > 0 and self.n_ctx_slot >= self.llama.n_ctx()
        return n_prompt > 0 and n_prompt + max_tokens < self.n_ctx_slot

    def complete(self, prompt: list[int], *, max_tokens: int | None, stop: str | list[str] | None,
                 temperature: float, top_p: float, top_k: int, min_p: float, typical_p: float,
                 repeat_penalty: float, frequency_penalty: float, presence_penalty: float,
                 tfs_z: float, mirostat_mode: int, mirostat_tau: float, mirostat_eta: float,
                 seed: int | None, grammar: Any, model: str | None, top_logprobs: int = 0) -> dict[str, Any]:  # fmt: skip
        """``Llama.create_completion``'s non-streaming answer for ``prompt`` (tokens), decoded in a batch."""
        llama = self.llama
        n_ctx = self.n_ctx_slot
        if max_tokens is None or max_tokens <= 0:
            max_tokens = n_ctx - len(prompt)
        max_tokens = max_tokens if max_tokens + len(prompt) < n_ctx else n_ctx - len(prompt)
        stops = stop if isinstance(stop, list) else [stop] if isinstance(stop, str) else []
        with self._lock:
            # the seed and the sampler chain exactly as Llama.create_completion and generate make them
            llama.set_seed(seed if seed is not None else random.Random(llama._seed).randint(0, 2**32))
            sampler = llama._init_sampler(
                top_k=top_k, top_p=top_p, min_p=min_p, typical_p=typical_p, temp=temperature,
                repeat_penalty=repeat_penalty, frequency_penalty=frequency_penalty,
                presence_penalty=presence_penalty, tfs_z=tfs_z, mirostat_mode=mirostat_mode,
                mirostat_tau=mirostat_tau, mirostat_eta=mirostat_eta, grammar=grammar,
            )  # fmt: skip
        job = _Job(
            prompt=list(prompt), max_tokens=max_tokens, stop=[s.encode("utf-8") for s in stops], sampler=sampler,
            top_logprobs=int(top_logprobs or 0), model=model if model is not None else llama.model_path,
        )  # fmt: skip
        self._queue.put(job)
        return job.future.result()

    def longest_prefix(self, prompt: list[int]) -> int:
        """The longest prefix of ``prompt`` this engine holds or is about to: a slot's cache, a running
        or waiting request's prompt (read from another thread: a hint for routing, not exact)."""
        held = [list(s.cached) for s in self._slots]
        held += [s.job.prompt for s in self._slots if s.job is not None]
        held += [j.prompt for j in list(self._waiting)]
        return max((_common_prefix(h, prompt) for h in held), default=0)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    # -- the engine thread --------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            busy = any(s.job is not None for s in self._slots)
            try:
                job = self._queue.get(block=not busy and not self._waiting)
                if job is None:
                    return
                self._waiting.append(job)
                while True:  # everything else that arrived meanwhile
                    job = self._queue.get_nowait()
                    if job is None:
                        return
                    self._waiting.append(job)
            except queue.Empty:
                pass
            self._admit()
            try:
                self._step()
            except Exception as exc:
                for s in self._slots:
                    if s.job is not None:
                        self._fail(s, exc)

    def _admit(self) -> None:
        """Give waiting jobs free slots, reusing the longest cached prefix among all slots."""
        lib = self._lib
        for job in list(self._waiting):
            free = [s for s in self._slots if s.job is None]
            if not free:
                return
            prompt = job.prompt
            # the whole chunks a slot holds of this prompt; at least the last prompt token is evaluated
            limit = len(prompt) - 1

            def reusable(s: _Slot) -> int:
                return min(_common_prefix(s.cached, prompt), s.whole, limit) // CHUNK * CHUNK

            donor = max(self._slots, key=reusable)
            shared = reusable(donor)
            reading = [s.job.prompt for s in self._slots if s.job is not None and len(s.pending) > 1]
            if any(min(_common_prefix(p, prompt), limit) // CHUNK * CHUNK > shared for p in reading):
                continue  # a slot is reading more of this prompt's prefix right now: wait, then share it
            self._waiting.remove(job)
            best = max(free, key=lambda s: (reusable(s), -s.used))
            if shared == 0:  # nothing to reuse: the slot used longest ago, its cache left for others
                best = min(free, key=lambda s: s.used)
            elif reusable(best) == shared:
                donor = best
            if donor is best or shared == 0:
                lib.llama_memory_seq_rm(self._mem, best.seq, shared, -1)
            else:  # a longer prefix lives in another slot: copy it over, drop the rest
                lib.llama_memory_seq_rm(self._mem, best.seq, -1, -1)
                lib.llama_memory_seq_cp(self._mem, donor.seq, best.seq, -1, -1)
                lib.llama_memory_seq_rm(self._mem, best.seq, shared, -1)
            self._clock += 1
            best.used = self._clock
            best.cached = prompt[:shared]
            best.whole = shared
            best.pending = prompt[shared:]
            best.job = job
            job.reused = shared

    def _step(self) -> None:
        """A chunk of every slot reading its prompt, each in a ``llama_decode`` of its own, then one
        token of every generating slot together in another.

        Where a prompt is cut into pieces changes its logits slightly (measured: up to 1.0 on a
        logit), so prompts are cut at multiples of ``CHUNK`` from position 0, whatever is cached,
        and never evaluated in the same call as other sequences' tokens (llama.cpp splits such a
        batch into micro-batches with as many tokens of each sequence, cutting the prompt where its
        neighbours end). Tokens decoded one per sequence get the same logits alone or beside others
        (see ``without_repacked_weights``). So a request's answer does not depend on what ran before
        or beside it.
        """
        budget = self.n_batch
        prompting = sorted((s for s in self._slots if s.job is not None and len(s.pending) > 1), key=lambda s: s.used)
        for s in prompting:
            if budget <= 0:
                break
            chunk = s.pending[: CHUNK - len(s.cached) % CHUNK]
            budget -= len(chunk)
            self._decode([(s, chunk, len(chunk) == len(s.pending))])
            if len(s.cached) % CHUNK == 0 and s.whole == len(s.cached) - len(chunk):
                s.whole = len(s.cached)
        single = [(s, s.pending[:1], True) for s in self._slots if s.job is not None and len(s.pending) == 1]
        if single:
            self._decode(single)

    def _decode(self, entries: list[tuple[_Slot, list[int], bool]]) -> None:
        lib = self._lib
        batch = self._batch
        n = 0
        logits_at: dict[int, int] = {}
        for s, chunk, last in entries:
            base = len(s.cached)
            for i, tok in enumerate(chunk):
                batch.token[n] = tok
                batch.pos[n] = base + i
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = s.seq
                batch.logits[n] = last and i == len(chunk) - 1
                n += 1
            if last:
                logits_at[s.seq] = n - 1
        batch.n_tokens = n
        t0 = time.perf_counter()
        rc = lib.llama_decode(self.ctx, batch)
        dt = time.perf_counter() - t0
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")
        per_token = dt / n
        for s, chunk, _last in entries:
            job = s.job
            assert job is not None
            s.cached.extend(chunk)
            del s.pending[: len(chunk)]
            if job.completion:
                job.gen_s += per_token * len(chunk)
                job.gen_runs += len(chunk)
            else:
                job.prompt_s += per_token * len(chunk)
                job.prompt_evaluated += len(chunk)
        for s, _chunk, _last in entries:
            if s.seq in logits_at and s.job is not None:
                try:
                    self._sample(s, logits_at[s.seq])
                except Exception as exc:
                    self._fail(s, exc)

    def _sample(self, s: _Slot, idx: int) -> None:
        import llama_cpp

        job = s.job
        assert job is not None
        llama = self.llama
        if job.top_logprobs and not job.completion and job.logprobs is None:
            job.logprobs = self._first_logprobs(idx, job.top_logprobs)
        token = int(job.sampler.sample(self._ctx, idx))
        if llama_cpp.llama_vocab_is_eog(llama._model.vocab, token):
            return self._finish(s, llama.detokenize(job.completion, prev_tokens=job.prompt), "stop")
        job.completion.append(token)
        all_text = llama.detokenize(job.completion, prev_tokens=job.prompt)
        # an incomplete UTF-8 character at the end: no stop check until it is whole (as llama-cpp-python)
        for k, char in enumerate(all_text[-3:]):
            k = 3 - k
            for num, pattern in ((2, 192), (3, 224), (4, 240)):
                if num > k and pattern & char == pattern:
                    job.multibyte_fix = num - k
        s.pending = [token]
        if job.multibyte_fix > 0:
            job.multibyte_fix -= 1
            return None
        found = [x for x in job.stop if x in all_text]
        if found:
            return self._finish(s, all_text[: all_text.index(found[0])], "stop")
        if len(job.completion) >= job.max_tokens:
            return self._finish(s, all_text, "length")
        pruned = getattr(job.sampler, "pruned_grammar", None)
        if pruned is not None and pruned.only_end_left():
            # the grammar allows nothing but end-of-text now: that step need not be computed (the
            # token it would pick is known, and the answer is the same as llama-cpp-python's)
            return self._finish(s, all_text, "stop")
        return None

    def _first_logprobs(self, idx: int, k: int) -> dict[str, Any]:
        """OpenAI ``choices[0].logprobs`` for the first answer token: the model's own distribution."""
        import numpy as np

        ptr = self._lib.llama_get_logits_ith(self.ctx, idx)
        logits = np.ctypeslib.as_array(ptr, shape=(self._n_vocab,)).astype(np.float64)
        return logprobs_entries(self.llama, logits, k)

    def _finish(self, s: _Slot, text: bytes, reason: str) -> None:
        job = s.job
        assert job is not None
        s.job = None
        s.pending = []
        job.sampler.close()
        if self.verbose:
            total = (time.perf_counter() - job.start) * 1000
            pe, ge = job.prompt_evaluated, job.gen_runs
            print(
                f"batch engine: slot {s.seq}, {job.reused} prefix tokens reused\n"
                f"llama_perf_context_print: prompt eval time = {job.prompt_s * 1000:10.2f} ms / {pe:5d} tokens\n"
                f"llama_perf_context_print:        eval time = {job.gen_s * 1000:10.2f} ms / {ge:5d} runs\n"
                f"llama_perf_context_print:       total time = {total:10.2f} ms / {pe + ge:5d} tokens",
                file=sys.stderr, flush=True,
            )  # fmt: skip
        response = {
            "id": f"cmpl-{uuid.uuid4()}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": job.model,
            "choices": [{"text": text.decode("utf-8", errors="ignore"), "index": 0, "logprobs": None, "finish_reason": reason}],
            "usage": {
                "prompt_tokens": len(job.prompt),
                "completion_tokens": len(job.completion),
                "total_tokens": len(job.prompt) + len(job.completion),
            },
        }
        if job.logprobs is not None:
            response["dspex_logprobs"] = job.logprobs
        job.future.set_result(response)

    def _fail(self, s: _Slot, exc: BaseException) -> None:
        job = s.job
        if job is not None:
            job.sampler.close()
        s.job = None
        s.pending = []
        s.cached = []  # what the failed step left in the cache is unknown: forget it
        s.whole = 0
        self._lib.llama_memory_seq_rm(self._mem, s.seq, -1, -1)
        if job is not None and not job.future.done():
            job.future.set_exception(exc)


class EngineLlama:
    """The server's ``Llama`` as the app's chat and completion routes see it (one per request):
    completions the engine can answer go to it, concurrently; everything else goes through the
    original ``Llama``, one at a time under ``lock``."""

    def __init__(self, llama: Any, engine: BatchEngine, lock: threading.Lock) -> None:
        self._llama = llama
        self._engine = engine
        self._fallback = lock
        self.top_logprobs = 0  # set by the chat handler: first-token logprobs wanted
        self.found_logprobs: dict[str, Any] | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._llama, name)

    @staticmethod
    def engine_takes(kwargs: dict[str, Any]) -> bool:
        return (
            not kwargs.get("stream")
            and kwargs.get("logits_processor") is None
            and kwargs.get("stopping_criteria") is None
            and not kwargs.get("logit_bias")
            and not kwargs.get("echo")
            and kwargs.get("suffix") is None
            and kwargs.get("logprobs") is None
            and set(kwargs) <= _ENGINE_ARGS
        )

    def create_completion(self, prompt: Any, **kwargs: Any) -> Any:
        tokens = prompt if isinstance(prompt, list) else None
        if tokens is not None and self.engine_takes(kwargs) and self._engine.fits(len(tokens), kwargs.get("max_tokens", 16)):
            args = {k: v for k, v in kwargs.items() if k in _DEFAULTS}
            response = self._engine.complete(tokens, top_logprobs=self.top_logprobs, **{**_DEFAULTS, **args})
            self.found_logprobs = response.pop("dspex_logprobs", None)
            return response
        return self.locked(self._original_completion, prompt, **kwargs)

    def _original_completion(self, prompt: Any, **kwargs: Any) -> Any:
        if self.top_logprobs and isinstance(prompt, list) and not kwargs.get("stream"):
            self.found_logprobs = first_token_logprobs(self._llama, prompt, self.top_logprobs)
        return self._llama.create_completion(prompt, **kwargs)

    def create_chat_completion(self, **kwargs: Any) -> Any:
        if kwargs.get("stream"):
            return self.locked(self._llama.create_chat_completion, **kwargs)
        # Llama.create_chat_completion itself, with this object as the Llama its chat handler gets
        return type(self._llama).create_chat_completion(self, **kwargs)

    def locked(self, call: Any, *args: Any, **kwargs: Any) -> Any:
        """``call`` on the original ``Llama``, one at a time; a stream holds the lock until it ends."""
        self._fallback.acquire()
        try:
            result = call(*args, **kwargs)
        except BaseException:
            self._fallback.release()
            raise
        if kwargs.get("stream") and not isinstance(result, dict):
            return _release_after(result, self._fallback)
        self._fallback.release()
        return result


def _release_after(chunks: Any, lock: threading.Lock) -> Any:
    try:
        yield from chunks
    finally:
        lock.release()


#: ``Llama.create_completion``'s arguments the engine answers, with their defaults there
_DEFAULTS: dict[str, Any] = {
    "max_tokens": 16, "temperature": 0.8, "top_p": 0.95, "min_p": 0.05, "typical_p": 1.0, "stop": [],
    "frequency_penalty": 0.0, "presence_penalty": 0.0, "repeat_penalty": 1.0, "top_k": 40, "seed": None,
    "tfs_z": 1.0, "mirostat_mode": 0, "mirostat_tau": 5.0, "mirostat_eta": 0.1, "model": None, "grammar": None,
}  # fmt: skip
#: arguments that may be present when the engine answers (the others must be unset or absent)
_ENGINE_ARGS = frozenset(_DEFAULTS) | {"stream", "logprobs", "logits_processor", "stopping_criteria", "logit_bias", "echo", "suffix"}


class _Proxy:
    """What ``get_llama_proxy`` yields: the app's ``LlamaProxy`` with each model behind an ``EngineLlama``."""

    def __init__(self, proxy: Any, server: EngineServer) -> None:
        self._proxy = proxy
        self._server = server

    def __call__(self, model: str | None = None) -> Any:
        return self._server.wrap(self._proxy(model))

    def __iter__(self) -> Any:
        return iter(self._proxy)


class EngineServer:
    """The engines of a server (one per loaded ``Llama``) and the lock of its original path."""

    def __init__(self, slots: int = SLOTS) -> None:
        self.slots = slots
        self.lock = threading.Lock()
        self._engines: dict[int, BatchEngine] = {}
        self._guard = threading.Lock()

    def wrap(self, llama: Any) -> EngineLlama:
        with self._guard:
            engine = self._engines.get(id(llama))
            if engine is None or engine.llama is not llama:
                engine = self._engines[id(llama)] = BatchEngine(llama, self.slots)
        return EngineLlama(llama, engine, self.lock)


def without_repacked_weights() -> None:
    """Load models without llama.cpp's repacked weight layouts (``use_extra_bufts=False``).

    With them (Q4_K repacked for AVX2), a matrix product takes one code path for groups of four
    rows of a batch and another for the rest, and the two round differently: a sequence's logits
    changed by up to 0.7 depending on how many others it was decoded with. Without them every row is
    its own dot product, and a sequence decoded alone or beside seven others gets bit-identical
    logits; decoding and prompt evaluation measured the same CPU time either way (1 and 8
    sequences a step, a 500-token prompt).
    """
    import llama_cpp.llama_cpp as lib

    original = lib.llama_model_default_params
    if getattr(original, "_dspex_no_repack", False):
        return

    def model_default_params() -> Any:
        params = original()
        params.use_extra_bufts = False
        return params

    model_default_params._dspex_no_repack = True  # type: ignore[attr-defined]
    lib.llama_model_default_params = model_default_params


#: ggml's CPU backend computes K-quant matrix products (Q4_K, Q6_K) with a tiled kernel when a batch
#: has 8 rows or more, and with one dot product per row below that; the two round differently
TILED_ENV = "GGML_CPU_TILED_MM"


def without_tiled_matmul() -> None:
    """Turn off ggml's tiled K-quant matrix product (``GGML_CPU_TILED_MM=0``) for this process.

    It takes over from 8 rows a batch: a sequence decoded one token at a time, or beside up to six
    others, got logits bit-identical to its own, and beside seven others logits up to 1.3 apart
    (15 of 17 positions, the top token changed at one). Without it every batch size gives
    bit-identical logits. ggml reads the variable once, at the first matrix product: this must run
    before the model decodes anything. A value already set is left as it is.
    """
    os.environ.setdefault(TILED_ENV, "0")


def install(slots: int = SLOTS) -> None:
    """Route llama-cpp-python's chat and completion endpoints through the batch engine: the app's
    ``get_llama_proxy`` (its lock around the one ``Llama``) is replaced, for those two routes, by one
    that yields the models behind ``EngineLlama``. The other routes keep the app's lock."""
    from llama_cpp.server import app

    if getattr(app.get_llama_proxy, "_dspex_engine", False):
        return
    server = EngineServer(slots)

    async def get_llama_proxy() -> Any:
        yield None if app._llama_proxy is None else _Proxy(app._llama_proxy, server)

    get_llama_proxy._dspex_engine = True  # type: ignore[attr-defined]
    app.get_llama_proxy = get_llama_proxy
