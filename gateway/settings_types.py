"""The parts settings are declared with (``gateway.settings`` declares them): a ``Setting``
knows its variable's name, type, default and meaning, and reads and checks its value."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class ConfigError(ValueError):
    """A setting has a value Tether cannot use; the message is one line naming the variable."""


def on_off(value: str) -> bool:
    choice = value.strip().lower()
    if choice not in ("on", "off"):
        raise ValueError("must be on or off")
    return choice == "on"


def flag(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


def comma_list(value: str) -> list[str]:
    return [entry.strip() for entry in value.split(",") if entry.strip()]


def path_list(value: str) -> list[str]:
    return [entry.strip() for entry in re.split(r"[:,]", value) if entry.strip()]


def positive_int(value: str) -> int:
    return max(1, int(value))


def positive_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ValueError("must be a number") from None
    if not number > 0 or number == float("inf"):
        raise ValueError("must be more than 0")
    return number


def non_negative_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise ValueError("must be a whole number") from None
    if number < 0:
        raise ValueError("must be 0 or more")
    return number


def text(value: str) -> str:
    return value


@dataclass(frozen=True)
class Setting(Generic[T_co]):
    """One variable. ``default`` is the value when unset or empty; ``shown_default`` is how the
    table describes it when the value is computed at start (a generated key, a data dir path)."""

    name: str
    kind: str
    default: T_co
    meaning: str
    parse: Callable[[str], T_co]
    shown_default: str | None = None
    secret: bool = False
    read_by: str = "gateway.config"

    def read(self, env: Mapping[str, str]) -> T_co:
        raw = env.get(self.name, "")
        if not raw.strip():
            return self.default
        try:
            return self.parse(raw)
        except ValueError as exc:
            shown = "(hidden)" if self.secret else repr(raw)
            raise ConfigError(f"{self.name}={shown}: {exc or 'not a valid ' + self.kind}") from None

    def describe_default(self) -> str:
        if self.shown_default is not None:
            return self.shown_default
        if self.default is None or self.default == []:
            return "unset"
        if isinstance(self.default, bool):
            return "on" if self.default else "off"
        if isinstance(self.default, float):
            return f"`{self.default:g}`"
        return f"`{self.default}`"


@dataclass(frozen=True)
class Group:
    title: str
    settings: tuple[Setting[object], ...]


def declare(
    name: str,
    kind: str,
    default: T,
    meaning: str,
    parse: Callable[[str], T],
    shown: str | None = None,
    secret: bool = False,
    read_by: str = "gateway.config",
) -> Setting[T]:
    return Setting(name, kind, default, meaning, parse, shown, secret, read_by)
