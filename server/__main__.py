"""`python -m server`: load and warm up the engine, then serve protocol v1 until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time
from pathlib import Path

from streaming.errors import ConfigError, VoiceError, WeightsError

from .app import BarkServer, create_engine
from .config import LOG_LEVELS, ServerConfig
from .protocol import Limits

log = logging.getLogger("server")

_LIMIT_FIELDS = ("max_frame_bytes", "max_text_chars", "max_request_chars", "max_ids_in_flight")


def build_parser() -> argparse.ArgumentParser:
    d = ServerConfig()
    lim = Limits()
    p = argparse.ArgumentParser(prog="python -m server", description="Streaming Bark text-to-speech server "
                                "(WebSocket protocol v1 on /v1/stream, HTTP /healthz and /metrics).")
    net = p.add_argument_group("listening")
    net.add_argument("--host", default=d.host, help=f"interface to bind (default {d.host})")
    net.add_argument("--port", type=int, default=d.port, help=f"TCP port, 0 for any free one (default {d.port})")
    model = p.add_argument_group("model")
    model.add_argument("--model", default=d.model,
                       help="bark-small, bark, hf:<repo>, a local directory, or random-tiny|small|large")
    model.add_argument("--device", default=d.device, help="auto, cpu, cuda, cuda:N, mps (default auto)")
    model.add_argument("--dtype", default=d.dtype, help="auto, float32, float16, bfloat16 (default auto)")
    model.add_argument("--codec", default=d.codec, help="pretrained, random, or a saved codec file")
    model.add_argument("--tokenizer", default=None, help="directory with vocab.txt, or a hub repo id")
    model.add_argument("--voices", type=Path, default=None, metavar="DIR", help="directory of voice presets")
    model.add_argument("--default-voice", default=None, help="voice for requests that name none")
    model.add_argument("--offline", action="store_true",
                       help="never reach the hub: weights, tokenizer and voices from local files or the cache")
    cap = p.add_argument_group("limits")
    cap.add_argument("--max-streams", type=int, default=d.max_streams, help="streams the engine computes at once")
    cap.add_argument("--max-queue", type=int, default=d.max_queue, help="streams waiting before `overloaded`")
    cap.add_argument("--max-connections", type=int, default=d.max_connections, help="open connections")
    for name in _LIMIT_FIELDS:
        cap.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(lim, name),
                         help=f"per connection (default {getattr(lim, name)})")
    cap.add_argument("--send-queue-frames", type=int, default=d.send_queue_frames,
                     help="frames buffered per connection before its streams pause")
    p.add_argument("--log-level", default=d.log_level, choices=LOG_LEVELS)
    return p


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    """ServerConfig from parsed arguments; ConfigError / ValueError name the bad option."""
    try:
        limits = Limits(**{name: getattr(args, name) for name in _LIMIT_FIELDS})
    except ValueError as exc:
        raise ConfigError(str(exc).replace("Limits.", "--").replace("_", "-")) from None
    return ServerConfig(
        host=args.host, port=args.port, model=args.model, device=args.device, dtype=args.dtype,
        codec=args.codec, tokenizer=args.tokenizer, voices_dir=args.voices, default_voice=args.default_voice,
        offline=args.offline, max_streams=args.max_streams, max_queue=args.max_queue,
        max_connections=args.max_connections, limits=limits, send_queue_frames=args.send_queue_frames,
        log_level=args.log_level,
    )


async def serve(config: ServerConfig) -> None:
    """Load, warm up, listen; return after SIGINT/SIGTERM once everything is closed."""
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    engine = await asyncio.to_thread(create_engine, config)
    loaded = time.perf_counter()
    log.info("loaded model %s in %.1f s", engine.model_name, loaded - started)
    warmup_s = await loop.run_in_executor(None, engine.start)
    log.info("engine warmed up in %.1f s", warmup_s)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        server = BarkServer(engine, config)
        try:
            await server.start()
        except OSError as exc:
            raise ConfigError(f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}") from None
        try:
            await stop.wait()
            log.info("stopping")
        finally:
            await server.close()
    finally:
        await asyncio.to_thread(engine.stop)


def _run(coro_fn, config: ServerConfig) -> None:  # type: ignore[no-untyped-def]
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro_fn(config))
    else:
        uvloop.run(coro_fn(config))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.log_level != "debug":  # websockets logs every HTTP probe (/healthz, /metrics) at INFO
        logging.getLogger("websockets").setLevel(logging.WARNING)
    try:
        config = config_from_args(args)
        _run(serve, config)
    except (ConfigError, WeightsError, VoiceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
