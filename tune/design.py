"""Two-level designed experiments over a config diff, and the effects they estimate.

Each changed key (or group of keys changed together) is a *factor* at two levels: -1 is its
BEFORE value, +1 its AFTER value. A design is a matrix ``X`` of shape ``(rows, k)`` of -1/+1;
every row runs on the same ``S`` seeds (paired), so a response table ``y`` has shape
``(rows, S)``. BEFORE (all -1) and AFTER (all +1) are rows of every design.

- ``full_factorial(k)``: all ``2**k`` rows; every main effect and two-factor interaction is
  estimated on its own.
- ``fractional(k)``: a two-level fraction of resolution IV (``4 <= k <= 8``): a resolution III
  base (``m`` basic columns, the others their products) plus its fold-over, the fold itself a
  factor; ``2**(m+1)`` rows (8 for k=4, 16 for k=5..8). Main effects are clear of every
  two-factor interaction; the interactions come in alias chains (``A×B = C×D``). The fold-over
  makes every word of the defining relation even, so BEFORE and AFTER are both rows.
- ``one_at_a_time(k)``: BEFORE, AFTER, each change alone on BEFORE, and AFTER with each change
  left out (``2k + 2`` rows, fewer when they coincide).

An effect is a contrast ``c`` over the rows (``sum(c) = 0``) of the seed-averaged responses;
its standard error comes from the replicate structure: the row x seed residual of the paired
design (``y_rs - ybar_r. - ybar_.s + ybar..``, ``(R-1)(S-1)`` degrees of freedom, seed effects
removed) gives the pure-error variance ``s2`` and ``Var(c . ybar) = s2 * sum(c**2) / S``. The
95% interval uses Student's t on those degrees of freedom, so a zero effect is called
"within noise" 95% of the time per factor (not adjusted for the number of factors).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

DESIGNS = ("auto", "factorial", "fractional", "oat")
MAX_FACTORIAL = 6  # 64 rows: past that, a fraction
MAX_FRACTIONAL = 8  # 16 rows at resolution IV
AUTO_FACTORIAL = 4  # auto: full factorial up to 4 factors, a fraction for 5..8
LEVEL = 0.95  # confidence level of every interval

HELPED, HURT, NOISE = "helped", "hurt", "within noise"


class DesignError(ValueError):
    """A design cannot be built for this many factors."""


def full_factorial(k: int) -> np.ndarray:
    """All ``2**k`` rows of -1/+1, shape ``(2**k, k)``; row 0 is all -1, the last all +1."""
    if not 1 <= k <= MAX_FACTORIAL:
        raise DesignError(
            f"a full factorial takes 1 to {MAX_FACTORIAL} factors ({2**MAX_FACTORIAL} rows), "
            f"got {k}; use --design fractional or oat, or --group coupled keys"
        )
    return np.array(list(itertools.product((-1, 1), repeat=k)), dtype=np.int8)


def fractional(k: int) -> np.ndarray:
    """A resolution-IV two-level fraction, shape ``(2**(m+1), k)``, holding all -1 and all +1.

    Columns: the ``m`` basic factors (full factorial), the fold (+1 in the first half, -1 in
    the folded one), then products of the basic columns (highest order first); the second half
    is the first one negated.
    """
    if not 4 <= k <= MAX_FRACTIONAL:
        raise DesignError(
            f"a resolution IV fraction takes 4 to {MAX_FRACTIONAL} factors, got {k}"
            + ("; use --design factorial" if k < 4 else "; use --design oat or --group keys")
        )
    m = 2 if k == 4 else 3
    basic = np.array(list(itertools.product((-1, 1), repeat=m)), dtype=np.int8)
    words = [w for r in range(m, 1, -1) for w in itertools.combinations(range(m), r)]
    products = [np.prod(basic[:, list(w)], axis=1) for w in words]
    half = np.column_stack([basic, np.ones(len(basic), dtype=np.int8), *products])[:, :k]
    design = np.vstack([half, -half]).astype(np.int8)
    check_resolution_iv(design)
    return design


def check_resolution_iv(x: np.ndarray) -> None:
    """Every main-effect column is orthogonal to every other and to every two-factor
    interaction column (the definition of resolution IV for a two-level design)."""
    k = x.shape[1]
    mains = x.astype(np.int64)
    pairs = [mains[:, i] * mains[:, j] for i, j in itertools.combinations(range(k), 2)]
    for i in range(k):
        for other in [*(mains[:, j] for j in range(k) if j != i), *pairs]:
            if int(mains[:, i] @ other) != 0:
                raise AssertionError("design is not of resolution IV")


def one_at_a_time(k: int) -> np.ndarray:
    """BEFORE, AFTER, then for each factor: it alone on BEFORE, and AFTER without it (rows
    that coincide are kept once), shape ``(<= 2k+2, k)``."""
    rows = [np.full(k, -1), np.full(k, 1)]
    for j in range(k):
        rows.append(np.where(np.arange(k) == j, 1, -1))
        rows.append(np.where(np.arange(k) == j, -1, 1))
    unique: list[np.ndarray] = []
    for row in rows:
        if not any((row == u).all() for u in unique):
            unique.append(row)
    return np.array(unique, dtype=np.int8)


def build(design: str, k: int) -> tuple[str, np.ndarray]:
    """(the design's name, its matrix) for ``design`` in ``DESIGNS`` and ``k`` factors."""
    if design not in DESIGNS:
        raise DesignError(f"--design {design!r}: choose one of {', '.join(DESIGNS)}")
    if k < 1:
        raise DesignError("no factor to audit")
    if design == "auto":
        if k > MAX_FRACTIONAL:
            raise DesignError(
                f"{k} factors is too many for --design auto (at most {MAX_FRACTIONAL}: a "
                "16-row resolution IV fraction); --group coupled keys, or --design oat"
            )
        design = "factorial" if k <= AUTO_FACTORIAL else "fractional"
    if design == "factorial":
        return f"full factorial 2^{k}", full_factorial(k)
    if design == "fractional":
        x = fractional(k)
        return f"resolution IV fraction 2^({k}-{k - int(math.log2(len(x)))})", x
    return "one at a time (each change on BEFORE, each left out of AFTER)", one_at_a_time(k)


# --- contrasts -------------------------------------------------------------------------------


def row_index(x: np.ndarray, levels: np.ndarray) -> int:
    """The row of ``x`` equal to ``levels``; -1 if none."""
    hits = np.flatnonzero((x == levels).all(axis=1))
    return int(hits[0]) if len(hits) else -1


def main_contrasts(x: np.ndarray, oat: bool) -> list[dict[str, np.ndarray]]:
    """Per factor, the contrasts estimating its main effect (AFTER level minus BEFORE level).

    Orthogonal designs: ``{"effect": x_j / (R/2)}``. One at a time: ``from_before`` (the change
    alone on BEFORE, minus BEFORE), ``from_after`` (AFTER minus AFTER without it) and
    ``effect``, their mean.
    """
    rows, k = x.shape
    out = []
    for j in range(k):
        if not oat:
            out.append({"effect": x[:, j].astype(np.float64) / (rows / 2)})
            continue
        before, after = row_index(x, np.full(k, -1)), row_index(x, np.full(k, 1))
        alone = row_index(x, np.where(np.arange(k) == j, 1, -1))
        without = row_index(x, np.where(np.arange(k) == j, -1, 1))
        c_before, c_after = np.zeros(rows), np.zeros(rows)
        c_before[alone] += 1
        c_before[before] -= 1
        c_after[after] += 1
        c_after[without] -= 1
        out.append(
            {"effect": (c_before + c_after) / 2, "from_before": c_before, "from_after": c_after}
        )
    return out


def interaction_chains(x: np.ndarray) -> list[tuple[list[tuple[int, int]], np.ndarray]]:
    """The two-factor interactions an orthogonal design estimates: ``(pairs, contrast)`` per
    alias chain (pairs whose product columns are equal or opposite; one pair when the design
    resolves it). Chains aliased with a main effect are left out."""
    rows, k = x.shape
    mains = [x[:, j].astype(np.int64) for j in range(k)]
    chains: list[tuple[list[tuple[int, int]], np.ndarray]] = []
    for i, j in itertools.combinations(range(k), 2):
        z = x[:, i].astype(np.int64) * x[:, j]
        if any(abs(int(z @ m)) == rows for m in mains):
            continue
        for pairs, column in chains:
            if abs(int(z @ column)) == rows:
                pairs.append((i, j))
                break
        else:
            chains.append(([(i, j)], z))
    return [(pairs, column / (rows / 2)) for pairs, column in chains]


# --- estimates -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    """An effect (AFTER level minus BEFORE level) with its 95% interval."""

    value: float
    low: float
    high: float
    se: float
    df: int

    def verdict(self, mode: str) -> str:
        """helped / hurt / within noise, for a metric to maximise (``mode="max"``) or not."""
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            return NOISE
        if self.low > 0:
            return HELPED if mode == "max" else HURT
        if self.high < 0:
            return HURT if mode == "max" else HELPED
        return NOISE


def pure_error(y: np.ndarray) -> tuple[float, int]:
    """(variance, degrees of freedom) of the row x seed residual of a ``(rows, S)`` table:
    the replicate noise once each row's and each seed's mean are removed."""
    rows, seeds = y.shape
    df = (rows - 1) * (seeds - 1)
    if df < 1:
        return math.nan, 0
    resid = y - y.mean(axis=1, keepdims=True) - y.mean(axis=0, keepdims=True) + y.mean()
    return float((resid**2).sum() / df), df


def t_interval(value: float, se: float, df: int) -> Estimate:
    half = float(stats.t.ppf(0.5 + LEVEL / 2, df)) * se if df >= 1 else math.inf
    return Estimate(value, value - half, value + half, se, df)


def estimate(y: np.ndarray, contrast: np.ndarray) -> Estimate:
    """``contrast . ybar`` over a ``(rows, S)`` table with its pure-error interval."""
    s2, df = pure_error(y)
    value = float(contrast @ y.mean(axis=1))
    se = math.sqrt(s2 * float(contrast @ contrast) / y.shape[1]) if df else math.nan
    return t_interval(value, se, df)


def mean_difference(d: np.ndarray) -> Estimate:
    """The mean of paired differences ``d`` of shape ``(rows, S)`` (a factor applied after
    training to every run), its interval from the spread of the seeds' means (``S - 1`` df:
    each seed's runs share its draw, so seeds are the replicates)."""
    per_seed = d.mean(axis=0)
    seeds = len(per_seed)
    se = float(per_seed.std(ddof=1) / math.sqrt(seeds)) if seeds > 1 else math.nan
    return t_interval(float(per_seed.mean()), se, seeds - 1)
