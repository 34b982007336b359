"""Errors a user can fix, each tied to its BIDS-App exit code.

Raise these (never bare exceptions) for problems with the input or the command line: the
command line prints their message, with no traceback, and exits with :attr:`exit_code`.
Every message names the file (or option) concerned and says what is wrong with it.
"""

from __future__ import annotations

import errno


class QSMPrepError(Exception):
    """Base class; a processing failure (exit code 1)."""

    exit_code = 1


class InvalidBIDSError(QSMPrepError):
    """The input folder is not a valid BIDS dataset (exit code 16)."""

    exit_code = 16


class UnknownLevelError(QSMPrepError):
    """The analysis level is not available (exit code 17)."""

    exit_code = 17


class NoMatchingRunsError(QSMPrepError):
    """The participant/session labels or BIDS filters matched no runs (exit code 18)."""

    exit_code = 18


class UsageError(QSMPrepError):
    """Wrong use of the command line (exit code 64)."""

    exit_code = 64


class BadDataError(QSMPrepError):
    """Input data or metadata that cannot be processed as given (exit code 65)."""

    exit_code = 65


class MissingInputError(QSMPrepError):
    """A required input file or folder does not exist (exit code 66)."""

    exit_code = 66


class CannotCreateOutputError(QSMPrepError):
    """An output or work folder cannot be created or written: no permission, a read-only file
    system, a file in the way (exit code 73)."""

    exit_code = 73


class OutputIOError(QSMPrepError):
    """Writing failed half-way: disk full, quota exceeded or an I/O error (exit code 74)."""

    exit_code = 74


class WorkFolderBusyError(QSMPrepError):
    """Another qsmprep run holds the work folder (exit code 75: try again later, or use
    another work folder)."""

    exit_code = 75


#: errno values of CannotCreateOutputError and OutputIOError.
_CANNOT_CREATE = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST,
                  errno.EISDIR}
_IO_FAILURE = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG}


def error_for_os_error(error: OSError) -> QSMPrepError | None:
    """The qsmprep error of an operating-system error while writing (73 or 74, the message
    naming the file and what to do), or None for any other ``OSError``."""
    where = error.filename or "a file"
    if error.errno in _CANNOT_CREATE:
        return CannotCreateOutputError(
            f"Cannot write {where}: {error.strerror}. Give an output folder and a work folder "
            "(-w) that you can write to.")
    if error.errno in _IO_FAILURE:
        return OutputIOError(
            f"Writing {where} failed: {error.strerror}. Free space (or quota) on that disk, "
            "or choose another output or work folder, and re-run the same command to resume.")
    return None
