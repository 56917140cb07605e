"""The LM client: transport, cache, breaker, retries, limiter and usage accounting."""

from .cache import ResponseCache, cache_key
from .client import LM, Completion
from .resilience import Breaker, RetryPolicy
from .usage import Budget, Usage, track_usage

__all__ = ["LM", "Breaker", "Budget", "Completion", "ResponseCache", "RetryPolicy", "Usage", "cache_key", "track_usage"]
