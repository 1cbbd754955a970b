"""`ServerConfig`: every option of `python -m server`, declared once and validated at construction.

Each field is the one declaration of its option: name, type and default are the field's, and `opt(...)` adds
the help line, the group (a --help heading and a config file table), the unit and the valid range or choices.
server/options.py turns the declarations into the command line, the BARK_* environment variables and the
`--config` TOML file (precedence: flags > environment > file > default), and `__post_init__` checks every
field against its declaration. Fields stay flat (`cfg.max_streams`, `ServerConfig(port=0, max_streams=2)`);
`cfg.group("limits.engine")` gives one group's values.

This module imports nothing that imports it back (no server.context, no server.wyoming).
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protocol import SAMPLE_RATES, Limits, ProtocolError, parse_params
from streaming.errors import ConfigError

from .netutil import is_loopback
from .options import (BYTES, BYTES_PER_S, HZ, PER_S, SECONDS, Group, Option, check_fields, declared, group_values, opt,
                      source)

LOG_LEVELS = ("debug", "info", "warning", "error")
ENGINE_MODES = ("process", "thread")
DTYPES = ("auto", "fp32", "fp16", "bf16", "float32", "float16", "bfloat16")
DEFAULT_KEY_ENV = "BARK_API_KEYS"
_ALIAS = re.compile(r"[A-Za-z0-9_\-]+(/[A-Za-z0-9_\-]+)?")  # a voice name, as requests spell them

# OpenAI's voice names, so that apps that only know those (Open WebUI, SillyTavern, ...) work out of the
# box; each maps to a Bark English preset. Operators change or add them with --voice-alias NAME=PRESET.
OPENAI_VOICES = ("alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer", "verse")
DEFAULT_VOICE_ALIASES: tuple[tuple[str, str], ...] = tuple(
    (name, f"v2/en_speaker_{i % 10}") for i, name in enumerate(OPENAI_VOICES))

# --- groups: --help headings and config file tables, in this order ----------------------------------------------

NETWORK = Group("network", "network", "where to listen")
MODEL = Group("model", "model", "what to load and how to run it")
LIMITS_ENGINE = Group("limits.engine", "limits: engine", "engine capacity and how it is shared")
LIMITS_CONNECTION = Group("limits.connection", "limits: per connection",
                          "what one WebSocket connection may open, send and hold")
LIMITS_RATES = Group("limits.rates", "limits: rates", "token buckets of each WebSocket connection")
LIMITS_HTTP = Group("limits.http", "limits: HTTP", "the HTTP ports (--http-port, --metrics-port)")
TIMEOUTS = Group("timeouts", "timeouts", "how long a connection or request may stay silent")
SECURITY = Group("security", "security", "API keys, origins and TLS")
INTEGRATIONS = Group("integrations", "integrations", "Wyoming (Home Assistant) and the browser page")
GENERAL = Group("general", "general", "the config file and logging")
GROUPS = (NETWORK, MODEL, LIMITS_ENGINE, LIMITS_CONNECTION, LIMITS_RATES, LIMITS_HTTP, TIMEOUTS, SECURITY,
          INTEGRATIONS, GENERAL)

_PORT = {"min": 0, "max": 65535, "metavar": "PORT"}


# --- values that are no plain number, string or list: how each source spells them -----------------------------


def _alias_pairs(items: list[str]) -> list[tuple[str, str]]:
    pairs = []
    for item in items:
        name, sep, preset = item.partition("=")
        if not sep or not name.strip() or not preset.strip():
            raise ValueError(f"expected NAME=PRESET (e.g. alloy=v2/en_speaker_6), got {item!r}")
        pairs.append((name.strip(), preset.strip()))
    return pairs


def _with_default_aliases(pairs: list[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    merged = dict(DEFAULT_VOICE_ALIASES)
    merged.update(pairs)
    return tuple(merged.items())


def _aliases_from_toml(value: object) -> tuple[tuple[str, str], ...]:
    if isinstance(value, dict) and all(isinstance(v, str) for v in value.values()):
        return _with_default_aliases(list(value.items()))
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return _with_default_aliases(_alias_pairs(value))
    raise ValueError(f'expected a table of NAME = "PRESET" (e.g. {{alloy = "v2/en_speaker_6"}}), got {value!r:.200}')


def _check_aliases(aliases: object) -> str | None:
    ok = isinstance(aliases, tuple) and all(
        isinstance(pair, tuple) and len(pair) == 2 and all(isinstance(v, str) and _ALIAS.fullmatch(v) for v in pair)
        for pair in aliases)
    return None if ok else f"expected (alias, preset) pairs of voice names, got {aliases!r:.200}"


def _params_from_text(text: str) -> tuple[tuple[str, object], ...]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"not valid JSON ({exc})") from None
    return _params_from_toml(value)


def _params_from_toml(value: object) -> tuple[tuple[str, object], ...]:
    if isinstance(value, str):
        return _params_from_text(value)
    if not isinstance(value, dict):
        raise ValueError("expected a JSON object, e.g. '{\"text_temp\": 0.6}'")
    return tuple(value.items())


def _check_params(params: object) -> str | None:
    if not (isinstance(params, tuple) and all(isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str)
                                              for p in params)):
        return f"expected (name, value) pairs, got {params!r:.200}"
    try:
        parse_params(dict(params) or None)
    except (ProtocolError, TypeError, ValueError) as exc:
        return str(getattr(exc, "message", exc))
    return None


def _zeroconf_from_text(text: str) -> str:
    return "" if text.strip().lower() in ("", "default", "on", "true", "yes") else text.strip()


def _zeroconf_from_toml(value: object) -> str | None:
    if isinstance(value, bool):
        return "" if value else None
    if isinstance(value, str):
        return _zeroconf_from_text(value)
    raise ValueError(f"expected true, false or a service name, got {value!r:.200}")


def _check_networks(values: tuple[str, ...]) -> str | None:
    for value in values:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            return f"{value!r} is not an IP address or network (e.g. 10.0.0.5, 10.0.0.0/8, ::1)"
    return None


@dataclass(frozen=True)
class ServerConfig:
    """Where to listen, what to load, and how much each connection may ask for."""

    # --- network ------------------------------------------------------------------------------------------------
    host: str = opt("127.0.0.1", "interface to bind; 0.0.0.0 for every interface", NETWORK, metavar="HOST")
    port: int = opt(8765, "TCP port of the WebSocket (/v1/stream, /healthz, /metrics, the page); 0 = any free one",
                    NETWORK, **_PORT)
    http_port: int | None = opt(None, "also serve the OpenAI-compatible HTTP API (POST /v1/audio/speech, /v1/models, "
                                "/healthz, /metrics) on this port; 0 = any free one; the README uses 8766", NETWORK,
                                none="off", **_PORT)
    metrics_host: str = opt("127.0.0.1", "interface of the --metrics-port listener", NETWORK, metavar="HOST")
    metrics_port: int | None = opt(None, "a separate listener serving only /metrics and /healthz, so that /metrics "
                                   "can stay private; 0 = any free one", NETWORK, none="off", **_PORT)
    trusted_proxies: tuple[str, ...] = opt((), "a proxy address or network whose X-Forwarded-For names the client "
                                           "(repeatable)", NETWORK, flags=("--trusted-proxy",), metavar="ADDR",
                                           check=_check_networks)
    # --- model --------------------------------------------------------------------------------------------------
    model: str = opt("bark-small", "bark-small, bark, hf:<repo>, a local directory, or random-tiny|small|large", MODEL)
    device: str = opt("auto", "auto, cpu, cuda, cuda:N, mps", MODEL)
    dtype: str = opt("auto", "weights' precision (float32, float16, bfloat16 also accepted)", MODEL, choices=DTYPES,
                     metavar="{auto,fp32,fp16,bf16}")
    codec: str = opt("pretrained", "pretrained, random, random-tiny, or a saved codec file", MODEL)
    codec_dtype: str = opt("auto", "EnCodec decoder precision; auto = fp32 (the README gives each one's measured "
                           "SNR)", MODEL, choices=DTYPES, metavar="{auto,fp32,fp16,bf16}")
    quantize: str = opt("none", "int8: weight-only int8 text and coarse GPTs, CPU only", MODEL,
                        choices=("none", "int8"))
    cuda_graphs: bool = opt(False, "capture the semantic and coarse decode steps as CUDA graphs before the port "
                            "opens (GPU only)", MODEL)
    engine_mode: str = opt("process", "run the engine in its own process, or as a thread of the server process",
                           MODEL, flags=("--engine",), choices=ENGINE_MODES)
    tokenizer: str | None = opt(None, "directory with vocab.txt, or a hub repo id", MODEL,
                                none="bert-base-multilingual-cased")
    voices_dir: Path | None = opt(None, "directory of voice presets (Suno or transformers layout)", MODEL,
                                  flags=("--voices",), metavar="DIR", none="none")
    default_voice: str | None = opt(None, "voice for requests that name none", MODEL, metavar="VOICE",
                                    none="none, no voice prompt")
    voice_aliases: tuple[tuple[str, str], ...] = opt(
        DEFAULT_VOICE_ALIASES, "another name for a preset (repeatable); OpenAI's names are aliases unless set here",
        MODEL, flags=("--voice-alias",), metavar="NAME=PRESET", many=True,
        default_text=f"{', '.join(OPENAI_VOICES[:3])}, ... = v2/en_speaker_N",
        text=lambda text: _with_default_aliases(_alias_pairs(text.split(","))), toml=_aliases_from_toml,
        dump=lambda pairs: {k: v for k, v in pairs if dict(DEFAULT_VOICE_ALIASES).get(k) != v},
        check=_check_aliases, expects="NAME=PRESET pairs")
    offline: bool = opt(False, "never reach the hub: weights, tokenizer and voices from local files or the cache",
                        MODEL, flags=("--offline", "--local-files-only"))
    # --- limits: engine -----------------------------------------------------------------------------------------
    max_streams: int = opt(8, "streams the engine computes at once", LIMITS_ENGINE, min=1)
    max_queue: int = opt(32, "streams waiting for admission before `overloaded`", LIMITS_ENGINE, min=0)
    coarse_prefix_slots: int | None = opt(
        None, "extra coarse KV slots preparing the next window's prompt while a window decodes; 0 = off, saving a "
        "third of the K/V memory per stream at the cost of a prefill at every coarse window boundary",
        LIMITS_ENGINE, min=0, none="one per stream")
    max_streams_per_connection: int | None = opt(None, "engine slots one connection may hold", LIMITS_ENGINE, min=1,
                                                 none="max(2, max-streams / 4)")
    max_streams_per_key: int | None = opt(None, "requests in flight per API key, all connections together",
                                          LIMITS_ENGINE, min=1, none="no cap")
    max_requests_per_ip: int | None = opt(None, "requests in flight per client address, across every front end "
                                          "(WebSocket, HTTP, Wyoming)", LIMITS_ENGINE, min=1, none="no cap")
    refuse_when_full: bool = opt(False, "with every engine slot in use, refuse new WebSocket upgrades with 503 and "
                                 "Retry-After so a balancer or client tries another replica (off: a lone server "
                                 "queues them and answers `overloaded` per request)", LIMITS_ENGINE)
    # --- limits: per connection ---------------------------------------------------------------------------------
    max_connections: int = opt(64, "open WebSocket connections (Wyoming ones counted apart); more get 503",
                               LIMITS_CONNECTION, min=1)
    max_connections_per_ip: int | None = opt(None, "open connections per client address; more get 429",
                                             LIMITS_CONNECTION, min=1, none="no cap")
    limits: Limits = opt(help="what one connection may send, advertised in `ready`", group=LIMITS_CONNECTION,
                         factory=Limits, parts=(
        ("max_frame_bytes", Option("bytes in one client frame", LIMITS_CONNECTION, unit=BYTES, min=1)),
        ("max_text_chars", Option("characters in one `text` message", LIMITS_CONNECTION, min=1)),
        ("max_request_chars", Option("characters in one request", LIMITS_CONNECTION, min=1)),
        ("max_ids_in_flight", Option("requests open at once on one connection", LIMITS_CONNECTION, min=1)),
    ))
    oversize_factor: int = opt(4, "frames up to this many times --max-frame-bytes get `frame_too_large`; bigger "
                               "ones close the connection (1009) unread", LIMITS_CONNECTION, min=1)
    send_queue_frames: int = opt(64, "outgoing frames buffered per connection before its streams pause",
                                 LIMITS_CONNECTION, min=1)
    max_buffer_s: float = opt(10.0, "audio sent or queued but not yet acknowledged, per connection, before its "
                              "streams pause", LIMITS_CONNECTION, unit=SECONDS, above=0)
    compression: bool = opt(False, "permessage-deflate (PCM barely compresses; off rules out zip bombs)",
                            LIMITS_CONNECTION)
    # --- limits: rates ------------------------------------------------------------------------------------------
    max_messages_per_s: float = opt(200.0, "messages per second per connection (token bucket refill)", LIMITS_RATES,
                                    unit=PER_S, above=0)
    message_burst: int = opt(400, "messages a connection may send at once (token bucket size)", LIMITS_RATES, min=1)
    rate_limit_strikes: int = opt(50, "`rate_limited` refusals in a row before closing 1008", LIMITS_RATES, min=1)
    max_bytes_per_s: float = opt(1_048_576.0, "bytes a connection may send per second, every frame counted; past the "
                                 "burst the server stops reading that socket until the budget refills",
                                 LIMITS_RATES, unit=BYTES_PER_S, above=0)
    max_frames_per_s: float = opt(400.0, "WebSocket frames per second per connection, pings and pongs included",
                                  LIMITS_RATES, unit=PER_S, above=0)
    frame_burst: int = opt(800, "frames a connection may send at once", LIMITS_RATES, min=1)
    # --- limits: HTTP -------------------------------------------------------------------------------------------
    http_limit_per_s: float = opt(50.0, "every HTTP request on any port (404s, 401s, /healthz, /metrics, the API) "
                                  "takes a token from its client address's bucket before any other work: its "
                                  "refill rate", LIMITS_HTTP, unit=PER_S, above=0)
    http_limit_burst: int = opt(100, "that bucket's size: HTTP requests a client address may send at once",
                                LIMITS_HTTP, min=1)
    http_max_connections: int = opt(256, "open TCP connections to the HTTP port, idle keep-alive ones included; "
                                    "more get 503", LIMITS_HTTP, min=1)
    http_max_requests: int = opt(32, "speech requests in flight over HTTP, all clients; more get 503 + Retry-After",
                                 LIMITS_HTTP, min=1)
    http_requests_per_s: float = opt(5.0, "speech requests per second per client address (token bucket refill)",
                                     LIMITS_HTTP, unit=PER_S, above=0)
    http_request_burst: int = opt(10, "speech requests a client address may send at once", LIMITS_HTTP, min=1)
    # --- timeouts -----------------------------------------------------------------------------------------------
    request_text_timeout: float | None = opt(
        30.0, "a request waiting for more text (start / synthesize-start) that receives none for this long ends "
        "with `idle_timeout` (silence since the last text, not only since the start)", TIMEOUTS, unit=SECONDS,
        above=0, none="off", zero_is_none=True)
    idle_timeout: float | None = opt(120.0, "close connections with no request in flight and no message for this "
                                     "long", TIMEOUTS, unit=SECONDS, above=0, none="never", zero_is_none=True)
    slow_consumer_timeout: float = opt(20.0, "close readers silent this long while owed audio", TIMEOUTS,
                                       unit=SECONDS, above=0)
    probe_interval: float = opt(0.25, "acknowledgement pings while audio flows (below --slow-consumer-timeout)",
                                TIMEOUTS, unit=SECONDS, above=0)
    ping_interval: float | None = opt(20.0, "keepalive ping period", TIMEOUTS, unit=SECONDS, above=0, none="off",
                                      zero_is_none=True)
    ping_timeout: float = opt(20.0, "a keepalive ping unanswered this long: the peer counts as gone", TIMEOUTS,
                              unit=SECONDS, above=0)
    open_timeout: float = opt(10.0, "opening handshake", TIMEOUTS, unit=SECONDS, above=0)
    close_timeout: float = opt(5.0, "closing handshake, and the send task's end", TIMEOUTS, unit=SECONDS, above=0)
    drain_timeout: float = opt(30.0, "on SIGTERM/SIGINT, time requests in flight get to finish", TIMEOUTS,
                               unit=SECONDS, above=0)
    # --- security -----------------------------------------------------------------------------------------------
    api_keys: tuple[str, ...] = opt((), "accepted keys; empty = no authentication (from --api-key-file and the "
                                    "variable named by --api-key-env only)", SECURITY, secret=True)
    allowed_origins: tuple[str, ...] = opt((), "an Origin allowed to connect (repeatable)", SECURITY,
                                           flags=("--allowed-origin",), metavar="ORIGIN", default_text="any")
    public_metrics: bool = opt(False, "serve /metrics without a key even when API keys are set", SECURITY)
    ssl_certfile: Path | None = opt(None, "certificate (chain) in PEM: serve wss:// and, with --http-port, https://",
                                    SECURITY, metavar="PEM", none="plain TCP")
    ssl_keyfile: Path | None = opt(None, "the certificate's private key in PEM", SECURITY, metavar="PEM",
                                   none="inside --ssl-certfile")
    # --- integrations -------------------------------------------------------------------------------------------
    wyoming_port: int | None = opt(None, "also serve Wyoming text to speech on this TCP port (Home Assistant's "
                                   "convention: 10200)", INTEGRATIONS, none="off", **_PORT)
    wyoming_host: str = opt("127.0.0.1", "interface of the Wyoming port; Wyoming has no authentication, so "
                            "loopback unless you mean otherwise (0.0.0.0 behind a firewall)", INTEGRATIONS,
                            metavar="HOST")
    wyoming_sample_rate: int = opt(24_000, "rate of the s16 mono audio sent over Wyoming; the model's own, others "
                                   "resample", INTEGRATIONS, unit=HZ, choices=SAMPLE_RATES, metavar="HZ")
    wyoming_params: tuple[tuple[str, object], ...] = opt(
        (), "sampling and streaming parameters of every Wyoming request, as the WebSocket's params map in JSON "
        "(e.g. '{\"text_temp\": 0.6}')", INTEGRATIONS, metavar="JSON", default_text="none",
        text=_params_from_text, toml=_params_from_toml, dump=dict, check=_check_params, expects="a JSON object")
    wyoming_zeroconf: str | None = opt(
        None, "announce the Wyoming server over mDNS (_wyoming._tcp.local.) under NAME (given alone: "
        "bark-stream-<hostname>); needs a non-loopback --wyoming-host and the zeroconf package", INTEGRATIONS,
        metavar="NAME", none="off", const="", blank=True, text=_zeroconf_from_text, toml=_zeroconf_from_toml)
    web_page: bool = opt(True, "serve the try-it page at / on the WebSocket port", INTEGRATIONS)
    # --- general ------------------------------------------------------------------------------------------------
    log_level: str = opt("info", "log level", GENERAL, choices=LOG_LEVELS)

    def __post_init__(self) -> None:
        check_fields(self, OPTIONS)  # types, ranges and choices, as declared
        if self.probe_interval >= self.slow_consumer_timeout:
            raise ConfigError(f"probe_interval ({self.probe_interval}) must be below slow_consumer_timeout "
                              f"({self.slow_consumer_timeout})", field="probe_interval")
        if self.voices_dir is not None and not Path(self.voices_dir).is_dir():
            raise ConfigError(f"voices_dir: {self.voices_dir} is not a directory", field="voices_dir")
        if self.ssl_keyfile is not None and self.ssl_certfile is None:
            raise ConfigError("ssl_keyfile: given without ssl_certfile (--ssl-certfile)", field="ssl_keyfile")
        for name in ("ssl_certfile", "ssl_keyfile"):
            if getattr(self, name) is not None and not Path(getattr(self, name)).is_file():
                raise ConfigError(f"{name}: {getattr(self, name)} is not a file", field=name)
        if self.wyoming_zeroconf is not None and is_loopback(self.wyoming_host):
            raise ConfigError("wyoming_zeroconf: announcing a server bound to loopback would advertise an "
                              "address nobody else can reach; set --wyoming-host (e.g. 0.0.0.0) too",
                              field="wyoming_zeroconf")

    def group(self, name: str) -> dict[str, Any]:
        """The values of one option group, by its config file table ("network", "limits.engine", ... see
        GROUPS), as {key: value}; API keys left out. KeyError for an unknown group."""
        return group_values(self, OPTIONS, name)

    @property
    def streams_per_connection(self) -> int:
        """The per-connection slot cap in force."""
        if self.max_streams_per_connection is not None:
            return self.max_streams_per_connection
        return max(2, self.max_streams // 4)

    def ssl_context(self):  # type: ignore[no-untyped-def]
        """A server-side ssl.SSLContext for ssl_certfile/ssl_keyfile, None without TLS; ConfigError naming the
        flag when the files do not load (not PEM, key does not match the certificate)."""
        if self.ssl_certfile is None:
            return None
        import ssl

        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(str(self.ssl_certfile), None if self.ssl_keyfile is None else str(self.ssl_keyfile))
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"--ssl-certfile/--ssl-keyfile: cannot load {self.ssl_certfile}"
                              f"{'' if self.ssl_keyfile is None else ' with ' + str(self.ssl_keyfile)}: {exc}") from None
        return context

    @property
    def ws_max_size(self) -> int:
        """Largest frame the WebSocket layer reads (bigger ones close the connection with 1009 unread)."""
        return self.limits.max_frame_bytes * self.oversize_factor

    def __repr__(self) -> str:  # never print API keys
        keys = f"<{len(self.api_keys)} key(s)>"
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if k != "api_keys")
        return f"ServerConfig({fields}, api_keys={keys})"


# Options that are no field: where other values come from. API keys never come from a flag or the file.
SOURCES = (
    source("config", "path", None, "read options from this TOML file, one table per group (Python 3.11+)", GENERAL,
           metavar="FILE.toml", none="none", in_file=False),
    source("api_key_file", "path", None, "file of API keys, one per line (# comments)", SECURITY, metavar="FILE",
           none="none"),
    source("api_key_env", "str", DEFAULT_KEY_ENV, "environment variable holding comma-separated API keys", SECURITY,
           metavar="NAME"),
)

OPTIONS: tuple[Option, ...] = declared(ServerConfig, SOURCES)
