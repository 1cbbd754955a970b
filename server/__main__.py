"""`python -m server`: load and warm up the engine, then serve protocol v1 until SIGINT/SIGTERM.

The first SIGTERM/SIGINT drains (no new connections or requests; requests in
flight finish for up to --drain-timeout s; the rest are closed with 1012) and
exits 0; a second one cuts the drain short. The engine runs in its own process
(--engine process, the default) or as a thread (--engine thread); if it dies, every
request in flight gets `error` internal and `done`, /healthz turns 503, every
connection is closed with 1011 and the server exits 1, for a supervisor to restart it. API keys come from --api-key-file and the variable named by
--api-key-env (default BARK_API_KEYS, comma-separated); they are never logged.

Every option is declared once, on its ServerConfig field (server/config.py); server/options.py
makes the flags, the BARK_* variables and the --config TOML file of it (flags > environment >
file > default).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Mapping
from typing import Any

from streaming.errors import ConfigError, VoiceError, WeightsError

from .app import BarkServer, start_engine
from .auth import load_keys
from .config import DEFAULT_KEY_ENV, GROUPS, OPTIONS, ServerConfig
from .options import ENV_PREFIX, build_parser as _options_parser, dump_toml, field_values, read_sources

log = logging.getLogger("server")

EXIT_ENGINE_FAILED = 1

EPILOG = f"""\
where options come from (precedence: command line > environment > config file > default):
  1. the command line;
  2. the environment: {ENV_PREFIX}<KEY>, e.g. {ENV_PREFIX}MAX_STREAMS=4, {ENV_PREFIX}COMPRESSION=on, lists
     comma-separated ({ENV_PREFIX}TRUSTED_PROXIES=10.0.0.0/8,::1); {ENV_PREFIX}CONFIG names the config file;
  3. the config file (--config FILE.toml, Python 3.11+), one table per group as named under each heading:
       [limits.engine]
       max_streams = 4
  4. the default shown.
KEY is the flag's name with underscores (max_streams for --max-streams) unless its help shows [key: ...].
Switches also take --no-<flag>; "off" turns off an option whose default reads off, no cap, never, ...
--print-config prints the configuration that results, as a config file.

API keys are never options: they come from --api-key-file and the variable named by --api-key-env
(default {DEFAULT_KEY_ENV}, comma-separated), and are never printed.
"""


def build_parser() -> argparse.ArgumentParser:
    """Every option of ServerConfig (server/config.py) as flags; an option not given is absent from the
    namespace, so that config_from_args can take it from the environment or the config file."""
    return _options_parser(OPTIONS, GROUPS, prog="python -m server", epilog=EPILOG, description=(
        "Streaming Bark text-to-speech server: WebSocket protocol v1 on /v1/stream, HTTP /healthz and /metrics;\n"
        "with --http-port, OpenAI's POST /v1/audio/speech; with --wyoming-port, Wyoming for Home Assistant."))


def _env(name: str | None, environ: Mapping[str, str]) -> str | None:
    """The value of environment variable `name`, None when unset or empty."""
    return (environ.get(name) or None) if name else None


def load_config(args: argparse.Namespace, environ: Mapping[str, str] | None = None
                ) -> tuple[ServerConfig, dict[str, Any]]:
    """(ServerConfig, the values of the options that are no field: config, api_key_file, api_key_env) from the
    parsed flags, then `environ` (os.environ by default), then the config file; ConfigError names the flag,
    variable or file key at fault and the valid values."""
    environ = os.environ if environ is None else environ
    values = read_sources(OPTIONS, GROUPS, vars(args), environ)
    sources = {o.key: values.get(o.key, o.default) for o in OPTIONS if not o.path}
    keys = load_keys(sources["api_key_file"], _env(sources["api_key_env"], environ))
    return ServerConfig(**field_values(OPTIONS, values), api_keys=keys), sources


def config_from_args(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> ServerConfig:
    """ServerConfig from parsed arguments, the environment and the config file (see load_config)."""
    return load_config(args, environ)[0]


async def serve(config: ServerConfig) -> int:
    """Load, warm up, listen; after SIGINT/SIGTERM drain and return 0; if the engine dies return 1."""
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    engine = await start_engine(config)
    log.info("engine ready (model %s, %s) in %.1f s", engine.info.model_name,
             "its own process" if config.engine_mode == "process" else "a thread of this process",
             time.perf_counter() - started)
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
        await engine.close()


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
    try:
        config, sources = load_config(args)
        if args.print_config:
            print(dump_toml(config, OPTIONS, GROUPS, sources), end="")
            return 0
        logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        if config.log_level != "debug":  # websockets logs every HTTP probe (/healthz, /metrics) at INFO
            logging.getLogger("websockets").setLevel(logging.WARNING)
        config.ssl_context()  # a certificate that does not load fails before the model loads
        return _run(serve, config)
    except (ConfigError, WeightsError, VoiceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
