"""Errors that the CLI turns into exit codes.

`InputError` is bad input from the user (exit 2, one line on stderr); anything else is ours
(exit 1). Messages name the file and the problem: ``"<file>: <what is wrong>"``.
"""
from __future__ import annotations

from pathlib import Path


class InputError(ValueError):
    """The input is missing, malformed or unsupported; the message is one line for the user."""

    def __init__(self, message: str, path: str | Path | None = None):
        text = " ".join(str(message).split())  # one line, always
        if path is not None:
            text = f"{path}: {text}"
        super().__init__(text)
        self.path = None if path is None else str(path)


def error_summary(error: BaseException) -> str:
    """One line naming an exception: "ClassName: its first non-blank line", or "ClassName" alone."""
    first = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
    return f"{error.__class__.__name__}: {first}" if first else error.__class__.__name__


class InputWarning(UserWarning):
    """Something about the input deserves attention but does not stop the read."""
