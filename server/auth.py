"""Who may connect: API keys (header or `?token=`), the Origin allow-list, and keeping keys out of logs.

    keys = KeySet(("k1", "k2"))
    keys.allows(request)            # Authorization: Bearer k1 | X-API-Key: k1 | /v1/stream?token=k1
    origin_allowed(request, ("https://app.example",))

Keys are compared in constant time (`hmac.compare_digest` on SHA-256 digests, so
neither the key's content nor its length leaks through timing), and every key is
checked whatever the outcome, so timing does not tell how many keys exist.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from websockets.http11 import Request

from streaming.errors import ConfigError

KEY_HEADER = "X-API-Key"
QUERY_KEY = "token"
_SECRET_HEADERS = re.compile(r"^(<|>) (authorization|x-api-key|cookie|proxy-authorization): .*$", re.I)
_SECRET_QUERY = re.compile(r"([?&]token=)[^&\s]*", re.I)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


class KeySet:
    """The accepted API keys, held only as digests; empty means no authentication."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._digests = tuple(_digest(k) for k in keys)

    def __bool__(self) -> bool:
        return bool(self._digests)

    def __repr__(self) -> str:
        return f"KeySet(<{len(self._digests)} key(s)>)"

    def matches(self, candidate: str | None) -> bool:
        """True when `candidate` is one of the keys (constant time in the candidate and the keys)."""
        probe = _digest(candidate or "")
        found = False
        for digest in self._digests:
            found |= hmac.compare_digest(probe, digest)
        return found and candidate is not None

    def allows(self, request: Request) -> bool:
        """True when no keys are set, or the request carries one of them in any accepted place."""
        if not self._digests:
            return True
        return any([self.matches(c) for c in request_keys(request)])  # list: check every candidate


def request_keys(request: Request) -> list[str]:
    """Every key candidate a request carries: bearer token, X-API-Key header, `token` query parameter."""
    found: list[str] = []
    for value in request.headers.get_all("Authorization"):
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            found.append(token.strip())
    found += [v.strip() for v in request.headers.get_all(KEY_HEADER) if v.strip()]
    query = urlsplit(request.path).query
    found += parse_qs(query, keep_blank_values=False).get(QUERY_KEY, [])
    return found[:8]  # a request stuffed with candidates costs no more than eight checks


def origin_allowed(request: Request, allowed: tuple[str, ...]) -> bool:
    """True with no allow-list, with no Origin header (not a browser), or with an exact listed Origin."""
    if not allowed:
        return True
    origins = request.headers.get_all("Origin")
    if not origins:
        return True
    return len(origins) == 1 and origins[0] in allowed


def load_keys(path: Path | None, env_value: str | None) -> tuple[str, ...]:
    """Keys from a file (one per line, `#` comments and blank lines skipped) and a comma-separated value."""
    keys: list[str] = []
    if path is not None:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ConfigError(f"--api-key-file: cannot read {path}: {exc.strerror or exc}") from None
        keys += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if env_value:
        keys += [k.strip() for k in env_value.split(",") if k.strip()]
    if (path is not None or env_value is not None) and not keys:
        raise ConfigError("api keys: a key file or variable was given but holds no key")
    return tuple(dict.fromkeys(keys))


def redact(text: str) -> str:
    """`text` with query tokens and credential header values replaced by [redacted]."""
    text = _SECRET_QUERY.sub(r"\1[redacted]", text)
    match = _SECRET_HEADERS.match(text)
    return f"{match.group(1)} {match.group(2)}: [redacted]" if match else text


class RedactSecrets(logging.Filter):
    """Rewrites records of the logger it is attached to so that no key reaches a handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is passed on untouched
            return True
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


def secret_free_logger(name: str = "websockets.server") -> logging.Logger:
    """The websockets server logger with `RedactSecrets` attached once (it logs request lines and headers)."""
    logger = logging.getLogger(name)
    if not any(isinstance(f, RedactSecrets) for f in logger.filters):
        logger.addFilter(RedactSecrets())
    return logger
