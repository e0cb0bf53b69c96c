"""torchkmeans: fast, batched K-Means on PyTorch with the scikit-learn API.

>>> import numpy as np
>>> from torchkmeans import KMeans
>>> X = np.array([[0.0, 0.0], [0.0, 1.0], [5.0, 5.0], [5.0, 6.0]])
>>> KMeans(n_clusters=2, random_state=0).fit(X).inertia_
1.0
"""

from __future__ import annotations

__version__ = "0.1.0"

# plotting imports matplotlib only when a function draws: `torchkmeans.plotting`
# (README's API table) works after `import torchkmeans` at no cost.
from . import functional, metrics, plotting
from .elbow import ElbowResult, elbow, find_knee
from .exceptions import ConvergenceWarning, NotFittedError
from .functional import KMeansResult, lloyd, nearest_centroids
from .kmeans import KMeans
from .minibatch import MiniBatchKMeans
from .quantizer import QuantizerOutput, VectorQuantizer

# Importing the submodule torchkmeans.kmeans (the estimators) binds the package's
# name `kmeans` to that module; the public `torchkmeans.kmeans` is the function.
kmeans = functional.kmeans

__all__ = [
    "ConvergenceWarning",
    "ElbowResult",
    "KMeans",
    "KMeansResult",
    "MiniBatchKMeans",
    "NotFittedError",
    "QuantizerOutput",
    "VectorQuantizer",
    "__version__",
    "elbow",
    "find_knee",
    "functional",
    "kmeans",
    "lloyd",
    "metrics",
    "nearest_centroids",
    "plotting",
]
