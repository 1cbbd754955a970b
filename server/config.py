"""`ServerConfig`: every option of `python -m server`, validated at construction."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from streaming.errors import ConfigError

from protocol import Limits

LOG_LEVELS = ("debug", "info", "warning", "error")
_ALIAS = re.compile(r"[A-Za-z0-9_\-]+(/[A-Za-z0-9_\-]+)?")  # a voice name, as requests spell them

# OpenAI's voice names, so that apps that only know those (Open WebUI, SillyTavern, ...) work out of the
# box; each maps to a Bark English preset. Operators change or add them with --voice-alias NAME=PRESET.
OPENAI_VOICES = ("alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer", "verse")
DEFAULT_VOICE_ALIASES: tuple[tuple[str, str], ...] = tuple(
    (name, f"v2/en_speaker_{i % 10}") for i, name in enumerate(OPENAI_VOICES))


def _positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name}: expected a positive integer, got {value!r}")


def _positive_number(name: str, value: object, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError(f"{name}: expected a positive number, got {value!r}")


def _check_strings(name: str, values: object) -> None:
    if not isinstance(values, tuple) or not all(isinstance(v, str) and v and v == v.strip() for v in values):
        raise ConfigError(f"{name}: expected a tuple of non-empty strings without surrounding spaces")


@dataclass(frozen=True)
class ServerConfig:
    """Where to listen, what to load, and how much each connection may ask for."""

    # --- listening
    host: str = "127.0.0.1"  # interface to bind; 0.0.0.0 for every interface
    port: int = 8765  # TCP port; 0 picks a free one (tests)
    # --- model
    model: str = "bark-small"  # bark-small | bark | hf:<repo> | a local directory | random-tiny|small|large
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    dtype: str = "auto"  # auto | float32 | float16 | bfloat16
    codec: str = "pretrained"  # pretrained | random | random-tiny | path to a saved codec state
    codec_dtype: str = "auto"  # auto (fp32) | fp32 | fp16 | bf16: the EnCodec decoder's precision
    cuda_graphs: bool = False  # capture the decode steps as CUDA graphs at start (GPU only)
    quantize: str = "none"  # none | int8: weight-only int8 text and coarse GPTs (CPU only)
    tokenizer: str | None = None  # local dir with vocab.txt, or a hub repo; None = bert-base-multilingual-cased
    voices_dir: Path | None = None  # directory of voice presets (Suno or transformers layout)
    default_voice: str | None = None  # voice for requests that name none; None = no voice prompt
    offline: bool = False  # never reach the hub: weights, tokenizer and voices from local files/cache only
    # --- engine capacity
    max_streams: int = 8  # streams computed at once by the engine
    max_streams_per_connection: int | None = None  # engine slots one connection may hold; None = max(2, max_streams // 4)
    max_queue: int = 32  # streams waiting for admission before `overloaded`
    coarse_prefix_slots: int | None = None  # KV slots preparing coarse windows' prompts; None = one per stream, 0 = off
    # --- per-connection limits
    max_connections: int = 64  # open WebSocket connections; more are refused with HTTP 503
    refuse_when_full: bool = False  # every engine slot held: refuse new upgrades with 503 + Retry-After (behind a
    # balancer, so it tries another replica); off: a lone server queues them and answers `overloaded` per request
    limits: Limits = field(default_factory=Limits)  # advertised in `ready`
    send_queue_frames: int = 64  # outgoing frames buffered per connection before streams are paused
    oversize_factor: int = 4  # frames up to factor * max_frame_bytes get a `frame_too_large` error
    # beyond that the WebSocket layer closes with 1009 without reading them
    compression: bool = False  # permessage-deflate; off: PCM barely compresses and zip bombs cost nothing
    max_messages_per_s: float = 200.0  # per-connection message rate (token bucket refill)
    message_burst: int = 400  # messages a connection may send at once (token bucket size)
    rate_limit_strikes: int = 50  # messages refused with `rate_limited` in a row before closing 1008
    max_bytes_per_s: float = 1_048_576.0  # bytes a connection may send per second, every frame counted; past
    # the burst the server stops reading that socket until the budget refills (TCP backpressure, no CPU spent)
    max_frames_per_s: float = 400.0  # WebSocket frames per second, control frames (ping, pong) included
    frame_burst: int = 800
    max_connections_per_ip: int | None = None  # open connections per client address; None = no cap
    max_streams_per_key: int | None = None  # requests in flight per API key, all connections; None = no cap
    trusted_proxies: tuple[str, ...] = ()  # addresses/networks whose X-Forwarded-For names the real client
    request_text_timeout: float | None = 30.0  # a `start` request that gets no text for this long fails
    # --- stalled readers
    max_buffer_s: float = 10.0  # audio (seconds) sent or queued but not yet acknowledged by the peer
    slow_consumer_timeout: float = 20.0  # seconds without an acknowledgement while audio is owed
    probe_interval: float = 0.25  # seconds between acknowledgement pings while audio is flowing
    # --- timeouts
    idle_timeout: float | None = 120.0  # seconds with no request in flight and no message; None = never
    ping_interval: float | None = 20.0  # seconds between keepalive pings; None disables them
    ping_timeout: float = 20.0  # seconds a keepalive ping may go unanswered before the peer counts as gone
    open_timeout: float = 10.0  # seconds the opening handshake may take
    close_timeout: float = 5.0  # seconds to wait for a closing handshake / for the send task to finish
    drain_timeout: float = 30.0  # on SIGTERM/SIGINT: seconds requests in flight may take to finish
    # --- access
    api_keys: tuple[str, ...] = ()  # accepted keys; empty = no authentication
    allowed_origins: tuple[str, ...] = ()  # exact Origin values allowed; empty = any (a missing Origin passes)
    public_metrics: bool = False  # serve /metrics without a key even when api_keys are set
    ssl_certfile: Path | None = None  # PEM certificate (chain): serve wss:// and https:// (with ssl_keyfile)
    ssl_keyfile: Path | None = None  # its PEM private key (None: the key is inside ssl_certfile)
    # --- OpenAI-compatible HTTP API (server/httpapi), off unless http_port is set
    http_port: int | None = None  # TCP port of POST /v1/audio/speech (+ /healthz, /metrics); 0 = any free one
    http_max_requests: int = 32  # speech requests in flight over HTTP, all clients; more get 503 + Retry-After
    http_max_connections: int = 256  # open TCP connections to the HTTP port (idle keep-alive ones too); more: 503
    http_requests_per_s: float = 5.0  # speech requests per second per client address (token bucket refill)
    http_request_burst: int = 10  # speech requests a client address may send at once
    voice_aliases: tuple[tuple[str, str], ...] = DEFAULT_VOICE_ALIASES  # (alias, preset): OpenAI's voice names
    # --- Wyoming text to speech for Home Assistant (server/wyoming), off unless wyoming_port is set
    wyoming_port: int | None = None  # TCP port (Home Assistant's convention: 10200); 0 = any free one
    wyoming_host: str = "127.0.0.1"  # Wyoming has no authentication: loopback unless you mean otherwise
    wyoming_sample_rate: int = 24_000  # Hz of the s16 mono audio, announced in audio-start
    wyoming_params: tuple[tuple[str, object], ...] = ()  # the WebSocket's `params` for every Wyoming request
    wyoming_zeroconf: str | None = None  # announce _wyoming._tcp.local. under this name ("" = bark-stream-HOST)
    # --- the browser page (server/web) at / on the WebSocket port
    web_page: bool = True
    # --- logging
    log_level: str = "info"

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host:
            raise ConfigError(f"host: expected a host name or address, got {self.host!r}")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ConfigError(f"port: expected an integer in 0..65535, got {self.port!r}")
        if isinstance(self.max_queue, bool) or not isinstance(self.max_queue, int) or self.max_queue < 0:
            raise ConfigError(f"max_queue: expected an integer >= 0, got {self.max_queue!r}")
        for name in ("max_streams", "max_connections", "send_queue_frames", "oversize_factor",
                     "message_burst", "rate_limit_strikes"):
            _positive(name, getattr(self, name))
        if self.coarse_prefix_slots is not None and (isinstance(self.coarse_prefix_slots, bool) or not isinstance(
                self.coarse_prefix_slots, int) or self.coarse_prefix_slots < 0):
            raise ConfigError(f"coarse_prefix_slots: expected an integer >= 0 (0 turns the prepared prefixes off), "
                              f"got {self.coarse_prefix_slots!r}")
        for name in ("max_streams_per_connection", "max_connections_per_ip", "max_streams_per_key"):
            if getattr(self, name) is not None:
                _positive(name, getattr(self, name))
        _positive(name="frame_burst", value=self.frame_burst)
        _check_networks(self.trusted_proxies)
        for name in ("max_bytes_per_s", "max_frames_per_s"):
            _positive_number(name, getattr(self, name))
        _positive_number("request_text_timeout", self.request_text_timeout, allow_none=True)
        for name in ("max_messages_per_s", "max_buffer_s", "slow_consumer_timeout", "probe_interval",
                     "ping_timeout", "open_timeout", "close_timeout", "drain_timeout"):
            _positive_number(name, getattr(self, name))
        for name in ("ping_interval", "idle_timeout"):
            _positive_number(name, getattr(self, name), allow_none=True)
        if self.probe_interval >= self.slow_consumer_timeout:
            raise ConfigError(f"probe_interval ({self.probe_interval}) must be below slow_consumer_timeout "
                              f"({self.slow_consumer_timeout})")
        if self.http_port is not None and (isinstance(self.http_port, bool) or not isinstance(self.http_port, int)
                                           or not 0 <= self.http_port <= 65535):
            raise ConfigError(f"http_port: expected an integer in 0..65535, got {self.http_port!r}")
        _positive("http_max_requests", self.http_max_requests)
        _positive("http_max_connections", self.http_max_connections)
        _positive("http_request_burst", self.http_request_burst)
        _positive_number("http_requests_per_s", self.http_requests_per_s)
        _check_aliases(self.voice_aliases)
        _check_wyoming(self)
        _check_strings("api_keys", self.api_keys)
        _check_strings("allowed_origins", self.allowed_origins)
        if not isinstance(self.limits, Limits):
            raise ConfigError(f"limits: expected a server.protocol.Limits, got {type(self.limits).__name__}")
        if self.voices_dir is not None and not Path(self.voices_dir).is_dir():
            raise ConfigError(f"voices_dir: {self.voices_dir} is not a directory")
        if self.ssl_keyfile is not None and self.ssl_certfile is None:
            raise ConfigError("ssl_keyfile: given without ssl_certfile (--ssl-certfile)")
        for name in ("ssl_certfile", "ssl_keyfile"):
            if getattr(self, name) is not None and not Path(getattr(self, name)).is_file():
                raise ConfigError(f"{name}: {getattr(self, name)} is not a file")
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(f"log_level: {self.log_level!r} is not one of {', '.join(LOG_LEVELS)}")

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


def _check_aliases(aliases: object) -> None:
    ok = isinstance(aliases, tuple) and all(
        isinstance(pair, tuple) and len(pair) == 2 and all(isinstance(v, str) and _ALIAS.fullmatch(v) for v in pair)
        for pair in aliases)
    if not ok:
        raise ConfigError(f"voice_aliases: expected (alias, preset) pairs of voice names, got {aliases!r:.200}")


def _check_networks(values: tuple[str, ...]) -> None:
    import ipaddress

    for value in values:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise ConfigError(f"trusted_proxies: {value!r} is not an IP address or network (e.g. 10.0.0.5, "
                              "10.0.0.0/8, ::1)") from None


def _check_wyoming(cfg: ServerConfig) -> None:
    from protocol import SAMPLE_RATES, ProtocolError, parse_params

    port = cfg.wyoming_port
    if port is not None and (isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535):
        raise ConfigError(f"wyoming_port: expected an integer in 0..65535, got {port!r}")
    if not isinstance(cfg.wyoming_host, str) or not cfg.wyoming_host:
        raise ConfigError(f"wyoming_host: expected a host name or address, got {cfg.wyoming_host!r}")
    if cfg.wyoming_sample_rate not in SAMPLE_RATES:
        raise ConfigError(f"wyoming_sample_rate: {cfg.wyoming_sample_rate!r} is not one of "
                          f"{', '.join(map(str, SAMPLE_RATES))}")
    try:
        parse_params(dict(cfg.wyoming_params) or None)
    except (ProtocolError, TypeError, ValueError) as exc:
        raise ConfigError(f"wyoming_params: {getattr(exc, 'message', exc)}") from None
    if cfg.wyoming_zeroconf is not None:
        from .wyoming.server import is_loopback

        if is_loopback(cfg.wyoming_host):
            raise ConfigError("wyoming_zeroconf: announcing a server bound to loopback would advertise an "
                              "address nobody else can reach; set --wyoming-host (e.g. 0.0.0.0) too")
