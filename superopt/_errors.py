"""Errors raised by the outer layers of superopt (the IR defines the base classes)."""

from __future__ import annotations

from .ir._errors import IRError as IRError
from .ir._errors import ShapeError as ShapeError
from .ir._errors import SuperoptError as SuperoptError
from .ir._errors import UnsupportedPrimitiveError as UnsupportedPrimitiveError


class TraceError(SuperoptError):
    """The function could not be traced with the arguments given."""


class SignatureError(SuperoptError):
    """Arguments whose structure, shapes or dtypes differ from the ones optimized for."""


class VerificationError(SuperoptError):
    """A candidate program does not compute what the reference computes."""


class CacheError(SuperoptError):
    """The tuning cache database is unreadable, corrupt or not superopt's."""


class SearchError(SuperoptError):
    """The e-graph search failed on a program."""
