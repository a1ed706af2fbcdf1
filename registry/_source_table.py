"""Reading the tables of a registry source: typed getters that record a problem (file, key,
reason) and go on, so that `load_source` reports every problem at once."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypeVar

from registry.errors import SourceProblem

__all__ = ["Problems", "Table"]

E = TypeVar("E", bound=StrEnum)


class Problems:
    """The problems found in a registry source so far, in the order found."""

    def __init__(self) -> None:
        self.items: list[SourceProblem] = []

    def add(self, file: str, key: str, reason: str) -> None:
        self.items.append(SourceProblem(file, key, reason))


class Table:
    """A TOML table being read: typed getters that record problems instead of raising."""

    def __init__(self, problems: Problems, file: str, key: str, data: Any) -> None:
        self.problems = problems
        self.file = file
        self.key = key
        self.ok = isinstance(data, dict)
        self.data: dict[str, Any] = data if isinstance(data, dict) else {}
        self.seen: set[str] = set()
        if not self.ok:
            self.fail(f"must be a table, not {_type_name(data)}")

    def fail(self, reason: str, sub: str | None = None) -> None:
        self.problems.add(self.file, f"{self.key}.{sub}" if sub else self.key, reason)

    def _get(self, name: str, required: bool) -> Any:
        self.seen.add(name)
        if name not in self.data:
            if required:
                self.fail("missing required key", name)
            return None
        return self.data[name]

    def text(self, name: str, *, required: bool = True, default: str = "") -> str:
        value = self._get(name, required)
        if value is None:
            return default
        if not isinstance(value, str) or (required and not value.strip()):
            self.fail(f"must be a non-empty string, not {_type_name(value)}", name)
            return default
        return value

    def integer(
        self, name: str, *, required: bool = True, default: int = 0, minimum: int = 0
    ) -> int:
        value = self._get(name, required)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(f"must be an integer, not {_type_name(value)}", name)
            return default
        if value < minimum:
            self.fail(f"must be at least {minimum}, not {value}", name)
            return default
        return value

    def flag(self, name: str) -> bool:
        """An optional boolean, false when absent."""
        value = self._get(name, False)
        if value is None:
            return False
        if not isinstance(value, bool):
            self.fail(f"must be a boolean, not {_type_name(value)}", name)
            return False
        return value

    def texts(self, name: str, *, required: bool = True) -> tuple[str, ...]:
        value = self._get(name, required)
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.fail("must be a list of strings", name)
            return ()
        duplicates = sorted({v for v in value if value.count(v) > 1})
        if duplicates:
            self.fail(f"lists {', '.join(map(repr, duplicates))} more than once", name)
        return tuple(value)

    def choice(self, name: str, enum: type[E], *, default: E | None = None) -> E | None:
        value = self._get(name, default is None)
        if value is None:
            return default
        try:
            return enum(value)
        except ValueError:
            allowed = ", ".join(repr(m.value) for m in enum)
            self.fail(f"{value!r} is not one of {allowed}", name)
            return default

    def instant(self, name: str) -> datetime | None:
        value = self._get(name, True)
        if value is None:
            return None
        if not isinstance(value, datetime) or value.tzinfo is None:
            self.fail(
                "must be a TOML date-time with a UTC offset, e.g. 2026-01-01T00:00:00+08:00", name
            )
            return None
        return value.astimezone(UTC)

    def table(self, name: str, *, required: bool = True) -> Table:
        value = self._get(name, required)
        return Table(self.problems, self.file, f"{self.key}.{name}", {} if value is None else value)

    def entries(self) -> Iterator[tuple[str, Any]]:
        """Every key of this table, for tables keyed by id."""
        self.seen.update(self.data)
        yield from self.data.items()

    def finish(self) -> None:
        for unknown in sorted(set(self.data) - self.seen):
            self.fail("unknown key", unknown)


def _type_name(value: object) -> str:
    return {
        dict: "a table",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "an integer",
    }.get(type(value), type(value).__name__)
