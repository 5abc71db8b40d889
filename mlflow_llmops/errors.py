"""Exceptions that tell the user what to fix."""


class LlmopsError(Exception):
    """Base class for every error this package raises on purpose."""


class ConfigError(LlmopsError, ValueError):
    """A configuration file or value is invalid; the message names the key and the fix."""


class StoreError(LlmopsError):
    """The state store or the MLflow tracking database cannot be used as asked."""
