"""The one error hierarchy of flower-ctx.

The CLI prints ``str(error)`` for these and maps them to exit codes; anything else is a bug and
gets a traceback only with ``--debug``.
"""

from __future__ import annotations

from collections.abc import Iterable

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2


class FlowerCtxError(Exception):
    """Base class of every error flower-ctx raises on purpose."""

    exit_code = EXIT_FAILED


class ContextError(FlowerCtxError):
    """The CONTEXT could not be read or parsed (file, line, what was found)."""

    exit_code = EXIT_BAD_INPUT


class ValidationError(FlowerCtxError):
    """One or more CONTEXT variables are invalid. Carries every problem, not just the first."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, problems: Iterable[tuple[str, str]]) -> None:
        # Sorted and de-duplicated so the output is stable whatever order the checks ran in.
        self.problems: tuple[tuple[str, str], ...] = tuple(sorted(set(problems)))
        super().__init__("\n".join(f"{name}: {msg}" for name, msg in self.problems))


class ApplyError(FlowerCtxError):
    """Changing the machine failed (a file, a link, a unit)."""


class OneGateError(FlowerCtxError):
    """OneGate refused or could not be reached."""
