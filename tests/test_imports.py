from __future__ import annotations

import subprocess
import sys


def test_import_does_not_load_matplotlib_or_sklearn():
    code = (
        "import sys, torchkmeans\n"
        "heavy = [m for m in ('matplotlib', 'sklearn', 'scipy', 'pandas') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_plotting_is_an_attribute_of_the_package_without_loading_matplotlib():
    # README's API table names torchkmeans.plotting; after `import torchkmeans`
    # it raised AttributeError until imported by name.
    code = (
        "import sys, torchkmeans\n"
        "print(callable(torchkmeans.plotting.plot_clusters), 'matplotlib' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True False"


def test_public_surface():
    import torchkmeans

    assert set(torchkmeans.__all__) >= {
        "KMeans",
        "kmeans",
        "lloyd",
        "NotFittedError",
        "ConvergenceWarning",
    }
    assert torchkmeans.__version__.count(".") == 2


def test_top_level_kmeans_is_the_function():
    """``from torchkmeans import kmeans`` (README, ``__all__``) is the function, not the module."""
    import torch

    from torchkmeans import KMeansResult, kmeans
    from torchkmeans.functional import kmeans as functional_kmeans

    assert kmeans is functional_kmeans
    result = kmeans(torch.randn(2, 20, 3, generator=torch.Generator().manual_seed(0)), 2)
    assert isinstance(result, KMeansResult) and result.centroids.shape == (2, 2, 3)
