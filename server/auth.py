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
from urllib.parse import parse_qs, unquote, urlsplit

from websockets.http11 import Request

from streaming.errors import ConfigError

SERVER_LOGGERS = ("server", "server.app", "server.session", "server.flow", "server.requests.layer",
                  "server.requests.request", "websockets.server", "server.httpapi.api", "server.httpapi.speech", "aiohttp.server", "aiohttp.web", "aiohttp.access")
KEY_HEADER = "X-API-Key"
QUERY_KEY = "token"
_SECRET_HEADERS = re.compile(r"^(<|>) (authorization|x-api-key|cookie|proxy-authorization): .*$", re.I)
_QUERY_PARAM = re.compile(r"([?&])([^=&\s#?]+)=([^&\s#]*)")
_BEARER = re.compile(r"(bearer\s+)\S+", re.I)
# websockets' parse errors quote raw header values or request lines, which can hold a key
_RAW_VALUE = re.compile(r"(invalid HTTP (?:header value|header line|request line|request target)[^:]*: ).*",
                        re.I)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]|\n|\r")


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

    def which(self, request: Request) -> int | None:
        """The index of the key the request carries (its identity for per-key limits); None if none matches."""
        found = None
        for candidate in request_keys(request):
            probe = _digest(candidate)
            for i, digest in enumerate(self._digests):
                if hmac.compare_digest(probe, digest) and found is None:
                    found = i
        return found


def is_trusted_proxy(address: str, trusted: tuple[str, ...]) -> bool:
    """True when `address` is in one of the `trusted` addresses or networks (--trusted-proxy)."""
    import ipaddress

    try:
        ip = ipaddress.ip_address(address.strip().strip("[]"))
    except ValueError:
        return False
    return any(ip in ipaddress.ip_network(t, strict=False) for t in trusted)


def client_address(peer: str, forwarded: list[str], trusted: tuple[str, ...]) -> str:
    """The real client address: the peer, unless the peer is a trusted proxy, then the rightmost address of
    X-Forwarded-For that is not itself a trusted proxy (entries further left are the client's to forge)."""
    if not trusted or not is_trusted_proxy(peer, trusted):
        return peer
    chain = [a.strip() for value in forwarded for a in value.split(",") if a.strip()]
    for address in reversed(chain):
        if not is_trusted_proxy(address, trusted):
            return address.strip("[]")
    return peer


def request_keys(request: Request) -> list[str]:
    """Every key candidate a request carries: bearer token, X-API-Key header, `token` query parameter."""
    found: list[str] = []
    for value in request.headers.get_all("Authorization"):
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            found.append(token.strip())
    found += [v.strip() for v in request.headers.get_all(KEY_HEADER) if v.strip()]
    try:
        query = urlsplit(request.path).query
    except ValueError:  # a malformed target: it carries no key (and is answered 400)
        query = ""
    found += parse_qs(query, keep_blank_values=False).get(QUERY_KEY, [])
    return found[:8]  # a request stuffed with candidates costs no more than eight checks


def origin_allowed(request: Request, allowed: tuple[str, ...]) -> bool:
    """True with no allow-list or one holding "*", with no Origin header (not a browser), or with an exact
    listed Origin."""
    if not allowed or "*" in allowed:
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


def _redact_param(match: re.Match[str]) -> str:
    name = unquote(match.group(2)).strip().lower()
    return f"{match.group(1)}{match.group(2)}=[redacted]" if name == QUERY_KEY else match.group(0)


def redact(text: str) -> str:
    """`text` with key-bearing values replaced by [redacted]: the `token` query parameter however it is
    spelled (`%74oken`), credential header lines, bearer tokens, and raw values quoted by parse errors."""
    text = _QUERY_PARAM.sub(_redact_param, text)
    text = _BEARER.sub(r"\1[redacted]", text)
    text = _RAW_VALUE.sub(r"\1[redacted]", text)
    return "\n".join(_redact_header_line(line) for line in text.split("\n"))


def _redact_header_line(line: str) -> str:
    match = _SECRET_HEADERS.match(line)
    return f"{match.group(1)} {match.group(2)}: [redacted]" if match else line


def escape_controls(text: str) -> str:
    """Newlines and other control characters as escapes: a client string cannot forge a log line."""
    return _CONTROL.sub(lambda m: m.group(0).encode("unicode_escape").decode("ascii"), text)


class RedactSecrets(logging.Filter):
    """Rewrites records of the logger it is attached to: no key reaches a handler (message or traceback),
    and no client-chosen string can start a line of its own."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is passed on untouched
            return True
        clean = escape_controls(redact(message))
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None:  # tracebacks quote header values too
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


def secret_free_logger(name: str = "websockets.server") -> logging.Logger:
    """A logger with `RedactSecrets` attached once: the websockets server logger (it logs request lines and
    headers) and the server's own loggers (they log client-chosen ids, fields and messages)."""
    logger = logging.getLogger(name)
    if not any(isinstance(f, RedactSecrets) for f in logger.filters):
        logger.addFilter(RedactSecrets())
    return logger


class RateLimitedWarning:
    """At most one warning per `interval` seconds; the next one says how many were left out meanwhile."""

    def __init__(self, logger: logging.Logger, interval: float = 10.0) -> None:
        self.logger, self.interval = logger, interval
        self._last = float("-inf")
        self._skipped = 0

    def __call__(self, now: float, msg: str, *args: object) -> None:
        if now - self._last < self.interval:
            self._skipped += 1
            return
        suffix = f" ({self._skipped} more like it in the last {self.interval:.0f} s)" if self._skipped else ""
        self.logger.warning(msg + suffix, *args)
        self._last, self._skipped = now, 0
