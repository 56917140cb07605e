# mypy: disable-error-code="arg-type,index"
# (llama_cpp types its chat handlers with TypedDict messages and response unions; this module passes
# plain dicts through them on purpose, so the two checks only restate that.)
"""Entry point of the embedded llama.cpp server: ``python -m pytest_dspex.lm.local._llama_server ARGS``.

It registers a ``dspex-plain`` chat format and hands over to ``llama_cpp.server``. The embedded
model is a *base* model with no chat template: its ``gemma`` format drops system messages, and
turn markers confuse it. ``dspex-plain`` joins the message contents as plain text with blank
lines between them and adds nothing after the last one, so the model simply continues the prompt
(the compact adapter's prompt ends with the first output label, e.g. ``Answer:``).

The server runs with ``logits_all=False``: llama-cpp-python's default computes the output layer
for every prompt token (Gemma's 262k-token vocabulary makes that most of a prompt's cost), which
doubled the time of a new 250-token prompt here (1.4 s against 0.68 s). llama-cpp-python then
refuses ``logprobs``; ``dspex-plain`` answers them itself, for the *first* answer token only — what
a calibrated classifier needs (``pytest_dspex.programs.calibration``): it evaluates the prompt (reusing the
cached prefix as generation would), reads the last position's logits and returns the top
``top_logprobs`` tokens of the model's own distribution (before any grammar), then generates as
usual from the already evaluated prompt.
"""

from __future__ import annotations

from typing import Any

from ._batched import _common_prefix, first_token_logprobs, logprobs_entries
from ._plain import format_plain

__all__ = ["first_token_logprobs", "format_plain", "logprobs_entries", "main"]


def plain_handler() -> Any:
    """The ``dspex-plain`` chat handler: llama-cpp-python's, plus first-token logprobs without ``logits_all``."""
    from llama_cpp.llama_chat_format import chat_formatter_to_chat_completion_handler

    from ._batched import EngineLlama

    base = chat_formatter_to_chat_completion_handler(format_plain)

    def handler(*, llama: Any, messages: list[dict[str, Any]], logprobs: bool | None = None,
                top_logprobs: int | None = None, stream: bool = False, **kwargs: Any) -> Any:  # fmt: skip
        wanted = bool(logprobs) and not stream and not getattr(llama, "_logits_all", False)
        if isinstance(llama, EngineLlama):  # the batch engine (or its fallback) reads them on the way
            llama.top_logprobs = (top_logprobs or 1) if wanted else 0
            response = base(llama=llama, messages=messages, stream=stream, **kwargs)
            if wanted and llama.found_logprobs is not None:
                response["choices"][0]["logprobs"] = llama.found_logprobs
            return response
        found = None
        if wanted:
            found = first_token_logprobs(llama, format_plain(messages).prompt, top_logprobs or 1)
        if getattr(llama, "_logits_all", False):
            return base(llama=llama, messages=messages, logprobs=logprobs, top_logprobs=top_logprobs, stream=stream, **kwargs)
        response = base(llama=llama, messages=messages, stream=stream, **kwargs)
        if found is not None:
            response["choices"][0]["logprobs"] = found
        return response

    return handler


#: raw candidates a grammar checks before the whole vocabulary (at least 4x what the sampler keeps)
PRUNED_CANDIDATES = 64


def candidates_needed(temp: float, top_k: int, mirostat_mode: int) -> int | None:
    """How many grammar-valid candidates the rest of llama-cpp-python's sampler chain uses, or None
    when it uses them all (then the grammar must see the whole vocabulary).

    At temperature 0 the chain is greedy: the best valid token. Above it, with ``top_k`` and no
    mirostat, the chain keeps the ``top_k`` best valid tokens and draws among them. Negative
    temperatures and mirostat sample the whole distribution.
    """
    if temp == 0.0:
        return 1
    if temp > 0.0 and mirostat_mode == 0 and 0 < top_k <= PRUNED_CANDIDATES * 4:
        return top_k
    return None


class PrunedGrammar:
    """A grammar sampler that checks the best raw candidates first and the whole vocabulary only if
    too few of them are valid; it takes the grammar's place in llama-cpp-python's sampler chain.

    llama.cpp's grammar sampler decodes and matches every token of the vocabulary for every token
    it samples: with Gemma's 262k tokens that was ~30% of the embedded server's time per request
    (about 0.1 s a sampled token). The chain after the grammar only ever uses the ``need`` best valid
    tokens (greedy: one; ``top_k``: k). If the ``n`` best raw candidates hold at least ``need`` valid
    ones, those are the same tokens the whole-vocabulary pass finds (every valid token outside them
    scores lower), so the chain picks, or draws, the same token. Otherwise it falls back to the
    whole vocabulary.
    """

    def __init__(self, model: Any, grammar: Any, need: int, n: int = PRUNED_CANDIDATES) -> None:
        import llama_cpp
        import numpy as np

        self._lib = llama_cpp
        self.need = need
        self.n = max(n, 4 * need)
        self.grammar = llama_cpp.llama_sampler_init_grammar(
            model.vocab, grammar._grammar.encode("utf-8"), grammar._root.encode("utf-8")
        )
        if not self.grammar:
            raise ValueError("llama.cpp could not parse the grammar")
        self._small = (llama_cpp.llama_token_data * self.n)()
        self._view = np.ctypeslib.as_array(self._small)
        self.full_passes = 0
        self._model = model
        self._text = grammar._grammar
        self.accepted: list[int] = []

    def apply(self, cur_p: Any) -> None:
        import numpy as np

        lib = self._lib
        arr = cur_p.contents
        size = int(arr.size)
        if size <= self.n:
            lib.llama_sampler_apply(self.grammar, cur_p)
            return
        data = np.ctypeslib.as_array(arr.data, shape=(size,))
        logits = data["logit"]
        top = np.argpartition(logits, size - self.n)[size - self.n :]
        top = top[np.lexsort((data["id"][top], -logits[top]))]  # best first, ties by token id as greedy's scan
        small = self._view
        small[:] = data[top]
        sub = lib.llama_token_data_array(data=self._small, size=self.n, selected=-1, sorted=False)
        lib.llama_sampler_apply(self.grammar, ctypes_byref(sub))
        if int(np.count_nonzero(np.isfinite(small["logit"]))) >= self.need:
            data[: self.n] = small
            arr.size = self.n
            arr.sorted = False
            arr.selected = -1
        else:
            self.full_passes += 1
            lib.llama_sampler_apply(self.grammar, cur_p)

    def accept(self, token: int) -> None:
        self._lib.llama_sampler_accept(self.grammar, token)
        self.accepted.append(int(token))

    def only_end_left(self) -> bool:
        """Whether the grammar, after the tokens accepted so far, allows nothing but end-of-text.

        A few probe tokens settle the usual case (text or a number goes on) in microseconds; only
        when none of them may follow is the whole vocabulary checked, once per grammar and tokens
        accepted (a classifier's few labels: a handful of passes for a whole run)."""
        import numpy as np

        probes = _probe_tokens(self._model)
        arr = (self._lib.llama_token_data * len(probes))()
        view = np.ctypeslib.as_array(arr)
        view["id"] = probes
        view["logit"] = 0.0
        view["p"] = 0.0
        sub = self._lib.llama_token_data_array(data=arr, size=len(probes), selected=-1, sorted=False)
        self._lib.llama_sampler_apply(self.grammar, ctypes_byref(sub))
        if np.isfinite(view["logit"]).any():
            return False
        key = (self._text, tuple(self.accepted))
        done = _END_LEFT.get(key)
        if done is None:
            vocab = self._model.vocab
            n_vocab = int(self._lib.llama_vocab_n_tokens(vocab))
            arr = (self._lib.llama_token_data * n_vocab)()
            view = np.ctypeslib.as_array(arr)
            view["id"] = np.arange(n_vocab, dtype=np.int32)
            view["logit"] = 0.0
            view["p"] = 0.0
            whole = self._lib.llama_token_data_array(data=arr, size=n_vocab, selected=-1, sorted=False)
            self._lib.llama_sampler_apply(self.grammar, ctypes_byref(whole))
            allowed = np.flatnonzero(np.isfinite(view["logit"]))
            done = all(self._lib.llama_vocab_is_eog(vocab, int(view["id"][i])) for i in allowed)
            if len(_END_LEFT) > 4096:
                _END_LEFT.clear()
            _END_LEFT[key] = done
        return done

    def free(self) -> None:
        if self.grammar:
            self._lib.llama_sampler_free(self.grammar)
            self.grammar = None


#: (grammar, tokens accepted) -> whether only end-of-text may follow (``PrunedGrammar.only_end_left``)
_END_LEFT: dict[tuple[str, tuple[int, ...]], bool] = {}
_PROBES: dict[int, list[int]] = {}


def _probe_tokens(model: Any) -> list[int]:
    """Tokens that go on most text, numbers and lines: if the grammar allows one, it is not done."""
    key = id(model)
    if key not in _PROBES:
        ids: list[int] = []
        for text in (" ", "\n", "a", "e", " the", "0", "1", ".", ",", "-", "A", "\"", ":"):
            ids.extend(int(t) for t in model.tokenize(text.encode("utf-8"), False, True))
        _PROBES[key] = sorted(set(ids))
    return _PROBES[key]


def ctypes_byref(obj: Any) -> Any:
    import ctypes

    return ctypes.byref(obj)


def install_pruned_grammar() -> None:
    """Make ``Llama`` sample under a grammar with ``PrunedGrammar`` wherever that gives the same tokens."""
    import llama_cpp
    from llama_cpp.llama import Llama

    original = Llama._init_sampler
    if getattr(original, "_dspex_pruned", False):
        return

    def init_sampler(self: Any, *args: Any, **kwargs: Any) -> Any:
        grammar = kwargs.get("grammar")
        need = candidates_needed(
            float(kwargs.get("temp", 0.80)), int(kwargs.get("top_k", 40)), int(kwargs.get("mirostat_mode", 0))
        )
        if grammar is None or args or need is None or kwargs.get("logits_processor") is not None:
            return original(self, *args, **kwargs)
        pruned = PrunedGrammar(self._model, grammar, need)
        # llama-cpp-python's chain is penalties, grammar, then greedy or top-k ... dist: build it
        # without the grammar and put the pruned grammar back in its place, after the penalties
        chain = original(self, **{**kwargs, "grammar": None})
        tail = []
        while llama_cpp.llama_sampler_chain_n(chain.sampler) > 1:
            tail.append(llama_cpp.llama_sampler_chain_remove(chain.sampler, 1))
        chain.add_custom(pruned.apply)
        for smpl in tail:
            llama_cpp.llama_sampler_chain_add(chain.sampler, smpl)
        chain._exit_stack.callback(pruned.free)
        chain_sample = chain.sample

        llama = self

        def sample(ctx: Any, idx: int = -1) -> int:
            token = int(chain_sample(ctx, idx))
            pruned.accept(token)  # a custom sampler has no accept of its own: the grammar advances here
            # nothing but end-of-text may follow: the next step need not be computed (``eval`` skips it)
            llama._dspex_end_left = not llama_cpp.llama_vocab_is_eog(self._model.vocab, token) and pruned.only_end_left()
            return token

        chain.sample = sample
        chain.pruned_grammar = pruned
        return chain

    init_sampler._dspex_pruned = True  # type: ignore[attr-defined]
    setattr(Llama, "_init_sampler", init_sampler)  # noqa: B010 - a method replaced on purpose


#: a prompt is evaluated in chunks of this many tokens from position 0, and a cached prefix is reused in
#: whole chunks only (``install_canonical_prompts``)
CHUNK = 32


def _eval_without_logits(llama: Any, tokens: list[int]) -> None:
    """``Llama.eval`` of a prompt chunk whose logits nobody reads: no output row is asked for, so
    llama.cpp skips the output layer (Gemma's 262k-token vocabulary: 26 of a decoding step's 44 ms
    here). The chunk's keys and values are computed exactly as with the row asked for (the output
    rows are picked after the last layer's attention), so every later logit is bit-identical."""
    n_past = llama.n_tokens
    llama._ctx.kv_cache_seq_rm(-1, n_past, -1)
    llama._batch.set_batch(batch=tokens, n_past=n_past, logits_all=False)
    llama._batch.batch.logits[len(tokens) - 1] = False
    llama._ctx.decode(llama._batch)
    llama.input_ids[n_past : n_past + len(tokens)] = tokens
    llama.n_tokens += len(tokens)


class PrefixStore:
    """Evaluated prompt prefixes kept for later, shared by the server's model instances.

    The candidate search evaluates one demo set's examples back to back, then another's, and comes
    back to the first at its next racing step (and for its baseline); an instance keeps only the
    prompt it evaluated last, so it evaluated the same 300-token prefix again each time, and each
    instance of the pool did it for itself. Here a prompt that needed ``NEW_PREFIX`` or more new
    tokens leaves a copy of its keys and values (``llama_state_seq_get_data``, ~18 KB a token for
    Gemma 3 270M) in a small store; a later prompt on any instance that shares a longer whole-chunk
    prefix with a stored one than with what the instance holds loads it instead of computing it.
    The values loaded are the bytes computed for those positions, so answers are bit-identical.
    """

    NEW_PREFIX = 96
    ENTRIES = 12

    def __init__(self) -> None:
        import threading

        self._lock = threading.Lock()
        self._entries: list[tuple[list[int], int, Any]] = []  # (tokens, whole chunks' length, state)
        self.loads = 0

    def save(self, llama: Any) -> None:
        import ctypes

        import llama_cpp

        whole = int(llama._dspex_whole)
        if whole <= 0:
            return
        ctx = llama._ctx.ctx
        size = int(llama_cpp.llama_state_seq_get_size(ctx, 0))
        buf = (ctypes.c_uint8 * size)()
        if int(llama_cpp.llama_state_seq_get_data(ctx, buf, size, 0)) != size:
            return
        tokens = [int(t) for t in llama.input_ids[:whole]]
        with self._lock:  # an entry the new one extends is dropped; the oldest go beyond ENTRIES
            self._entries = [e for e in self._entries if not (len(e[0]) <= whole and tokens[: len(e[0])] == e[0])]
            self._entries.append((tokens, whole, (buf, size)))
            del self._entries[: -self.ENTRIES]

    def restore(self, llama: Any, tokens: list[int], chunk: int) -> list[int]:
        """Load the longest stored prefix of this prompt (``input_ids[:n_tokens] + tokens``) when it
        is longer than what ``llama`` holds; return the prompt tokens still to evaluate."""
        import llama_cpp

        if not self._entries:
            return tokens
        past = int(llama.n_tokens)
        prompt = [int(t) for t in llama.input_ids[:past]] + [int(t) for t in tokens]
        best, use = None, past + chunk  # worth it from one chunk more than the instance holds
        with self._lock:
            for entry in reversed(self._entries):
                n = min(_common_prefix(entry[0], prompt), entry[1]) // chunk * chunk
                if n >= use:
                    best, use = entry, n
            if best is None:
                return tokens
            buf, size = best[2]
            llama._ctx.kv_cache_clear()
            loaded = int(llama_cpp.llama_state_seq_set_data(llama._ctx.ctx, buf, size, 0)) == size
        if not loaded:  # cannot happen with one model; if it does, the prompt is evaluated whole
            llama._ctx.kv_cache_clear()
            llama.n_tokens = llama._dspex_whole = 0
            return prompt
        self.loads += 1
        llama._ctx.kv_cache_seq_rm(-1, use, -1)
        llama.input_ids[:use] = prompt[:use]
        llama.n_tokens = llama._dspex_whole = use
        return prompt[use:]


#: the server's stored prefixes (one store for all its model instances)
PREFIXES = PrefixStore()


def install_canonical_prompts(chunk: int = CHUNK) -> None:
    """Make an answer a function of its prompt alone, not of what the server ran before it.

    llama-cpp-python reuses the longest prefix a new prompt shares with the cached one and evaluates
    the rest in one batch, so where a prompt is cut depends on the request before it; a token's
    logits depend slightly on the batch it was computed in (up to ~0.1 in a log-probability here),
    and a close call then flips: a triage message answered right alone came out wrong inside a
    40-example run with the cache off — "1 regressed" against a golden of the unchanged program.

    Here every prompt is evaluated in chunks of ``chunk`` tokens at fixed positions (0-31, 32-63, …),
    and a cached prefix is reused only up to the last whole chunk that was evaluated as part of a
    prompt: every prompt token is computed in the same batch whatever ran before. Decoding (one token
    a step) is unchanged. A request re-evaluates at most ``chunk - 1`` tokens more than before.
    """
    from llama_cpp import Llama

    if getattr(Llama.eval, "_dspex_canonical", False):
        return
    original_generate = Llama.generate
    original_eval = Llama.eval

    def generate(self: Any, tokens: Any, *args: Any, **kwargs: Any) -> Any:
        self._dspex_prompt_len = len(tokens)
        self._dspex_end_left = False
        return original_generate(self, tokens, *args, **kwargs)

    def eval(self: Any, tokens: Any) -> None:
        tokens = list(tokens)
        end = getattr(self, "_dspex_prompt_len", 0)
        if not tokens or self.n_tokens + len(tokens) > end:  # a decoding step (or not a prompt of ours)
            if len(tokens) == 1 and getattr(self, "_dspex_end_left", False):
                # the grammar is complete: the next token can only be end-of-text, whatever the
                # logits say, so this step is not computed (the sampler reads the last ones; no
                # later prompt reuses a generated token's cache, see ``keep`` below)
                self.input_ids[self.n_tokens] = tokens[0]
                self.n_tokens += 1
                return
            original_eval(self, tokens)
            return
        past = self.n_tokens
        keep = min(past, getattr(self, "_dspex_whole", 0)) // chunk * chunk
        if keep < past:  # the cached tail was not cut where this prompt is: evaluate it again
            tokens = [int(t) for t in self.input_ids[keep:past]] + tokens
            self.n_tokens = keep
        self._dspex_whole = keep
        self._ctx.kv_cache_seq_rm(-1, keep, -1)
        tokens = PREFIXES.restore(self, tokens, chunk)
        fresh = len(tokens)
        i = 0
        while i < len(tokens):
            take = min(chunk - self.n_tokens % chunk, len(tokens) - i)
            if i + take < len(tokens):
                _eval_without_logits(self, tokens[i : i + take])
            else:  # the prompt's last chunk: its last token's logits pick the first answer token
                original_eval(self, tokens[i : i + take])
            i += take
        self._dspex_whole = self.n_tokens // chunk * chunk
        if fresh >= PrefixStore.NEW_PREFIX:  # a prefix this instance had to compute: keep it for later
            PREFIXES.save(self)

    eval._dspex_canonical = True  # type: ignore[attr-defined]
    setattr(Llama, "generate", generate)  # noqa: B010 - methods replaced on purpose
    setattr(Llama, "eval", eval)  # noqa: B010


def _watch_owner() -> None:
    """Exit when the test run that started us is gone (Ctrl-C, crash, kill -9): no orphans."""
    import os
    import threading
    import time

    owner = int(os.environ.get("DSPEX_OWNER_PID", "0") or 0)
    if not owner:
        return

    def watch() -> None:
        while True:
            try:
                os.kill(owner, 0)
            except ProcessLookupError:
                os._exit(0)
            except PermissionError:
                pass
            time.sleep(1.0)

    threading.Thread(target=watch, name="owner-watch", daemon=True).start()


def main() -> None:
    _watch_owner()
    from llama_cpp.llama_chat_format import LlamaChatCompletionHandlerRegistry
    from llama_cpp.server.__main__ import main as server_main

    from . import _batched as batched
    from . import _pool as pool

    install_pruned_grammar()
    if batched.enabled():  # prompts in fixed chunks of its own; one engine per instance
        batched.without_repacked_weights()
        batched.without_tiled_matmul()
        pool.install(engines=batched.SLOTS)
    else:
        install_canonical_prompts()
        if pool.instances() > 1:
            pool.install()
    LlamaChatCompletionHandlerRegistry().register_chat_completion_handler("dspex-plain", plain_handler(), overwrite=True)  # type: ignore[no-untyped-call]
    server_main()  # type: ignore[no-untyped-call]


if __name__ == "__main__":
    main()
