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
