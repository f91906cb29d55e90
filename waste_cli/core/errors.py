"""One exception family for the engine; the CLI turns each into a message and an exit code."""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DataError",
    "DeviceError",
    "ModelError",
    "UnsafeNameError",
    "WasteclsError",
]


class WasteclsError(Exception):
    """A problem the user can act on. The message is shown as is, without a traceback."""

    exit_code = 1


class ConfigError(WasteclsError):
    """Bad settings: an invalid flag value, config file or combination of options."""

    exit_code = 2


class DataError(WasteclsError):
    """A dataset, annotation file or image that cannot be used."""


class ModelError(WasteclsError):
    """An unknown architecture, unreadable weights or checkpoint, or a class-set mismatch."""


class DeviceError(WasteclsError):
    """A requested device that this machine does not have."""

    exit_code = 2


class UnsafeNameError(WasteclsError):
    """A name from data (a class, a category, a map target, a file name) that cannot be one
    path component."""

    exit_code = 2
