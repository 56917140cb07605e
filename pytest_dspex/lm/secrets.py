"""Where an LM's secrets live, and how URLs are shown without them.

``Credentials`` is the only place a raw API key (or the password of a base URL) is kept. An
``LM`` and its ``copy()``s share one holder; nothing else stores the raw value (not the LM's
settings, not its repr, not the cache key). A base URL with credentials
(``http://user:KEY@host/v1``) has them moved into the ``Authorization`` header — HTTP Basic for
``user:password``, a bearer token when only one part is given (``http://KEY@host``,
``http://:KEY@host``) — and everything the client shows uses :func:`redact_url`.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

__all__ = ["Credentials", "redact_url"]

_SECRET_PARAM = re.compile(r"key|token|secret|password|passwd|sig|auth", re.I)
_USERINFO = re.compile(r"(?<=://)[^/?#@\s]*@")
REDACTED = "***"


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

    __slots__ = ("_auth", "_secrets", "_url")

    def __init__(self, base_url: str, api_key: str | None) -> None:
        parts = urlsplit(base_url)
        user = unquote(parts.username) if parts.username else ""
        password = unquote(parts.password) if parts.password else ""
        secrets = [s for s in (api_key, user, password) if s and len(s) >= 4]
        if user and password:
            import base64

            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            self._auth: str | None = f"Basic {token}"
            secrets.append(token)
        elif user or password:
            self._auth = f"Bearer {user or password}"
        else:
            self._auth = f"Bearer {api_key}" if api_key else None
        netloc = parts.netloc.rsplit("@", 1)[1] if "@" in parts.netloc else parts.netloc
        self._url = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment)).rstrip("/")
        query_secrets = [v for k, v in parse_qsl(parts.query) if _SECRET_PARAM.search(k) and len(v) >= 4]
        secrets += query_secrets + [quote(s, safe="") for s in query_secrets]
        # longest first, so a secret that contains another is replaced whole
        self._secrets = tuple(sorted(set(secrets), key=len, reverse=True))

    def with_url(self, base_url: str) -> Credentials:
        """The same key for another base URL (``LM.copy(base_url=...)``)."""
        return Credentials(base_url, self._api_key())

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
