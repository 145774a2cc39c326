"""The one exception hierarchy of drivetrain.

Every error a user can cause by what they wrote or brought (a spec, a file, an argument) derives from
``DrivetrainError``; the command line turns it into a message and exit code 2, the service into a 4xx.
Anything else that escapes is a bug in drivetrain.

::

    DrivetrainError
    ├── SpecError            the spec file: YAML, schema, unknown keys, cross-references
    │   └── FormulaError     a formula that does not parse or uses what is not allowed
    ├── DataError            a file or table that breaks the data contract as a whole
    │   └── StoreError       the store directory is missing, locked or not a drivetrain store
    ├── UsageError           an argument out of its range (a negative size, an unknown option value)
    ├── InfeasibleError      constraints that cannot all hold; names which
    ├── ArtifactError        a policy artifact that is missing, incomplete or fails its checksums
    └── ConflictError        a request id the service already decided, sent with another unit or context

Messages follow one template: name the field or parameter, the expected form, and what arrived, e.g.
"`propensity` must be in (0, 1], got 1.7 in row 1042".
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "DataError",
    "DrivetrainError",
    "FormulaError",
    "InfeasibleError",
    "ArtifactError",
    "ConflictError",
    "SpecError",
    "StoreError",
    "UsageError",
]


class DrivetrainError(Exception):
    """Base class of every error caused by user input; ``problems`` lists each finding on its own line."""

    def __init__(self, message: str, problems: Sequence[str] = ()) -> None:
        self.problems: tuple[str, ...] = tuple(problems)
        text = message if not self.problems else message + "\n" + "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(text)


class SpecError(DrivetrainError):
    """The spec is not valid: each problem names the field path, the expectation and what was found."""


class FormulaError(SpecError):
    """A formula cannot be compiled: bad syntax, a forbidden construct, or an unknown name."""


class DataError(DrivetrainError):
    """A file or table cannot be used at all (missing required column, unreadable format)."""


class StoreError(DataError):
    """The store directory cannot be used."""


class UsageError(DrivetrainError):
    """An argument is out of its allowed range."""


class InfeasibleError(DrivetrainError):
    """No assignment satisfies every constraint; ``constraints`` names the ones that cannot hold."""

    def __init__(self, message: str, constraints: Sequence[str] = (), problems: Sequence[str] = ()) -> None:
        self.constraints: tuple[str, ...] = tuple(constraints)
        super().__init__(message, problems)


class ArtifactError(DrivetrainError):
    """A policy artifact cannot be loaded: missing files, unknown format, or a checksum mismatch."""


class ConflictError(DrivetrainError):
    """A request names a decision that exists already with other inputs (the service answers 409)."""
