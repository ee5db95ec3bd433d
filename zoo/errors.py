"""Exceptions users catch. Every message names the problem and the fix."""

from __future__ import annotations


class ZooError(Exception):
    """Base class of every error zoo raises on purpose."""


class UnknownModelError(ZooError, LookupError):
    """A name that is neither a registered model, family nor known upstream checkpoint."""

    def __init__(self, message: str, suggestions: list[str] | None = None):
        self.suggestions = list(suggestions or [])
        super().__init__(message)

    def __str__(self) -> str:  # LookupError would quote the message like a KeyError
        return self.args[0]


class ConfigError(ZooError, ValueError):
    """A model or run configuration that cannot be used as given."""


class CheckpointFormatError(ZooError, ValueError):
    """A hub folder or checkpoint file that is malformed, truncated or of an unknown layout."""


class FormatVersionError(CheckpointFormatError):
    """A hub folder written by a newer zoo than the one installed."""


class UnregisteredClassError(CheckpointFormatError):
    """A config names a class that is not in the registry's allow-list."""


class IntegrityError(ZooError):
    """A file whose sha256 does not match the one recorded in config.json."""


class KeyMismatchError(CheckpointFormatError):
    """State-dict keys or shapes that do not match the model they are loaded into."""

    def __init__(self, message: str, missing=(), unexpected=(), mismatched=()):
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.mismatched = list(mismatched)
        super().__init__(message)


class OfflineError(ZooError, OSError):
    """A hub file that is needed but neither cached nor reachable."""
