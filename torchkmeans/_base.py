"""The scikit-learn estimator protocol, without depending on scikit-learn."""

from __future__ import annotations

import functools
import inspect
from typing import Any

from .exceptions import not_fitted_error


@functools.cache
def _init_parameter_names(cls: type) -> tuple[str, ...]:
    """The keyword arguments of ``cls.__init__``, sorted: read once per class
    (``inspect.signature`` takes longer than a small fit's step)."""
    signature = inspect.signature(cls.__init__)
    return tuple(
        sorted(
            name
            for name, p in signature.parameters.items()
            if name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
        )
    )


class EstimatorProtocol:
    """get_params/set_params, repr and tags, as scikit-learn's BaseEstimator.

    Parameters are the keyword arguments of ``__init__``; ``__init__`` only
    stores them and validation happens in ``fit``.
    """

    _estimator_type = "clusterer"

    @classmethod
    def _param_names(cls) -> list[str]:
        return list(_init_parameter_names(cls))

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Parameters of this estimator, as passed to ``__init__``."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params: Any) -> EstimatorProtocol:
        """Set parameters; unknown names raise ``ValueError``."""
        valid = self._param_names()
        for name, value in params.items():
            if name not in valid:
                raise ValueError(
                    f"Invalid parameter {name!r} for estimator {type(self).__name__}. "
                    f"Valid parameters are: {valid}."
                )
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        defaults = inspect.signature(type(self).__init__).parameters
        changed = [
            f"{name}={value!r}"
            for name, value in self.get_params().items()
            if not _same(value, defaults[name].default)
        ]
        return f"{type(self).__name__}({', '.join(changed)})"

    def __sklearn_tags__(self) -> Any:
        # Only scikit-learn calls this, so importing it here costs users nothing.
        from sklearn.utils import Tags, TargetTags, TransformerTags

        tags = Tags(
            estimator_type="clusterer",
            target_tags=TargetTags(required=False),
            transformer_tags=TransformerTags(),
        )
        tags.input_tags.allow_nan = False
        return tags

    def _check_is_fitted(self) -> None:
        if not hasattr(self, "cluster_centers_"):
            raise not_fitted_error(
                f"This {type(self).__name__} instance is not fitted yet. Call 'fit' with "
                "appropriate arguments before using this estimator."
            )


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a is b or a == b)
    except Exception:  # arrays compare element-wise; treat them as changed
        return False
