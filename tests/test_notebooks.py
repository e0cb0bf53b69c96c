"""The notebooks in notebooks/ run headless top to bottom (small sizes) and are committed clean."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")
pytest.importorskip("sklearn")

from jupyter_client.kernelspec import KernelSpecManager  # noqa: E402
from jupyter_client.manager import AsyncKernelManager  # noqa: E402

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
EXPECTED = {"01_quickstart.ipynb", "02_embeddings.ipynb", "03_minibatch_at_scale.ipynb"}
COLAB_CELL = """\
import sys

if "google.colab" in sys.modules:
    %pip install -q "torchkmeans[notebooks] @ git+https://github.com/torchkmeans/torchkmeans"\
"""
CELL_TIMEOUT = 300


def _kernel_manager(tmp_path: Path) -> AsyncKernelManager:
    """A manager for a "python3" kernel run by this very interpreter.

    The kernelspec lives in ``tmp_path`` and is the only one searched, so a
    user- or system-wide "python3" spec pointing to another Python (one
    without torchkmeans installed) cannot shadow it.
    """
    spec = tmp_path / "kernels" / "python3"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    kernel = {"argv": argv, "display_name": "Python 3 (pytest)", "language": "python"}
    (spec / "kernel.json").write_text(json.dumps(kernel))
    specs = KernelSpecManager(kernel_dirs=[str(spec.parent)])
    return AsyncKernelManager(kernel_name="python3", kernel_spec_manager=specs)


def _execute(nb, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Run ``nb`` in a fresh kernel with cwd and TMPDIR in ``tmp_path``; the executed notebook."""
    workdir = tmp_path / "run"
    workdir.mkdir()
    # The kernel inherits this environment: CI sizes, no GUI, scratch files in tmp_path.
    monkeypatch.setenv("TORCHKMEANS_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("TMPDIR", str(workdir))
    km = _kernel_manager(tmp_path)
    client = nbclient.NotebookClient(
        nb,
        km=km,
        kernel_name="python3",
        timeout=CELL_TIMEOUT,
        resources={"metadata": {"path": str(workdir)}},
    )
    # The client shuts the kernel down when it is done, whether the notebook failed or not.
    return client.execute(cleanup_kc=True)


def _stdout(nb) -> str:
    return "".join(
        output.get("text", "")
        for cell in nb.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type == "stream" and output.name == "stdout"
    )


def test_the_notebooks_are_there():
    assert {path.name for path in NOTEBOOKS} >= EXPECTED


def test_kernel_is_this_interpreter(tmp_path, monkeypatch):
    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_code_cell("import sys\nprint(sys.executable)"))
    out = _stdout(_execute(nb, tmp_path, monkeypatch)).strip()
    assert os.path.realpath(out) == os.path.realpath(sys.executable)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.name for path in NOTEBOOKS])
def test_notebook_is_committed_clean(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    for cell in code:
        assert cell.outputs == [], f"{path.name}: a cell has outputs"
        assert cell.execution_count is None, f"{path.name}: a cell has an execution count"
    assert code[0].source.strip() == COLAB_CELL.strip()
    source = "\n".join(cell.source for cell in code)
    assert '"cuda" if torch.cuda.is_available() else "cpu"' in source
    if not path.name.startswith("01_"):
        assert 'os.environ.get("TORCHKMEANS_NOTEBOOK_SMALL") == "1"' in source


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.name for path in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, monkeypatch):
    nb = _execute(nbformat.read(path, as_version=4), tmp_path, monkeypatch)
    errors = [
        output
        for cell in nb.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type == "error"
    ]
    assert errors == []
    # The last code cell asserts on the results and ends with one "OK: ..." line.
    last = [cell for cell in nb.cells if cell.cell_type == "code"][-1]
    printed = "".join(o.get("text", "") for o in last.outputs if o.output_type == "stream")
    assert printed.strip().splitlines()[-1].startswith("OK: "), printed
    # No data file left behind (03 writes its memmap in a temporary directory).
    assert list(tmp_path.rglob("*.f32")) == []
