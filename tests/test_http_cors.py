"""CORS on the HTTP API (server/httpapi/cors.py), over raw HTTP: preflights, the headers on audio and on errors,
403 for an origin not listed, and nothing at all without `--allowed-origin`. A real browser's cross-origin
fetch is in tests/test_web_page.py."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator

import pytest

from tests.server_fixtures import PARAMS, ServerThread, engine, start_server  # noqa: F401

KEY = "sk-cors-key"
APP = "http://app.example:3000"
BODY = json.dumps({"model": "tts-1", "input": "Hello there.", "voice": "alloy", "response_format": "pcm",
                   "params": PARAMS}).encode()
SDK_HEADERS = "authorization, content-type, x-stainless-lang, x-stainless-retry-count"  # what the JS SDK asks


def call(srv: ServerThread, method: str, path: str, headers: dict[str, str],
         body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    assert srv.server is not None and srv.server.http_port is not None
    conn = http.client.HTTPConnection("127.0.0.1", srv.server.http_port, timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def listed(engine) -> Iterator[ServerThread]:  # noqa: F811
    srv = start_server(engine, http_port=0, api_keys=(KEY,), allowed_origins=(APP,), public_metrics=True)
    yield srv
    srv.stop()


def test_a_preflight_from_a_listed_origin_is_granted_without_a_key(listed: ServerThread) -> None:
    status, headers, body = call(listed, "OPTIONS", "/v1/audio/speech", {
        "Origin": APP, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": SDK_HEADERS})
    assert status == 204 and body == b""
    assert headers["access-control-allow-origin"] == APP and "Origin" in headers["vary"]
    assert "POST" in headers["access-control-allow-methods"]
    assert headers["access-control-allow-headers"] == SDK_HEADERS
    assert int(headers["access-control-max-age"]) > 0
    assert listed.metric("bark_http_responses_total", 'endpoint="preflight",status="204"') == 1


def test_audio_and_errors_to_a_listed_origin_carry_the_cors_headers(listed: ServerThread) -> None:
    status, headers, body = call(listed, "POST", "/v1/audio/speech", {
        "Origin": APP, "Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}, BODY)
    assert status == 200 and len(body) > 0
    assert headers["access-control-allow-origin"] == APP
    assert "Retry-After" in headers["access-control-expose-headers"]
    status, headers, body = call(listed, "POST", "/v1/audio/speech", {  # no key: 401, readable by the page
        "Origin": APP, "Content-Type": "application/json"}, BODY)
    assert status == 401 and headers["access-control-allow-origin"] == APP
    assert json.loads(body)["error"]["code"] == "invalid_api_key"
    status, headers, _ = call(listed, "GET", "/v1/models", {"Origin": APP, "Authorization": f"Bearer {KEY}"})
    assert status == 200 and headers["access-control-allow-origin"] == APP


def test_an_origin_not_listed_gets_403_and_no_cors_headers(listed: ServerThread) -> None:
    for method, extra, body in (("OPTIONS", {"Access-Control-Request-Method": "POST"}, None),
                                ("POST", {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
                                 BODY)):
        status, headers, raw = call(listed, method, "/v1/audio/speech", {"Origin": "https://evil.example", **extra},
                                    body)
        assert status == 403, method
        assert "access-control-allow-origin" not in headers
        error = json.loads(raw)["error"]
        assert error["code"] == "origin_not_allowed" and error["param"] == "origin"
        assert "https://evil.example" in error["message"] and "--allowed-origin" in error["message"]
    # no Origin (a server, a CLI, an SDK outside a browser): as always
    status, headers, _ = call(listed, "POST", "/v1/audio/speech", {
        "Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}, BODY)
    assert status == 200 and "access-control-allow-origin" not in headers


def test_without_a_list_there_are_no_cors_headers_and_any_origin_may_use_a_star(engine) -> None:  # noqa: F811
    plain = start_server(engine, http_port=0)
    try:
        status, headers, _ = call(plain, "OPTIONS", "/v1/audio/speech", {
            "Origin": APP, "Access-Control-Request-Method": "POST"})
        assert status == 204 and "access-control-allow-origin" not in headers  # the browser refuses
        status, headers, _ = call(plain, "POST", "/v1/audio/speech", {
            "Origin": APP, "Content-Type": "application/json"}, BODY)
        assert status == 200 and "access-control-allow-origin" not in headers
    finally:
        plain.stop()
    star = start_server(engine, http_port=0, allowed_origins=("*",))
    try:
        status, headers, _ = call(star, "OPTIONS", "/v1/audio/speech", {
            "Origin": "https://any.example", "Access-Control-Request-Method": "POST"})
        assert status == 204 and headers["access-control-allow-origin"] == "https://any.example"
    finally:
        star.stop()


def test_a_preflight_does_not_echo_header_names_that_are_not_tokens(listed: ServerThread) -> None:
    status, headers, _ = call(listed, "OPTIONS", "/v1/models", {
        "Origin": APP, "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization, bad header, x-ok, <script>"})
    assert status == 204 and headers["access-control-allow-headers"] == "authorization, x-ok"
