"""Cross-origin requests to the HTTP API, for browser apps (the OpenAI JS SDK with `dangerouslyAllowBrowser`,
a page's own fetch).

Governed by the same list as the WebSocket's Origin check, `--allowed-origin` (repeatable; `*` = any origin):

- no list (the default): no CORS headers. Servers, CLIs and SDKs outside a browser work as always; a browser
  page on another origin cannot read the answers (and cannot send the JSON request at all, since that needs a
  preflight the server does not grant);
- a request whose `Origin` is listed gets `Access-Control-Allow-Origin: <that origin>` on every answer, the
  audio stream and the errors alike (so a page can read a 429's `Retry-After`); its preflight (`OPTIONS` with
  `Access-Control-Request-Method`) gets 204 with the methods, the headers it asked for, and a max age. No key
  is needed for a preflight (browsers send none); the request itself still needs one;
- a request from an `Origin` that is not listed gets 403, as the WebSocket's handshake does. Requests without an
  `Origin` header (not a browser) always pass: origins protect browsers, keys protect the service.

No credentials mode (cookies): keys travel in `Authorization`, which a preflight allows like any header.
"""

from __future__ import annotations

from aiohttp import web

from .errors import ApiError

METHODS = "GET, POST, OPTIONS"
EXPOSED = "Retry-After, Content-Type, Content-Length"  # what a page may read besides the simple headers
MAX_AGE_S = 600  # how long a browser may cache a preflight's answer
MAX_REQUEST_HEADERS_CHARS = 2_000  # of the header names a preflight may ask for (the OpenAI SDK asks ~10)


class Cors:
    """The allow-list and the headers; `ANY` ("*") in it allows every origin."""

    ANY = "*"

    def __init__(self, allowed: tuple[str, ...]) -> None:
        self.enabled = bool(allowed)
        self._any = self.ANY in allowed
        self._allowed = frozenset(allowed)

    def allows(self, origin: str) -> bool:
        return self._any or origin in self._allowed

    def refusal(self, request: web.Request) -> ApiError | None:
        """403 for a browser request from an origin that is not listed (only when a list is set)."""
        origins = request.headers.getall("Origin", [])
        if not self.enabled or not origins:
            return None
        if len(origins) == 1 and self.allows(origins[0]):
            return None
        shown = origins[0][:100] if len(origins) == 1 else f"{len(origins)} Origin headers"
        return ApiError(403, f"origin: {shown} is not allowed (the server's --allowed-origin list)",
                        type="invalid_request_error", param="origin", code="origin_not_allowed")

    def preflight(self, request: web.Request) -> web.Response | None:
        """The answer to a CORS preflight (`OPTIONS` with `Access-Control-Request-Method`), or None when the
        request is not one. Only called for origins `refusal` let through."""
        if request.method != "OPTIONS" or "Access-Control-Request-Method" not in request.headers:
            return None
        if not self.enabled:
            return web.Response(status=204)  # no Access-Control-Allow-Origin: the browser refuses the request
        asked = request.headers.get("Access-Control-Request-Headers", "")[:MAX_REQUEST_HEADERS_CHARS]
        names = [h.strip() for h in asked.split(",") if h.strip() and _is_token(h.strip())]
        headers = {"Access-Control-Allow-Methods": METHODS, "Access-Control-Max-Age": str(MAX_AGE_S)}
        if names:
            headers["Access-Control-Allow-Headers"] = ", ".join(names)
        return web.Response(status=204, headers=headers)

    async def on_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        """aiohttp's on_response_prepare: every answer to a listed origin carries the CORS headers (a streamed
        answer's headers go out at prepare, before any middleware could add them)."""
        origin = request.headers.get("Origin")
        if not self.enabled or origin is None or not self.allows(origin):
            return
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = EXPOSED
        vary = response.headers.get("Vary")
        response.headers["Vary"] = "Origin" if not vary else f"{vary}, Origin"


def _is_token(name: str) -> bool:
    """An HTTP header name (RFC 9110 token characters), so nothing odd is echoed back."""
    return len(name) <= 100 and all(c.isalnum() or c in "!#$%&'*+-.^_`|~" for c in name) and name.isascii()
