"""The browser page: a try-it player at `/` on the WebSocket port, speaking protocol v1 itself.

    page = WebPage()                              # reads the few files below once, at start-up
    response = page.respond(connection, path)     # a Response for `/` and `/web/<file>`, None for other paths

Only the files named in `FILES` are served, from memory, by exact path: no directory
listing, no path ever reaches the filesystem, so `..`, `%2e%2e`, `//` or a symlink cannot
reach anything else. Every answer carries its exact content type, `nosniff`, a Content
Security Policy that allows only this origin's scripts and WebSocket (no inline script,
no third-party origin), no framing and no referrer. The page holds no secret: it is
served without a key, and the WebSocket it opens asks for one as every client does
(`?token=` from the page's own URL, or the key typed into it).
"""

from __future__ import annotations

from importlib.resources import files

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Response

# URL path -> (file in this package, content type)
FILES: dict[str, tuple[str, str]] = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/web/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/web/msgpack.js": ("msgpack.js", "text/javascript; charset=utf-8"),
    "/web/player-worklet.js": ("player-worklet.js", "text/javascript; charset=utf-8"),
    "/web/style.css": ("style.css", "text/css; charset=utf-8"),
}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
    "Cross-Origin-Opener-Policy": "same-origin",
}


class WebPage:
    """The page's files, read once; `respond` answers the paths in FILES and nothing else."""

    def __init__(self) -> None:
        root = files(__package__)
        self._files = {path: ((root / name).read_bytes(), ctype) for path, (name, ctype) in FILES.items()}

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(self._files)

    def respond(self, connection: ServerConnection, path: str) -> Response | None:
        """The file at exactly `path` (query already stripped), or None when `path` is not the page's."""
        entry = self._files.get(path)
        if entry is None:
            return None
        body, ctype = entry
        response = connection.respond(200, "")
        response.body = body
        del response.headers["Content-Length"]
        del response.headers["Content-Type"]
        response.headers["Content-Length"] = str(len(body))
        response.headers["Content-Type"] = ctype
        for name, value in HEADERS.items():
            response.headers[name] = value
        return response
