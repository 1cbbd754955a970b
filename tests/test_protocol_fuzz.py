"""Fuzzing: the protocol decoders return a message or raise ProtocolError with a documented code, nothing else."""

from __future__ import annotations

import struct
from typing import Any

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import (
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
    decode_client_message,
    decode_server_message,
    encode_client_message,
    is_valid_id,
)

LIMITS = Limits(max_frame_bytes=4096, max_text_chars=64, max_request_chars=128)
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CLIENT_TYPES = (Speak, Start, Text, Flush, End, Cancel)


def _check_decode(frame: bytes | str) -> None:
    """The property: a typed message, or a ProtocolError with a documented code and a sane id."""
    try:
        msg = decode_client_message(frame, LIMITS)
    except ProtocolError as err:
        assert err.code in ERROR_CODES
        assert isinstance(err.message, str) and err.message
        assert err.id is None or is_valid_id(err.id)
        assert len(err.message) < 600
        return
    assert isinstance(msg, CLIENT_TYPES)
    assert is_valid_id(msg.id)


# --- raw msgpack built by hand: lies about lengths, bad UTF-8, ext, odd keys ---

_HUGE_HEADERS = [
    b"\xdb\xff\xff\xff\xff",  # str32 of 4 GiB
    b"\xc6\xff\xff\xff\xff",  # bin32
    b"\xdd\xff\xff\xff\xff",  # array32
    b"\xdf\xff\xff\xff\xff",  # map32
    b"\xc9\xff\xff\xff\xff\x05",  # ext32
    b"\xd9\xff",  # str8 of 255
    b"\xde\xff\xff",  # map16
]


def _raw_str(data: bytes) -> bytes:
    """A msgpack str header around arbitrary (often invalid UTF-8) bytes."""
    return (bytes([0xA0 | len(data)]) if len(data) < 32 else b"\xd9" + bytes([len(data)])) + data


_leaf = st.one_of(
    st.none().map(msgpack.packb),
    st.booleans().map(msgpack.packb),
    st.integers(-(2**63), 2**64 - 1).map(msgpack.packb),
    st.floats(allow_nan=True, allow_infinity=True).map(msgpack.packb),
    st.floats(width=32).map(lambda f: b"\xca" + struct.pack(">f", f)),
    st.text(max_size=40).map(msgpack.packb),
    st.sampled_from(["type", "id", "text", "speak", "start", "params", "top_k", "r1"]).map(msgpack.packb),
    st.binary(max_size=40).map(lambda b: msgpack.packb(b, use_bin_type=True)),
    st.binary(max_size=40).map(_raw_str),
    st.tuples(st.integers(-128, 127), st.binary(max_size=16)).map(
        lambda t: b"\xc7" + bytes([len(t[1])]) + struct.pack(">b", t[0]) + t[1]  # ext8, any type code
    ),
    st.integers(0, 2**32 - 1).map(lambda s: msgpack.packb(msgpack.Timestamp(s))),
    st.tuples(st.sampled_from(_HUGE_HEADERS), st.binary(max_size=8)).map(b"".join),
)


def _containers(children: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    arrays = st.tuples(st.integers(0, 70), st.lists(children, max_size=6)).map(
        lambda t: (bytes([0x90 | t[0]]) if t[0] < 16 else b"\xdc" + struct.pack(">H", t[0])) + b"".join(t[1])
    )
    maps = st.tuples(st.integers(0, 40), st.lists(st.tuples(children, children), max_size=6)).map(
        lambda t: (bytes([0x80 | t[0]]) if t[0] < 16 else b"\xde" + struct.pack(">H", t[0]))
        + b"".join(k + v for k, v in t[1])
    )
    return st.one_of(arrays, maps)


raw_msgpack = st.recursive(_leaf, _containers, max_leaves=20)


@FUZZ
@given(st.binary(max_size=600))
def test_arbitrary_bytes(frame: bytes) -> None:
    """Random bytes never escape as anything but ProtocolError."""
    _check_decode(frame)


@FUZZ
@given(raw_msgpack, st.binary(max_size=4))
def test_hand_built_msgpack(frame: bytes, tail: bytes) -> None:
    """Hand-built msgpack with lying lengths, bad UTF-8, ext types and odd keys never escapes."""
    _check_decode(frame + tail)


# --- plausible maps: right keys, wrong values -------------------------------

_values = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(), st.text(max_size=80),
        st.binary(max_size=20), st.sampled_from(["r1", "pcm_s16le", "pcm_f32le", "exact", "offline", " ", ""]),
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=8,
)
_param_values = st.one_of(_values, st.integers(-5, 2000), st.floats(-1.0, 2.0), st.sampled_from(["bounded", "sliding"]))
_params = st.dictionaries(st.sampled_from(sorted(PARAM_KEYS) + ["temp", ""]), _param_values, max_size=5)
_BASES = [
    {"type": "speak", "id": "r1", "text": "Hello."},
    {"type": "start", "id": "r1", "voice": "v2/en_speaker_1", "encoding": "pcm_f32le"},
    {"type": "text", "id": "r1", "text": "more"},
    {"type": "flush", "id": "r1"},
    {"type": "cancel", "id": "r1"},
]
_field_keys = st.sampled_from(["type", "id", "text", "voice", "encoding", "params", "extra"])
_plausible = st.builds(
    lambda base, fields, params: {**base, **fields, **({"params": params} if params is not None else {})},
    st.sampled_from(_BASES),
    st.dictionaries(_field_keys, _values, max_size=2),
    st.none() | _params,
)


@FUZZ
@given(_plausible)
def test_plausible_maps(msg: dict[str, Any]) -> None:
    """Maps with the protocol's keys and arbitrary values never escape as anything but ProtocolError."""
    _check_decode(msgpack.packb(msg, use_bin_type=True))


# --- mutated valid messages --------------------------------------------------

_VALID = [
    encode_client_message({"type": "speak", "id": "r1", "text": "Hello there.", "voice": "v2/en_speaker_1",
                           "encoding": "pcm_f32le", "params": {"top_k": 50, "seed": 3, "lookahead": "bounded"}}),
    encode_client_message({"type": "start", "id": "s:1", "params": {"fine_policy": "offline", "text_temp": 0.5}}),
    encode_client_message({"type": "text", "id": "s:1", "text": " tokens"}),
    encode_client_message({"type": "cancel", "id": "s:1"}),
]

_mutation = st.tuples(st.sampled_from(["flip", "insert", "delete", "truncate"]), st.integers(0, 10_000),
                      st.integers(0, 255))


def _mutate(frame: bytes, mutations: list[tuple[str, int, int]]) -> bytes:
    data = bytearray(frame)
    for kind, pos, byte in mutations:
        i = pos % (len(data) + 1)
        if kind == "insert":
            data.insert(i, byte)
        elif not data:
            continue
        elif kind == "flip":
            data[i % len(data)] ^= byte or 1
        elif kind == "delete":
            del data[i % len(data)]
        else:
            del data[i:]
    return bytes(data)


@FUZZ
@given(st.sampled_from(_VALID), st.lists(_mutation, min_size=1, max_size=4))
def test_mutated_valid_messages(frame: bytes, mutations: list[tuple[str, int, int]]) -> None:
    """Valid frames with flipped, inserted or deleted bytes never escape as anything but ProtocolError."""
    _check_decode(_mutate(frame, mutations))


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=50))
def test_text_frames(frame: str) -> None:
    """Every str frame is text_frame."""
    try:
        decode_client_message(frame, LIMITS)
    except ProtocolError as err:
        assert err.code == "text_frame" and err.fatal
    else:
        raise AssertionError("a text frame was accepted")


@FUZZ
@given(st.one_of(st.binary(max_size=300), raw_msgpack))
def test_server_decoder(frame: bytes) -> None:
    """decode_server_message also raises only ProtocolError on garbage."""
    try:
        msg = decode_server_message(frame)
    except ProtocolError as err:
        assert err.code in ERROR_CODES
    else:
        assert isinstance(msg, dict) and isinstance(msg["type"], str)
