"""`python -m client "text"`: speak through a bark-stream server, playing audio as it arrives.

    python -m client "Hello there."                       # play
    python -m client "Hello." --no-play --output out.wav   # write only
    python -m client "Hello." --encoding pcm_mulaw --sample-rate 8000 -o call.wav
    python -m client "Hello." --encoding ogg_opus --sample-rate 48000 -o hello.ogg   # the Ogg file as sent
    some-llm | python -m client -                         # stdin, sent line by line as it arrives

On a terminal a progress line (audio received, time to first audio, real-time
factor) is redrawn on stderr while the audio arrives; the summary follows on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, TextIO

from protocol import COMPRESSED_ENCODINGS, ENCODING_SAMPLE_RATES, ENCODINGS, SAMPLE_RATES, ProtocolError, parse_params

from .api import DEFAULT_URL, AudioChunk, BarkStreamClient, ClientError, Done, Event, Segment, ServerError
from .failover import FailoverClient
from .player import PlaybackUnavailable, Player, PlayerConfig
from .wav import AudioFile, open_audio_file

log = logging.getLogger("client")

# Sampling flags, named as their wire `params` keys (--top-k -> top_k); only the flags
# given are sent, the server fills in the rest.
SAMPLING_KEYS = ("text_temp", "waveform_temp", "top_k", "top_p", "seed", "greedy", "max_semantic_tokens",
                 "lookahead", "fine_policy")
API_KEY_ENV = "BARK_API_KEY"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m client", description="Speak text through a bark-stream server.")
    p.add_argument("text", nargs="?", help="the text to speak, or - to read stdin and send it line by line as it "
                   "arrives")
    p.add_argument("--list-voices", action="store_true", help="print the voices the server offers and exit")
    p.add_argument("--url", action="append", dest="urls", metavar="URL",
                   help=f"server WebSocket URL (default {DEFAULT_URL}); repeat it (or separate with commas) for "
                        "replicas: the next is tried on 503, a refused connection or a restart close (1001, 1012, "
                        "1013) while no audio has arrived")
    p.add_argument("--ca-file", metavar="PEM", help="trust this CA for wss:// URLs (e.g. a self-signed certificate)")
    p.add_argument("--voice", help="voice preset name (see the server's `ready` voices)")
    p.add_argument("--api-key", default=os.environ.get(API_KEY_ENV),
                   help=f"sent as `Authorization: Bearer KEY` (default: ${API_KEY_ENV}, so keys stay out of "
                        "shell history and process lists)")
    p.add_argument("--encoding", choices=ENCODINGS, default="pcm_s16le",
                   help="audio encoding on the wire (default pcm_s16le); ogg_opus and mp3 are written to --output "
                        "as the server sends them and are not played")
    p.add_argument("--sample-rate", type=int, choices=SAMPLE_RATES, default=None, metavar="HZ",
                   help=f"sample rate of the audio, one of {', '.join(map(str, SAMPLE_RATES))} (default: the "
                        "server's, 24000; ogg_opus takes 8000, 16000, 24000 or 48000)")
    p.add_argument("--open-timeout", type=float, default=10.0, metavar="S", help="connect timeout in seconds")
    out = p.add_argument_group("output")
    out.add_argument("--output", "-o", metavar="FILE",
                     help="also write the audio: a 16-bit WAV for PCM encodings, the Ogg/MP3 file itself for "
                          "ogg_opus/mp3; written even when playback is impossible")
    out.add_argument("--no-play", action="store_true", help="do not play (needs --output)")
    out.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                     help="redraw a progress line on stderr (default: when stderr is a terminal)")
    out.add_argument("--prebuffer-ms", type=float, default=150.0, metavar="MS",
                     help="audio buffered before playback starts or resumes (default 150)")
    out.add_argument("--device", help="PortAudio output device index or name (default: the system default)")
    s = p.add_argument_group("sampling (defaults: the server's)")
    s.add_argument("--text-temp", type=float, metavar="T", help="semantic stage temperature")
    s.add_argument("--waveform-temp", type=float, metavar="T", help="coarse stage temperature")
    s.add_argument("--top-k", type=int, metavar="K")
    s.add_argument("--top-p", type=float, metavar="P")
    s.add_argument("--seed", type=int)
    s.add_argument("--greedy", action="store_true", default=None, help="argmax everywhere")
    s.add_argument("--max-semantic-tokens", type=int, metavar="N", help="cap on semantic tokens (~50 per second)")
    s.add_argument("--lookahead", choices=("exact", "bounded"), help="coarse windows: exact (offline tokens) or "
                   "bounded (earlier first audio)")
    s.add_argument("--fine-policy", choices=("sliding", "offline"), help="fine windows: sliding (streamed) or "
                   "offline (Bark's own, after each segment's coarse codes)")
    p.add_argument("-v", "--verbose", action="count", default=0, help="-v: info logs, -vv: debug logs")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and check the command line; exits with a usage message on a mistake."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.urls = [u.strip() for value in (args.urls or [DEFAULT_URL]) for u in value.split(",") if u.strip()]
    if not args.urls:
        parser.error("--url: give a ws:// or wss:// URL")
    args.url = args.urls[0]
    if args.no_play and not args.output:
        parser.error("--no-play needs --output FILE.wav (otherwise the audio goes nowhere)")
    if args.sample_rate is not None and args.sample_rate not in ENCODING_SAMPLE_RATES[args.encoding]:
        parser.error(f"--sample-rate: {args.encoding} takes {', '.join(map(str, ENCODING_SAMPLE_RATES[args.encoding]))}"
                     f", not {args.sample_rate}")
    if args.encoding in COMPRESSED_ENCODINGS and not args.output and not args.list_voices:
        parser.error(f"--encoding {args.encoding}: this client plays PCM encodings only; add --output FILE to "
                     "write the file (or play pcm_s16le)")
    if not 0 <= args.prebuffer_ms <= 60_000:
        parser.error(f"--prebuffer-ms: {args.prebuffer_ms:g} is outside [0, 60000]")
    if args.list_voices:
        return args
    if args.text is None:
        parser.error("text: give the text to speak, - to read stdin, or --list-voices")
    if args.text != "-" and not args.text.strip():
        parser.error("text: nothing to speak (use - to read stdin)")
    args.params = sampling_params(args)
    try:
        parse_params(args.params)  # the server's own checks, so mistakes show before connecting
    except ProtocolError as e:
        if e.field is None or not e.field.startswith("params."):
            parser.error(e.message)
        key = e.field.removeprefix("params.")
        parser.error(f"--{key.replace('_', '-')}{e.message.removeprefix(e.field)}")
    if args.device is not None and args.device.isdigit():
        args.device = int(args.device)
    return args


def sampling_params(args: argparse.Namespace) -> dict[str, Any]:
    """The wire `params` map for the sampling flags that were given."""
    return {key: getattr(args, key) for key in SAMPLING_KEYS if getattr(args, key) is not None}


def auth_headers(api_key: str | None) -> dict[str, str] | None:
    return {"Authorization": f"Bearer {api_key}"} if api_key else None


@dataclass
class RunReport:
    """What one request measured on the client side (time.monotonic() seconds)."""

    sent_at: float  # the request was sent
    first_audio_at: float | None = None  # the first audio frame arrived
    done_at: float | None = None  # `done` arrived
    samples: int = 0  # samples received (compressed encodings: samples the server had encoded so far)
    bytes: int = 0  # audio bytes received
    done: Done | None = None

    def seen(self, chunk: AudioChunk, now: float) -> None:
        if self.first_audio_at is None:
            self.first_audio_at = now
        self.bytes += len(chunk.data)
        self.samples = chunk.sample + chunk.samples.size if chunk.samples.size else max(self.samples, chunk.sample)


class Progress:
    """One status line, redrawn in place on a terminal: audio received, time to first audio, real-time factor."""

    INTERVAL_S = 0.1  # redraws at most this often

    def __init__(self, stream: TextIO, sample_rate: int, enabled: bool | None = None) -> None:
        self.stream, self.sample_rate = stream, sample_rate
        self.enabled = stream.isatty() if enabled is None else enabled
        self._drawn_at = float("-inf")
        self._width = 0

    def line(self, report: RunReport, now: float) -> str:
        audio_s = report.samples / self.sample_rate
        parts = [f"audio {audio_s:6.2f} s"]
        if report.first_audio_at is not None:
            parts.append(f"TTFA {1000 * (report.first_audio_at - report.sent_at):.0f} ms")
            if audio_s > 0:
                parts.append(f"RTF {(now - report.sent_at) / audio_s:.2f}")
        else:
            parts.append(f"waiting {now - report.sent_at:.1f} s")
        return " | ".join(parts)

    def update(self, report: RunReport, now: float, *, force: bool = False) -> None:
        if not self.enabled or (not force and now - self._drawn_at < self.INTERVAL_S):
            return
        text = self.line(report, now)
        self.stream.write("\r" + text.ljust(self._width))
        self.stream.flush()
        self._drawn_at, self._width = now, len(text)

    def clear(self) -> None:
        """Erase the line, so the summary starts on a clean one."""
        if self.enabled and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0


async def stdin_lines() -> AsyncIterator[str]:
    """Yield stdin's lines (newline included) as they arrive, until EOF."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | None] = asyncio.Queue()

    def read() -> None:  # a daemon thread, so a blocked read never keeps the process alive
        try:
            for line in sys.stdin:
                loop.call_soon_threadsafe(queue.put_nowait, line)
            loop.call_soon_threadsafe(queue.put_nowait, None)
        except RuntimeError:  # the event loop has closed
            pass

    threading.Thread(target=read, name="stdin-reader", daemon=True).start()
    while (line := await queue.get()) is not None:
        yield line


async def speak(client: BarkStreamClient | FailoverClient, args: argparse.Namespace, player: Player | None,
                out: AudioFile | None, progress: Progress | None = None) -> RunReport:
    """Send the request and route its audio to the player and the output file as it arrives."""
    options: dict[str, Any] = {"voice": args.voice, "encoding": args.encoding, "params": args.params,
                               "sample_rate": args.sample_rate}
    report = RunReport(sent_at=time.monotonic())
    events: AsyncIterator[Event]
    if args.text == "-":
        events = client.stream_text(stdin_lines(), **options)
    else:
        events = client.speak(args.text, **options)
    async for event in events:
        if isinstance(event, AudioChunk):
            report.seen(event, time.monotonic())
            if player is not None:
                player.write(event.samples)
            if out is not None:
                out.write(event)
            if progress is not None:
                progress.update(report, time.monotonic())
        elif isinstance(event, Done):
            report.done, report.done_at = event, time.monotonic()
            report.samples = event.samples
            if progress is not None:
                progress.update(report, report.done_at, force=True)
        elif isinstance(event, Segment):
            log.info("segment [%d, %d): %s", event.start_sample, event.end_sample, event.text)
    return report


def _ssl_context(ca_file: str | None) -> Any:
    """An SSL context trusting `ca_file` (None: the system's trust store, websockets' default)."""
    if ca_file is None:
        return None
    import ssl

    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as e:
        raise ClientError(f"--ca-file: cannot load {ca_file}: {e}") from None


def format_report(report: RunReport, sample_rate: int, player: Player | None, encoding: str = "pcm_s16le") -> list[str]:
    """Human-readable lines: audio length, time to first audio, real-time factor, underruns."""
    server = report.done.stats if report.done else {}
    audio_s = report.samples / sample_rate
    lines = [f"audio: {audio_s:.2f} s ({report.samples} samples at {sample_rate} Hz"
             + (f", {report.bytes} bytes of {encoding})" if encoding in COMPRESSED_ENCODINGS else ")")]
    if report.first_audio_at is not None:
        ttfa = f"time to first audio: {1000 * (report.first_audio_at - report.sent_at):.0f} ms"
        if _is_number(server.get("ttfa_ms")):
            ttfa += f" (server: {server['ttfa_ms']:.0f} ms)"
        lines.append(ttfa)
    if report.done_at is not None and audio_s > 0:
        rtf = f"real-time factor: {(report.done_at - report.sent_at) / audio_s:.2f} (time to generate / audio length)"
        if _is_number(server.get("rtf")):
            rtf += f" (server: {server['rtf']:.2f})"
        lines.append(rtf)
    if player is not None:
        st = player.stats
        if st.first_play_time is not None:
            sound = f"time to first sound: {1000 * (st.first_play_time - report.sent_at):.0f} ms"
            if player.output_latency is not None:
                sound += f" + {1000 * player.output_latency:.0f} ms device latency"
            lines.append(sound)
        lines.append(f"underruns: {st.underruns} ({st.underrun_ms:.0f} ms of silence)")
    return lines


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


async def run(args: argparse.Namespace) -> int:
    """Connect, speak, play and/or write; print the report. Returns the exit status."""
    client = await FailoverClient.connect(
        args.urls, open_timeout=args.open_timeout, additional_headers=auth_headers(args.api_key),
        ssl=_ssl_context(args.ca_file)
    )
    if args.list_voices:
        async with client:
            voices = client.info.voices
        print("\n".join(voices) if voices else "(the server offers no voice presets)")
        return 0
    rate = args.sample_rate or client.info.sample_rate
    player: Player | None = None
    out: AudioFile | None = None
    progress = Progress(sys.stderr, rate, args.progress)
    try:
        async with client:
            if not args.no_play and args.encoding not in COMPRESSED_ENCODINGS:  # opened first: no latency later
                try:
                    player = Player(PlayerConfig(sample_rate=rate, prebuffer_ms=args.prebuffer_ms,
                                                 device=args.device))
                    player.start()
                except PlaybackUnavailable as e:
                    if player is not None:
                        player.close()
                        player = None
                    if not args.output:
                        raise
                    print(f"warning: cannot play ({e}); writing {args.output} only", file=sys.stderr)
            elif not args.no_play:
                print(f"note: {args.encoding} is not played by this client; writing {args.output}", file=sys.stderr)
            if args.output:
                out = open_audio_file(args.output, args.encoding, rate)
            report = await speak(client, args, player, out, progress)
        progress.clear()
        if player is not None:
            player.finish()
            left_s = (report.samples - player.stats.played_samples) / rate
            await asyncio.to_thread(player.wait, left_s + 10.0)
    finally:
        progress.clear()
        if player is not None:
            player.close()
        if out is not None:
            out.close()
    for line in format_report(report, rate, player, args.encoding):
        print(line)
    if args.output:
        print(f"wrote {args.output}")
    assert report.done is not None  # speak() returns only after Done
    if report.done.reason != "end":
        print(f"error: the request ended with reason {report.done.reason!r}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return asyncio.run(run(args))
    except ServerError as e:
        print(f"error: the server refused the request: {e}", file=sys.stderr)
    except (ClientError, PlaybackUnavailable) as e:
        print(f"error: {e}", file=sys.stderr)
    except OSError as e:  # the WAV file could not be written
        print(f"error: {e}", file=sys.stderr)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())
