"""A name -> item registry with aliases, tags, fnmatch globs and "did you mean" errors."""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


class UsageError(Exception):
    """A user mistake (unknown name, bad option, malformed file). The CLI prints it on one line, exit 2."""


class UnknownNameError(UsageError, KeyError):
    def __init__(self, kind: str, name: str, candidates: list[str]):
        self.kind, self.name, self.candidates = kind, name, candidates
        close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        super().__init__(f"unknown {kind} {name!r}{hint}")

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


@dataclass
class Entry(Generic[T]):
    name: str
    item: T
    aliases: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    description: str = ""
    plugin: str = ""
    extra: dict = field(default_factory=dict)


class Registry(Generic[T]):
    """Holds what plugins registered. Lookups are by name or alias; a duplicate name is an error."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}
        self._aliases: dict[str, str] = {}

    def add(self, entry: Entry[T]) -> None:
        for key in (entry.name, *entry.aliases):
            owner = self._entries.get(key) or self._entries.get(self._aliases.get(key, ""))
            if owner is not None:
                raise UsageError(
                    f"{self.kind} {key!r} registered twice (by {owner.plugin or '?'} and {entry.plugin or '?'})"
                )
        self._entries[entry.name] = entry
        for alias in entry.aliases:
            self._aliases[alias] = entry.name

    def __contains__(self, name: str) -> bool:
        return name in self._entries or name in self._aliases

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        return list(self._entries)

    def entry(self, name: str) -> Entry[T]:
        key = self._aliases.get(name, name)
        if key not in self._entries:
            raise UnknownNameError(self.kind, name, [*self._entries, *self._aliases])
        return self._entries[key]

    def get(self, name: str) -> T:
        return self.entry(name).item

    def match(self, pattern: str) -> list[str]:
        """Names matching an fnmatch glob (``*`` also crosses ``/``), in registration order."""
        return [n for n in self._entries if fnmatch.fnmatchcase(n, pattern)]

    def tagged(self, tag: str) -> list[str]:
        return [e.name for e in self._entries.values() if tag in e.tags]

    def tags(self) -> set[str]:
        return {t for e in self._entries.values() for t in e.tags}


def is_glob(text: str) -> bool:
    return any(ch in text for ch in "*?[")
