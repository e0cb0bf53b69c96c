"""Builds the fused assignment kernel (``_assign_kernel.cpp``) into a cache.

Standard library only: the package's build hook (``hatch_build.py``) runs it
at install time, where torch may not be importable, so that the first fit
does not wait for the compiler; ``_native`` runs it again at first use
whenever the cached library is missing (a new machine, another CPU, a
cleared cache). See ``_native`` for what the kernel does.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import subprocess
import threading
from pathlib import Path

__all__ = ["build"]

_LOG = logging.getLogger("torchkmeans")
_SOURCE = Path(__file__).with_name("_assign_kernel.cpp")
_FLAGS = ("-O3", "-std=gnu++17", "-shared", "-fPIC", "-fno-math-errno")
# Tried first; a compiler without OpenMP builds a one-thread kernel.
_OPENMP_FLAGS = ("-fopenmp",)


def _cache_dir() -> Path:
    configured = os.environ.get("TORCHKMEANS_CACHE_DIR")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "torchkmeans"


def _cpu_signature() -> str:
    """What -march=native depends on: the CPU's model and feature flags."""
    try:
        with open("/proc/cpuinfo") as info:
            lines = [
                line
                for line in info.read().splitlines()
                if line.startswith(("flags", "model name", "Features", "CPU part"))
            ]
        return "\n".join(sorted(set(lines)))
    except OSError:
        return platform.processor() or platform.machine()


def _compiler() -> str | None:
    configured = os.environ.get("CXX")
    if configured:
        return shutil.which(configured) or configured
    for name in ("c++", "g++", "clang++"):
        found = shutil.which(name)
        if found:
            return found
    return None


def build() -> Path | None:
    """The cached kernel library for this machine, compiled if missing (None: no compiler)."""
    compiler = _compiler()
    if compiler is None:
        _LOG.debug("torchkmeans: no C++ compiler found; using PyTorch ops for assignment")
        return None
    source = _SOURCE.read_bytes()
    directory = _cache_dir()
    # TORCHKMEANS_NATIVE_ARCH targets another instruction set than the
    # machine's own (tests build x86-64-v2 and -v3 to cover the code paths
    # of machines without AVX-512).
    arch = os.environ.get("TORCHKMEANS_NATIVE_ARCH", "native")
    for extra in (_OPENMP_FLAGS, ()):
        flags = (*_FLAGS, f"-march={arch}", *extra)
        key = hashlib.sha256(
            b"\0".join(
                [
                    source,
                    compiler.encode(),
                    " ".join(flags).encode(),
                    _cpu_signature().encode(),
                    platform.machine().encode(),
                ]
            )
        ).hexdigest()[:20]
        target = directory / f"assign-{key}.so"
        failed = directory / f"assign-{key}.failed"  # not tried again on every import
        if target.exists():
            return target
        if failed.exists():
            continue
        try:
            directory.mkdir(parents=True, exist_ok=True)
            partial = directory / f".assign-{key}.{os.getpid()}.{threading.get_ident()}.so"
            done = subprocess.run(
                [compiler, *flags, str(_SOURCE), "-o", str(partial)],
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            if done.returncode == 0:
                os.replace(partial, target)  # atomic: other processes never see half a file
                return target
            _LOG.debug("torchkmeans: building the kernel with %s failed:\n%s", flags, done.stderr)
            partial.unlink(missing_ok=True)
            failed.write_text(done.stderr)
        except (OSError, subprocess.SubprocessError) as error:
            _LOG.debug("torchkmeans: building the assignment kernel failed: %s", error)
            return None
    return None
