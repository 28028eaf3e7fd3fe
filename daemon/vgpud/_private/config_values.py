"""What holds for every config value and for the file itself, whatever the key: the loader's first line of defence.

Each value is checked against its field's type, then against rules no key may break (finite numbers, integers
within 64 bits, bounded strings and lists); per-key ranges follow in each table's validator, which can then
count on sane values. The file is read with a size cap and UTF-8 and nesting checks, so that a broken or
hostile file ends in one line, never a traceback.
"""

from __future__ import annotations

import math
import tomllib
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, Literal

MAX_FILE_BYTES: Final = 1024 * 1024
"""A config file is a few KiB; one above 1 MiB is the wrong file (a log, a binary, /dev/zero)."""
MAX_INT: Final = 2**63 - 1
"""Every integer must fit in int64: etcd, protobuf and Prometheus all stop there."""
MAX_TEXT: Final = 4096
"""Longest string value: PATH_MAX on Linux; names and specs are far shorter."""
MAX_ITEMS: Final = 1000
"""Most items in a list value (etcd endpoints, admin groups)."""
MAX_PORT: Final = 65535


class ConfigError(Exception):
    """The configuration cannot be used; the message is one line saying what to change."""


def read_toml(path: Path) -> dict[str, Any]:
    """The TOML document at `path`; ConfigError (one line, naming the file) for anything unusable."""
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_FILE_BYTES // 1024 // 1024} MiB; a vgpud config holds a few KiB")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}: not UTF-8 text (line {line}, byte {exc.start + 1}); save it as UTF-8") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid TOML: arrays or inline tables nested too deeply") from None
    except ValueError as exc:  # int() refuses a number of thousands of digits before TOML rules apply
        raise ConfigError(f"{path}: not valid TOML: {str(exc).partition(';')[0]}") from None


def is_optional(hint: Any) -> bool:
    """Whether `hint` is `X | None`."""
    return typing.get_origin(hint) in (types.UnionType, typing.Union)


def non_none(hint: Any) -> Any:
    """X from `X | None`."""
    (inner,) = [a for a in typing.get_args(hint) if a is not type(None)]
    return inner


_SCALARS: dict[Any, tuple[str, Callable[[object], bool], Callable[[Any], object]]] = {
    # type: (how it reads in an error, accepts?, convert)
    str: ("a string", lambda v: isinstance(v, str), str),
    int: ("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool), int),
    float: ("a number", lambda v: isinstance(v, int | float) and not isinstance(v, bool), float),
    bool: ("true or false", lambda v: isinstance(v, bool), bool),
    Path: ("a path (string)", lambda v: isinstance(v, Path) or (isinstance(v, str) and v != ""), Path),
}


def _describe(hint: Any) -> str:
    """How a type reads in an error message."""
    if is_optional(hint):
        return _describe(non_none(hint))
    if typing.get_origin(hint) is Literal:
        return "one of " + ", ".join(repr(v) for v in typing.get_args(hint))
    if typing.get_origin(hint) is tuple:
        return "a list of strings"
    return _SCALARS[hint][0]


def _accepts(hint: Any, value: object) -> bool:
    if typing.get_origin(hint) is Literal:
        return isinstance(value, str) and value.lower() in typing.get_args(hint)
    if typing.get_origin(hint) is tuple:
        return isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)
    return _SCALARS[hint][1](value)


def convert(key: str, value: object, hint: Any, origin: str) -> object:
    """`value` as the field type `hint`; ConfigError naming key, what was expected and origin otherwise."""
    if is_optional(hint):
        if value is None:
            return None
        hint = non_none(hint)
    if isinstance(value, int) and not isinstance(value, bool) and not -MAX_INT - 1 <= value <= MAX_INT:
        raise ConfigError(f"{origin}: {key}: expected an integer that fits in 64 bits, got {brief(value)}")
    if not _accepts(hint, value):
        got = f"{type(value).__name__} {value!r}"[:200]
        raise ConfigError(f"{origin}: {key}: expected {_describe(hint)}, got {got}")
    if typing.get_origin(hint) is Literal:
        return str(value).lower()
    converted = tuple(value) if isinstance(value, list | tuple) else _SCALARS[hint][2](value)
    problem = _problem(converted)
    if problem:
        raise ConfigError(f"{origin}: {key}: {problem}")
    return converted


def _problem(value: object) -> str:
    """Why a converted value breaks a rule for every key ("" when it does not)."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"expected a finite number, got {value}"
    if isinstance(value, str | Path) and len(str(value)) > MAX_TEXT:
        return f"{len(str(value))} characters is longer than {MAX_TEXT}"
    if isinstance(value, tuple):
        if len(value) > MAX_ITEMS:
            return f"{len(value)} items is more than {MAX_ITEMS}"
        longest = max((len(item) for item in value), default=0)
        if longest > MAX_TEXT:
            return f"an item of {longest} characters is longer than {MAX_TEXT}"
    return ""


def brief(number: int) -> str:
    """An integer for a one-line message: its digits while short, its size in bits beyond."""
    if abs(number) < 10**24:
        return str(number)
    return f"an integer of {number.bit_length()} bits"


def endpoint_problem(text: str, schemes: tuple[str, ...]) -> str:
    """Why `text` is not [scheme://]HOST:PORT; "" when it is fine."""
    rest = text
    if "://" in text:
        scheme, _, rest = text.partition("://")
        if scheme not in schemes:
            return f"scheme {scheme!r} is not supported" if schemes else "no scheme expected"
    host, sep, port = rest.rstrip("/").rpartition(":")
    if not sep or not host or host == "[]":
        return "missing HOST or PORT"
    if host.startswith("[") != host.endswith("]") or (":" in host and not host.startswith("[")):
        return "IPv6 addresses need brackets, e.g. [::1]:2379"
    if not (port.isascii() and port.isdigit() and 1 <= int(port) <= MAX_PORT):
        return f"port {port!r} is not 1 to {MAX_PORT}"
    return ""
