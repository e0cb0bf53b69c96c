"""Figures: the elbow curve with its knee, and clusters with their centroids.

matplotlib is an optional dependency (the ``plot`` extra): it is imported
inside the functions, so ``import torchkmeans`` never loads it. The functions
draw on an Axes and return it; showing or saving the figure is left to the
caller (the library never calls ``plt.show()``).
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np
import torch

from . import _validation as v

__all__ = ["plot_clusters", "plot_elbow"]

# Clusters named in the legend (one colour of tab10/tab20 each) up to this many.
_MAX_NAMED_CLUSTERS = 20


def _matplotlib(module: str = "matplotlib") -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            "Plotting needs matplotlib, which is not installed; install it with "
            'pip install "torchkmeans[plot]".'
        ) from exc


def _axes(ax: Any, **figure: Any) -> Any:
    """``ax``, or new axes from pyplot (imported only then: a given ``ax`` needs no backend)."""
    _matplotlib()
    if ax is None:
        _, ax = _matplotlib("matplotlib.pyplot").subplots(**figure)
    return ax


def _numpy(values: Any) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().double().numpy()
    return np.asarray(values, dtype=np.float64)


def plot_elbow(result: Any, ax: Any = None) -> Any:
    """Inertia against k, with the knee marked by a dashed vertical line.

    Parameters
    ----------
    result : ElbowResult
        From :func:`torchkmeans.elbow` (anything with ``ks``, ``inertia``
        and ``knee`` attributes).
    ax : matplotlib.axes.Axes, optional
        Where to draw; a new figure when None.

    Returns
    -------
    matplotlib.axes.Axes

    Raises
    ------
    ImportError
        If matplotlib is not installed.
    TypeError
        If ``result`` has no ``ks`` or ``inertia``.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> from types import SimpleNamespace
    >>> result = SimpleNamespace(ks=(1, 2, 3, 4), inertia=[9.0, 3.0, 1.0, 0.8], knee=3)
    >>> ax = plot_elbow(result)
    >>> ax.get_xlabel(), len(ax.lines)
    ('Number of clusters k', 2)
    """
    if not all(hasattr(result, name) for name in ("ks", "inertia")):
        raise TypeError(
            "Expected result to be an ElbowResult (with ks, inertia and knee), "
            f"got {type(result).__name__}."
        )
    ax = _axes(ax)
    ks = [int(k) for k in result.ks]
    inertia = _numpy(result.inertia)
    ax.plot(ks, inertia, "o-", color="C0", label="inertia")
    knee = getattr(result, "knee", None)
    if knee is not None:
        ax.axvline(knee, color="C3", linestyle="--", label=f"knee: k = {knee}")
    ax.set_xlabel("Number of clusters k")
    ax.set_ylabel("Inertia (within-cluster sum of squares)")
    ax.set_title("Elbow method")
    ax.set_xticks(ks if len(ks) <= 25 else ks[:: int(np.ceil(len(ks) / 25))])
    ax.legend()
    return ax


def project_2d(x: torch.Tensor, *others: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Project ``x`` ``(n, d)`` (and ``others`` with the same map) onto its 2 principal axes.

    PCA by an eigendecomposition of the ``d x d`` covariance, in float64;
    each axis is signed so that its largest coefficient is positive, which
    makes the picture deterministic.
    """
    data = x.to(torch.float64)
    mean = data.mean(0)
    centred = data - mean
    # The axes do not depend on the scale: on data scaled to at most 1 the
    # covariance of values ~1e300 stays finite (eigh failed to converge on inf).
    centred = centred / centred.abs().max().clamp_min(torch.finfo(torch.float64).tiny)
    covariance = centred.T @ centred / max(1, data.shape[0] - 1)
    _, vectors = torch.linalg.eigh(covariance)
    axes = vectors[:, [-1, -2]] if vectors.shape[1] >= 2 else vectors
    largest = axes.gather(0, axes.abs().argmax(0, keepdim=True))
    axes = axes * torch.where(largest < 0, -1.0, 1.0)
    return tuple((t.to(torch.float64) - mean) @ axes for t in (x, *others))


def plot_clusters(X: Any, labels: Any, centers: Any = None, ax: Any = None) -> Any:
    """Scatter the samples coloured by cluster, and the centroids as black stars.

    Data with more than 2 features is projected onto its first two
    principal components (PCA computed by torch); the centroids go through
    the same projection.

    Parameters
    ----------
    X : array-like or Tensor of shape (n_samples, n_features)
        The axes are named after a data frame's string column names, else X1 and X2
        (PC1 and PC2 when projected).
    labels : array-like or Tensor of shape (n_samples,)
        Cluster index of every sample.
    centers : array-like or Tensor of shape (n_clusters, n_features), optional
        Drawn as black stars.
    ax : matplotlib.axes.Axes, optional
        Where to draw; when None, a new figure with the legend to the right
        of the axes (on given axes it goes inside, where it covers the
        fewest points).

    Returns
    -------
    matplotlib.axes.Axes
        One scatter collection per cluster, then one for the centroids. The
        legend names each cluster when there are at most 20, else only the
        centroids.

    Raises
    ------
    ImportError
        If matplotlib is not installed.
    ValueError
        If the shapes of ``X``, ``labels`` and ``centers`` do not match.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> X = np.array([[0.0, 0.0], [0.0, 1.0], [5.0, 5.0], [5.0, 6.0]])
    >>> ax = plot_clusters(X, [0, 0, 1, 1], centers=[[0.0, 0.5], [5.0, 5.5]])
    >>> len(ax.collections)  # two clusters and the centroids
    3
    """
    x, _ = v.as_tensor(X, "X")
    label_array = np.asarray(labels.detach().cpu() if isinstance(labels, torch.Tensor) else labels)
    if label_array.shape != (x.shape[0],):
        raise ValueError(
            f"Expected labels to be of shape ({x.shape[0]},), got shape {label_array.shape}."
        )
    centres = None
    if centers is not None:
        centres, _ = v.as_tensor(
            centers, "centers", device=x.device, shape="(n_clusters, n_features)"
        )
        if centres.shape[1] != x.shape[1]:
            raise ValueError(
                f"Expected centers to have {x.shape[1]} features like X, got {centres.shape[1]}."
            )
    own_figure = ax is None
    # A figure of its own makes room for the legend beside the axes (see below).
    ax = _axes(ax, layout="constrained") if own_figure else ax
    projected = x.shape[1] > 2
    if projected:
        points, *rest = project_2d(x, *(() if centres is None else (centres,)))
        centre_points = rest[0] if rest else None
    else:
        points = x.to(torch.float64)
        centre_points = None if centres is None else centres.to(torch.float64)
        if x.shape[1] == 1:
            # One feature: spread the points along x, on the line y = 0.
            points = torch.cat([points, torch.zeros_like(points)], 1)
            if centre_points is not None:
                centre_points = torch.cat([centre_points, torch.zeros_like(centre_points)], 1)
    xy = points.cpu().numpy()
    clusters = np.unique(label_array)
    colormaps = _matplotlib().colormaps
    # Past tab20's colours, evenly spaced ones of a continuous map (tab20 would
    # repeat them), and no legend entry per cluster: a column of more than 20
    # would cover the points and run off the figure.
    named = len(clusters) <= _MAX_NAMED_CLUSTERS
    if named:
        cmap = colormaps["tab10" if len(clusters) <= 10 else "tab20"]
        colours = [cmap(i) for i in range(len(clusters))]
    else:
        colours = list(colormaps["turbo"](np.linspace(0.0, 1.0, len(clusters))))
    for cluster, colour in zip(clusters, colours):
        member = label_array == cluster
        ax.scatter(
            xy[member, 0],
            xy[member, 1],
            s=20,
            color=colour,
            label=f"Cluster {cluster}" if named else None,
        )
    if centre_points is not None:
        c = centre_points.cpu().numpy()
        ax.scatter(c[:, 0], c[:, 1], s=250, c="black", marker="*", label="Centroids")
    # A data frame's own column names say what the axes are (X1, X2 do not);
    # names that are not all strings (a frame's default 0, 1) are not used,
    # as scikit-learn takes no feature_names_in_ from them.
    columns = list(getattr(X, "columns", []))
    names = columns if columns and all(isinstance(c, str) for c in columns) else ["X1", "X2"]
    ax.set_xlabel("PC1" if projected else names[0])
    ax.set_ylabel("PC2" if projected else (names[1] if x.shape[1] == 2 else ""))
    if named or centre_points is not None:
        if own_figure:
            # Inside the axes, where points fill the whole frame (stripes,
            # blobs in every corner), "best" still covers some of them.
            ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0))
        else:
            ax.legend(fontsize="small")
    return ax
