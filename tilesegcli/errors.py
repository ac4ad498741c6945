"""One exception hierarchy; the CLI maps each to a one-line message and an exit code."""

from __future__ import annotations


class TilesegError(Exception):
    """Base of every error tileseg reports to users (one line, no traceback)."""

    exit_code: int = 1


class UsageError(TilesegError):
    """Bad options or arguments (exit code 2, like click)."""

    exit_code = 2


class SlideOpenError(TilesegError, OSError):
    """The input cannot be opened as an image/slide."""


class SlideReadError(TilesegError, OSError):
    """The input opened but a region could not be read/decoded."""


class MissingResolutionError(TilesegError):
    """The input has no pixel size and none was given (--mpp)."""


class StoreError(TilesegError):
    """The tile store is unusable, corrupt or belongs to another run/model/sharding."""


class WeightsError(TilesegError):
    """Weights missing, corrupt, of the wrong checksum, or unsafe to load."""


class ModelNotFoundError(TilesegError):
    """No model card of that name or path (a usage error: exit code 2)."""

    exit_code = 2


class OutputError(TilesegError, OSError):
    """An output cannot be written (unwritable directory, ...)."""


class AnnotationError(TilesegError):
    """Annotation/ground-truth file that cannot be parsed."""


def first_line(exc: BaseException, limit: int = 160) -> str:
    """The first line of an exception's message, at most ``limit`` characters ("" if it has
    none): for one-line errors that quote a library's multi-line text."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else ""
