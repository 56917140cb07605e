"""Entry point of the embedded llama.cpp server: ``python -m pytest_dspex._llama_server ARGS``.

It registers a ``dspex-plain`` chat format and hands over to ``llama_cpp.server``. The embedded
model is a *base* model with no chat template: its ``gemma`` format drops system messages, and
turn markers confuse it. ``dspex-plain`` joins the message contents as plain text with blank
lines between them and adds nothing after the last one, so the model simply continues the prompt
(the compact adapter's prompt ends with the first output label, e.g. ``Answer:``).
"""

from __future__ import annotations

from typing import Any


def format_plain(messages: list[dict[str, Any]], **kwargs: Any) -> Any:
    from llama_cpp.llama_chat_format import ChatFormatterResponse

    parts = [str(m.get("content") or "") for m in messages]
    return ChatFormatterResponse(prompt="\n\n".join(p for p in parts if p))


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
    from llama_cpp.llama_chat_format import register_chat_format
    from llama_cpp.server.__main__ import main as server_main

    register_chat_format("dspex-plain")(format_plain)
    server_main()  # type: ignore[no-untyped-call]


if __name__ == "__main__":
    main()
