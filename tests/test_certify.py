"""Labels are the nearest centre also where the distance expansion loses its digits.

The scores |c|^2 - 2 x.c round with |x| and |c|, not with the distances: data
far from the origin, heavy tails and far-away clusters all put rows where a
float32 expansion picks the wrong centre (these cases did, before the labels
were certified). Every check is against float64 distances from differences.
"""

from __future__ import annotations

import importlib
from unittest import mock

import numpy as np
import pytest
import torch
from conftest import copies_found_on_the_cpu, needs_per_backend_precision, on_the_cpu_paths_only
from hypothesis import given, settings
from hypothesis import strategies as st

from torchkmeans import KMeans, MiniBatchKMeans
from torchkmeans.functional import _device, _native, kmeans, lloyd, nearest_centroids
from torchkmeans.functional.certify import certify_nearest, product_unit_roundoff, trust_factor

distances_module = importlib.import_module("torchkmeans.functional.distances")


def exact_distances(x, centroids) -> np.ndarray:
    """(n, k) squared distances in float64, from differences."""
    x = np.asarray(x, dtype=np.float64)
    centroids = np.asarray(centroids, dtype=np.float64)
    return ((x[:, None, :] - centroids[None, :, :]) ** 2).sum(-1)


def assert_nearest(x, centroids, labels, distances=None, rtol=2e-6) -> None:
    """Each label's distance is the least, to rtol of it; distances match it."""
    table = exact_distances(x, centroids)
    labels = np.asarray(labels)
    chosen = table[np.arange(len(labels)), labels]
    best = table.min(1)
    scale = np.abs(np.asarray(x, dtype=np.float64)).max() ** 2 * 1e-30
    worst = int(np.argmax(chosen - best))
    assert np.all(chosen <= best * (1 + rtol) + scale), (
        f"row {worst}: label distance {chosen[worst]!r}, nearest {best[worst]!r}"
    )
    if distances is not None:
        np.testing.assert_allclose(np.asarray(distances, dtype=np.float64), chosen, rtol=1e-5)


@pytest.fixture(params=["kernel", "kernel-expansion", "torch"])
def path(request, monkeypatch):
    """The CPU code paths: the fused kernel (where built) as it chooses, the
    kernel's expansion even for small inputs (which it scores from differences,
    see distances._DIFFERENCES_MAX_WORK), and PyTorch ops."""
    if request.param.startswith("kernel") and not _native.available():
        pytest.skip("the fused kernel is not built on this machine")
    if request.param == "kernel-expansion":
        monkeypatch.setattr(distances_module, "_DIFFERENCES_MAX_WORK", 0)
    if request.param == "torch":
        monkeypatch.setattr(_native, "prefers_native", lambda *args, **kwargs: False)
    return request.param


def test_nearest_centroid_of_a_point_far_from_the_origin(path):
    x = torch.tensor([[10000.0, 0.0]])
    centroids = torch.tensor([[10000.5, 0.0], [10000.0, 0.0]])
    result = nearest_centroids(x, centroids)
    assert result.labels.tolist() == [1]
    assert result.distances.tolist() == [0.0]


@pytest.mark.parametrize(("d", "k"), [(2, 10), (32, 10), (32, 200), (300, 40)])
def test_nearest_centroids_of_offset_data(path, d, k):
    generator = torch.Generator().manual_seed(d + k)
    x = torch.randn(3000, d, generator=generator) + 1e4
    centroids = torch.randn(k, d, generator=generator) * 0.3 + 1e4
    result = nearest_centroids(x, centroids)
    assert_nearest(x, centroids, result.labels, result.distances)


@pytest.mark.parametrize("offset", [0.0, 1e4])
def test_a_few_wide_rows_beside_near_ties(path, offset):
    """A small search (n * k * d = 2^20) of very wide rows, every centroid
    about as far from each row: float32 sums of 16,384 squared differences
    round too much for the tolerances here; the expansion's labels hold."""
    generator = torch.Generator().manual_seed(16384)
    x = torch.randn(4, 16384, generator=generator, dtype=torch.float64) + offset
    spread = torch.randn(16, 16384, generator=generator, dtype=torch.float64) * 1e-3
    x, centroids = x.float(), (x.mean(0) + spread).float()
    result = nearest_centroids(x, centroids)
    assert_nearest(x, centroids, result.labels, result.distances)


def test_rows_that_centring_puts_on_their_centre_are_checked(path):
    """float32 rows near 1e5 lie 3e-3 from their centres, below the rounding
    of the centring (ulp(1e5) = 0.008): some centred rows landed on a centre
    not their nearest, at distance 0, which was trusted (hypothesis found
    it: 3 of 300 labels wrong, distances 0 for 2e-5)."""
    generator = torch.Generator().manual_seed(1)
    centres = torch.randn(3, 17, generator=generator) * 1e5
    x = centres[torch.randint(3, (300,), generator=generator)] + 1.0
    x = (x + torch.randn(300, 17, generator=generator) * 1e-3).float()
    centroids = (x[torch.randperm(300, generator=generator)[:3]] + 1e-3 / 3).float()
    result = nearest_centroids(x, centroids)
    assert_nearest(x, centroids, result.labels, result.distances)
    model = KMeans(n_clusters=3, init=centroids.numpy(), n_init=1).fit(x.numpy())
    assert_nearest(x, model.cluster_centers_, model.labels_)
    assert_nearest(x, model.cluster_centers_, model.predict(x.numpy()))


def heavy_tailed(n: int = 4000, seed: int = 0) -> np.ndarray:
    return np.random.RandomState(seed).lognormal(0.0, 2.5, size=(n, 1)).astype(np.float32)


def test_fit_and_predict_on_heavy_tailed_data(path):
    x = heavy_tailed()
    model = KMeans(n_clusters=50, random_state=0).fit(x)
    assert_nearest(x, model.cluster_centers_, model.labels_)
    assert_nearest(x, model.cluster_centers_, model.predict(x))
    table = exact_distances(x, model.cluster_centers_)
    np.testing.assert_allclose(model.inertia_, table.min(1).sum(), rtol=1e-5)
    np.testing.assert_allclose(-model.score(x), table.min(1).sum(), rtol=1e-5)


def test_minibatch_labels_on_heavy_tailed_data(path):
    x = heavy_tailed(seed=1)
    model = MiniBatchKMeans(n_clusters=50, random_state=0, n_init=1).fit(x)
    assert_nearest(x, model.cluster_centers_, model.labels_)
    assert_nearest(x, model.cluster_centers_, model.predict(x))


def test_fit_labels_with_a_far_away_cluster(path):
    rng = np.random.RandomState(0)
    x = np.vstack([rng.uniform(0, 1, size=(400, 1)), 1e4 + rng.uniform(0, 1, size=(5, 1))])
    x = x.astype(np.float32)
    model = KMeans(n_clusters=3, init=np.array([[0.25], [0.75], [1e4]]), n_init=1).fit(x)
    assert_nearest(x, model.cluster_centers_, model.labels_)
    assert_nearest(x, model.cluster_centers_, model.predict(x))
    table = exact_distances(x, model.cluster_centers_)
    np.testing.assert_allclose(model.inertia_, table.min(1).sum(), rtol=1e-5)


@pytest.mark.parametrize("streamed", [False, True])
def test_fit_labels_where_adding_the_mean_back_moves_the_centres(path, streamed, tmp_path):
    # Float32 rows near 1e4, 1e-2 from their centres: the centres are fitted
    # centred on the data's mean, and adding it back rounds them by up to
    # 5e-4 per feature, about the gap between a row's two nearest centres
    # (before: a label not the nearest returned centre on every path, and
    # from a memmap an inertia 9e-4 off; with 150 features, 2000 rows and a
    # spread of 3e-3, about 450 wrong labels on the default path).
    x = (1e4 + np.random.RandomState(0).normal(size=(200, 32)) * 1e-2).astype(np.float32)
    if streamed:
        data = np.memmap(tmp_path / "x.dat", dtype=np.float32, mode="w+", shape=x.shape)
        data[:] = x
        data.flush()
    else:
        data = x
    model = KMeans(n_clusters=4, random_state=0, n_init=1).fit(data)
    assert_nearest(x, model.cluster_centers_, model.labels_)
    table = exact_distances(x, model.cluster_centers_)
    np.testing.assert_allclose(model.inertia_, table.min(1).sum(), rtol=1e-5)


def test_float64_fit_labels_where_adding_the_mean_back_moves_the_centres(path):
    # As above in float64, where the move (1.5e-8 per feature near 1e8) is
    # measured exactly (TwoSum): float64 arithmetic cannot see it by
    # subtracting. Rows 2e-6 from their centres; two problems in one batch
    # (before: a label in the first not the nearest returned centre).
    x = torch.from_numpy(1e8 + np.random.default_rng(0).normal(size=(200, 3)) * 1e-6)
    batch = torch.stack([x, x.flip(0)])
    result = kmeans(batch, 3, n_init=2, generator=torch.Generator().manual_seed(0))
    for problem in range(2):
        assert_nearest(batch[problem], result.centroids[problem], result.labels[problem])
        table = exact_distances(batch[problem], result.centroids[problem])
        np.testing.assert_allclose(float(result.inertia[problem]), table.min(1).sum(), rtol=1e-5)


def test_distances_of_rows_read_again_are_measured_from_the_rows(path):
    # Two float64 rows of 130 features as their own centres: each is read
    # again (its distance is the centring's rounding residue), and its
    # distance was measured between the rows and centres centred on the
    # centres' mean, which rounds them by up to u |x'| (before: distances
    # 5.5e-31 and 2.3e-31 for 4.3e-31 and 1.9e-31, and the fit's inertia
    # 7.9e-31 for 6.2e-31).
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(2, 130)))
    fitted = kmeans(x, 2, n_init=1, generator=torch.Generator().manual_seed(0))
    table = exact_distances(x, fitted.centroids)
    chosen = table[np.arange(2), fitted.labels.numpy()]
    np.testing.assert_allclose(float(fitted.inertia), chosen.sum(), rtol=1e-5)
    result = nearest_centroids(x, fitted.centroids)
    assert_nearest(x, fitted.centroids, result.labels, result.distances)


def test_a_float64_row_between_two_centres_a_few_ulps_away(path):
    # Two centres within 2 ulps of the row in each feature: distances 6.1e-30
    # and 5.5e-30, which the rows' centring on the centres' mean (a rounding
    # of u |x'|) could not tell apart (before: the farther one, in 3 of the
    # first 14 such draws).
    rng = np.random.default_rng(11)
    x = rng.normal(size=(1, 130))
    far = rng.normal(size=(2, 130)) * 3
    near = x + rng.integers(-2, 3, size=(2, 130)) * np.spacing(np.abs(x))
    centroids = torch.from_numpy(np.vstack([far[:1], near, far[1:]]))
    result = nearest_centroids(torch.from_numpy(x), centroids)
    # Relative to the distance itself, below assert_nearest's floor of 1e-30 |x|^2.
    table = exact_distances(x, centroids)[0]
    assert table[int(result.labels[0])] <= table.min() * (1 + 2e-6)
    np.testing.assert_allclose(float(result.distances[0]), table.min(), rtol=1e-5)


def test_float64_labels_beside_an_extreme_outlier(path):
    x = np.array([[0.0], [1.0], [3e8]])
    model = KMeans(n_clusters=3, init=x, n_init=1, max_iter=1).fit(x)
    assert model.labels_.tolist() == [0, 1, 2]
    assert model.inertia_ == 0.0
    assert model.predict(np.array([[0.49], [0.51]])).tolist() == [0, 1]


@pytest.mark.parametrize("paths", ["host", "accelerator"])
def test_distances_of_settled_rows_keep_the_trusted_precision(paths, torch_ops_only, request):
    # Two centroids 512 apart, float32 rows 4.1-4.3 outside each: centred on
    # the centroids' mean, rows and centroids lie just above 256, each
    # rounded by up to 2^-24 of that, and |x'| / sqrt(D) is about 62. Elkan's
    # bound settles every label, but the centring's rounding of the distance
    # reaches 1.6 times the trusted 2^-17 of it (1.2e-5; the host settled all
    # rows at once, the accelerator row by row): such rows are measured again.
    if paths == "accelerator":
        request.getfixturevalue("accelerator_paths")
    generator = torch.Generator().manual_seed(0)
    centroids = torch.tensor([[0.0], [512.0]]) + torch.rand(2, 1, generator=generator)
    side = torch.tensor([[-1.0], [1.0]]).repeat(200, 1)
    x = centroids[torch.arange(2).repeat(200)]
    x = x + side * (4.1 + torch.rand(400, 1, generator=generator) * 0.2)
    result = nearest_centroids(x, centroids)
    table = exact_distances(x, centroids)
    assert result.labels.tolist() == [0, 1] * 200
    np.testing.assert_allclose(result.distances.double(), table.min(1), rtol=2.0**-17)


@settings(max_examples=40, deadline=None)
@given(
    shift_exponent=st.floats(0.0, 5.0),
    cluster_exponent=st.floats(0.0, 5.0),
    spread_exponent=st.floats(-3.0, 1.0),
    d=st.sampled_from([1, 2, 5, 17, 64]),
    k=st.integers(1, 40),
    seed=st.integers(0, 2**16),
)
@pytest.mark.parametrize("differences_max_work", [distances_module._DIFFERENCES_MAX_WORK, 0])
def test_labels_are_nearest_whatever_the_offset_and_spread(
    differences_max_work, shift_exponent, cluster_exponent, spread_exponent, d, k, seed
):
    generator = torch.Generator().manual_seed(seed)
    spread = 10.0**spread_exponent
    # Clusters at very different distances from each other and from the
    # origin: some rows sit far from the data's mean and close to several centres.
    centres = torch.randn(k, d, generator=generator) * 10.0**cluster_exponent
    x = centres[torch.randint(k, (300,), generator=generator)] + 10.0**shift_exponent
    x = (x + torch.randn(300, d, generator=generator) * spread).float()
    centroids = (x[torch.randperm(300, generator=generator)[:k]] + spread / 3).float()
    with mock.patch.object(distances_module, "_DIFFERENCES_MAX_WORK", differences_max_work):
        result = nearest_centroids(x, centroids)
        fitted = lloyd(x, centroids, max_iter=3)
    # Off the host no row is scored from differences: labels are trusted to
    # the precision the module docstring gives (2^-17 of the distance).
    rtol = 2e-6 if _device.on_host(x.device) else 2.0**-17
    assert_nearest(x, centroids, result.labels, result.distances, rtol=rtol)
    assert_nearest(x, fitted.centroids, fitted.labels, rtol=rtol)
    table = exact_distances(x, fitted.centroids)
    np.testing.assert_allclose(float(fitted.inertia), table.min(1).sum(), rtol=1e-5, atol=1e-30)


def test_certify_counts_only_the_rows_it_checks_again():
    x = torch.tensor([[[0.0, 0.0], [10000.0, 0.0]]])
    c = torch.tensor([[[0.0, 0.0], [10000.5, 0.0], [10000.0, 0.0]]])
    labels = torch.tensor([[0, 1]])
    distances = torch.tensor([[0.0, 0.25]])
    assert certify_nearest(x, c, labels, distances) == 1
    assert labels.tolist() == [[0, 2]]
    assert distances.tolist() == [[0.0, 0.0]]


def test_certify_uses_elkan_bound_for_many_rows_and_keeps_inactive_centroids_out():
    # 600 rows around two centres far from the origin, labelled correctly: the
    # rows outnumber the centroids, so Elkan's bound settles them all, and the
    # masked third centroid (the rows' true nearest) is never chosen.
    generator = torch.Generator().manual_seed(0)
    centres = torch.tensor([[1e5, 0.0], [1e5, 10.0], [1e5, 0.1]])
    x = centres[:2].repeat(300, 1) + torch.randn(600, 2, generator=generator) * 0.5
    labels = torch.arange(2).repeat(300).unsqueeze(0)
    distances = ((x - centres[labels[0]]) ** 2).sum(-1).unsqueeze(0)
    active = torch.tensor([[True, True, False]])
    assert certify_nearest(x[None], centres[None], labels, distances, active=active) == 0
    assert labels.tolist() == [[0, 1] * 300]
    # Unmasked, the third centroid is within 0.1 of the first: the bound
    # settles only the rows of the second, and the others are read again.
    read = certify_nearest(x[None], centres[None], labels, distances)
    assert read == 300
    nearest = ((x[:, None] - centres[None]) ** 2).sum(-1).argmin(1)
    assert labels[0].tolist() == nearest.tolist()


@on_the_cpu_paths_only
def test_certify_uses_elkan_bound_for_fewer_rows_than_centroids():
    # Three float64 rows 1e-9 from their centres, far from the origin: few
    # suspects among many centroids (MiniBatchKMeans at k = n/4) are settled
    # by the gaps of their own centres, not read again against all of them.
    generator = torch.Generator().manual_seed(0)
    centres = 100.0 + torch.randn(40, 8, generator=generator, dtype=torch.float64)
    x = centres[[3, 17, 29]] + 1e-9
    labels = torch.tensor([[3, 17, 29]])
    distances = ((x - centres[labels[0]]) ** 2).sum(-1).unsqueeze(0)
    assert certify_nearest(x[None], centres[None], labels, distances) == 0
    assert labels.tolist() == [[3, 17, 29]]
    # A duplicate of the second row's centre leaves its gap 0: it alone is read.
    twin = torch.cat([centres, centres[17:18]])
    assert certify_nearest(x[None], twin[None], labels, distances) == 1
    assert labels.tolist() == [[3, 17, 29]]


@on_the_cpu_paths_only
def test_predict_again_with_the_same_centres_reuses_their_gaps(monkeypatch):
    # Rows near their centres, far from the origin: Elkan's bound settles
    # them, from the gaps between centres, a product over all of them that
    # had cost as much as the labels (k=1024, d=384). The same centres again
    # reuse the gaps; a moved centre (in place) has its own measured again.
    from torchkmeans.functional import certify

    asked = []
    half_gaps = certify._half_gaps_squared
    monkeypatch.setattr(
        certify,
        "_half_gaps_squared",
        lambda c, active, index=None: (
            asked.append(c.shape[0] if index is None else index.numel())
            or half_gaps(c, active, index)
        ),
    )
    generator = torch.Generator().manual_seed(0)
    centres = 1e3 + torch.randn(300, 32, generator=generator)
    x = centres.repeat(2, 1) + 0.01 * torch.randn(600, 32, generator=generator)
    model = KMeans(n_clusters=300, init=centres.numpy(), n_init=1, max_iter=1).fit(x.numpy())
    model.cluster_centers_ = centres.numpy()
    asked.clear()
    np.testing.assert_array_equal(model.predict(x.numpy()), np.tile(np.arange(300), 2))
    assert asked == [300]
    np.testing.assert_array_equal(model.predict(x.numpy()[::-1]), np.tile(np.arange(300), 2)[::-1])
    assert asked == [300]
    # Centre 7 moved onto the rows of centre 8: they are now labelled 7.
    moved = centres.clone()
    moved[7] = x[8]
    model.cluster_centers_ = moved.numpy()
    labels = model.predict(x.numpy())
    assert labels[8] == 7 and asked[1:] and sum(asked[1:]) <= 300
    assert_nearest(x, moved, labels)
    centres_tensor = moved.clone()
    nearest_centroids(x, centres_tensor)
    count = len(asked)
    centres_tensor[3] += 5.0  # in place: the same tensor, other values
    assert_nearest(x, centres_tensor, nearest_centroids(x, centres_tensor).labels)
    assert len(asked) > count


@on_the_cpu_paths_only
def test_predict_again_settles_every_row_at_once_without_finding_suspects(monkeypatch):
    """Tight clusters far from the centres' mean, predicted twice with the
    same centres: the second call has every gap remembered, and Elkan's
    bound on the largest distance settles every label before any row is
    tested as a suspect (those masks were a tenth of the call). A row far
    from every centre still goes through the row-by-row checks."""
    from torchkmeans.functional import certify

    asked = []
    suspects = certify.suspects
    monkeypatch.setattr(certify, "suspects", lambda *a, **kw: asked.append(1) or suspects(*a, **kw))
    generator = torch.Generator().manual_seed(0)
    centres = 20.0 * torch.rand(8, 256, generator=generator) - 10.0
    x = centres.repeat(125, 1) + 0.1 * torch.randn(1000, 256, generator=generator)
    model = KMeans(n_clusters=8, init=centres.numpy(), n_init=1, max_iter=1).fit(x.numpy())
    model.cluster_centers_ = centres.numpy()
    model.predict(x.numpy())
    asked.clear()
    labels = model.predict(x.numpy())
    assert not asked
    np.testing.assert_array_equal(labels, np.tile(np.arange(8), 125))
    score = model.score(x.numpy())
    assert not asked
    exact = exact_distances(x, centres)[np.arange(1000), labels].sum()
    np.testing.assert_allclose(-score, exact, rtol=1e-6)
    far = x.clone()
    far[3] = centres.mean(0)
    assert_nearest(far, centres, model.predict(far.numpy()))
    assert asked


def test_predict_and_score_do_not_measure_any_row_again(monkeypatch, path):
    # Duplicated rows, each a few ulps from its centre (centres from another
    # fit, or the means' rounding): every row is suspect and settled by
    # Elkan's bound. Measured between centred rows and centres, every
    # distance was imprecise: predict, which uses them only to test for
    # overflow, had measured them all again from x (3.6-5.5x scikit-learn's
    # time on 60,000 duplicated rows), and score still did (1.5-3.7x). They
    # are measured from x and the centres as given in the search itself.
    # Enough rows that the search is not one from differences (exact,
    # nothing to certify).
    reads = []
    certify = distances_module.certify_nearest
    monkeypatch.setattr(
        distances_module,
        "certify_nearest",
        lambda *args, **kwargs: reads.append(certify(*args, **kwargs)) or reads[-1],
    )
    generator = torch.Generator().manual_seed(0)
    points = 1e3 + torch.randn(8, 40, generator=generator, dtype=torch.float64)
    x = points.repeat(1000, 1).numpy()
    centres = (points * (1 + 2.0**-50)).numpy()
    assert (centres != points.numpy()).any(1).all()
    model = KMeans(n_clusters=8, init=centres, n_init=1, max_iter=1).fit(x)
    model.cluster_centers_ = centres
    table = exact_distances(x, centres)
    reads.clear()
    np.testing.assert_array_equal(model.predict(x), table.argmin(1))
    assert reads == [0]
    score = model.score(x)
    assert reads[1] == 0
    np.testing.assert_allclose(-score, table.min(1).sum(), rtol=1e-9)


@on_the_cpu_paths_only
def test_predict_of_tight_clusters_takes_every_gap_at_once_and_no_row_again(monkeypatch):
    """Tight clusters far from the centres' mean: every row is a suspect and
    Elkan's bound settles them all. The gaps of all centres come from one
    product (finding the labels involved, a sort of 20,000 of them, had cost
    more), and no row is read again: the distances come from x and the
    centres as given, where centring had made 1,665 of 20,000 imprecise
    (measured again: predict 1.9x scikit-learn's time, score 2.6-7.7x)."""
    from torchkmeans.functional import certify

    asked = []
    half_gaps = certify._half_gaps_squared
    monkeypatch.setattr(
        certify,
        "_half_gaps_squared",
        lambda c, active, index=None: asked.append(index) or half_gaps(c, active, index),
    )
    reads = []
    certify_nearest_ = distances_module.certify_nearest
    monkeypatch.setattr(
        distances_module,
        "certify_nearest",
        lambda *a, **kw: reads.append(certify_nearest_(*a, **kw)) or reads[-1],
    )
    generator = torch.Generator().manual_seed(0)
    centres = 20.0 * torch.rand(8, 64, generator=generator) - 10.0
    x = centres.repeat(500, 1) + 0.1 * torch.randn(4000, 64, generator=generator)
    model = KMeans(n_clusters=8, init=centres.numpy(), n_init=1, max_iter=1).fit(x.numpy())
    model.cluster_centers_ = centres.numpy()
    certify._known_gaps.clear()
    asked.clear()
    reads.clear()
    labels = model.predict(x.numpy())
    assert len(asked) == 1 and asked[0] is None
    assert reads == [0]
    assert_nearest(x, centres, labels)
    np.testing.assert_array_equal(labels, np.tile(np.arange(8), 500))
    reads.clear()
    score = model.score(x.numpy())
    assert reads == [0]
    exact = exact_distances(x, centres)[np.arange(4000), labels].sum()
    np.testing.assert_allclose(-score, exact, rtol=1e-6)


@on_the_cpu_paths_only
def test_tight_clusters_are_settled_at_once_and_a_far_row_still_row_by_row(monkeypatch):
    """Every row within half the least gap between centres (with the error of
    the centring): Elkan's bound settles them all from two reductions, with
    no pass row by row (0.15 ms of a 0.8 ms predict on 20,000 rows). One row
    labelled wrongly, far from its centre, fails that test: the rows are
    checked one by one again, and it is relabelled. (Labels only: with the
    distances wanted precise, those the centring made imprecise are measured
    again.)"""
    from torchkmeans.functional import certify

    generator = torch.Generator().manual_seed(0)
    centres = 20.0 * torch.rand(8, 64, generator=generator) - 10.0
    x = centres.repeat(500, 1) + 0.1 * torch.randn(4000, 64, generator=generator)
    offset = centres.mean(0)
    norms = (x - offset).square().sum(-1)[None]
    labels = torch.arange(8).repeat(500)[None]
    distances = (x - centres[labels[0]]).square().sum(-1)[None]
    picked = []
    picked_ = certify._picked
    monkeypatch.setattr(certify, "_picked", lambda *a: picked.append(1) or picked_(*a))
    got = labels.clone()
    read = certify_nearest(
        x[None],
        centres[None],
        got,
        distances.clone(),
        frame_squared_norms=norms,
        centred=True,
        precise=False,
    )
    assert read == 0 and torch.equal(got, labels) and not picked
    # Distances wanted precise: those the centring made imprecise are
    # measured again (row by row), the labels stay.
    got = labels.clone()
    read = certify_nearest(
        x[None], centres[None], got, distances.clone(), frame_squared_norms=norms, centred=True
    )
    assert read > 0 and torch.equal(got, labels)
    picked.clear()
    # Centre 6 moved 0.5 from centre 5, and row 5 put 0.24 from centre 5 but
    # labelled 6 (0.26 away), as a rounding far from the origin might: the
    # largest distance exceeds half the least gap, and the rows are checked
    # one by one, where row 5 gets centre 5 (and the rows of the two clusters
    # that their noise puts nearer the other centre, the other).
    near = centres.clone()
    near[6] = near[5] + 0.5 * torch.eye(64)[0]
    y = x.clone()
    y[6::8] = near[6] + (x[6::8] - centres[6])
    y[5] = near[5] + 0.24 * torch.eye(64)[0]
    wrong = labels.clone()
    wrong[0, 5] = 6
    y_distances = (y - near[wrong[0]]).square().sum(-1)[None]
    y_norms = (y - near.mean(0)).square().sum(-1)[None]
    read = certify_nearest(
        y[None], near[None], wrong, y_distances, frame_squared_norms=y_norms, centred=True
    )
    assert picked and read >= 1 and wrong[0, 5] == 5
    assert_nearest(y, near, wrong[0])
    torch.testing.assert_close(y_distances[0, 5], torch.tensor(0.24**2), rtol=1e-5, atol=0.0)


@on_the_cpu_paths_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rows_that_are_centroids_are_settled_without_scoring(monkeypatch, dtype):
    # Centroids drawn from the rows, far from the origin: the rows that are
    # centroids are at distance 0 after the centring, suspect, and equal to
    # their centre in x itself, where nothing can be nearer. Neither the
    # centroids' gaps nor the rows' scores against all of them are needed.
    from torchkmeans.functional import certify

    def fail(*args, **kwargs):
        raise AssertionError("scored again")

    monkeypatch.setattr(certify, "_half_gaps_squared", fail)
    monkeypatch.setattr(certify, "_relabel", fail)
    generator = torch.Generator().manual_seed(0)
    x = (1e3 + torch.randn(2000, 64, generator=generator, dtype=torch.float64)).to(dtype)
    centroids = x[:200:2].clone()
    result = nearest_centroids(x, centroids)
    assert result.labels[:200:2].tolist() == list(range(100))
    assert result.distances[:200:2].tolist() == [0.0] * 100
    table = (x.double()[:, None] - centroids.double()[None]).square().sum(-1)
    assert torch.equal(result.labels, table.argmin(1))


def test_half_precision_nearest_centroids_is_computed_in_float32():
    generator = torch.Generator().manual_seed(0)
    x = (torch.randn(2000, 8, generator=generator) * 3).half()
    centroids = (torch.randn(30, 8, generator=generator) * 3).half()
    result = nearest_centroids(x, centroids)
    assert result.distances.dtype == torch.float32
    assert_nearest(x.float(), centroids.float(), result.labels, result.distances)
    big = nearest_centroids(torch.full((3, 2), 15000.0).half(), torch.zeros(1, 2).half())
    assert torch.isfinite(big.distances).all()


# ------------------------------------------------- reduced float32 matmul precision


@needs_per_backend_precision
def test_product_unit_roundoff_follows_the_matmul_precision(matmul_precision):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert product_unit_roundoff(torch.float32, cpu) == 2.0**-24
    assert product_unit_roundoff(torch.float32, cuda) == 2.0**-24
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    assert product_unit_roundoff(torch.float32, cuda) == 2.0**-11
    assert product_unit_roundoff(torch.float32, cpu) == 2.0**-24
    assert product_unit_roundoff(torch.float64, cuda) == 2.0**-53
    torch.backends.mkldnn.matmul.fp32_precision = "bf16"
    assert product_unit_roundoff(torch.float32, cpu) == 2.0**-8
    torch.set_float32_matmul_precision("high")
    assert product_unit_roundoff(torch.float32, cuda) == 2.0**-11
    torch.set_float32_matmul_precision("highest")
    assert product_unit_roundoff(torch.float32, cuda) == 2.0**-24
    assert product_unit_roundoff(torch.float32, cpu) == 2.0**-24
    # Below the trusted precision no label is trusted by its size alone.
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    assert trust_factor(torch.float32, cuda) == 0.0
    assert trust_factor(torch.float32, cpu) > 100.0


@needs_per_backend_precision
def test_labels_are_nearest_when_float32_products_run_in_bfloat16(bfloat16_products):
    """torch.set_float32_matmul_precision("medium") lets a CPU with bfloat16
    units multiply in bfloat16, as "high" lets a GPU multiply in TF32: the
    labels of PyTorch's path were wrong (102 of 20,000 rows here) until the
    check took the products' precision into account."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(20000, 64, generator=generator)
    centroids = torch.randn(100, 64, generator=generator) * 0.3
    with mock.patch.object(_native, "prefers_native", lambda *args, **kwargs: False):
        result = nearest_centroids(x, centroids)
        model = KMeans(n_clusters=100, random_state=0, n_init=1).fit(x)
        predicted = model.predict(x)
    assert_nearest(x, centroids, result.labels, result.distances)
    assert_nearest(x, model.cluster_centers_, model.labels_)
    assert_nearest(x, model.cluster_centers_, predicted)
    table = exact_distances(x, model.cluster_centers_)
    np.testing.assert_allclose(model.inertia_, table.min(1).sum(), rtol=1e-6)


@copies_found_on_the_cpu
@pytest.mark.parametrize("active", [False, True])
def test_rows_scored_again_go_to_the_first_copy_of_a_centroid(active):
    # float32 rows near two copies of a centroid, read again (|x| >> their
    # distance): the float64 product scored the copies a rounding apart and
    # sent 167 of 400 rows to the second copy, unlike every other path.
    rng = np.random.default_rng(0)
    centroids = torch.tensor(10 * rng.standard_normal((6, 130)), dtype=torch.float32)
    centroids[2] = centroids[4] = centroids[0]
    x = centroids[0] + torch.tensor(0.1 * rng.standard_normal((400, 130)), dtype=torch.float32)
    labels, distances = nearest_centroids(x, centroids)
    assert_nearest(x, centroids, labels, distances)
    assert set(labels.tolist()) == {0}
    # Labelled the last copy, rows go to the first active one.
    mask = torch.ones(1, 6, dtype=torch.bool)
    mask[0, 0] = not active
    labels = torch.full((1, 400), 4)
    found = torch.tensor(exact_distances(x, centroids)[np.arange(400), labels[0]])[None]
    found = found.to(torch.float32)
    certify_nearest(x[None], centroids[None], labels, found, active=mask)
    assert set(labels[0].tolist()) == ({2} if active else {0})


@on_the_cpu_paths_only
def test_gaps_remembered_in_inference_mode_are_filled_in_outside_it(torch_ops_only):
    """predict under torch.inference_mode (a model's evaluation), then outside
    it with the same centres: the gaps remembered from the first call were an
    inference tensor, and filling in more of them raised "Inplace update to
    inference tensor outside InferenceMode is not allowed"."""
    from torchkmeans.functional import certify

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(256, 32)) * 0.01 + 1e4
    x = (centres[rng.integers(0, 256, 20000)] + rng.normal(size=(20000, 32)) * 1e-4).astype(
        np.float32
    )
    model = KMeans(n_clusters=256, init=centres.astype(np.float32), n_init=1, max_iter=2).fit(x)
    certify._known_gaps.clear()
    with torch.inference_mode():
        first = model.predict(x[:20])
    # Rows far from the origin, fewer than the centres: some gaps are known.
    assert len(certify._known_gaps) == 1 and bool(certify._known_gaps[0][2].isnan().any())
    second = model.predict(x[20:60])
    np.testing.assert_array_equal(np.concatenate([first, second]), model.predict(x[:60]))


@on_the_cpu_paths_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rows_shared_by_near_copies_are_scored_again_by_the_fused_kernel(monkeypatch, dtype):
    # Tight clusters far from the centres' mean, each shared by near-copies of
    # its centre (and one exact copy): every row is a suspect that Elkan's
    # bound cannot settle. They are scored again from differences by the
    # fused kernel (float32 rows of 64 features in float32), in one pass (the
    # float64 product and its ops around took 3-7x its time), ties to the
    # first copy, inactive centroids never chosen.
    if not _native.available():
        pytest.skip("the fused kernel is not built on this machine")
    calls = []
    kernel = _native.nearest

    def counted(*args, **kwargs):
        calls.append(kwargs.get("differences", False) and args[0].dtype == dtype)
        return kernel(*args, **kwargs)

    monkeypatch.setattr(_native, "nearest", counted)
    generator = torch.Generator().manual_seed(0)
    # float64 rows are suspects only much farther out.
    spread = 10.0 if dtype == torch.float32 else 1e6
    blobs = torch.randn(4, 64, generator=generator, dtype=torch.float64) * spread
    centroids = blobs.repeat_interleave(4, 0)
    centroids += torch.randn(16, 64, generator=generator, dtype=torch.float64) * 0.02
    centroids[5] = centroids[4]
    x = blobs.repeat(512, 1) + torch.randn(2048, 64, generator=generator, dtype=torch.float64) * 0.1
    x, centroids = x.to(dtype), centroids.to(dtype)
    result = nearest_centroids(x, centroids)
    assert any(calls)
    table = torch.tensor(exact_distances(x, centroids))
    assert torch.equal(result.labels, table.argmin(1))
    assert 4 in result.labels.tolist() and 5 not in result.labels.tolist()
    torch.testing.assert_close(
        result.distances.double(),
        table.min(1).values,
        rtol=2e-6 if dtype == torch.float32 else 1e-12,
        atol=0.0,
    )
    # Every other centroid masked out (4, not its copy 5): rows labelled the
    # last copy of their blob's centre go to the nearest active one.
    active = torch.ones(1, 16, dtype=torch.bool)
    active[0, 0::2] = False
    labels = (torch.arange(2048) % 4 * 4 + 3)[None]
    distances = table.gather(1, labels.T).T.to(dtype).contiguous()
    certify_nearest(x[None], centroids[None], labels, distances, active=active)
    assert torch.equal(labels[0], table.masked_fill(~active, float("inf")).argmin(1))


@on_the_cpu_paths_only
def test_float32_rows_of_up_to_128_features_are_scored_again_in_float32_at_any_k(monkeypatch):
    # float32 rows of 65-128 features against k * d > 2^14 centroids went to
    # the float64 product and its second pass (1.8-3x the time of the
    # kernel's float32 differences: 900 rows, d=72-128, k=256-4,096), though
    # their float32 sums of squared differences are within the trusted
    # precision at any k.
    if not _native.available():
        pytest.skip("the fused kernel is not built on this machine")
    calls = []
    kernel = _native.nearest

    def counted(*args, **kwargs):
        calls.append(kwargs.get("differences", False) and args[0].dtype == torch.float32)
        return kernel(*args, **kwargs)

    monkeypatch.setattr(_native, "nearest", counted)
    generator = torch.Generator().manual_seed(0)
    blobs = torch.randn(4, 100, generator=generator, dtype=torch.float64) * 10.0
    centroids = blobs.repeat_interleave(64, 0)
    centroids += torch.randn(256, 100, generator=generator, dtype=torch.float64) * 0.02
    x = blobs.repeat(128, 1) + torch.randn(512, 100, generator=generator, dtype=torch.float64) * 0.1
    x, centroids = x.float(), centroids.float()
    result = nearest_centroids(x, centroids)
    assert any(calls)
    table = torch.tensor(exact_distances(x, centroids))
    assert torch.equal(result.labels, table.argmin(1))
    torch.testing.assert_close(result.distances.double(), table.min(1).values, rtol=2e-6, atol=0.0)
