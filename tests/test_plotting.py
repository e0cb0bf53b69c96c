"""Plots: what ends up on the Axes, PCA projection, lazy matplotlib import."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import tutorial_data

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.markers import MarkerStyle  # noqa: E402

from torchkmeans import plotting  # noqa: E402
from torchkmeans.elbow import elbow  # noqa: E402
from torchkmeans.kmeans import KMeans  # noqa: E402


@pytest.fixture(autouse=True)
def _no_show_and_close(monkeypatch):
    def show(*args, **kwargs):
        raise AssertionError("the library must never call plt.show()")

    monkeypatch.setattr(plt, "show", show)
    yield
    plt.close("all")


def _is_star(collection) -> bool:
    star = MarkerStyle("*")
    expected = star.get_path().transformed(star.get_transform()).vertices
    path = collection.get_paths()[0].vertices
    return path.shape == expected.shape and np.allclose(path, expected)


def test_plot_elbow_marks_the_knee():
    result = elbow(tutorial_data(), k=range(1, 11), random_state=0)
    ax = plotting.plot_elbow(result)
    assert isinstance(ax, matplotlib.axes.Axes)
    curve, knee_line = ax.lines
    np.testing.assert_array_equal(curve.get_xdata(), np.arange(1, 11))
    np.testing.assert_allclose(curve.get_ydata(), result.inertia)
    assert curve.get_marker() == "o"
    assert list(knee_line.get_xdata()) == [result.knee, result.knee]
    assert knee_line.get_linestyle() == "--"
    assert f"k = {result.knee}" in [t.get_text() for t in ax.get_legend().get_texts()][1]
    assert ax.get_xlabel() == "Number of clusters k"


def test_plot_elbow_without_knee_draws_only_the_curve_on_the_given_axes():
    _, ax = plt.subplots()
    result = SimpleNamespace(ks=(1, 2, 3), inertia=torch.tensor([3.0, 2.0, 1.0]), knee=None)
    assert plotting.plot_elbow(result, ax=ax) is ax
    assert len(ax.lines) == 1


def test_result_plot_method_uses_plot_elbow():
    result = elbow(tutorial_data(), k=range(1, 6), random_state=0)
    ax = result.plot()
    assert len(ax.lines) == (2 if result.knee is not None else 1)


def test_plot_clusters_2d_one_colour_per_cluster_and_black_star_centroids():
    X = tutorial_data()
    km = KMeans(n_clusters=4, random_state=0).fit(X)
    ax = plotting.plot_clusters(X, km.labels_, km.cluster_centers_)
    *clusters, centroids = ax.collections
    assert len(clusters) == 4
    assert sum(len(c.get_offsets()) for c in clusters) == 300
    colours = {tuple(c.get_facecolor()[0]) for c in clusters}
    assert len(colours) == 4
    assert _is_star(centroids) and not _is_star(clusters[0])
    np.testing.assert_allclose(centroids.get_facecolor()[0], [0, 0, 0, 1])
    np.testing.assert_allclose(np.asarray(centroids.get_offsets()), km.cluster_centers_)
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("X1", "X2")


def test_plot_clusters_projects_high_dimensional_data_with_pca():
    from sklearn.datasets import load_iris
    from sklearn.decomposition import PCA

    X = load_iris().data
    labels = KMeans(n_clusters=3, random_state=0).fit(X).labels_
    centres = np.stack([X[labels == c].mean(0) for c in range(3)])
    ax = plotting.plot_clusters(torch.tensor(X), torch.tensor(labels), centres)
    assert ax.get_xlabel() == "PC1"
    points = np.concatenate([np.asarray(c.get_offsets()) for c in ax.collections[:3]])
    order = np.concatenate([np.flatnonzero(labels == c) for c in range(3)])
    reference = PCA(n_components=2).fit_transform(X)[order]
    # Same projection up to the sign of each axis.
    for axis in range(2):
        sign = np.sign(points[:, axis] @ reference[:, axis])
        np.testing.assert_allclose(points[:, axis], sign * reference[:, axis], atol=1e-8)
    # The centroids go through the same map: the mean of each cluster's points.
    star = np.asarray(ax.collections[3].get_offsets())
    for c in range(3):
        np.testing.assert_allclose(star[c], np.asarray(ax.collections[c].get_offsets()).mean(0))


def test_plot_clusters_one_feature_and_no_centres():
    ax = plotting.plot_clusters(np.array([[0.0], [1.0], [5.0]]), [0, 0, 1])
    assert len(ax.collections) == 2
    assert np.all(np.asarray(ax.collections[0].get_offsets())[:, 1] == 0)


def test_plot_clusters_errors():
    with pytest.raises(
        ValueError, match=r"Expected labels to be of shape \(3,\), got shape \(2,\)"
    ):
        plotting.plot_clusters(np.zeros((3, 2)), [0, 1])
    with pytest.raises(ValueError, match=r"Expected centers to have 2 features like X, got 3"):
        plotting.plot_clusters(np.zeros((3, 2)), [0, 1, 1], np.zeros((2, 3)))
    with pytest.raises(
        ValueError,
        match=r"Expected centers to be 2-D of shape \(n_clusters, n_features\), got shape \(2,\)\.",
    ):
        plotting.plot_clusters(np.zeros((3, 2)), [0, 1, 1], np.zeros(2))
    # AttributeError: 'dict' object has no attribute 'ks' before.
    with pytest.raises(TypeError, match=r"Expected result to be an ElbowResult .*, got dict\."):
        plotting.plot_elbow({"ks": [1, 2], "inertia": [2.0, 1.0]})


def test_plot_clusters_projects_data_whose_covariance_overflows():
    # Rows ~1e300: the covariance was inf and torch.linalg.eigh failed to converge.
    X = np.random.default_rng(0).normal(size=(30, 3))
    labels = np.arange(30) % 2
    ax = plotting.plot_clusters(X * 1e300, labels, X[:2] * 1e300)
    reference = plotting.plot_clusters(X, labels, X[:2])
    for got, expected in zip(ax.collections, reference.collections):
        np.testing.assert_allclose(got.get_offsets() / 1e300, expected.get_offsets(), rtol=1e-12)


def test_missing_matplotlib_names_the_plot_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    result = SimpleNamespace(ks=(1, 2, 3), inertia=[3.0, 2.0, 1.0], knee=None)
    with pytest.raises(ImportError, match=r'pip install "torchkmeans\[plot\]"'):
        plotting.plot_elbow(result)
    with pytest.raises(ImportError, match=r"torchkmeans\[plot\]"):
        plotting.plot_clusters(np.zeros((3, 2)), [0, 1, 1])


def test_importing_the_new_modules_loads_neither_matplotlib_nor_sklearn():
    code = (
        "import sys, torchkmeans.elbow, torchkmeans.metrics, torchkmeans.plotting\n"
        "print(','.join(m for m in ('matplotlib', 'sklearn') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_given_axes_need_no_pyplot():
    import subprocess
    import sys

    code = (
        "import sys, numpy as np\n"
        "from matplotlib.figure import Figure\n"
        "from torchkmeans.plotting import plot_clusters\n"
        "ax = Figure().add_subplot()\n"
        "plot_clusters(np.random.rand(50, 3), np.arange(50) % 3, np.random.rand(3, 3), ax=ax)\n"
        "print('matplotlib.pyplot' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_plot_clusters_many_clusters_distinct_colours_and_a_short_legend():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 5))
    labels = np.arange(300) % 30
    ax = plotting.plot_clusters(X, torch.tensor(labels), rng.normal(size=(30, 5)))
    *clusters, centroids = ax.collections
    assert len(clusters) == 30 and _is_star(centroids)
    assert len({tuple(c.get_facecolor()[0]) for c in clusters}) == 30
    # 30 entries would cover the points and run off the figure: only the centroids are listed.
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["Centroids"]


@pytest.mark.parametrize(
    ("data", "n_clusters"), [("tutorial", 4), ("tutorial", 20), ("uniform", 8)]
)
def test_plot_clusters_legend_of_its_own_figure_covers_no_point(data, n_clusters):
    # Points that fill the whole frame leave "best" no free corner: inside
    # the axes the legend covered 162 of 2,000 uniform points (and 77 of
    # load_digits' 1,797 projected ones with k=10).
    X = tutorial_data() if data == "tutorial" else np.random.RandomState(0).rand(2000, 2)
    km = KMeans(n_clusters=n_clusters, random_state=0).fit(X)
    ax = plotting.plot_clusters(X, km.labels_, km.cluster_centers_)
    fig = ax.figure
    fig.canvas.draw()
    legend = ax.get_legend().get_window_extent()
    points = np.concatenate([c.get_offsets() for c in ax.collections])
    xy = ax.transData.transform(points)
    inside = (
        (xy[:, 0] >= legend.x0)
        & (xy[:, 0] <= legend.x1)
        & (xy[:, 1] >= legend.y0)
        & (xy[:, 1] <= legend.y1)
    )
    assert not inside.any()
    figure = fig.bbox
    assert figure.x0 <= legend.x0 and legend.x1 <= figure.x1
    assert figure.y0 <= legend.y0 and legend.y1 <= figure.y1
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert texts == [f"Cluster {i}" for i in range(n_clusters)] + ["Centroids"]


def test_plot_clusters_on_given_axes_keeps_the_legend_inside():
    fig, ax = plt.subplots()
    X = tutorial_data()
    km = KMeans(n_clusters=4, random_state=2021).fit(X)
    assert plotting.plot_clusters(X, km.labels_, km.cluster_centers_, ax=ax) is ax
    fig.canvas.draw()
    legend = ax.get_legend().get_window_extent()
    assert ax.get_window_extent().contains((legend.x0 + legend.x1) / 2, (legend.y0 + legend.y1) / 2)


def test_plot_clusters_names_the_axes_after_a_frames_columns():
    pd = pytest.importorskip("pandas")
    X = tutorial_data()
    frame = pd.DataFrame(X, columns=["petal length (cm)", "petal width (cm)"])
    km = KMeans(n_clusters=4, random_state=2021).fit(frame)
    ax = plotting.plot_clusters(frame, km.labels_, km.cluster_centers_)
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("petal length (cm)", "petal width (cm)")
    ax = plotting.plot_clusters(frame[["petal width (cm)"]], km.labels_)
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("petal width (cm)", "")
    for unnamed in (X, pd.DataFrame(X)):
        ax = plotting.plot_clusters(unnamed, km.labels_)
        assert (ax.get_xlabel(), ax.get_ylabel()) == ("X1", "X2")
    wide = pd.DataFrame(np.hstack([X, X[:, :1] ** 2]), columns=["a", "b", "c"])
    ax = plotting.plot_clusters(wide, km.labels_)
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("PC1", "PC2")
