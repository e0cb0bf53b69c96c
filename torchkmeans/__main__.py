"""``python -m torchkmeans``: the ``torchkmeans`` command (see :mod:`torchkmeans.cli`)."""

from __future__ import annotations

from .cli import main, tutorial_data

__all__ = ["main", "tutorial_data"]

if __name__ == "__main__":
    raise SystemExit(main())
