"""Segmentation and tokenisation never run on the engine thread (nor on the server's event loop thread),
and cost time linear in the text (the figure is in the README; no timing is asserted here)."""

from __future__ import annotations

import threading

import pytest

import streaming.textprep as textprep
from client.api import BarkStreamClient, Done
from engine_fixtures import make_engine, run, tiny_parts
from server_fixtures import PARAMS, run as run_client, start_server
from streaming.params import SamplingParams
from streaming.stream import SpeechRequest


@pytest.fixture
def seen(monkeypatch):
    """Names of the threads that called segment_text."""
    names: list[str] = []
    real = textprep.segment_text

    def spy(text, count, **kw):
        names.append(threading.current_thread().name)
        return real(text, count, **kw)

    monkeypatch.setattr(textprep, "segment_text", spy)
    return names


def test_engine_never_segments(seen) -> None:
    """Whole and piecewise requests: every segment_text call happened in the caller's thread."""
    eng = make_engine(tiny_parts(), max_streams=2)
    try:
        params = SamplingParams(greedy=True, max_semantic_tokens=8)
        assert run(eng, SpeechRequest(text="One sentence. And another one.", sampling=params))[3].reason == "end"
        h = eng.submit(SpeechRequest(text=None, sampling=params))
        for piece in ["Hel", "lo there. How", " are you? Fine"]:
            h.feed(piece)
        h.flush()
        h.end()
        assert list(h.events(timeout=60))[-1].reason == "end"
    finally:
        eng.stop()
    assert len(seen) >= 3 and "bark-engine" not in seen
    assert set(seen) == {threading.current_thread().name}


def test_server_segments_in_worker_threads(seen) -> None:
    """Over the WebSocket, speak and start/text/end segment in worker threads: not the engine's, not the loop's."""
    eng = make_engine(tiny_parts(), max_streams=2)
    srv = start_server(eng)
    try:
        async def go() -> list[str]:
            async with await BarkStreamClient.connect(srv.url) as client:
                reasons = [e.reason async for e in client.speak("Hello there. How are you?", params=PARAMS)
                           if isinstance(e, Done)]
                reasons += [e.reason async for e in client.stream_text(["Piece one. ", "Piece two."], params=PARAMS)
                            if isinstance(e, Done)]
                return reasons

        assert run_client(go()) == ["end", "end"]
    finally:
        srv.stop()
        eng.stop()
    assert seen and not {"bark-engine", "test server"} & set(seen), seen
