"""The scikit-learn estimator protocol, without depending on scikit-learn."""

from __future__ import annotations

import copy
import functools
import inspect
from typing import Any

from .distributed import is_group
from .exceptions import not_fitted_error

# scikit-learn's ``metadata_routing.UNCHANGED``, the default of its
# ``set_*_request`` methods: spelled out so that defining ours imports nothing.
_UNCHANGED = "$UNCHANGED$"

# The methods of scikit-learn's routing (its ``SIMPLE_METHODS``) that the
# estimators have; ``fit_predict``/``fit_transform`` follow fit's requests.
_ROUTED_METHODS = ("fit", "partial_fit", "predict", "score", "transform")


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


@functools.cache
def _metadata_names(cls: type, method: str) -> tuple[str, ...]:
    """What ``cls.method`` takes besides the data: the metadata a scikit-learn
    router may pass to it, read from the signature as scikit-learn reads it."""
    function = getattr(cls, method, None)
    if function is None:
        return ()
    parameters = list(inspect.signature(function).parameters.items())[1:]
    return tuple(
        name
        for name, p in parameters
        if name not in ("X", "y") and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
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

    @property
    def __sklearn_clone__(self) -> Any:
        # scikit-learn's clone deep-copies every parameter, and a ProcessGroup
        # cannot be copied: with one, clone runs scikit-learn's own clone on a
        # stand-in without it and hands the clone the same group. Without
        # one, no such attribute: scikit-learn's default clone.
        if not is_group(self.__dict__.get("process_group")):
            raise AttributeError("__sklearn_clone__")
        return self._clone_sharing_the_group

    def _clone_sharing_the_group(self) -> EstimatorProtocol:
        from sklearn.base import clone

        stand_in = copy.copy(self)
        stand_in.process_group = None
        twin = clone(stand_in)
        twin.process_group = self.process_group
        return twin

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
        # scipy.sparse matrices and arrays are clustered on their stored values
        # (fitted dense when mostly stored: see _host.dense_when_mostly_stored).
        tags.input_tags.sparse = True
        return tags

    def get_metadata_routing(self) -> Any:
        """The metadata (``sample_weight``) each method asks scikit-learn's routers for.

        scikit-learn's API (its ``Pipeline``, ``cross_validate`` and
        ``GridSearchCV`` call it when ``enable_metadata_routing`` is set): by
        default nothing is requested, and a router given ``sample_weight``
        raises until :meth:`set_fit_request` says whether to pass it.

        Returns
        -------
        sklearn.utils.metadata_routing.MetadataRequest
            A copy: changing it changes nothing here.

        Examples
        --------
        >>> from torchkmeans import KMeans
        >>> KMeans().get_metadata_routing().fit.requests
        {'sample_weight': None}
        """
        from sklearn.utils.metadata_routing import MetadataRequest, get_routing_for_object

        # Set by the set_*_request methods under scikit-learn's own name,
        # which its clone() copies to the clone.
        if hasattr(self, "_metadata_request"):
            return get_routing_for_object(self._metadata_request)
        requests = MetadataRequest(owner=type(self).__name__)
        for method in _ROUTED_METHODS:
            for name in _metadata_names(type(self), method):
                getattr(requests, method).add_request(param=name, alias=None)
        return requests

    def _set_requests(self, method: str, **aliases: Any) -> Any:
        """Record scikit-learn metadata requests of ``method``, as its ``set_*_request``."""
        from sklearn import get_config

        if not get_config().get("enable_metadata_routing", False):
            raise RuntimeError(
                "This method is only available when metadata routing is enabled. You can "
                "enable it using sklearn.set_config(enable_metadata_routing=True)."
            )
        requests = self.get_metadata_routing()
        for name, alias in aliases.items():
            if not (isinstance(alias, str) and alias == _UNCHANGED):
                getattr(requests, method).add_request(param=name, alias=alias)
        self._metadata_request = requests
        return self

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
