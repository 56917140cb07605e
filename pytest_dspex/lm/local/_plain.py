"""The embedded server's ``dspex-plain`` prompt: the messages' contents as plain text.

The embedded model is a base model with no chat template: ``format_plain`` joins the message
contents with blank lines and adds nothing after the last one, so the model simply continues the
prompt. The server's chat handler and the instance pool (which picks an instance by the prompt's
cached prefix) both build it here.
"""

from __future__ import annotations

from typing import Any

__all__ = ["format_plain"]


def format_plain(messages: list[dict[str, Any]], **kwargs: Any) -> Any:
    from llama_cpp.llama_chat_format import ChatFormatterResponse

    parts = [str(m.get("content") or "") for m in messages]
    return ChatFormatterResponse(prompt="\n\n".join(p for p in parts if p))
