"""Soak: N minutes of mixed traffic against `python -m server` (random-tiny) on loopback.

    python bench/soak.py --minutes 3 [--users 12] [--prebuffer-ms 500] [--seed 1]

Simulated users connect, speak or stream text piece by piece with one of several
voices, sometimes cancel and sometimes drop the TCP connection mid-stream. Every
request's frames are checked (seq 0,1,2..., contiguous sample offsets, sum ==
done.samples); client-side underruns are counted by playing each request back
in simulated real time after a prebuffer. Prints requests served, errors by
code, underruns, peak and final server RSS, then stops the server with SIGTERM.
Exits 1 on any lost or duplicated frame, a server error line, or a bad exit.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import msgpack  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402
from websockets.exceptions import ConnectionClosed, InvalidStatus  # noqa: E402

SAMPLE_RATE = 24_000
TEXTS = ("Hello there.", "How are you today? I hope the weather is kind.", "The quick brown fox jumps over it.",
         "One more, please. And then another one, if you can.", "Streaming speech should never stutter.")
PIECES = ("Sure", ", here is", " the answer.", " It is", " forty two", ". Thanks!")
VOICES = (None, "v2/en_speaker_1", "v2/en_speaker_6", "v2/de_speaker_3")
BAD_LINE = re.compile(r"Traceback|handler failed|session failed|pump failed| ERROR | CRITICAL ")


@dataclass
class Tally:
    """Everything the soak counts."""

    done: Counter[str] = field(default_factory=Counter)  # done reason -> requests
    errors: Counter[str] = field(default_factory=Counter)  # error code -> messages
    integrity: list[str] = field(default_factory=list)  # lost / duplicated / miscounted frames
    underruns: int = 0
    underrun_s: float = 0.0
    aborted: int = 0  # requests cut by an abrupt disconnect
    audio_s: float = 0.0
    refused: Counter[int] = field(default_factory=Counter)  # handshake status -> count


@dataclass
class Playback:
    """One request's audio as a client plays it: start after `prebuffer_s`, count late chunks."""

    prebuffer_s: float
    t0: float = field(default_factory=time.monotonic)
    received_s: float = 0.0
    start: float | None = None  # wall time playback (re)started at sample 0's schedule
    underruns: int = 0
    late_s: float = 0.0

    def chunk(self, sample: int, n: int, now: float) -> None:
        if self.start is not None:
            due = self.start + sample / SAMPLE_RATE
            if now > due:  # the player ran dry: it waits for this chunk, then plays on
                self.underruns += 1
                self.late_s += now - due
                self.start += now - due
        self.received_s += n / SAMPLE_RATE
        if self.start is None and self.received_s >= self.prebuffer_s:
            self.start = now  # sample 0 plays now

    def end(self, now: float) -> None:
        if self.start is None and self.received_s > 0:  # short request: played once complete
            self.start = now


@dataclass
class Request:
    """Client-side checks of one request id."""

    id: str
    playback: Playback
    seq: int = 0
    sample: int = 0
    done: dict | None = None

    def audio(self, msg: dict, now: float, tally: Tally) -> None:
        n = len(msg["pcm"]) // 2
        if msg["seq"] != self.seq or msg["sample"] != self.sample:
            tally.integrity.append(f"{self.id}: got seq {msg['seq']} sample {msg['sample']}, "
                                   f"want {self.seq} {self.sample}")
        self.seq, self.sample = msg["seq"] + 1, msg["sample"] + n
        self.playback.chunk(msg["sample"], n, now)

    def finish(self, msg: dict, now: float, tally: Tally) -> None:
        self.done = msg
        if msg["samples"] != self.sample:
            tally.integrity.append(f"{self.id}: done.samples {msg['samples']} != {self.sample} received")
        self.playback.end(now)
        tally.done[msg["reason"]] += 1
        tally.underruns += self.playback.underruns
        tally.underrun_s += self.playback.late_s
        tally.audio_s += self.sample / SAMPLE_RATE


class User:
    """One simulated user: connections in a loop until the deadline, random behaviour per request."""

    def __init__(self, n: int, url: str, deadline: float, args: argparse.Namespace, tally: Tally) -> None:
        self.n, self.url, self.deadline, self.args, self.tally = n, url, deadline, args, tally
        self.rng = random.Random(args.seed * 1000 + n)
        self.count = 0

    async def run(self) -> None:
        while time.monotonic() < self.deadline:
            try:
                async with connect(self.url, max_size=None, compression=None) as ws:
                    await ws.recv()  # ready
                    for _ in range(self.rng.randint(1, 4)):
                        if time.monotonic() >= self.deadline or not await self.request(ws):
                            break
            except InvalidStatus as exc:
                self.tally.refused[exc.response.status_code] += 1
                await asyncio.sleep(0.5)
            except (ConnectionClosed, OSError):
                pass

    async def request(self, ws) -> bool:  # type: ignore[no-untyped-def]
        """One request on `ws`; False when the connection was dropped on purpose."""
        self.count += 1
        rid = f"u{self.n}r{self.count}"
        req = Request(rid, Playback(self.args.prebuffer_ms / 1000))
        params = {"greedy": True, "max_semantic_tokens": self.rng.randint(8, 48)}
        voice = self.rng.choice(VOICES if self.args.voices else (None,))
        piecewise = self.rng.random() < 0.3
        fields = {"id": rid, "params": params, **({"voice": voice} if voice else {})}
        if piecewise:
            await ws.send(msgpack.packb({"type": "start", **fields}))
            for piece in PIECES[: self.rng.randint(2, len(PIECES))]:
                await ws.send(msgpack.packb({"type": "text", "id": rid, "text": piece}))
            await ws.send(msgpack.packb({"type": "end", "id": rid}))
        else:
            await ws.send(msgpack.packb({"type": "speak", "text": self.rng.choice(TEXTS), **fields}))
        action = self.rng.random()
        cancel_at = self.rng.randint(1, 4) if action < 0.1 else None
        drop_at = self.rng.randint(1, 4) if 0.1 <= action < 0.15 else None
        while req.done is None:
            msg = msgpack.unpackb(await ws.recv(), raw=False)
            now = time.monotonic()
            if msg["type"] == "error":
                self.tally.errors[msg["code"]] += 1
                if msg["code"] == "overloaded":
                    await asyncio.sleep(min(msg.get("retry_after_ms", 500), 2000) / 1000)
                if msg.get("id") == rid and msg["code"] != "internal" and req.seq == 0:
                    return True  # refused before it opened: no done follows
            elif msg["type"] == "audio" and msg["id"] == rid:
                req.audio(msg, now, self.tally)
                if req.seq == cancel_at:
                    await ws.send(msgpack.packb({"type": "cancel", "id": rid}))
                if req.seq == drop_at:
                    ws.transport.abort()
                    self.tally.aborted += 1
                    return False
            elif msg["type"] == "done" and msg["id"] == rid:
                req.finish(msg, now, self.tally)
        return True


class ServerProcess:
    """`python -m server` with random-tiny on a free port; stderr scanned for the port and error lines."""

    def __init__(self, voices: Path | None, extra: list[str]) -> None:
        cmd = [sys.executable, "-m", "server", "--model", "random-tiny", "--codec", "random", "--device", "cpu",
               "--dtype", "float32", "--tokenizer", str(ROOT / "tests" / "data" / "tokenizer"), "--offline",
               "--port", "0", "--log-level", "info", *(["--voices", str(voices)] if voices else []), *extra]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.bad_lines: list[str] = []
        self.port: int | None = None
        self._ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        if not self._ready.wait(180) or self.port is None:
            self.proc.kill()
            raise SystemExit("soak: the server did not start")

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            match = re.search(r"listening on ws://[\d.]+:(\d+)/", line)
            if match:
                self.port = int(match.group(1))
                self._ready.set()
            if BAD_LINE.search(line):
                self.bad_lines.append(line.rstrip())
        self._ready.set()

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0


async def sample_rss(server: ServerProcess, stop: asyncio.Event, peak: list[float]) -> None:
    while not stop.is_set():
        peak[0] = max(peak[0], server.rss_mb())
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except TimeoutError:
            pass


async def soak(args: argparse.Namespace, server: ServerProcess) -> tuple[Tally, float]:
    tally, peak = Tally(), [0.0]
    url = f"ws://127.0.0.1:{server.port}/v1/stream"
    deadline = time.monotonic() + args.minutes * 60
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample_rss(server, stop, peak))
    users = [User(n, url, deadline, args, tally) for n in range(args.users)]
    await asyncio.gather(*(u.run() for u in users))
    stop.set()
    await sampler
    return tally, peak[0]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=3.0)
    p.add_argument("--users", type=int, default=12, help="concurrent simulated users")
    p.add_argument("--prebuffer-ms", type=float, default=500.0, help="client prebuffer before playback")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--no-voices", dest="voices", action="store_false", help="no voice presets")
    args = p.parse_args()
    from streaming.voices import bundled_voices_dir

    voices_dir = bundled_voices_dir() if args.voices else None
    args.voices = voices_dir is not None
    server = ServerProcess(voices_dir, ["--max-queue", "64"])
    started = time.monotonic()
    tally, peak_rss = asyncio.run(soak(args, server))
    wall = time.monotonic() - started
    time.sleep(2.0)  # let the server release the last connections before the final RSS reading
    final_rss = server.rss_mb()
    server.proc.send_signal(signal.SIGTERM)
    code = server.proc.wait(120)
    served = sum(tally.done.values())
    print(f"soak: {wall / 60:.1f} min, {args.users} users, voices {'on' if args.voices else 'off'}")
    print(f"requests served (done): {served} {dict(tally.done)}; dropped mid-stream on purpose: {tally.aborted}")
    print(f"audio received: {tally.audio_s:.0f} s; errors by code: {dict(tally.errors) or '{}'}; "
          f"handshakes refused: {dict(+tally.refused) or '{}'}")
    print(f"underruns (prebuffer {args.prebuffer_ms:.0f} ms): {tally.underruns}, {tally.underrun_s:.2f} s in all")
    print(f"server RSS: peak {peak_rss:.0f} MiB, final {final_rss:.0f} MiB; exit code {code}")
    print(f"integrity failures: {len(tally.integrity)}; server error lines: {len(server.bad_lines)}")
    for line in (tally.integrity + server.bad_lines)[:20]:
        print("  " + line)
    return 1 if tally.integrity or server.bad_lines or code != 0 or served == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
