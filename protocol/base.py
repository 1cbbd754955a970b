"""Protocol v1 constants and the per-connection `Limits` advertised in `ready`."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from streaming.errors import ConfigError

PROTOCOL_VERSION = 1
PATH = "/v1/stream"
# Raw sample encodings: every `audio.pcm` holds whole samples (little-endian; G.711 one byte each).
PCM_ENCODINGS = ("pcm_s16le", "pcm_f32le", "pcm_mulaw", "pcm_alaw")
# Compressed encodings: the `audio.pcm` chunks of a request, concatenated in seq order, are one file.
COMPRESSED_ENCODINGS = ("ogg_opus", "mp3")
ENCODINGS = PCM_ENCODINGS + COMPRESSED_ENCODINGS
DEFAULT_ENCODING = "pcm_s16le"
BYTES_PER_SAMPLE = {"pcm_s16le": 2, "pcm_f32le": 4, "pcm_mulaw": 1, "pcm_alaw": 1}
SAMPLE_RATES = (8000, 16000, 22050, 24000, 44100, 48000)  # Hz a request may ask for
DEFAULT_SAMPLE_RATE = 24_000  # Bark's EnCodec rate: no resampling
# Opus runs only at 8, 12, 16, 24 and 48 kHz (RFC 6716); the others take every rate above.
OPUS_SAMPLE_RATES = (8000, 16000, 24000, 48000)
ENCODING_SAMPLE_RATES: dict[str, tuple[int, ...]] = {
    enc: OPUS_SAMPLE_RATES if enc == "ogg_opus" else SAMPLE_RATES for enc in ENCODINGS
}
DONE_REASONS = ("end", "cancelled", "error")
MAX_ID_CHARS = 64
MAX_VOICE_CHARS = 128
_ID_RE = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")


@dataclass(frozen=True)
class Limits:
    """What one connection may send; advertised to the client in `ready`."""

    max_frame_bytes: int = 65_536  # bytes in one client frame
    max_text_chars: int = 4_096  # characters in one `text` message
    max_request_chars: int = 20_000  # characters in one request (a `speak`, or all `text` of a start..end)
    max_ids_in_flight: int = 8  # requests open at once on one connection
    max_map_keys: int = 32  # keys in any one map
    max_array_items: int = 64  # items in any one array
    max_depth: int = 4  # container nesting (the message map is level 1, `params` level 2)

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"Limits.{name}: expected a positive integer, got {value!r}", field=name)
        if self.max_text_chars > self.max_request_chars:
            raise ConfigError(
                f"Limits.max_text_chars ({self.max_text_chars}) exceeds max_request_chars ({self.max_request_chars})",
                field="max_text_chars")
        if self.max_depth < 2:
            raise ConfigError(f"Limits.max_depth: {self.max_depth} leaves no room for `params` (need >= 2)",
                              field="max_depth")

    def to_wire(self) -> dict[str, int]:
        """The `limits` map of the `ready` message."""
        return asdict(self)


def is_valid_id(value: object) -> bool:
    """True for a request id: 1-64 characters from letters, digits and `-_.:`."""
    return isinstance(value, str) and _ID_RE.fullmatch(value) is not None
