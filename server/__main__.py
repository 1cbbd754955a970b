"""`python -m server`: load and warm up the engine, then serve protocol v1 until SIGINT/SIGTERM.

The first SIGTERM/SIGINT drains (no new connections or requests; requests in
flight finish for up to --drain-timeout s; the rest are closed with 1012) and
exits 0; a second one cuts the drain short. If the engine thread dies the
process closes every connection with 1011 and exits 1, for a supervisor to
restart it. API keys come from --api-key-file and the variable named by
--api-key-env (default BARK_API_KEYS, comma-separated); they are never logged.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from pathlib import Path

from streaming.errors import ConfigError, VoiceError, WeightsError

from .app import BarkServer, create_engine
from .auth import load_keys
from .config import DEFAULT_VOICE_ALIASES, LOG_LEVELS, ServerConfig
from . import integrations
from protocol import Limits

log = logging.getLogger("server")

EXIT_ENGINE_FAILED = 1
DEFAULT_KEY_ENV = "BARK_API_KEYS"

_LIMIT_FIELDS = ("max_frame_bytes", "max_text_chars", "max_request_chars", "max_ids_in_flight")


def build_parser() -> argparse.ArgumentParser:
    d = ServerConfig()
    lim = Limits()
    p = argparse.ArgumentParser(prog="python -m server", description="Streaming Bark text-to-speech server "
                                "(WebSocket protocol v1 on /v1/stream, HTTP /healthz and /metrics; with "
                                "--http-port, OpenAI's POST /v1/audio/speech).")
    net = p.add_argument_group("listening")
    net.add_argument("--host", default=d.host, help=f"interface to bind (default {d.host})")
    net.add_argument("--port", type=int, default=d.port, help=f"TCP port, 0 for any free one (default {d.port})")
    net.add_argument("--http-port", type=int, default=None, metavar="PORT",
                     help="also serve the OpenAI-compatible HTTP API (POST /v1/audio/speech, /v1/models, "
                          "/healthz, /metrics) on this port (default: off; the README uses 8766)")
    model = p.add_argument_group("model")
    model.add_argument("--model", default=d.model,
                       help=f"bark-small, bark, hf:<repo>, a local directory, or random-tiny|small|large "
                            f"(default {d.model})")
    model.add_argument("--device", default=d.device, help="auto, cpu, cuda, cuda:N, mps (default auto)")
    model.add_argument("--dtype", default=d.dtype,
                       help="auto, fp32, bf16, fp16 (also float32, bfloat16, float16) (default auto)")
    model.add_argument("--codec", default=d.codec,
                       help=f"pretrained, random, random-tiny, or a saved codec file (default {d.codec})")
    model.add_argument("--codec-dtype", default=d.codec_dtype,
                       help="EnCodec precision: auto (= fp32), fp32, fp16, bf16 (default auto; see README for "
                            "the measured SNR of each)")
    model.add_argument("--quantize", choices=("none", "int8"), default=d.quantize,
                       help="int8: weight-only int8 text and coarse GPTs, CPU only (default none)")
    model.add_argument("--cuda-graphs", action="store_true",
                       help="capture the semantic and coarse decode steps as CUDA graphs before the port opens "
                            "(GPU only; default off)")
    model.add_argument("--tokenizer", default=None,
                       help="directory with vocab.txt, or a hub repo id (default bert-base-multilingual-cased)")
    model.add_argument("--voices", type=Path, default=None, metavar="DIR", help="directory of voice presets")
    model.add_argument("--default-voice", default=None, help="voice for requests that name none")
    model.add_argument("--voice-alias", action="append", default=[], metavar="NAME=PRESET",
                       help="another name for a preset (repeatable); OpenAI's names (alloy, echo, nova, ...) are "
                            "aliases of v2/en_speaker_N presets unless set here")
    model.add_argument("--offline", "--local-files-only", dest="offline", action="store_true",
                       help="never reach the hub: weights, tokenizer and voices from local files or the cache")
    cap = p.add_argument_group("limits")
    cap.add_argument("--max-streams", type=int, default=d.max_streams, help="streams the engine computes at once")
    cap.add_argument("--max-queue", type=int, default=d.max_queue, help="streams waiting before `overloaded`")
    cap.add_argument("--coarse-prefix-slots", type=int, default=None, metavar="N",
                     help="extra coarse KV slots that prepare the next window's prompt while a window decodes "
                          "(default one per stream; 0 = off, saving a third of the K/V memory per stream at the "
                          "cost of a prefill at every coarse window boundary)")
    cap.add_argument("--max-connections", type=int, default=d.max_connections, help="open connections")
    cap.add_argument("--refuse-when-full", action="store_true",
                     help="with every engine slot in use, refuse new WebSocket upgrades with 503 and Retry-After so "
                          "a balancer or client tries another replica (default off: a lone server queues them and "
                          "answers `overloaded` per request; deploy/local-cluster.sh turns it on)")
    cap.add_argument("--max-streams-per-connection", type=int, default=None,
                     help="engine slots one connection may hold (default max(2, max-streams / 4))")
    cap.add_argument("--max-connections-per-ip", type=int, default=None,
                     help="open connections per client address (default: no cap)")
    cap.add_argument("--max-streams-per-key", type=int, default=None,
                     help="requests in flight per API key, all connections together (default: no cap)")
    cap.add_argument("--max-bytes-per-s", type=float, default=d.max_bytes_per_s,
                     help=f"bytes a connection may send per second, control frames included (default {d.max_bytes_per_s:g})")
    cap.add_argument("--max-frames-per-s", type=float, default=d.max_frames_per_s,
                     help=f"WebSocket frames per second per connection, pings and pongs included (default {d.max_frames_per_s:g})")
    cap.add_argument("--request-text-timeout", type=float, default=d.request_text_timeout,
                     help=f"seconds a start request may wait for its first text (default {d.request_text_timeout:g})")
    cap.add_argument("--trusted-proxy", action="append", default=[], metavar="ADDR",
                     help="a proxy address or network whose X-Forwarded-For names the client (repeatable)")
    for name in _LIMIT_FIELDS:
        cap.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(lim, name),
                         help=f"per connection (default {getattr(lim, name)})")
    cap.add_argument("--http-max-requests", type=int, default=d.http_max_requests,
                     help=f"HTTP speech requests in flight, all clients (default {d.http_max_requests})")
    cap.add_argument("--http-max-connections", type=int, default=d.http_max_connections,
                     help=f"open connections to the HTTP port, idle keep-alive ones included; more get 503 "
                          f"(default {d.http_max_connections})")
    cap.add_argument("--http-requests-per-s", type=float, default=d.http_requests_per_s,
                     help=f"HTTP speech requests per second per client address (default {d.http_requests_per_s:g})")
    cap.add_argument("--http-request-burst", type=int, default=d.http_request_burst,
                     help=f"HTTP speech requests a client address may send at once (default {d.http_request_burst})")
    cap.add_argument("--send-queue-frames", type=int, default=d.send_queue_frames,
                     help="frames buffered per connection before its streams pause")
    cap.add_argument("--compression", action="store_true", help="enable permessage-deflate (default off)")
    cap.add_argument("--max-messages-per-s", type=float, default=d.max_messages_per_s,
                     help=f"messages per second per connection (default {d.max_messages_per_s:g})")
    cap.add_argument("--message-burst", type=int, default=d.message_burst,
                     help=f"messages a connection may send at once (default {d.message_burst})")
    cap.add_argument("--rate-limit-strikes", type=int, default=d.rate_limit_strikes,
                     help=f"rate_limited refusals in a row before closing 1008 (default {d.rate_limit_strikes})")
    cap.add_argument("--max-buffer-s", type=float, default=d.max_buffer_s,
                     help=f"unacknowledged audio per connection before its streams pause (default {d.max_buffer_s:g})")
    _timeouts(p.add_argument_group("timeouts (seconds)"), d)
    acc = p.add_argument_group("access")
    acc.add_argument("--api-key-file", type=Path, default=None, help="file of API keys, one per line")
    acc.add_argument("--api-key-env", default=DEFAULT_KEY_ENV,
                     help=f"environment variable holding comma-separated API keys (default {DEFAULT_KEY_ENV})")
    acc.add_argument("--allowed-origin", action="append", default=[], metavar="ORIGIN",
                     help="an Origin allowed to connect (repeat; default: any)")
    acc.add_argument("--public-metrics", action="store_true", help="serve /metrics without a key")
    acc.add_argument("--ssl-certfile", type=Path, default=None, metavar="PEM",
                     help="certificate (chain) in PEM: serve wss:// and, with --http-port, https:// (default: plain)")
    acc.add_argument("--ssl-keyfile", type=Path, default=None, metavar="PEM",
                     help="the certificate's private key in PEM (default: inside --ssl-certfile)")
    integrations.add_arguments(p, d)  # --wyoming-*, --no-web-page
    p.add_argument("--log-level", default=d.log_level, choices=LOG_LEVELS)
    return p


def _timeouts(group: argparse._ArgumentGroup, d: ServerConfig) -> None:
    def off_or_seconds(text: str) -> float | None:
        return None if text in ("0", "off", "none") else float(text)
    group.add_argument("--idle-timeout", type=off_or_seconds, default=d.idle_timeout,
                       help=f"close connections idle this long; 0 = never (default {d.idle_timeout:g})")
    group.add_argument("--slow-consumer-timeout", type=float, default=d.slow_consumer_timeout,
                       help=f"close readers silent this long while owed audio (default {d.slow_consumer_timeout:g})")
    group.add_argument("--ping-interval", type=off_or_seconds, default=d.ping_interval,
                       help=f"keepalive ping period; 0 = off (default {d.ping_interval:g})")
    group.add_argument("--ping-timeout", type=float, default=d.ping_timeout,
                       help=f"unanswered keepalive ping before a peer counts as gone (default {d.ping_timeout:g})")
    group.add_argument("--open-timeout", type=float, default=d.open_timeout,
                       help=f"opening handshake (default {d.open_timeout:g})")
    group.add_argument("--close-timeout", type=float, default=d.close_timeout,
                       help=f"closing handshake (default {d.close_timeout:g})")
    group.add_argument("--drain-timeout", type=float, default=d.drain_timeout,
                       help=f"on SIGTERM/SIGINT, time requests in flight get to finish (default {d.drain_timeout:g})")


def _env(name: str | None) -> str | None:
    """The value of environment variable `name`, None when unset or empty."""
    return (os.environ.get(name) or None) if name else None


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    """ServerConfig from parsed arguments; ConfigError / ValueError name the bad option."""
    try:
        limits = Limits(**{name: getattr(args, name) for name in _LIMIT_FIELDS})
    except ConfigError as exc:
        flag = "--" + (exc.field or "").replace("_", "-")
        raise ConfigError(flag + str(exc).removeprefix(f"Limits.{exc.field}"), field=exc.field) from None
    return ServerConfig(
        host=args.host, port=args.port, model=args.model, device=args.device, dtype=args.dtype,
        codec=args.codec, codec_dtype=args.codec_dtype, cuda_graphs=args.cuda_graphs, quantize=args.quantize,
        tokenizer=args.tokenizer, voices_dir=args.voices, default_voice=args.default_voice,
        offline=args.offline, max_streams=args.max_streams, max_queue=args.max_queue,
        coarse_prefix_slots=args.coarse_prefix_slots,
        max_connections=args.max_connections, limits=limits,
        max_streams_per_connection=args.max_streams_per_connection,
        max_connections_per_ip=args.max_connections_per_ip, max_streams_per_key=args.max_streams_per_key,
        max_bytes_per_s=args.max_bytes_per_s, max_frames_per_s=args.max_frames_per_s,
        request_text_timeout=args.request_text_timeout, trusted_proxies=tuple(args.trusted_proxy), send_queue_frames=args.send_queue_frames,
        compression=args.compression, max_messages_per_s=args.max_messages_per_s,
        message_burst=args.message_burst, rate_limit_strikes=args.rate_limit_strikes,
        max_buffer_s=args.max_buffer_s, slow_consumer_timeout=args.slow_consumer_timeout,
        idle_timeout=args.idle_timeout, ping_interval=args.ping_interval, ping_timeout=args.ping_timeout,
        open_timeout=args.open_timeout, close_timeout=args.close_timeout, drain_timeout=args.drain_timeout,
        api_keys=load_keys(args.api_key_file, _env(args.api_key_env)),
        allowed_origins=tuple(args.allowed_origin), public_metrics=args.public_metrics,
        refuse_when_full=args.refuse_when_full, ssl_certfile=args.ssl_certfile, ssl_keyfile=args.ssl_keyfile,
        log_level=args.log_level, http_port=args.http_port, http_max_requests=args.http_max_requests,
        http_max_connections=args.http_max_connections, http_requests_per_s=args.http_requests_per_s, http_request_burst=args.http_request_burst,
        voice_aliases=DEFAULT_VOICE_ALIASES + _aliases(args.voice_alias),
        **integrations.config_kwargs(args),
    )


def _aliases(values: list[str]) -> tuple[tuple[str, str], ...]:
    """--voice-alias NAME=PRESET values as pairs; ConfigError naming the flag otherwise."""
    pairs = []
    for value in values:
        name, sep, preset = value.partition("=")
        if not sep or not name.strip() or not preset.strip():
            raise ConfigError(f"--voice-alias: expected NAME=PRESET (e.g. alloy=v2/en_speaker_6), got {value!r}")
        pairs.append((name.strip(), preset.strip()))
    return tuple(pairs)


async def serve(config: ServerConfig) -> int:
    """Load, warm up, listen; after SIGINT/SIGTERM drain and return 0; if the engine dies return 1."""
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    engine = await asyncio.to_thread(create_engine, config)
    loaded = time.perf_counter()
    log.info("loaded model %s in %.1f s", engine.model_name, loaded - started)
    warmup_s = await loop.run_in_executor(None, engine.start)
    log.info("engine warmed up in %.1f s", warmup_s)
    signals = asyncio.Queue[int]()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, signals.put_nowait, sig)
    try:
        server = BarkServer(engine, config)
        try:
            await server.start()
        except OSError as exc:
            ports = f"{config.port}" + (f" / {config.http_port} (--http-port)" if config.http_port is not None else "")
            if config.wyoming_port is not None:
                ports += f" / {config.wyoming_host}:{config.wyoming_port} (--wyoming-port)"
            raise ConfigError(f"cannot listen on {config.host}:{ports}: {exc.strerror or exc}") from None
        try:
            return await _until_stopped(server, signals, config.drain_timeout)
        finally:
            await server.close()
    finally:
        await asyncio.to_thread(engine.stop)


async def _until_stopped(server: BarkServer, signals: asyncio.Queue[int], drain_timeout: float) -> int:
    """Wait for a signal (drain, exit 0; a second signal cuts the drain short) or engine death (exit 1)."""
    got_signal = asyncio.ensure_future(signals.get())
    failed = asyncio.ensure_future(server.engine_failed.wait())
    await asyncio.wait((got_signal, failed), return_when=asyncio.FIRST_COMPLETED)
    if not got_signal.done():
        got_signal.cancel()
        log.critical("engine failed: exiting with status %d", EXIT_ENGINE_FAILED)
        return EXIT_ENGINE_FAILED
    failed.cancel()
    log.info("%s: draining for up to %.1f s", signal.Signals(got_signal.result()).name, drain_timeout)
    drain = asyncio.ensure_future(server.drain(drain_timeout))
    second = asyncio.ensure_future(signals.get())
    await asyncio.wait((drain, second), return_when=asyncio.FIRST_COMPLETED)
    if not drain.done():
        log.warning("second signal: stopping without waiting for the drain")
        drain.cancel()
    second.cancel()
    await asyncio.gather(drain, second, return_exceptions=True)
    if server.engine_failed.is_set():
        return EXIT_ENGINE_FAILED
    log.info("stopped")
    return 0


def _run(coro_fn, config: ServerConfig) -> int:  # type: ignore[no-untyped-def]
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro_fn(config))
    return uvloop.run(coro_fn(config))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.log_level != "debug":  # websockets logs every HTTP probe (/healthz, /metrics) at INFO
        logging.getLogger("websockets").setLevel(logging.WARNING)
    try:
        config = config_from_args(args)
        config.ssl_context()  # a certificate that does not load fails before the model loads
        return _run(serve, config)
    except (ConfigError, WeightsError, VoiceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
