"""The session's LMs: the endpoint (or the embedded model), the teacher, the budget.

Built on first use. Once a dspex test runs, the session LM is the default of every program that
has none of its own — a judge defined next to a metric included — through
``settings.session_defaults``, which ``close`` removes again: the session never changes
process-wide settings behind the user's back, nor outlives itself.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .options import DspexOptions

if TYPE_CHECKING:
    from ..lm import LM, Budget

__all__ = ["SessionLMs"]


class SessionLMs:
    def __init__(self, options: DspexOptions, run_id: str, owner_pid: int, *, is_worker: bool, limits: str | None = None) -> None:
        self.options = options
        self._limits_address = limits  # "address token" of the controller's coordinator (xdist workers)
        self._link: Any = None
        self._shared: Any = None  # the endpoint's hold and breaker in Redis (``lm.redis_limits``)
        self._warned = False
        self._warned_shared = False
        self.run_id = run_id
        self.owner_pid = owner_pid
        self.is_worker = is_worker
        self._lm: LM | None = None
        self._teacher: LM | None = None
        self._budget: Budget | None = None
        self._cache: Any = None
        self._cache_error: str | None = None
        self._remove_defaults: Any = None
        # the LMs are built on first use, which may come from several threads at once (the loopback
        # endpoint's first requests, sync programs in worker threads): one builds, the others wait
        self._build_lock = threading.RLock()
        #: the upstream key, when ``--dspex-openai-env`` replaced its variable (``endpoint.HeldKey``)
        self.held_key: Any = None
        #: the embedded server died during the run (``close``): what to tell the user, else None
        self.server_death: str | None = None
        #: the loopback's serving process (``programs.piped.ServingProcess``), if it has one
        self.serving: Any = None

    def activate(self) -> None:
        """From the first dspex test on, programs without an LM use the session's (built lazily)."""
        if self._remove_defaults is not None:
            return
        from ..programs import settings

        defaults: dict[str, Any] = {"lm": settings.lazy(lambda: self.lm)}
        if self.options.local:
            # a small base model never answers in JSON: the JSON fallback would only double the calls
            defaults["json_fallback"] = False
        self._remove_defaults = settings.session_defaults(**defaults)

    @property
    def link(self) -> Any:
        """This worker's link to the run's limits (``lm.link.RunLink``), or None outside xdist."""
        if self._link is None and self._limits_address:
            from ..lm.link import RunLink

            with self._build_lock:
                if self._link is None:
                    address, _, token = self._limits_address.partition(" ")
                    self._link = RunLink(address, token, name=f"pid {os.getpid()}")
        return self._link

    @property
    def shared_limits(self) -> Any:
        """With a Redis cache URL: the endpoint's hold and breaker shared with every process using it
        (remote workers and shards, which no coordinator reaches); None otherwise."""
        o = self.options
        if self._shared is None and o.cache_url and not o.estimate and not o.local:
            from ..lm.redis_limits import RedisLimits

            with self._build_lock:
                if self._shared is None:
                    self._shared = RedisLimits(o.cache_url)
        return self._shared

    def warn_if_alone(self) -> None:
        """Once per process, in a test (so pytest reports it, from a worker too): the run's limits were lost."""
        link = self._link
        if link is not None and link.lost_reason is not None and not self._warned:
            self._warned = True
            import warnings

            warnings.warn(f"pytest-dspex: {link.lost_reason}; this worker kept its own LM limits (in-flight, budget, breaker) "
                          "from then on", RuntimeWarning, stacklevel=2)  # fmt: skip
        serving = self.serving
        if serving is not None and serving.lost is not None and not serving.told:
            serving.told = True
            import warnings

            warnings.warn(f"pytest-dspex: {serving.lost}; the loopback endpoint answered the {serving.orphaned} request(s) it "
                          "was serving, and every one after, in this process", RuntimeWarning, stacklevel=2)  # fmt: skip
        shared = self._shared
        if shared is not None and shared.lost is not None and not self._warned_shared:
            self._warned_shared = True
            import warnings

            from ..lm.secrets import redact_url

            warnings.warn(f"pytest-dspex: the LM limits in Redis at {redact_url(shared.url)} are unreachable ({shared.lost}); "
                          "this process kept its own back-pressure hold and breaker from then on", RuntimeWarning, stacklevel=2)  # fmt: skip

    @property
    def budget(self) -> Budget | None:
        o = self.options
        if self._budget is None and (o.max_cost is not None or o.max_calls is not None):
            with self._build_lock:
                if self._budget is None:
                    self._budget = self._build_budget()
        return self._budget

    def _build_budget(self) -> Budget:
        from ..lm import Budget

        o = self.options
        link = self.link
        if o.cache_url and (self.is_worker or o.run_id):
            # every worker, on this machine or another, and every shard of a named run: the budget in Redis,
            # keyed by the run (the shards' name for it, else the controller's id: two runs never share one)
            from ..lm.redis_budget import RedisBudget

            return RedisBudget(o.cache_url, f"shards:{o.run_id}" if o.run_id else self.run_id, o.max_cost, o.max_calls)
        if link is not None:
            return link.budget(o.max_cost, o.max_calls)  # type: ignore[no-any-return]
        return Budget(o.max_cost, o.max_calls)

    def _endpoint(self) -> tuple[str, str]:
        o = self.options
        if o.local:
            from ..lm.local.embedded import (
                LOCAL_MODEL_NAME,
                NOT_STARTED_URL,
                LocalModelError,
                check_installed,
                reserve_server,
            )

            if o.cache == "replay" or o.estimate:
                # no request can leave a replay (a miss fails as a miss) nor an estimate (a miss is
                # counted): the model is not loaded. The URL is in no cache key (``cache_identity``)
                return NOT_STARTED_URL, LOCAL_MODEL_NAME
            try:
                check_installed()
                # the server starts when a request needs it (``_starter``): a run the cache answers loads no model
                url = reserve_server(self.run_id, self.owner_pid)
            except LocalModelError as exc:
                pytest.fail(f"pytest-dspex: no LM endpoint is configured and the embedded model cannot start: {exc}", pytrace=False)
            return url, LOCAL_MODEL_NAME
        if o.model is None:
            pytest.fail("pytest-dspex: --dspex-base-url is set but no --dspex-model (dspex_model) names the model", pytrace=False)
        return o.base_url or "https://api.openai.com/v1", o.model

    def check_cache(self, session: pytest.Session) -> None:
        """Open the session's response cache; an unusable one fails the test and stops the run.

        An unusable cache (an unwritable folder in mode ``on``, a locked or damaged database) is
        the run's configuration, not any program's score: said once, as what it is, instead of
        every example becoming a ``program`` error and the gate a "regression".
        """
        if self._cache_error is None and self._cache is None and self.options.cache != "off":
            from ..errors import ConfigError
            from ..lm.redis_cache import open_response_cache

            o = self.options
            try:
                self._cache = open_response_cache(o.cache, directory=o.cache_dir, url=o.cache_url)  # type: ignore[arg-type]
            except ConfigError as exc:
                self._cache_error = f"pytest-dspex: {exc}"
        if self._cache_error is not None:
            session.shouldstop = self._cache_error  # the same for every dspex test: stop here, say it once
            pytest.fail(self._cache_error, pytrace=False)

    @property
    def lm(self) -> LM:
        if self._lm is None:
            with self._build_lock:
                if self._lm is None:
                    self._lm = self._build_lm()
        return self._lm

    def _build_lm(self) -> LM:
        from .._support.types import NOT_GIVEN
        from ..lm import LM
        from ..lm.redis_cache import open_response_cache

        o = self.options
        if self._cache is None and o.cache != "off":
            self._cache = open_response_cache(o.cache, directory=o.cache_dir, url=o.cache_url)  # type: ignore[arg-type]
        model, url, settings = self.lm_settings()
        return LM(
            model,
            base_url=url,
            api_key=self.held_key.reveal() if self.held_key is not None else NOT_GIVEN,
            cache=self._cache,
            budget=self.budget,
            limits=self.link,
            shared_limits=self.shared_limits,
            **settings,
            starter=self._starter(url),
        )

    def _starter(self, url: str) -> Any:
        """The embedded server's start, made by the LM before its first request (none for another endpoint)."""
        o = self.options
        if not o.local or o.cache == "replay" or o.estimate:
            return None
        from ..lm.local.embedded import ensure_server

        run_id, owner = self.run_id, self.owner_pid
        return lambda: ensure_server(run_id, owner)

    def lm_settings(self) -> tuple[str, str, dict[str, Any]]:
        """The session LM's model, URL and plain settings (no secret, no live object): the same for
        the loopback's serving process (``programs.serving``), which builds its own from them."""
        o = self.options
        url, model = self._endpoint()
        price_in, price_out = self._price(model)
        return model, url, {
            "api_key_env": o.api_key_env,
            "temperature": o.temperature,
            "max_tokens": o.max_tokens,
            "timeout": o.timeout,
            "retries": o.retries,
            "rate_limit_patience": o.rate_limit_patience,
            "concurrency": o.concurrency_grows_to or o.concurrency,
            "concurrency_start": o.concurrency if o.concurrency_grows_to else None,  # the default probes upwards
            "price_per_1m_input": price_in,
            "price_per_1m_output": price_out,
            "cache_identity": f"embedded:{model}" if o.local else None,
            "hedge_after": None if o.local else "auto",  # one request at a time: a duplicate only queues
            "estimate": o.estimate,  # --dspex-estimate: a request the cache cannot answer is counted, not sent
        }

    def serving_config(self) -> dict[str, Any] | None:
        """What the loopback's serving process needs to be this session's LM (``programs.serving``),
        secrets included — handed over its pipe only; None when the loopback is served in this process
        (the embedded model, an estimate, a Redis cache or limits, or no run-wide limits to share)."""
        from ..observe import tracing

        o = self.options
        if o.local or o.estimate or o.cache_url or not self._limits_address or tracing.enabled():
            return None  # (traced: the LM call's span belongs in the caller's trace, in this process)
        if self._lm is not None and self._lm.limits is None:  # built before the run's limits existed
            return None
        model, url, settings = self.lm_settings()
        held = self.held_key is not None  # --dspex-openai-env: the key read before its variable was replaced
        return {
            "model": model,
            "url": url,
            "api_key": self.held_key.reveal() if held else None,
            "env_key": None if held else os.environ.get(o.api_key_env),  # as ``_build_lm``'s LM reads it
            "settings": settings,
            "cache": {"mode": o.cache, "directory": str(o.cache_dir) if o.cache_dir is not None else None},
            "limits": self._limits_address,
            "budget": [o.max_cost, o.max_calls] if (o.max_cost is not None or o.max_calls is not None) else None,
        }

    def can_share_limits(self) -> bool:
        """Can this process's LMs still be linked to run-wide limits (nothing built yet, no link)?"""
        return self._lm is None and self._budget is None and not self._limits_address

    def share_limits(self, address: str) -> None:
        """Link this process's LMs to the run's limits at ``address`` (``"address token"``): the
        loopback's serving process shares them. Only before the session LM is built."""
        if self.can_share_limits():
            self._limits_address = address

    def _price(self, model: str) -> tuple[float, float]:
        """``--dspex-price``; in an estimate, else the table's list price of a well-known model."""
        if self.options.price:
            return self.options.price
        if self.options.estimate:
            from ..lm.prices import known_price

            return known_price(model) or (0.0, 0.0)
        return (0.0, 0.0)

    def priced(self) -> bool:
        """Is a cost counted (a price set, or in an estimate one from the table; the embedded model is free)?"""
        if self.options.local and not self.options.price:
            return True  # costs nothing: $0, never "no price known"
        name = self.model_name()
        return self._price(name)[0] > 0 or self._price(name)[1] > 0 if name else bool(self.options.price)

    @property
    def teacher(self) -> LM | None:
        if self.options.teacher_model is None:
            return None
        if self._teacher is None:
            with self._build_lock:
                if self._teacher is None:
                    self._teacher = self.lm.copy(model=self.options.teacher_model)
        return self._teacher

    def model_info(self) -> dict[str, Any]:
        lm = self.lm
        info: dict[str, Any] = {
            "name": lm.model,
            "temperature": lm.temperature,
            "max_tokens": lm.max_tokens,
            "teacher": self.options.teacher_model,
        }
        if self.options.local:  # which server is the model's identity; a URL is not (it goes to the run report)
            info["endpoint"] = "embedded llama.cpp (local)"
        return info

    def model_name(self) -> str | None:
        """The model the session talks to (without starting anything)."""
        if self._lm is not None:
            return self._lm.model
        if self.options.local:
            from ..lm.local.embedded import LOCAL_MODEL_NAME

            return LOCAL_MODEL_NAME
        return self.options.model

    def redacted_base_url(self) -> str | None:
        """The endpoint for reports, credentials removed; "embedded" for the local model."""
        if self.options.local:
            return "embedded"
        from ..lm.secrets import redact_url

        return redact_url(self.options.base_url or "https://api.openai.com/v1")

    def own_limits(self) -> dict[str, Any]:
        """This process's own LM limit (no worker or serving process shares it), in the run's coordinator's
        shape for ``coordinator.describe``; empty when the LM was not built, its limits are shared or no 429 came."""
        from ..lm.resilience import AdaptiveLimiter

        lm = self._lm
        limiter = getattr(lm, "limiter", None)
        if lm is None or not isinstance(limiter, AdaptiveLimiter) or not limiter.throttled:
            return {}  # said only when the endpoint answered 429 (not under -v: a line for every run)
        return {"clients": 1, "alone": True, "calls": 0, "refused_calls": 0, "endpoints": {lm.base_url: limiter.stats()}}

    def close(self, keep_log: Callable[[], Path] | None = None) -> None:
        """Close the LMs and caches; the controller stops the embedded server, and says (``server_death``)
        when it had died during the run, its log copied to ``keep_log()``."""
        if self._remove_defaults is not None:
            self._remove_defaults()
            self._remove_defaults = None
        for lm in (self._teacher, self._lm):
            if lm is not None:
                lm.close()
                if lm.cache is not None:
                    lm.cache.close()
        if self._lm is None and self._cache is not None:
            self._cache.close()
        closers = [c.aclose for c in (self._link, self._budget, self._shared) if c is not None and hasattr(c, "aclose")]
        if closers:
            from .._support import runtime as _runtime

            for close in closers:
                try:
                    _runtime.run_sync(close())
                except RuntimeError:
                    pass
        if self.options.local:
            from ..lm.local.embedded import record_exit, server_gone, stop_server

            if self.is_worker:
                record_exit(self.run_id)  # a server this worker started and saw end: how, for the controller
            else:
                self.server_death = server_gone(self.run_id, keep_log)
                stop_server(self.run_id)
