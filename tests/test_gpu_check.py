"""benchmarks/gpu_check.sh, the one prepared run on a GPU machine, with a stand-in Python."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"

# Stands for python3: the device probe answers, the tests fail one test and
# then hang, as does the benchmark; each reports what it has when interrupted.
STUB = """#!/usr/bin/env bash
case "$*" in
  -c*) echo "torch stub cuda NVIDIA H200"; exit 0 ;;
  *pytest*) trap 'echo "FAILED tests/test_kmeans.py::test_x[cuda] - AssertionError"; exit 2' INT
            echo "F" ;;
  *) trap 'echo "benchmark interrupted"; exit 130' INT ;;
esac
while :; do sleep 0.1; done
"""


@pytest.mark.skipif(
    shutil.which("bash") is None or shutil.which("timeout") is None,
    reason="needs bash and coreutils' timeout",
)
def test_a_step_that_runs_out_of_time_still_reports_and_the_next_one_runs(tmp_path):
    # A step at its limit had got SIGTERM: pytest -q died printing nothing
    # but its progress dots, and the failures it had seen were lost.
    python = tmp_path / "python"
    python.write_text(STUB)
    python.chmod(0o755)
    env = {
        **os.environ,
        "PYTHON": str(python),
        "OUT": str(tmp_path / "out"),
        "TESTS_TIMEOUT": "1",
        "BENCH_TIMEOUT": "1",
    }
    done = subprocess.run(
        ["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=120
    )
    out = tmp_path / "out"
    assert "NVIDIA H200" in (out / "device.txt").read_text()
    assert "FAILED tests/test_kmeans.py::test_x[cuda]" in (out / "cuda_tests.txt").read_text()
    assert "benchmark interrupted" in (out / "bench_cuda.txt").read_text()
    assert "cuda tests: exit 124; benchmark: exit 124" in done.stdout
    assert done.returncode != 0


def test_an_interrupted_benchmark_still_prints_what_it_measured():
    # gpu_check.sh stops the benchmark with SIGINT at its limit: its tables,
    # printed only after every shape, had been lost with the KeyboardInterrupt.
    code = """
import sys
sys.path.insert(0, "benchmarks")
import bench_kmeans as bench


def stop(*args, **kwargs):
    raise KeyboardInterrupt


bench.measure_memory = lambda *args: None
bench.bench_full_fit = stop
sys.exit(bench.main(["--quick", "--only", "tutorial", "--threads", "1", "--iters", "2"]))
"""
    root = SCRIPT.parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 130, done.stderr[-2000:]
    assert "interrupted after 1 of 1 shapes" in done.stdout
    assert "tutorial  torchkmeans" in done.stdout  # the fixed-iteration table's row
