"""Chi-square goodness of fit without third-party packages."""
import math

# The suite's false-failure budget: a correct build may fail a `make test` run by chance at most
# once in 10 000 runs. Every chi-square check fails below P_MIN, and the checks of one run add up
# (a union bound): at 4e-7 each, up to 250 checks fit the budget. About 120 run per `make test`
# (per build, some in loops); conftest.py counts them (CHECKS) and fails the run when their sum
# exceeds the budget, so adding checks cannot silently spend it. Power stays: a deliberately wrong
# split of the size the split tests send (90/10 served as 85/15 over 4000 requests) gives a
# statistic near 111 against a critical value of 25.7 (p = 4e-7, one degree of freedom), and
# tests/test_stats.py checks that such a split fails every time in 1000 simulated runs.
FALSE_FAILURE_BUDGET = 1e-4
P_MIN = 4e-7
# Statistical checks made so far in this process (each may fail a correct build with chance at
# most P_MIN): every chi-square check, and the checks with a tolerance of their own that call
# count_check (a 5-sigma binomial bound fails by chance with about 5.7e-7).
CHECKS = 0


def count_check(n=1):
    """Counts `n` statistical checks that are not chi-square tests against the budget."""
    global CHECKS
    CHECKS += n


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
    count_check()
    pairs = [(o, w) for o, w in zip(observed, weights) if w > 0]
    n = sum(o for o, _ in pairs)
    total = sum(w for _, w in pairs)
    stat = sum((o - n * w / total) ** 2 / (n * w / total) for o, w in pairs)
    return stat, chi2_sf(stat, len(pairs) - 1)
