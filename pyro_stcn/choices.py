"""Picking a component by name, with an error that lists the valid names."""

from typing import TypeVar

T = TypeVar("T")


def choose(options: dict[str, T], name: str, what: str) -> T:
    """``options[name]``, or a ValueError naming ``what`` and the valid names."""
    if name not in options:
        raise ValueError(f"unknown {what} {name!r}; valid: {', '.join(options)}")
    return options[name]
