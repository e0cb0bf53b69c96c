"""The ``torchkmeans`` command line: every subcommand, every input format, every usage error.

Commands run in-process through ``cli.main`` (fast); one test runs
``python -m torchkmeans`` and one the installed console script.
"""

from __future__ import annotations

import pathlib
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sklearn.datasets import load_iris, make_blobs

import torchkmeans
from torchkmeans import KMeans, MiniBatchKMeans, cli, elbow, plotting

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def iris() -> np.ndarray:
    return load_iris().data


@pytest.fixture(scope="module")
def blobs() -> np.ndarray:
    X, _ = make_blobs(n_samples=240, centers=4, n_features=3, random_state=0)
    return X


def run(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    code = cli.main([str(arg) for arg in args])
    out, err = capsys.readouterr()
    return code, out, err


def field(out: str, name: str) -> str:
    match = re.search(rf"^{re.escape(name)}:\s+(.*)$", out, re.MULTILINE)
    assert match is not None, f"no {name!r} line in:\n{out}"
    return match.group(1)


def is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == PNG_MAGIC


def assert_one_error_line(code: int, out: str, err: str) -> str:
    assert code == 2
    assert out == ""
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("torchkmeans: error: ")
    return lines[0]


def write_text(path: Path, X: np.ndarray, header: bool) -> Path:
    delimiter = "\t" if path.suffix == ".tsv" else ","
    names = delimiter.join(f"feature {j}" for j in range(X.shape[1]))
    np.savetxt(
        path, X, delimiter=delimiter, fmt="%.17g", header=names if header else "", comments=""
    )
    if not header:  # savetxt writes an empty first line for header=""
        path.write_text(path.read_text().lstrip("\n"))
    return path


# Each writer saves X and returns the extra arguments needed to read it back.
WRITERS = {
    "npy": lambda p, X: (np.save(p.with_suffix(".npy"), X), []),
    "npy-big-endian": lambda p, X: (np.save(p.with_suffix(".npy"), X.astype(">f8")), []),
    "npz-single": lambda p, X: (np.savez(p.with_suffix(".npz"), data=X), []),
    "npz-key": lambda p, X: (np.savez(p.with_suffix(".npz"), y=X[:, 0], X=X), ["--key", "X"]),
    "pt-tensor": lambda p, X: (torch.save(torch.from_numpy(X), p.with_suffix(".pt")), []),
    "pth-dict": lambda p, X: (
        torch.save({"X": torch.from_numpy(X), "y": torch.zeros(3)}, p.with_suffix(".pth")),
        ["--key", "X"],
    ),
    "csv-header": lambda p, X: (write_text(p.with_suffix(".csv"), X, True), []),
    "csv-no-header": lambda p, X: (write_text(p.with_suffix(".csv"), X, False), []),
    "tsv-header": lambda p, X: (write_text(p.with_suffix(".tsv"), X, True), []),
    "tsv-no-header": lambda p, X: (write_text(p.with_suffix(".tsv"), X, False), []),
}
SUFFIX = {"npy": ".npy", "npz": ".npz", "pt-": ".pt", "pth": ".pth", "csv": ".csv", "tsv": ".tsv"}


def save(tmp_path: Path, kind: str, X: np.ndarray, stem: str = "data") -> tuple[Path, list[str]]:
    base = tmp_path / stem
    _, extra = WRITERS[kind](base, X)
    return base.with_suffix(SUFFIX[kind[:3]]), extra


# ---------------------------------------------------------------- fit


@pytest.mark.parametrize("kind", list(WRITERS))
def test_fit_reads_every_format_and_matches_kmeans(capsys, tmp_path, iris, kind):
    data, extra = save(tmp_path, kind, iris)
    labels_out, centers_out = tmp_path / "labels.npy", tmp_path / "centers.npy"
    code, out, err = run(
        capsys,
        "fit", data, "-k", 3, "--seed", 0, "--device", "cpu", *extra,
        "--labels-out", labels_out, "--centers-out", centers_out,
    )  # fmt: skip
    assert code == 0, err
    reference = KMeans(n_clusters=3, random_state=0, device="cpu").fit(iris)
    labels, centers = np.load(labels_out), np.load(centers_out)
    assert labels.shape == (150,) and labels.dtype == np.int64
    assert labels.min() >= 0 and labels.max() < 3
    np.testing.assert_array_equal(labels, reference.labels_)
    assert centers.shape == (3, 4)
    np.testing.assert_allclose(centers, reference.cluster_centers_, rtol=1e-12)
    assert float(field(out, "inertia")) == pytest.approx(reference.inertia_, rel=1e-7)
    sizes = [field(out, name) for name in ("n_samples", "n_features", "n_clusters")]
    assert sizes == ["150", "4", "3"]
    assert field(out, "iterations") == f"{reference.n_iter_} (n_iter_)"
    assert field(out, "device") == "cpu" and field(out, "dtype") == "float64"
    assert field(out, "algorithm").startswith("KMeans (Lloyd)")
    assert field(out, "labels") == str(labels_out) and field(out, "centers") == str(centers_out)
    has_header = kind.endswith("-header") and "no-header" not in kind
    assert ("header: feature 0, feature 1" in field(out, "data")) == has_header


@pytest.mark.parametrize("index", [None, "names"])
def test_fit_drops_the_row_labels_pandas_writes_as_an_unnamed_first_column(
    capsys, tmp_path, iris, index
):
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame(iris, columns=["a", "b", "c", "d"])
    if index == "names":
        frame.index = [f"row {i}" for i in range(len(frame))]
    path = tmp_path / "iris.csv"
    frame.to_csv(path)  # index written as a first column under an empty name
    code, out, err = run(capsys, "fit", path, "-k", 3, "--seed", 0, "--device", "cpu")
    assert code == 0, err
    reference = KMeans(n_clusters=3, random_state=0, device="cpu").fit(iris)
    assert field(out, "n_features") == "4"
    assert float(field(out, "inertia")) == pytest.approx(reference.inertia_, rel=1e-7)
    assert "header: a, b, c, d, (unnamed first column: row labels, dropped)" in field(out, "data")


@pytest.mark.parametrize("index", [False, True])
def test_fit_skips_the_header_pandas_writes_for_unnamed_columns(capsys, tmp_path, iris, index):
    """DataFrame(X).to_csv writes the column positions 0,1,... as a header: it had
    been read as a first row of data [0, 1, 2, 3], or, under the row labels'
    empty cell, refused."""
    pd = pytest.importorskip("pandas")
    path = tmp_path / "iris.csv"
    pd.DataFrame(iris).to_csv(path, index=index)
    code, out, err = run(capsys, "fit", path, "-k", 3, "--seed", 0, "--device", "cpu")
    assert code == 0, err
    reference = KMeans(n_clusters=3, random_state=0, device="cpu").fit(iris)
    assert "(150 x 4, float64), header: 0, 1, 2, 3" in field(out, "data")
    assert float(field(out, "inertia")) == pytest.approx(reference.inertia_, rel=1e-7)
    # Other rows of numbers stay data, and --header no reads the positions as data.
    np.savetxt(path, np.vstack([[1, 2, 3, 4], iris]), delimiter=",", fmt="%g")
    code, out, err = run(capsys, "fit", path, "-k", 3, "--seed", 0, "--device", "cpu")
    assert code == 0, err
    assert "(151 x 4, float64)" in field(out, "data")
    pd.DataFrame(iris).to_csv(path, index=False)
    code, out, err = run(capsys, "fit", path, "-k", 3, "--header", "no", "--device", "cpu")
    assert code == 0, err
    assert "(151 x 4, float64)" in field(out, "data")


def test_fit_keeps_a_first_row_0_1_of_whole_numbers_as_data(capsys, tmp_path):
    # A row 0, 1, ..., n-1 above rows of whole numbers is data as likely as
    # pandas' names (an integer frame's to_csv(index=False)): kept, not
    # dropped; above rows of other numbers it is read as names, said on stderr.
    grid = np.array([[0, 1, 2]] + [[i % 5, i % 7, i % 3] for i in range(1, 40)])
    path = tmp_path / "grid.csv"
    np.savetxt(path, grid, delimiter=",", fmt="%d")
    code, out, err = run(capsys, "fit", path, "-k", 3, "--seed", 0, "--device", "cpu")
    assert code == 0, err
    assert "(40 x 3, float64)" in field(out, "data")
    assert "pandas" not in err
    np.savetxt(path, np.vstack([[0, 1, 2], grid[1:] + 0.5]), delimiter=",", fmt="%g")
    code, out, err = run(capsys, "fit", path, "-k", 3, "--seed", 0, "--device", "cpu")
    assert code == 0, err
    assert "(39 x 3, float64), header: 0, 1, 2" in field(out, "data")
    assert "--header no" in err


def test_fit_minibatch_streams_a_memmap(capsys, tmp_path, iris, monkeypatch):
    data = tmp_path / "iris.npy"
    np.save(data, iris)
    seen = []
    fit = MiniBatchKMeans.fit

    def spy(self, X, *args, **kwargs):
        seen.append(type(X))
        return fit(self, X, *args, **kwargs)

    monkeypatch.setattr(MiniBatchKMeans, "fit", spy)
    code, out, err = run(
        capsys, "fit", data, "-k", 3, "--minibatch", "--batch-size", 64, "--seed", 0,
        "--device", "cpu", "--labels-out", tmp_path / "labels.npy",
    )  # fmt: skip
    assert code == 0, err
    assert seen == [np.memmap]
    reference = fit(
        MiniBatchKMeans(n_clusters=3, batch_size=64, random_state=0, device="cpu"),
        np.load(data, mmap_mode="r"),
    )
    assert float(field(out, "inertia")) == pytest.approx(reference.inertia_, rel=1e-7)
    assert field(out, "iterations") == (
        f"{reference.n_iter_} pass{'' if reference.n_iter_ == 1 else 'es'} over the data "
        "(n_iter_), "
        f"{reference.n_steps_} mini-batch steps (n_steps_)"
    )
    assert "memory-mapped" in field(out, "data")
    np.testing.assert_array_equal(np.load(tmp_path / "labels.npy"), reference.labels_)


def test_fit_without_seed_prints_the_seed_that_repeats_it(capsys, tmp_path, blobs):
    data = tmp_path / "blobs.npy"
    np.save(data, blobs)
    code, out, _ = run(capsys, "fit", data, "-k", 4, "--device", "cpu", "--n-init", 2)
    assert code == 0
    seed = int(field(out, "seed"))
    again = run(capsys, "fit", data, "-k", 4, "--device", "cpu", "--n-init", 2, "--seed", seed)
    assert field(again[1], "inertia") == field(out, "inertia")
    assert field(out, "algorithm").endswith("n_init=2")


def test_quiet_prints_nothing_and_the_progress_bar_needs_a_tty(
    capsys, tmp_path, blobs, monkeypatch
):
    data = tmp_path / "blobs.npy"
    np.save(data, blobs)
    args = ["fit", data, "-k", 4, "--minibatch", "--batch-size", 16, "--seed", 0]
    code, out, err = run(capsys, *args)
    assert code == 0 and "inertia:" in out and err == ""  # not a TTY: no bar
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    code, out, err = run(capsys, *args)
    assert code == 0 and "MiniBatchKMeans" in err  # tqdm's bar
    code, out, err = run(capsys, *args, "--quiet", "--labels-out", tmp_path / "labels.npy")
    assert (code, out, err) == (0, "", "")
    assert np.load(tmp_path / "labels.npy").shape == (240,)


def test_library_warnings_become_one_line(capsys, tmp_path):
    data = tmp_path / "duplicates.npy"
    np.save(data, np.repeat([[0.0, 0.0], [1.0, 1.0]], 5, axis=0))
    code, _, err = run(capsys, "fit", data, "-k", 3, "--seed", 0, "--device", "cpu")
    assert code == 0
    assert err.startswith("torchkmeans: warning: Number of distinct clusters (2)")
    assert len(err.splitlines()) == 1


# ---------------------------------------------------------------- predict


def nearest(X: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, float]:
    distances = ((X[:, None, :] - centres[None, :, :]) ** 2).sum(-1)
    return distances.argmin(1), float(distances.min(1).sum())


@pytest.mark.parametrize("kind", ["csv-header", "npy", "pt-tensor"])
def test_predict_is_the_nearest_centre(capsys, tmp_path, blobs, kind):
    data, extra = save(tmp_path, kind, blobs)
    centres = blobs[[0, 1, 2, 3, 4]] + 0.5  # not a fit: predict must not refit
    np.save(tmp_path / "centres.npy", centres)
    labels_out = tmp_path / "labels.npy"
    code, out, err = run(
        capsys, "predict", data, "--centers", tmp_path / "centres.npy", *extra,
        "--labels-out", labels_out, "--device", "cpu",
    )  # fmt: skip
    assert code == 0, err
    expected, inertia = nearest(blobs, centres)
    labels = np.load(labels_out)
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(labels, expected)
    assert field(out, "cluster sizes") == str(np.bincount(expected, minlength=5).tolist())
    assert float(field(out, "inertia")) == pytest.approx(inertia, rel=1e-7)
    assert field(out, "n_clusters") == "5"


def test_predict_cosine_uses_the_angle(capsys, tmp_path, blobs):
    np.save(tmp_path / "x.npy", blobs)
    centres = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    np.save(tmp_path / "c.npy", 10 * centres)  # the length of a centre does not matter
    code, out, _ = run(
        capsys, "predict", tmp_path / "x.npy", "--centers", tmp_path / "c.npy",
        "--metric", "cosine", "--labels-out", tmp_path / "l.npy", "--device", "cpu",
    )  # fmt: skip
    assert code == 0
    unit = blobs / np.linalg.norm(blobs, axis=1, keepdims=True)
    np.testing.assert_array_equal(np.load(tmp_path / "l.npy"), (unit @ centres.T).argmax(1))
    assert float(field(out, "inertia")) == pytest.approx((1 - (unit @ centres.T).max(1)).sum())


def test_fit_centres_then_predict_gives_the_fit_labels(capsys, tmp_path, blobs):
    data, _ = save(tmp_path, "tsv-no-header", blobs)
    run(
        capsys, "fit", data, "-k", 4, "--seed", 1, "--device", "cpu",
        "--labels-out", tmp_path / "fit.npy", "--centers-out", tmp_path / "centres.npy",
    )  # fmt: skip
    code, _, _ = run(
        capsys, "predict", data, "--centers", tmp_path / "centres.npy",
        "--labels-out", tmp_path / "predict.npy", "--device", "cpu", "--quiet",
    )  # fmt: skip
    assert code == 0
    np.testing.assert_array_equal(np.load(tmp_path / "predict.npy"), np.load(tmp_path / "fit.npy"))


def test_csv_is_read_in_memory_of_the_size_of_its_numbers(tmp_path):
    # Every cell went through csv.reader as a Python string, then a string
    # array: 15x the numbers' size at the peak (367 MB for a 29 MB file).
    import tracemalloc

    X = np.random.default_rng(0).random((20_000, 8))
    np.savetxt(tmp_path / "x.csv", X, delimiter=",", header="a,b,c,d,e,f,g,h", comments="")
    tracemalloc.start()
    try:
        values, names = cli._load_text(tmp_path / "x.csv", "DATA", ",", "auto")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(values, X)
    assert names == list("abcdefgh")
    assert peak < 3 * X.nbytes


def test_outputs_are_written_to_the_names_given(capsys, tmp_path, blobs):
    # np.save(name) appended ".npy" to "L.NPY": the summary named a file that
    # did not exist, and "x.NPY" next to DATA "x.NPY.npy" overwrote DATA.
    data = tmp_path / "x.NPY.npy"
    np.save(data, blobs)
    code, out, _ = run(
        capsys, "fit", data, "-k", 4, "--seed", 1, "--device", "cpu",
        "--labels-out", tmp_path / "x.NPY", "--centers-out", tmp_path / "C.Npy",
    )  # fmt: skip
    assert code == 0
    assert sorted(path.name for path in tmp_path.iterdir()) == ["C.Npy", "x.NPY", "x.NPY.npy"]
    np.testing.assert_array_equal(np.load(data), blobs)
    assert Path(field(out, "labels")) == tmp_path / "x.NPY"
    assert np.load(tmp_path / "x.NPY").shape == (len(blobs),)
    code, _, _ = run(
        capsys, "predict", data, "--centers", tmp_path / "C.Npy",
        "--labels-out", tmp_path / "P.NPY", "--device", "cpu", "--quiet",
    )  # fmt: skip
    assert code == 0
    np.testing.assert_array_equal(np.load(tmp_path / "P.NPY"), np.load(tmp_path / "x.NPY"))


# ---------------------------------------------------------------- elbow


def elbow_table(out: str) -> dict[int, float]:
    rows = re.findall(r"^\s+(\d+)\s+([0-9.e+-]+)\b", out, re.MULTILINE)
    return {int(k): float(inertia) for k, inertia in rows}


def test_elbow_prints_the_table_and_knee_and_plots(capsys, tmp_path, blobs):
    np.save(tmp_path / "blobs.npy", blobs)
    plot = tmp_path / "curve.png"
    code, out, err = run(
        capsys, "elbow", tmp_path / "blobs.npy", "--k", "1:8", "--seed", 0,
        "--device", "cpu", "--plot", plot,
    )  # fmt: skip
    assert code == 0, err
    reference = elbow(blobs, k=range(1, 9), n_init=3, random_state=0, device="cpu")
    assert reference.knee == 4
    assert f"knee: k = {reference.knee}" in out
    assert re.search(rf"^\s+{reference.knee}\s.*<- knee$", out, re.MULTILINE)
    table = elbow_table(out)
    assert list(table) == list(range(1, 9))
    np.testing.assert_allclose(list(table.values()), reference.inertia, rtol=1e-7)
    assert is_png(plot)
    assert f"plot: {plot}" in out


@pytest.mark.parametrize(
    ("spec", "ks"),
    [("2,3,5,8", [2, 3, 5, 8]), ("2:10:4", [2, 6, 10]), ("5", [1, 2, 3, 4, 5])],
)
def test_elbow_k_lists_and_steps(capsys, tmp_path, blobs, spec, ks):
    np.save(tmp_path / "blobs.npy", blobs)
    code, out, _ = run(capsys, "elbow", tmp_path / "blobs.npy", "--k", spec, "--seed", 0)
    assert code == 0
    assert list(elbow_table(out)) == ks
    assert re.search(r"^knee: (k = \d+|none found)$", out, re.MULTILINE)


# ---------------------------------------------------------------- demo


def test_demo_writes_both_pngs_into_a_new_directory(capsys, tmp_path):
    out_dir = tmp_path / "figures" / "demo"
    code, out, err = run(capsys, "demo", "--out-dir", out_dir)
    assert code == 0, err
    for name in ("kmeans_demo.png", "elbow.png"):
        assert is_png(out_dir / name)
        assert str((out_dir / name).resolve()) in out
    reference = KMeans(n_clusters=4, init="k-means++", max_iter=300, random_state=2021)
    reference.fit(cli.tutorial_data())
    assert float(field(out, "inertia_")) == pytest.approx(reference.inertia_, rel=1e-7)
    assert field(out, "n_iter_") == str(reference.n_iter_)
    sizes = np.bincount(reference.labels_, minlength=4).tolist()
    assert field(out, "cluster sizes") == str(sizes)
    knee = elbow(cli.tutorial_data(), k=range(1, 10), n_init=1, random_state=2021).knee
    assert f"knee: k = {knee}" in out
    assert list(elbow_table(out)) == list(range(1, 10))


@pytest.fixture
def no_matplotlib(monkeypatch):
    for name in ("matplotlib", "matplotlib.pyplot", "matplotlib.figure"):
        monkeypatch.setitem(sys.modules, name, None)


def test_without_matplotlib_demo_prints_everything_and_a_hint(
    capsys, tmp_path, no_matplotlib, monkeypatch
):
    with pytest.raises(ImportError, match=r'pip install "torchkmeans\[plot\]"'):
        plotting.plot_elbow(SimpleNamespace(ks=(1, 2, 3), inertia=[3.0, 1.0, 0.5], knee=2))
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys)  # plain `torchkmeans` is the demo
    assert code == 0, err
    assert "knee: k = " in out and "inertia_:" in out
    hints = [line for line in out.splitlines() if 'pip install "torchkmeans[plot]"' in line]
    assert len(hints) == 1
    assert list(tmp_path.iterdir()) == []


def test_without_matplotlib_an_explicit_plot_is_an_error(capsys, tmp_path, no_matplotlib):
    np.save(tmp_path / "x.npy", np.arange(20.0).reshape(10, 2))
    line = assert_one_error_line(
        *run(capsys, "elbow", tmp_path / "x.npy", "--k", "1:3", "--plot", tmp_path / "e.png")
    )
    assert 'needs matplotlib, which is not installed; pip install "torchkmeans[plot]"' in line
    assert not (tmp_path / "e.png").exists()


def test_options_without_a_command_run_the_demo(capsys, tmp_path):
    code, out, _ = run(capsys, "--seed", 7, "--out-dir", tmp_path)
    assert code == 0
    assert "random_state=7" in out
    assert is_png(tmp_path / "elbow.png")


# ---------------------------------------------------------------- usage errors


@pytest.fixture
def files(tmp_path: Path) -> Path:
    X = np.arange(40.0).reshape(20, 2)
    np.save(tmp_path / "ok.npy", X)
    np.save(tmp_path / "centres3.npy", np.zeros((2, 3)))
    np.save(tmp_path / "one_d.npy", X[:, 0])
    np.save(tmp_path / "three_d.npy", X.reshape(2, 10, 2))
    with_nan = X.copy()
    with_nan[3, 1] = np.nan
    np.save(tmp_path / "nan.npy", with_nan)
    np.save(tmp_path / "empty_rows.npy", np.zeros((0, 2)))
    np.savez(tmp_path / "two.npz", a=X, b=X)
    torch.save({"a": torch.ones(3, 2), "b": torch.ones(3, 2)}, tmp_path / "two.pt")
    torch.save([torch.ones(3, 2)], tmp_path / "list.pt")
    torch.save(torch.ones(3, 2, device="meta"), tmp_path / "meta.pt")
    (tmp_path / "data.txt").write_text("1 2\n3 4\n")
    (tmp_path / "words.csv").write_text("a,b\n1,2\n3,abc\n")
    (tmp_path / "mixed_first_row.csv").write_text("1.5,abc\n1,2\n")
    (tmp_path / "empty_cell.csv").write_text("1,2\n3,\n")
    (tmp_path / "ragged.tsv").write_text("1\t2\n3\n")
    (tmp_path / "semicolons.csv").write_text("a;b\n1;2\n3;4\n")
    (tmp_path / "commas.tsv").write_text("1,2\n3,4\n")
    (tmp_path / "decimal_commas.csv").write_text("a;b\n1;2,5\n3;4\n")
    (tmp_path / "one_name.csv").write_text("petal length\n1\n2,3\n")
    np.save(tmp_path / "strings.npy", np.array([["a", "b"], ["c", "d"]]))
    np.save(tmp_path / "dates.npy", np.zeros((3, 2), dtype="datetime64[D]"))
    np.save(tmp_path / "fields.npy", np.zeros(3, dtype=[("a", "f8"), ("b", "f8")]))
    np.save(tmp_path / "complex.npy", np.ones((3, 2), dtype=np.complex128))
    torch.save(torch.ones(3, 2, dtype=torch.complex64), tmp_path / "complex.pt")
    (tmp_path / "spaces.csv").write_text("1 2\n3 4\n")
    (tmp_path / "inf.csv").write_text("1,2\n3,inf\n")
    (tmp_path / "header_only.csv").write_text("a,b\n")
    (tmp_path / "blank.csv").write_text("\n\n")
    (tmp_path / "garbage.pt").write_text("not a tensor")
    # pickle.dump, not torch.save: torch warned about its protocol before failing.
    (tmp_path / "pickled.pt").write_bytes(pickle.dumps(np.ones((3, 2)), protocol=4))
    (tmp_path / "garbage.npy").write_text("not an array")
    (tmp_path / "empty.npy").write_bytes(b"")
    (tmp_path / "a_dir.npy").mkdir()
    (tmp_path / "a_file").write_text("")
    return tmp_path


ERRORS = [
    ("missing-file", "fit missing.npy -k 2", "DATA 'missing.npy': no such file."),
    ("directory", "fit a_dir.npy -k 2", "expected a file, got a directory"),
    ("unknown-extension", "fit data.txt -k 2", "expected a file ending in .npy, .npz"),
    ("non-numeric-csv", "fit words.csv -k 2", "line 3, column 2: expected a number, got 'abc'"),
    ("mixed-first-row", "fit mixed_first_row.csv -k 1", "line 1, column 2: expected a number"),
    ("header-no", "fit words.csv -k 2 --header no", "line 1, column 1: expected a number, got 'a'"),
    ("empty-cell", "fit empty_cell.csv -k 2", "line 2, column 2: expected a number, got an empty"),
    (
        "semicolon-csv",
        "fit semicolons.csv -k 1",
        "line 2, column 1: expected a number, got '1;2' (numbers separated by ';': a .csv "
        "needs ',' between cells).",
    ),
    ("comma-tsv", "fit commas.tsv -k 1", "got '3,4' (numbers separated by ',': a .tsv needs tabs"),
    ("space-csv", "fit spaces.csv -k 1", "got '3 4' (numbers separated by spaces: a .csv needs"),
    ("word-csv-no-hint", "fit words.csv -k 2", "expected a number, got 'abc'."),
    (
        "strings-npy",
        "fit strings.npy -k 1",
        "DATA 'strings.npy': expected real numbers (bool, integer or float), got dtype <U1.",
    ),
    ("dates-npy", "elbow dates.npy --k 1", "DATA 'dates.npy': expected real numbers"),
    ("structured-npy", "fit fields.npy -k 1", "DATA 'fields.npy': expected real numbers"),
    ("complex-npy", "fit complex.npy -k 1", "DATA 'complex.npy': expected real numbers"),
    ("complex-pt", "fit complex.pt -k 1", "got dtype torch.complex64."),
    (
        "strings-centres",
        "predict ok.npy --centers strings.npy",
        "--centers 'strings.npy': expected real numbers",
    ),
    ("ragged", "fit ragged.tsv -k 1", "line 2 has 1 column, expected 2 like line 1."),
    (
        "decimal-commas",
        "fit decimal_commas.csv -k 1",
        "line 2 has 2 columns, expected 1 like line 1 (line 1 is one cell, 'a;b': a .csv needs "
        "',' between cells).",
    ),
    ("one-named-column", "fit one_name.csv -k 1", "line 3 has 2 columns, expected 1 like line 1."),
    ("header-only", "fit header_only.csv -k 1", "expected rows of numbers after the header"),
    ("blank-csv", "fit blank.csv -k 1", "expected rows of numbers, got an empty file"),
    ("1-d", "fit one_d.npy -k 2", "got shape (20,) (one feature? save it as shape (n, 1))"),
    ("3-d", "fit three_d.npy -k 2", "expected a 2-D array of shape (n_samples, n_features)"),
    ("no-rows", "fit empty_rows.npy -k 1", "expected at least one sample and one feature"),
    ("nan", "fit nan.npy -k 2", "DATA 'nan.npy': row 4, column 2 is nan; expected finite"),
    ("nan-minibatch", "fit nan.npy -k 2 --minibatch", "DATA 'nan.npy': row 4, column 2 is nan"),
    ("nan-predict", "predict nan.npy --centers ok.npy", "row 4, column 2 is nan"),
    ("inf-csv", "elbow inf.csv --k 1", "row 2, column 2 is inf"),
    ("k-above-n", "fit ok.npy -k 50", "n_samples=20 should be >= n_clusters=50."),
    ("k-above-n-minibatch", "fit ok.npy -k 21 --minibatch", "n_samples=20 should be >="),
    ("elbow-k-above-n", "elbow ok.npy --k 1:30", "n_samples=20 should be >= the largest k=30"),
    ("k-zero", "fit ok.npy -k 0", "argument -k/--n-clusters: expected an integer >= 1, got '0'"),
    ("k-not-int", "fit ok.npy -k two", "expected an integer >= 1, got 'two'"),
    ("bad-k-dash", "elbow ok.npy --k 1-5", "argument -k/--k: expected A:B (inclusive)"),
    ("bad-k-reversed", "elbow ok.npy --k 5:1", "expected A <= B in A:B"),
    ("bad-k-words", "elbow ok.npy --k a,b", "expected A:B (inclusive)"),
    ("bad-k-zero", "elbow ok.npy --k 0:3", "expected values of k >= 1"),
    ("bad-k-order", "elbow ok.npy --k 3,2", "expected strictly increasing values of k"),
    ("bad-k-step", "elbow ok.npy --k 1:5:0", "expected a STEP >= 1"),
    (
        "centres-wrong-d",
        "predict ok.npy --centers centres3.npy",
        "with 2 features like DATA, got 3",
    ),
    ("npz-needs-key", "fit two.npz -k 2", "holds 2 arrays ('a', 'b'); choose one with --key"),
    ("npz-bad-key", "fit two.npz -k 2 --key zz", "--key 'zz' not found; it holds 'a', 'b'"),
    ("pt-needs-key", "fit two.pt -k 2", "holds 2 entries ('a', 'b'); choose one with --key"),
    ("centres-need-key", "predict ok.npy --centers two.npz", "choose one with --centers-key"),
    ("pt-list", "fit list.pt -k 1", "expected a tensor or a dict of tensors, got a list"),
    ("pt-meta", "fit meta.pt -k 1", "expected a tensor holding data, got one on the meta"),
    ("key-on-npy", "fit ok.npy -k 2 --key a", "--key applies to .npz, .pt and .pth files"),
    ("garbage-pt", "fit garbage.pt -k 1", "not a readable PyTorch file"),
    ("pickle-pt", "fit pickled.pt -k 1", "DATA 'pickled.pt': not a readable PyTorch file"),
    ("garbage-npy", "fit garbage.npy -k 1", "refusing to load a file without a .npy header"),
    ("empty-npy", "fit empty.npy -k 1", "expected a .npy/.npz file, got an empty file"),
    ("batch-size-alone", "fit ok.npy -k 2 --batch-size 8", "--batch-size applies only with"),
    ("labels-dir", "fit ok.npy -k 2 --labels-out nodir/l.npy", "expected an existing directory"),
    ("labels-suffix", "fit ok.npy -k 2 --labels-out l.txt", "expected a file name ending in .npy"),
    (
        "labels-is-a-directory",
        "fit ok.npy -k 2 --labels-out a_dir.npy",
        "--labels-out: expected a file name, got the directory",
    ),
    (
        "centres-is-a-directory",
        "fit ok.npy -k 2 --centers-out a_dir.npy",
        "--centers-out: expected a file name, got the directory",
    ),
    (
        "predict-labels-is-a-directory",
        "predict ok.npy --centers ok.npy --labels-out a_dir.npy",
        "--labels-out: expected a file name, got the directory",
    ),
    (
        "labels-over-data",
        "fit ok.npy -k 2 --labels-out ./ok.npy",
        "--labels-out: expected a file other than DATA's, got",
    ),
    (
        "labels-over-centres",
        "fit ok.npy -k 2 --labels-out out.npy --centers-out out.npy",
        "--centers-out: expected a file other than --labels-out's",
    ),
    (
        "predict-labels-over-data",
        "predict ok.npy --centers ok.npy --labels-out ok.npy",
        "--labels-out: expected a file other than DATA's",
    ),
    ("plot-suffix", "elbow ok.npy --k 1:3 --plot e.xyz", "--plot: expected a file name ending"),
    ("device-name", "fit ok.npy -k 2 --device gpu", "expected auto, cpu, cuda or cuda:N"),
    ("out-dir-is-file", "demo --out-dir a_file", "--out-dir: expected a directory, got the file"),
    ("unknown-command", "fitt ok.npy", "invalid choice: 'fitt'"),
    ("missing-k", "fit ok.npy", "the following arguments are required: -k/--n-clusters"),
    ("unknown-option", "fit ok.npy -k 2 --frobnicate", "unrecognized arguments: --frobnicate"),
]


@pytest.mark.parametrize(("argv", "message"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_usage_errors_are_one_line_and_exit_2(capsys, files, monkeypatch, argv, message):
    monkeypatch.chdir(files)
    line = assert_one_error_line(*run(capsys, *argv.split()))
    assert message in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without CUDA")
def test_cuda_without_cuda_is_a_usage_error(capsys, files):
    line = assert_one_error_line(*run(capsys, "fit", files / "ok.npy", "-k", 2, "--device", "cuda"))
    assert "--device cuda: no CUDA device is available" in line


# ---------------------------------------------------------------- files never run code


class TouchOnUnpickle:
    """Unpickling this creates ``marker``: a stand-in for any code a pickle can run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def object_array(marker: Path) -> np.ndarray:
    array = np.empty((1, 1), dtype=object)
    array[0, 0] = TouchOnUnpickle(marker)
    return array


PAYLOADS = {
    "pt-dict": (".pt", lambda p, m: torch.save({"x": TouchOnUnpickle(m)}, p), "fit {} -k 1"),
    "pt-object": (".pt", lambda p, m: torch.save(TouchOnUnpickle(m), p), "fit {} -k 1"),
    "npy-object": (
        ".npy",
        lambda p, m: np.save(p, object_array(m), allow_pickle=True),
        "fit {} -k 1",
    ),
    "npy-object-memmap": (
        ".npy",
        lambda p, m: np.save(p, object_array(m), allow_pickle=True),
        "fit {} -k 1 --minibatch",
    ),
    "npz-object": (".npz", lambda p, m: np.savez(p, x=object_array(m)), "elbow {} --k 1"),
    "npy-centres": (
        ".npy",
        lambda p, m: np.save(p, object_array(m), allow_pickle=True),
        "predict ok.npy --centers {}",
    ),
}


def unsafe_load(path: Path) -> None:
    if path.suffix == ".pt":
        torch.load(path, weights_only=False)
    else:
        loaded = np.load(path, allow_pickle=True)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            loaded["x"]


@pytest.mark.parametrize("case", list(PAYLOADS))
def test_pickled_objects_are_refused_and_never_run(capsys, files, monkeypatch, case):
    suffix, write, argv = PAYLOADS[case]
    marker = files / "code-ran"
    payload = files / f"payload{suffix}"
    write(payload, marker)
    monkeypatch.chdir(files)
    line = assert_one_error_line(*run(capsys, *argv.format(payload).split()))
    assert "refusing to load" in line and "unpickling can run code" in line
    assert not marker.exists()
    # The payload is live: an unsafe load does run it.
    unsafe_load(payload)
    assert marker.exists()


# ---------------------------------------------------------------- entry points


def test_help_lists_the_commands_and_version(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    assert re.findall(r"^    (\w+)  ", out, re.MULTILINE) == ["demo", "fit", "predict", "elbow"]
    code, out, _ = run(capsys, "--version")
    assert code == 0
    assert out.startswith(f"torchkmeans {torchkmeans.__version__} (torch {torch.__version__}")


def test_module_entry_is_the_same_main():
    import torchkmeans.__main__ as entry

    assert entry.main is cli.main
    assert entry.tutorial_data is cli.tutorial_data


def test_python_dash_m_runs_the_demo(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "torchkmeans", "demo", "--out-dir", "figures"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "knee: k = " in result.stdout
    assert is_png(tmp_path / "figures" / "kmeans_demo.png")
    assert is_png(tmp_path / "figures" / "elbow.png")


def test_console_script(tmp_path, iris):
    script = shutil.which("torchkmeans", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("the torchkmeans console script is not installed next to this Python")
    np.save(tmp_path / "iris.npy", iris)
    result = subprocess.run(
        [script, "fit", "iris.npy", "-k", "3", "--seed", "0", "--device", "cpu",
         "--labels-out", "labels.npy"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    reference = KMeans(n_clusters=3, random_state=0, device="cpu").fit(iris)
    assert float(field(result.stdout, "inertia")) == pytest.approx(reference.inertia_, rel=1e-7)
    np.testing.assert_array_equal(np.load(tmp_path / "labels.npy"), reference.labels_)
    missing = subprocess.run(
        [script, "fit", "missing.npy", "-k", "3"], cwd=tmp_path, capture_output=True, text=True
    )
    assert missing.returncode == 2
    assert missing.stderr == "torchkmeans: error: DATA 'missing.npy': no such file.\n"


def test_a_container_memory_limit_counts_as_the_available_memory(tmp_path, iris, monkeypatch):
    # /proc/meminfo shows the host's memory: in a container limited to less,
    # a file far over its limit was loaded whole (and the process killed).
    from torchkmeans import cli

    data = tmp_path / "iris.npy"
    np.save(data, iris)
    size = data.stat().st_size
    limit, usage = tmp_path / "memory.max", tmp_path / "memory.current"
    unlimited = (str(tmp_path / "none.max"), str(tmp_path / "none.current"))
    monkeypatch.setattr(cli, "_CGROUP_MEMORY", (unlimited, (str(limit), str(usage))))
    limit.write_text("max\n")
    usage.write_text(f"{10 * size}\n")
    assert not cli._too_big_to_load(str(data))
    limit.write_text(f"{14 * size}\n")
    assert cli._available_memory() == 4 * size
    assert not cli._too_big_to_load(str(data))
    usage.write_text(f"{10 * size + 1}\n")
    assert cli._too_big_to_load(str(data))


@pytest.mark.parametrize("command", ["fit", "elbow"])
def test_a_npy_too_big_to_load_is_memory_mapped(capsys, tmp_path, iris, monkeypatch, command):
    # fit without --minibatch and elbow loaded the file whole, whatever its size.
    from torchkmeans import cli

    data = tmp_path / "iris.npy"
    np.save(data, iris)
    seen = []
    load = cli._load

    def spy(*args, **kwargs):
        loaded = load(*args, **kwargs)
        seen.append(type(loaded.values))
        return loaded

    monkeypatch.setattr(cli, "_load", spy)
    arguments = ["-k", 3] if command == "fit" else ["--k", "1:4"]
    code, out, err = run(capsys, command, data, *arguments, "--seed", 0, "--device", "cpu")
    assert code == 0, err
    monkeypatch.setattr(cli, "_available_memory", lambda: 4 * data.stat().st_size - 1)
    code, streamed, err = run(capsys, command, data, *arguments, "--seed", 0, "--device", "cpu")
    assert code == 0, err
    assert seen == [np.ndarray, np.memmap]
    assert "memory-mapped" in field(streamed, "data") and "memory-mapped" not in field(out, "data")
    if command == "fit":
        assert float(field(streamed, "inertia")) == pytest.approx(
            float(field(out, "inertia")), rel=1e-6
        )


@pytest.mark.parametrize("command", ["fit", "elbow"])
def test_a_memory_mapped_file_names_its_nan_cell(capsys, tmp_path, iris, monkeypatch, command):
    # The streamed fit checks batch by batch: the message said only that X
    # contained NaN or infinity, not where, unlike a file loaded whole.
    from torchkmeans import cli

    values = iris.copy()
    values[130, 2] = np.inf
    np.save(tmp_path / "bad.npy", values)
    monkeypatch.setattr(cli, "_too_big_to_load", lambda name: True)
    arguments = ["-k", 3] if command == "fit" else ["--k", "1:4"]
    code, _, err = run(capsys, command, tmp_path / "bad.npy", *arguments, "--device", "cpu")
    assert code == 2
    assert "row 131, column 3 is inf; expected finite values." in err


def test_elbow_keeps_no_labels(capsys, tmp_path, iris, monkeypatch):
    # The sweep's labels (len(k) * n int64, unused here) outweighed a
    # memory-mapped file of rows of up to 20 float32 features.
    from torchkmeans import cli

    data = tmp_path / "iris.npy"
    np.save(data, iris.astype(np.float32))
    results = []

    def spy(*args, **kwargs):
        results.append(elbow(*args, **kwargs))
        return results[-1]

    monkeypatch.setattr(cli, "elbow", spy)
    monkeypatch.setattr(cli, "_available_memory", lambda: 4 * data.stat().st_size - 1)
    code, out, err = run(capsys, "elbow", data, "--k", "1:6", "--seed", 0, "--device", "cpu")
    assert code == 0, err
    assert "memory-mapped" in field(out, "data")
    assert len(results) == 1 and results[0].labels is None
    mapped = np.load(data, mmap_mode="r")
    reference = elbow(mapped, k=range(1, 7), random_state=0, device="cpu")
    assert elbow_table(out) == pytest.approx(dict(zip(reference.ks, reference.inertia)), rel=1e-6)


def test_elbow_offers_the_sensitivity_that_no_knee_advises(capsys, tmp_path):
    # "No knee found ... try ... a lower sensitivity" had no option to act on.
    np.save(tmp_path / "uniform.npy", np.random.RandomState(0).rand(50, 3))
    argv = ["elbow", tmp_path / "uniform.npy", "--k", "1:6", "--seed", 1]
    code, out, err = run(capsys, *argv)
    assert code == 0 and "knee: none found" in out and "a lower sensitivity" in err
    code, out, err = run(capsys, *argv, "--sensitivity", "0.5")
    assert code == 0 and "knee: k = 3" in out and err == ""
    code, out, err = run(capsys, *argv, "--sensitivity", "-1")
    assert code == 2 and "argument --sensitivity: expected a number >= 0, got '-1'" in err
    assert "--sensitivity S" in run(capsys, "elbow", "--help")[1]
