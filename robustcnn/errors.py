"""Errors a user can fix, and the exit codes the command-line tools use for them."""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1  # the work ran but failed: a gate not met, a non-finite loss
EXIT_USAGE = 2  # bad input: fix the command line, a file or a path
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT


class UsageError(ValueError):
    """Bad user input. The message is one line naming the bad value and what is allowed."""


class RunFailed(RuntimeError):
    """The work started but could not finish (e.g. a non-finite loss). Exit code 1."""


def choices_error(what: str, value: object, allowed: list[str]) -> UsageError:
    """The one error message for an unknown name: the value received and the valid ones."""
    return UsageError(f"unknown {what} {value!r}; choose one of: {', '.join(allowed)}")


def last_line(error: BaseException) -> str:
    """The line of an exception's message that says what went wrong (Python puts it last), for one-line errors."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def first_line(error: BaseException) -> str:
    """The first line of an exception's message, for libraries (numpy, safetensors, json) that put what went wrong
    there and advice after it."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
