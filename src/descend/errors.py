"""User-facing errors: one line that names the culprit and the fix."""

from typing import NoReturn


class UserError(Exception):
    """Bad input from the user (config, file, hardware); printed as one line, no traceback."""


class ConfigError(UserError):
    """A config value that is missing, of the wrong type or out of range."""


class DataError(UserError):
    """A data file that is missing, empty, malformed or not numeric."""


class RefusedCommand(UserError):
    """A command descend refuses, found before or outside training (a misspelt key, a resume that
    may not change a key, a file it cannot write): `python -m train` prints `error: <message>` and
    exits with `code` (cli.main and cli.job); descend.train raises it as a DescendError."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def exit_with_error(message: str, code: int = 2) -> NoReturn:
    """Refuse the command: raise RefusedCommand, which the CLI turns into its one line and exit
    status `code` (2 for bad input), and the Python API into a DescendError."""
    raise RefusedCommand(message, code)


def is_number(value: object) -> bool:
    """An int or a float, not a bool (YAML's true is no number)."""
    return not isinstance(value, bool) and isinstance(value, (int, float))


def require_int(value: object, key: str, low: int = 1, high: int | None = None, why: str = "") -> int:
    """`value` as an int in [low, high], or a ConfigError naming the key, the accepted range and why."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        accepted = f"an integer in {low}..{high}" if high is not None else ("a positive integer" if low == 1 else f"an integer >= {low}")
        raise ConfigError(f"{key}={value!r} must be {accepted}" + (f" ({why})" if why else ""))
    return value
