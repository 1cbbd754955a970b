"""`ServerConfig`: every option of `python -m server`, validated at construction."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from streaming.errors import ConfigError

from .protocol import Limits

LOG_LEVELS = ("debug", "info", "warning", "error")


def _positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name}: expected a positive integer, got {value!r}")


def _positive_number(name: str, value: object, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError(f"{name}: expected a positive number of seconds, got {value!r}")


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
    codec: str = "pretrained"  # pretrained | random | path to a saved codec state
    tokenizer: str | None = None  # local dir with vocab.txt, or a hub repo; None = bert-base-multilingual-cased
    voices_dir: Path | None = None  # directory of voice presets (Suno or transformers layout)
    default_voice: str | None = None  # voice for requests that name none; None = no voice prompt
    offline: bool = False  # never reach the hub: weights, tokenizer and voices from local files/cache only
    # --- engine capacity
    max_streams: int = 8  # streams computed at once by the engine
    max_queue: int = 32  # streams waiting for admission before `overloaded`
    # --- per-connection limits
    max_connections: int = 64  # open WebSocket connections; more are refused with HTTP 503
    limits: Limits = field(default_factory=Limits)  # advertised in `ready`
    send_queue_frames: int = 64  # outgoing frames buffered per connection before streams are paused
    oversize_factor: int = 4  # frames up to factor * max_frame_bytes get a `frame_too_large` error
    # beyond that the WebSocket layer closes with 1009 without reading them
    # --- timeouts
    ping_interval: float | None = 20.0  # seconds between keepalive pings; None disables them
    close_timeout: float = 5.0  # seconds to wait for a closing handshake / for the send task to finish
    # --- logging
    log_level: str = "info"

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host:
            raise ConfigError(f"host: expected a host name or address, got {self.host!r}")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ConfigError(f"port: expected an integer in 0..65535, got {self.port!r}")
        for name in ("max_streams", "max_queue", "max_connections", "send_queue_frames", "oversize_factor"):
            _positive(name, getattr(self, name))
        _positive_number("ping_interval", self.ping_interval, allow_none=True)
        _positive_number("close_timeout", self.close_timeout)
        if not isinstance(self.limits, Limits):
            raise ConfigError(f"limits: expected a server.protocol.Limits, got {type(self.limits).__name__}")
        if self.voices_dir is not None and not Path(self.voices_dir).is_dir():
            raise ConfigError(f"voices_dir: {self.voices_dir} is not a directory")
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(f"log_level: {self.log_level!r} is not one of {', '.join(LOG_LEVELS)}")

    @property
    def ws_max_size(self) -> int:
        """Largest frame the WebSocket layer reads (bigger ones close the connection with 1009 unread)."""
        return self.limits.max_frame_bytes * self.oversize_factor
