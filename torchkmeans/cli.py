"""The ``torchkmeans`` command: ``demo``, ``fit``, ``predict`` and ``elbow``.

``torchkmeans`` (the console script) and ``python -m torchkmeans`` both call
:func:`main`. Data files are ``.npy``, ``.npz``, ``.pt``/``.pth``, ``.csv``
and ``.tsv``; reading one never runs code from it (no unpickling of Python
objects). A user's mistake ends with one line ``torchkmeans: error: ...`` on
stderr and exit status 2; matplotlib is only needed for the pictures.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import pickle
import re
import secrets
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NoReturn

import numpy as np
import torch

from . import __version__
from . import _validation as v
from .elbow import ElbowResult, elbow
from .functional.distances import nearest_centroids, unit_rows
from .kmeans import KMeans
from .minibatch import MiniBatchKMeans

__all__ = ["UsageError", "main", "tutorial_data"]

_PROG = "torchkmeans"
_COMMANDS = ("demo", "fit", "predict", "elbow")
_PLOT_HINT = 'pip install "torchkmeans[plot]"'
_TEXT_DELIMITERS = {".csv": ",", ".tsv": "\t"}
_SUFFIXES = (".npy", ".npz", ".pt", ".pth", ".csv", ".tsv")
# Rows checked, or handed to the distance kernels by ``predict``, at a time (bytes of float64).
_CHUNK_BYTES = 64 * 2**20
# Cluster sizes printed in full up to this many clusters.
_MAX_SIZES_SHOWN = 100


class UsageError(Exception):
    """A mistake in the command line or in an input file, reported in one line (exit status 2)."""


def tutorial_data(seed: int = 2021) -> np.ndarray:
    """The classic tutorial's data: 300 points, X1 integers 0..3, X2 uniform 0..10.

    Parameters
    ----------
    seed : int, default=2021
        Seed of the ``numpy.random.RandomState`` that draws the points.

    Returns
    -------
    numpy.ndarray of shape (300, 2), float64

    Examples
    --------
    >>> X = tutorial_data()
    >>> X.shape, set(X[:, 0].tolist()) <= {0.0, 1.0, 2.0, 3.0}
    ((300, 2), True)
    """
    rng = np.random.RandomState(seed)
    x1 = rng.randint(0, 4, size=[300, 1])
    x2 = rng.uniform(0, 10, size=[300, 1])
    return np.append(x1, x2, axis=1).astype(np.float64)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``torchkmeans`` command line and return its exit status.

    Without a command (or with options only, as in ``torchkmeans --seed 7``)
    it runs ``demo``. Mistakes in the arguments or in the input files print
    one line ``torchkmeans: error: ...`` on stderr and return 2.

    Parameters
    ----------
    argv : sequence of str, optional
        The arguments after the program name; ``sys.argv[1:]`` when None.

    Returns
    -------
    int
        0 on success, 2 for a usage error, 1 when memory ran out, 130 when
        interrupted.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> X = np.array([[0.0, 0.0], [0.0, 1.0], [5.0, 5.0], [5.0, 6.0]])
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     np.save(Path(tmp, "x.npy"), X)
    ...     labels = str(Path(tmp, "labels.npy"))
    ...     status = main(["fit", str(Path(tmp, "x.npy")), "-k", "2", "--seed", "0",
    ...                    "--device", "cpu", "--labels-out", labels, "--quiet"])
    ...     sizes = np.bincount(np.load(labels)).tolist()
    >>> status, sizes
    (0, [2, 2])
    """
    parser = _build_parser()
    try:
        args = parser.parse_args(_with_default_command(argv))
    except SystemExit as exc:  # --help, --version, or a usage error already printed
        return exc.code if isinstance(exc.code, int) else 2
    try:
        with _cli_warnings():
            return int(args.run(args))
    except UsageError as exc:
        return _fail(str(exc))
    except (ValueError, TypeError) as exc:
        # The library's argument and data checks: one sentence naming the problem.
        return _fail(str(exc))
    except OSError as exc:
        if exc.filename is not None and exc.strerror:
            return _fail(f"{exc.strerror}: {exc.filename}")
        return _fail(str(exc))
    except (MemoryError, torch.cuda.OutOfMemoryError) as exc:
        detail = _one_line(str(exc)).split(". ")[0] if str(exc) else "MemoryError"
        print(
            f"{_PROG}: error: out of memory ({detail}); try fit --minibatch, a smaller "
            "--batch-size or --device cpu.",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print(f"{_PROG}: interrupted", file=sys.stderr)
        return 130


# ---------------------------------------------------------------- the parser


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors in one line, like every other error of the command."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{_PROG}: error: {message} (see '{self.prog} --help')\n")


def _with_default_command(argv: Sequence[str] | None) -> list[str]:
    """``demo`` when no command is given, so that plain ``torchkmeans`` keeps its old behaviour."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or (args[0].startswith("-") and args[0] not in ("-h", "--help", "--version")):
        args.insert(0, "demo")
    return args


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def _sensitivity(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def _seed_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def _k_values(text: str) -> tuple[int, ...]:
    """``--k``: ``A:B`` (inclusive), ``A:B:STEP``, a comma list ``2,4,8``, or ``N`` for ``1:N``."""
    expected = f"expected A:B (inclusive), A:B:STEP, a list like 2,4,8 or N (1:N), got {text!r}"
    spec = text.strip()
    try:
        if ":" in spec:
            parts = [int(part) for part in spec.split(":")]
            if len(parts) not in (2, 3):
                raise ValueError
            start, stop = parts[0], parts[1]
            step = parts[2] if len(parts) == 3 else 1
            if step < 1:
                raise argparse.ArgumentTypeError(f"expected a STEP >= 1 in A:B:STEP, got {text!r}")
            if stop < start:
                raise argparse.ArgumentTypeError(f"expected A <= B in A:B, got {text!r}")
            ks = tuple(range(start, stop + 1, step))
        elif "," in spec:
            ks = tuple(int(part) for part in spec.split(","))
        else:
            ks = tuple(range(1, int(spec) + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(expected) from None
    if not ks or min(ks) < 1:
        raise argparse.ArgumentTypeError(f"expected values of k >= 1, got {text!r}")
    if any(b <= a for a, b in zip(ks, ks[1:])):
        raise argparse.ArgumentTypeError(f"expected strictly increasing values of k, got {text!r}")
    return ks


def _version() -> str:
    cuda = f"CUDA {torch.version.cuda}" if torch.version.cuda else "no CUDA"
    return f"{_PROG} {__version__} (torch {torch.__version__}, {cuda})"


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=_PROG,
        description="K-Means on PyTorch (CPU or CUDA) from the command line. "
        "Without a command, runs 'demo'.",
        epilog="examples:\n"
        "  torchkmeans demo --out-dir figures\n"
        "  torchkmeans fit data.npy -k 8 --labels-out labels.npy --centers-out centers.npy\n"
        "  torchkmeans fit big.npy -k 256 --minibatch --device cuda\n"
        "  torchkmeans predict new.csv --centers centers.npy --labels-out new_labels.npy\n"
        "  torchkmeans elbow data.npy --k 1:20 --plot elbow.png\n\n"
        "DATA is a .npy, .npz, .pt/.pth (tensor, or dict of tensors with --key), .csv or\n"
        ".tsv file of shape (n_samples, n_features). Files are read without unpickling\n"
        "Python objects. Usage errors exit with status 2.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=_version())
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", dest="command")
    commands.required = True

    device = _Parser(add_help=False)
    device.add_argument(
        "--device",
        default="auto",
        metavar="{auto,cpu,cuda,cuda:N}",
        help="where to compute (default: auto, CUDA when present)",
    )
    seed = _Parser(add_help=False)
    seed.add_argument(
        "--seed",
        type=_seed_int,
        default=None,
        metavar="S",
        help="random_state; default: a fresh seed, printed so the run can be repeated",
    )
    data = _Parser(add_help=False)
    data.add_argument("data", metavar="DATA", help="input file (.npy .npz .pt .pth .csv .tsv)")
    data.add_argument(
        "--key", metavar="NAME", help="array of a .npz, or entry of a .pt dict, to read"
    )
    data.add_argument(
        "--header",
        choices=("auto", "yes", "no"),
        default="auto",
        help="whether a .csv/.tsv starts with a header row (default: auto, a first row "
        "without any number, or pandas' names of unnamed columns 0,1,... above rows "
        "that are not all whole numbers or after an empty cell)",
    )
    quiet = _Parser(add_help=False)
    quiet.add_argument(
        "--quiet",
        "-q",
        action="store_true",
        help="print nothing but errors and warnings, and no progress bar",
    )
    metric = _Parser(add_help=False)
    metric.add_argument(
        "--metric",
        choices=("euclidean", "cosine"),
        default="euclidean",
        help="euclidean, or cosine (spherical k-means) (default: euclidean)",
    )

    demo = commands.add_parser(
        "demo",
        help="fit and draw the classic 300-point tutorial example",
        description="Fit KMeans(n_clusters=4, init='k-means++', max_iter=300) on the classic "
        "300-point tutorial data, sweep k = 1..9 for the elbow, print the results and "
        "write kmeans_demo.png and elbow.png (with matplotlib).",
    )
    demo.add_argument(
        "--out-dir",
        default=".",
        metavar="DIR",
        help="directory for the PNGs, created if missing (default: current directory)",
    )
    demo.add_argument(
        "--seed",
        type=_seed_int,
        default=2021,
        metavar="S",
        help="random_state of the fit and the sweep (default: 2021)",
    )
    demo.add_argument(
        "--device",
        default="cpu",
        metavar="{auto,cpu,cuda,cuda:N}",
        help="where to compute (default: cpu, which gives the tutorial's numbers)",
    )
    demo.add_argument(
        "-k", "--n-clusters", type=_positive_int, default=4, help="clusters (default: 4)"
    )
    demo.set_defaults(run=_run_demo)

    fit = commands.add_parser(
        "fit",
        parents=[data, device, metric, seed, quiet],
        help="cluster a data file; write labels and centres",
        description="Fit KMeans (or MiniBatchKMeans with --minibatch) on DATA, print a "
        "summary and optionally write the labels and centres as .npy files. A .npy "
        "larger than a quarter of the available memory is memory-mapped and streamed "
        "through every iteration.",
    )
    fit.add_argument(
        "-k", "--n-clusters", type=_positive_int, required=True, metavar="K", help="clusters"
    )
    fit.add_argument(
        "--minibatch",
        action="store_true",
        help="mini-batch k-means; a .npy is memory-mapped and streamed, never loaded whole",
    )
    fit.add_argument(
        "--batch-size",
        type=_positive_int,
        metavar="N",
        help="rows per mini-batch step (with --minibatch; default: 1024)",
    )
    fit.add_argument(
        "--n-init",
        type=_positive_int,
        metavar="N",
        help="k-means++ restarts; the lowest inertia wins (default: 1)",
    )
    fit.add_argument(
        "--max-iter",
        type=_positive_int,
        metavar="N",
        help="iterations, or passes over the data with --minibatch (default: 300 / 100)",
    )
    fit.add_argument("--labels-out", metavar="FILE.npy", help="write the labels (int64, n)")
    fit.add_argument("--centers-out", metavar="FILE.npy", help="write the centres (k, d)")
    fit.set_defaults(run=_run_fit)

    predict = commands.add_parser(
        "predict",
        parents=[data, device, metric, quiet],
        help="label a data file with the nearest of given centres",
        description="Assign every row of DATA to the nearest of the given centres (no "
        "fitting), print the count per cluster and optionally write the labels.",
    )
    predict.add_argument(
        "--centers", required=True, metavar="FILE", help="centres of shape (k, d), any DATA format"
    )
    predict.add_argument(
        "--centers-key", metavar="NAME", help="array of a .npz, or entry of a .pt dict, to read"
    )
    predict.add_argument("--labels-out", metavar="FILE.npy", help="write the labels (int64, n)")
    predict.set_defaults(run=_run_predict)

    sweep = commands.add_parser(
        "elbow",
        parents=[data, device, metric, seed, quiet],
        help="inertia for a range of k, and the knee of the curve",
        description="Fit K-Means for every k of a range (all at once, on the device), print "
        "the inertia per k and the knee, and optionally plot the curve. A .npy larger "
        "than a quarter of the available memory is memory-mapped and each k is fitted "
        "in passes over it.",
    )
    sweep.add_argument(
        "-k",
        "--k",
        dest="k",
        type=_k_values,
        default=tuple(range(1, 11)),
        metavar="KS",
        help="A:B (inclusive), A:B:STEP, a list 2,4,8, or N for 1:N (default: 1:10)",
    )
    sweep.add_argument(
        "--n-init", type=_positive_int, default=3, metavar="N", help="restarts per k (default: 3)"
    )
    sweep.add_argument(
        "--max-iter", type=_positive_int, default=300, metavar="N", help="(default: 300)"
    )
    # "No knee found" advises a lower sensitivity: the command must offer it.
    sweep.add_argument(
        "--sensitivity",
        type=_sensitivity,
        default=1.0,
        metavar="S",
        help="how sharp a bend the knee must be; lower finds softer knees (default: 1.0)",
    )
    sweep.add_argument(
        "--plot", metavar="FILE", help="draw the curve into FILE (.png, .pdf, .svg; matplotlib)"
    )
    sweep.set_defaults(run=_run_elbow)
    return parser


# ---------------------------------------------------------------- commands


def _run_demo(args: argparse.Namespace) -> int:
    device = _device(args.device)
    figure = _figure_class()
    out_dir = Path(args.out_dir).expanduser().resolve()
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out-dir: expected a directory, got the file {str(out_dir)!r}.")
    if figure is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    X = tutorial_data()
    k = args.n_clusters
    start = time.perf_counter()
    km = KMeans(
        n_clusters=k, init="k-means++", max_iter=300, random_state=args.seed, device=device
    ).fit(X)
    elapsed = time.perf_counter() - start
    print(
        f"KMeans(n_clusters={k}, init='k-means++', max_iter=300, random_state={args.seed}) "
        f"on the classic tutorial data ({X.shape[0]} x {X.shape[1]}), device {device}"
    )
    print("cluster_centers_:")
    with np.printoptions(precision=4, suppress=True):
        print(km.cluster_centers_)
    _print_fields(
        [
            ("cluster sizes", _sizes(km.labels_, k)),
            ("inertia_", f"{km.inertia_:.8g}"),
            ("n_iter_", km.n_iter_),
            ("time", _duration(elapsed)),
        ]
    )
    ks = tuple(range(1, 10))
    # n_init=1 as KMeans' default ("auto" is 1 for k-means++), with the same seed.
    result = elbow(X, k=ks, n_init=1, random_state=args.seed, device=device)
    print()
    print(f"elbow: k = 1..9, n_init=1, random_state={args.seed}")
    _print_elbow(result)
    if figure is None:
        print(f"figures: not drawn, matplotlib is not installed; {_PLOT_HINT} to get them")
        return 0
    from .plotting import plot_clusters, plot_elbow

    title = f"K-Means, k = {k}: clusters and centroids (black stars)"
    try:
        demo_png = _save_figure(
            figure,
            out_dir / "kmeans_demo.png",
            lambda ax: plot_clusters(X, km.labels_, km.cluster_centers_, ax=ax).set_title(title),
        )
        elbow_png = _save_figure(
            figure,
            out_dir / "elbow.png",
            lambda ax: plot_elbow(result, ax=ax).set_title("Elbow method: tutorial data"),
        )
    except ImportError:
        print(f"figures: not drawn, matplotlib could not be imported; {_PLOT_HINT} to get them")
        return 0
    print(f"figures: {demo_png}")
    print(f"         {elbow_png}")
    return 0


def _run_fit(args: argparse.Namespace) -> int:
    device = _device(args.device)
    labels_out = _npy_output(args.labels_out, "--labels-out")
    centers_out = _npy_output(args.centers_out, "--centers-out")
    _check_outputs({"DATA": args.data}, {"--labels-out": labels_out, "--centers-out": centers_out})
    if args.batch_size is not None and not args.minibatch:
        raise UsageError("--batch-size applies only with --minibatch.")
    mmap = True if args.minibatch else _too_big_to_load(args.data)
    data = _load(args.data, "DATA", key=args.key, mmap=mmap, header=args.header)
    seed = _seed(args.seed)
    params: dict[str, Any] = {
        "n_clusters": args.n_clusters,
        "init": "k-means++",
        "n_init": "auto" if args.n_init is None else args.n_init,
        "metric": args.metric,
        "random_state": seed,
        "device": str(device),
    }
    if args.max_iter is not None:
        params["max_iter"] = args.max_iter
    estimator: KMeans
    if args.minibatch:
        params["batch_size"] = 1024 if args.batch_size is None else args.batch_size
        # KMeans' verbose only logs the inertia after the fit: progress is MiniBatchKMeans'.
        estimator = MiniBatchKMeans(verbose=_progress(args), **params)
    else:
        estimator = KMeans(**params)
    start = time.perf_counter()
    with _naming_bad_cell(data):
        estimator.fit(data.values)
    elapsed = time.perf_counter() - start
    labels = _numpy(estimator.labels_).astype(np.int64, copy=False)
    centers = _numpy(estimator.cluster_centers_)
    if labels_out is not None:
        _save_npy(labels_out, labels)
    if centers_out is not None:
        _save_npy(centers_out, centers)
    if args.quiet:
        return 0
    n_init = estimator.get_params()["n_init"]
    n_init = 1 if n_init == "auto" else n_init
    if args.minibatch:
        algorithm = (
            f"MiniBatchKMeans, batch_size={params['batch_size']}, "
            f"k-means++ seeding, n_init={n_init}"
        )
        iterations = (
            f"{estimator.n_iter_} pass{'' if estimator.n_iter_ == 1 else 'es'} over the data "
            "(n_iter_), "
            f"{estimator.n_steps_} mini-batch steps (n_steps_)"
        )
    else:
        algorithm = f"KMeans (Lloyd), k-means++ seeding, n_init={n_init}"
        iterations = f"{estimator.n_iter_} (n_iter_)"
    fields: list[tuple[str, Any]] = [
        ("data", data.describe()),
        ("n_samples", data.shape[0]),
        ("n_features", data.shape[1]),
        ("n_clusters", args.n_clusters),
        ("algorithm", algorithm),
        ("metric", args.metric),
        ("device", device),
        ("dtype", _dtype_name(estimator.cluster_centers_)),
        ("seed", seed),
        ("iterations", iterations),
        ("inertia", f"{estimator.inertia_:.8g}"),
        ("time", _duration(elapsed)),
        ("cluster sizes", _sizes(labels, args.n_clusters)),
    ]
    fields += _written(labels=labels_out, centers=centers_out)
    _print_fields(fields)
    return 0


def _run_predict(args: argparse.Namespace) -> int:
    device = _device(args.device)
    labels_out = _npy_output(args.labels_out, "--labels-out")
    _check_outputs({"DATA": args.data, "--centers": args.centers}, {"--labels-out": labels_out})
    centers_file = _load(
        args.centers, "--centers", key=args.centers_key, key_option="--centers-key"
    )
    data = _load(args.data, "DATA", key=args.key, mmap=True, header=args.header)
    centres, _ = v.as_tensor(
        centers_file.values, "centers", device=device, shape="(n_clusters, n_features)"
    )
    if centres.shape[1] != data.shape[1]:
        raise UsageError(
            f"Expected --centers with {data.shape[1]} features like DATA, got "
            f"{centres.shape[1]} (shape {tuple(centres.shape)})."
        )
    k = centres.shape[0]
    start = time.perf_counter()
    labels, inertia = _nearest(data.values, centres, args.metric, device, data.where)
    elapsed = time.perf_counter() - start
    if labels_out is not None:
        _save_npy(labels_out, labels)
    if args.quiet:
        return 0
    fields: list[tuple[str, Any]] = [
        ("data", data.describe()),
        ("centers", centers_file.describe()),
        ("n_samples", data.shape[0]),
        ("n_features", data.shape[1]),
        ("n_clusters", k),
        ("metric", args.metric),
        ("device", device),
        ("inertia", f"{inertia:.8g}"),
        ("time", _duration(elapsed)),
        ("cluster sizes", _sizes(labels, k)),
    ]
    fields += _written(labels=labels_out)
    _print_fields(fields)
    return 0


def _run_elbow(args: argparse.Namespace) -> int:
    device = _device(args.device)
    plot_path, figure = _plot_output(args.plot) if args.plot else (None, None)
    data = _load(
        args.data, "DATA", key=args.key, mmap=_too_big_to_load(args.data), header=args.header
    )
    seed = _seed(args.seed)
    ks: tuple[int, ...] = args.k
    start = time.perf_counter()
    with _naming_bad_cell(data):
        result = elbow(
            data.values,
            k=ks,
            n_init=args.n_init,
            max_iter=args.max_iter,
            random_state=seed,
            sensitivity=args.sensitivity,
            metric=args.metric,
            device=device,
            verbose=_progress(args),
            # Nothing here reads them, and ten ks' labels outweigh rows of up
            # to 20 float32 features: a memory-mapped file was to stay unloaded.
            compute_labels=False,
        )
    elapsed = time.perf_counter() - start
    if plot_path is not None:
        from .plotting import plot_elbow

        _save_figure(figure, plot_path, lambda ax: plot_elbow(result, ax=ax))
    if args.quiet:
        return 0
    _print_fields(
        [
            ("data", data.describe()),
            ("n_samples", data.shape[0]),
            ("n_features", data.shape[1]),
            ("sweep", f"k = {_ks_text(ks)}, n_init={args.n_init}, metric={args.metric}"),
            ("device", device),
            ("seed", seed),
            ("time", _duration(elapsed)),
        ]
    )
    print()
    _print_elbow(result)
    if plot_path is not None:
        print(f"plot: {plot_path}")
    return 0


# ---------------------------------------------------------------- reading data


@dataclass
class _Data:
    """A 2-D array read from a file: numpy array, read-only memmap or CPU tensor."""

    values: Any
    path: Path
    where: str
    header: list[str] | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.values.shape[0]), int(self.values.shape[1])

    def describe(self) -> str:
        kind = ", memory-mapped" if isinstance(self.values, np.memmap) else ""
        text = f"{self.path} ({self.shape[0]} x {self.shape[1]}, {_dtype_name(self.values)}{kind})"
        if self.header is not None:
            text += f", header: {', '.join(self.header)}"
        return text


# fit (without --minibatch) and elbow memory-map a .npy file larger than this
# share of the memory available, and stream it, rather than load it: an
# in-memory fit needs about twice the data.
_LOAD_MAX_SHARE = 0.25


# A container's memory limit and use (cgroup v2, then v1): /proc/meminfo
# shows the host's memory, and loading more than the limit gets the process
# killed, with no MemoryError to report.
_CGROUP_MEMORY = (
    ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
    (
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
        "/sys/fs/cgroup/memory/memory.usage_in_bytes",
    ),
)


def _available_memory() -> int | None:
    """Bytes of memory available to a new allocation, where the system says."""
    available = None
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    if available is None:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, ValueError, OSError):
            pass
    for limit_file, usage_file in _CGROUP_MEMORY:
        try:
            with open(limit_file) as limit, open(usage_file) as usage:
                room = int(limit.read()) - int(usage.read())  # "max": no limit
        except (OSError, ValueError):
            continue
        available = max(0, room) if available is None else max(0, min(available, room))
        break
    return available


def _too_big_to_load(name: str) -> bool:
    """Whether ``name`` is a .npy file over ``_LOAD_MAX_SHARE`` of the available memory."""
    path = Path(name).expanduser()
    if path.suffix.lower() != ".npy" or not path.is_file():
        return False  # other formats cannot be memory-mapped; _load reports bad paths
    available = _available_memory()
    return available is not None and path.stat().st_size > _LOAD_MAX_SHARE * available


def _load(
    name: str,
    what: str,
    *,
    key: str | None = None,
    key_option: str = "--key",
    mmap: bool = False,
    header: str = "auto",
) -> _Data:
    """Read a 2-D numeric array from ``name``; ``what`` names it in messages (``DATA``)."""
    path = Path(name).expanduser()
    where = f"{what} {name!r}"
    if not path.exists():
        raise UsageError(f"{where}: no such file.")
    if not path.is_file():
        raise UsageError(f"{where}: expected a file, got a directory or another kind of entry.")
    suffix = path.suffix.lower()
    if suffix not in _SUFFIXES:
        raise UsageError(
            f"{where}: expected a file ending in {', '.join(_SUFFIXES)}, got "
            + (f"{suffix!r}." if suffix else "no extension.")
        )
    if key is not None and suffix not in (".npz", ".pt", ".pth"):
        raise UsageError(f"{key_option} applies to .npz, .pt and .pth files, not to {where}.")
    column_names = None
    if suffix in (".npy", ".npz"):
        values = _load_numpy(path, where, key, key_option, mmap)
    elif suffix in (".pt", ".pth"):
        values = _load_torch(path, where, key, key_option)
    else:
        values, column_names = _load_text(path, where, _TEXT_DELIMITERS[suffix], header)
    if isinstance(values, torch.Tensor):
        numeric = not values.is_complex()
    else:
        numeric = values.dtype.kind in "biuf"
    if not numeric:
        # Checked here, not by the estimator: its message names X or centers, not the file.
        raise UsageError(
            f"{where}: expected real numbers (bool, integer or float), got dtype {values.dtype}."
        )
    if values.ndim != 2:
        raise UsageError(
            f"{where}: expected a 2-D array of shape (n_samples, n_features), got shape "
            f"{tuple(values.shape)}"
            + (" (one feature? save it as shape (n, 1))." if values.ndim == 1 else ".")
        )
    if values.shape[0] == 0 or values.shape[1] == 0:
        raise UsageError(
            f"{where}: expected at least one sample and one feature, got shape "
            f"{tuple(values.shape)}."
        )
    if not isinstance(values, np.memmap):
        # A memmap is checked batch by batch as the fit reads it: a pass here
        # would read the whole file once more.
        for start, chunk in _chunks(values):
            _check_finite(chunk, start, where)
    return _Data(values, path.resolve(), where, column_names)


@contextlib.contextmanager
def _naming_bad_cell(data: _Data) -> Iterator[None]:
    """On a memory-mapped file's NaN or infinity, name its cell as ``_load`` does.

    A memmap is checked batch by batch by the fit, whose message cannot say
    where the batch started; the file is scanned again only after it failed.
    """
    try:
        yield
    except ValueError:
        if isinstance(data.values, np.memmap):
            for start, chunk in _chunks(data.values):
                _check_finite(chunk, start, data.where)
        raise


def _chunks(values: Any) -> Iterator[tuple[int, Any]]:
    """Consecutive blocks of rows of ``values`` of about ``_CHUNK_BYTES`` as float64."""
    rows = max(1, _CHUNK_BYTES // (8 * int(values.shape[1])))
    for start in range(0, int(values.shape[0]), rows):
        yield start, values[start : start + rows]


def _check_finite(chunk: Any, start: int, where: str) -> None:
    """Name the first NaN or infinity of ``chunk`` (rows from ``start``), counting from 1."""
    if isinstance(chunk, torch.Tensor):
        if not chunk.is_floating_point() and not chunk.is_complex():
            return
        bad = ~torch.isfinite(chunk)
        if not bool(bad.any()):
            return
        row, column = (int(i) for i in bad.nonzero()[0])
        value = chunk[row, column].item()
    else:
        if chunk.dtype.kind not in "fc":
            return
        bad = ~np.isfinite(chunk)
        if not bad.any():
            return
        row, column = (int(i) for i in np.argwhere(bad)[0])
        value = chunk[row, column]
    raise UsageError(
        f"{where}: row {start + row + 1}, column {column + 1} is {value}; expected finite values."
    )


def _refuse_pickle(where: str, detail: str) -> UsageError:
    return UsageError(
        f"{where}: refusing to load {detail}: unpickling can run code, and this command never "
        "does; save plain numeric arrays or tensors instead."
    )


def _load_numpy(path: Path, where: str, key: str | None, key_option: str, mmap: bool) -> Any:
    try:
        loaded = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except ValueError as exc:
        message = str(exc)
        if "pickled" in message:
            raise _refuse_pickle(
                where, "a file without a .npy header (numpy would have to unpickle it)"
            ) from None
        if "Python objects" in message or "allow_pickle" in message:
            raise _refuse_pickle(where, "an array of Python objects") from None
        raise UsageError(
            f"{where}: not a readable .npy/.npz file ({_one_line(message)})."
        ) from None
    except EOFError:
        raise UsageError(f"{where}: expected a .npy/.npz file, got an empty file.") from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        if key is not None:
            raise UsageError(f"{key_option} applies to .npz and .pt files, but {where} is a .npy.")
        return loaded
    with loaded:
        names = list(loaded.files)
        chosen = _choose_key(names, key, where, key_option, "arrays")
        try:
            return loaded[chosen]
        except ValueError as exc:
            if "allow_pickle" in str(exc):
                raise _refuse_pickle(where, f"array {chosen!r} of Python objects") from None
            raise


def _load_torch(path: Path, where: str, key: str | None, key_option: str) -> torch.Tensor:
    try:
        # torch warns about a pickle protocol before it fails on a file that
        # torch.save did not write: the error alone is the one line to print.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            loaded = torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        text = str(exc)
        after = text.split("WeightsUnpickler error:", 1)[1] if "WeightsUnpickler" in text else text
        reason = _one_line(after.split("Check the documentation")[0]).split(". ")[0].rstrip(".")
        if "Unsupported global" in reason:
            raise _refuse_pickle(where, f"Python objects other than tensors ({reason})") from None
        raise UsageError(f"{where}: not a readable PyTorch file ({reason}).") from None
    except OSError:
        raise
    except Exception as exc:
        # A corrupt or foreign file makes torch's readers fail with nearly any
        # exception (KeyError, EOFError, RuntimeError, ...); only reading happened.
        detail = _one_line(str(exc))
        raise UsageError(
            f"{where}: not a readable PyTorch file ({type(exc).__name__}"
            + (f": {detail}" if detail else "")
            + ")."
        ) from None
    for warning in caught:
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    if isinstance(loaded, dict):
        tensors = {str(name): value for name, value in loaded.items()}
        chosen = _choose_key(list(tensors), key, where, key_option, "entries")
        loaded = tensors[chosen]
        where = f"{where} entry {chosen!r}"
    elif key is not None:
        raise UsageError(f"{key_option} needs a dict in {where}, got a {type(loaded).__name__}.")
    if not isinstance(loaded, torch.Tensor):
        raise UsageError(
            f"{where}: expected a tensor or a dict of tensors, got a {type(loaded).__name__}."
        )
    if loaded.layout != torch.strided:
        raise UsageError(f"{where}: expected a dense tensor, got layout {loaded.layout}.")
    if loaded.is_meta:
        # A shape without data (saved from a model built on the meta device).
        raise UsageError(f"{where}: expected a tensor holding data, got one on the meta device.")
    return loaded


def _choose_key(names: list[str], key: str | None, where: str, key_option: str, what: str) -> str:
    listed = ", ".join(repr(name) for name in names[:20]) + (", ..." if len(names) > 20 else "")
    if key is not None:
        if key not in names:
            raise UsageError(f"{where}: {key_option} {key!r} not found; it holds {listed}.")
        return key
    if len(names) == 1:
        return names[0]
    if not names:
        raise UsageError(f"{where}: expected one array, got an empty archive.")
    raise UsageError(f"{where} holds {len(names)} {what} ({listed}); choose one with {key_option}.")


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _load_text(
    path: Path, where: str, delimiter: str, header: str
) -> tuple[np.ndarray, list[str] | None]:
    """The numbers of a .csv/.tsv, and the header's names if it has one.

    Read by numpy's C parser when it can (np.loadtxt: 29 MB of numbers took
    2.8 s and 367 MB through csv.reader and a string array, 0.3 s and the
    size of the result so); any file it reads otherwise than the csv module
    would (blank lines holding spaces, empty cells, ragged rows, a row label
    that is not a number, numpy < 1.23) goes through the csv module, which
    also names the fault.
    """
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle, delimiter=delimiter)
            first = next((row for row in reader if not _blank(row)), None)
            first_line = reader.line_num
            second = next((row for row in reader if not _blank(row)), None)
    except (UnicodeDecodeError, csv.Error):
        first = None
    if first is not None:
        has_header, names, skip = _text_header(first, header, second)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # "input contained no data"
                values = np.loadtxt(
                    path,
                    dtype=np.float64,
                    delimiter=delimiter,
                    comments=None,
                    skiprows=first_line if has_header else 0,
                    quotechar='"',
                    encoding="utf-8-sig",
                    ndmin=2,
                )
        except (ValueError, TypeError, UnicodeDecodeError, UserWarning):
            pass
        else:
            if values.shape[0] and values.shape[1] == len(first):
                return values[:, skip:], names
    return _load_text_rows(path, where, delimiter, header)


def _blank(row: list[str]) -> bool:
    return not row or (len(row) == 1 and not row[0].strip())


def _text_header(
    row: list[str], header: str, next_row: list[str] | None = None
) -> tuple[bool, list[str] | None, int]:
    """Whether the first row ``row`` is a header (``next_row`` the row after
    it, if any), its names, and the leading columns to drop."""
    first = [cell.strip() for cell in row]
    if header == "auto":
        # A header has names only; a first row mixing names and numbers is data
        # with a mistake in it, reported as such rather than silently dropped.
        # The exception is the header pandas writes for a frame of unnamed
        # columns, their positions 0..n-1 (DataFrame(X).to_csv(path)), after
        # an empty cell over its row labels when it writes them: read as data,
        # it was a row of [0, 1, ...] or an error. Without that empty cell a
        # row 0, 1, ..., n-1 is also integer data: a header only above rows
        # that are not all whole numbers, and said so on stderr.
        has_header = any(first) and not any(_is_number(cell) for cell in first if cell)
        if not has_header and _pandas_positions(first):
            labelled = not first[0]
            has_header = labelled or not _whole_numbers(next_row)
            if has_header and not labelled:
                print(
                    f"torchkmeans: read the first row {','.join(first)} as pandas' names "
                    "of unnamed columns (pass --header no if it is data)",
                    file=sys.stderr,
                )
    else:
        has_header = header == "yes"
    names = first if has_header else None
    if names is not None and len(names) > 1 and not names[0] and all(names[1:]):
        # An unnamed first column under named ones holds row labels (pandas'
        # DataFrame.to_csv writes its index so), not a feature.
        return True, [*names[1:], "(unnamed first column: row labels, dropped)"], 1
    return has_header, names, 0


def _whole_numbers(row: list[str] | None) -> bool:
    """Whether every cell of ``row`` is written as a whole number (``3``, ``-1``),
    or there is no row."""
    if row is None:
        return True
    cells = [cell.strip() for cell in row]
    return all(cell.lstrip("+-").isdigit() for cell in cells if cell)


def _pandas_positions(cells: list[str]) -> bool:
    """Whether ``cells`` are pandas' names of unnamed columns, ``0, 1, ..., n-1``
    (at least two of them, or any number after the empty cell over row labels)."""
    labelled = bool(cells) and not cells[0]
    names = cells[1:] if labelled else cells
    return len(names) >= (1 if labelled else 2) and names == [str(i) for i in range(len(names))]


def _load_text_rows(
    path: Path, where: str, delimiter: str, header: str
) -> tuple[np.ndarray, list[str] | None]:
    rows: list[list[str]] = []
    lines: list[int] = []
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle, delimiter=delimiter)
            for row in reader:
                if _blank(row):
                    continue
                rows.append(row)
                lines.append(reader.line_num)
    except UnicodeDecodeError as exc:
        raise UsageError(
            f"{where}: expected UTF-8 text, got undecodable bytes at offset {exc.start}."
        ) from None
    except csv.Error as exc:
        raise UsageError(f"{where}: line {reader.line_num}: {_one_line(str(exc))}.") from None
    if not rows:
        raise UsageError(f"{where}: expected rows of numbers, got an empty file.")
    has_header, names, skip = _text_header(rows[0], header, rows[1] if len(rows) > 1 else None)
    body, body_lines = (rows[1:], lines[1:]) if has_header else (rows, lines)
    if not body:
        raise UsageError(f"{where}: expected rows of numbers after the header, got none.")
    width = len(rows[0])
    for row, line in zip(body, body_lines):
        if len(row) != width:
            raise UsageError(
                f"{where}: line {line} has {_columns(len(row))}, expected {width} like line "
                f"{lines[0]}{_one_cell_hint(rows[0], lines[0], delimiter)}."
            )
    if skip:
        body = [row[skip:] for row in body]
    try:
        return np.array(body, dtype=np.str_).astype(np.float64), names
    except ValueError:
        return _parse_cells(body, body_lines, where, delimiter, first_column=1 + skip), names


# Separators a cell of numbers may hold when the file uses another one than
# its suffix says (a ';' .csv, as spreadsheets write where ',' is the decimal
# mark), with the words naming them.
_OTHER_SEPARATORS = {",": "','", ";": "';'", "\t": "tabs", " ": "spaces"}


def _columns(n: int) -> str:
    return f"{n} column" + ("" if n == 1 else "s")


def _one_cell_hint(first: list[str], line: int, delimiter: str) -> str:
    """`` (line 1 is one cell, 'a;b': ...)`` when the first row is one cell
    holding another separator than ``delimiter`` (spaces aside: names have
    them), else ``""``: a ';' file whose numbers have decimal commas reads
    as one column, then two."""
    if len(first) != 1:
        return ""
    for separator in _OTHER_SEPARATORS:
        if separator not in (delimiter, " ") and separator in first[0]:
            expected = "a .csv needs ','" if delimiter == "," else "a .tsv needs tabs"
            return f" (line {line} is one cell, {first[0]!r}: {expected} between cells)"
    return ""


def _separator_hint(text: str, delimiter: str) -> str:
    """`` (numbers separated by ';': ...)`` when ``text`` is numbers joined by
    another separator than the file's ``delimiter``, else ``""``."""
    for separator, name in _OTHER_SEPARATORS.items():
        parts = [part for part in text.split(separator) if part.strip()]
        if separator != delimiter and len(parts) > 1 and all(map(_is_number, parts)):
            expected = "a .csv needs ','" if delimiter == "," else "a .tsv needs tabs"
            return f" (numbers separated by {name}: {expected} between cells)"
    return ""


def _parse_cells(
    rows: list[list[str]], lines: list[int], where: str, delimiter: str, first_column: int = 1
) -> np.ndarray:
    """Cell by cell (the slow path): the first cell that is not a number is named
    (columns numbered in the file from ``first_column``)."""
    values = np.empty((len(rows), len(rows[0])), dtype=np.float64)
    for i, (row, line) in enumerate(zip(rows, lines)):
        for j, cell in enumerate(row):
            text = cell.strip()
            if not text:
                raise UsageError(
                    f"{where}: line {line}, column {j + first_column}: expected a number, got an "
                    "empty cell."
                )
            try:
                values[i, j] = float(text)
            except ValueError:
                raise UsageError(
                    f"{where}: line {line}, column {j + first_column}: expected a number, got "
                    f"{text!r}{_separator_hint(text, delimiter)}."
                ) from None
    return values


# ---------------------------------------------------------------- helpers


def _device(value: str) -> torch.device:
    """``--device``: auto, cpu, cuda or cuda:N, checked before any data is read."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
        raise UsageError(f"--device: expected auto, cpu, cuda or cuda:N, got {value!r}.")
    if value.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(
                f"--device {value}: no CUDA device is available to this torch "
                f"({torch.__version__}); use --device auto or --device cpu."
            )
        index = torch.device(value).index
        if index is not None and index >= torch.cuda.device_count():
            raise UsageError(
                f"--device {value}: expected an index below {torch.cuda.device_count()} "
                "(the number of CUDA devices)."
            )
    return v.resolve_device(value, torch.device("cpu"))


def _seed(seed: int | None) -> int:
    """The given seed, or a fresh one that the summary prints so the run can be repeated."""
    return secrets.randbelow(2**31) if seed is None else seed


def _progress(args: argparse.Namespace) -> bool:
    return not args.quiet and sys.stderr.isatty()


def _npy_output(value: str | None, option: str) -> Path | None:
    if value is None:
        return None
    path = Path(value).expanduser()
    if path.suffix.lower() != ".npy":
        raise UsageError(f"{option}: expected a file name ending in .npy, got {value!r}.")
    return _checked_parent(path, option)


def _save_npy(path: Path, array: np.ndarray) -> None:
    # Through a file object: np.save(name) appends ".npy" to a name ending in
    # ".NPY" (accepted above), writing a file other than the one checked and
    # printed, which could be DATA.
    with open(path, "wb") as file:
        np.save(file, array)


def _check_outputs(inputs: dict[str, str], outputs: dict[str, Path | None]) -> None:
    """Refuse an output that names an input file or another output: one would overwrite it."""
    taken: dict[Path, str] = {}
    for option, name in inputs.items():
        taken.setdefault(Path(name).expanduser().resolve(), option)
    for option, path in outputs.items():
        if path is None:
            continue
        if path in taken:
            raise UsageError(
                f"{option}: expected a file other than {taken[path]}'s, got {str(path)!r} "
                "(it would be overwritten)."
            )
        taken[path] = option


def _checked_parent(path: Path, option: str) -> Path:
    """``path`` made absolute, once its directory is known to exist (before any work is done)."""
    path = path.resolve()
    if not path.parent.is_dir():
        raise UsageError(f"{option}: expected an existing directory, got {str(path.parent)!r}.")
    if path.is_dir():
        # Found only when writing, after the fit: "Is a directory: ...".
        raise UsageError(f"{option}: expected a file name, got the directory {str(path)!r}.")
    return path


def _figure_class() -> Any:
    """matplotlib's ``Figure`` (no pyplot, so no backend is chosen or changed), or None."""
    try:
        import matplotlib  # noqa: F401
        from matplotlib.figure import Figure
    except ImportError:
        return None
    return Figure


def _plot_output(value: str) -> tuple[Path, Any]:
    figure = _figure_class()
    if figure is None:
        raise UsageError(f"--plot needs matplotlib, which is not installed; {_PLOT_HINT}.")
    path = Path(value).expanduser()
    formats = sorted(figure().canvas.get_supported_filetypes())
    if path.suffix.lower().lstrip(".") not in formats:
        raise UsageError(
            f"--plot: expected a file name ending in .{', .'.join(formats)}, got {value!r}."
        )
    return _checked_parent(path, "--plot"), figure


def _save_figure(figure: Any, path: Path, draw: Callable[[Any], Any]) -> Path:
    fig = figure(figsize=(7, 5), layout="constrained")
    draw(fig.add_subplot())
    fig.savefig(path, dpi=100)
    return path


def _nearest(
    values: Any, centres: torch.Tensor, metric: str, device: torch.device, where: str
) -> Any:
    """Labels (numpy int64) and inertia of every row of ``values``, chunk by chunk."""
    labels = np.empty(int(values.shape[0]), dtype=np.int64)
    inertia = 0.0
    for start, chunk in _chunks(values):
        if isinstance(chunk, np.memmap):
            _check_finite(chunk, start, where)
        x, _ = v.as_tensor(chunk, "X", device=device)
        dtype = torch.promote_types(x.dtype, centres.dtype)
        if dtype in (torch.float16, torch.bfloat16):
            dtype = torch.float32
        x, c = x.to(dtype), centres.to(dtype)
        if metric == "cosine":
            x, c = unit_rows(x), unit_rows(c)
        else:
            # Centred on the centres' mean as KMeans.predict does, so near-ties
            # resolve the same way and the expansion stays accurate far from 0.
            offset = c.mean(0, keepdim=True)
            x, c = x - offset, c - offset
        nearest = nearest_centroids(x, c, metric=metric)
        labels[start : start + x.shape[0]] = nearest.labels.cpu().numpy()
        inertia += float(nearest.distances.double().sum())
    return labels, inertia


def _numpy(values: Any) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu()
        if values.dtype in (torch.float16, torch.bfloat16):
            values = values.float()
        return values.numpy()
    return np.asarray(values)


def _dtype_name(values: Any) -> str:
    if isinstance(values, torch.Tensor):
        return str(values.dtype).replace("torch.", "")
    return str(values.dtype)


def _duration(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _sizes(labels: Any, k: int) -> str:
    counts = np.bincount(_numpy(labels), minlength=k)
    if k <= _MAX_SIZES_SHOWN:
        return str(counts.tolist())
    return (
        f"{k} clusters: smallest {counts.min()}, median {int(np.median(counts))}, "
        f"largest {counts.max()}, empty {int((counts == 0).sum())}"
    )


def _ks_text(ks: tuple[int, ...]) -> str:
    if len(ks) > 2 and ks == tuple(range(ks[0], ks[-1] + 1)):
        return f"{ks[0]}..{ks[-1]}"
    return ", ".join(str(k) for k in ks)


def _written(**paths: Path | None) -> list[tuple[str, Any]]:
    return [(name, path) for name, path in paths.items() if path is not None]


def _print_fields(fields: list[tuple[str, Any]]) -> None:
    width = max(len(name) for name, _ in fields) + 1
    for name, value in fields:
        print(f"{name + ':':<{width}} {value}")


def _print_elbow(result: ElbowResult) -> None:
    inertia = _numpy(result.inertia).astype(np.float64)
    print(f"{'k':>4}  {'inertia':>14}  {'change':>8}")
    for i, k in enumerate(result.ks):
        change = f"{inertia[i] / inertia[i - 1] - 1:+.1%}" if i and inertia[i - 1] > 0 else ""
        mark = "  <- knee" if k == result.knee else ""
        print(f"{k:>4}  {inertia[i]:>14.8g}  {change:>8}{mark}".rstrip())
    print(f"knee: k = {result.knee}" if result.knee is not None else "knee: none found")


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _fail(message: str) -> int:
    print(f"{_PROG}: error: {_one_line(message)}", file=sys.stderr)
    return 2


@contextlib.contextmanager
def _cli_warnings() -> Iterator[None]:
    """Warnings as ``torchkmeans: warning: ...`` lines instead of file:line and source."""

    def show(message: Any, category: Any, *args: Any, **kwargs: Any) -> None:
        print(f"{_PROG}: warning: {_one_line(str(message))}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield
