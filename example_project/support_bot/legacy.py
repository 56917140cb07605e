"""Code that was here before pytest-dspex: a function that calls an OpenAI-compatible API with the
``openai`` SDK. It is gated as it is (``tests/test_route.py``); the test run points the SDK at the
session's loopback endpoint through the environment (``dspex_openai_env = true`` in pytest.ini),
so its calls are cached, replayed and counted like the plugin's own."""

from __future__ import annotations

from typing import Any

_client: Any = None
TEAMS = ("billing", "technical", "account", "other")

PROMPT = """Route each customer message to a team: billing, technical, account or other.

Message: I was charged twice for my subscription.
Team: billing

Message: The app crashes when I open the settings page.
Team: technical

Message: I forgot my password and cannot log in.
Team: account

Message: Do you have an office in Berlin?
Team: other

Message: Please refund my last payment.
Team: billing

Message: Change the email address on my account.
Team: account

Message: The page shows error 500 when I upload a file.
Team: technical

Message: Can I bring my dog to your store?
Team: other

Message: {message}
Team:"""


def client() -> Any:
    """One client for the process, built on first use from OPENAI_BASE_URL / OPENAI_API_KEY."""
    global _client
    if _client is None:
        import openai

        _client = openai.OpenAI()
    return _client


def route(message: str) -> str:
    """The team for a customer message, as one lower-case word."""
    reply = client().chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": PROMPT.format(message=message)}],
        max_tokens=4,
        stop=["\n"],
        temperature=0,
    )
    answer = (reply.choices[0].message.content or "").lower()
    return next((team for team in TEAMS if team in answer), "other")
