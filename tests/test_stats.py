"""The chi-square helper itself must be right, or the split tests prove nothing."""
import math

from stats import chi2_sf, chi_square


def test_known_critical_values():
    # Textbook critical values at p = 0.001 and p = 0.05.
    assert math.isclose(chi2_sf(10.828, 1), 0.001, rel_tol=1e-3)
    assert math.isclose(chi2_sf(13.816, 2), 0.001, rel_tol=1e-3)
    assert math.isclose(chi2_sf(3.841, 1), 0.05, rel_tol=1e-3)
    assert math.isclose(chi2_sf(7.815, 3), 0.05, rel_tol=1e-3)


def test_perfect_fit_and_gross_misfit():
    assert chi_square([900, 100], [90, 10])[1] == 1.0
    assert chi_square([800, 200], [90, 10])[1] < 1e-10
