"""What the embedded-server tests share: a chat completion request, its body, and prompts."""

from __future__ import annotations

from typing import Any


def ask(url: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST one chat completion (temperature 0) to the embedded server at ``url``; the JSON answer."""
    import httpx

    r = httpx.post(url + "/chat/completions", json={"model": "gemma-3-270m", "temperature": 0, **body}, timeout=600)
    r.raise_for_status()
    return dict(r.json())


def body(content: str, **extra: Any) -> dict[str, Any]:
    """A one-message request of at most 24 tokens ending at the line."""
    return {"messages": [{"role": "user", "content": content}], "max_tokens": 24, "stop": ["\n"], **extra}


#: few-shot prompts that share a long prefix and differ at the end
SHOTS = "".join(f"Message: {m}\nProduct: {p}\n\n" for m, p in [
    ("My Pixel 8 will not turn on.", "Pixel 8"), ("Is the Apple Watch waterproof?", "Apple Watch"),
    ("The Echo Dot lost its wifi.", "Echo Dot"), ("My Kindle screen froze.", "Kindle"),
])  # fmt: skip
FEW_SHOT = [SHOTS + f"Message: {m}\nProduct:" for m in (
    "The PlayStation 5 keeps restarting.", "Can I return the Fitbit Charge 6?", "My AirPods case is cracked.",
    "Where is my Nintendo Switch order?",
)]  # fmt: skip
