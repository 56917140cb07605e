"""``LM``: a resilient client for any OpenAI-compatible ``/v1/chat/completions`` endpoint.

    lm = LM("gpt-4o-mini")                                   # OPENAI_API_KEY / OPENAI_BASE_URL
    lm = LM("local-model", base_url="http://127.0.0.1:8080/v1", cache_dir=".dspex_cache")
    text = lm("Say hi")                                        # sync
    completion = await lm.acomplete(request)                   # async, from any event loop

One request passes: response cache → in-flight sharing (``sharing``) → circuit breaker admits a
new logical call → budget → retries (``resilience``: 429 back-pressure, AIMD in-flight limit) →
one attempt in a concurrency slot, optionally hedged → aiohttp (httpx when given a transport)
(``transport``). Every call emits an ``LMCallEvent``. Secrets live only in the ``Credentials``
holder (``secrets``): never in a repr, an error, a log line, an event or a cache entry.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from .._support import runtime as _runtime
from .._support.types import NOT_GIVEN, NotGiven
from ..errors import BudgetExceededError, CacheMissError, ConfigError, LMError, LMHTTPError, LMUnavailableError
from ..observe import events, tracing
from .cache import CacheMode, ResponseCache, cache_key
from .capabilities import Capabilities
from .estimates import EstimatedCall, Reckoner, current_expected
from .resilience import AdaptiveLimiter, Breaker, RetryPolicy, Ticket, send_with_retries
from .secrets import Credentials, base_url_problem, redact_url
from .sharing import AutoHedge, HedgeSkipped, InflightRequests, WireMark, hedged
from .transport import HTTPTransport
from .types import Completion, LMRequest
from .usage import Budget, Usage, record

if TYPE_CHECKING:
    import httpx

    from .link import RunLink, SharedLimiter
    from .redis_limits import RedisLimits

__all__ = ["LM", "Completion"]



_SETTINGS = (
    "api_key_env", "temperature", "max_tokens", "stop", "timeout", "connect_timeout", "retries",
    "backoff_base", "concurrency", "concurrency_start", "cache_dir", "cache_mode", "breaker_fail_max", "breaker_reset_timeout",
    "rate_limit_patience",    "price_per_1m_input", "price_per_1m_output", "budget", "transport", "extra_body", "hedge_after",
    "cache_identity", "limits", "estimate", "shared_limits", "starter",
)  # fmt: skip


def _check_settings(model: Any, **values: Any) -> None:
    """The numeric settings of ``LM(...)``: a clear ``ConfigError`` naming the argument, before any call."""
    if not isinstance(model, str):
        raise ConfigError(f"LM model must be a model name (str), got {model!r}")
    whole = {"max_tokens": 1, "retries": 0, "concurrency": 1}  # integers, and their least value
    for name, value in values.items():
        if name in whole:
            if isinstance(value, bool) or not isinstance(value, int) or value < whole[name]:
                raise ConfigError(f"LM {name}={value!r}: expected an integer >= {whole[name]}")
        elif isinstance(value, bool) or not isinstance(value, int | float) or value < 0 or (name.endswith("timeout") and value == 0):
            limit = "> 0" if name.endswith("timeout") else ">= 0"
            raise ConfigError(f"LM {name}={value!r}: expected a number {limit}")


class LM:
    """A chat-completions client with cache, retries, breaker, limiter and accounting.

    Faults, at the defaults:

    * ``retries=3``: 5xx, 408, timeouts, refused connections and garbled bodies are retried with
      full-jitter exponential backoff, ``backoff_base=0.1`` s doubling per retry up to 20 s (the
      AWS SDKs' standard mode uses the same 100 ms base and 20 s cap). A 429 waits what its
      ``Retry-After`` says and lowers the in-flight limit while 429s keep coming.
    * ``hedge_after="auto"``: once this LM has seen 20 answers, a request still unanswered after
      ``max(0.1 s, 2 × p95)`` of its recent answers' latencies gets one duplicate (a second after
      twice that); the first answer wins, the other is cancelled. A duplicate takes its own
      concurrency slot and budget call, its tokens are counted, and at most 10% of requests are
      hedged on allowance, so an endpoint that is slow across the board is not sent double the
      load; a request that five requests sent after it have overtaken is stuck and is hedged
      regardless (``sharing.AutoHedge``). In a healthy run nothing is hedged; a hung request costs
      a fraction of a second instead of the ``timeout``. A number is a fixed delay in seconds (always hedge after it); ``None`` never
      hedges — right for a server that answers one request at a time (the embedded local model:
      a duplicate only queues behind the first), or when every request is billed and a hang
      is rare.
    * ``concurrency=16`` requests in flight at most. With ``concurrency_start`` below it, the limit
      starts there and grows by one per ``limit`` answers that come back without a 429 (while at
      least half of it is in use), probing what the endpoint takes; the first 429 above the start
      fixes the limit at what was in flight then (``resilience.AdaptiveLimiter``). The plugin's
      default for a remote endpoint: from 16 up to 64.
    * ``breaker_fail_max=5`` failed logical calls in a row open the circuit breaker for
      ``breaker_reset_timeout=30`` s (``resilience``).
    * A 429 is retried after its ``Retry-After`` up to 10 times (its own allowance, not ``retries``);
      an endpoint answering nothing but 429 for ``rate_limit_patience=60`` s (at least
      ``breaker_fail_max`` requests in a row) opens the breaker as *rate limited*: the calls then fail
      fast with ``kind`` ``rate_limited`` instead of waiting out a spent quota.

    DSPy's spellings are accepted: ``api_base`` for ``base_url``, ``num_retries`` for ``retries``,
    ``cache=True``/``False`` for the default cache / none. Any other unknown keyword is a
    ``TypeError`` naming what to use instead (``_dspy_idioms``).
    """

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
        backoff_base: float = 0.1,
        concurrency: int = 16,
        concurrency_start: int | None = None,
        cache: ResponseCache | NotGiven | bool | None = NOT_GIVEN,
        cache_dir: str | os.PathLike[str] | None = None,
        cache_mode: CacheMode = "on",
        breaker_fail_max: int = 5,
        breaker_reset_timeout: float = 30.0,
        rate_limit_patience: float = 60.0,
        price_per_1m_input: float = 0.0,
        price_per_1m_output: float = 0.0,
        budget: Budget | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        extra_body: dict[str, Any] | None = None,
        hedge_after: float | Literal["auto"] | None = "auto",
        cache_identity: str | None = None,
        limits: RunLink | None = None,
        estimate: bool = False,
        shared_limits: RedisLimits | None = None,
        starter: Callable[[], object] | None = None,
        _family: tuple[Credentials, Breaker] | None = None,
        api_base: str | None = None,
        num_retries: int | None = None,
        **unknown: Any,
    ) -> None:
        # DSPy's spellings: api_base is base_url, num_retries is retries, cache=True/False is on/off
        if unknown:
            from .._support.dspy_idioms import reject_unknown

            reject_unknown("LM", unknown, [*_SETTINGS, "model", "base_url", "api_key", "cache", "api_base", "num_retries"])
        if api_base is not None:
            if base_url is not None and base_url != api_base:
                raise ConfigError(f"LM got base_url={base_url!r} and api_base={api_base!r}; api_base is DSPy's name for base_url, give one")
            base_url = api_base
        if num_retries is not None:
            retries = num_retries
        if cache is True:
            cache = NOT_GIVEN
        elif cache is False:
            cache = None
        elif isinstance(cache, str):  # a cache mode by name: cache="off" is no cache, "replay" replays
            from .cache import MODES

            if cache not in MODES:
                raise ConfigError(f"LM cache={cache!r}: a cache mode is one of {', '.join(MODES)} (or pass a ResponseCache, True, False or None)")
            cache, cache_mode = (None, "off") if cache == "off" else (NOT_GIVEN, cache)
        elif not isinstance(cache, NotGiven | ResponseCache) and cache is not None:
            raise ConfigError(f"LM cache={cache!r}: expected a ResponseCache, True, False, None or a mode ('on', 'off', 'read-only', 'replay')")
        _check_settings(model, temperature=temperature, max_tokens=max_tokens, timeout=timeout, connect_timeout=connect_timeout, retries=retries, backoff_base=backoff_base, concurrency=concurrency, rate_limit_patience=rate_limit_patience)
        if not model:
            raise ConfigError("LM needs a model name")
        if concurrency < 1:
            raise ConfigError(f"LM concurrency must be >= 1, got {concurrency}")
        if concurrency_start is not None and (isinstance(concurrency_start, bool) or not isinstance(concurrency_start, int) or concurrency_start < 1):
            raise ConfigError(f"LM concurrency_start={concurrency_start!r}: expected an integer >= 1 (or None)")
        if hedge_after == "auto":
            pass
        elif isinstance(hedge_after, str) or (hedge_after is not None and hedge_after <= 0):
            raise ConfigError(f'LM hedge_after must be "auto", None or > 0 seconds, got {hedge_after!r}')
        if budget is not None and budget.max_cost is not None and price_per_1m_input <= 0 and price_per_1m_output <= 0:
            raise ConfigError(
                f"LM {model!r}: the budget's max_cost (${budget.max_cost:g}) could never be reached without a "
                "price; pass price_per_1m_input= and price_per_1m_output= (dollars per 1M tokens), or limit "
                "calls with Budget(max_calls=...)"
            )
        settings = {k: v for k, v in locals().items() if k in _SETTINGS}
        self.model = model
        if _family is None:
            url = (base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1").rstrip("/")
            if problem := base_url_problem(url):
                source = "base_url" if base_url else "OPENAI_BASE_URL"
                raise ConfigError(f"LM {source}: {problem}")
            if isinstance(api_key, NotGiven):  # from the environment: credentials in the URL win over it
                credentials = Credentials(url, None, env_key=os.environ.get(api_key_env))
            else:
                credentials = Credentials(url, api_key)
            breaker = Breaker(redact_url(credentials.url), breaker_fail_max, breaker_reset_timeout, rate_limit_patience)
        else:
            credentials, breaker = _family
        self._credentials = credentials
        self.base_url = redact_url(credentials.url)
        self.breaker = breaker
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
        self.price_in = price_per_1m_input / 1e6
        self.price_out = price_per_1m_output / 1e6
        self.budget = budget
        self.extra_body = dict(extra_body or {})
        self.hedge_after = hedge_after
        self.auto_hedge = AutoHedge() if hedge_after == "auto" else None
        # what names the endpoint in cache keys; an embedded server on a random port passes a
        # stable identity so its answers stay cached across runs. Never carries a secret.
        self.cache_identity = redact_url(cache_identity) if cache_identity else self.base_url
        if cache_identity:
            settings["cache_identity"] = self.cache_identity
        self.usage = Usage()
        #: what the endpoint turned out to accept (constrained-decoding dialects, logprobs)
        self.capabilities = Capabilities()
        self.limits = limits
        #: an estimate (``--dspex-estimate``): a request the cache cannot answer is counted, never sent
        self.estimate = estimate
        self._reckoner: Reckoner | None = None  # an estimate's token counts (``estimates``), made on first use
        #: an estimate's requests counted as calls: the same request again is answered from the cache in a run
        self._estimated: set[str] = set()
        self.limiter: AdaptiveLimiter | SharedLimiter
        if limits is None:
            self.limiter = AdaptiveLimiter(concurrency, concurrency_start)
        else:  # the run's limits, shared with every worker (``link``)
            self.limiter = limits.limiter(self.base_url, concurrency, concurrency_start)
            limits.watch(self.base_url, breaker)
        #: the endpoint's hold and breaker shared through Redis with processes no coordinator reaches
        self.shared_limits = shared_limits
        if shared_limits is not None:
            shared_limits.attach(self.base_url, self.limiter, breaker)
        self._http = HTTPTransport(
            credentials,
            model=model,
            timeout=timeout,
            connect_timeout=connect_timeout,
            max_connections=2 * concurrency,  # the limiter bounds requests; hedges and cancelled losers need room
            transport=transport,
        )
        #: called once, in a thread, before the first request leaves (the embedded server, started only when
        #: an answer is not in the cache); an error in it is every waiting request's ``lm_unavailable``
        self._starter = starter
        self._starter_lock = threading.Lock()
        self._start_error: str | None = None
        self._inflight: InflightRequests[tuple[dict[str, Any], Completion]] = InflightRequests()
        self._settings = settings  # everything copy() needs except the secrets (those: the holder)

    # -- public ---------------------------------------------------------------------------------
    def __deepcopy__(self, memo: dict[int, Any]) -> LM:
        return self  # shared: one connection pool, cache and usage counter per LM

    def __repr__(self) -> str:
        return f"LM(model={self.model!r}, base_url={self.base_url!r}, api_key={self._credentials!r})"

    def copy(self, **overrides: Any) -> LM:
        """A new LM with the same settings except ``overrides``.

        It shares this LM's credentials, cache and circuit breaker (one family, one endpoint);
        with another ``base_url`` or ``api_key`` it gets its own credentials and breaker.
        """
        kwargs: dict[str, Any] = {"model": self.model, **self._settings, "cache": self.cache}
        kwargs.update(overrides)
        if "api_key" in overrides or "base_url" in overrides:
            url = overrides.get("base_url") or self._credentials.url
            if problem := base_url_problem(url):
                raise ConfigError(f"LM base_url: {problem}")
            if "api_key" in overrides:
                credentials = Credentials(url.rstrip("/"), overrides["api_key"])
            else:
                credentials = self._credentials.with_url(url.rstrip("/"))
            kwargs.pop("api_key", None)
            kwargs.pop("base_url", None)
            breaker = Breaker(redact_url(credentials.url), kwargs["breaker_fail_max"], kwargs["breaker_reset_timeout"], kwargs["rate_limit_patience"])
            kwargs["_family"] = (credentials, breaker)
        elif {"breaker_fail_max", "breaker_reset_timeout", "rate_limit_patience"} & overrides.keys():
            breaker = Breaker(self.breaker.name, kwargs["breaker_fail_max"], kwargs["breaker_reset_timeout"], kwargs["rate_limit_patience"])
            kwargs["_family"] = (self._credentials, breaker)
        else:
            kwargs["_family"] = (self._credentials, self.breaker)
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

    async def arespond(self, request: LMRequest, **params: Any) -> tuple[dict[str, Any], Completion]:
        """``acomplete`` that also returns the endpoint's whole answer (the chat-completion JSON, from
        the endpoint or the cache): the same path — cache, breaker, budget, retries, accounting. For
        the loopback endpoint (``loopback``), which hands application code the answer as it came."""
        if _runtime.in_runtime():
            return await self._respond(request, params)
        return await _runtime.run_async(self._respond(request, params))

    def close(self) -> None:
        if self._http.open:
            try:
                _runtime.run_sync(self.aclose())
            except RuntimeError:
                pass
        if self.cache is not None:
            self.cache.flush()

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- the request path -----------------------------------------------------------------------
    def _payload(self, request: LMRequest, params: dict[str, Any]) -> dict[str, Any]:
        stop = list(dict.fromkeys((*request.stop, *self.stop)))
        body: dict[str, Any] = {
            "model": self.model,
            "messages": request.messages,
            "temperature": params.pop("temperature", self.temperature),
            "max_tokens": params.pop("max_tokens", _max_tokens(self.max_tokens, request.max_tokens)),
        }
        if stop:
            body["stop"] = stop[:4]  # the OpenAI API accepts at most four
        body.update(self.extra_body)
        if request.extra:
            body.update(request.extra)
        body.update(params)
        return body

    async def _complete(self, request: LMRequest, **params: Any) -> Completion:
        return (await self._respond(request, params))[1]

    async def _respond(self, request: LMRequest, params: dict[str, Any]) -> tuple[dict[str, Any], Completion]:
        if tracing.enabled():
            return await self._traced(request, params)
        return await self._respond_untraced(request, params)

    async def _traced(self, request: LMRequest, params: dict[str, Any]) -> tuple[dict[str, Any], Completion]:
        """``_respond`` inside an OpenTelemetry span (``tracing``: GenAI semantic conventions)."""
        temperature = params.get("temperature", self.temperature)
        max_tokens = params.get("max_tokens", _max_tokens(self.max_tokens, request.max_tokens))
        attributes = tracing.lm_attributes(self.model, self.base_url, temperature, max_tokens)
        with tracing.span(f"chat {self.model}", attributes, kind="CLIENT") as s:
            try:
                data, completion = await self._respond_untraced(request, params)
            except Exception as exc:
                tracing.lm_failed(s, exc)
                raise
            tracing.lm_answered(s, completion)
            return data, completion

    async def _respond_untraced(self, request: LMRequest, params: dict[str, Any]) -> tuple[dict[str, Any], Completion]:
        params = dict(params)
        rollout = params.pop("rollout_id", None)
        body = self._payload(request, params)
        cache = self.cache
        if cache is None or not cache.reads:
            if self.estimate:
                raise self._would_call(body)
            return await self._fetch(body, None)
        key = cache_key({"endpoint": self.cache_identity, "body": body, "rollout": rollout})
        hit = cache.get(key)
        if hit is not None:
            if self.estimate:
                self._learn(body, hit)
            return hit, self._finish_cached(hit)
        if self.estimate:
            raise self._would_call(body, key)
        try:
            cache.miss(key, self.model)  # replay mode: an error
        except CacheMissError as exc:
            if self.cache_identity != self.base_url:  # the embedded model: a URL is not what is missing
                raise CacheMissError(f"{exc}; its answers are keyed by {self.cache_identity}, not by a URL") from None
            raise
        (data, completion), led = await self._inflight.share(key, lambda: self._fetch(body, key))
        if led:
            return data, completion
        return data, self._finish_cached(data)  # the same request, made by another caller

    def _start(self) -> None:
        with self._starter_lock:  # the first request starts it; the others wait for it
            if self._start_error is not None:
                raise LMUnavailableError(self._start_error)  # tried once: not again for every request
            if self._starter is not None:
                try:
                    self._starter()
                except Exception as exc:
                    self._start_error = f"LM {self.model} at {self.base_url} could not be started: {exc}"
                    raise LMUnavailableError(self._start_error) from None
                self._starter = None

    async def _fetch(self, body: dict[str, Any], key: str | None) -> tuple[dict[str, Any], Completion]:
        """One logical call: admitted by the breaker, within budget, with retries; counted."""
        if self._starter is not None or self._start_error is not None:
            await asyncio.to_thread(self._start)
        if self.shared_limits is not None:
            self.shared_limits.check(self.base_url)  # a background read of Redis, at most every 0.25 s
        ticket = self.breaker.admit()  # only new calls fail fast
        started = time.perf_counter()
        outcome: BaseException | None = None
        # a lone surrogate (from a dataset row) goes as its \udcxx escape: the same JSON string, valid UTF-8
        content = json.dumps(body, ensure_ascii=False).encode("utf-8", "backslashreplace")
        # the budget is asked once the call has its slot, not before (trial7 T7-5): reserved before, every
        # call queued behind the in-flight limit (a per-example chunk, a Retry-After hold) passed the cost
        # check before any answer was charged, and a cost budget was overshot by the queue, not the wire
        unreserved = [self.budget is not None]
        try:
            data, retries = await send_with_retries(
                lambda: self._attempt(content, ticket, unreserved),
                policy=self.retry,
                breaker=self.breaker,
                ticket=ticket,
                limiter=self.limiter,
                label=f"LM {self.model}",
            )
            if tracing.enabled():  # the LM call's span (opened in _complete) learns the server's side
                tracing.lm_fetched(data, retries)
        except BaseException as exc:
            outcome = exc
            if isinstance(exc, LMError):
                self.usage.errors += 1
                record(Usage(errors=1, retries=exc.retries))
                if events.has_listeners():
                    events.emit(self._event(time.perf_counter() - started, 0, 0, 0.0, False, exc.retries, exc.kind))
            raise
        finally:
            self.breaker.done(ticket, outcome)
        completion = self._count(data, calls=1, retries=retries)
        if key is not None and self.cache is not None:
            self.cache.set(key, data)
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
        return data, completion

    def _count(self, data: dict[str, Any], *, calls: int, retries: int = 0) -> Completion:
        """Count an answer that arrived: tokens, cost, budget."""
        completion = self._completion(data, cached=False)
        if self.budget is not None:
            self.budget.charge(completion.cost)
        delta = Usage(
            calls=calls,
            prompt_tokens=completion.prompt_tokens,
            completion_tokens=completion.completion_tokens,
            cost=completion.cost,
            retries=retries,
        )
        self.usage.add(delta)
        record(delta)
        return completion

    async def _attempt(self, content: bytes, ticket: Ticket | None = None, unreserved: list[bool] | None = None) -> dict[str, Any]:
        after: float | Callable[[], float | None]
        mark: list[WireMark | None] = [None]  # when the first request went on the wire (auto-hedging)
        if self.auto_hedge is not None:
            auto = self.auto_hedge
            auto.sent()

            def auto_after() -> float | None:  # no allowance yet: asked again shortly (a late request keeps its turn)
                return auto.after() if auto.ready(mark[0]) else None

            after = auto_after
        elif isinstance(self.hedge_after, float | int):
            after = self.hedge_after
        else:
            return await self._send(content, ticket=ticket, unreserved=unreserved)
        started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        return await hedged(
            lambda: self._send(content, started=started, ticket=ticket, mark=mark, unreserved=unreserved),
            lambda wanted: self._send(content, duplicate=wanted, mark=mark),
            after,
            self._count_extra,  # the loser's answer arrived too: its tokens count
            started=started,
        )

    def _count_extra(self, data: dict[str, Any]) -> None:
        self._count(data, calls=0)

    async def _send(
        self,
        content: bytes,
        *,
        duplicate: Callable[[], bool] | None = None,
        started: asyncio.Future[None] | None = None,
        ticket: Ticket | None = None,
        mark: list[WireMark | None] | None = None,
        unreserved: list[bool] | None = None,
    ) -> dict[str, Any]:
        async with self.limiter.slot():  # a hedged duplicate takes a slot of its own
            if ticket is not None and not self.breaker.may_retry(ticket):
                # the breaker opened while this call waited for a slot: not on the wire yet, so it
                # fails fast like a new call (an endpoint refusing everything gets no queued burst)
                raise self.breaker.open_error()
            if unreserved and unreserved[0] and self.budget is not None:  # the call's first attempt
                await self.budget.areserve()  # (BudgetExceededError: not retried)
                unreserved[0] = False
            if started is not None and not started.done():
                started.set_result(None)  # on the wire: the hedge clock starts
            if duplicate is not None:
                if not duplicate():
                    raise HedgeSkipped  # the first finished while we waited for the slot
                if self.auto_hedge is not None and not self.auto_hedge.take(mark[0] if mark else None):
                    raise HedgeSkipped  # over the hedge allowance: the first carries on alone
                if self.budget is not None:
                    try:
                        await self.budget.areserve()
                    except BudgetExceededError:
                        raise HedgeSkipped from None
                self.usage.hedges += 1
                record(Usage(hedges=1))
            sent = time.perf_counter()
            wire = self.auto_hedge.on_wire() if self.auto_hedge is not None else None
            if wire is not None and duplicate is None and mark is not None:
                mark[0] = wire  # the first request's: is it stuck? (``AutoHedge.overtaken``)
            try:
                data = await self._http.post(content)
            except LMHTTPError as exc:
                if ticket is not None:
                    self.breaker.refused(ticket, exc)  # before the slot is given back (see ``Breaker.refused``)
                raise
            if self.auto_hedge is not None:
                self.auto_hedge.observe(time.perf_counter() - sent, wire)
            return data

    # -- an estimate: what the calls the cache cannot answer would cost ------------------------------
    def _reckon(self) -> Reckoner:
        if self._reckoner is None:
            self._reckoner = Reckoner(self.model)
        return self._reckoner

    def _learn(self, body: dict[str, Any], data: dict[str, Any]) -> None:
        """A cached answer: how this endpoint's counts differ from the rule's, and how long answers run."""
        self._reckon().learn(body, data, current_expected())

    def _would_call(self, body: dict[str, Any], key: str | None = None) -> EstimatedCall:
        """Count a call an estimate would make (its tokens reckoned by ``estimates``: the prompt as sent,
        the answer the example's labels make; the answer's token limit is the upper bound) and say so as
        the call's error. A request (cache ``key``) counted before in this estimate is counted as a cache
        hit: a run answers it from the cache (a program gated in both modes asks each question twice)."""
        if key is not None and key in self._estimated:
            delta = Usage(calls=1, cache_hits=1, repeated=1)
            self.usage.add(delta)
            record(delta)
            return EstimatedCall(f"--dspex-estimate: this {self.model} request is counted once already; a run answers it from the cache")
        if key is not None:
            self._estimated.add(key)
        pt, ct = self._reckon().reckon(body, current_expected())
        limit = int(body.get("max_tokens") or self.max_tokens)
        delta = Usage(calls=1, prompt_tokens=pt, completion_tokens=ct, cost=pt * self.price_in + ct * self.price_out,
                      estimated=1, estimated_limit=pt + limit)  # fmt: skip
        self.usage.add(delta)
        record(delta)
        return EstimatedCall(f"--dspex-estimate: no cached answer for this {self.model} request; a run would call the LM (about {pt} + {ct} tokens)")

    def _finish_cached(self, data: dict[str, Any]) -> Completion:
        completion = self._completion(data, cached=True, cost=False)  # a cached answer costs nothing
        delta = Usage(calls=1, cache_hits=1)
        self.usage.add(delta)
        record(delta)
        if events.has_listeners():
            events.emit(self._event(0.0, completion.prompt_tokens, completion.completion_tokens, 0.0, True, 0, None))
        return completion

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

    def _completion(self, data: dict[str, Any], *, cached: bool, cost: bool = True) -> Completion:
        choice = data["choices"][0]
        message = choice["message"]
        usage = data.get("usage") or {}
        pt = int(usage.get("prompt_tokens") or 0)
        ct = int(usage.get("completion_tokens") or 0)
        refusal = message.get("refusal")
        return Completion(
            message["content"] or "",
            pt,
            ct,
            pt * self.price_in + ct * self.price_out if cost else 0.0,
            cached,
            choice.get("finish_reason"),
            _first_top_logprobs(choice),
            str(refusal) if refusal else None,
        )


def _max_tokens(lm_limit: int, answer_limit: int | None) -> int:
    """The tokens to ask for: the LM's limit, or less when the answer's fields cannot need more."""
    return lm_limit if answer_limit is None else min(lm_limit, answer_limit)


def _first_top_logprobs(choice: dict[str, Any]) -> tuple[tuple[str, float], ...] | None:
    """``choices[0].logprobs.content[0].top_logprobs`` as (text, logprob) pairs; None when absent or garbled."""
    logprobs = choice.get("logprobs")
    if not logprobs:
        return None
    try:
        top = logprobs["content"][0]["top_logprobs"]
        return tuple((str(t["token"]), float(t["logprob"])) for t in top)
    except (KeyError, IndexError, TypeError, ValueError):
        return None

