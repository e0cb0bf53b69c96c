"""Nearest-centroid labels checked against the rounding of the distance expansion.

Labels come from the scores ``|c|^2 - 2 x.c`` (the squared distance less
``|x|^2``), one matrix product per block of rows. The rounding error of a
score grows with ``|x|`` and ``|c|`` in the frame the product is taken in,
not with the distance: a float32 point 10,000 units from the origin and a
quarter of a unit from its two nearest centres has scores near 1e8, where
float32 steps by 8, so they round the wrong way. Centring on the data's or
the centres' mean removes a common offset, not the spread of data whose
clusters lie far from that mean (heavy tails, outliers, a far-away cluster).

:func:`certify_nearest` finds the rows whose label rounding could have
chosen wrongly and labels them again with more precise arithmetic. With
``D`` a row's exact distance to its labelled centre (from differences):

* **Trusted** when ``|x| <= (sqrt(rho) - 1) sqrt(D)``, or ``D = 0``. Any centre nearer
  than the chosen one lies within ``|x| + sqrt(D)`` of the origin, as the
  chosen one does, so the scores that decided between them are wrong by a
  few units of ``u (|x| + sqrt(D))^2 <= rho u D``: with ``rho u = 2^-17``
  (``rho`` = 128 in float32, 2^36 in float64) a wrong label could only be
  nearer by about that fraction of ``D``, near the precision float32
  distances themselves have. Most rows of centred data pass.
* **Certain** when ``D`` is at most a quarter of the squared distance from
  the labelled centre to the nearest other centre (Elkan's bound: by the
  triangle inequality no other centre can be nearer, whatever the rounding).
  Points of well-separated clusters far from the origin pass. It is taken
  on the distances as given, with a margin for the centring's rounding;
  rows whose distance that rounding makes imprecise are measured again
  from ``x``.
* The other rows are scored again in float64 (float32 data), and rows that
  float64 does not settle by the first rule from differences. On the CPU,
  for float32 rows of at most 128 features and for centroids of few
  features (or few centroids), the fused kernel scores them from
  differences instead, in one pass: in float32 for those float32 rows,
  whose float32 sums of squared differences are within the trusted
  precision, else in float64 (see ``_relabel_natively``).

Narrow rows (the fused kernel's column layout) skip all this: the kernel
scores them from differences, exact wherever they lie (``distances``).
"""

from __future__ import annotations

import functools
import math

import torch

from . import _device, _native

__all__ = [
    "certify_nearest",
    "check_rows",
    "first_copies",
    "moved_centroids_floor",
    "product_unit_roundoff",
    "squared_frame_norms",
    "suspects",
    "trust_factor",
]

# The relative precision, of a row's distance, to which its label is trusted (see above).
_TRUSTED_PRECISION = 2.0**-17
# Rows of squared norms taken at a time when they are not given.
_NORM_CHUNK_ROWS = 1 << 16
# Bytes of the float64 score blocks of the rows scored again.
_BLOCK_BYTES = 8 * 1024 * 1024
# Bytes of a float64 copy of the rows checked at a time.
_CHECK_BYTES = 4 * 1024 * 1024


def product_unit_roundoff(dtype: torch.dtype, device: torch.device | None = None) -> float:
    """The unit roundoff of a matrix product of ``dtype`` on ``device``.

    float32 products follow PyTorch's matmul precision for the device's
    backend (cuda; mkldnn on the CPU; the global setting elsewhere):
    ``torch.set_float32_matmul_precision("high")`` (or TF32 allowed) lets a
    GPU multiply in TF32, 11 significant bits, and ``"medium"`` lets a CPU
    with bfloat16 units (AMX) multiply in bfloat16, 8 bits (0.19 off on
    products near 250 here, against 5e-5 in float32). Other dtypes keep
    their own precision.
    """
    unit = torch.finfo(dtype).eps / 2
    if dtype != torch.float32 or device is None:
        return unit
    backend = {"cuda": "cuda", "cpu": "mkldnn"}.get(device.type)
    matmul = getattr(getattr(torch.backends, backend, None), "matmul", None) if backend else None
    precision = getattr(matmul, "fp32_precision", None)
    if precision is None:  # torch < 2.9, or another device: the global setting
        try:
            legacy = torch.get_float32_matmul_precision()
        except RuntimeError:  # set through both the legacy and the per-backend API
            legacy = "medium"
        precision = {"highest": "ieee", "high": "tf32"}.get(legacy, "bf16")
    # "none": nothing set anywhere (a setting on torch.backends reads through).
    return {"ieee": unit, "none": unit, "tf32": 2.0**-11}.get(precision, 2.0**-8)


def trust_factor(dtype: torch.dtype, device: torch.device | None = None) -> float:
    """A label is trusted while ``|x|^2 <= factor * D`` (see the module
    docstring), for scores from products of ``dtype`` on ``device``: 0, none
    trusted, where their precision is below the trusted precision."""
    rho = _TRUSTED_PRECISION / product_unit_roundoff(dtype, device)
    return (math.sqrt(rho) - 1.0) ** 2 if rho > 1 else 0.0


def suspects(
    frame_squared_norms: torch.Tensor, distances: torch.Tensor, *, centred: bool = False
) -> torch.Tensor:
    """Rows whose label is not trusted (see the module docstring), as a bool
    mask: ``frame_squared_norms`` of the rows, ``distances`` to their labels
    (in the dtype the scores were computed in, on their device), measured
    between centred rows and centroids when ``centred``."""
    # |x|^2 / factor > D rather than |x|^2 > D * factor: the product
    # overflows for distances beyond max / factor (float32: ~3e36), and rows
    # that far from their label were trusted whatever their norms.
    factor = trust_factor(distances.dtype, distances.device)
    suspect = frame_squared_norms / factor > distances
    if not centred:
        # A row at distance 0 from x itself sits on its centroid: no other can
        # be nearer. Centring rounds both by up to u |x'|, and may make a
        # distance far below that 0 (float32 rows near 1e5, 3e-3 from their
        # centres: 3 of 300 labelled wrongly, with a distance of 0).
        suspect &= distances > 0
    return suspect


@_device.full_precision
def moved_centroids_floor(
    scored: torch.Tensor, returned: torch.Tensor, offset: torch.Tensor | None
) -> torch.Tensor:
    """A floor ``(b, 1)`` for the squared frame norms of rows labelled against
    centroids ``scored`` ``(b, k, d)`` and checked against ``returned``, the
    rounded sum ``scored + offset`` in their (common) dtype.

    That rounding moves each centroid by up to ``u |c|`` in the input's frame,
    not the scoring frame's: far from the origin it can exceed the distances
    themselves (float32 rows near 1e4, 3e-3 from their centres: up to a
    quarter of the labels of a fit were not the nearest returned centre).
    Centroids that moved by at most ``s`` change the difference of two
    squared distances up to ``D`` by about ``4 s sqrt(D)``: within the trusted
    precision of ``D`` when ``D >= 16 s^2 / precision^2``. Rows nearer their
    centre than that become suspects (0 when nothing moved). The moves are
    the sum's exact rounding errors (Knuth's TwoSum), also in float64.
    """
    if offset is None:
        return returned.new_zeros(returned.shape[0], 1)
    offset = offset.to(returned.dtype)
    scored = scored.to(returned.dtype)
    offset_part = returned - scored
    moved = (scored - (returned - offset_part)).add_(offset - offset_part).neg_()
    wide = _device.widest_float(returned.device)
    shift = torch.linalg.vecdot(moved.to(wide), moved.to(wide)).amax(-1, keepdim=True)
    factor = trust_factor(returned.dtype, returned.device)
    return (shift * (16 * factor / _TRUSTED_PRECISION**2)).to(returned.dtype)


@_device.full_precision
def squared_frame_norms(x: torch.Tensor, offset: torch.Tensor | None) -> torch.Tensor:
    """Squared norms of the rows ``x - offset`` of ``x`` ``(bx, n, d)``, ``(bx, n)``, in chunks."""
    n = x.shape[1]
    out = torch.empty(x.shape[:2], dtype=x.dtype, device=x.device)
    for start in range(0, n, _NORM_CHUNK_ROWS):
        part = x[:, start : start + _NORM_CHUNK_ROWS]
        if offset is not None:
            part = part - offset
        out[:, start : start + _NORM_CHUNK_ROWS] = torch.linalg.vecdot(part, part)
    return out


def check_rows(d: int) -> int:
    """Rows of ``d`` features checked at a time: their float64 copies stay small."""
    return max(1, _CHECK_BYTES // (8 * d))


def _block_rows(k: int) -> int:
    return max(1, _BLOCK_BYTES // (8 * k))


def _half_gaps_squared(
    centroids: torch.Tensor, active: torch.Tensor | None, index: torch.Tensor | None = None
) -> torch.Tensor:
    """A lower bound on the squared half-distance from each centroid ``(k, d)``
    (or each of ``centroids[index]``) to its nearest other (active) one,
    ``(k,)`` (or ``index``'s shape) in float64 (inf when alone)."""
    k, d = centroids.shape
    wide = _device.widest_float(centroids.device)
    c = centroids.to(wide)
    c = c - c.mean(0)
    norms = torch.linalg.vecdot(c, c)
    own = torch.arange(k, device=c.device) if index is None else index
    gaps = torch.empty(own.shape[0], dtype=wide, device=c.device)
    rows = _block_rows(k)
    for start in range(0, own.shape[0], rows):
        part = own[start : start + rows]
        block = torch.addmm(norms, c[part], c.T, alpha=-2.0).add_(norms[part, None])
        block.scatter_(1, part[:, None], math.inf)
        if active is not None:
            block.masked_fill_(~active, math.inf)
        gaps[start : start + rows] = block.amin(1)
    # The expansion's rounding, bounded generously: a few units of u |c|^2 per term.
    error = 4 * (d + 2) * torch.finfo(wide).eps * norms.max()
    return (gaps - error).clamp_min_(0.0) / 4


# The centroids (and mask of active ones) whose half gaps were last asked for
# on the host, a copy, with those gaps as far as they are known (NaN for the
# others): predict called again with the same centres reuses them, where they
# had cost as much as the labels (1,000 rows near their centres, k=1024,
# d=384: a float64 product of 5.5 ms, against the fused kernel's 4.5 ms).
# Looked up by value, so a changed centroid never finds stale gaps; larger
# centroids are not copied (the copy would outlive the caller's).
_KNOWN_GAPS_MAX_BYTES = 16 * 1024 * 1024
# (centroids, active, gaps, whether every gap is known)
_known_gaps: list[list] = []


def _known_entry(centroids: torch.Tensor, active: torch.Tensor | None) -> list | None:
    """The remembered gaps' entry of these centroids (and ``active``), if it is theirs."""
    entry = _known_gaps[0] if _known_gaps else None
    if (
        entry is not None
        and entry[0].dtype == centroids.dtype
        and entry[0].shape == centroids.shape
        and torch.equal(entry[0], centroids)
        and (active is None) == (entry[1] is None)
        and (active is None or torch.equal(entry[1], active))
    ):
        return entry
    return None


def _all_gaps_known(centroids: torch.Tensor, active: torch.Tensor | None) -> bool:
    """Whether every gap of these centroids is remembered (one comparison of them)."""
    if centroids.numel() * centroids.element_size() > _KNOWN_GAPS_MAX_BYTES:
        return False
    entry = _known_entry(centroids, active)
    return entry is not None and entry[3]


def _remembered_half_gaps(
    centroids: torch.Tensor, active: torch.Tensor | None, index: torch.Tensor | None
) -> torch.Tensor:
    """:func:`_half_gaps_squared` of ``centroids[index]`` (of every centroid
    when ``index`` is None) on the host, each gap computed once for the
    centroids (and ``active``) last asked about."""
    k = centroids.shape[0]
    if centroids.numel() * centroids.element_size() > _KNOWN_GAPS_MAX_BYTES:
        if index is None:
            return _half_gaps_squared(centroids, active)
        involved, inverse = index.unique(return_inverse=True)
        return _half_gaps_squared(centroids, active, involved)[inverse]
    entry = _known_entry(centroids, active)
    if entry is None:
        wide = _device.widest_float(centroids.device)
        # A normal tensor even when first asked for in inference mode: later
        # calls outside it fill in gaps in place, which an inference tensor refuses.
        with torch.inference_mode(False):
            gaps = torch.full((k,), math.nan, dtype=wide, device=centroids.device)
        entry = [centroids.clone(), None if active is None else active.clone(), gaps, False]
        _known_gaps[:] = [entry]
    gaps = entry[2]
    if index is None:
        # Every gap, in one product when any is unknown: finding the few
        # involved (a sort of the labels) had cost more than the product
        # (20,000 labels, k=8: 0.4 ms of a 1.1 ms predict).
        if not entry[3]:
            gaps.copy_(_half_gaps_squared(centroids, active))
            entry[3] = True
        return gaps
    wanted = gaps.index_select(0, index)
    unknown = wanted.isnan()
    if bool(unknown.any()):
        missing = index[unknown].unique()
        gaps[missing] = _half_gaps_squared(centroids, active, missing)
        wanted = gaps.index_select(0, index)
    return wanted


def first_copies(centroids: torch.Tensor) -> torch.Tensor | None:
    """Index of the first exact copy of each centroid ``(b, k, d)`` in its problem.

    Returns ``(b, k)`` int64 (each distinct centroid its own index), or None
    when no two centroids of a problem are equal or they are off the CPU
    (one host read). A BLAS product need not score two copies of a centroid
    bit-identically (a tile's edge columns take another kernel), so rows
    equally far from both would split between them by rounding; scikit-learn
    and the fused kernel give such ties to the first copy, and in a fit the
    other copies are left empty and reseeded (:func:`without_copies`).
    Copies come from a given initialisation with repeated rows, or empty
    clusters reseeded onto copies of one point.

    Examples
    --------
    >>> first_copies(torch.tensor([[[0.0], [1.0], [0.0]]])).tolist()
    [[0, 1, 0]]
    >>> first_copies(torch.tensor([[[0.0], [1.0]]])) is None
    True
    """
    b, k, d = centroids.shape
    if k < 2 or not _device.on_host(centroids.device):
        return None
    # A fingerprint of each row's bits (-0.0 as 0.0), sorted per problem:
    # copies are neighbours there, checked equal in full (a collision of
    # fingerprints is no copy). torch.unique(dim=0) took 14 ms for 256 x 384.
    rows = centroids
    first = first_equal_prints(_fingerprints(rows))
    if first is None:
        return None
    position = torch.arange(k, device=rows.device).expand(b, k)
    equal = (rows == rows.gather(1, first.unsqueeze(-1).expand(b, k, d))).all(-1)
    first = torch.where(equal, first, position)
    return first if bool((first != position).any()) else None


def first_equal_prints(fingerprint: torch.Tensor) -> torch.Tensor | None:
    """Index of the first entry of each row of ``fingerprint`` ``(b, k)``
    with the same value, ``(b, k)`` int64; None when no two are equal (one
    host read). Entries of equal fingerprints are candidate copies, to be
    compared in full (a collision of fingerprints is no copy)."""
    b, k = fingerprint.shape
    ordered, order = fingerprint.sort(dim=-1, stable=True)
    same = ordered[:, 1:] == ordered[:, :-1]
    if not bool(same.any()):
        return None
    # Each entry's first in sorted order: the start of its run of equal
    # fingerprints (the stable sort puts the lowest index first).
    position = torch.arange(k, device=fingerprint.device).expand(b, k)
    starts = torch.cat([same.new_ones((b, 1)), ~same], dim=1)
    run_start = torch.where(starts, position, 0).cummax(dim=1).values
    return torch.empty_like(order).scatter_(1, order, order.gather(1, run_start))


def without_copies(centroids: torch.Tensor, active: torch.Tensor | None) -> torch.Tensor | None:
    """``active`` ``(b, k)`` (None: every centroid) less each later copy of an
    active centroid (:func:`first_copies`), or ``active`` itself when there
    is none: scored with those masked, as padding clusters are, rows tied
    between copies go to the first copy, and the others stay empty.

    Examples
    --------
    >>> without_copies(torch.tensor([[[0.0], [1.0], [0.0]]]), None).tolist()
    [[True, True, False]]
    """
    candidates = centroids
    if active is not None:  # an inactive centroid is nobody's first copy
        candidates = centroids.masked_fill(~active.unsqueeze(-1), math.nan)
    copies = first_copies(candidates)
    if copies is None:
        return active
    first = copies == torch.arange(copies.shape[1], device=copies.device)
    return first if active is None else first & active


def _fingerprints(rows: torch.Tensor) -> torch.Tensor:
    """A 64-bit hash of each row's bits ``(..., d)`` -> ``(...)``, -0.0 as 0.0
    (equal values, equal hashes): a sum of their 32-bit halves times fixed
    random odd weights, wrapping around (whole 64-bit words would cancel in
    pairs: [-1, 1] and [1, -1] collided).

    Summed over blocks of columns (the same sums: they wrap around):
    temporaries of all the rows' values, four of them, page-faulted in
    fresh (40 rows of 50,000 float64 features, a sparse mini-batch step's
    reseeding: 17 ms, most of the step, against 3 ms in blocks).
    """
    d = rows.shape[-1]
    weights = _fingerprint_weights(d)
    out = torch.zeros(rows.shape[:-1], dtype=torch.int64, device=rows.device)
    step = max(1, _FINGERPRINT_BLOCK // max(1, out.numel()))
    for start in range(0, d, step):
        stop = min(d, start + step)
        part = rows[..., start:stop] + 0.0  # -0.0 as 0.0
        out.add_(fingerprint_terms(part, weights[:, start:stop]).sum(-1))
    return out


def fingerprint_terms(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The int64 terms of :func:`_fingerprints`: ``values`` (-0.0 already
    0.0) times their columns' weights ``(2, ...)`` of
    :func:`_fingerprint_weights`, shaped as ``values``; a row's fingerprint
    is the (wrapping) sum of its terms, zeros adding nothing."""
    narrow = {2: torch.int16, 4: torch.int32}.get(values.element_size())
    if narrow is not None:
        return values.view(narrow).long().mul_(weights[0])
    bits = values.view(torch.int64)
    term = (bits & 0xFFFFFFFF).mul_(weights[0])
    return term.add_((bits >> 32).mul_(weights[1]))


# Values per block of columns of _fingerprints (512 KB of int64 temporaries).
_FINGERPRINT_BLOCK = 1 << 16


@functools.lru_cache(maxsize=8)
def _fingerprint_weights(d: int) -> torch.Tensor:
    """The fixed random odd weights ``(2, d)`` int64 of :func:`_fingerprints`
    (read only), drawn once per number of features."""
    weights = torch.randint(
        -(2**62),
        2**62,
        (2, d),
        generator=torch.Generator(device="cpu").manual_seed(0),
        dtype=torch.int64,
        device="cpu",
    )
    return weights | 1


# Rows scored again on the CPU go to the fused kernel's differences (one
# pass, exact, nothing left to settle) for centroids of at most this
# many features, or of at most _NATIVE_RELABEL_MAX_WORK values (k * d); the
# float64 product and its second pass from differences beyond. Rows 50 from
# the origin, one thread, the kernel's time over the product's: 1,024 rows,
# d=16-64 0.15-0.4 (k=8-256), 0.25-0.95 (k=1,024); d=128-256, k=32-64
# 0.45-0.8; k * d = 2^15 at d=128-768 1.2; 16 rows, k * d <= 2^14 0.25-0.4,
# d=64, k=1,024 0.65.
_NATIVE_RELABEL_MAX_FEATURES = 64
_NATIVE_RELABEL_MAX_WORK = 1 << 14
# ... and float32 rows of at most this many features are scored in float32:
# a float32 sum of at most 128 squared differences is within the trusted
# precision of the exact distance (d=128: 5e-7 for labels, 9e-7 for distances,
# see distances._DIFFERENCES_MAX_FEATURES, where such sums label small
# searches unchecked). 1,024 rows of tight clusters shared by near-copies of
# their centre, the whole label check's time: k=32, d=64 0.75x float64's;
# k=64, d=128 0.65x; k=256, d=64 0.65x. Such rows go to the kernel at any
# k: its float32 differences took 0.1-0.6x the time of the float64 product
# and its second pass, which the limits above were measured against in
# float64 (one thread, rows 50 from the origin or tight clusters shared by
# near-copies; 8-4,096 rows, d=72-128, k=256-4,096).
_FLOAT32_DIFFERENCES_MAX_FEATURES = 128


def _relabels_natively(x: torch.Tensor, k: int) -> bool:
    """Whether :func:`_relabel` scores rows like ``x`` ``(r, d)`` against k
    centroids by the fused kernel (see above)."""
    d = x.shape[-1]
    float32 = x.dtype == torch.float32 and d <= _FLOAT32_DIFFERENCES_MAX_FEATURES
    return (
        float32 or d <= _NATIVE_RELABEL_MAX_FEATURES or k * d <= _NATIVE_RELABEL_MAX_WORK
    ) and _native.prefers_native(x, k, within_lloyd=False)


def _relabel_natively(
    x: torch.Tensor, centroids: torch.Tensor, active: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_relabel` by the fused kernel: squared distances summed from
    differences, the first of equal ones chosen (copies of a centroid score
    alike), inactive centroids left out. float32 rows of at most
    ``_FLOAT32_DIFFERENCES_MAX_FEATURES`` features are scored in float32,
    others in float64."""
    wide = torch.float64
    if x.dtype == torch.float32 and x.shape[-1] <= _FLOAT32_DIFFERENCES_MAX_FEATURES:
        wide = torch.float32
    rows = x.to(wide).contiguous()
    given = centroids.to(wide)
    kept = None
    if active is not None:
        kept = active.nonzero().squeeze(1)
        if kept.numel() == 0:  # as the product's scores, all inf: the first
            return _relabel_natively(x, centroids[:1], None)
        given = given.index_select(0, kept)
    labels = torch.empty(rows.shape[0], dtype=torch.int64, device=rows.device)
    distances = torch.empty(rows.shape[0], dtype=wide, device=rows.device)
    _native.nearest(
        rows, given.contiguous(), labels, distances=distances, columns=True, differences=True
    )
    if kept is not None:
        labels = kept.index_select(0, labels)
    return labels, distances.to(torch.float64)


def _relabel(
    x: torch.Tensor, centroids: torch.Tensor, active: torch.Tensor | None, low_precision: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels and exact distances (float64) of rows ``x`` ``(r, d)`` against
    ``centroids`` ``(k, d)``: from the expansion in float64 when the rows were
    labelled in lower precision and it settles them, else from differences.
    The expansion scores rows centred on the centroids' mean; differences
    and the distances returned are taken from ``x`` itself (the centring
    rounds float64 rows by up to ``u |x'|``: rows on their centres got
    5.5e-31 and 2.3e-31 for 4.3e-31 and 1.9e-31, and a row 8e-31 from two
    centres was given the farther). On the CPU, rows of few features (or few
    centroids) are scored from differences by the fused kernel
    (:func:`_relabels_natively`, :func:`_relabel_natively`), where the
    product and its ops around took 3-7x its time (1,024 rows of tight
    clusters shared by near-copies of their centre, k=32, d=64: 0.35 ms
    against 0.12 ms, where the labels themselves take 0.04 ms)."""
    if _relabels_natively(x, centroids.shape[0]):
        return _relabel_natively(x, centroids, active)
    wide = _device.widest_float(x.device)
    given = centroids.to(wide)
    middle = given.mean(0)
    c = given - middle
    x_given = x.to(wide)
    xw = x_given - middle
    r, k = xw.shape[0], c.shape[0]
    labels = torch.empty(r, dtype=torch.int64, device=x.device)
    distances = torch.empty(r, dtype=wide, device=x.device)
    rows = _block_rows(k)
    unsettled = []
    # The float64 product scores copies of a centroid a rounding apart (their
    # differences do not): their tied rows go to the first (active) copy, as
    # on every other path (float32 rows near two copies, d=130: 167 of 400
    # went to the second).
    copies = None
    if low_precision:
        candidates = (
            centroids if active is None else centroids.masked_fill(~active[:, None], math.nan)
        )
        copies = first_copies(candidates[None])
    for start in range(0, r, rows):
        xb = xw[start : start + rows]
        if low_precision:
            scores = torch.addmm(torch.linalg.vecdot(c, c), xb, c.T, alpha=-2.0)
        else:
            # From differences: no centring needed, nor wanted (it rounds
            # the rows by up to u |x'|, more than a distance near 0).
            block = x_given[start : start + rows]
            scores = torch.cdist(block, given, compute_mode="donot_use_mm_for_euclid_dist")
        if active is not None:
            scores.masked_fill_(~active, math.inf)
        chosen = scores.argmin(1)
        if copies is not None:
            chosen = copies[0][chosen]
        difference = x_given[start : start + rows] - given.index_select(0, chosen)
        exact = torch.linalg.vecdot(difference, difference)
        labels[start : start + rows] = chosen
        distances[start : start + rows] = exact
        if low_precision:
            open_rows = (torch.linalg.vecdot(xb, xb) > trust_factor(wide) * exact) & (exact > 0)
            unsettled.append(open_rows.nonzero().squeeze(1).add_(start))
    if unsettled:
        again = torch.cat(unsettled)
        if again.numel():
            labels[again], distances[again] = _relabel(x[again], centroids, active, False)
    return labels, distances


def _all_settled(
    distances: torch.Tensor,
    frame_squared_norms: torch.Tensor | None,
    centroids: torch.Tensor,
    active: torch.Tensor | None,
) -> bool:
    """Whether Elkan's bound (see :func:`certify_nearest`) settles every row
    of one problem at once: the largest distance, with the largest error the
    centring (``frame_squared_norms`` of centred rows, else None) may have
    put in it, within half the smallest gap between centroids. Two reductions and a few
    scalars, where the test row by row took ten passes and a gather (all
    20,000 rows of tight clusters suspects: 0.15 ms of a 0.8 ms predict)."""
    gaps = _remembered_half_gaps(centroids, active, None)
    least = float(gaps.amin())
    if not least > 0:
        return False
    unit = torch.finfo(distances.dtype).eps / 2
    d = centroids.shape[-1]
    root = math.sqrt(float(distances.amax()))
    upper = root * (1 + (d + 4) * unit)
    if frame_squared_norms is not None:
        upper += 2 * unit * (root + math.sqrt(float(frame_squared_norms.amax())))
    # math.sqrt rounds correctly; the upper bound's few float64 operations
    # stay far within the margins of 4u and (d + 4)u of the distances' dtype.
    return upper <= math.sqrt(least) * (1 - 4 * unit)


def _centring_ratio(unit: float) -> float:
    """The largest ``|x'| / sqrt(D)`` at which a distance ``D`` measured
    between centred rows and centroids of unit roundoff ``unit`` stays within
    the trusted precision of the exact one.

    Centring rounds a row and a centroid by at most ``u |x'|`` and ``u |c'|
    <= u (|x'| + r)`` (``r = sqrt(D)``): the root measured is off by ``e <=
    u (2 |x'| + r)``, the distance by up to ``2 e r + e^2``. That is within
    ``p D`` (``p`` the trusted precision) while ``e <= (sqrt(1 + p) - 1) r``,
    about ``p r / 2``: ``|x'| <= ((sqrt(1 + p) - 1) / u - 1) r / 2``, 31.5
    in float32. (Taken as ``2u (|x'| + r) <= p r`` before, a bound of the
    root's error held to the distance's precision, it let float32 rows
    sqrt(D) / 63 from the origin keep distances 1.6 p off.) Trusted rows
    (:func:`trust_factor`, ``|x'| <= (sqrt(p / u) - 1) r``) are within it
    whenever ``u <= p / 16``, as float32 and float64 are. The float32 sum
    of the squared differences rounds on top of that, as any distance does.
    """
    slack = _TRUSTED_PRECISION / (1 + math.sqrt(1 + _TRUSTED_PRECISION))  # sqrt(1 + p) - 1
    return (slack / unit - 1) / 2


def _picked(values: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    """``values[rows]`` of a vector, or ``values`` itself for all rows (None).

    By index_select, 4x faster than indexing on the CPU (20,000 rows: 6.5 us
    against 26 us)."""
    return values if rows is None else values.index_select(0, rows)


@_device.full_precision
def certify_nearest(
    x: torch.Tensor,
    centroids: torch.Tensor,
    labels: torch.Tensor,
    distances: torch.Tensor,
    *,
    frame_squared_norms: torch.Tensor | None = None,
    centred: bool = False,
    active: torch.Tensor | None = None,
    precise: bool = True,
) -> int:
    """Correct, in place, euclidean labels that rounding may have got wrong.

    Parameters
    ----------
    x : Tensor
        ``(bx, n, d)`` rows, ``bx`` 1 or ``b``, as given (not centred).
    centroids : Tensor
        ``(b, k, d)``, as given.
    labels, distances : Tensor
        ``(b, n)``: the labels to check and each row's squared distance to its
        labelled centroid, from differences; rewritten for the rows scored
        again, and for rows whose distance ``centred`` rows made imprecise.
    frame_squared_norms : Tensor, optional
        ``(bx, n)`` squared norms of the rows in the frame their scores were
        taken in (``x - offset`` for centred rows); default ``|x|^2``.
    centred : bool
        Whether ``distances`` were measured between centred rows and centroids
        (each rounded once by the centring) rather than from ``x`` itself.
    active : Tensor, optional
        ``(b, k)`` bool; inactive centroids are never chosen.
    precise : bool
        Whether the ``distances`` of rows whose label is settled but whose
        distance ``centred`` rows made imprecise are measured again from
        ``x``; without it only the labels are exact (a caller that uses the
        distances for nothing but a test of finiteness: ``predict``).

    Returns
    -------
    int
        How many rows were read again (most calls: 0, after one comparison).

    Examples
    --------
    >>> x = torch.tensor([[[10000.0, 0.0]]])
    >>> c = torch.tensor([[[10000.5, 0.0], [10000.0, 0.0]]])
    >>> labels, distances = torch.tensor([[0]]), torch.tensor([[0.25]])
    >>> certify_nearest(x, c, labels, distances), labels, distances
    (1, tensor([[1]]), tensor([[0.]]))
    """
    b, k, d = centroids.shape
    on_host = _device.on_host(x.device)
    if (
        b == 1
        and on_host
        and not centred
        and labels.shape[1] >= k
        and _all_gaps_known(centroids[0], None if active is None else active[0])
        and _all_settled(distances[0], None, centroids[0], None if active is None else active[0])
    ):
        # Every label settled by Elkan's bound at once, from gaps remembered
        # from the last call with these centroids (predict again): no row is
        # a suspect worth finding (those masks were a tenth of a predict of
        # 1,000 rows of tight clusters).
        return 0
    if frame_squared_norms is None:
        frame_squared_norms = squared_frame_norms(x, None)
    dtype = distances.dtype
    unit = torch.finfo(dtype).eps / 2
    suspect = suspects(frame_squared_norms, distances, centred=centred)
    read = 0
    low_precision = _device.widest_float(x.device).itemsize > dtype.itemsize
    step = check_rows(d)
    for problem in range(b):
        problem_suspects = suspect[problem]
        count = int(problem_suspects.sum()) if on_host else -1
        if count == 0:
            continue
        problem_centroids = centroids[problem]
        problem_active = None if active is None else active[problem]
        norms = frame_squared_norms[problem if frame_squared_norms.shape[0] > 1 else 0]
        # At once when the suspects outnumber the centroids (their gaps are
        # then wanted anyway), unless rows sit on centroids: those are
        # settled by equality below, with no gap computed.
        if (
            count >= k
            and problem_centroids.numel() * problem_centroids.element_size()
            <= _KNOWN_GAPS_MAX_BYTES
            and not (centred and bool(distances[problem].amin() == 0))
            and _all_settled(
                distances[problem],
                norms if centred else None,
                problem_centroids,
                problem_active,
            )
        ):
            if centred and precise:
                # Every label settled, but the centring may have put more
                # than the trusted precision into some distances: one mask
                # finds them (the row-by-row test below took 1.5x the time
                # of a predict for 8 such rows of 20,000).
                ratio = _centring_ratio(unit)
                imprecise = (norms / ratio**2 > distances[problem]).nonzero().squeeze(1)
                read += _measure_again(
                    x[problem if x.shape[0] > 1 else 0],
                    problem_centroids,
                    labels[problem],
                    distances[problem],
                    imprecise,
                )
            continue
        rows = problem_suspects.nonzero().squeeze(1)
        if rows.numel() == 0:
            continue
        if centred and on_host:
            # A distance of 0 between centred rows and centroids may be the
            # centring's rounding; rows equal to their centre in ``x`` itself
            # are on it, with none nearer (rows that are centroids: an init
            # from the data, a cluster of one row), whatever their norms.
            # (On the host, where the extra reads of the mask cost nothing.)
            near = distances[problem].index_select(0, rows)
            # (The least distance first: one reduction, not a mask, when none is 0.)
            if bool(near.amin() == 0):
                zero = near == 0
                candidates = rows[zero]
                read += candidates.numel()
                x_problem = x[problem if x.shape[0] > 1 else 0]
                problem_labels = labels[problem]
                on_centre = torch.cat(
                    [
                        # Not any difference rather than all equal: a bool
                        # reduction across few features ran 1.7x slower.
                        torch.ne(
                            x_problem.index_select(0, part),
                            problem_centroids.index_select(0, problem_labels.index_select(0, part)),
                        )
                        .any(1)
                        .logical_not_()
                        for part in candidates.split(step)
                    ]
                )
                settled = torch.zeros_like(zero)
                settled[zero] = on_centre
                rows = rows[~settled]
                if rows.numel() == 0:
                    continue
        imprecise = rows[:0]
        if rows.numel() > k or on_host:
            # Elkan's bound, on the distances as they are (no row read
            # again): no other centroid is nearer than one within half the
            # distance to its nearest neighbour, whatever the rounding. Its
            # gaps are a product over the centroids, where reading a row
            # again takes differences to each (float64 rows on their centres,
            # a fifth of each MiniBatchKMeans step at k = n/4): taken for all
            # of them, or on the host (where its reads of masks cost
            # nothing) for the few that label the rows.
            # Rows all suspects (clusters tight for their distance from the
            # origin) are read where they are, not gathered first.
            picked = None if rows.numel() == labels.shape[1] else rows
            labelled = _picked(labels[problem], picked)
            if on_host and labelled.numel() >= k:
                # Every gap (k of them) rounded once, then one gather: not
                # the gaps of each row, converted and scaled row by row.
                every = _remembered_half_gaps(problem_centroids, problem_active, None)
                limits = every.sqrt().mul_(1 - 4 * unit).to(dtype).index_select(0, labelled)
            else:
                if on_host:
                    half_gaps = _remembered_half_gaps(problem_centroids, problem_active, labelled)
                elif rows.numel() > k:
                    half_gaps = _half_gaps_squared(problem_centroids, problem_active)[labelled]
                else:
                    involved, inverse = labelled.unique(return_inverse=True)
                    half_gaps = _half_gaps_squared(problem_centroids, problem_active, involved)
                    half_gaps = half_gaps[inverse]
                limits = half_gaps.sqrt_().mul_(1 - 4 * unit).to(dtype)
            # On roots, never above the bound: the gap's root and its
            # conversion round by at most 2u, the upper bound's three
            # operations by 3u, within the margins of 4u and (d + 4)u.
            root = _picked(distances[problem], picked).sqrt()
            upper = root * (1 + (d + 4) * unit)
            if centred:
                # Centring rounds a row and a centroid by at most u times their
                # centred norms, |x'| and |c'| <= |x'| + sqrt(D): an error of
                # the distance's root of 2u (|x'| + sqrt(D)), which grows with
                # |x'| / sqrt(D).
                x_root = _picked(norms, picked).sqrt()
                upper.add_(root, alpha=2 * unit).add_(x_root, alpha=2 * unit)
            settled = upper <= limits
            if centred and precise:
                # Settled, but the centring may have put more than the
                # trusted precision into their distance: measured again from x.
                imprecise = rows[settled & (x_root > root * _centring_ratio(unit))]
            rows = rows[~settled]
        read += rows.numel()
        for start in range(0, rows.numel(), step):
            part = rows[start : start + step]
            x_rows = x[problem if x.shape[0] > 1 else 0].index_select(0, part)
            new_labels, new_distances = _relabel(
                x_rows, problem_centroids, problem_active, low_precision
            )
            labels[problem].index_copy_(0, part, new_labels)
            distances[problem].index_copy_(0, part, new_distances.to(dtype))
        read += _measure_again(
            x[problem if x.shape[0] > 1 else 0],
            problem_centroids,
            labels[problem],
            distances[problem],
            imprecise,
        )
    return read


def _measure_again(
    x: torch.Tensor,
    centroids: torch.Tensor,
    labels: torch.Tensor,
    distances: torch.Tensor,
    rows: torch.Tensor,
) -> int:
    """Measures again from ``x`` ``(n, d)``, in the widest float, the
    ``distances`` ``(n,)`` (in place) of ``rows`` to their ``labels``'
    ``centroids`` ``(k, d)``; returns how many rows that read."""
    if rows.numel() == 0:
        return 0
    wide_centroids = centroids.to(_device.widest_float(x.device))
    for part in rows.split(check_rows(x.shape[-1])):
        # In place on the rows' (fresh) copy: temporaries of every row of
        # duplicated data cost more than the search.
        difference = x.index_select(0, part).to(wide_centroids.dtype)
        difference.sub_(wide_centroids.index_select(0, labels.index_select(0, part)))
        distances.index_copy_(
            0, part, torch.linalg.vecdot(difference, difference).to(distances.dtype)
        )
    return rows.numel()
