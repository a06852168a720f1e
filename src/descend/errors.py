"""User-facing errors: one line that names the culprit and the fix."""


class UserError(Exception):
    """Bad input from the user (config, file, hardware); printed as one line, no traceback."""


class ConfigError(UserError):
    """A config value that is missing, of the wrong type or out of range."""


class DataError(UserError):
    """A data file that is missing, empty, malformed or not numeric."""
