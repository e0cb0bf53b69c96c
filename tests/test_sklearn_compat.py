"""scikit-learn's own estimator checks."""

from __future__ import annotations

import warnings

import pytest
from sklearn.utils.estimator_checks import check_estimator

from torchkmeans import KMeans

# Checks we expect to fail, with the reason. scikit-learn marks the same
# check as an expected failure for its own KMeans.
EXPECTED_FAILURES = {
    "check_sample_weight_equivalence_on_dense_data": (
        "the seeding is random: integer weights and repeated rows (shuffled by the "
        "check) draw different initial centres. From the same initial centres they "
        "are equal: tests/test_properties.py::test_integer_weights_equal_repeated_rows."
    ),
}


def test_check_estimator_passes():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = check_estimator(
            KMeans(n_clusters=2, n_init=2, max_iter=5),
            on_fail=None,
            expected_failed_checks=EXPECTED_FAILURES,
        )
    failed = {r["check_name"]: r["exception"] for r in results if r["status"] == "failed"}
    assert failed == {}
    xfailed = {r["check_name"] for r in results if r["status"] == "xfail"}
    assert xfailed == set(EXPECTED_FAILURES)
    skipped = {r["check_name"]: str(r["exception"]) for r in results if r["status"] == "skipped"}
    # Only the array-API check may skip: it needs SCIPY_ARRAY_API=1 set at import.
    assert set(skipped) <= {"check_array_api_input"}
    assert len(results) > 40


def test_clusterer_tags():
    sklearn_base = pytest.importorskip("sklearn.base")
    assert sklearn_base.is_clusterer(KMeans())


@pytest.mark.parametrize("algorithm", ["lloyd", "elkan"])
@pytest.mark.parametrize("copy_x", [True, False])
def test_scikit_learn_arguments_algorithm_and_copy_x_run_unchanged(algorithm, copy_x):
    import numpy as np
    from sklearn.cluster import KMeans as SklearnKMeans
    from sklearn.datasets import load_iris

    X = load_iris().data
    start = X[[0, 60, 120]]
    ours = KMeans(3, init=start, n_init=1, algorithm=algorithm, copy_x=copy_x).fit(X)
    # (scikit-learn's copy_x=False centres X in place and adds the mean back:
    # its copy comes back rounded.)
    np.testing.assert_array_equal(X, load_iris().data)
    theirs = SklearnKMeans(3, init=start, n_init=1, algorithm=algorithm, copy_x=copy_x)
    theirs.fit(X.copy())
    np.testing.assert_array_equal(ours.labels_, theirs.labels_)
    np.testing.assert_allclose(ours.cluster_centers_, theirs.cluster_centers_, rtol=1e-12)
    assert ours.get_params()["algorithm"] == algorithm
    assert ours.get_params()["copy_x"] is copy_x


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"algorithm": "full"}, ValueError, r"Expected algorithm to be 'lloyd' or 'elkan'"),
        ({"copy_x": "yes"}, TypeError, r"Expected copy_x to be a bool, got str"),
    ],
)
def test_scikit_learn_arguments_are_checked_in_fit(kwargs, error, match):
    model = KMeans(2, **kwargs)  # __init__ only stores them
    with pytest.raises(error, match=match):
        model.fit([[0.0], [1.0], [2.0]])


def test_feature_names_out_match_scikit_learn():
    import numpy as np
    import pandas as pd
    from sklearn.cluster import KMeans as SklearnKMeans
    from sklearn.cluster import MiniBatchKMeans as SklearnMiniBatchKMeans

    from torchkmeans import MiniBatchKMeans

    X = pd.DataFrame(np.random.default_rng(0).normal(size=(60, 3)), columns=["a", "b", "c"])
    for ours, theirs in ((KMeans, SklearnKMeans), (MiniBatchKMeans, SklearnMiniBatchKMeans)):
        fitted = ours(n_clusters=4, random_state=0).fit(X)
        expected = theirs(n_clusters=4, random_state=0, n_init=1).fit(X).get_feature_names_out()
        names = fitted.get_feature_names_out()
        assert names.dtype == object and list(names) == list(expected)
        assert list(fitted.get_feature_names_out(["a", "b", "c"])) == list(expected)
        with pytest.raises(ValueError, match="input_features is not equal to feature_names_in_"):
            fitted.get_feature_names_out(["x", "y", "z"])
    with pytest.raises(ValueError, match="number of features"):
        KMeans(n_clusters=2).fit(X.to_numpy()).get_feature_names_out(["a"])
