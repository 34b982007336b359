"""Errors a user can fix, each tied to its BIDS-App exit code.

Raise these (never bare exceptions) for problems with the input or the command line: the
command line prints their message, with no traceback, and exits with :attr:`exit_code`.
Every message names the file (or option) concerned and says what is wrong with it.
"""

from __future__ import annotations


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
