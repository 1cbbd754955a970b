"""Bounded msgpack (un)packing: one frame in, one map of plain values out, or a ProtocolError.

The unpacker is told every length limit up front, so a header claiming a 4 GiB
string fails before anything is allocated; ext types (timestamps included) are
refused; the result is then walked once to bound nesting and check key types.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgpack
from streaming.errors import ErrorCode

from .errors import ProtocolError

_SCALARS = (type(None), bool, int, float, str, bytes)
_WIRE_NAMES = {type(None): "nil", bool: "bool", int: "int", float: "float", str: "str",
               bytes: "bin", list: "array", dict: "map"}


def _refuse_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"msgpack ext type {code} is not allowed")


def _check_structure(obj: Any, depth: int, max_depth: int) -> None:
    """Raise bad_frame if `obj` nests deeper than `max_depth` or holds a non-plain value."""
    if isinstance(obj, _SCALARS):
        return
    if depth >= max_depth:
        raise ProtocolError(ErrorCode.BAD_FRAME, f"message nests deeper than {max_depth} levels")
    if isinstance(obj, list):
        for item in obj:
            _check_structure(item, depth + 1, max_depth)
        return
    if isinstance(obj, dict):
        for key, value in obj.items():
            if not isinstance(key, str):
                raise ProtocolError(ErrorCode.BAD_FRAME, f"map keys must be strings, got {type(key).__name__}")
            _check_structure(value, depth + 1, max_depth)
        return
    raise ProtocolError(ErrorCode.BAD_FRAME, f"unsupported msgpack value of type {type(obj).__name__}")


def unpack_map(
    frame: bytes | bytearray | memoryview,
    *,
    max_bytes: int,
    max_map_keys: int,
    max_array_items: int,
    max_depth: int,
) -> dict[str, Any]:
    """Unpack exactly one msgpack map from `frame`; every failure is a ProtocolError.

    Depth counts containers: the top-level map is depth 1, a map inside it 2.
    """
    if len(frame) > max_bytes:
        raise ProtocolError(
            ErrorCode.FRAME_TOO_LARGE, f"frame of {len(frame)} bytes exceeds max_frame_bytes ({max_bytes})"
        )
    try:
        obj = msgpack.unpackb(
            frame,
            raw=False,
            strict_map_key=True,
            use_list=True,
            ext_hook=_refuse_ext,
            max_str_len=max_bytes,
            max_bin_len=max_bytes,
            max_array_len=max_array_items,
            max_map_len=max_map_keys,
            max_ext_len=0,
        )
    except msgpack.ExtraData:
        raise ProtocolError(ErrorCode.BAD_FRAME, "trailing bytes after the msgpack map") from None
    except UnicodeDecodeError:
        raise ProtocolError(ErrorCode.BAD_FRAME, "a msgpack str is not valid UTF-8") from None
    except Exception as exc:  # noqa: BLE001 - untrusted input: any unpack failure is bad_frame
        raise ProtocolError(
            ErrorCode.BAD_FRAME, f"not a valid msgpack message: {str(exc) or type(exc).__name__}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(ErrorCode.BAD_FRAME, f"expected a msgpack map, got {wire_type(obj)}")
    _check_structure(obj, 0, max_depth)
    return obj


def pack(msg: Mapping[str, Any]) -> bytes:
    """Pack one message map; str stays str and bytes become msgpack bin."""
    return msgpack.packb(dict(msg), use_bin_type=True)


def wire_type(value: Any) -> str:
    """The msgpack name of a decoded value's type, for error messages."""
    return _WIRE_NAMES.get(type(value), type(value).__name__)


def json_type(value: Any) -> str:
    """The JSON name of a decoded value's type, for error messages (the HTTP API, Wyoming)."""
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)
