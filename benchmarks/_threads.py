"""Pin the thread pools of every library before numpy or torch is imported.

Imported first by each benchmark script: OpenMP and BLAS size their pools at
import time, so ``--threads`` must be read and exported before that.
"""

from __future__ import annotations

import argparse
import os
import sys

THREAD_ENV_VARS = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


def threads_from_argv(argv: list[str]) -> int:
    """``--threads`` (default 2) from the command line."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--threads", type=int, default=2)
    known, _ = parser.parse_known_args(argv)
    return max(1, known.threads)


def pin_threads() -> None:
    """Export ``--threads`` to every pool and benchmark this checkout, installed or not."""
    threads = str(threads_from_argv(sys.argv[1:]))
    for name in THREAD_ENV_VARS:
        os.environ[name] = threads
    # Idle OpenBLAS threads (numpy's, scipy's: scikit-learn's k-means++ and
    # checks call them) spin for about 2^28 cycles after each call, taking a
    # core from whichever library the interleaved timings run next: load_digits
    # fits of both libraries measured 2-4x slower than alone. 2^4 cycles here.
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
