"""The LM client, split by job.

* ``client``     ``LM``: the request path (cache → sharing → breaker → budget → retries → attempt) and accounting
* ``transport``  one HTTP attempt (aiohttp, or httpx over a given transport; one client per event loop) → JSON or ``LMError``
* ``sharing``    in-flight request sharing and hedged requests
* ``resilience`` retry policy, the circuit breaker (state machine in its docstring), the AIMD in-flight limiter
* ``secrets``    the credentials holder and ``redact_url``
* ``cache``      the response cache (memory LRU in front of a storage tier: diskcache by default)
* ``usage``      token/call/cost accounting and the budget
"""

from .cache import ResponseCache, Storage, cache_key
from .client import LM, Completion
from .resilience import AdaptiveLimiter, Breaker, RetryPolicy
from .secrets import redact_url
from .usage import Budget, Usage, track_usage

__all__ = [
    "LM",
    "AdaptiveLimiter",
    "Breaker",
    "Budget",
    "Completion",
    "ResponseCache",
    "RetryPolicy",
    "Storage",
    "Usage",
    "cache_key",
    "redact_url",
    "track_usage",
]
