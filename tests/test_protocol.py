"""Protocol v1: client messages decode to dataclasses, every bad input gets its documented code."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest

from protocol import (
    ENCODINGS,
    ERROR_CODES,
    PARAM_KEYS,
    Cancel,
    End,
    Flush,
    Limits,
    ProtocolError,
    Speak,
    Start,
    Text,
    audio_message,
    check_request_chars,
    decode_client_message,
    decode_server_message,
    done_message,
    encode_client_message,
    encode_server_message,
    error_message,
    pcm_decode,
    pcm_encode,
    ready_message,
    segment_message,
)
from streaming.params import SamplingParams, StreamPolicy

LIMITS = Limits()


def _decode(msg: Any, limits: Limits = LIMITS) -> Any:
    return decode_client_message(msgpack.packb(msg, use_bin_type=True), limits)


def _error(msg: Any, limits: Limits = LIMITS) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        _decode(msg, limits)
    return info.value


def _raw_error(frame: bytes | str) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode_client_message(frame, LIMITS)
    return info.value


# --- valid messages -------------------------------------------------------


def test_speak_minimal_gets_defaults() -> None:
    """A speak with only id and text gets the default encoding, voice and params."""
    msg = _decode({"type": "speak", "id": "r1", "text": "Hello."})
    assert msg == Speak("r1", "Hello.", None, "pcm_s16le", SamplingParams(), StreamPolicy())


def test_speak_full_round_trip() -> None:
    """Every speak field and every params key reaches the dataclasses under its own name."""
    params = {
        "text_temp": 0.6, "waveform_temp": 0.8, "fine_temp": None, "top_k": 50, "top_p": 0.9,
        "min_eos_p": 0.1, "seed": 7, "max_semantic_tokens": 300, "greedy": False,
        "lookahead": "bounded", "max_lookahead": 8, "fine_policy": "offline",
        "fine_right_context": 32, "fine_window": 128,
    }
    assert set(params) == set(PARAM_KEYS)
    msg = _decode({"type": "speak", "id": "a-b_c.d:e", "text": "Hi", "voice": "v2/en_speaker_6",
                   "encoding": "pcm_f32le", "params": params})
    assert msg == Speak(
        "a-b_c.d:e", "Hi", "v2/en_speaker_6", "pcm_f32le",
        SamplingParams(text_temp=0.6, coarse_temp=0.8, fine_temp=None, top_k=50, top_p=0.9,
                       min_eos_p=0.1, seed=7, max_semantic_tokens=300, greedy=False),
        StreamPolicy(lookahead="bounded", max_lookahead=8, fine="offline", fine_right_context=32, fine_window=128),
    )


def test_start_round_trip() -> None:
    """A start decodes with its voice, encoding and params."""
    msg = _decode({"type": "start", "id": "s", "voice": "x", "encoding": "pcm_s16le", "params": {"seed": 1}})
    assert msg == Start("s", "x", "pcm_s16le", SamplingParams(seed=1), StreamPolicy())


@pytest.mark.parametrize(
    ("msg", "expected"),
    [
        ({"type": "text", "id": "s", "text": " world"}, Text("s", " world")),
        ({"type": "text", "id": "s", "text": ""}, Text("s", "")),
        ({"type": "flush", "id": "s"}, Flush("s")),
        ({"type": "end", "id": "s"}, End("s")),
        ({"type": "cancel", "id": "s"}, Cancel("s")),
    ],
)
def test_small_messages_round_trip(msg: dict, expected: object) -> None:
    """text (even empty), flush, end and cancel decode to their dataclasses."""
    assert _decode(msg) == expected


def test_nil_optional_fields_mean_default() -> None:
    """nil voice, encoding and params are the same as leaving them out."""
    msg = _decode({"type": "start", "id": "s", "voice": None, "encoding": None, "params": None})
    assert msg == Start("s", None, "pcm_s16le", SamplingParams(), StreamPolicy())


def test_int_params_accepted_for_float_fields() -> None:
    """An integer temperature is a number and arrives as a float."""
    msg = _decode({"type": "speak", "id": "r", "text": "x", "params": {"text_temp": 1}})
    assert msg.sampling.text_temp == 1.0 and isinstance(msg.sampling.text_temp, float)


def test_encode_client_message_rejects_unknown_type() -> None:
    """The client-side encoder refuses a map whose type is not a client message."""
    with pytest.raises(ValueError, match="type"):
        encode_client_message({"type": "audio"})


# --- bad frames -----------------------------------------------------------


def test_text_frame_is_fatal() -> None:
    """A str frame is text_frame, fatal with close code 1003."""
    err = _raw_error('{"type": "speak"}')
    assert (err.code, err.fatal, err.close_code) == ("text_frame", True, 1003)


def test_not_msgpack() -> None:
    """Bytes that are not msgpack are bad_frame and the connection continues."""
    err = _raw_error(b"\xc1")
    assert err.code == "bad_frame" and not err.fatal


def test_truncated_msgpack() -> None:
    """A map cut short is bad_frame."""
    err = _raw_error(msgpack.packb({"type": "speak", "id": "r", "text": "hello"})[:-2])
    assert err.code == "bad_frame"


def test_trailing_bytes() -> None:
    """A valid map followed by more bytes is bad_frame naming the trailing bytes."""
    err = _raw_error(encode_client_message({"type": "end", "id": "r"}) + b"\x00")
    assert err.code == "bad_frame" and "trailing" in err.message


@pytest.mark.parametrize("value", [[1, 2], "speak", 5, None, b"\x00"])
def test_top_level_not_a_map(value: Any) -> None:
    """A top-level value that is not a map is bad_frame naming what it got."""
    err = _error(value)
    assert err.code == "bad_frame" and "expected a msgpack map" in err.message


def test_invalid_utf8() -> None:
    """A str with invalid UTF-8 is bad_frame."""
    err = _raw_error(b"\x81\xa4type\xa2\xff\xfe")
    assert err.code == "bad_frame" and "UTF-8" in err.message


def test_non_string_key() -> None:
    """Integer map keys are bad_frame."""
    assert _raw_error(b"\x81\x01\x02").code == "bad_frame"


def test_bin_key() -> None:
    """bin map keys are bad_frame naming the key type."""
    err = _raw_error(b"\x81\xc4\x04type\xa3end")
    assert err.code == "bad_frame" and "keys must be strings" in err.message


def test_ext_type_rejected() -> None:
    """msgpack ext types, timestamps included, are bad_frame."""
    for value in (msgpack.ExtType(3, b"abc"), msgpack.Timestamp(1)):
        frame = msgpack.packb({"type": "end", "id": "r", "x": value}, use_bin_type=True)
        assert _raw_error(frame).code == "bad_frame"


def test_too_deep() -> None:
    """Nesting beyond max_depth is bad_frame naming the depth."""
    err = _error({"type": "speak", "id": "r", "text": "x", "params": {"seed": [[[1]]]}})
    assert err.code == "bad_frame" and "deeper than 4" in err.message


def test_too_many_keys() -> None:
    """A map with more than max_map_keys keys is bad_frame."""
    assert _error({f"k{i}": i for i in range(33)}).code == "bad_frame"


def test_oversized_frame_is_fatal() -> None:
    """A frame over max_frame_bytes is frame_too_large, fatal with close code 1009."""
    err = _error({"type": "speak", "id": "r", "text": "x" * 70_000}, Limits(max_request_chars=100_000))
    assert (err.code, err.fatal, err.close_code) == ("frame_too_large", True, 1009)
    assert "max_frame_bytes" in err.message


def test_huge_claimed_length() -> None:
    """A str32 header claiming 4 GiB is bad_frame without allocating."""
    assert _raw_error(b"\x81\xa4type\xdb\xff\xff\xff\xff").code == "bad_frame"


# --- bad fields -----------------------------------------------------------


def test_missing_type() -> None:
    """A map without type is missing_field naming type."""
    err = _error({"id": "r"})
    assert (err.code, err.message) == ("missing_field", "type: missing")


def test_type_not_a_string() -> None:
    """A non-string type is bad_field naming type."""
    err = _error({"type": 1})
    assert err.code == "bad_field" and err.message.startswith("type:")


def test_unknown_type() -> None:
    """An unknown type is unknown_type listing the valid types, with the id recovered."""
    err = _error({"type": "sing", "id": "r"})
    assert err.code == "unknown_type" and "speak" in err.message and err.id == "r"


@pytest.mark.parametrize(("msg", "field"), [
    ({"type": "speak", "id": "r"}, "text"),
    ({"type": "speak", "text": "x"}, "id"),
    ({"type": "text", "id": "r"}, "text"),
    ({"type": "cancel"}, "id"),
])
def test_missing_field(msg: dict, field: str) -> None:
    """A missing required field is missing_field naming it."""
    err = _error(msg)
    assert (err.code, err.message) == ("missing_field", f"{field}: missing")


def test_missing_text_recovers_id() -> None:
    """An error in a message with a valid id carries that id."""
    assert _error({"type": "speak", "id": "r7"}).id == "r7"


def test_unknown_field() -> None:
    """A field the message does not define is unknown_field naming it."""
    err = _error({"type": "end", "id": "r", "text": "x"})
    assert err.code == "unknown_field" and err.message.startswith("text:") and err.id == "r"


@pytest.mark.parametrize(("msg", "field", "got"), [
    ({"type": "speak", "id": "r", "text": 5}, "text", "int"),
    ({"type": "speak", "id": "r", "text": b"hi"}, "text", "bin"),
    ({"type": "text", "id": "r", "text": None}, "text", "nil"),
    ({"type": "speak", "id": "r", "text": "x", "voice": 3}, "voice", "int"),
    ({"type": "speak", "id": "r", "text": "x", "encoding": 16}, "encoding", "int"),
    ({"type": "start", "id": "r", "params": [1]}, "params", "array"),
    ({"type": "cancel", "id": 1.5}, "id", "float"),
    ({"type": "cancel", "id": True}, "id", "bool"),
])
def test_wrong_type_per_field(msg: dict, field: str, got: str) -> None:
    """A field of the wrong type is bad_field naming the field and the type received."""
    err = _error(msg)
    assert err.code == "bad_field" and err.message.startswith(f"{field}: expected") and err.message.endswith(got)


def test_int_id_rejected_with_hint() -> None:
    """An integer id is bad_field telling the client to send a string."""
    err = _error({"type": "cancel", "id": 42})
    assert err.code == "bad_field" and err.message == 'id: expected a string, got int (send it as the string "42")'


@pytest.mark.parametrize(("bad_id", "problem"), [
    ("", "empty"), ("a" * 65, "65 characters"), ("a b", "letters, digits"), ("r\n", "letters, digits"),
    ("é", "letters, digits"),
])
def test_bad_id(bad_id: str, problem: str) -> None:
    """An empty, too long or oddly spelt id is bad_field naming id and the problem; it is not echoed back."""
    err = _error({"type": "cancel", "id": bad_id})
    assert err.code == "bad_field" and err.message.startswith("id:") and problem in err.message
    assert err.id is None


def test_longest_id_accepted() -> None:
    """An id of exactly 64 characters is valid."""
    assert _decode({"type": "cancel", "id": "x" * 64}) == Cancel("x" * 64)


def test_unknown_encoding() -> None:
    """An encoding outside ENCODINGS is bad_encoding listing the valid ones."""
    err = _error({"type": "speak", "id": "r", "text": "x", "encoding": "opus"})
    assert err.code == "bad_encoding" and all(e in err.message for e in ENCODINGS)


@pytest.mark.parametrize("voice", ["", "v" * 129])
def test_bad_voice_length(voice: str) -> None:
    """A voice name that is empty or over 128 characters is bad_field naming voice."""
    err = _error({"type": "start", "id": "r", "voice": voice})
    assert err.code == "bad_field" and err.message.startswith("voice:")


@pytest.mark.parametrize("text", ["", "   \n\t"])
def test_blank_speak_text(text: str) -> None:
    """A speak whose text is empty or whitespace is bad_field naming text."""
    err = _error({"type": "speak", "id": "r", "text": text})
    assert err.code == "bad_field" and err.message.startswith("text:") and err.id == "r"


def test_unknown_params_key() -> None:
    """An unknown params key is unknown_field naming params.<key>."""
    err = _error({"type": "speak", "id": "r", "text": "x", "params": {"temperature": 1}})
    assert err.code == "unknown_field" and err.message.startswith("params.temperature:")


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("top_k", "5", "expected an integer or nil, got str"),
    ("top_k", 5.0, "expected an integer or nil, got float"),
    ("text_temp", None, "expected a number, got nil"),
    ("text_temp", True, "expected a number, got bool"),
    ("greedy", 1, "expected true or false, got int"),
    ("lookahead", 1, "expected a string, got int"),
    ("fine_right_context", None, "expected an integer, got nil"),
])
def test_params_wrong_type(key: str, value: Any, expected: str) -> None:
    """A params value of the wrong type is bad_field naming params.<key> and the type."""
    err = _error({"type": "start", "id": "r", "params": {key: value}})
    assert (err.code, err.message) == ("bad_field", f"params.{key}: {expected}")


@pytest.mark.parametrize(("params", "key"), [
    ({"top_k": 0}, "top_k"),
    ({"text_temp": float("nan")}, "text_temp"),
    ({"waveform_temp": 100.0}, "waveform_temp"),
    ({"seed": 2**64 - 1}, "seed"),
    ({"lookahead": "eager"}, "lookahead"),
    ({"fine_policy": "dense"}, "fine_policy"),
    ({"fine_window": 64, "fine_right_context": 32}, "fine_window"),
])
def test_params_out_of_range(params: dict, key: str) -> None:
    """An out-of-range params value is bad_field naming the wire key, not the dataclass field."""
    err = _error({"type": "start", "id": "r", "params": params})
    assert err.code == "bad_field" and err.message.startswith(f"params.{key}:") and err.id == "r"


def test_text_message_too_long() -> None:
    """A text message over max_text_chars is text_too_long naming the limit."""
    err = _error({"type": "text", "id": "r", "text": "a" * 11}, Limits(max_text_chars=10, max_request_chars=20))
    assert err.code == "text_too_long" and "max_text_chars (10)" in err.message and err.id == "r"


def test_speak_limited_by_request_chars() -> None:
    """A speak may exceed max_text_chars but not max_request_chars."""
    limits = Limits(max_text_chars=10, max_request_chars=20)
    assert _decode({"type": "speak", "id": "r", "text": "a" * 20}, limits).text == "a" * 20
    err = _error({"type": "speak", "id": "r", "text": "a" * 21}, limits)
    assert err.code == "text_too_long" and "max_request_chars (20)" in err.message


def test_check_request_chars() -> None:
    """The running total of a started request is capped at max_request_chars."""
    limits = Limits(max_text_chars=10, max_request_chars=20)
    check_request_chars("r", 20, limits)
    with pytest.raises(ProtocolError) as info:
        check_request_chars("r", 21, limits)
    assert (info.value.code, info.value.id) == ("text_too_long", "r")


# --- errors and limits ----------------------------------------------------


def test_error_to_message() -> None:
    """ProtocolError.to_message is an error message the client decoder accepts."""
    err = ProtocolError("overloaded", "server full", id="r", retry_after_ms=500)
    msg = decode_server_message(encode_server_message(err.to_message()))
    assert msg == {"type": "error", "code": "overloaded", "message": "server full", "id": "r", "retry_after_ms": 500}


def test_fatal_override_and_plain_message() -> None:
    """A non-fatal code made fatal closes with 1008; to_message leaves out an absent id."""
    err = ProtocolError("bad_frame", "garbage", fatal=True)
    assert (err.fatal, err.close_code) == (True, 1008)
    assert err.to_message() == {"type": "error", "code": "bad_frame", "message": "garbage"}


def test_unknown_error_code_rejected() -> None:
    """Constructing a ProtocolError with an undocumented code is a ValueError."""
    with pytest.raises(ValueError, match="code"):
        ProtocolError("oops", "x")


def test_fatal_codes_have_close_codes() -> None:
    """Fatal-by-default codes carry their close code; others carry none."""
    for code, close in ERROR_CODES.items():
        err = ProtocolError(code, "m")
        assert err.fatal == (close is not None) and err.close_code == close


@pytest.mark.parametrize("kwargs", [
    {"max_frame_bytes": 0}, {"max_depth": True}, {"max_text_chars": 30_000}, {"max_depth": 1},
])
def test_bad_limits(kwargs: dict) -> None:
    """Limits rejects non-positive, non-int and inconsistent values naming the field."""
    with pytest.raises(ValueError, match=r"Limits\.max_"):
        Limits(**kwargs)


# --- server messages ------------------------------------------------------


def test_server_messages_round_trip() -> None:
    """Every server builder's output survives encode + decode unchanged, PCM as bin."""
    msgs = [
        ready_message("bark-small", ["v2/en_speaker_1"], LIMITS, extra_limits={"max_queue": 4}),
        audio_message("r", 0, 0, b"\x01\x02"),
        segment_message("r", "Hello.", 0, 4800),
        done_message("r", "end", 4800, {"ttfa_ms": 120.5, "rtf": 0.3}),
        error_message("unknown_id", "id: 'q' is not in flight", id="q"),
    ]
    for msg in msgs:
        assert decode_server_message(encode_server_message(msg)) == msg
    assert b"\xc4\x02\x01\x02" in encode_server_message(msgs[1])
    assert msgs[0]["limits"]["max_queue"] == 4 and msgs[0]["protocol"] == 1


@pytest.mark.parametrize(("msg", "code", "field"), [
    ({"type": "audio", "id": "r", "seq": 0, "sample": 0}, "missing_field", "audio.pcm"),
    ({"type": "audio", "id": "r", "seq": -1, "sample": 0, "pcm": b""}, "bad_field", "audio.seq"),
    ({"type": "audio", "id": "r", "seq": 0, "sample": 0, "pcm": "AAA="}, "bad_field", "audio.pcm"),
    ({"type": "done", "id": "r", "reason": "ok", "samples": 0, "stats": {}}, "bad_field", "done.reason"),
    ({"type": "hello"}, "unknown_type", "type"),
])
def test_decode_server_message_rejects(msg: dict, code: str, field: str) -> None:
    """Malformed server frames raise ProtocolError naming the field."""
    with pytest.raises(ProtocolError) as info:
        decode_server_message(msgpack.packb(msg, use_bin_type=True))
    assert info.value.code == code and info.value.message.startswith(f"{field}:")


def test_server_message_ignores_extra_fields() -> None:
    """A newer server may add fields; the client decoder keeps them and does not fail."""
    msg = {**segment_message("r", "x", 0, 1), "words": []}
    assert decode_server_message(encode_server_message(msg)) == msg


def test_builders_check_arguments() -> None:
    """Builders refuse an invalid reason, code or negative offsets."""
    with pytest.raises(ValueError):
        done_message("r", "finished", 0)
    with pytest.raises(ValueError):
        error_message("nope", "x")
    with pytest.raises(ValueError):
        audio_message("r", -1, 0, b"")
    with pytest.raises(ValueError):
        segment_message("r", "x", 10, 5)


# --- PCM ------------------------------------------------------------------


def test_pcm_s16_round_trip() -> None:
    """s16le round-trips within 1/32767 and clips out-of-range samples."""
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, 4800).astype(np.float32)  # [T]
    y = pcm_decode(pcm_encode(x, "pcm_s16le"), "pcm_s16le")
    assert y.dtype == np.float32 and np.max(np.abs(y - x)) <= 1 / 32767
    clipped = pcm_decode(pcm_encode(np.array([-3.0, 3.0, np.nan], np.float32), "pcm_s16le"), "pcm_s16le")
    assert clipped.tolist() == [-1.0, 1.0, 0.0]


def test_pcm_s16_is_little_endian() -> None:
    """Full scale encodes as 0x7fff little-endian."""
    assert pcm_encode(np.array([1.0, -1.0], np.float32), "pcm_s16le") == b"\xff\x7f\x01\x80"


def test_pcm_f32_round_trip() -> None:
    """f32le round-trips exactly, little-endian."""
    x = np.random.default_rng(1).standard_normal(1000).astype(np.float32)  # [T]
    data = pcm_encode(x, "pcm_f32le")
    assert data == x.astype("<f4").tobytes()
    assert np.array_equal(pcm_decode(data, "pcm_f32le"), x)


def test_pcm_errors() -> None:
    """Unknown encodings are ValueError; a partial sample is a ProtocolError naming pcm."""
    with pytest.raises(ValueError, match="pcm_s16le"):
        pcm_encode(np.zeros(2, np.float32), "mp3")
    with pytest.raises(ValueError, match="1-D"):
        pcm_encode(np.zeros((2, 2), np.float32), "pcm_f32le")
    with pytest.raises(ProtocolError) as info:
        pcm_decode(b"\x00\x00\x00", "pcm_s16le")
    assert info.value.message.startswith("pcm:")


def test_docs_error_table_matches_codes() -> None:
    """docs/protocol.md documents exactly ERROR_CODES, each with its close code."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "protocol.md").read_text(encoding="utf-8")
    table = doc.split("## Error codes", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \| (\d{4}|—) \|", table, flags=re.MULTILINE)
    documented = {code: None if close == "—" else int(close) for code, close in rows}
    assert documented == ERROR_CODES


def test_client_imports_the_protocol_without_the_server():
    """The protocol is its own package: the client library and CLI never pull in `server`."""
    import subprocess
    import sys

    code = ("import sys, client.api, client.__main__; "
            "bad = sorted(m for m in sys.modules if m == 'server' or m.startswith('server.')); "
            "print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
