"""Every error pytest-dspex raises, in one tree.

Third-party errors (httpx, pybreaker, diskcache, pydantic, json) are mapped to these at one
boundary each, with ``raise ... from exc``, so callers only ever catch our own classes::

    DspexError
    ├── ConfigError                 bad option, marker argument or program definition
    ├── SignatureError              a signature that cannot be built or parsed
    ├── DatasetError                a bad dataset file or row (names the file and line)
    ├── GoldenFileError             a corrupted, newer-schema or mismatched golden file
    │   └── GoldenStaleError        the program's signature no longer matches its golden
    ├── MetricError                 a metric returned something that is not a score
    ├── CompileStoppedError         a compile stopped at its error budget (the LM errors, by kind)
    ├── AdapterParseError           an LM answer that does not fit the signature
    ├── ModelRefusedError           the LM refused to answer (``content: null`` with a ``refusal``)
    └── LMError                     anything that went wrong talking to an LM
        ├── LMUnavailableError      the endpoint cannot be reached
        │   └── CircuitOpenError    the breaker is open: failing fast without a request (kind
        │                           ``rate_limited`` when nothing but 429s opened it)
        ├── LMTimeoutError          no answer within the timeout (after retries)
        ├── LMHTTPError             a non-success HTTP status (after retries)
        ├── LMResponseError         a body that is not a chat completion (garbled, non-JSON)
        ├── CacheMissError          replay mode and the request is not in the cache
        └── BudgetExceededError     the session's cost or call budget is spent

Each class has a short ``kind`` used to group errors in evaluation results and reports (a 429, or
a breaker opened by nothing but 429s, is ``rate_limited``).
"""

from __future__ import annotations

__all__ = [
    "AdapterParseError",
    "BudgetExceededError",
    "CacheMissError",
    "CircuitOpenError",
    "CompileStoppedError",
    "ConfigError",
    "DatasetError",
    "DspexError",
    "GoldenFileError",
    "GoldenStaleError",
    "LMError",
    "LMHTTPError",
    "LMResponseError",
    "LMTimeoutError",
    "LMUnavailableError",
    "MetricError",
    "ModelRefusedError",
    "SignatureError",
]


class DspexError(Exception):
    """Base class of every pytest-dspex error."""

    kind = "error"


class ConfigError(DspexError):
    kind = "config"


class SignatureError(DspexError):
    kind = "signature"


class DatasetError(DspexError):
    kind = "dataset"


class GoldenFileError(DspexError):
    kind = "golden"


class GoldenStaleError(GoldenFileError):
    """The golden was compiled for another signature (a field renamed, added, retyped, new instructions).

    ``changes`` lists what changed, one phrase each; the message says how to recompile.
    """

    kind = "golden_stale"

    def __init__(self, message: str, *, changes: list[str] | None = None) -> None:
        super().__init__(message)
        self.changes = list(changes or [])


class MetricError(DspexError):
    kind = "metric"


class AdapterParseError(DspexError):
    """The LM answered, but the answer does not fit the signature's output fields."""

    kind = "parse"

    def __init__(self, message: str, *, completion: str = "", adapter: str = "") -> None:
        super().__init__(message)
        self.completion = completion
        self.adapter = adapter


class CompileStoppedError(DspexError):
    """A compile stopped because its LM calls failed beyond the error budget: no golden from errors."""

    kind = "compile_stopped"


class ModelRefusedError(DspexError):
    """The model answered with a refusal instead of content: its answer, scored 0, said as "refused"."""

    kind = "refused"

    def __init__(self, message: str, *, refusal: str = "") -> None:
        super().__init__(message)
        self.refusal = refusal


class LMError(DspexError):
    kind = "lm"
    retryable = False
    retries = 0  # retries made before this error was raised


class LMUnavailableError(LMError):
    kind = "lm_unavailable"
    retryable = True


class CircuitOpenError(LMUnavailableError):
    kind = "lm_unavailable"
    retryable = False


class LMTimeoutError(LMError):
    kind = "lm_timeout"
    retryable = True


class LMHTTPError(LMError):
    """A non-success status; a 429's ``kind`` is ``rate_limited`` (the endpoint's quota or rate limit)."""

    kind = "lm_http"

    def __init__(self, message: str, *, status: int, retry_after: float | None = None) -> None:
        super().__init__(message)
        if status == 429:
            self.kind = "rate_limited"
        self.status = status
        self.retry_after = retry_after
        self.retryable = status == 429 or status == 408 or status >= 500


class LMResponseError(LMError):
    kind = "lm_response"
    retryable = True


class CacheMissError(LMError):
    kind = "cache_miss"


class BudgetExceededError(LMError):
    kind = "budget"
