"""Canary tests: an API key never shows, whichever way it arrives (DESIGN §9 "Secrets").

Each way a key can reach an LM — ``OPENAI_API_KEY``, ``api_key=``, a ``copy()`` (the teacher
model), credentials in the base URL — is run through a failing and a succeeding call with a disk
cache, DEBUG logging and an event subscriber, against a server that echoes the key back in its
error body. The canary must appear in none of: the repr, the LM's attributes, exception messages
and tracebacks, log records, events, cache keys and cache files.
"""

from __future__ import annotations

import base64
import json
import logging
import pickle
import traceback
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import httpx
import pytest

import pytest_dspex as dspex
from pytest_dspex.lm import redact_url
from pytest_dspex.lm.secrets import Credentials
from pytest_dspex.programs.adapters import LMRequest

CANARY = "sk-CANARY-7d1e4b90"
REQ = LMRequest(messages=[{"role": "user", "content": "hi"}])


def _strings(obj: Any, seen: set[int], depth: int = 0) -> Iterator[str]:
    """Every string reachable from ``obj`` (attributes, containers), except inside the holder."""
    if id(obj) in seen or depth > 8 or isinstance(obj, Credentials):
        return
    seen.add(id(obj))
    if isinstance(obj, str | bytes):
        yield obj if isinstance(obj, str) else obj.decode("latin-1")
        return
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            yield from _strings(k, seen, depth + 1)
            yield from _strings(v, seen, depth + 1)
        return
    if isinstance(obj, list | tuple | set | frozenset):
        for v in obj:
            yield from _strings(v, seen, depth + 1)
        return
    attrs = getattr(obj, "__dict__", None)
    if isinstance(attrs, dict) and type(obj).__module__.startswith(("pytest_dspex", "httpx")):
        yield from _strings(attrs, seen, depth + 1)


def _make_by_env(monkeypatch: pytest.MonkeyPatch, **kw: Any) -> dspex.LM:
    monkeypatch.setenv("OPENAI_API_KEY", CANARY)
    return dspex.LM("m", base_url="http://mock/v1", **kw)


def _make_by_arg(monkeypatch: pytest.MonkeyPatch, **kw: Any) -> dspex.LM:
    return dspex.LM("m", base_url="http://mock/v1", api_key=CANARY, **kw)


def _make_teacher(monkeypatch: pytest.MonkeyPatch, **kw: Any) -> dspex.LM:
    return dspex.LM("student", base_url="http://mock/v1", api_key=CANARY, **kw).copy(model="m")


def _make_by_url_basic(monkeypatch: pytest.MonkeyPatch, **kw: Any) -> dspex.LM:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    return dspex.LM("m", base_url=f"http://user:{CANARY}@mock/v1", **kw)


def _make_by_url_token(monkeypatch: pytest.MonkeyPatch, **kw: Any) -> dspex.LM:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-other")  # ambient: the URL's own credentials win over it
    return dspex.LM("m", base_url=f"http://{CANARY}@mock/v1", **kw)


def _make_by_arg_over_url(monkeypatch: pytest.MonkeyPatch, **kw: Any) -> dspex.LM:
    # an explicit api_key wins over credentials in the URL (which are dropped, with a warning)
    return dspex.LM("m", base_url="http://proxy-user:sk-URL-CANARY-41c2@mock/v1", api_key=CANARY, **kw)


WAYS: dict[str, tuple[Callable[..., dspex.LM], str]] = {
    "env": (_make_by_env, f"Bearer {CANARY}"),
    "api_key": (_make_by_arg, f"Bearer {CANARY}"),
    "teacher copy": (_make_teacher, f"Bearer {CANARY}"),
    "url user:password": (_make_by_url_basic, "Basic " + base64.b64encode(f"user:{CANARY}".encode()).decode()),
    "url token": (_make_by_url_token, f"Bearer {CANARY}"),
    "api_key and url credentials": (_make_by_arg_over_url, f"Bearer {CANARY}"),
}


@pytest.mark.parametrize("way", list(WAYS))
def test_the_canary_key_is_sent_and_shown_nowhere(way, monkeypatch, tmp_path, caplog):
    make, expected_auth = WAYS[way]
    seen_auth: list[str] = []
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        auth = request.headers.get("authorization", "")
        seen_auth.append(auth)
        if calls == 1:  # a server that echoes what it got into its error
            return httpx.Response(500, text=f"bad request from {request.url} with {auth} ({CANARY})")
        return httpx.Response(200, json={"choices": [{"message": {"content": "ok"}}], "usage": {}})

    caplog.set_level(logging.DEBUG)
    got: list[Any] = []
    unsubscribe = dspex.events.subscribe(got.append)
    cache_dir = tmp_path / "cache"
    try:
        lm = make(monkeypatch, retries=0, cache_dir=cache_dir, transport=httpx.MockTransport(handler))
        with pytest.raises(dspex.LMHTTPError) as info:
            lm.complete(REQ)
        assert lm.complete(REQ).text == "ok"
        assert lm.complete(REQ).cached
        reachable = list(_strings(lm, set()))  # with its HTTP client still open
        assert any("mock" in s for s in reachable if "http" in s)
        lm.close()
    finally:
        unsubscribe()
    assert seen_auth == [expected_auth, expected_auth]  # the key does reach the endpoint
    assert str(httpx.URL(lm.base_url).host) == "mock" and "@" not in lm.base_url.replace("***@", "")

    shown = [
        repr(lm), str(lm), repr(lm.copy()), repr(lm._credentials), lm.base_url, lm.cache_identity,
        str(info.value), repr(info.value), "".join(traceback.format_exception(info.value)),
        caplog.text, *(r.getMessage() for r in caplog.records), *(repr(e) for e in got),
        *(json.dumps(e.to_dict(), default=str) for e in got if hasattr(e, "to_dict")),
        *reachable,
    ]  # fmt: skip
    leaks = [s for s in shown if CANARY in s]
    assert not leaks, leaks[:3]
    keys = list(lm.cache._disk)
    lm.cache.close()
    assert keys and not [k for k in keys if CANARY in str(k)]
    for f in cache_dir.rglob("*"):
        if f.is_file():
            assert CANARY.encode() not in f.read_bytes(), f
    with pytest.raises(TypeError):
        pickle.dumps(lm._credentials)


def test_a_copy_shares_the_holder_and_does_not_carry_the_key():
    lm = dspex.LM("m", base_url="http://mock/v1", api_key=CANARY, cache=None)
    teacher = lm.copy(model="t", temperature=1.0)
    assert teacher._credentials is lm._credentials
    assert CANARY not in repr(teacher._settings) and "api_key" not in teacher._settings
    other = lm.copy(api_key="sk-other")
    assert other._credentials is not lm._credentials and other._credentials.authorization == "Bearer sk-other"


def test_url_credentials_work_over_real_http(server_factory):
    server = server_factory()
    url = server.base_url.replace("http://", f"http://me:{CANARY}@")
    lm = dspex.LM("fake-model", base_url=url, api_key=None, cache=None)
    try:
        assert lm.complete(REQ).text
    finally:
        lm.close()
    sent = server.headers[0]["Authorization"]
    assert sent == "Basic " + base64.b64encode(f"me:{CANARY}".encode()).decode()
    assert lm.base_url == server.base_url  # the credentials moved into the Authorization header


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://user:sk-1@host:8080/v1", "http://***@host:8080/v1"),
        ("https://sk-1@host/v1", "https://***@host/v1"),
        ("https://host/v1?api-key=sk-2&x=1", "https://host/v1?api-key=***&x=1"),
        ("https://host/v1", "https://host/v1"),
        ("redis://:pw@localhost:6379/0", "redis://***@localhost:6379/0"),
        ("not a url but user:pw@thing", "not a url but user:pw@thing"),
    ],
)
def test_redact_url(url, shown):
    assert redact_url(url) == shown


URL_CANARY = "sk-URL-CANARY-41c2"


def test_an_api_key_and_url_credentials_send_the_key_and_warn_once(server_factory, caplog):
    """Both an ``api_key`` and credentials in ``base_url``: one Authorization header (the explicit key,
    as a bearer token) over real HTTP (aiohttp refuses a header together with URL credentials), the
    URL's credentials dropped with one warning per endpoint, neither secret shown anywhere."""
    server = server_factory()
    url = server.base_url.replace("http://", f"http://proxy-user:{URL_CANARY}@")
    caplog.set_level(logging.DEBUG)
    lms = [dspex.LM("fake-model", base_url=url, api_key=CANARY, cache=None, retries=0) for _ in range(2)]
    try:
        for lm in lms:
            assert lm.complete(REQ).text
    finally:
        for lm in lms:
            lm.close()
    assert [h["Authorization"] for h in server.headers] == [f"Bearer {CANARY}"] * 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "credentials in the base URL" in warnings[0] and "***@" in warnings[0]
    shown = [caplog.text, *(repr(lm) for lm in lms), *(lm.base_url for lm in lms)]
    assert not [s for s in shown if CANARY in s or URL_CANARY in s]


def test_url_credentials_win_over_the_environment_key(server_factory, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", CANARY)  # ambient; the proxy URL carries its own credentials
    server = server_factory()
    url = server.base_url.replace("http://", f"http://me:{URL_CANARY}@")
    lm = dspex.LM("fake-model", base_url=url, cache=None, retries=0)
    try:
        assert lm.complete(REQ).text
    finally:
        lm.close()
    assert server.headers[0]["Authorization"] == "Basic " + base64.b64encode(f"me:{URL_CANARY}".encode()).decode()
