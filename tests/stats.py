"""Chi-square goodness of fit without third-party packages."""
import math

# Every chi-square check of the suite fails below this p-value. About a hundred run in one
# `make test` (per build, some in loops): at 1e-6 each, a correct filter fails the suite by chance
# less than once in 10 000 runs, while a deliberately wrong split of a few hundred requests (a
# weight off by ten points) still gives a p-value far below it.
P_MIN = 1e-6


def chi2_sf(x, dof):
    """P(X >= x) for a chi-square distribution with `dof` degrees of freedom."""
    if x <= 0:
        return 1.0
    a, h = dof / 2.0, x / 2.0
    # Regularized lower incomplete gamma P(a, h) by its power series; converges for all h.
    term = total = 1.0 / a
    n = 1
    while term > total * 1e-15 and n < 10000:
        term *= h / (a + n)
        total += term
        n += 1
    lower = total * math.exp(-h + a * math.log(h) - math.lgamma(a))
    return max(0.0, 1.0 - lower)


def chi_square(observed, weights):
    """(statistic, p-value) of observed counts against expected proportions `weights`.
    Entries with weight 0 are left out (a test checks separately that they got nothing)."""
    pairs = [(o, w) for o, w in zip(observed, weights) if w > 0]
    n = sum(o for o, _ in pairs)
    total = sum(w for _, w in pairs)
    stat = sum((o - n * w / total) ** 2 / (n * w / total) for o, w in pairs)
    return stat, chi2_sf(stat, len(pairs) - 1)
