"""User-facing errors: every message names file:line:column, the field path and expected vs found."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Location:
    """A position in a spec file (1-based line and column).

    ``inherited_by`` is set when the value at this position reached the spec through ``extends``: it is
    the displayed name of the spec being loaded, which inherited the value from ``file``."""

    file: str
    line: int
    column: int
    inherited_by: str | None = None

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


def printable(text: str) -> str:
    """``text`` on one line: control and other non-printable characters (a newline in a file name)
    are shown as escapes, so an error message is always exactly one line."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


class EffspecError(Exception):
    """Base class for errors a user can act on (exit code 2 unless stated otherwise)."""

    exit_code = 2

    def __str__(self) -> str:
        return printable(super().__str__())


class SpecError(EffspecError):
    """A spec that cannot be loaded, validated, scaled or lowered."""

    def __init__(self, message: str, location: Location | None = None, path: str = "") -> None:
        self.message = message
        self.location = location
        self.path = path
        super().__init__(self.one_line())

    def one_line(self) -> str:
        field = f"{self.path}: " if self.path else ""
        location = self.location
        if location is not None and location.inherited_by:
            # The user's file first (the one they compiled), then where the inherited value is written.
            return f"{location.inherited_by}: error: {field}{self.message} (inherited from {location})"
        where = f"{location}: " if location else ""
        return f"{where}error: {field}{self.message}"

    def lines(self) -> list[str]:
        """The message, one line per error."""
        return [str(self)]


class SpecErrors(SpecError):
    """Several errors in one spec (validation reports them all, up to a cap). Behaves as the first one
    (``message``, ``location``, ``path``) for code that handles a single SpecError."""

    def __init__(self, errors: list[SpecError], total: int | None = None) -> None:
        first = errors[0]
        self.errors = list(errors)
        self.total = max(total or 0, len(errors))
        super().__init__(first.message, first.location, first.path)

    def lines(self) -> list[str]:
        lines = [printable(error.one_line()) for error in self.errors]
        hidden = self.total - len(self.errors)
        if hidden:
            first = self.errors[0].location
            file = (first.inherited_by or first.file) if first else "effspec"
            lines.append(f"{file}: error: {hidden} more error{'s' if hidden != 1 else ''} not shown")
        return lines

    def __str__(self) -> str:
        return "\n".join(self.lines())


class UsageError(EffspecError):
    """Bad command-line usage (unknown backend, missing file, ...)."""


class OutputError(EffspecError):
    """An output file or directory cannot be written (-o at a file, a read-only directory, a full disk)."""


class CheckFailed(EffspecError):
    """A check ran and found a difference (exit code 1)."""

    exit_code = 1


def format_path(parts: tuple[object, ...]) -> str:
    """Render a field path like ``stages[3].kernel``."""
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


class TrainingError(Exception):
    """A trainer's error: a problem the user can fix (bad flag, missing data, wrong checkpoint): one line, exit 2."""
