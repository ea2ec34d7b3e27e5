"""The one exception type the CLI turns into exit code 2 and a single readable line."""

from pydantic import ValidationError


class RaysplitError(Exception):
    """A problem with the user's input or environment, phrased for the user.

    Raised before anything is written whenever possible, so a failed command leaves
    nothing behind; the CLI prints ``str(error)`` and exits with status 2.
    """


def describe_validation_error(error: ValidationError, source: str = "config") -> str:
    """Flatten pydantic's multi-line report into one line that names every bad field."""
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"] if p != "__root__")
        message = item["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        parts.append(f"{where}: {message}" if where else message)
    return f"{source}: " + "; ".join(parts)
