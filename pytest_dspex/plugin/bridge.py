"""Core events forwarded to the plugin's hooks (``pytest_dspex_lm_call``, ``pytest_dspex_example_result``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["forward_events"]


def forward_events(hook: Any) -> Callable[[], None]:
    """Subscribe to the core's events and call the matching hooks; returns the unsubscriber."""
    from ..observe import events

    def dispatch(ev: events.Event) -> None:
        if isinstance(ev, events.LMCallEvent):
            hook.pytest_dspex_lm_call(event=ev)
        elif isinstance(ev, events.ExampleEvent):
            hook.pytest_dspex_example_result(event=ev)

    return events.subscribe(dispatch)
