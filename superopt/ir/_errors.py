"""The error hierarchy shared by every layer of superopt."""

from __future__ import annotations


class SuperoptError(Exception):
    """Base class of every error superopt raises on purpose."""


class UnsupportedPrimitiveError(SuperoptError):
    """An operation the IR cannot represent, even as an opaque node."""


class ShapeError(SuperoptError):
    """Operands whose shapes or dtypes do not fit the operation they are given to."""


class IRError(SuperoptError):
    """A malformed IR program: an unknown op, a missing parameter, a dangling node."""
