"""Wyoming events in and out: a bounded reader, the checks on what a client sends, and the `info` event.

The wire format is the `wyoming` library's (a JSON header line, then `data_length`
bytes of JSON merged into the header's `data`, then `payload_length` bytes of
payload). The library's own reader trusts both lengths and the line length, which
is fine between processes of one machine but not on a port: `read_event` reads the
same format with every part bounded by `max_bytes`, and everything written goes out
through the library (`wyoming.event.async_write_event`).
"""

from __future__ import annotations

import asyncio
import json
import re
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from wyoming.event import Event
from wyoming.info import Attribution, Info, TtsProgram, TtsVoice

from protocol.wire import json_type
from streaming.errors import ErrorCode

# Bark's voice-prompt languages (the v2/<lang>_speaker_<n> presets); a voice of any other name may speak
# any of them, and so may the server's default voice.
LANGUAGES: dict[str, str] = {
    "en": "English", "de": "German", "es": "Spanish", "fr": "French", "hi": "Hindi", "it": "Italian",
    "ja": "Japanese", "ko": "Korean", "pl": "Polish", "pt": "Portuguese", "ru": "Russian", "tr": "Turkish",
    "zh": "Chinese",
}
DEFAULT_VOICE = "default"  # the name `info` gives the server's default voice when --default-voice is not set
_PRESET = re.compile(r"(?:v2/)?([a-z]{2})_speaker_(\d+)")
ATTRIBUTION = Attribution(name="Suno (Bark model), bark-stream (server)", url="https://github.com/suno-ai/bark")


class Refusal(Exception):
    """What a client sent cannot be served: answered with an `error` event, then the connection closes."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = str(ErrorCode(code))  # the plain string, as on the wire
        self.message = message


async def read_event(reader: asyncio.StreamReader, max_bytes: int) -> Event | None:
    """The next event, or None at the end of the stream; Refusal for anything malformed or oversized.

    The header line is bounded by the reader's own limit (set to `max_bytes` when the server
    starts), `data_length` and `payload_length` by `max_bytes`; blank lines are skipped.
    """
    while True:
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            if exc.partial.strip():
                raise Refusal(ErrorCode.BAD_FRAME, "the connection ended inside an event header") from None
            return None
        except asyncio.LimitOverrunError:
            raise Refusal(ErrorCode.FRAME_TOO_LARGE, f"an event header is longer than {max_bytes} bytes") from None
        if line.strip():
            break
    header = _json_object(line, "the event header")
    kind = header.get("type")
    if not isinstance(kind, str) or not kind:
        raise Refusal(ErrorCode.MISSING_FIELD, "type: every event needs a string `type`")
    data = header.get("data")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise Refusal(ErrorCode.BAD_FIELD, f"data: expected a JSON object, got {json_type(data)}")
    data_length = _length(header, "data_length", max_bytes)
    if data_length:
        data = {**data, **_json_object(await _read_exactly(reader, data_length), "data")}
    payload_length = _length(header, "payload_length", max_bytes)
    payload = await _read_exactly(reader, payload_length) if payload_length else None
    return Event(type=kind, data=data, payload=payload)


async def _read_exactly(reader: asyncio.StreamReader, n: int) -> bytes:
    try:
        return await reader.readexactly(n)
    except asyncio.IncompleteReadError:
        raise Refusal(ErrorCode.BAD_FRAME, "the connection ended inside an event") from None


def _length(header: dict[str, Any], key: str, max_bytes: int) -> int:
    value = header.get(key)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise Refusal(ErrorCode.BAD_FIELD, f"{key}: expected a non-negative integer, got {json_type(value)}")
    if value > max_bytes:
        raise Refusal(ErrorCode.FRAME_TOO_LARGE, f"{key}: {value} bytes exceeds the maximum of {max_bytes}")
    return value


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested past the parser's depth
        raise Refusal(ErrorCode.BAD_FRAME, f"{what} is not valid JSON") from None
    if not isinstance(value, dict):
        raise Refusal(ErrorCode.BAD_FRAME, f"{what}: expected a JSON object, got {json_type(value)}")
    return value


# --- what synthesize events carry ------------------------------------------------------------------


def text_field(data: dict[str, Any], *, required: bool, max_chars: int) -> str:
    """`data.text` as a string (a synthesize's must hold more than whitespace); Refusal otherwise."""
    text = data.get("text")
    if text is None and not required:
        return ""
    if not isinstance(text, str):
        raise Refusal(ErrorCode.BAD_FIELD if text is not None else "missing_field",
                      f"text: expected a string, got {json_type(text)}")
    if len(text) > max_chars:
        raise Refusal(ErrorCode.TEXT_TOO_LONG, f"text: {len(text)} characters exceeds the maximum of {max_chars}")
    if required and not text.strip():
        raise Refusal(ErrorCode.BAD_FIELD, "text: must not be empty or only whitespace")
    return text


def voice_field(data: dict[str, Any]) -> tuple[str | None, str | None]:
    """(voice name, language) from `data.voice` ({"name", "language", "speaker"}; all optional).
    `speaker` is accepted and ignored: Bark's presets are single-speaker voices."""
    voice = data.get("voice")
    if voice is None:
        return None, None
    if not isinstance(voice, dict):
        raise Refusal(ErrorCode.BAD_FIELD, f"voice: expected an object with a name, got {json_type(voice)}")
    name, language = voice.get("name"), voice.get("language")
    for key, value in (("name", name), ("language", language)):
        if value is not None and (not isinstance(value, str) or not value or len(value) > 128):
            raise Refusal(ErrorCode.BAD_FIELD, f"voice.{key}: expected a string of 1 to 128 characters")
    return name, language


def check_text_format(data: dict[str, Any]) -> None:
    """Only plain text: Bark reads SSML tags aloud."""
    fmt = data.get("text_format")
    if fmt is not None and fmt != "text":
        shown = repr(fmt[:20]) if isinstance(fmt, str) else json_type(fmt)
        raise Refusal(ErrorCode.BAD_FIELD, f"text_format: {shown} is not supported (plain text only)")


# --- info ------------------------------------------------------------------------------------------


def voice_languages(name: str) -> list[str]:
    """The language of a v2/<lang>_speaker_<n> preset, or every Bark language for any other voice."""
    match = _PRESET.fullmatch(name)
    if match and match.group(1) in LANGUAGES:
        return [match.group(1)]
    return list(LANGUAGES)


def voice_for_language(language: str, voices: list[str]) -> str | None:
    """The first preset that speaks `language` ("de", "de_DE" or "de-DE"), None when none does."""
    code = language.replace("-", "_").split("_")[0].lower()
    return next((v for v in voices if voice_languages(v) == [code]), None)


def _describe(name: str) -> str:
    match = _PRESET.fullmatch(name)
    if match and match.group(1) in LANGUAGES:
        return f"{LANGUAGES[match.group(1)]}, speaker {match.group(2)} ({name})"
    return name


def _package_version() -> str:
    try:
        return version("bark-stream")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "0"


def info_event(model: str, voices: list[str], default_voice: str | None) -> Event:
    """`info` for `describe`: one TTS program with every voice the server offers, the default voice first
    (listed even when it is no preset, or no preset can load), and `supports_synthesize_streaming`."""
    default = default_voice or DEFAULT_VOICE
    listed = [default] + [v for v in voices if v != default]
    release = _package_version()
    tts_voices = [
        TtsVoice(name=name, attribution=ATTRIBUTION, installed=True, version=None,
                 description=(f"Server default: {_describe(name)}" if default_voice else
                              "Server default (no voice prompt)") if name == default else _describe(name),
                 languages=voice_languages(name))
        for name in listed
    ]
    program = TtsProgram(name="bark-stream", attribution=ATTRIBUTION, installed=True, version=release,
                         description=f"Bark streaming text to speech ({model})", voices=tts_voices,
                         supports_synthesize_streaming=True)
    return Info(tts=[program]).event()
