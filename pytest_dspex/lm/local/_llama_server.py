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


def format_plain(messages: list[dict[str, Any]], **kwargs: Any) -> Any:
    from llama_cpp.llama_chat_format import ChatFormatterResponse

    parts = [str(m.get("content") or "") for m in messages]
    return ChatFormatterResponse(prompt="\n\n".join(p for p in parts if p))


def first_token_logprobs(llama: Any, prompt: str, k: int) -> dict[str, Any] | None:
    """OpenAI ``choices[0].logprobs`` for the first token after ``prompt`` (None if it cannot be read)."""
    import numpy as np

    try:
        tokens = llama.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
        cached = list(llama._input_ids[: llama.n_tokens])
        prefix = 0
        for a, b in zip(cached, tokens, strict=False):
            if a != b:
                break
            prefix += 1
        prefix = min(prefix, len(tokens) - 1)  # evaluate at least the last token: its logits are needed
        llama.n_tokens = prefix  # eval drops the cached positions from here on
        llama.eval(tokens[prefix:])
        logits = np.ctypeslib.as_array(llama._ctx.get_logits(), shape=(llama.n_vocab(),)).astype(np.float64)
    except Exception:  # an API this llama-cpp-python does not have: answer without logprobs
        return None
    top = np.argpartition(-logits, k)[:k] if 0 < k < logits.size else np.arange(logits.size)
    log_z = float(logits.max() + np.log(np.exp(logits - logits.max()).sum()))
    ranked = sorted(((float(logits[i]) - log_z, int(i)) for i in top), reverse=True)
    entries = [
        {"token": llama.detokenize([i]).decode("utf-8", errors="replace"), "logprob": lp, "bytes": None}
        for lp, i in ranked
    ]
    first = dict(entries[0])
    return {"content": [{**first, "top_logprobs": entries}], "refusal": None}


def plain_handler() -> Any:
    """The ``dspex-plain`` chat handler: llama-cpp-python's, plus first-token logprobs without ``logits_all``."""
    from llama_cpp.llama_chat_format import chat_formatter_to_chat_completion_handler

    base = chat_formatter_to_chat_completion_handler(format_plain)

    def handler(*, llama: Any, messages: list[dict[str, Any]], logprobs: bool | None = None,
                top_logprobs: int | None = None, stream: bool = False, **kwargs: Any) -> Any:  # fmt: skip
        wanted = bool(logprobs) and not stream and not getattr(llama, "_logits_all", False)
        found = first_token_logprobs(llama, format_plain(messages).prompt, top_logprobs or 1) if wanted else None
        if getattr(llama, "_logits_all", False):
            return base(llama=llama, messages=messages, logprobs=logprobs, top_logprobs=top_logprobs, stream=stream, **kwargs)
        response = base(llama=llama, messages=messages, stream=stream, **kwargs)
        if found is not None:
            response["choices"][0]["logprobs"] = found
        return response

    return handler


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

    LlamaChatCompletionHandlerRegistry().register_chat_completion_handler("dspex-plain", plain_handler(), overwrite=True)  # type: ignore[no-untyped-call]
    server_main()  # type: ignore[no-untyped-call]


if __name__ == "__main__":
    main()
