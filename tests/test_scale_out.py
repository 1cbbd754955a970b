"""Replicas behind a real HAProxy, started by deploy/local-cluster.sh: leastconn spreads streams, a SIGTERMed
replica drains while the other takes every new stream, a full replica is skipped, TLS ends at HAProxy and
the client's own address reaches the server. Loopback only; every wait is bounded."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from client.api import AudioChunk, Done, collect
from client.failover import FailoverClient, RetryPolicy
from tests.server_fixtures import PARAMS, TOKENIZER_DIR, RawClient, metric_value, run

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "deploy" / "local-cluster.sh"
SERVER_ARGS = ["--model", "random-tiny", "--codec", "random", "--device", "cpu", "--dtype", "float32",
               "--tokenizer", str(TOKENIZER_DIR), "--offline", "--log-level", "info"]
LONG_PARAMS = {**PARAMS, "max_semantic_tokens": 768}  # far longer than any test waits for
SHORT_PARAMS = {**PARAMS, "max_semantic_tokens": 8}  # 16 at once on 2 CPU cores: keep each short
OPEN_TIMEOUT = 60.0  # a connection may wait in HAProxy's queue for a replica's slot
POLICY = RetryPolicy(connect_attempts=20, request_retries=3, backoff_s=0.1, max_backoff_s=1.0)

pytestmark = pytest.mark.skipif(shutil.which("haproxy") is None,
                                reason="haproxy is not installed (apt-get install haproxy; .ci/run installs it)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    """deploy/local-cluster.sh PORT N ARGS... as a subprocess in its own session; stdout lines collected."""

    def __init__(self, tmp: Path, n: int, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = _free_port()
        self.dir = tmp / "cluster"
        environ = {**os.environ, "PYTHON": sys.executable, "BARK_CLUSTER_DIR": str(self.dir),
                   "BARK_CLUSTER_START_TIMEOUT": "240", **(env or {})}
        self.proc = subprocess.Popen(["bash", str(SCRIPT), str(self.port), str(n), *SERVER_ARGS, *args],
                                     cwd=ROOT, env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, start_new_session=True)
        self.lines: queue.Queue[tuple[float, str]] = queue.Queue()
        self.log: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.replicas: dict[int, tuple[int, int]] = {}  # I -> (pid, port)
        balancer = False
        try:
            while len(self.replicas) < n or not balancer:
                line = self.next_line(300.0)
                match = re.fullmatch(r"replica (\d+) pid (\d+) port (\d+)", line)
                if match:
                    self.replicas[int(match[1])] = (int(match[2]), int(match[3]))
                balancer = balancer or re.fullmatch(rf"haproxy pid \d+ port {self.port}", line) is not None
                assert self.proc.poll() is None, "local-cluster.sh exited:\n" + self.dump()
        except BaseException:
            self.kill()
            raise

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put((time.monotonic(), line.rstrip("\n")))

    def next_line(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                _, line = self.lines.get(timeout=1.0)
                break
            except queue.Empty:
                if self.proc.poll() is not None and self.lines.empty():
                    raise AssertionError(f"local-cluster.sh exited ({self.proc.returncode}):\n{self.dump()}") from None
                if time.monotonic() > deadline:
                    raise AssertionError(f"local-cluster.sh said nothing for {timeout:.0f} s:\n{self.dump()}") from None
        self.log.append(line)
        return line

    def wait_line(self, pattern: str, timeout: float) -> float:
        """Wait for a stdout line matching `pattern`; returns when it was read (time.monotonic())."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                at, line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no line like {pattern!r} within {timeout:.0f} s:\n{self.dump()}") from None
            self.log.append(line)
            if re.fullmatch(pattern, line):
                return at

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/stream"

    def replica_url(self, i: int) -> str:
        return f"ws://127.0.0.1:{self.replicas[i][1]}/v1/stream"

    def metric(self, i: int, name: str, labels: str = "") -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.replicas[i][1]}/metrics", timeout=10) as resp:
            return metric_value(resp.read().decode(), name, labels)

    def health(self, i: int) -> tuple[int, dict[str, Any]]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.replicas[i][1]}/healthz", timeout=10) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, kind: object, exc: object, tb: object) -> None:
        """On a failure the logs are printed (pytest shows them); the processes are killed either way."""
        if kind is not None:
            print(self.dump())
        self.kill()

    def dump(self) -> str:
        logs = [f"--- {p.name}\n" + p.read_text(errors="replace")[-3000:] for p in sorted(self.dir.glob("*.log"))]
        return "\n".join(["--- stdout", *self.log, *logs])

    def stop(self, timeout: float = 120.0) -> int:
        """SIGTERM the script (replicas drain, HAProxy stops); its exit status."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None or _group_alive(self.proc.pid):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)  # the session this test started, nothing else
            except ProcessLookupError:
                pass
            self.proc.wait(10)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    return tmp_path


async def _one_request(url: str, text: str, params: dict[str, Any], **options: Any) -> tuple[Done, int]:
    """One request on its own connection (a balancer routes connections); (done, retries)."""
    options.setdefault("open_timeout", OPEN_TIMEOUT)
    async with await FailoverClient.connect([url], policy=POLICY, **options) as client:
        _, done = await collect(client.speak(text, params=params))
        return done, client.retried_requests


def test_cluster_spreads_streams_and_drains_a_replica_without_failures(tmp: Path) -> None:
    """2 replicas behind HAProxy: 16 concurrent streams reach both; then 8 more run while replica 1 gets
    SIGTERM, 2 more start during its drain, and 2 clients connected to replica 1 directly send theirs: replica
    1 finishes what it had and exits 0, everything new goes to replica 2, and every request ends with `done`."""
    with Cluster(tmp, 2, "--max-streams", "8", "--drain-timeout", "120") as cluster:
        assert cluster.health(1)[0] == 200 and cluster.health(2)[0] == 200

        async def spread() -> list[Done]:
            results = await asyncio.gather(*(_one_request(cluster.url, f"Request {i} is here.", SHORT_PARAMS)
                                             for i in range(16)))
            return [done for done, _ in results]

        t0 = time.monotonic()
        dones = run(spread(), timeout=280)
        spread_s = time.monotonic() - t0
        assert [d.reason for d in dones] == ["end"] * 16
        served = {i: cluster.metric(i, "bark_requests_total") for i in (1, 2)}
        assert served[1] > 0 and served[2] > 0 and served[1] + served[2] == 16, served

        async def drain_phase() -> tuple[list[tuple[Done, int]], list[tuple[Done, int]], list[tuple[str, int]],
                                         dict[int, float], float]:
            started = [asyncio.Event() for _ in range(8)]
            direct = [await FailoverClient.connect([cluster.replica_url(1), cluster.url], policy=POLICY,
                                                   open_timeout=OPEN_TIMEOUT)
                      for _ in range(2)]  # idle connections on replica 1, from clients that know both URLs

            async def streamed(i: int) -> tuple[Done, int]:
                async with await FailoverClient.connect([cluster.url], policy=POLICY,
                                                        open_timeout=OPEN_TIMEOUT) as client:
                    done = None
                    async for event in client.speak(f"Streamed request {i} runs a while.", params=PARAMS):
                        if isinstance(event, AudioChunk):
                            started[i].set()
                        elif isinstance(event, Done):
                            done = event
                    assert done is not None
                    return done, client.retried_requests

            running = [asyncio.ensure_future(streamed(i)) for i in range(8)]
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started)), 240)  # every one is admitted
            at_sigterm = {i: await asyncio.to_thread(cluster.metric, i, "bark_requests_total") for i in (1, 2)}
            os.kill(cluster.replicas[1][0], signal.SIGTERM)
            sigterm_at = time.monotonic()
            while (await asyncio.to_thread(cluster.health, 1))[1]["reason"] != "draining":
                await asyncio.sleep(0.02)  # bounded by run()'s timeout
            late = [asyncio.ensure_future(_one_request(cluster.url, f"Late request {i}.", SHORT_PARAMS))
                    for i in range(2)]

            async def via_direct(client: FailoverClient) -> tuple[str, int]:
                async with client:
                    _, done = await collect(client.speak("Sent to a draining replica.", params=SHORT_PARAMS))
                    assert done.reason == "end"
                    return client.url, client.retried_requests

            moved = await asyncio.gather(*(via_direct(c) for c in direct))
            return await asyncio.gather(*running), await asyncio.gather(*late), moved, at_sigterm, sigterm_at

        t1 = time.monotonic()
        in_flight, late, moved, at_sigterm, sigterm_at = run(drain_phase(), timeout=400)
        drain_phase_s = time.monotonic() - t1
        exited_at = cluster.wait_line(r"replica 1 exited status 0", 150.0)
        drain_s = exited_at - sigterm_at
        assert [d.reason for d, _ in in_flight] == ["end"] * 8  # finished where they were, or retried
        assert [d.reason for d, _ in late] == ["end"] * 2
        assert [url for url, _ in moved] == [cluster.url] * 2  # left replica 1 for HAProxy (shutting_down or 1012)
        retried = sum(r for _, r in in_flight) + sum(r for _, r in late)
        assert at_sigterm[1] + at_sigterm[2] == 24  # the 8 in flight were all admitted before SIGTERM
        after = cluster.metric(2, "bark_requests_total")
        # every request after SIGTERM went to replica 2: the 2 late ones, the 2 moved ones, and any retried
        assert after - at_sigterm[2] == 2 + 2 + retried, (after, at_sigterm, retried)
        assert cluster.health(2)[0] == 200
        log = (cluster.dir / "replica-1.log").read_text()
        busy = re.search(r"draining: \d+ connection\(s\), (\d+) with requests in flight", log)
        assert busy is not None and int(busy[1]) >= 1, log[-2000:]  # the drain had streams to finish
        retried += sum(r for _, r in moved)
        print(f"\nscale-out figures: 16 concurrent requests in {spread_s:.1f} s (replica 1 {served[1]:.0f}, "
              f"replica 2 {served[2]:.0f}), 0 failures; drain: {8 + 2 + 2} requests in {drain_phase_s:.1f} s, "
              f"{busy[1]} connection(s) streaming on replica 1 at SIGTERM, replica 1 exited {drain_s:.1f} s after "
              f"SIGTERM, {retried} request(s) retried by clients, 0 failures")
        assert cluster.stop() == 0


def test_a_full_replica_is_skipped(tmp: Path) -> None:
    """Replica 1's only 2 slots held by a direct connection: streams through HAProxy all land on replica 2
    (its 503 is retried elsewhere by HAProxy), and a client given both URLs moves to replica 2 by itself."""
    with Cluster(tmp, 2, "--max-streams", "2", "--max-streams-per-connection", "2") as cluster:
        async def go() -> tuple[list[Done], str, Done]:
            filler = await RawClient.connect(cluster.replica_url(1))
            for rid in ("f1", "f2"):
                await filler.speak(rid, "A long one that holds a slot.", params=LONG_PARAMS)
            while not all(filler.results.get(r) and filler.results[r].audio for r in ("f1", "f2")):
                await filler.next_message()
            status, body = await asyncio.to_thread(cluster.health, 1)
            assert (status, body["reason"]) == (503, "full"), body
            dones = []
            for i in range(4):  # one at a time: replica 2 is never full itself
                done, _ = await _one_request(cluster.url, f"Request {i}.", SHORT_PARAMS)
                dones.append(done)
            async with await FailoverClient.connect([cluster.replica_url(1), cluster.replica_url(2)],
                                                    policy=POLICY) as client:
                _, done = await collect(client.speak("Hello there.", params=PARAMS))
                url = client.url
            await filler.close()
            return dones, url, done

        dones, url, done = run(go(), timeout=300)
        assert [d.reason for d in dones] == ["end"] * 4 and done.reason == "end"
        assert url == cluster.replica_url(2)
        assert cluster.metric(1, "bark_requests_total") == 2  # the two fillers only
        assert cluster.metric(2, "bark_requests_total") == 5
        assert cluster.metric(1, "bark_handshakes_refused_total", 'reason="full"') >= 1
        assert cluster.stop() == 0


def test_tls_at_haproxy_and_the_real_client_address(tmp: Path) -> None:
    """HAProxy terminates TLS with a self-signed certificate (wss:// and https://) and passes the client's
    address in X-Forwarded-For: with --max-connections-per-ip 1, a second connection from 127.0.0.2 gets
    429 while one from 127.0.0.3 is accepted (all three reach the replica through the same proxy)."""
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    pem = tmp / "haproxy.pem"
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(pem)
    trust = ssl.create_default_context()
    ca.configure_trust(trust)
    with Cluster(tmp, 1, "--max-connections-per-ip", "1", env={"BARK_CLUSTER_CERT": str(pem)}) as cluster:
        wss = f"wss://127.0.0.1:{cluster.port}/v1/stream"
        with urllib.request.urlopen(f"https://127.0.0.1:{cluster.port}/healthz", context=trust, timeout=10) as r:
            assert r.status == 200 and json.loads(r.read())["reason"] is None

        async def go() -> tuple[str, int, str]:
            first = await connect(wss, ssl=trust, local_addr=("127.0.0.2", 0))
            await first.recv()  # ready
            with pytest.raises(InvalidStatus) as second:
                await connect(wss, ssl=trust, local_addr=("127.0.0.2", 0))
            other = await connect(wss, ssl=trust, local_addr=("127.0.0.3", 0))
            await other.recv()
            await other.close()
            await first.close()
            done, _ = await _one_request(wss, "Hello over TLS.", PARAMS, ssl=trust)
            return "ok", second.value.response.status_code, done.reason

        assert run(go(), timeout=120) == ("ok", 429, "end")
        assert cluster.metric(1, "bark_handshakes_refused_total", 'reason="per_ip"') == 1
        log = (cluster.dir / "replica-1.log").read_text()
        assert "127.0.0.2" in log and "127.0.0.3" in log
        assert cluster.stop() == 0


def test_local_cluster_usage_and_a_replica_that_cannot_start(tmp: Path) -> None:
    """Bad arguments exit 2 with the usage; a replica that exits at start makes the script stop the others and
    exit 1 with that replica's log, leaving nothing running."""
    usage = subprocess.run(["bash", str(SCRIPT), "8080"], capture_output=True, text=True, timeout=30)
    assert usage.returncode == 2 and "usage:" in usage.stderr
    zero = subprocess.run(["bash", str(SCRIPT), "8080", "0"], capture_output=True, text=True, timeout=30)
    assert zero.returncode == 2 and "N: expected a positive number" in zero.stderr
    env = {**os.environ, "PYTHON": sys.executable, "BARK_CLUSTER_DIR": str(tmp / "bad")}
    proc = subprocess.Popen(["bash", str(SCRIPT), str(_free_port()), "2", *SERVER_ARGS, "--max-streams", "0"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=180)
    finally:
        if _group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 1 and "replica 1 did not start" in err and "--max-streams" in err, (out, err)
    assert not _group_alive(proc.pid)
