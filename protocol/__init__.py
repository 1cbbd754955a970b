"""Protocol v1: msgpack maps in binary WebSocket frames on `/v1/stream` (docs/protocol.md).

One package both sides import: the server (`server/`) and the client library
(`client/`), which never imports the server. The modules:

- `base`: constants (`PATH`, `ENCODINGS`, ...) and the per-connection `Limits`;
- `errors`: `ProtocolError` and the error-code table (`ERROR_CODES`);
- `wire`: bounded msgpack packing and unpacking;
- `params`: the `params` map of speak/start → sampling parameters and stream policy;
- `client_messages`: what a client sends (typed, validated on the server);
- `server_messages`: what a server sends (builders, validated on the client);
- `pcm`: float samples <-> the PCM bytes of `audio` messages;
- `g711`: μ-law and A-law, in numpy (the server encodes with it, clients decode with it).

This facade re-exports the names a user of the protocol needs.
"""

from .base import (
    BYTES_PER_SAMPLE,
    COMPRESSED_ENCODINGS,
    DEFAULT_ENCODING,
    DEFAULT_SAMPLE_RATE,
    ENCODING_SAMPLE_RATES,
    PCM_ENCODINGS,
    SAMPLE_RATES,
    DONE_REASONS,
    ENCODINGS,
    MAX_ID_CHARS,
    MAX_VOICE_CHARS,
    PATH,
    PROTOCOL_VERSION,
    Limits,
    is_valid_id,
)
from .client_messages import (
    Cancel,
    ClientMessage,
    End,
    Flush,
    Keepalive,
    Speak,
    Start,
    Text,
    check_request_chars,
    decode_client_message,
    encode_client_message,
)
from .errors import ERROR_CODES, ProtocolError
from .params import PARAM_KEYS, parse_params
from .pcm import pcm_decode, pcm_encode
from .server_messages import (
    MAX_SERVER_FRAME_BYTES,
    SERVER_FIELDS,
    audio_message,
    decode_server_message,
    done_message,
    encode_server_message,
    error_message,
    flushed_message,
    ready_message,
    segment_message,
)

__all__ = [
    "PROTOCOL_VERSION", "PATH", "ENCODINGS", "DEFAULT_ENCODING", "DONE_REASONS", "ERROR_CODES",
    "PARAM_KEYS", "MAX_ID_CHARS", "MAX_VOICE_CHARS", "Limits", "ProtocolError",
    "Speak", "Start", "Text", "Flush", "End", "Cancel", "Keepalive", "ClientMessage",
    "decode_client_message", "encode_client_message", "decode_server_message", "encode_server_message",
    "ready_message", "audio_message", "segment_message", "done_message", "error_message", "flushed_message",
    "check_request_chars", "pcm_encode", "pcm_decode", "is_valid_id", "SERVER_FIELDS",
    "MAX_SERVER_FRAME_BYTES", "parse_params", "PCM_ENCODINGS", "COMPRESSED_ENCODINGS", "SAMPLE_RATES",
    "DEFAULT_SAMPLE_RATE", "ENCODING_SAMPLE_RATES", "BYTES_PER_SAMPLE",
]
