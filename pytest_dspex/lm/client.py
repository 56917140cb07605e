"""``LM``: a resilient client for any OpenAI-compatible ``/v1/chat/completions`` endpoint.

    lm = LM("gpt-4o-mini")                                   # OPENAI_API_KEY / OPENAI_BASE_URL
    lm = LM("local-model", base_url="http://127.0.0.1:8080/v1", cache_dir=".dspex_cache")
    text = lm("Say hi")                                        # sync
    completion = await lm.acomplete(request)                   # async, from any event loop

One request passes: response cache → budget → concurrency limit → circuit breaker → httpx
(with the aiohttp transport) → retries on 429/5xx/timeouts/transport errors/garbled bodies,
honouring ``Retry-After``. Every call emits an ``LMCallEvent``. The API key never appears in a
repr, an error, a log line or a cache entry.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import _runtime, events
from .._exceptions import (
    CircuitOpenError,
    ConfigError,
    DspexError,
    LMError,
    LMHTTPError,
    LMResponseError,
    LMTimeoutError,
    LMUnavailableError,
)
from .._types import NOT_GIVEN, NotGiven
from ..adapters import LMRequest
from .cache import CacheMode, ResponseCache, cache_key
from .resilience import Breaker, RetryPolicy, breaker_for, parse_retry_after
from .usage import Budget, Usage, record

if TYPE_CHECKING:
    import httpx

__all__ = ["LM", "Completion"]

logger = logging.getLogger("pytest_dspex.lm")


@dataclass(frozen=True, slots=True)
class Completion:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    cached: bool = False
    finish_reason: str | None = None


class _Secret:
    __slots__ = ("_value",)

    def __init__(self, value: str | None) -> None:
        self._value = value

    def get(self) -> str | None:
        return self._value

    def __repr__(self) -> str:
        return "'***'" if self._value else "None"

    __str__ = __repr__

    def __reduce__(self) -> Any:  # never pickled into a cache or a worker message
        raise TypeError("an API key is not serializable")


class LM:
    """A chat-completions client with cache, retries, breaker, limiter and accounting."""

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | NotGiven | None = NOT_GIVEN,
        api_key_env: str = "OPENAI_API_KEY",
        temperature: float = 0.0,
        max_tokens: int = 256,
        stop: tuple[str, ...] | None = None,
        timeout: float = 120.0,
        connect_timeout: float = 10.0,
        retries: int = 3,
        backoff_base: float = 0.5,
        concurrency: int = 16,
        cache: ResponseCache | NotGiven | None = NOT_GIVEN,
        cache_dir: str | os.PathLike[str] | None = None,
        cache_mode: CacheMode = "on",
        breaker_fail_max: int = 5,
        breaker_reset_timeout: float = 30.0,
        price_per_1m_input: float = 0.0,
        price_per_1m_output: float = 0.0,
        budget: Budget | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        extra_body: dict[str, Any] | None = None,
        hedge_after: float | None = None,
        cache_identity: str | None = None,
    ) -> None:
        if not model:
            raise ConfigError("LM needs a model name")
        if concurrency < 1:
            raise ConfigError(f"LM concurrency must be >= 1, got {concurrency}")
        self.model = model
        base = base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
        self.base_url = base.rstrip("/")
        key = os.environ.get(api_key_env) if isinstance(api_key, NotGiven) else api_key
        self._api_key = _Secret(key)
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.stop = tuple(stop or ())
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.retry = RetryPolicy(retries=retries, backoff_base=backoff_base)
        self.concurrency = concurrency
        if isinstance(cache, NotGiven):
            cache = ResponseCache(cache_dir, cache_mode)
        self.cache = cache
        self.breaker: Breaker = breaker_for(self.base_url, breaker_fail_max, breaker_reset_timeout)
        self.price_in = price_per_1m_input / 1e6
        self.price_out = price_per_1m_output / 1e6
        self.budget = budget
        self.extra_body = dict(extra_body or {})
        self.hedge_after = hedge_after
        # what names the endpoint in cache keys; an embedded server on a random port passes a
        # stable identity so its answers stay cached across runs
        self.cache_identity = cache_identity or self.base_url
        self.usage = Usage()
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._semaphore: asyncio.Semaphore | None = None
        self._inflight: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._last_data: dict[str, dict[str, Any]] = {}
        self._init_kwargs = {
            k: v for k, v in locals().items() if k not in ("self", "key", "base", "cache") and not k.startswith("_")
        }

    # -- public ---------------------------------------------------------------------------------
    def __deepcopy__(self, memo: dict[int, Any]) -> LM:
        return self  # shared: one connection pool, cache and usage counter per LM

    def __repr__(self) -> str:
        return f"LM(model={self.model!r}, base_url={self.base_url!r}, api_key={self._api_key!r})"

    def copy(self, **overrides: Any) -> LM:
        """A new LM with the same settings (sharing the cache and breaker) except ``overrides``."""
        kwargs = dict(self._init_kwargs)
        kwargs["api_key"] = self._api_key.get()
        kwargs["cache"] = self.cache
        kwargs["base_url"] = self.base_url
        kwargs.update(overrides)
        return LM(**kwargs)

    def __call__(self, prompt: str | list[dict[str, str]], **params: Any) -> str:
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        return self.complete(LMRequest(messages=messages), **params).text

    def complete(self, request: LMRequest, **params: Any) -> Completion:
        return _runtime.run_sync(self._complete(request, **params))

    async def acomplete(self, request: LMRequest, **params: Any) -> Completion:
        """Complete ``request``; safe from any event loop (the work runs on pytest-dspex's loop)."""
        if _runtime.in_runtime():
            return await self._complete(request, **params)
        return await _runtime.run_async(self._complete(request, **params))

    def close(self) -> None:
        if self._client is not None:
            try:
                _runtime.run_sync(self.aclose())
            except RuntimeError:
                pass
        if self.cache is not None:
            self.cache.flush()

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    # -- the request path -----------------------------------------------------------------------
    def _payload(self, request: LMRequest, params: dict[str, Any]) -> dict[str, Any]:
        stop = list(dict.fromkeys((*request.stop, *self.stop)))
        body: dict[str, Any] = {
            "model": self.model,
            "messages": request.messages,
            "temperature": params.pop("temperature", self.temperature),
            "max_tokens": params.pop("max_tokens", self.max_tokens),
        }
        if stop:
            body["stop"] = stop[:4]  # the OpenAI API accepts at most four
        body.update(self.extra_body)
        if request.extra:
            body.update(request.extra)
        body.update(params)
        return body

    async def _complete(self, request: LMRequest, **params: Any) -> Completion:
        rollout = params.pop("rollout_id", None)
        body = self._payload(request, params)
        cache = self.cache
        key = None
        if cache is not None and cache.reads:
            key = cache_key({"endpoint": self.cache_identity, "body": body, "rollout": rollout})
            while True:
                hit = cache.get(key)
                if hit is not None:
                    return self._finish_cached(hit)
                cache.miss(key, self.model)
                pending = self._inflight.get(key)
                if pending is None:
                    break
                try:  # the same request is already on its way: share its answer
                    return self._finish_cached(await asyncio.shield(pending))
                except _LeaderCancelled:
                    continue  # its caller gave up; ask again ourselves
            fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
            self._inflight[key] = fut
            try:
                completion = await self._call(body, key, cache)
            except asyncio.CancelledError:
                fut.set_exception(_LeaderCancelled())
                fut.exception()  # retrieved: no "never retrieved" warning when nobody waits
                raise
            except BaseException as exc:
                fut.set_exception(exc)
                fut.exception()
                raise
            else:
                fut.set_result(self._last_data.pop(key, {}) or completion_data(completion))
            finally:
                self._inflight.pop(key, None)
            return completion
        return await self._call(body, None, cache)

    async def _call(self, body: dict[str, Any], key: str | None, cache: ResponseCache | None) -> Completion:
        if self.budget is not None:
            self.budget.reserve()
        started = time.perf_counter()
        retries = 0
        error: DspexError | None = None
        try:
            with events.span("dspex.lm", model=self.model, endpoint=self.base_url):
                data, retries = await self._send_with_retries(body)
        except LMError as exc:
            error = exc
            raise
        finally:
            if error is not None:
                self.usage.errors += 1
                record(Usage(errors=1, retries=retries))
                if events.has_listeners():
                    events.emit(self._event(time.perf_counter() - started, 0, 0, 0.0, False, retries, error.kind))
        completion = self._completion(data, cached=False)
        if self.budget is not None:
            self.budget.charge(completion.cost)
        if key is not None and cache is not None:
            cache.set(key, data)
            self._last_data[key] = data
        delta = Usage(
            calls=1,
            prompt_tokens=completion.prompt_tokens,
            completion_tokens=completion.completion_tokens,
            cost=completion.cost,
            retries=retries,
        )
        self.usage.add(delta)
        record(delta)
        if events.has_listeners():
            events.emit(
                self._event(
                    time.perf_counter() - started,
                    completion.prompt_tokens,
                    completion.completion_tokens,
                    completion.cost,
                    False,
                    retries,
                    None,
                )
            )
        return completion

    def _finish_cached(self, data: dict[str, Any]) -> Completion:
        completion = self._completion(data, cached=True)
        delta = Usage(calls=1, cache_hits=1)
        self.usage.add(delta)
        record(delta)
        if events.has_listeners():
            events.emit(self._event(0.0, completion.prompt_tokens, completion.completion_tokens, 0.0, True, 0, None))
        return Completion(completion.text, completion.prompt_tokens, completion.completion_tokens, 0.0, True, completion.finish_reason)

    def _event(self, latency: float, pt: int, ct: int, cost: float, hit: bool, retries: int, err: str | None) -> events.LMCallEvent:
        return events.LMCallEvent(
            model=self.model,
            endpoint=self.base_url,
            latency_s=latency,
            prompt_tokens=pt,
            completion_tokens=ct,
            cost=cost,
            cache_hit=hit,
            retries=retries,
            breaker_state=self.breaker.state,
            error=err,
        )

    def _completion(self, data: dict[str, Any], *, cached: bool) -> Completion:
        choice = data["choices"][0]
        usage = data.get("usage") or {}
        pt = int(usage.get("prompt_tokens") or 0)
        ct = int(usage.get("completion_tokens") or 0)
        return Completion(
            text=choice["message"]["content"] or "",
            prompt_tokens=pt,
            completion_tokens=ct,
            cost=pt * self.price_in + ct * self.price_out,
            cached=cached,
            finish_reason=choice.get("finish_reason"),
        )

    def _get_client(self) -> httpx.AsyncClient:
        import httpx  # imported on first use: keeps `import pytest_dspex` fast

        if self._client is None:
            transport = self._transport
            if transport is None:
                try:
                    from httpx_aiohttp import AiohttpTransport
                except ImportError:  # pragma: no cover - a declared dependency
                    transport = httpx.AsyncHTTPTransport(limits=httpx.Limits(max_connections=self.concurrency))
                else:
                    transport = AiohttpTransport(limits=httpx.Limits(max_connections=self.concurrency))
            headers = {"content-type": "application/json"}
            key = self._api_key.get()
            if key:
                headers["authorization"] = f"Bearer {key}"
            self._client = httpx.AsyncClient(
                transport=transport,
                headers=headers,
                timeout=httpx.Timeout(self.timeout, connect=self.connect_timeout, pool=None),
            )
            self._semaphore = asyncio.Semaphore(self.concurrency)
            _runtime.on_shutdown(self.aclose)
        return self._client

    async def _send_with_retries(self, body: dict[str, Any]) -> tuple[dict[str, Any], int]:
        client = self._get_client()
        assert self._semaphore is not None
        url = self.base_url + "/chat/completions"
        content = json.dumps(body, ensure_ascii=False).encode()
        attempt = 0
        while True:
            try:
                self.breaker.before()
                async with self._semaphore:
                    if self.hedge_after is None:
                        data = await self._send_once(client, url, content)
                    else:
                        data = await self._send_hedged(client, url, content, self.hedge_after)
                self.breaker.success()
                return data, attempt
            except CircuitOpenError:
                raise
            except LMError as exc:
                if isinstance(exc, LMUnavailableError | LMTimeoutError) or (
                    isinstance(exc, LMHTTPError) and exc.status >= 500
                ):
                    self.breaker.failure(exc)
                else:
                    self.breaker.success()  # the endpoint answered
                if not exc.retryable or attempt >= self.retry.retries:
                    if attempt:
                        exc.args = (f"{exc.args[0]} (after {attempt} retries)",)
                    raise
                delay = self.retry.delay(attempt, getattr(exc, "retry_after", None))
                logger.info(
                    "LM %s: %s; retry %d/%d in %.2fs", self.model, exc, attempt + 1, self.retry.retries, delay
                )
                attempt += 1
                await asyncio.sleep(delay)

    async def _send_hedged(self, client: httpx.AsyncClient, url: str, content: bytes, after: float) -> dict[str, Any]:
        """Send; if no answer within ``after`` seconds, send a duplicate and take whichever answers first.

        Cuts the tail a stalled connection would add (the wait for the timeout). Off by default:
        against a server that queues requests (llama.cpp) a duplicate only adds load.
        """
        first = asyncio.ensure_future(self._send_once(client, url, content))
        done, _ = await asyncio.wait({first}, timeout=after)
        if done:
            return first.result()
        second = asyncio.ensure_future(self._send_once(client, url, content))
        self.usage.hedges += 1
        record(Usage(hedges=1))
        pending = {first, second}
        error: BaseException | None = None
        try:
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for fut in done:
                    if fut.exception() is None:
                        return fut.result()
                    error = fut.exception()
            assert error is not None
            raise error
        finally:
            for fut in (first, second):
                if not fut.done():
                    fut.cancel()

    async def _send_once(self, client: httpx.AsyncClient, url: str, content: bytes) -> dict[str, Any]:
        import httpx

        try:
            async with asyncio.timeout(self.timeout + self.connect_timeout):
                resp = await client.post(url, content=content)
        except (TimeoutError, httpx.TimeoutException) as exc:
            if _refused(exc):
                raise LMUnavailableError(f"LM {self.model} at {self.base_url}: connection refused") from None
            raise LMTimeoutError(f"LM {self.model} at {self.base_url}: no answer within {self.timeout:g}s") from exc
        except httpx.HTTPError as exc:
            raise LMUnavailableError(
                f"LM {self.model} at {self.base_url}: {type(exc).__name__}: {_scrub(str(exc), self._api_key)}"
            ) from None
        if resp.status_code != 200:
            retry_after = parse_retry_after(resp.headers.get("retry-after"))
            detail = _scrub(resp.text[:200], self._api_key).strip()
            raise LMHTTPError(
                f"LM {self.model} at {self.base_url}: HTTP {resp.status_code}" + (f": {detail}" if detail else ""),
                status=resp.status_code,
                retry_after=retry_after,
            )
        try:
            data = resp.json()
            content_text = data["choices"][0]["message"]["content"]
            if content_text is not None and not isinstance(content_text, str):
                raise TypeError("content is not a string")
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise LMResponseError(
                f"LM {self.model} at {self.base_url}: the body is not a chat completion "
                f"({type(exc).__name__}): {_scrub(resp.text[:120], self._api_key)!r}"
            ) from None
        return data  # type: ignore[no-any-return]


class _LeaderCancelled(Exception):
    """The request another caller was sharing was cancelled by its own caller."""


def completion_data(c: Completion) -> dict[str, Any]:
    return {
        "choices": [{"message": {"content": c.text}, "finish_reason": c.finish_reason}],
        "usage": {"prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens},
    }


def _refused(exc: BaseException) -> bool:
    """httpx-aiohttp reports a refused connection as ConnectTimeout; look at the real cause."""
    cause = exc.__cause__
    while cause is not None:
        if isinstance(cause, ConnectionError) or (isinstance(cause, OSError) and not isinstance(cause, TimeoutError)):
            return True
        cause = cause.__cause__ or getattr(cause, "os_error", None)
    return False


def _scrub(text: str, secret: _Secret) -> str:
    key = secret.get()
    return text.replace(key, "***") if key else text
