"""The browser page at / : served safely (exact files, content types, no listing, no traversal), and played in a real
headless Chromium (Debian's chromium, driven by Playwright): it speaks a sentence and receives every sample the
server sent (against `done.samples`), stops a second request mid-way, and takes the API key from ?token=."""

from __future__ import annotations

import json
import os
import shutil
import socket
from collections.abc import Iterator

import pytest

from tests.server_fixtures import PARAMS, ServerThread, engine, start_server  # noqa: F401

CHROMIUM = os.environ.get("BARK_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
PAGE_FILES = {"/": "text/html; charset=utf-8", "/web/app.js": "text/javascript; charset=utf-8",
              "/web/msgpack.js": "text/javascript; charset=utf-8",
              "/web/player-worklet.js": "text/javascript; charset=utf-8", "/web/style.css": "text/css; charset=utf-8"}
KEY = "page-test-key"


@pytest.fixture(scope="module")
def server(engine) -> Iterator[ServerThread]:  # noqa: F811
    srv = start_server(engine, api_keys=(KEY,), public_metrics=True)
    yield srv
    srv.stop()


def raw_get(port: int, target: str) -> tuple[int, dict[str, str], bytes]:
    """GET `target` exactly as written (no client-side normalisation of `..` or `%2e`)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


# --- serving ----------------------------------------------------------------------------------------------


def test_the_page_files_are_served_with_their_content_types(server: ServerThread) -> None:
    for path, ctype in PAGE_FILES.items():
        status, headers, body = raw_get(server.port, path)
        assert status == 200, path
        assert headers["content-type"] == ctype
        assert int(headers["content-length"]) == len(body) > 0
        assert headers["x-content-type-options"] == "nosniff"
        assert "script-src 'self'" in headers["content-security-policy"]
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
    status, _, body = raw_get(server.port, "/?token=whatever")  # the page needs no key: it holds no secret
    assert status == 200 and b'<script type="module" src="/web/app.js">' in body


@pytest.mark.parametrize("target", [
    "/web/", "/web", "/web/../config.py", "/web/..%2f__init__.py", "/%2e%2e/server/config.py", "/web/app.js/",
    "/web//app.js", "/web/./app.js", "/web/APP.JS", "/web/__init__.py", "/index.html", "/web/app.js%00.png",
    "/../../etc/passwd", "/server/web/app.js",
])
def test_nothing_else_is_served(server: ServerThread, target: str) -> None:
    status, headers, body = raw_get(server.port, target)
    assert status in (400, 404), (target, status)
    assert b"import" not in body and b"def " not in body


def test_the_page_can_be_turned_off(engine) -> None:  # noqa: F811
    srv = start_server(engine, web_page=False)
    try:
        assert raw_get(srv.port, "/")[0] == 404
        assert raw_get(srv.port, "/web/app.js")[0] == 404
    finally:
        srv.stop()


# --- in Chromium ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if CHROMIUM is None:  # a newcomer's machine skips, saying why; CI (which installs it) must not
        why = "chromium is not installed (apt-get install chromium; .ci/run does) or set BARK_CHROMIUM"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        instance = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                      args=["--autoplay-policy=no-user-gesture-required", "--mute-audio"])
        yield instance
        instance.close()


def open_page(browser: object, server: ServerThread, query: str = f"?token={KEY}"):  # type: ignore[no-untyped-def]
    page = browser.new_page()  # type: ignore[attr-defined]
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.goto(f"http://127.0.0.1:{server.port}/{query}")
    return page, errors


def test_the_page_speaks_plays_every_sample_and_stops(browser: object, server: ServerThread) -> None:
    page, errors = open_page(browser, server)
    page.wait_for_function("() => window.barkPage && window.barkPage.connected", timeout=30_000)
    voices = page.eval_on_selector_all("#voice option", "options => options.map(o => o.value)")
    assert "" in voices and "v2/en_speaker_6" in voices
    page.click("summary")
    page.fill("#params", json.dumps(PARAMS))
    page.select_option("#voice", "v2/en_speaker_6")

    # 1. A sentence, spoken whole: every sample the server sent arrives, and the player plays it.
    page.fill("#text", "Hello there. How are you today?")
    page.click("#speak")
    page.wait_for_function("() => window.barkPage.finished.length === 1", timeout=120_000)
    first = page.evaluate("window.barkPage.finished[0]")
    assert first["reason"] == "end", first
    assert first["received"] == first["samples"] > 2_400, first
    assert first["ttfaMs"] is not None and first["serverTtfaMs"] is not None and first["rtf"] > 0
    assert page.text_content("#ttfa").endswith(" ms")
    assert "✓" in page.text_content("#samples")
    page.wait_for_function(f"() => window.barkPage.played >= {first['samples']}", timeout=60_000)  # through the worklet
    # The meter measured what the player output (the level now, after the end, is silence: the peak is not).
    assert page.evaluate("window.barkPage.peakLevel") > -60

    # 2. A long text, stopped once its audio flows: the request ends as cancelled, nothing lost or left over.
    cancelled = server.metric("bark_requests_finished_total", 'reason="cancelled"')
    page.fill("#text", " ".join(f"This is sentence number {i} of a long story." for i in range(30)))
    page.click("#speak")
    page.wait_for_function("() => window.barkPage.current && window.barkPage.current.received > 0", timeout=120_000)
    page.click("#stop")
    page.wait_for_function("() => window.barkPage.finished.length === 2", timeout=60_000)
    second = page.evaluate("window.barkPage.finished[1]")
    assert second["reason"] == "cancelled", second
    assert second["received"] == second["samples"] > 0, second
    assert server.metric("bark_requests_finished_total", 'reason="cancelled"') == cancelled + 1

    # 3. Text streamed word by word, as an LLM sends it (start, text..., end).
    page.fill("#text", "Streaming, word by word.")
    page.click("#stream")
    page.wait_for_function("() => window.barkPage.finished.length === 3", timeout=120_000)
    third = page.evaluate("window.barkPage.finished[2]")
    assert third["reason"] == "end" and third["received"] == third["samples"] > 0, third

    # 4. Speak as I type: every keystroke's addition goes out as `text`, Enter flushes, Speak ends the request.
    page.check("#live")
    page.click("#text")
    page.keyboard.type("Typed live.")
    page.keyboard.press("Enter")
    page.wait_for_function("() => window.barkPage.current && window.barkPage.current.received > 0",
                           timeout=120_000)  # the flushed sentence is spoken before the request ends
    page.click("#speak")
    page.wait_for_function("() => window.barkPage.finished.length === 4", timeout=120_000)
    fourth = page.evaluate("window.barkPage.finished[3]")
    assert fourth["kind"] == "live" and fourth["reason"] == "end", fourth
    assert fourth["received"] == fourth["samples"] > 0 and fourth["segments"] == ["Typed live."], fourth
    assert not errors, errors
    page.close()


def test_without_the_key_the_page_says_so(browser: object, server: ServerThread) -> None:
    page, _ = open_page(browser, server, query="")
    page.wait_for_function("() => document.getElementById('connection').textContent === 'not connected'",
                           timeout=30_000)
    assert "?token=" in page.text_content("#log")
    page.close()


# --- the HTTP API from a page on another origin (CORS) --------------------------------------------------------


class _BlankSite:
    """A page on its own origin (http://127.0.0.1:PORT), standing in for a browser app that calls the API."""

    def __init__(self) -> None:
        import http.server
        import threading

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                body = b"<!doctype html><title>app</title><p>an app on another origin</p>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.origin = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


FETCH_SPEECH = """async ([url, key]) => {
  try {
    const r = await fetch(url, {method: "POST", headers: {"Authorization": "Bearer " + key,
      "Content-Type": "application/json", "X-Stainless-Lang": "js"},
      body: JSON.stringify({model: "tts-1", input: "Hello there.", voice: "alloy", response_format: "pcm",
                            params: %s})});
    const bytes = (await r.arrayBuffer()).byteLength;
    return {status: r.status, bytes, retryAfter: r.headers.get("Retry-After")};
  } catch (err) {
    return {error: String(err)};
  }
}""" % json.dumps(PARAMS)


def test_a_page_on_another_origin_calls_the_http_api_when_listed(browser: object, engine) -> None:  # noqa: F811
    """Chromium's own CORS: a page on a listed origin POSTs JSON with a key (a preflighted request, as the OpenAI
    JS SDK sends) and reads the audio; a page on an origin that is not listed cannot."""
    allowed, other = _BlankSite(), _BlankSite()
    srv = start_server(engine, http_port=0, api_keys=(KEY,), allowed_origins=(allowed.origin,))
    try:
        url = f"http://127.0.0.1:{srv.server.http_port}/v1/audio/speech"  # type: ignore[union-attr]
        results = {}
        for site in (allowed, other):
            page = browser.new_page()  # type: ignore[attr-defined]
            page.goto(site.origin + "/")
            results[site.origin] = page.evaluate(FETCH_SPEECH, [url, KEY])
            page.close()
        assert results[allowed.origin]["status"] == 200 and results[allowed.origin]["bytes"] > 2_400, results
        assert "Failed to fetch" in results[other.origin].get("error", ""), results
    finally:
        srv.stop()
        allowed.close()
        other.close()
