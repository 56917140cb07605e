"""Where an LM's secrets live, and how URLs are shown without them.

``Credentials`` is the only place a raw API key (or the password of a base URL) is kept. An
``LM`` and its ``copy()``s share one holder; nothing else stores the raw value (not the LM's
settings, not its repr, not the cache key). A base URL with credentials
(``http://user:KEY@host/v1``) has them moved into the ``Authorization`` header — HTTP Basic for
``user:password``, a bearer token when only one part is given (``http://KEY@host``,
``http://:KEY@host``) — and everything the client shows uses :func:`redact_url`.

One request carries one ``Authorization`` header. When several sources give credentials, the most
specific wins: an explicit ``api_key=`` argument, then credentials in the base URL, then the
environment variable (``OPENAI_API_KEY``: ambient, so a URL with its own credentials, e.g. a proxy,
is not overridden by it). An explicit ``api_key`` together with URL credentials is a conflict in
the configuration: the key is sent as the bearer token, the URL's credentials are dropped from the
request, and one warning per endpoint (redacted) says so through ``logging``.
"""

from __future__ import annotations

import logging
import re
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

__all__ = ["Credentials", "base_url_problem", "redact_url"]

_SECRET_PARAM = re.compile(r"key|token|secret|password|passwd|sig|auth", re.I)
_USERINFO = re.compile(r"(?<=://)[^/?#@\s]*@")
REDACTED = "***"
_log = logging.getLogger("pytest_dspex.lm")
_warned: set[str] = set()  # endpoints (redacted) already warned about dropped URL credentials


def base_url_problem(url: str) -> str | None:
    """Why ``url`` cannot be an LM endpoint (not ``http(s)://host...``), or ``None`` when it can.

    Said before any request, so a typo (``htp:/host``) is a configuration error, not retries and a
    tripped breaker on every example. The message shows the URL redacted.
    """
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname
    except ValueError as exc:
        return f"{redact_url(url)!r} is not a URL ({exc})"
    if parts.scheme.lower() not in ("http", "https"):
        return f"{redact_url(url)!r} is not an http(s) URL; write e.g. http://127.0.0.1:8080/v1"
    if not host:
        return f"{redact_url(url)!r} has no host; write e.g. http://127.0.0.1:8080/v1"
    return None


def redact_url(url: str) -> str:
    """``url`` safe to show: credentials (``user:pass@``) and secret-looking query values → ``***``.

    ``http://user:sk-1@host/v1?api-key=sk-2&x=1`` → ``http://***@host/v1?api-key=***&x=1``.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return _USERINFO.sub(REDACTED + "@", url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = REDACTED + "@" + netloc.rsplit("@", 1)[1]
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(_SECRET_PARAM.search(k) for k, _ in pairs):
            query = urlencode([(k, REDACTED if _SECRET_PARAM.search(k) else v) for k, v in pairs], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


class Credentials:
    """An LM's secrets: the auth header value and the request URL; never printed or pickled."""

    __slots__ = ("_auth", "_explicit", "_secrets", "_url")

    def __init__(self, base_url: str, api_key: str | None, *, env_key: str | None = None) -> None:
        """``api_key``: given explicitly (wins over URL credentials); ``env_key``: read from the
        environment (loses to them)."""
        parts = urlsplit(base_url)
        user = unquote(parts.username) if parts.username else ""
        password = unquote(parts.password) if parts.password else ""
        secrets = [s for s in (api_key, env_key, user, password) if s and len(s) >= 4]
        self._explicit = bool(api_key)
        if api_key and (user or password):
            shown = redact_url(base_url)
            if shown not in _warned:
                _warned.add(shown)
                _log.warning(
                    "LM at %s: both api_key and credentials in the base URL are set; the api_key is sent "
                    "(bearer token) and the URL's credentials are dropped",
                    shown,
                )
            self._auth: str | None = f"Bearer {api_key}"
        elif user and password:
            import base64

            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            self._auth = f"Basic {token}"
            secrets.append(token)
        elif user or password:
            self._auth = f"Bearer {user or password}"
        else:
            key = api_key or env_key
            self._auth = f"Bearer {key}" if key else None
        netloc = parts.netloc.rsplit("@", 1)[1] if "@" in parts.netloc else parts.netloc
        self._url = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment)).rstrip("/")
        query_secrets = [v for k, v in parse_qsl(parts.query) if _SECRET_PARAM.search(k) and len(v) >= 4]
        secrets += query_secrets + [quote(s, safe="") for s in query_secrets]
        # longest first, so a secret that contains another is replaced whole
        self._secrets = tuple(sorted(set(secrets), key=len, reverse=True))

    def with_url(self, base_url: str) -> Credentials:
        """The same key for another base URL (``LM.copy(base_url=...)``)."""
        key = self._api_key()
        return Credentials(base_url, key, env_key=None) if self._explicit else Credentials(base_url, None, env_key=key)

    def _api_key(self) -> str | None:
        auth = self._auth
        return auth[len("Bearer ") :] if auth and auth.startswith("Bearer ") else None

    @property
    def url(self) -> str:
        """The base URL requests go to (credentials moved out of it; query secrets kept)."""
        return self._url

    @property
    def authorization(self) -> str | None:
        return self._auth

    def scrub(self, text: str) -> str:
        """``text`` with every secret this holder knows replaced by ``***``."""
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text

    def __repr__(self) -> str:
        return "Credentials(***)" if self._auth or self._secrets else "Credentials(None)"

    __str__ = __repr__

    def __reduce__(self) -> Any:  # never pickled into a cache or a worker message
        raise TypeError("LM credentials are not serializable")

    def __deepcopy__(self, memo: dict[int, Any]) -> Credentials:
        return self
