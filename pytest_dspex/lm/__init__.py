"""The LM client, split by job.

* ``types``      ``LMRequest`` (what the prompt layer asks), ``Constraint``, ``Completion`` (what comes back)
* ``client``     ``LM``: the request path (cache → sharing → breaker → budget → retries → attempt) and accounting
* ``transport``  one HTTP attempt: one client path over a ``Wire`` (aiohttp; httpx over a given transport) → JSON or ``LMError``
* ``capabilities`` what an endpoint accepts (constrained-decoding dialects, logprobs), owned by the LM
* ``sharing``    in-flight request sharing and hedged requests
* ``resilience`` retry policy, the circuit breaker (state machine in its docstring), the AIMD in-flight limiter
* ``secrets``    the credentials holder and ``redact_url``
* ``cache``      the response cache (memory LRU in front of a storage tier: diskcache by default)
* ``usage``      token/call/cost accounting and the budget
* ``coordinator`` the run's limits (in flight, back-pressure, breaker, budget), hosted by the xdist controller
* ``link``       a worker's side of them: ``RunLink``, ``SharedLimiter``, ``SharedBudget`` (own limits when lost)
* ``prices``     list prices of well-known models (``--dspex-estimate``)
* ``estimates``  the tokens an estimate reckons a call would take (prompt by the model's rule, answer from the labels)
"""

from typing import TYPE_CHECKING

from .._support.lazy import lazy_attributes

# Names load on first use (PEP 562): the plugin's option check needs only ``secrets``, and a pytest
# run that does not use the plugin should not pay for the client (aiohttp, adapters, tracing).
_LAZY: dict[str, str] = {
    **dict.fromkeys(["ResponseCache", "Storage", "cache_key"], ".cache"),
    **dict.fromkeys(["LM"], ".client"),
    **dict.fromkeys(["Completion", "LMRequest"], ".types"),
    **dict.fromkeys(["AdaptiveLimiter", "Breaker", "RetryPolicy"], ".resilience"),
    **dict.fromkeys(["redact_url"], ".secrets"),
    **dict.fromkeys(["Budget", "Usage", "track_usage"], ".usage"),
}

__getattr__ = lazy_attributes(__name__, _LAZY)


if TYPE_CHECKING:
    from .cache import ResponseCache, Storage, cache_key
    from .client import LM
    from .resilience import AdaptiveLimiter, Breaker, RetryPolicy
    from .secrets import redact_url
    from .types import Completion, LMRequest
    from .usage import Budget, Usage, track_usage

__all__ = [
    "LM",
    "AdaptiveLimiter",
    "Breaker",
    "Budget",
    "Completion",
    "LMRequest",
    "ResponseCache",
    "RetryPolicy",
    "Storage",
    "Usage",
    "cache_key",
    "redact_url",
    "track_usage",
]
