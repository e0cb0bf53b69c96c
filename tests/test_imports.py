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
