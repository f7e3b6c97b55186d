"""Designs over a config diff, and the effects and intervals they give (known answers and a
Monte Carlo of the stated error rate)."""

import itertools
import math
from collections.abc import Sequence

import numpy as np
import pytest

from tune import design as doe


def _has(x: np.ndarray, levels: list[int]) -> bool:
    return doe.row_index(x, np.array(levels)) >= 0


@pytest.mark.parametrize("k", [1, 2, 3, 4, 6])
def test_full_factorial_is_every_combination_once(k: int) -> None:
    x = doe.full_factorial(k)
    assert x.shape == (2**k, k)
    assert len({tuple(r) for r in x}) == 2**k
    assert (x.sum(axis=0) == 0).all()  # every column balanced
    assert _has(x, [-1] * k)
    assert _has(x, [1] * k)


@pytest.mark.parametrize(("k", "rows"), [(4, 8), (5, 16), (6, 16), (7, 16), (8, 16)])
def test_fraction_is_resolution_iv_and_holds_before_and_after(k: int, rows: int) -> None:
    x = doe.fractional(k)
    assert x.shape == (rows, k)
    assert len({tuple(r) for r in x}) == rows
    assert _has(x, [-1] * k)
    assert _has(x, [1] * k)
    # main effects orthogonal to each other and to every two-factor interaction
    xi = x.astype(int)
    for i in range(k):
        for j in range(k):
            if i != j:
                assert xi[:, i] @ xi[:, j] == 0
        for a, b in itertools.combinations(range(k), 2):
            assert xi[:, i] @ (xi[:, a] * xi[:, b]) == 0


def test_resolution_check_rejects_a_resolution_iii_design() -> None:
    base = np.array(list(itertools.product((-1, 1), repeat=2)))
    x = np.column_stack([base, base[:, 0] * base[:, 1]])  # C = AB: resolution III
    with pytest.raises(AssertionError):
        doe.check_resolution_iv(x)


@pytest.mark.parametrize(
    ("design", "k", "message"),
    [
        ("fractional", 3, "--design factorial"),
        ("fractional", 9, "4 to 8"),
        ("factorial", 7, "1 to 6"),
        ("auto", 9, "too many"),
        ("bogus", 2, "choose one of"),
    ],
)
def test_designs_refuse_what_they_cannot_build(design: str, k: int, message: str) -> None:
    with pytest.raises(doe.DesignError, match=message):
        doe.build(design, k)


def test_auto_is_factorial_up_to_four_then_a_fraction() -> None:
    assert doe.build("auto", 4)[1].shape == (16, 4)
    assert doe.build("auto", 5)[1].shape == (16, 5)
    assert doe.build("auto", 8)[1].shape == (16, 8)
    assert "factorial" in doe.build("auto", 3)[0]


def test_one_at_a_time_rows_and_duplicates() -> None:
    x = doe.one_at_a_time(3)
    assert len(x) == 8  # BEFORE, AFTER, 3 singles on BEFORE, 3 leave-one-outs of AFTER
    assert len(doe.one_at_a_time(1)) == 2  # the single change is AFTER itself
    assert len(doe.one_at_a_time(2)) == 4  # BEFORE+A is AFTER-B


def _additive(x: np.ndarray, effects: Sequence[float] | np.ndarray, mu: float = 0.5) -> np.ndarray:
    """Noise-free responses: each effect is AFTER minus BEFORE, so half of it per level."""
    return mu + x @ (np.asarray(effects) / 2)


@pytest.mark.parametrize("kind", ["factorial", "fractional", "oat"])
def test_main_effects_are_exact_without_noise(kind: str) -> None:
    k = 4
    effects = [0.1, -0.05, 0.0, 0.02]
    x = doe.build(kind, k)[1]
    y = np.repeat(_additive(x, effects)[:, None], 3, axis=1) + np.array([0.0, 0.01, -0.02])
    for c, true in zip(doe.main_contrasts(x, kind == "oat"), effects, strict=True):
        for contrast in c.values():
            assert float(contrast @ y.mean(axis=1)) == pytest.approx(true)


def test_interactions_resolved_by_a_factorial_and_chained_by_a_fraction() -> None:
    x = doe.full_factorial(3)
    chains = doe.interaction_chains(x)
    assert [p for p, _ in chains] == [[(0, 1)], [(0, 2)], [(1, 2)]]
    # a known A x B interaction: y = 0.04 * xA * xB, so the effect (high - low) is 0.08
    y = (0.04 * x[:, 0] * x[:, 1])[:, None] + np.zeros((1, 2))
    assert float(chains[0][1] @ y.mean(axis=1)) == pytest.approx(0.08)
    assert float(chains[1][1] @ y.mean(axis=1)) == pytest.approx(0.0)
    frac = [p for p, _ in doe.interaction_chains(doe.fractional(4))]
    assert sorted(map(len, frac)) == [2, 2, 2]  # AB = CD, AC = BD, AD = BC


def test_estimate_known_answer() -> None:
    # 2 rows x 2 seeds: the effect is row 1 - row 0; the residual is +-0.01 in every cell
    y = np.array([[0.50, 0.54], [0.60, 0.60]])
    est = doe.estimate(y, np.array([-1.0, 1.0]))
    assert est.value == pytest.approx(0.08)
    s2, df = doe.pure_error(y)
    assert df == 1
    assert s2 == pytest.approx(4 * 0.01**2)
    assert est.se == pytest.approx(math.sqrt(s2 * 2 / 2))
    half = 12.7062 * est.se  # t(0.975, 1)
    assert (est.low, est.high) == pytest.approx((0.08 - half, 0.08 + half), rel=1e-4)


def test_verdict_follows_the_interval_and_the_direction() -> None:
    assert doe.Estimate(0.1, 0.05, 0.15, 0.02, 5).verdict("max") == doe.HELPED
    assert doe.Estimate(0.1, 0.05, 0.15, 0.02, 5).verdict("min") == doe.HURT
    assert doe.Estimate(-0.1, -0.15, -0.05, 0.02, 5).verdict("max") == doe.HURT
    assert doe.Estimate(0.1, -0.01, 0.21, 0.05, 5).verdict("max") == doe.NOISE


def test_mean_difference_uses_the_seeds_as_replicates() -> None:
    d = np.array([[0.02, 0.04, 0.03], [0.02, 0.04, 0.03]])
    est = doe.mean_difference(d)
    assert est.value == pytest.approx(0.03)
    assert est.df == 2
    assert est.se == pytest.approx(0.01 / math.sqrt(3))


def test_effects_recovered_and_zero_called_noise_at_the_stated_rate() -> None:
    """Known effects plus seed effects plus noise, 400 audits of a 16-row fraction x 3 seeds:
    each interval covers the true effect about 95% of the time, and a zero effect is called
    within noise about 95% of the time."""
    rng = np.random.default_rng(0)
    effects = np.array([0.05, -0.03, 0.0, 0.02, 0.0])
    x = doe.fractional(5)
    contrasts = [c["effect"] for c in doe.main_contrasts(x, oat=False)]
    sims = 400
    covered = np.zeros(len(effects))
    called_noise = np.zeros(len(effects))
    signs = np.zeros(len(effects))
    for _ in range(sims):
        seed_effect = rng.normal(0, 0.03, size=3)  # seeds differ: paired design removes it
        y = _additive(x, effects)[:, None] + seed_effect + rng.normal(0, 0.01, size=(16, 3))
        for j, c in enumerate(contrasts):
            est = doe.estimate(y, c)
            covered[j] += est.low <= effects[j] <= est.high
            called_noise[j] += est.verdict("max") == doe.NOISE
            signs[j] += np.sign(est.value) == np.sign(effects[j])
    coverage = covered / sims
    assert ((coverage > 0.92) & (coverage < 0.98)).all(), coverage
    zero = effects == 0
    assert ((called_noise[zero] / sims > 0.92) & (called_noise[zero] / sims < 0.98)).all()
    # the real effects (2 to 5 noise sds) are called, with the right sign, nearly always
    assert (called_noise[~zero] / sims < 0.05).all()
    assert (signs[~zero] == sims).all()
