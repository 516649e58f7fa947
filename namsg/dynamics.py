"""The dynamic-system analysis of RSG (Section 3 of the paper), in NumPy.

Along one Hessian eigenvector with eigenvalue lambda, with tau = alpha * lambda, RSG's residual
[v_t, s_t] (scaled momentum, deviation) evolves as, eq. (10)::

    [v, s]_{t+1} = A [v, s]_t + tau * delta_t * c,
    A = [[beta,             (1 - beta) tau               ],
         [-beta (1 - mu),   1 - (1 - beta (1 - mu)) tau  ]],
    c = [1 - beta, -(1 - beta (1 - mu))],

with gradient noise delta_t of variance sigma^2. From it:

* :func:`eigenvalues`: r1, r2 of A, eq. (11);
* :func:`gain_factor`: ``r_g = max(|r1|, |r2|)``, the convergence rate with exact gradients;
* :func:`error_variance_limit`: lVar = lim Var(s_t) / sigma^2, eq. (15) (see its note);
* :func:`tau_star`: the tau that minimizes r_g, which the observation boost keeps fixed;
* :func:`theorem1_rate` and :func:`worst_case_rate`: Theorem 1's r_c, eq. (16), and its
  numerical counterpart max r_g over [alpha lambda_min, alpha lambda_max].

All functions take scalars or NumPy arrays for tau (broadcast) and scalars for beta, mu.
"""

import numpy as np

__all__ = ['gain_matrix', 'noise_vector', 'eigenvalues', 'gain_factor', 'error_variance_limit',
           'error_variance_limit_lyapunov', 'tau_star', 'boost_factor', 'theorem1_rate',
           'worst_case_rate']


def gain_matrix(tau, beta, mu):
    """The gain matrix A of eq. (10).

    Parameters
    ----------
    tau : float
        alpha * lambda: the step size times the Hessian eigenvalue (dimensionless).
    beta : float
        The momentum decay rate, in [0, 1).
    mu : float
        The observation factor, in [0, 1).

    Returns
    -------
    numpy.ndarray
        Shape (2, 2), float64.
    """
    k = 1.0 - beta * (1.0 - mu)
    return np.array([[beta, (1.0 - beta) * tau], [-beta * (1.0 - mu), 1.0 - k * tau]])


def noise_vector(beta, mu):
    """c of eq. (10) (the paper calls it b): how a gradient error enters [v, s].

    Returns
    -------
    numpy.ndarray
        Shape (2,), float64: ``[1 - beta, -(1 - beta (1 - mu))]``.
    """
    return np.array([1.0 - beta, -(1.0 - beta * (1.0 - mu))])


def eigenvalues(tau, beta, mu):
    """The eigenvalues of A, eq. (11)::

        r1, r2 = (rho +- sqrt(rho^2 - 4 beta (1 - mu tau))) / 2,
        rho = 1 + beta - tau (1 - beta (1 - mu))

    Parameters
    ----------
    tau : float or numpy.ndarray
        alpha * lambda, any shape.
    beta : float
        The momentum decay rate, in [0, 1).
    mu : float
        The observation factor, in [0, 1).

    Returns
    -------
    tuple of numpy.ndarray
        ``(r1, r2)``, complex128, each of tau's shape (0-d for a scalar tau).
    """
    tau = np.asarray(tau, dtype=float)
    rho = 1.0 + beta - tau * (1.0 - beta * (1.0 - mu))
    root = np.sqrt((rho * rho - 4.0 * beta * (1.0 - mu * tau)).astype(complex))
    return (rho + root) / 2.0, (rho - root) / 2.0


def gain_factor(tau, beta, mu):
    """The gain factor ``r_g = max(|r1|, |r2|)``, eq. (A2) of the supplementary: the
    convergence rate along an eigenvalue with exact gradients (below 1: converges).

    Parameters
    ----------
    tau : float or numpy.ndarray
        alpha * lambda, any shape.
    beta : float
        The momentum decay rate, in [0, 1).
    mu : float
        The observation factor, in [0, 1).

    Returns
    -------
    numpy.ndarray
        float64, of tau's shape.
    """
    r1, r2 = eigenvalues(tau, beta, mu)
    return np.maximum(np.abs(r1), np.abs(r2))


def error_variance_limit(tau, beta, mu):
    """lVar = lim_{t->inf} Var(s_t) / sigma^2 from the eigen-decomposition, eq. (15); inf where
    r_g >= 1.

    Parameters
    ----------
    tau : float or numpy.ndarray
        alpha * lambda, any shape.
    beta : float
        The momentum decay rate, in [0, 1).
    mu : float
        The observation factor, in [0, 1).

    Returns
    -------
    float or numpy.ndarray
        float64, of tau's shape (a float for a scalar tau); ``inf`` where the system diverges.

    Notes
    -----
    With A = W diag(r) W^-1, c = c1 w1 + c2 w2 and z_i = c_i w_{i,2} (the s-components),
    s_t's noise part is tau sum_k delta_{t-k} (r1^k z1 + r2^k z2), so::

        lVar = tau^2 (|z1|^2 / (1 - |r1|^2) + |z2|^2 / (1 - |r2|^2)
                      + 2 Re(z1 conj(z2) / (1 - r1 conj(r2)))).

    Note: the paper prints the cross term as ``2 Re(z1 z2 / (1 - r1 r2))``. The two agree for real
    eigenvalues; for complex ones (small tau) the printed form overstates the variance
    (e.g. 0.0050 instead of 0.00275 at tau = 0.01, beta = 0.999, mu = 0.1, where a Monte Carlo
    run of eq. (10) and the Lyapunov solution both give 0.00275). This function uses the
    conjugate, which the tests check against both.
    """
    taus = np.atleast_1d(np.asarray(tau, dtype=float))
    out = np.empty(taus.shape)
    c = noise_vector(beta, mu)
    for i, t in enumerate(taus.flat):
        r, w = np.linalg.eig(gain_matrix(t, beta, mu))
        if np.max(np.abs(r)) >= 1.0:
            out.flat[i] = np.inf
            continue
        coef = np.linalg.solve(w.astype(complex), c.astype(complex))
        z1, z2 = coef[0] * w[1, 0], coef[1] * w[1, 1]
        r1, r2 = r
        value = (abs(z1) ** 2 / (1 - abs(r1) ** 2) + abs(z2) ** 2 / (1 - abs(r2) ** 2)
                 + 2 * np.real(z1 * np.conj(z2) / (1 - r1 * np.conj(r2))))
        out.flat[i] = value * t * t
    return out.reshape(np.shape(tau)) if np.ndim(tau) else float(out[0])


def error_variance_limit_lyapunov(tau, beta, mu):
    """lVar from the stationary covariance P = A P A^T + tau^2 c c^T (discrete Lyapunov
    equation), P[1, 1]; an independent route to :func:`error_variance_limit`.

    Parameters
    ----------
    tau : float
        alpha * lambda.
    beta : float
        The momentum decay rate, in [0, 1).
    mu : float
        The observation factor, in [0, 1).

    Returns
    -------
    float
        ``inf`` where the system diverges.
    """
    a = gain_matrix(tau, beta, mu)
    c = noise_vector(beta, mu)
    if np.max(np.abs(np.linalg.eigvals(a))) >= 1.0:
        return np.inf
    p = np.linalg.solve(np.eye(4) - np.kron(a, a), (tau * tau * np.outer(c, c)).ravel())
    return float(p.reshape(2, 2)[1, 1])


def tau_star(beta, mu):
    """argmin over tau > 0 of r_g(tau, beta, mu): the tau that converges fastest.

    Parameters
    ----------
    beta : float
        The momentum decay rate, in (0, 1).
    mu : float
        The observation factor, in (0, 1).

    Returns
    -------
    float

    Raises
    ------
    ValueError
        beta or mu outside (0, 1).

    Notes
    -----
    With k = 1 - beta (1 - mu): det A = beta (1 - mu tau) and the discriminant of eq. (11) is
    the quadratic k^2 tau^2 + (4 beta mu - 2 (1 + beta) k) tau + (1 - beta)^2. While the
    eigenvalues are complex, r_g = sqrt(beta (1 - mu tau)) falls with tau; once they are real
    the larger one grows apart. So the minimum is where the eigenvalues turn real again (the
    larger root of the discriminant), or at tau = 1/mu where det A = 0 if that comes first;
    both candidates are compared.
    """
    if not 0.0 < beta < 1.0 or not 0.0 < mu < 1.0:
        raise ValueError('tau_star needs beta and mu in (0, 1), got beta=%r, mu=%r' % (beta, mu))
    k = 1.0 - beta * (1.0 - mu)
    roots = np.roots([k * k, 4.0 * beta * mu - 2.0 * (1.0 + beta) * k, (1.0 - beta) ** 2])
    candidates = [r.real for r in roots if abs(r.imag) < 1e-12 and r.real > 0]
    candidates.append(1.0 / mu)
    return float(min(candidates, key=lambda t: gain_factor(t, beta, mu)))


def boost_factor(beta, mu):
    """The step-size factor of the observation boost mu -> 2 mu: tau*(2 mu) / tau*(mu), which
    keeps the eigenvalue that minimizes r_g in place (Section 3; about 1/4 for beta = 0.999).

    Parameters
    ----------
    beta : float
        The momentum decay rate, in (0, 1).
    mu : float
        The observation factor before the boost, in (0, 0.5) (2 mu must stay below 1).

    Returns
    -------
    float
        0.248 for beta = 0.999 and mu = 0.05; 0.290 for beta = 0.99, 0.568 for 0.9.

    Raises
    ------
    ValueError
        beta outside (0, 1), or mu outside (0, 0.5).

    Examples
    --------
    >>> from namsg import dynamics
    >>> round(dynamics.boost_factor(0.999, 0.05), 3)
    0.248
    """
    if not 0.0 < mu < 0.5:
        raise ValueError('boost_factor needs mu in (0, 0.5), so that the boosted 2 mu stays '
                         'below 1; got mu=%r' % (mu,))
    return tau_star(beta, 2.0 * mu) / tau_star(beta, mu)


def theorem1_rate(kappa, c_alpha, c_beta):
    """Theorem 1, eq. (16): the approximate worst-case rate r_c for alpha = c_alpha sqrt(kappa)
    / lambda_max, beta = 1 - c_beta / sqrt(kappa), mu = c_mu / sqrt(kappa) (c_mu does not enter).

    Parameters
    ----------
    kappa : float
        The condition number lambda_max / lambda_min, > 1.
    c_alpha : float
        The step size's constant (alpha = c_alpha sqrt(kappa) / lambda_max), > 0.
    c_beta : float
        The momentum decay's constant (beta = 1 - c_beta / sqrt(kappa)), > 0.

    Returns
    -------
    float
    """
    root_kappa = np.sqrt(kappa)
    if 4.0 * c_alpha < c_beta:
        return 1.0 - (c_beta - np.sqrt(c_beta * (c_beta - 4.0 * c_alpha))) / (2.0 * root_kappa)
    return 1.0 - c_beta / (2.0 * root_kappa)


def worst_case_rate(kappa, c_alpha, c_beta, c_mu, points=20001):
    """The numerical r_c of Theorem 1: max r_g over tau in [alpha lambda_min, alpha lambda_max],
    with lambda_max = 1 and the theorem's alpha, beta, mu, on a log-spaced grid.

    Parameters
    ----------
    kappa : float
        The condition number, > 1.
    c_alpha : float
        The step size's constant (alpha = c_alpha sqrt(kappa), lambda_max being 1), > 0.
    c_beta : float
        The momentum decay's constant (beta = 1 - c_beta / sqrt(kappa)), > 0.
    c_mu : float
        The observation factor's constant (mu = c_mu / sqrt(kappa)), > 0.
    points : int, default 20001
        Grid points over the eigenvalues.

    Returns
    -------
    float
    """
    root_kappa = np.sqrt(kappa)
    alpha = c_alpha * root_kappa
    beta = 1.0 - c_beta / root_kappa
    mu = c_mu / root_kappa
    taus = np.geomspace(alpha / kappa, alpha, points)
    return float(np.max(gain_factor(taus, beta, mu)))
