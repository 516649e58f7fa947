"""The dynamic-system analysis against independent computations."""

import numpy as np
import pytest

from namsg import dynamics as dyn
from namsg import reference as ref

TAUS = [1e-4, 0.003, 0.01, 0.2, 0.5, 2.0, 5.0]
BETA_MU = [(0.999, 0.1), (0.999, 0.05), (0.99, 0.2), (0.9, 0.1), (0.999, 0.001), (0.9, 0.0)]


@pytest.mark.parametrize('beta,mu', BETA_MU)
@pytest.mark.parametrize('tau', TAUS + [-0.002])
def test_eigenvalues_match_numpy_linalg(tau, beta, mu):
    r1, r2 = dyn.eigenvalues(tau, beta, mu)
    expected = np.linalg.eigvals(dyn.gain_matrix(tau, beta, mu))
    np.testing.assert_allclose(sorted([r1, r2], key=lambda z: (z.real, z.imag)),
                               sorted(expected, key=lambda z: (z.real, z.imag)), atol=1e-10)
    assert dyn.gain_factor(tau, beta, mu) == pytest.approx(np.max(np.abs(expected)))


@pytest.mark.parametrize('beta,mu', BETA_MU)
@pytest.mark.parametrize('tau', TAUS)
def test_error_variance_limit_equals_lyapunov_solution(tau, beta, mu):
    expected = dyn.error_variance_limit_lyapunov(tau, beta, mu)
    actual = dyn.error_variance_limit(tau, beta, mu)
    if np.isinf(expected):
        assert np.isinf(actual)
    else:
        assert actual == pytest.approx(expected, rel=1e-8)


@pytest.mark.parametrize('tau,beta,mu', [(0.01, 0.999, 0.1), (0.5, 0.999, 0.1), (0.3, 0.9, 0.1)])
def test_error_variance_limit_matches_monte_carlo(tau, beta, mu):
    """Simulate eq. (10) with unit-variance noise from zero until stationary; the sample variance
    of s over 4000 independent chains is within 5 standard errors (sd of a sample variance of
    normal data: sqrt(2 / n) relative)."""
    rng = np.random.default_rng(0)
    a, c = dyn.gain_matrix(tau, beta, mu), dyn.noise_vector(beta, mu)
    chains = 4000
    # Long enough that r_g^steps < 1e-6: the start has been forgotten.
    steps = int(np.log(1e-6) / np.log(dyn.gain_factor(tau, beta, mu))) + 1
    state = np.zeros((2, chains))
    for _ in range(steps):
        state = a @ state + tau * c[:, None] * rng.normal(size=chains)
    expected = dyn.error_variance_limit(tau, beta, mu)
    assert abs(state[1].var() - expected) < 5 * np.sqrt(2.0 / chains) * expected


def test_divergent_system_has_infinite_variance():
    assert np.isinf(dyn.error_variance_limit(-0.01, 0.999, 0.1))
    assert np.isinf(dyn.error_variance_limit(50.0, 0.999, 0.1))


@pytest.mark.parametrize('beta,mu', [(0.999, 0.05), (0.999, 0.1), (0.99, 0.05), (0.99, 0.1),
                                     (0.9, 0.05), (0.9, 0.1), (0.999, 0.2)])
def test_tau_star_is_the_minimum_of_a_dense_grid(beta, mu):
    grid = np.linspace(1e-6, 2.0 / mu, 400001)
    best = grid[np.argmin(dyn.gain_factor(grid, beta, mu))]
    star = dyn.tau_star(beta, mu)
    assert star == pytest.approx(best, abs=2 * (grid[1] - grid[0]))
    assert dyn.gain_factor(star, beta, mu) <= dyn.gain_factor(grid, beta, mu).min() + 1e-9


@pytest.mark.parametrize('beta,expected', [(0.999, 0.248), (0.99, 0.29), (0.9, 0.57)])
def test_boost_factor_is_the_papers_about_one_quarter(beta, expected):
    """EXPERIMENTS.md: 0.248 for beta = 0.999, 0.29 for 0.99, 0.57 for 0.9 (mu 0.05 -> 0.1)."""
    assert dyn.boost_factor(beta, 0.05) == pytest.approx(expected, abs=0.005)


@pytest.mark.parametrize('c_alpha,c_beta,c_mu', [(0.1, 1.0, 0.5), (0.05, 1.0, 0.1),
                                                 (1.0, 1.0, 0.5), (0.2, 2.0, 1.0)])
def test_theorem1_approximates_numerical_worst_case_rate_for_large_kappa(c_alpha, c_beta, c_mu):
    """(1 - r_c) sqrt(kappa) from eq. (16) and from max r_g agree, better as kappa grows."""
    errors = []
    for kappa in (1e4, 1e6):
        approx = (1 - dyn.theorem1_rate(kappa, c_alpha, c_beta)) * np.sqrt(kappa)
        numeric = (1 - dyn.worst_case_rate(kappa, c_alpha, c_beta, c_mu)) * np.sqrt(kappa)
        errors.append(abs(approx - numeric) / approx)
    assert errors[1] < 0.002 and errors[1] <= errors[0]


@pytest.mark.parametrize('beta,mu', [(0.9, 0.0), (0.999, 0.0), (0.9, 0.1), (0.999, 0.001),
                                     (0.99, 0.3)])
def test_gain_matrix_is_rsg_on_a_one_dimensional_quadratic(beta, mu):
    """Run the reference RSG (eq. (3); heavy ball for mu = 0, NAG for mu = 1 - beta) on
    f(x) = lambda x^2 / 2: the pair [alpha m_t, x_t] moves by A(alpha lambda) exactly."""
    alpha, lam = 0.3, 0.05
    a = dyn.gain_matrix(alpha * lam, beta, mu)
    x, m = 1.0, 0.0
    residual = np.array([alpha * m, x])
    for _ in range(30):
        x, m = ref.rsg_concise_step(x, m, lam * x, alpha, beta, mu)
        residual = a @ residual
        np.testing.assert_allclose([alpha * m, x], residual, rtol=1e-10, atol=1e-14)


def test_eq15_as_printed_overstates_the_variance_for_complex_eigenvalues():
    """The README's note: eq. (15) with the cross term printed as 2 Re(z1 z2 / (1 - r1 r2))
    gives 0.0050 at tau = 0.01, beta = 0.999, mu = 0.1, where the Lyapunov solution (and a
    Monte Carlo run, test above) gives 0.00275; for real eigenvalues both forms agree."""
    def printed(tau, beta, mu):
        r, w = np.linalg.eig(dyn.gain_matrix(tau, beta, mu))
        c = np.linalg.solve(w.astype(complex), dyn.noise_vector(beta, mu).astype(complex))
        z1, z2 = c[0] * w[1, 0], c[1] * w[1, 1]
        return tau ** 2 * (abs(z1) ** 2 / (1 - abs(r[0]) ** 2) + abs(z2) ** 2 /
                           (1 - abs(r[1]) ** 2) + 2 * np.real(z1 * z2 / (1 - r[0] * r[1])))
    assert printed(0.01, 0.999, 0.1) == pytest.approx(0.0050, abs=5e-5)
    assert dyn.error_variance_limit_lyapunov(0.01, 0.999, 0.1) == pytest.approx(0.00275,
                                                                                abs=5e-6)
    assert printed(2.0, 0.999, 0.1) == pytest.approx(dyn.error_variance_limit(2.0, 0.999, 0.1))


def test_boost_factor_refuses_a_mu_that_the_boost_would_double_to_one_or_more():
    """mu in [0.5, 1) is a valid ARSG mu but cannot be boosted; the error says so in terms of mu
    (it came from tau_star as 'mu=1.2' before)."""
    with pytest.raises(ValueError, match=r'boost_factor needs mu in \(0, 0.5\).*mu=0.6'):
        dyn.boost_factor(0.999, 0.6)
