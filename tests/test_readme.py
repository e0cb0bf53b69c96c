"""The README's quickstart runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib
import numpy as np
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_quickstart_runs_and_gives_the_tutorial_fit(tmp_path, monkeypatch):
    matplotlib.use("Agg")
    monkeypatch.chdir(tmp_path)
    quickstart = python_blocks()[0]
    assert "KMeans(n_clusters=4" in quickstart
    namespace: dict = {}
    exec(compile(quickstart, "README.md", "exec"), namespace)
    km = namespace["km"]
    assert km.cluster_centers_.shape == (4, 2)
    d2 = ((namespace["X"][:, None, :] - km.cluster_centers_[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(km.labels_, d2.argmin(1))
    assert km.inertia_ == pytest.approx(d2.min(1).sum(), rel=1e-12)


def test_the_first_command_is_the_demo():
    first = README.read_text().split("```bash\n", 1)[1].split("```", 1)[0]
    assert "pip install torch==2.13.0" in first and "torchkmeans demo" in first
    assert 'pip install -e ".[test]"' in first and "python -m pytest" in first


def test_choosing_k_runs_on_the_memmap_of_the_block_before(tmp_path):
    # The block follows the memmap example, whose X a streamed elbow refuses
    # to score by silhouette (that needs every pair of rows).
    block = next(b for b in python_blocks() if '"silhouette"' in b)
    np.save(tmp_path / "embeddings.npy", np.random.RandomState(0).rand(600, 64).astype(np.float32))
    torch = pytest.importorskip("torch")
    from torchkmeans import elbow

    namespace = {
        "np": np,
        "elbow": elbow,
        "X": np.load(tmp_path / "embeddings.npy", mmap_mode="r"),
        "z": torch.randn(2, 512, 64),
    }
    exec(compile(block, "README.md", "exec"), namespace)
    result = namespace["result"]
    assert result.ks == tuple(range(1, 10)) and result.scores["silhouette"].shape == (9,)
    assert namespace["codes"].shape == (2, 512)
