"""The chi-square helper itself must be right, or the split tests prove nothing."""
import math
import random

import stats
from stats import chi2_sf, chi_square
from test_split import SAMPLES


def test_known_critical_values():
    # Textbook critical values at p = 0.001 and p = 0.05.
    assert math.isclose(chi2_sf(10.828, 1), 0.001, rel_tol=1e-3)
    assert math.isclose(chi2_sf(13.816, 2), 0.001, rel_tol=1e-3)
    assert math.isclose(chi2_sf(3.841, 1), 0.05, rel_tol=1e-3)
    assert math.isclose(chi2_sf(7.815, 3), 0.05, rel_tol=1e-3)


def test_perfect_fit_and_gross_misfit():
    assert chi_square([900, 100], [90, 10])[1] == 1.0
    assert chi_square([800, 200], [90, 10])[1] < 1e-10


def test_a_ten_point_error_fails_every_time_at_the_split_tests_size():
    """Power at the suite's threshold: 90/10 served as 85/15 over the split tests' SAMPLES fails in
    every one of 1000 simulated runs (fixed seed), while the right split passes in all of them."""
    rng = random.Random(20261202)
    wrong = right = 0
    counted = stats.CHECKS  # simulated runs, not checks of this run
    for _ in range(1000):
        k = sum(rng.random() < 0.85 for _ in range(SAMPLES))
        wrong += chi_square([k, SAMPLES - k], [90, 10])[1] < stats.P_MIN
        k = sum(rng.random() < 0.90 for _ in range(SAMPLES))
        right += chi_square([k, SAMPLES - k], [90, 10])[1] < stats.P_MIN
    stats.CHECKS = counted
    assert (wrong, right) == (1000, 0), (wrong, right)


def test_the_threshold_fits_the_budget_for_two_hundred_and_fifty_checks():
    assert 250 * stats.P_MIN <= stats.FALSE_FAILURE_BUDGET
