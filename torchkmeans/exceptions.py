"""Exceptions and warnings raised by torchkmeans."""

from __future__ import annotations

import sys

__all__ = ["ConvergenceWarning", "NotFittedError"]


class NotFittedError(ValueError, AttributeError):
    """Raised when an estimator is used before ``fit``.

    It subclasses both ``ValueError`` and ``AttributeError``, as scikit-learn's
    exception of the same name does, so code written for scikit-learn keeps
    working.
    """


class ConvergenceWarning(UserWarning):
    """Warned when a fit found fewer distinct clusters than asked for."""


_sklearn_compatible: dict[type, type] = {}


def not_fitted_error(message: str) -> NotFittedError:
    """A :class:`NotFittedError`, which is also scikit-learn's when it is loaded.

    scikit-learn's tools (``check_estimator``, pipelines) catch their own
    ``NotFittedError``. We never import scikit-learn for it: only when the
    caller already has, the raised class also derives from scikit-learn's.
    """
    sklearn_exceptions = sys.modules.get("sklearn.exceptions")
    base = getattr(sklearn_exceptions, "NotFittedError", None)
    if base is None:
        return NotFittedError(message)
    if base not in _sklearn_compatible:
        _sklearn_compatible[base] = type("NotFittedError", (NotFittedError, base), {})
    return _sklearn_compatible[base](message)
