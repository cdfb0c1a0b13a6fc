"""The user-facing error type (standard library only, so the card contract can import it without torch)."""

from __future__ import annotations


class DistillerError(Exception):
    """A problem the user can fix (bad params, missing or broken input). The CLI prints it as one line, exit 2."""


def first_line(e: BaseException) -> str:
    """An exception's first message line (its type name when the message is empty): errors are printed as one line."""
    return str(e).splitlines()[0] if str(e) else type(e).__name__
