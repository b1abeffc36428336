"""The collection's errors: one base class, one subclass per kind of failure.

Every message is one clear line for the operator; no message carries a secret.
"""

from __future__ import annotations


class TradingbotError(Exception):
    """Base of every error the engines raise on purpose."""


class BackupError(TradingbotError):
    """A backup step failed."""


class RestoreError(BackupError):
    """A restore was refused or failed. ``result`` says what happened and where things are."""

    def __init__(self, message, result=None):
        super().__init__(message)
        self.result = result if result is not None else {}


class StorageError(TradingbotError):
    """A storage backend could not put, get, list, stat or delete an object."""
