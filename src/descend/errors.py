"""User-facing errors: one line that names the culprit and the fix."""


class UserError(Exception):
    """Bad input from the user (config, file, hardware); printed as one line, no traceback."""


class ConfigError(UserError):
    """A config value that is missing, of the wrong type or out of range."""


class DataError(UserError):
    """A data file that is missing, empty, malformed or not numeric."""


def exit_with_error(message: str, code: int = 2) -> None:
    """Print `error: <message>` on stderr and exit; for bad input found before a run starts."""
    import sys

    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)
