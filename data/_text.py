"""Turning an exception from a library (pickle, urllib, torchvision) into the short reason that
goes inside one of our one-line DataError messages."""

from __future__ import annotations

__all__ = ["one_line"]


def one_line(exc: BaseException) -> str:
    """``'Type: first line of the message'``, or just the type name when there is no message."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
