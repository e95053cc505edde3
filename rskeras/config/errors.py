"""Configuration errors."""

from rskeras.errors import UserError


class ConfigError(UserError, ValueError):
    """A config problem; the message names the YAML key path at fault."""
