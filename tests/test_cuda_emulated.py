"""The CUDA code paths on a CUDA device emulated on the CPU (tests/fake_cuda.py).

CI has no GPU, and the accelerator-path switch (fixture ``accelerator_paths``)
keeps tensors on the CPU: it never runs what only ``device.type == "cuda"``
takes (pinned chunks copied on a side stream, the free memory asked of the
device), nor catches a CPU tensor, a CPU generator or a numpy conversion
meeting CUDA data. On the emulated device those raise as on a GPU, and every
result must equal the accelerator paths' on the CPU: the emulated device
computes on the CPU, and its generators draw as CPU ones.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from fake_cuda import CudaTensor, fake_cuda
from sklearn.datasets import make_blobs

from torchkmeans import KMeans, MiniBatchKMeans, VectorQuantizer, elbow
from torchkmeans import _host as host
from torchkmeans.functional import _device, _native, streaming


@pytest.fixture
def blobs8() -> np.ndarray:
    X, _ = make_blobs(n_samples=3000, n_features=8, centers=6, random_state=0)
    return X


def test_the_emulated_device_refuses_what_a_gpu_refuses():
    with fake_cuda():
        x = torch.arange(6.0).view(2, 3).to("cuda")
        assert x.device == torch.device("cuda", 0) and x.is_cuda
        assert (x + torch.tensor(1.0)).device.type == "cuda"  # 0-d CPU tensors mix
        with pytest.raises(RuntimeError, match="same device"):
            x + torch.ones(3)
        with pytest.raises(RuntimeError, match="same device"):
            torch.cat([x, torch.zeros(1, 3)])
        with pytest.raises(TypeError, match="numpy"):
            x.numpy()
        with pytest.raises(RuntimeError, match="indices should be"):
            torch.zeros(3)[torch.tensor([0]).cuda()]
        with pytest.raises(RuntimeError, match="'cuda' device type for generator"):
            torch.rand(2, device="cuda", generator=torch.Generator().manual_seed(0))
        with pytest.raises(RuntimeError, match="'cpu' device type for generator"):
            torch.rand(2, generator=torch.Generator("cuda").manual_seed(0))
        with pytest.raises(RuntimeError, match="CPU kernel nearest"):
            _native.nearest(x, x[:1], torch.zeros(2, dtype=torch.int64).cuda())
        with pytest.raises(RuntimeError, match="same device"):
            x[torch.tensor([0])] = torch.ones(1, 3)
        # What a GPU allows: CPU indices, copies both ways, host reads.
        assert x[torch.tensor([1])].is_cuda
        x[0] = torch.tensor([7.0, 8.0, 9.0])
        assert x.cpu().tolist() == [[7.0, 8.0, 9.0], [3.0, 4.0, 5.0]]
        assert float(x.sum()) == 36.0 and not x.cpu().is_cuda
    assert not isinstance(torch.zeros(1), CudaTensor)


def test_a_streamed_fit_reads_pinned_chunks_on_the_cuda_branch(blobs8, monkeypatch):
    # Host rows too big for the device go through iter_chunks' CUDA branch
    # (pinned buffers, a copy stream, events): the same fit as in memory.
    monkeypatch.setitem(streaming._CHUNK_BYTES, "other", 8 * 8 * 400)  # 8 chunks
    init = blobs8[:6].astype(np.float32)
    weights = np.random.default_rng(0).uniform(0.5, 2.0, len(blobs8))
    branches = []
    cuda_chunks = streaming._cuda_chunks

    def spy(*args, **kwargs):
        branches.append("cuda")
        return cuda_chunks(*args, **kwargs)

    monkeypatch.setattr(streaming, "_cuda_chunks", spy)
    with fake_cuda():
        monkeypatch.setattr(host, "_DEVICE_SHARE", 0.0)
        streamed = KMeans(6, init=init, device="cuda", dtype=torch.float32)
        streamed.fit(blobs8, sample_weight=weights)
        assert branches
        monkeypatch.setattr(host, "_DEVICE_SHARE", 10.0**9)
        in_memory = KMeans(6, init=init, device="cuda", dtype=torch.float32)
        in_memory.fit(blobs8, sample_weight=weights)
    np.testing.assert_array_equal(streamed.labels_, in_memory.labels_)
    np.testing.assert_allclose(streamed.cluster_centers_, in_memory.cluster_centers_, rtol=1e-5)
    assert streamed.n_iter_ == in_memory.n_iter_


def _on(device_kind: str, fit, monkeypatch):
    """``fit(device)`` on the emulated CUDA device, or on the CPU's accelerator paths."""
    if device_kind == "cpu":
        with monkeypatch.context() as patched:
            patched.setattr(_device, "on_host", lambda device: False)
            return fit("cpu")
    with fake_cuda():
        return fit("cuda")


def _host_values(result):
    if isinstance(result, torch.Tensor):
        return result.cpu()
    if isinstance(result, (tuple, list)):
        return type(result)(_host_values(r) for r in result)
    return result


@pytest.mark.parametrize(
    "case",
    [
        "kmeans-restarts",
        "kmeans-cosine-random-weighted",
        "kmeans-streamed",
        "kmeans-generator",
        "minibatch",
        "minibatch-streamed",
        "elbow",
        "quantizer",
        "sparse",
    ],
)
def test_the_cuda_paths_equal_the_accelerator_paths_on_the_cpu(case, blobs8, monkeypatch):
    X32 = blobs8.astype(np.float32)
    weights = np.random.default_rng(1).uniform(0.5, 2.0, len(X32))

    def fit(device):
        x = torch.from_numpy(X32).to(device)
        if case == "kmeans-restarts":
            km = KMeans(6, n_init=3, random_state=0).fit(x)
            return km.cluster_centers_, km.labels_, km.transform(x[:50]), km.score(x)
        if case == "kmeans-cosine-random-weighted":
            km = KMeans(6, init="random", metric="cosine", random_state=0, device=device)
            km.fit(X32, sample_weight=weights)
            return km.cluster_centers_, km.labels_, km.predict(X32[:50])
        if case == "kmeans-streamed":
            monkeypatch.setattr(host, "_DEVICE_SHARE", 0.0 if device == "cuda" else 10.0**9)
            km = KMeans(6, n_init=2, random_state=0, device=device).fit(X32)
            return km.cluster_centers_, km.labels_, km.inertia_
        if case == "kmeans-generator":
            # A CPU generator seeds one on the data's device: other draws
            # there, the same clusters.
            km = KMeans(6, random_state=torch.Generator().manual_seed(3)).fit(x)
            centres = km.cluster_centers_
            return centres[centres[:, 0].argsort()], km.inertia_
        if case == "minibatch":
            km = MiniBatchKMeans(6, batch_size=256, random_state=0).fit(x)
            km.partial_fit(x[:256])
            return km.cluster_centers_, km.labels_, km.predict(x)
        if case == "minibatch-streamed":
            monkeypatch.setattr(host, "_DEVICE_SHARE", 0.0 if device == "cuda" else 10.0**9)
            km = MiniBatchKMeans(6, batch_size=256, random_state=0, device=device).fit(X32)
            return km.cluster_centers_, km.labels_
        if case == "elbow":
            result = elbow(x, k=range(1, 7), random_state=0, scores=("silhouette",))
            return result.inertia, result.labels, result.scores["silhouette"], result.knee
        if case == "sparse":
            sparse = pytest.importorskip("scipy.sparse")
            S = sparse.random(2000, 50, density=0.1, random_state=0, format="csr")
            km = KMeans(5, random_state=0, device=device).fit(S)
            minibatch = MiniBatchKMeans(5, random_state=0, device=device).fit(S)
            swept = elbow(S, k=range(1, 5), random_state=0, device=device)
            return km.cluster_centers_, km.predict(S), minibatch.cluster_centers_, swept.inertia
        torch.manual_seed(0)
        vq = VectorQuantizer(8, 8).to(device)
        outputs = [vq(x[i : i + 500]) for i in range(0, 1500, 500)]
        return [tuple(out) for out in outputs], list(vq.buffers())

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        on_cpu = _on("cpu", fit, monkeypatch)
        fit_on = _on("cuda", fit, monkeypatch)
    flat_cuda, _ = torch.utils._pytree.tree_flatten(fit_on)
    tensors = [t for t in flat_cuda if isinstance(t, torch.Tensor)]
    if case in ("kmeans-restarts", "kmeans-generator", "minibatch", "elbow", "quantizer"):
        # Tensors in, tensors out on the device (streamed fits: numpy in and out).
        assert tensors and all(t.device.type == "cuda" for t in tensors)
    got, expected = _host_values(fit_on), _host_values(on_cpu)
    flat_got, _ = torch.utils._pytree.tree_flatten(got)
    flat_expected, _ = torch.utils._pytree.tree_flatten(expected)
    assert len(flat_got) == len(flat_expected)
    # Streamed against in memory: the same labels, sums added in another order.
    rtol = 1e-6 if case.endswith(("streamed", "generator")) else 0.0
    for a, b in zip(flat_got, flat_expected):
        if isinstance(b, (torch.Tensor, np.ndarray)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=0.0)
        else:
            assert a == (b if b is None else pytest.approx(b, rel=rtol))


# ---------------------------------------------------------- benchmarks/gpu_check.sh

GPU_CHECK = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"


@pytest.mark.skipif(
    shutil.which("bash") is None or shutil.which("timeout") is None,
    reason="needs bash and coreutils' timeout",
)
def test_gpu_check_stops_where_torch_sees_no_cuda_device(tmp_path):
    # Without a device every CUDA test was skipped and pytest exited 0: the
    # check read "cuda tests: exit 0" having run none of them.
    python = tmp_path / "python"
    python.write_text(
        "#!/usr/bin/env bash\n"
        'case "$*" in\n'
        "  -c*) echo 'torch stub cuda False'; exit 3 ;;\n"
        '  *) echo ran > "$OUT/ran"; exit 0 ;;\n'
        "esac\n"
    )
    python.chmod(0o755)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": str(python), "OUT": str(out)}
    done = subprocess.run(
        ["bash", str(GPU_CHECK)], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0
    assert "no usable CUDA device" in done.stdout
    assert "cuda False" in (out / "device.txt").read_text()
    assert not (out / "ran").exists()  # neither the tests nor the benchmark


def test_gpu_check_runs_every_test_file_with_cuda_tests():
    # A file's device-parametrized tests run on the GPU only if the script names it.
    listed = set(re.findall(r"tests/test_\w+\.py", GPU_CHECK.read_text()))
    uses_the_device = re.compile(r"mark\.cuda|\bDEVICES\b|def test_\w+\([^)]*\bdevice\b")
    tests = GPU_CHECK.parents[1] / "tests"
    with_cuda = {
        f"tests/{path.name}"
        for path in tests.glob("test_*.py")
        if uses_the_device.search(path.read_text())
    }
    assert "tests/test_kmeans.py" in with_cuda
    assert with_cuda <= listed, sorted(with_cuda - listed)


class _NcclOnly:
    """``torch.distributed`` as an NCCL-only group of two ranks holding the
    same values: it refuses tensors off the GPU, as NCCL does."""

    class ReduceOp:
        SUM = "sum"

    @staticmethod
    def get_backend(group: object) -> str:
        return "nccl"

    @staticmethod
    def _gpu_only(tensor: torch.Tensor) -> None:
        if not tensor.is_cuda:
            raise RuntimeError("No backend type associated with device type cpu")

    def all_reduce(self, tensor: torch.Tensor, op: str, group: object) -> None:
        self._gpu_only(tensor)
        tensor.mul_(2)

    def all_gather(self, parts: list[torch.Tensor], tensor: torch.Tensor, group: object) -> None:
        self._gpu_only(tensor)
        for part in parts:
            part.copy_(tensor)

    def broadcast(self, tensor: torch.Tensor, src: int, group: object) -> None:
        self._gpu_only(tensor)


def test_an_nccl_group_reduces_host_tensors_on_its_gpu():
    # A fit of host data (device=None) in an NCCL-only group hands the
    # collective CPU tensors, which NCCL refuses: they go through the GPU.
    from torchkmeans.distributed import ProcessGroupCollective

    group = ProcessGroupCollective.__new__(ProcessGroupCollective)
    group._dist, group.group, group.rank, group.world_size, group._source = (
        _NcclOnly(),
        None,
        0,
        2,
        0,
    )
    with fake_cuda():
        assert group.device.type == "cuda"
        sums = torch.arange(3.0)
        assert group.all_sum(sums) is sums and sums.tolist() == [0.0, 2.0, 4.0]
        gathered = group.all_gather(torch.tensor([1.0, 5.0]))
        assert gathered.device.type == "cpu" and gathered.tolist() == [[1.0, 5.0]] * 2
        seed = torch.tensor([7])
        assert group.broadcast(seed) is seed and seed.tolist() == [7]
        on_gpu = torch.ones(2).cuda()
        assert group.all_sum(on_gpu) is on_gpu and on_gpu.is_cuda
