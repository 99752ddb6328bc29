"""Exception types raised by segpipe.

Every error a user can cause derives from :class:`SegpipeError` and also from the
builtin it resembles, so ``except OSError`` or ``except ValueError`` keep working.
Messages are one line, name the file or argument and say what to do.
"""

from __future__ import annotations

__all__ = [
    "SegpipeError",
    "ImageReadError",
    "ImageTooLargeError",
    "UnsupportedImageError",
    "ConfigError",
    "ModelError",
    "WeightsIntegrityError",
    "ResultsError",
    "ResultsLockedError",
    "TableFileError",
    "ImageNotFoundError",
]


class SegpipeError(Exception):
    """Base class of every error segpipe raises on purpose."""


class ImageReadError(SegpipeError, OSError):
    """An image file is missing, truncated, corrupt or not an image."""


class ImageTooLargeError(ImageReadError):
    """An image declares more pixels than segpipe will allocate (decompression bomb)."""


class UnsupportedImageError(ImageReadError, ValueError):
    """An image is readable but its dtype, channel count or layout is not supported."""


class ConfigError(SegpipeError, ValueError):
    """A configuration file, option or argument is invalid."""


class ModelError(SegpipeError, ValueError):
    """A model name is unknown or a model card / weights file is invalid."""


class WeightsIntegrityError(ModelError):
    """A weights file does not match the sha256 its model card declares, or is unsafe."""


class ResultsError(SegpipeError, OSError):
    """A results folder is missing, not a segpipe results folder, or cannot be written."""


class ResultsLockedError(ResultsError):
    """Another run holds the lock on a results folder."""


class TableFileError(ResultsError):
    """A file under ``RESULTS/tables`` cannot be read as part of its table (empty, truncated,
    corrupt, or not a segpipe table file)."""


class ImageNotFoundError(ResultsError, KeyError):
    """An image id is not in a results folder."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it one plain line
        return str(self.args[0]) if self.args else ""
