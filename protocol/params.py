"""The `params` map of speak/start → `SamplingParams` and `StreamPolicy`.

Types are checked here (so every message says `params.<key>: expected ...`);
ranges are checked by the dataclasses themselves, whose `ConfigError` is
renamed from the dataclass field to the wire key.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from streaming.errors import ConfigError, ErrorCode
from streaming.params import SamplingParams, StreamPolicy

from .errors import ProtocolError
from .wire import wire_type

# wire key -> (dataclass, dataclass field, accepted kind)
_SAMPLING = SamplingParams
_POLICY = StreamPolicy
PARAM_KEYS: dict[str, tuple[type, str, str]] = {
    "text_temp": (_SAMPLING, "text_temp", "number"),
    "waveform_temp": (_SAMPLING, "coarse_temp", "number"),
    "fine_temp": (_SAMPLING, "fine_temp", "number_or_nil"),
    "top_k": (_SAMPLING, "top_k", "int_or_nil"),
    "top_p": (_SAMPLING, "top_p", "number_or_nil"),
    "min_eos_p": (_SAMPLING, "min_eos_p", "number"),
    "seed": (_SAMPLING, "seed", "int_or_nil"),
    "max_semantic_tokens": (_SAMPLING, "max_semantic_tokens", "int_or_nil"),
    "greedy": (_SAMPLING, "greedy", "bool"),
    "lookahead": (_POLICY, "lookahead", "str"),
    "max_lookahead": (_POLICY, "max_lookahead", "int"),
    "fine_policy": (_POLICY, "fine", "str"),
    "fine_right_context": (_POLICY, "fine_right_context", "int"),
    "fine_window": (_POLICY, "fine_window", "int"),
}
_WIRE_KEY = {(cls, field): key for key, (cls, field, _) in PARAM_KEYS.items()}

_EXPECTED = {
    "number": "a number",
    "number_or_nil": "a number or nil",
    "int": "an integer",
    "int_or_nil": "an integer or nil",
    "bool": "true or false",
    "str": "a string",
}


def _coerce(key: str, value: Any, kind: str) -> Any:
    """Check `value` against `kind`; return it (ints become floats for number kinds)."""
    if value is None and kind.endswith("_or_nil"):
        return None
    base = kind.removesuffix("_or_nil")
    ok = {
        "number": isinstance(value, (int, float)) and not isinstance(value, bool),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "bool": isinstance(value, bool),
        "str": isinstance(value, str),
    }[base]
    if not ok:
        raise ProtocolError(ErrorCode.BAD_FIELD, f"params.{key}: expected {_EXPECTED[kind]}, got {wire_type(value)}",
                            field=f"params.{key}")
    return float(value) if base == "number" else value


def _build(cls: type, kwargs: dict[str, Any]) -> Any:
    """Construct `cls`, turning its ConfigError into bad_field naming `params.<wire key>`."""
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        key = _WIRE_KEY.get((cls, exc.field or ""))
        if key is None:
            raise ProtocolError(ErrorCode.BAD_FIELD, f"params: {exc}") from None
        message = str(exc)
        problem = message[len(exc.field) + 1:] if message.startswith(f"{exc.field}:") else f" {message}"
        raise ProtocolError(ErrorCode.BAD_FIELD, f"params.{key}:{problem}", field=f"params.{key}") from None


def parse_params(raw: Any) -> tuple[SamplingParams, StreamPolicy]:
    """Validate a wire `params` value (a map, nil or absent) into the two dataclasses."""
    if raw is None:
        return SamplingParams(), StreamPolicy()
    if not isinstance(raw, Mapping):
        raise ProtocolError(ErrorCode.BAD_FIELD, f"params: expected a map, got {wire_type(raw)}")
    sampling: dict[str, Any] = {}
    policy: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in PARAM_KEYS:
            raise ProtocolError(
                ErrorCode.UNKNOWN_FIELD, f"params.{key[:40]}: unknown parameter (valid: {', '.join(PARAM_KEYS)})"
            )
        cls, field, kind = PARAM_KEYS[key]
        target = sampling if cls is _SAMPLING else policy
        target[field] = _coerce(key, value, kind)
    return _build(SamplingParams, sampling), _build(StreamPolicy, policy)
