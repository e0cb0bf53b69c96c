"""Build hook: compile the fused CPU kernel into the user's cache at install time.

So that the first fit after ``pip install`` does not wait about five seconds
for the compiler. Optional: without a compiler (or with
``TORCHKMEANS_NATIVE=0``) nothing is built, and torchkmeans tries again at
first use and otherwise runs on PyTorch ops. The wheel itself stays pure
Python; the library goes to ``~/.cache/torchkmeans`` (see
``torchkmeans/functional/_native_build.py``).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class NativeKernelHook(BuildHookInterface):
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if os.environ.get("TORCHKMEANS_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
            return
        path = Path(self.root) / "torchkmeans" / "functional" / "_native_build.py"
        try:
            spec = importlib.util.spec_from_file_location("_torchkmeans_native_build", path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            built = module.build()
        except Exception as error:  # never fail the install over an optional kernel
            self.app.display_warning(f"torchkmeans: the CPU kernel was not built ({error})")
            return
        if built is None:
            self.app.display_info("torchkmeans: no C++ compiler, the CPU kernel was not built")
        else:
            self.app.display_info(f"torchkmeans: CPU kernel at {built}")
