"""Option declarations, and the sources `python -m server` reads them from: flags, BARK_* variables, a TOML file.

An option is declared once, on its `ServerConfig` field (server/config.py):

    max_streams: int = opt(8, "streams the engine computes at once", LIMITS_ENGINE, min=1)

The field gives the name, the type (its annotation) and the default; `opt` adds the help line, the group, the
unit, the valid range or choices and, where they differ from the name, the flags. From that this module
builds the argparse parser, reads the environment (`BARK_MAX_STREAMS`) and the `--config` file (one table per
group: `[limits.engine] max_streams = 4`), converts and checks each value (an error names the flag, the
variable or the file and key, and the valid values) and prints defaults in human units (`1 MiB/s`, `30 s`,
`off`). Precedence: command line > environment > config file > default.

This module imports nothing from `server`, so `server.config` stays importable on its own.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import math
import re
import sys
import types
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streaming.errors import ConfigError

# units: how --help prints a default (the value itself is always a plain number of the unit)
SECONDS = "s"
BYTES = "bytes"
BYTES_PER_S = "bytes/s"
PER_S = "/s"
HZ = "Hz"

ENV_PREFIX = "BARK_"
NONE_WORDS = ("off", "none")  # how an optional option is turned off from a flag, a variable or the file
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
NO_CONST: Any = type("NoConst", (), {"__repr__": lambda self: "NO_CONST"})()  # a flag that needs its value


@dataclass(frozen=True)
class Group:
    """A heading of --help and a table of the config file."""

    key: str  # the TOML table: "limits.engine"
    title: str  # the --help heading: "limits: engine"
    about: str  # one line under the heading


@dataclass(frozen=True)
class Option:
    """One option: what `opt()` declares, plus (once bound to its field) its key, kind and default."""

    help: str
    group: Group
    flags: tuple[str, ...] = ()  # () = --<key with dashes>; the first one names the option in errors
    unit: str | None = None  # SECONDS, BYTES, BYTES_PER_S, PER_S, HZ: how --help prints values
    min: float | None = None  # inclusive
    max: float | None = None  # inclusive
    above: float | None = None  # exclusive lower bound (a number > 0: above=0)
    choices: tuple[Any, ...] = ()
    none: str | None = None  # None is allowed, and this is what it means ("off", "no cap", ...)
    zero_is_none: bool = False  # 0 given from a source means None ("0 = off")
    metavar: str | None = None
    default_text: str | None = None  # the default as --help prints it, when the value alone says too little
    const: Any = NO_CONST  # the value of the flag given without an argument (nargs="?")
    text: Callable[[str], Any] | None = None  # a flag's or variable's string -> value; ValueError says why not
    toml: Callable[[Any], Any] | None = None  # a TOML value -> value; ValueError says why not
    dump: Callable[[Any], Any] | None = None  # value -> a TOML value (for --print-config)
    check: Callable[[Any], str | None] | None = None  # what is wrong with a value beyond its type and range
    expects: str | None = None  # the valid values, in words, for a kind this module does not know
    many: bool = False  # a flag given once per item (--voice-alias A=B --voice-alias C=D); lists always are
    blank: bool = False  # the empty string is a valid value (of a str option)
    secret: bool = False  # never a flag, a variable or a file key, never printed (API keys)
    env: str | None = ""  # "" = BARK_<KEY>; None = no variable
    in_file: bool = True  # may be set in the config file
    parts: tuple[tuple[str, Option], ...] = ()  # a field holding a dataclass: one option per exposed field of it
    # set by bind()
    key: str = ""
    kind: str = ""  # int, float, str, bool, path, strings, custom, composite
    default: Any = None
    path: tuple[str, ...] = ()  # where ServerConfig holds it: ("max_streams",), ("limits", "max_text_chars"); () = no field

    # --- names

    @property
    def names(self) -> tuple[str, ...]:
        return self.flags or ("--" + self.key.replace("_", "-"),)

    @property
    def flag(self) -> str:
        return self.names[0]

    @property
    def env_name(self) -> str | None:
        if self.secret or self.env is None:
            return None
        return self.env or ENV_PREFIX + self.key.upper()

    @property
    def repeat(self) -> bool:
        """Given once per value on the command line (--trusted-proxy A --trusted-proxy B)."""
        return self.kind == "strings" or self.many

    # --- checking

    def expectation(self) -> str:
        """The valid values, in words: 'an integer >= 1', 'one of process, thread', ... ('or off' when optional)."""
        if self.choices:
            words = "one of " + ", ".join(map(str, self.choices))
        elif self.kind in ("int", "float"):
            words = ("an integer" if self.kind == "int" else "a number") + self._range()
        else:
            words = self.expects or {"str": "a non-empty string", "path": "a path", "bool": "true or false",
                                     "strings": "a list of non-empty strings without surrounding spaces"
                                     }.get(self.kind, "a valid value")
        if self.none is not None:
            words += " (or off" + (", or 0" if self.zero_is_none else "") + f": {self.none})"
        return words

    def _range(self) -> str:
        low = self.min if self.min is not None else self.above
        if low is not None and self.max is not None:
            return f" in {_number(low)}..{_number(self.max)}"
        if self.above is not None:
            return f" > {_number(self.above)}"
        if self.min is not None:
            return f" >= {_number(self.min)}"
        return f" <= {_number(self.max)}" if self.max is not None else ""

    def problem(self, value: Any) -> str | None:
        """What is wrong with `value` (as ServerConfig holds it), in words naming the valid values; None if fine."""
        if value is None:
            return None if self.none is not None else f"expected {self.expectation()}, got None"
        got = "" if self.secret else f", got {value!r:.200}"
        if not (_has_kind(self.kind, value) or (self.blank and value == "")):
            return f"expected {self.expectation()}{got}"
        if self.choices and value not in self.choices:
            return f"{value!r} is not one of {', '.join(map(str, self.choices))}"
        if self.kind in ("int", "float") and not (
                (self.min is None or value >= self.min) and (self.max is None or value <= self.max)
                and (self.above is None or value > self.above)):
            return f"expected {self.expectation()}{got}"
        return self.check(value) if self.check is not None else None

    # --- reading

    def from_text(self, text: str) -> Any:
        """The value of a flag's or a variable's string; ValueError saying what is expected."""
        if self.none is not None and text.strip().lower() in NONE_WORDS:
            return None
        if self.text is not None:
            value = self.text(text)  # its ValueError says what it expects
        else:
            try:
                value = _from_text(self.kind, text)
            except ValueError:
                raise ValueError(f"expected {self.expectation()}, got {text!r}") from None
        return None if self.zero_is_none and value == 0 else value

    def from_toml(self, value: Any) -> Any:
        """The value of a TOML value (typed: 8 is an integer, "8" a string); ValueError saying what is expected."""
        if self.none is not None and isinstance(value, str) and value.strip().lower() in NONE_WORDS:
            return None
        if self.toml is not None:
            return self.toml(value)
        if self.kind == "float" and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif self.kind == "path" and isinstance(value, str):
            value = Path(value)
        elif self.kind == "strings" and isinstance(value, list):
            value = tuple(value)
        elif self.kind == "strings" and isinstance(value, str):
            value = (value,)
        if not (_has_kind(self.kind, value) or (self.blank and value == "")):
            raise ValueError(f"expected {self.expectation()}, got {value!r:.200}")
        return None if self.zero_is_none and value == 0 else value

    # --- showing

    def show(self, value: Any) -> str:
        """`value` in human units: '1 MiB/s', '30 s', 'off', '24000 Hz'."""
        if value is None:
            return self.none or "off"
        if self.kind == "bool":
            return "on" if value else "off"
        if self.kind == "strings":
            return ", ".join(value) if value else "none"
        if isinstance(value, (int, float)):
            return _human(value, self.unit)
        return str(value)

    def help_line(self) -> str:
        default = self.default_text if self.default_text is not None else self.show(self.default)
        key = "" if self.flag == "--" + self.key.replace("_", "-") else f" [key: {self.key}]"
        zero = f"; 0 = {self.none}" if self.zero_is_none else ""
        return f"{self.help}{zero} (default: {default}){key}".replace("%", "%%")

    def bound(self, key: str, hint: Any, default: Any, path: tuple[str, ...]) -> Option:
        """This declaration completed with its field's name, annotation and default."""
        kind, optional = _kind_of(hint)
        if optional != (self.none is not None):
            raise TypeError(f"{key}: declare none=... exactly when the annotation allows None ({hint})")
        if self.parts:
            part_hints = typing.get_type_hints(type(default))
            parts = tuple((name, part.bound(name, part_hints[name], getattr(default, name), (*path, name)))
                          for name, part in self.parts)
            return dataclasses.replace(self, key=key, kind="composite", default=default, path=path, parts=parts)
        return dataclasses.replace(self, key=key, kind=kind, default=default, path=path)


def opt(default: Any = dataclasses.MISSING, help: str = "", group: Group | None = None, *,  # noqa: A002
        factory: Callable[[], Any] | None = None, **declaration: Any) -> Any:
    """A dataclass field whose metadata declares its option (see `Option` for the keywords)."""
    if group is None:
        raise TypeError("opt(): every option needs a group")
    metadata = {"option": Option(help=help, group=group, **declaration)}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def source(key: str, kind: str, default: Any, help: str, group: Group, **declaration: Any) -> Option:  # noqa: A002
    """An option that is no field: where other values come from (--config, --api-key-file, ...)."""
    return Option(help=help, group=group, key=key, kind=kind, default=default, **declaration)


def declared(cls: type, extra: Iterable[Option] = ()) -> tuple[Option, ...]:
    """The options of dataclass `cls`, one per field, in declaration order, then `extra`; TypeError for a field
    without a declaration."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        declaration = f.metadata.get("option")
        if not isinstance(declaration, Option):
            raise TypeError(f"{cls.__name__}.{f.name}: no option declaration (use opt(...))")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        out.append(declaration.bound(f.name, hints[f.name], default, (f.name,)))
    return (*out, *extra)


def leaves(options: Iterable[Option]) -> Iterator[Option]:
    """Every option a source can set: composites replaced by their parts."""
    for o in options:
        if o.kind == "composite":
            yield from (part for _, part in o.parts)
        else:
            yield o


def check_fields(obj: object, options: Iterable[Option]) -> None:
    """ConfigError naming the first field of `obj` whose value its declaration refuses, and the valid values."""
    for o in options:
        if not o.path:
            continue
        value = getattr(obj, o.key)
        if o.kind == "composite":
            if not isinstance(value, type(o.default)):
                raise ConfigError(f"{o.key}: expected a {type(o.default).__module__}.{type(o.default).__name__}, "
                                  f"got {type(value).__name__}", field=o.key)
            continue
        problem = o.problem(value)
        if problem is not None:
            raise ConfigError(f"{o.key}: {problem}", field=o.key)


def group_values(obj: object, options: Iterable[Option], group: str) -> dict[str, Any]:
    """key -> value of the options of one group (by its table name), secrets left out."""
    chosen = [o for o in leaves(options) if o.group.key == group and o.path and not o.secret]
    if not chosen:
        known = sorted({o.group.key for o in leaves(options)})
        raise KeyError(f"no option group {group!r}; the groups are {', '.join(known)}")
    return {o.key: _get(obj, o.path) for o in chosen}


def _get(obj: object, path: tuple[str, ...]) -> Any:
    for name in path:
        obj = getattr(obj, name)
    return obj


# --- the command line -------------------------------------------------------------------------------------------


class _Switch(argparse.Action):
    """--flag sets True, --no-flag (made from the first flag) False."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__([*option_strings, "--no-" + option_strings[0].removeprefix("--")], dest, nargs=0, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        setattr(namespace, self.dest, not (option_string or "").startswith("--no-"))


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32)


def build_parser(options: Sequence[Option], groups: Sequence[Group], *, prog: str, description: str,
                 epilog: str) -> argparse.ArgumentParser:
    """The parser of every non-secret option. Every default is SUPPRESS: the namespace holds only what was
    given, so that the environment and the file can fill the rest (see `read_sources`)."""
    parser = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog, formatter_class=_Formatter,
                                     usage="%(prog)s [--config FILE.toml] [OPTION ...]")
    sections = {g: parser.add_argument_group(g.title, f"{g.about}; config file table [{g.key}]") for g in groups}
    for o in leaves(options):
        if o.secret:
            continue
        kwargs: dict[str, Any] = {"dest": o.key, "default": argparse.SUPPRESS, "help": o.help_line()}
        if o.kind == "bool":
            kwargs["action"] = _Switch
        else:
            kwargs["metavar"] = o.metavar or _metavar(o)
            if o.repeat:
                kwargs["action"] = "append"
            elif o.const is not NO_CONST:
                kwargs.update(nargs="?", const=o.const)
        sections[o.group].add_argument(*o.names, **kwargs)
    sections[groups[-1]].add_argument("--print-config", action="store_true",
                                      help="print the configuration these options give as a config file, "
                                           "API keys left out, and exit")
    return parser


def _metavar(o: Option) -> str:
    if o.choices:
        return "{" + ",".join(map(str, o.choices)) + "}"
    return {SECONDS: "SECONDS", BYTES: "BYTES", BYTES_PER_S: "BYTES", HZ: "HZ"}.get(o.unit or "") or {
        "int": "N", "float": "N", "path": "PATH"}.get(o.kind) or o.key.upper()


# --- reading the sources ----------------------------------------------------------------------------------------


def read_sources(options: Sequence[Option], groups: Sequence[Group], given: Mapping[str, Any],
                 environ: Mapping[str, str], *, config_key: str = "config") -> dict[str, Any]:
    """key -> value of every option some source sets: `given` (the parsed flags; SUPPRESS leaves the others out),
    else `environ` (BARK_<KEY>; empty counts as unset), else the TOML file named by option `config_key`.
    ConfigError names the flag, the variable or the file and key, and the valid values."""
    flat = [o for o in leaves(options) if not o.secret]
    file_values: dict[str, Any] = {}
    config = next(o for o in flat if o.key == config_key)
    path = _one(config, given, environ)
    if path is not None:
        file_values = read_toml(Path(path), flat, groups)
    values: dict[str, Any] = {}
    for o in flat:
        if o.key in given:
            raw = given[o.key]
            if isinstance(raw, list):  # a repeated flag: its values, as a variable lists them
                raw = ",".join(raw)
            values[o.key] = _convert(o, raw, o.flag)
        elif o.env_name and environ.get(o.env_name):
            values[o.key] = _convert(o, environ[o.env_name], f"environment variable {o.env_name}")
        elif o.key in file_values:
            values[o.key] = file_values[o.key]
    return values


def _one(o: Option, given: Mapping[str, Any], environ: Mapping[str, str]) -> Any:
    if o.key in given:
        return _convert(o, given[o.key], o.flag)
    if o.env_name and environ.get(o.env_name):
        return _convert(o, environ[o.env_name], f"environment variable {o.env_name}")
    return None


def _convert(o: Option, raw: Any, label: str) -> Any:
    try:
        value = raw if isinstance(raw, bool) and o.kind == "bool" else o.from_text(raw)
    except ValueError as exc:
        raise ConfigError(f"{label}: {exc}", field=o.key) from None
    problem = o.problem(value)
    if problem is not None:
        raise ConfigError(f"{label}: {problem}", field=o.key)
    return value


def field_values(options: Sequence[Option], values: Mapping[str, Any]) -> dict[str, Any]:
    """ServerConfig keyword arguments from `read_sources`' values: options that are no field left out, each
    composite built from its given parts (the rest at their defaults)."""
    kwargs: dict[str, Any] = {}
    for o in options:
        if not o.path:
            continue
        if o.kind == "composite":
            given = {name: values[part.key] for name, part in o.parts if part.key in values}
            if given:
                kwargs[o.key] = _compose(o, given)
        elif o.key in values:
            kwargs[o.key] = values[o.key]
    return kwargs


def _compose(o: Option, given: dict[str, Any]) -> Any:
    try:
        return dataclasses.replace(o.default, **given)
    except ConfigError as exc:  # a check across parts (max_text_chars <= max_request_chars): name the flag
        part = dict(o.parts).get(exc.field or "")
        if part is None:
            raise
        message = re.sub(rf"^{type(o.default).__name__}\.{part.key}", part.flag, str(exc))
        raise ConfigError(message, field=part.key) from None


# --- the config file --------------------------------------------------------------------------------------------


def read_toml(path: Path, options: Sequence[Option], groups: Sequence[Group]) -> dict[str, Any]:
    """key -> value of every option the TOML file sets, one table per group; ConfigError naming the file and the
    key for an unknown table or key, a key in the wrong table, or a bad value (with the valid values)."""
    try:
        import tomllib
    except ModuleNotFoundError:
        raise ConfigError(f"--config {path}: reading a TOML file needs Python 3.11 or newer (the standard "
                          f"library's tomllib); this is Python {sys.version_info[0]}.{sys.version_info[1]}. Use "
                          "flags or BARK_* environment variables instead", field="config") from None
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"--config: cannot read {path}: {exc.strerror or exc}", field="config") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not a valid TOML file: {exc}", field="config") from None
    by_key = {o.key: o for o in options}
    tables = {g.key for g in groups}
    values: dict[str, Any] = {}
    for table, content in _tables(path, data, tables, by_key):
        for key, raw in content.items():
            o = by_key.get(key)
            where = f"{path}: [{table}] {key}"
            if o is None or not o.in_file:
                if key == "api_keys":
                    raise ConfigError(f"{where}: API keys are never read from the config file; name a file of "
                                      "keys with api_key_file, or a variable with api_key_env", field=key)
                own = sorted(k for k, x in by_key.items() if x.group.key == table and x.in_file)
                close = difflib.get_close_matches(key, own, n=1)
                hint = f"did you mean {close[0]}? " if close else ""
                raise ConfigError(f"{where}: unknown key; {hint}the keys of [{table}] are {', '.join(own)}",
                                  field=key)
            if o.group.key != table:
                raise ConfigError(f"{where}: belongs in table [{o.group.key}]", field=key)
            try:
                value = o.from_toml(raw)
            except ValueError as exc:
                raise ConfigError(f"{where}: {exc}", field=key) from None
            problem = o.problem(value)
            if problem is not None:
                raise ConfigError(f"{where}: {problem}", field=key)
            values[key] = value
    return values


def _tables(path: Path, data: dict[str, Any], tables: set[str],
            by_key: Mapping[str, Option]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(table name, its content) of every group table in `data`; ConfigError for anything else."""
    prefixes = {t.rsplit(".", i)[0] for t in tables for i in range(1, t.count(".") + 1)}

    def walk(prefix: str, content: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
        for name, value in content.items():
            table = f"{prefix}.{name}" if prefix else name
            if table in tables and isinstance(value, dict):
                yield table, value
            elif table in prefixes and isinstance(value, dict):
                yield from walk(table, value)
            elif name in by_key:
                home = by_key[name].group.key
                raise ConfigError(f"{path}: {name} belongs in table [{home}], not "
                                  f"{f'[{prefix}]' if prefix else 'at the top level'}", field=name)
            else:
                raise ConfigError(f"{path}: unknown {'table' if isinstance(value, dict) else 'key'} {table!r}; "
                                  f"the tables are {', '.join(f'[{t}]' for t in sorted(tables))}")

    yield from walk("", data)


def dump_toml(obj: object, options: Sequence[Option], groups: Sequence[Group], extra: Mapping[str, Any]) -> str:
    """A config file that gives `obj`'s values (and the options-that-are-no-field in `extra`); secrets left out.
    A None that is also the default is written as a comment, other None as "off"."""
    lines = [f"# python -m server --config FILE.toml; precedence: flags > {ENV_PREFIX}* variables > this file"]
    flat = list(leaves(options))
    for g in groups:
        lines += ["", f"[{g.key}]  # {g.title}: {g.about}"]
        for o in flat:
            if o.group != g or o.secret or not o.in_file:
                continue
            if o.path:
                value = _get(obj, o.path)
            elif o.key in extra and extra[o.key] is not None:
                value = extra[o.key]
            else:
                lines.append(f"# {o.key}: not set ({o.show(o.default)})")
                continue
            if value is None and o.default is None:
                lines.append(f"# {o.key}: not set ({o.none})")
                continue
            value = "off" if value is None else (o.dump(value) if o.dump is not None else value)
            lines.append(f"{o.key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (str, Path)):
        return json.dumps(str(value))  # JSON's escapes are TOML's
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k if _BARE_KEY.fullmatch(k) else json.dumps(k)} = {_toml_value(v)}"
                               for k, v in value.items()) + "}"
    raise TypeError(f"no TOML for {value!r}")


# --- kinds and units --------------------------------------------------------------------------------------------


def _kind_of(hint: Any) -> tuple[str, bool]:
    """(kind, None allowed) of a field annotation."""
    optional = False
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in typing.get_args(hint):
        optional = True
        rest = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = rest[0] if len(rest) == 1 else hint
    if hint in (bool, int, float, str):
        return hint.__name__, optional
    if hint is Path:
        return "path", optional
    if typing.get_origin(hint) is tuple and typing.get_args(hint) == (str, Ellipsis):
        return "strings", optional
    return "custom", optional


def _from_text(kind: str, text: str) -> Any:
    if kind == "int":
        return int(text)
    if kind == "float":
        return float(text)
    if kind == "bool":
        if text.strip().lower() not in _TRUE + _FALSE:
            raise ValueError(text)
        return text.strip().lower() in _TRUE
    if kind == "path":
        return Path(text)
    if kind == "strings":
        return tuple(item.strip() for item in text.split(",") if item.strip())
    return text


def _has_kind(kind: str, value: Any) -> bool:
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if kind == "str":
        return isinstance(value, str) and bool(value)
    if kind == "path":
        return isinstance(value, (str, Path)) and bool(str(value))
    if kind == "strings":
        return isinstance(value, tuple) and all(isinstance(v, str) and v and v == v.strip() for v in value)
    return True  # custom kinds are checked by their declaration's check


def _number(value: float) -> str:
    value = float(value)
    return str(int(value)) if value.is_integer() else f"{value:.12g}"


def _human(value: float, unit: str | None) -> str:
    if unit in (BYTES, BYTES_PER_S):
        per = "/s" if unit == BYTES_PER_S else ""
        for name, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
            if value >= size and (value * 100 / size).is_integer():
                return f"{_number(value / size)} {name}{per}"
        return f"{_number(value)} bytes{per}"
    if unit == PER_S:
        return f"{_number(value)}/s"
    if unit in (SECONDS, HZ):
        return f"{_number(value)} {unit}"
    return _number(value)
