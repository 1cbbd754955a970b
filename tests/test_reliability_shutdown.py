"""`python -m server` as a subprocess: SIGTERM drains (in-flight finish, new refused, the rest 1012) and exits 0."""

from __future__ import annotations

import asyncio
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server_fixtures import PARAMS, TOKENIZER_DIR, RawClient, run

ROOT = Path(__file__).resolve().parent.parent
LONG_TEXT = " ".join(f"Sentence number {n} is here." for n in range(40))
LONG_PARAMS = {**PARAMS, "max_semantic_tokens": 768}  # about a minute of CPU: outlives the drain deadline
DRAIN_S = 10.0  # the short request must finish inside it even on a loaded machine (4 s did not, under load)


class ServerProcess:
    """`python -m server` on a free loopback port; stderr lines collected by a reader thread."""

    def __init__(self, *extra: str) -> None:
        cmd = [sys.executable, "-m", "server", "--model", "random-tiny", "--codec", "random", "--device", "cpu",
               "--dtype", "float32", "--tokenizer", str(TOKENIZER_DIR), "--offline", "--port", "0", *extra]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.log: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.port = self._wait_port(120.0)

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.put(line)

    def _wait_port(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            self.log.append(line)
            match = re.search(r"listening on ws://[\d.]+:(\d+)/", line)
            if match:
                return int(match.group(1))
        self.proc.kill()
        raise AssertionError("server did not start:\n" + "".join(self.log))

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/stream"

    def wait(self, timeout: float) -> int:
        code = self.proc.wait(timeout)
        while not self.lines.empty():
            self.log.append(self.lines.get())
        return code


@pytest.fixture
def server_process() -> Iterator[ServerProcess]:
    """A server subprocess with a short drain deadline, killed if the test leaves it running."""
    proc = ServerProcess("--drain-timeout", str(DRAIN_S), "--log-level", "info")
    yield proc
    if proc.proc.poll() is None:
        proc.proc.kill()
        proc.proc.wait(10)


async def _refused(url: str, timeout: float) -> None:
    """Poll until new connections are refused: HTTP 503 while draining, or the listener closed."""
    from websockets.exceptions import InvalidStatus

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            client = await RawClient.connect(url)
        except InvalidStatus as exc:
            assert exc.response.status_code == 503, exc
            return
        except OSError:
            return
        await client.close()
        await asyncio.sleep(0.02)  # polling interval, bounded by the deadline
    raise AssertionError("new connections still accepted after SIGTERM")


def test_sigterm_drains_then_exits_0(server_process: ServerProcess) -> None:
    """After SIGTERM: new connections and requests are refused, in-flight finish, the rest get 1012; exit 0."""
    srv = server_process

    async def go() -> tuple[RawClient, RawClient, tuple[int | None, str], tuple[int | None, str]]:
        short, long = await RawClient.connect(srv.url), await RawClient.connect(srv.url)
        await short.speak("s", "Hello there. How are you today?")
        await long.speak("l", LONG_TEXT, params=LONG_PARAMS)
        while not short.results.get("s") or not short.results["s"].audio:
            await short.next_message()
        srv.proc.send_signal(signal.SIGTERM)
        await _refused(srv.url, 10.0)
        await short.speak("late", "Too late.")
        return short, long, await short.closed(), await long.closed()

    t0 = time.monotonic()
    short, long, short_close, long_close = run(go())
    elapsed = time.monotonic() - t0
    code = srv.wait(30.0)
    assert code == 0, "".join(srv.log)
    done = short.results["s"].done
    assert done is not None and done["reason"] == "end"
    short.results["s"].check_contiguous()
    assert [e["code"] for e in short.results["late"].errors] == ["shutting_down"]
    assert short.results["late"].done is None and [e["code"] for e in short.general_errors] == ["shutting_down"]
    assert short_close == (1012, "shutting_down") and long_close == (1012, "shutting_down")
    assert long.results["l"].done is None and [e["code"] for e in long.general_errors] == ["shutting_down"]
    assert elapsed < DRAIN_S + 20.0
    assert not [line for line in srv.log if "Traceback" in line or "handler failed" in line]


def test_engine_death_exits_1(monkeypatch: pytest.MonkeyPatch) -> None:
    """If the engine thread dies while serving, `python -m server`'s main returns exit status 1."""
    import server.__main__ as cli
    from streaming.bundle import load_engine

    engine = load_engine(model="random-tiny", device="cpu", dtype="float32", codec="random",
                         tokenizer=str(TOKENIZER_DIR))
    real_start = engine.start

    def start_then_die() -> float:
        seconds = real_start()

        def boom(*a: object, **kw: object) -> None:
            raise RuntimeError("injected engine failure")
        engine.scheduler.plan = boom  # type: ignore[method-assign]
        return seconds

    monkeypatch.setattr(engine, "start", start_then_die)
    import server.app

    monkeypatch.setattr(server.app, "create_engine", lambda config: engine)
    assert cli.main(["--model", "random-tiny", "--port", "0", "--offline", "--log-level", "warning",
                     "--engine", "thread"]) == 1
