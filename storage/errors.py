"""Storage errors. Each message names what to do next, because the CLI prints them as they are."""

from __future__ import annotations

from quant.errors import BitsearchError  # the one leaf module of ours storage may import


class StorageError(BitsearchError):
    """Base class of every error raised by `storage`."""


class SchemaVersionError(StorageError):
    """The database schema is not the revision this code was written for."""


class StudyNotFoundError(StorageError, LookupError):
    pass


class DuplicateStudyError(StorageError):
    pass


class CandidateNotFoundError(StorageError, LookupError):
    pass


class LeaseLostError(StorageError):
    """The caller no longer holds the candidate: its lease expired and was reclaimed (and maybe
    claimed by another worker), or the candidate already reached a final state. The caller must
    drop its result; the current holder's result is the one that counts."""


class DatabaseOpenError(StorageError):
    """The database named by --db cannot be used: missing, unreachable, not a database file, or a
    database without bitsearch's tables where nothing may be created."""
