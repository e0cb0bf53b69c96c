"""Exceptions and warnings raised by torchkmeans."""

from __future__ import annotations

__all__ = ["ConvergenceWarning", "NotFittedError"]


class NotFittedError(ValueError, AttributeError):
    """Raised when an estimator is used before ``fit``.

    It subclasses both ``ValueError`` and ``AttributeError``, as scikit-learn's
    exception of the same name does, so code written for scikit-learn keeps
    working.
    """


class ConvergenceWarning(UserWarning):
    """Warned when a fit found fewer distinct clusters than asked for."""
