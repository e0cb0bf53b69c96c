"""scikit-learn's own estimator checks."""

from __future__ import annotations

import warnings

import pytest
import torch
from sklearn.utils.estimator_checks import check_estimator

from torchkmeans import KMeans

# Checks we expect to fail, with the reason. scikit-learn marks the same
# check as an expected failure for its own KMeans.
_RANDOM_SEEDING = (
    "the seeding is random: integer weights and repeated rows (shuffled by the "
    "check) draw different initial centres. From the same initial centres they "
    "are equal: tests/test_properties.py::test_integer_weights_equal_repeated_rows "
    "(dense) and tests/test_sparse.py (sparse)."
)
EXPECTED_FAILURES = {
    "check_sample_weight_equivalence_on_dense_data": _RANDOM_SEEDING,
    "check_sample_weight_equivalence_on_sparse_data": _RANDOM_SEEDING,
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


def test_set_output_pandas_in_a_pipeline_as_scikit_learn_gives_it():
    import numpy as np
    import pandas as pd
    from sklearn.cluster import KMeans as SklearnKMeans
    from sklearn.datasets import load_wine
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X = load_wine(as_frame=True).data.iloc[::2]  # an index that is not 0..n-1
    start = StandardScaler().fit_transform(X)[[0, 30, 60]]
    ours = make_pipeline(StandardScaler(), KMeans(3, init=start, n_init=1))
    theirs = make_pipeline(StandardScaler(), SklearnKMeans(3, init=start, n_init=1))
    ours_out = ours.set_output(transform="pandas").fit_transform(X)
    theirs_out = theirs.set_output(transform="pandas").fit_transform(X)
    assert isinstance(ours_out, pd.DataFrame)
    assert list(ours_out.columns) == list(theirs_out.columns) == ["kmeans0", "kmeans1", "kmeans2"]
    assert ours_out.index.equals(X.index)
    np.testing.assert_allclose(ours_out.to_numpy(), theirs_out.to_numpy(), rtol=1e-10)
    # Back to arrays; None keeps the setting; tensors stay tensors.
    model = ours[-1].set_output(transform="default")
    assert isinstance(model.transform(ours[0].transform(X)), np.ndarray)  # frame in, array out
    assert model.set_output(transform=None) is model
    pandas_model = KMeans(2, random_state=0).set_output(transform="pandas")
    assert isinstance(pandas_model.fit_transform(torch.randn(20, 3)), torch.Tensor)
    with pytest.raises(ValueError, match=r"Expected transform to be 'default', 'pandas'"):
        KMeans(2).set_output(transform="numpy")


def test_global_transform_output_is_followed_without_a_setting_of_its_own():
    import pandas as pd
    import sklearn

    X = [[0.0], [1.0], [9.0], [10.0]]
    with sklearn.config_context(transform_output="pandas"):
        frame = KMeans(2, random_state=0).fit_transform(X)
        array = KMeans(2, random_state=0).set_output(transform="default").fit_transform(X)
    assert isinstance(frame, pd.DataFrame) and list(frame.columns) == ["kmeans0", "kmeans1"]
    assert not isinstance(array, pd.DataFrame)
    assert not isinstance(KMeans(2, random_state=0).fit_transform(X), pd.DataFrame)


def test_a_pickle_from_before_a_parameter_existed_gets_its_default():
    import pickle

    model = KMeans(2, random_state=0).fit([[0.0], [1.0], [9.0], [10.0]])
    state = model.__dict__.copy()
    del state["algorithm"], state["copy_x"]  # as pickled by the release before
    old = KMeans.__new__(KMeans)
    old.__setstate__(state)
    restored = pickle.loads(pickle.dumps(old))
    assert restored.get_params()["algorithm"] == "lloyd" and restored.copy_x is True
    assert "algorithm='lloyd'" not in repr(restored)  # defaults are not shown
    assert sorted(restored.fit([[0.0], [10.0]]).labels_.tolist()) == [0, 1]


def _weighted_blobs():
    import numpy as np

    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(c, 1.0, size=(40, 3)) for c in (0.0, 6.0, 12.0)])
    return X * [1.0, 10.0, 0.1], rng.uniform(0.1, 5.0, size=len(X))


@pytest.mark.parametrize("name", ["KMeans", "MiniBatchKMeans"])
def test_metadata_routing_api_matches_scikit_learn(name):
    import pickle

    import sklearn
    import sklearn.cluster
    from sklearn.base import clone

    import torchkmeans

    ours, theirs = getattr(torchkmeans, name)(2), getattr(sklearn.cluster, name)(2)
    public = {n for n in dir(theirs) if n.startswith(("set_", "get_")) and n.endswith("request")}
    public |= {"get_metadata_routing"}
    assert public <= set(dir(ours))
    assert "set_partial_fit_request" not in dir(torchkmeans.KMeans)  # nor in scikit-learn's
    assert str(ours.get_metadata_routing()) == str(theirs.get_metadata_routing())
    with pytest.raises(RuntimeError, match="only available when metadata routing is enabled"):
        ours.set_fit_request(sample_weight=True)
    with sklearn.config_context(enable_metadata_routing=True):
        for model in (ours, theirs):
            assert model.set_fit_request(sample_weight=True) is model
            model.set_score_request(sample_weight="w")
            if name == "MiniBatchKMeans":
                model.set_partial_fit_request(sample_weight=False)
            model.set_fit_request()  # UNCHANGED keeps the request
        expected = str(theirs.get_metadata_routing())
        assert str(ours.get_metadata_routing()) == expected
        assert str(clone(ours).get_metadata_routing()) == expected
        assert str(pickle.loads(pickle.dumps(ours)).get_metadata_routing()) == expected
        with pytest.raises(ValueError, match="should be either a valid identifier"):
            ours.set_fit_request(sample_weight=1.5)
    # The returned request is a copy.
    ours.get_metadata_routing().fit.add_request(param="sample_weight", alias=False)
    assert str(ours.get_metadata_routing()) == expected


def test_metadata_routing_passes_sample_weight_as_scikit_learn_kmeans():
    import numpy as np
    import sklearn
    from sklearn.cluster import KMeans as SklearnKMeans
    from sklearn.exceptions import UnsetMetadataPassedError
    from sklearn.model_selection import GridSearchCV, KFold, cross_validate
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    X, w = _weighted_blobs()
    scaled = StandardScaler().fit_transform(X)
    start = scaled[[0, 40, 80]]
    direct = KMeans(3, init=start, n_init=1).fit(scaled, sample_weight=w)
    unweighted = KMeans(3, init=start, n_init=1).fit(scaled)
    assert not np.allclose(direct.cluster_centers_, unweighted.cluster_centers_)
    with sklearn.config_context(enable_metadata_routing=True):
        for cls in (KMeans, SklearnKMeans):
            # Not requested: scikit-learn's error, not a silent drop.
            with pytest.raises(UnsetMetadataPassedError, match=r"\[sample_weight\]"):
                Pipeline([("k", cls(3, init=start, n_init=1))]).fit(scaled, sample_weight=w)
        steps = [("s", StandardScaler().set_fit_request(sample_weight=False))]
        pipe = Pipeline([*steps, ("k", KMeans(3, init=start, n_init=1))])
        pipe[-1].set_fit_request(sample_weight=True)
        pipe.fit(X, sample_weight=w)
        np.testing.assert_allclose(pipe[-1].cluster_centers_, direct.cluster_centers_)
        assert pipe[-1].inertia_ == pytest.approx(direct.inertia_)
        # False: not passed, so (no step taking it) scikit-learn refuses it.
        pipe[-1].set_fit_request(sample_weight=False)
        with pytest.raises(TypeError, match="not routed to any object"):
            pipe.fit(X, sample_weight=w)

        results = {}
        for cls in (KMeans, SklearnKMeans):
            model = cls(3, init=start, n_init=1).set_fit_request(sample_weight=True)
            model.set_score_request(sample_weight=True)
            cv = KFold(3, shuffle=True, random_state=0)
            results[cls] = cross_validate(model, scaled, params={"sample_weight": w}, cv=cv)[
                "test_score"
            ]
            search = GridSearchCV(model, {"max_iter": [1, 100]}, cv=3, error_score="raise")
            results[cls, "search"] = search.fit(scaled, sample_weight=w).cv_results_[
                "mean_test_score"
            ]
            assert search.best_estimator_.inertia_ == pytest.approx(direct.inertia_)
        np.testing.assert_allclose(results[KMeans], results[SklearnKMeans], rtol=1e-8)
        np.testing.assert_allclose(
            results[KMeans, "search"], results[SklearnKMeans, "search"], rtol=1e-8
        )
    # With routing off the step parameters still work.
    pipe = Pipeline([("k", KMeans(3, init=start, n_init=1))]).fit(scaled, k__sample_weight=w)
    np.testing.assert_allclose(pipe[-1].cluster_centers_, direct.cluster_centers_)


def test_metadata_routing_of_minibatch_partial_fit():
    import numpy as np
    import sklearn
    from sklearn.exceptions import UnsetMetadataPassedError
    from sklearn.pipeline import Pipeline

    from torchkmeans import MiniBatchKMeans

    X, w = _weighted_blobs()
    start = X[[0, 40, 80]]
    direct = MiniBatchKMeans(3, init=start, batch_size=len(X), random_state=0)
    direct.partial_fit(X, sample_weight=w)
    with sklearn.config_context(enable_metadata_routing=True):
        model = MiniBatchKMeans(3, init=start, batch_size=len(X), random_state=0)
        with pytest.raises(UnsetMetadataPassedError, match=r"\[sample_weight\]"):
            Pipeline([("k", model)]).fit(X, sample_weight=w)
        pipe = Pipeline([("k", model.set_fit_request(sample_weight=True))])
        pipe.fit(X, sample_weight=w)
        fitted = MiniBatchKMeans(3, init=start, batch_size=len(X), random_state=0)
        fitted.fit(X, sample_weight=w)
        np.testing.assert_allclose(pipe[-1].cluster_centers_, fitted.cluster_centers_)
