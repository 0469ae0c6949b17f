"""Typed, frozen config objects shared by the CLI, TOML files and the Python API.

A field is declared with `option(default, "help with unit", parse=...)`. The same declaration builds
the argparse flag, converts strings from the command line or TOML, and rejects unknown keys.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Mapping
from enum import Enum
from typing import Any, TypeVar

from robustcnn.errors import UsageError

C = TypeVar("C")


def option(default: Any, help: str, parse: Callable[[Any], Any] | None = None, flag: bool = True) -> Any:
    """A config field. `parse` turns user input (a string or TOML value) into the field's type."""
    return dataclasses.field(default=default, metadata={"help": help, "parse": parse, "flag": flag})


def _parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def _typed(parse: Callable[[Any], Any], kind: str) -> Callable[[Any], Any]:
    def convert(value: Any) -> Any:
        if isinstance(value, bool) and parse is not _parse_bool:
            raise ValueError(f"expected {kind}, got {value!r}")
        return parse(value)

    return convert


def _whole(value: Any) -> int | None:
    """The int `value` stands for (3, 3.0, "3"), or None for anything else ("1.5", inf, nan, "many")."""
    try:
        number = int(value)
        return number if number == float(value) else None
    except (ValueError, TypeError, OverflowError):
        return None


def positive_int(value: Any) -> int:
    number = _whole(value)
    if number is None or number <= 0:
        raise ValueError(f"expected a whole number > 0, got {value!r}")
    return number


def non_negative_int(value: Any) -> int:
    number = _whole(value)
    if number is None or number < 0:
        raise ValueError(f"expected a whole number >= 0, got {value!r}")
    return number


def positive_float(value: Any) -> float:
    number = float(value)
    if not number > 0 or number == float("inf"):
        raise ValueError(f"expected a finite number > 0, got {value!r}")
    return number


def non_negative_float(value: Any) -> float:
    number = float(value)
    if not number >= 0 or number == float("inf"):
        raise ValueError(f"expected a finite number >= 0, got {value!r}")
    return number


def enum_parser(enum: type[Enum]) -> Callable[[Any], Enum]:
    def parse(value: Any) -> Enum:
        try:
            return enum(value.value if isinstance(value, Enum) else str(value))
        except ValueError:
            allowed = ", ".join(str(member.value) for member in enum)
            raise ValueError(f"choose one of: {allowed}") from None

    return parse


BOOL = _parse_bool
INT = _typed(positive_int, "a whole number")
COUNT = _typed(non_negative_int, "a whole number")
FLOAT = _typed(positive_float, "a number")


def convert_field(cls: type, name: str, value: Any, where: str = "") -> Any:
    field = {f.name: f for f in dataclasses.fields(cls)}[name]
    parse = field.metadata.get("parse")
    if value is None or parse is None:
        return value
    try:
        return parse(value)
    except UsageError:
        raise
    except (ValueError, TypeError) as error:
        raise UsageError(f"{where}{_flag(name)} {value!r} is not allowed: {error}") from None


def from_mapping(cls: type[C], data: Mapping[str, Any], where: str = "") -> C:
    """Builds `cls` from a dict (TOML, JSON, kwargs); unknown keys are an error listing the known ones."""
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise UsageError(f"{where}unknown option {unknown[0]!r}; known options: {', '.join(known)}")
    return cls(**{name: convert_field(cls, name, value, where) for name, value in data.items()})


def to_dict(config: Any) -> dict[str, Any]:
    """JSON-ready: enums become their values."""
    out = {}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        out[field.name] = value.value if isinstance(value, Enum) else value
    return out


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One flag per field. Defaults stay None so the caller can tell what the user actually typed."""
    for field in dataclasses.fields(cls):
        if not field.metadata.get("flag", True):
            continue
        help_text = field.metadata.get("help", "")
        if field.default is not None and field.default is not False:
            default = field.default.value if isinstance(field.default, Enum) else field.default
            help_text += f" (default: {default})"
        if field.default is False:
            parser.add_argument(_flag(field.name), action="store_true", default=None, help=help_text)
        else:
            parser.add_argument(_flag(field.name), default=None, metavar=field.name.upper(), help=help_text)


def given_arguments(namespace: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The fields the user set on the command line, as raw strings (converted by `from_mapping`)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in vars(namespace).items() if k in names and v is not None}
