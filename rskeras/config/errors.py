"""Configuration errors."""


class ConfigError(ValueError):
    """A config problem; the message names the YAML key path at fault."""
