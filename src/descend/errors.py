"""User-facing errors: one line that names the culprit and the fix."""

from typing import NoReturn


class UserError(Exception):
    """Bad input from the user (config, file, hardware); printed as one line, no traceback."""


class ConfigError(UserError):
    """A config value that is missing, of the wrong type or out of range."""


class DataError(UserError):
    """A data file that is missing, empty, malformed or not numeric."""


class RefusedCommand(UserError):
    """Bad input found before a run starts: nothing is written. `python -m train` prints it as
    `error: <message>` and exits 2 (cli.main); descend.train raises it as a DescendError."""


def exit_with_error(message: str) -> NoReturn:
    """Refuse the command: raise RefusedCommand(message), which the CLI turns into its one line
    and exit status 2 (the name is the CLI's view of it)."""
    raise RefusedCommand(message)


def require_int(value: object, key: str, low: int = 1, high: int | None = None, why: str = "") -> int:
    """`value` as an int in [low, high], or a ConfigError naming the key, the accepted range and why."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        accepted = f"an integer in {low}..{high}" if high is not None else ("a positive integer" if low == 1 else f"an integer >= {low}")
        raise ConfigError(f"{key}={value!r} must be {accepted}" + (f" ({why})" if why else ""))
    return value
